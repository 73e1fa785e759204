# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pgsafe``: the host command for operators, timers, archive_command and restore_command.

It reads the YAML settings file (default /etc/pgsafe/pgsafe.yml), builds the same
engine context the modules build, and calls the same engine functions: no logic
lives here but argument parsing, logging and exit codes.

Exit codes: 0 success; 1 unexpected error; otherwise the engine error's own code
(2 configuration, 3 repository, 4 encryption, 5 PostgreSQL, 6 lock held,
7 verification failed, 8 not found, 9 restore refused or failed, 10 dependency).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from ansible_collections.pgsafe.backup.plugins.module_utils.config import (
    DEFAULT_CONFIG_PATH, Context, load_config_file)
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.version import TOOL_VERSION

LOG = logging.getLogger("pgsafe")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgsafe", description="PostgreSQL backups you can trust.")
    parser.add_argument("-c", "--config", default=os.environ.get("PGSAFE_CONFIG", DEFAULT_CONFIG_PATH),
                        help="settings file (default %(default)s; env PGSAFE_CONFIG)")
    parser.add_argument("--debug", action="store_true", default=bool(os.environ.get("PGSAFE_DEBUG")),
                        help="log every step (env PGSAFE_DEBUG=1)")
    parser.add_argument("--version", action="version", version="pgsafe %s" % TOOL_VERSION)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    backup = commands.add_parser("backup", help="take a backup")
    backup.add_argument("type", choices=["logical"], help="backup type")
    backup.add_argument("-d", "--database", action="append", dest="databases",
                        help="database to dump (repeatable; default: all)")
    backup.add_argument("--no-globals", dest="include_globals", action="store_false",
                        help="do not dump roles and tablespaces")
    backup.add_argument("--json", action="store_true", help="print the result as JSON")

    listing = commands.add_parser("list", help="list backups")
    listing.add_argument("type", nargs="?", help="only this type (logical, full, incremental, ...)")
    listing.add_argument("days", nargs="?", type=float, help="only backups younger than this many days")
    listing.add_argument("--json", action="store_true", help="print JSON")

    verify = commands.add_parser("verify", help="verify backups")
    verify.add_argument("--level", default="decrypt", help="presence, integrity or decrypt (default)")
    verify.add_argument("--backup-id", action="append", dest="backup_ids",
                        help="backup to verify (repeatable), or 'all'; default: newest of each type")
    verify.add_argument("--type", action="append", dest="types", help="expected backup type (default logical)")
    verify.add_argument("--max-age-hours", type=float, default=25.0, help="freshness limit (default 25)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")

    restore = commands.add_parser("restore", help="restore a logical backup into a database")
    restore.add_argument("--backup-id", default="latest", help="backup id or 'latest' (default)")
    restore.add_argument("-d", "--database", help="database in the backup (needed when it holds several)")
    restore.add_argument("-t", "--target-database", help="restore under this name (default: the same name)")
    restore.add_argument("--force", action="store_true", help="replace an existing target database")
    restore.add_argument("-j", "--jobs", type=int, default=1, help="parallel pg_restore jobs (stages a local copy)")
    restore.add_argument("--globals", dest="restore_globals", action="store_true", help="restore roles first")
    restore.add_argument("--no-owner", action="store_true", help="skip ownership and privileges")
    restore.add_argument("--json", action="store_true", help="print the result as JSON")

    prune = commands.add_parser("prune", help="apply the retention policy")
    prune.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    prune.add_argument("--type", dest="backup_type", help="only this backup type")
    prune.add_argument("--json", action="store_true", help="print JSON")

    sync = commands.add_parser("sync", help="copy complete backups to/from the configured copies")
    sync.add_argument("--mode", default="push", choices=["push", "pull", "sync"])
    sync.add_argument("--dry-run", action="store_true", help="show what would be copied")
    sync.add_argument("--json", action="store_true", help="print JSON")

    key = commands.add_parser("key", help="manage local encryption keys")
    key.add_argument("action", choices=["generate"])
    key.add_argument("path", help="key file to create (0600; never overwritten)")
    return parser


def setup_logging(settings: dict, command: str, debug: bool) -> str | None:
    """Log to stderr, and to one file per run under log_dir when it is set."""
    LOG.setLevel(logging.DEBUG if debug else logging.INFO)
    LOG.handlers[:] = []
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("pgsafe: %(levelname)s %(message)s"))
    stream.setLevel(logging.DEBUG if debug else logging.WARNING)
    LOG.addHandler(stream)
    log_dir = settings.get("log_dir")
    if not log_dir:
        return None
    os.makedirs(log_dir, mode=0o750, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(log_dir, "%s-%s-%d.log" % (command, stamp, os.getpid()))
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.close(handle)
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    LOG.addHandler(file_handler)
    return path


def _print(result, as_json: bool, text: str | None = None) -> None:
    if as_json or text is None:
        text = json.dumps(result, indent=2, sort_keys=True, default=str)
    sys.stdout.write(text + "\n")


def format_listing(entries: list[dict]) -> str:
    columns = ("BACKUP ID", "TYPE", "STATUS", "FINISHED (UTC)", "STORED", "AGE", "VERIFIED / DATABASES")
    header = "%-28s %-10s %-11s %-20s %12s %9s  %s" % columns
    lines = [header]
    for entry in entries:
        verification = entry.get("verification") or {}
        verified = "%s %s %s" % ("ok" if verification.get("ok") else "FAILED", verification.get("level"),
                                 (verification.get("at") or "")[:10]) if verification else "never"
        age_hours = entry["age_seconds"] / 3600.0
        lines.append("%-28s %-10s %-11s %-20s %12s %8.1fh  %s; %s" % (
            entry["backup_id"], entry["type"], entry["status"], (entry.get("finished_at") or "-")[:19],
            human_bytes(entry.get("size_stored_bytes") or 0), age_hours, verified,
            ",".join(entry.get("databases") or []) or "-"))
    return "\n".join(lines)


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return "%.1f %s" % (size, unit) if unit != "B" else "%d B" % size
        size /= 1024.0
    return str(size)


def run(args) -> int:
    from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import generate_key_file

    if args.command == "key":
        generate_key_file(args.path)
        sys.stdout.write("generated %s (mode 0600); keep a copy in your secret store: without it the backups "
                         "cannot be decrypted\n" % args.path)
        return 0
    settings = load_config_file(args.config)
    log_path = setup_logging(settings, args.command, args.debug or bool(settings.get("debug")))
    LOG.info("pgsafe %s %s started (log %s)", TOOL_VERSION, args.command, log_path)
    started = time.monotonic()
    code = dispatch(args, settings)
    LOG.info("completed %s in %.1f s", args.command, time.monotonic() - started)
    return code


def dispatch(args, settings: dict) -> int:
    if args.command == "backup":
        from ansible_collections.pgsafe.backup.plugins.module_utils.logical_backup import run_logical_backup

        context = Context.from_settings(settings)
        result = run_logical_backup(context, args.databases, args.include_globals)
        _print(result, args.json, "backup %s complete: %s stored (%s raw) in %s s, %s MB/s" % (
            result["backup_id"], human_bytes(result["size_stored_bytes"]), human_bytes(result["size_raw_bytes"]),
            result["duration_seconds"], result["throughput_mb_s"]))
        return 0
    if args.command == "list":
        from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups, storage_used

        context = Context.from_settings(settings, need_postgres=False, need_encryption=False)
        entries = list_backups(context.repository, context.cluster, args.type, args.days)
        usage = storage_used(context.repository, context.cluster)
        _print({"backups": entries, "storage": usage}, args.json, format_listing(entries) + "\n%d backup(s); %s "
               "used in %s" % (len(entries), human_bytes(usage["used_bytes"]), usage["location"]))
        return 0
    if args.command == "verify":
        from ansible_collections.pgsafe.backup.plugins.module_utils.verify import verify

        context = Context.from_settings(settings, need_postgres=False)
        ids = None if not args.backup_ids else ("all" if args.backup_ids == ["all"] else args.backup_ids)
        report = verify(context, args.level, ids, tuple(args.types or ["logical"]), args.max_age_hours)
        _print(report, args.json, report["summary"])
        return 0 if report["ok"] else 7
    if args.command == "restore":
        from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import run_logical_restore

        context = Context.from_settings(settings)
        result = run_logical_restore(context, args.backup_id, args.database, args.target_database, args.force,
                                     args.jobs, args.restore_globals, args.no_owner)
        _print(result, args.json, "restored %s (%s) into %s in %s s; row counts %s" % (
            result["backup_id"], result["database"], result["target_database"], result["duration_seconds"],
            "match the backup" if result["row_counts_match"] else "DIFFER"))
        return 0
    if args.command == "prune":
        from ansible_collections.pgsafe.backup.plugins.module_utils.retention import prune

        context = Context.from_settings(settings, need_postgres=False, need_encryption=False)
        result = prune(context, settings.get("retention") or {"keep_last": 7}, args.backup_type, args.dry_run)
        _print(result, args.json)
        return 0
    if args.command == "sync":
        from ansible_collections.pgsafe.backup.plugins.module_utils.sync import sync_repositories

        context = Context.from_settings(settings, need_postgres=False, need_encryption=False)
        results = [sync_repositories(context.repository, copy, context.cluster, args.mode, check_mode=args.dry_run)
                   for copy in context.copies()]
        _print(results, args.json)
        return 0
    raise AssertionError("unhandled command %s" % args.command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PgsafeError as exc:
        LOG.error("%s", exc.message)
        sys.stderr.write("pgsafe: error: %s\n" % exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("pgsafe: interrupted; nothing incomplete was recorded as a backup\n")
        return 130
