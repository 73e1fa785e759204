# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pgsafe``: the host command for operators, timers, archive_command and restore_command.

It reads the YAML settings file (default /etc/pgsafe/pgsafe.yml), builds the same
engine context the modules build, and calls the same engine functions: no logic
lives here but argument parsing, logging and exit codes.

Exit codes: 0 success; 1 unexpected error; otherwise the engine error's own code
(2 configuration, 3 repository, 4 encryption, 5 PostgreSQL, 6 lock held,
7 verification failed, 8 not found, 9 restore refused or failed, 10 dependency,
11 WAL conflict: a different file is archived under that name).
``wal-fetch`` (restore_command) speaks PostgreSQL's language instead: 0 found, 1 not in
the archive (ends recovery), 255 any other failure (PostgreSQL stops instead of
promoting at the wrong point). ``check`` exits 0 when every check passed, 1 otherwise.

Operations (backup, verify, restore, prune, sync, check, ...) write one log file per run
under ``log_dir`` (default ``<state_dir>/log``): see runlog.py.

``wal-push`` is the archive_command and runs once per segment: its branch imports only
the spool hand-off (no boto3, no encryption SDK) unless no shipper is running.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

from ansible_collections.pgsafe.backup.plugins.module_utils.config import (
    DEFAULT_CONFIG_PATH, Context, load_config_file)
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.version import TOOL_VERSION

LOG = logging.getLogger("pgsafe")


def whole(minimum: int, maximum: int):
    """argparse type: a whole number in [minimum, maximum], with the range in the error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a whole number; use %d to %d" % (text, minimum, maximum)) \
                from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError("%d is out of range; use %d to %d" % (value, minimum, maximum))
        return value
    parse.__name__ = "whole number"
    return parse


def positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number; use a positive number" % text) from None
    if value <= 0 or math.isnan(value):
        raise argparse.ArgumentTypeError("%s is not positive; use a number above 0" % text)
    return value


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
    backup.add_argument("type", choices=["logical", "full", "incremental", "transaction_logs"], help="backup type")
    backup.add_argument("-d", "--database", action="append", dest="databases",
                        help="database to dump (repeatable; default: all)")
    backup.add_argument("--no-globals", dest="include_globals", action="store_false",
                        help="do not dump roles and tablespaces")
    backup.add_argument("--pgdata", help="data directory (physical types; default: wal.pgdata or the server's)")
    backup.add_argument("--max-chain-depth", type=whole(1, 1000), help="incrementals before a new full (default wal.max_chain_depth,"
                        " 6)")
    backup.add_argument("--delta-checksum", action="store_true",
                        help="incremental: compare SHA-256 of files whose size and mtime are unchanged")
    backup.add_argument("--json", action="store_true", help="print the result as JSON")

    listing = commands.add_parser("list", help="list backups")
    listing.add_argument("type", nargs="?", help="only this type (logical, full, incremental, ...)")
    listing.add_argument("days", nargs="?", type=positive_float, help="only backups younger than this many days")
    listing.add_argument("--json", action="store_true", help="print JSON")

    verify = commands.add_parser("verify", help="verify backups")
    verify.add_argument("--level", default="decrypt", help="presence, integrity or decrypt (default)")
    verify.add_argument("--backup-id", action="append", dest="backup_ids",
                        help="backup to verify (repeatable), or 'all'; default: newest of each type")
    verify.add_argument("--type", action="append", dest="types", help="expected backup type (default logical)")
    verify.add_argument("--max-age-hours", type=positive_float, default=25.0, help="freshness limit (default 25)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")

    restore = commands.add_parser("restore", help="restore a logical backup into a database")
    restore.add_argument("--backup-id", default="latest", help="backup id or 'latest' (default)")
    restore.add_argument("-d", "--database", help="database in the backup (needed when it holds several)")
    restore.add_argument("-t", "--target-database", help="restore under this name (default: the same name)")
    restore.add_argument("--force", action="store_true", help="replace an existing target database")
    restore.add_argument("-j", "--jobs", type=whole(1, 64), default=1, help="parallel pg_restore jobs (stages a local copy)")
    restore.add_argument("--globals", dest="restore_globals", action="store_true", help="restore roles first")
    restore.add_argument("--no-owner", action="store_true", help="skip ownership and privileges")
    restore.add_argument("--json", action="store_true", help="print the result as JSON")

    prune = commands.add_parser("prune", help="apply the retention policy")
    prune.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    prune.add_argument("--type", dest="backup_type", help="only this backup type")
    prune.add_argument("--json", action="store_true", help="print JSON")

    hold = commands.add_parser("hold", help="keep a backup whatever the retention policy says")
    hold.add_argument("backup_id")
    hold.add_argument("--reason", required=True, help="why (a ticket, an audit, a legal hold)")
    hold.add_argument("--json", action="store_true", help="print JSON")
    unhold = commands.add_parser("unhold", help="release a hold; retention decides again")
    unhold.add_argument("backup_id")

    sync = commands.add_parser("sync", help="copy complete backups to/from the configured copies")
    sync.add_argument("--mode", default="push", choices=["push", "pull", "sync"])
    sync.add_argument("--dry-run", action="store_true", help="show what would be copied")
    sync.add_argument("--json", action="store_true", help="print JSON")

    wal_push = commands.add_parser("wal-push", help="archive_command: archive one WAL file (%%p)")
    wal_push.add_argument("path", help="%%p: the file, relative to the data directory")

    shipper = commands.add_parser("wal-shipper", help="run the WAL shipper (long-running)")
    shipper.add_argument("--pgdata", help="data directory whose archive_status to read ahead (default wal.pgdata)")
    shipper.add_argument("--parallel", type=whole(1, 64), help="parallel uploads (default wal.parallel, 4)")
    shipper.add_argument("--once", action="store_true", help="archive the current backlog, then exit")
    shipper.add_argument("--json", action="store_true", help="print the final status as JSON")

    wal_fetch = commands.add_parser("wal-fetch", help="restore_command: fetch one WAL file (%%f %%p)")
    wal_fetch.add_argument("name", help="%%f: the file name")
    wal_fetch.add_argument("path", help="%%p: where PostgreSQL wants it")

    prefetch = commands.add_parser("wal-prefetch", help="(started by wal-fetch) download the next segments")
    prefetch.add_argument("after", help="the segment replay is at")
    prefetch.add_argument("--spool", required=True, help="spool directory")
    prefetch.add_argument("--count", type=int, default=8, help="segments to fetch ahead")

    wal_status = commands.add_parser("wal-status", help="WAL archiving backlog and shipper state")
    wal_status.add_argument("--json", action="store_true", help="print JSON")

    physical = commands.add_parser("restore-physical", help="restore a physical backup to a point in time, into a "
                                   "new directory on its own port")
    physical.add_argument("--pgdata", required=True, help="new data directory to create (must not exist or be empty)")
    physical.add_argument("--port", type=whole(1, 65535), required=True, help="port for the restored server")
    physical.add_argument("--backup-id", default="latest", help="restore this backup's chain (default: chosen for "
                          "the target)")
    targets = physical.add_mutually_exclusive_group()
    targets.add_argument("--target-time", help="ISO 8601 timestamp with zone")
    targets.add_argument("--target-xid", help="transaction id")
    targets.add_argument("--target-lsn", help="WAL location, e.g. 0/3000060")
    targets.add_argument("--target-name", help="restore point name (pg_create_restore_point)")
    targets.add_argument("--target-immediate", action="store_true", help="stop as soon as consistent")
    physical.add_argument("--action", default="promote", choices=["promote", "pause", "shutdown"],
                          help="recovery_target_action (default promote)")
    physical.add_argument("--no-start", dest="start", action="store_false", help="prepare the directory only")
    physical.add_argument("--force", action="store_true", help="replace a non-empty PostgreSQL data directory "
                          "(stopping a server running in it), only after the backup, target and WAL were checked")
    physical.add_argument("--os-user", default="postgres", help="OS user that owns and runs the copy")
    physical.add_argument("--socket-dir", help="unix_socket_directories for the restored server")
    physical.add_argument("--tablespace-map", action="append", default=[], metavar="OID_OR_OLD_PATH=NEW_PATH",
                          help="where a tablespace goes (default <pgdata>_tblspc/<oid>)")
    physical.add_argument("--json", action="store_true", help="print the result as JSON")

    add_files_parser(commands)

    add_check_parser(commands)

    key = commands.add_parser("key", help="manage local encryption keys")
    key.add_argument("action", choices=["generate"])
    key.add_argument("path", help="key file to create (0600; never overwritten)")

    iam = commands.add_parser("iam-policy", help="print the least-privilege IAM policy of pgsafe roles (JSON)")
    iam.add_argument("--role", action="append", dest="roles", required=True,
                     help="writer, verifier, restorer, pruner, or host (= writer+verifier+pruner); repeatable")
    iam.add_argument("--bucket", help="S3 bucket (default: the first S3 repository or copy in --config)")
    iam.add_argument("--prefix", help="key prefix in the bucket (default: that repository's)")
    iam.add_argument("--kms-key-arn", action="append", dest="kms_key_arns",
                     help="KMS key ARN of the envelope encryption (repeatable; default: encryption.kms_key_ids)")
    iam.add_argument("--sse-kms-key-arn", action="append", dest="sse_kms_key_arns",
                     help="KMS key ARN of the bucket's SSE-KMS (default: repository.sse_kms_key_id)")
    iam.add_argument("--per-role", action="store_true", help="one document per role instead of one merged document")
    return parser


def add_files_parser(commands) -> None:
    """``pgsafe files backup|restore|list``: file-system backups (type files) of configured paths."""
    files = commands.add_parser("files", help="back up and restore files (application configuration)")
    actions = files.add_subparsers(dest="files_action", metavar="ACTION")
    actions.required = True
    backup = actions.add_parser("backup", help="back up paths (default: files.paths of the settings)")
    backup.add_argument("paths", nargs="*", help="absolute files or directories")
    backup.add_argument("--exclude", action="append", default=None, help="glob on the path or the name (repeatable)")
    backup.add_argument("--skip-unchanged", action="store_true",
                        help="take none when the newest files backup already holds the same content")
    backup.add_argument("--json", action="store_true", help="print the result as JSON")
    restore = actions.add_parser("restore", help="restore some or all paths of a files backup")
    restore.add_argument("paths", nargs="*", help="paths to restore (default: everything in the backup)")
    restore.add_argument("--backup-id", default="latest", help="backup id or 'latest' (default)")
    restore.add_argument("--target-dir", help="restore under this directory instead of the original location")
    restore.add_argument("--force", action="store_true", help="replace destinations that exist and differ")
    restore.add_argument("--dry-run", action="store_true", help="show what would be written, write nothing")
    restore.add_argument("--json", action="store_true", help="print the result as JSON")
    listing = actions.add_parser("list", help="list the files of a files backup")
    listing.add_argument("paths", nargs="*", help="only entries under these paths")
    listing.add_argument("--backup-id", default="latest", help="backup id or 'latest' (default)")
    listing.add_argument("--json", action="store_true", help="print JSON")


def dispatch_files(args, settings: dict) -> int:
    from ansible_collections.pgsafe.backup.plugins.module_utils import files_backup

    files_settings = settings.get("files") or {}
    if args.files_action == "backup":
        context = Context.from_settings(settings, need_postgres=False)
        exclude = args.exclude if args.exclude is not None else files_settings.get("exclude") or []
        result = files_backup.run_files_backup(context, args.paths or files_settings.get("paths"), exclude,
                                               skip_unchanged=args.skip_unchanged)
        if not result["changed"]:
            text = "files unchanged since backup %s (%s): no backup taken" % (
                result["backup_id"], result["unchanged_since"])
        else:
            text = "files backup %s complete: %d entries (%s) of %s, %s stored in %s s" % (
                result["backup_id"], result["entries"], human_bytes(result["bytes"]), ", ".join(result["paths"]),
                human_bytes(result["size_stored_bytes"]), result["duration_seconds"])
        _print(result, args.json, "\n".join([text] + ["warning: %s" % item for item in result["warnings"]]))
        return 0
    context = Context.from_settings(settings, need_postgres=False)
    if args.files_action == "list":
        result = files_backup.list_files(context, args.backup_id, args.paths or None)
        lines = ["%s %5s %-10s %-10s %10s %s%s" % (entry["type"][0] if entry["type"] != "symlink" else "l",
                                                   entry["mode"], entry["owner"] or entry["uid"],
                                                   entry["group"] or entry["gid"], entry["size"], entry["path"],
                                                   (" -> " + entry["target"]) if entry.get("target") else "")
                 for entry in result["entries"]]
        _print(result, args.json, "\n".join(["backup %s (%s)" % (result["backup_id"], result["finished_at"])] + lines))
        return 0
    if args.dry_run:
        result = files_backup.plan_files_restore(context, args.backup_id, args.paths or None, args.target_dir,
                                                 args.force)
        for key in [key for key in result if key.startswith("_")]:
            result.pop(key)
        verb = "would write"
    else:
        result = files_backup.run_files_restore(context, args.backup_id, args.paths or None, args.target_dir,
                                                args.force)
        verb = "wrote"
    lines = ["%s %d path(s) from %s%s; %d already as in the backup" % (
        verb, len(result["restored"]), result["backup_id"],
        (" under " + result["target_dir"]) if result["target_dir"] else "", len(result["unchanged"]))]
    lines += ["  %s%s" % (path, " (replaced)" if path in result["replaced"] else "") for path in result["restored"]]
    if result.get("ownership_not_restored"):
        lines.append("owner not restored (not root): %s" % ", ".join(result["ownership_not_restored"]))
    _print(result, args.json, "\n".join(lines))
    return 0


def setup_logging(settings: dict, command: str, debug: bool) -> str | None:
    """Log to stderr only (per-run files are runlog.RunLog's, opened in run())."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.runlog import configure_stderr

    configure_stderr(LOG, debug, settings)
    return None


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
    if args.command == "wal-push":
        return wal_push(args)
    if args.command == "key":
        from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import generate_key_file

        generate_key_file(args.path)
        sys.stdout.write("generated %s (mode 0600); keep a copy in your secret store: without it the backups "
                         "cannot be decrypted\n" % args.path)
        return 0
    if args.command == "iam-policy":
        return iam_policy_command(args)
    from ansible_collections.pgsafe.backup.plugins.module_utils.runlog import RunLog

    settings = load_config_file(args.config)
    with RunLog(args.command, settings, args.debug or bool(settings.get("debug")), LOG,
                config_path=args.config) as run_log:
        run_log.exit_code = dispatch(args, settings)
    return run_log.exit_code


def iam_policy_command(args) -> int:
    """Least-privilege policy JSON; bucket, prefix and keys from the options, else from --config."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError
    from ansible_collections.pgsafe.backup.plugins.module_utils.iam_policy import (
        least_privilege_policy, policies_by_role, s3_targets)

    target = {"bucket": args.bucket, "prefix": args.prefix, "kms_key_arns": args.kms_key_arns,
              "sse_kms_key_arns": args.sse_kms_key_arns}
    if not args.bucket:
        found = s3_targets(load_config_file(args.config))
        if not found:
            raise ConfigError("no S3 repository or copy in %s" % args.config, where="--bucket",
                              fix="give --bucket (and --prefix, --kms-key-arn), or a --config with an S3 repository")
        target = {key: value if value is not None else found[0][key] for key, value in target.items()}
    build = policies_by_role if args.per_role else least_privilege_policy
    document = build(args.roles, target["bucket"], target["prefix"], target["kms_key_arns"] or [],
                     target["sse_kms_key_arns"] or [])
    _print(document, True)
    return 0


def wal_push(args) -> int:
    """The archive_command hot path: no log file per segment, no heavy import unless we must ship."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import wal_settings
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_shipper import push_via_spool

    settings = load_config_file(args.config)
    setup_logging({}, args.command, args.debug or bool(settings.get("debug")))
    state_dir = settings.get("state_dir") or "/var/lib/pgsafe"
    cluster = str(settings.get("cluster") or "main")
    result = push_via_spool(state_dir, cluster, args.path, wal_settings(settings)["push_timeout_seconds"])
    if result is None:
        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import archive_file

        context = Context.from_settings(settings, need_postgres=False)
        result = archive_file(context, args.path)
        result["via"] = "direct (no shipper running)"
    LOG.debug("wal-push %s: %s via %s", result["name"], result["status"], result.get("via"))
    return 0


def relaunch_argv(config_path: str, settings: dict) -> list[str]:
    """How a child process runs this same pgsafe with the same settings (for the prefetcher)."""
    import shlex

    command = (settings.get("wal") or {}).get("command")
    if command:
        return shlex.split(command)
    program = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if program and os.path.isfile(program) and os.access(program, os.X_OK) and not program.endswith(".py"):
        return [program, "-c", os.path.abspath(config_path)]
    package_root = os.path.abspath(__file__)
    for _level in range(6):  # .../ansible_collections/pgsafe/backup/plugins/module_utils/cli.py
        package_root = os.path.dirname(package_root)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    return [sys.executable, "-c", "import sys; from ansible_collections.pgsafe.backup.plugins.module_utils.cli "
            "import main; sys.exit(main())", "-c", os.path.abspath(config_path)]


def dispatch_physical(args, settings: dict) -> int | None:
    """The physical-backup and WAL commands; None when the command is not one of them."""
    if args.command == "backup" and args.type in ("full", "incremental"):
        from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import run_physical_backup

        context = Context.from_settings(settings)
        result = run_physical_backup(context, args.type, args.pgdata, args.max_chain_depth, args.delta_checksum)
        _print(result, args.json, "%s backup %s complete (%s): %d of %d files stored, %s stored in %s s; WAL %s..%s"
               % (result["type"], result["backup_id"], result["why"], result["files_stored"], result["files_total"],
                  human_bytes(result["size_stored_bytes"]), result["duration_seconds"],
                  result["wal"]["start_segment"], result["wal"]["stop_segment"]))
        return 0
    if args.command == "backup" and args.type == "transaction_logs":
        from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import run_transaction_logs

        context = Context.from_settings(settings, need_encryption=False)
        result = run_transaction_logs(context)
        _print(result, args.json, "transaction_logs %s: WAL archived through %s (%d segments since %s); RPO "
               "achieved %.1f s" % (result["backup_id"], result["wal"]["stop_segment"], result["wal"]["segments"],
                                    result["wal"]["start_segment"], result["rpo_seconds"]))
        return 0
    if args.command == "wal-shipper":
        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import wal_settings
        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_shipper import WalShipper

        wal = wal_settings(settings)
        context = Context.from_settings(settings, need_postgres=False)
        shipper = WalShipper(context, args.pgdata or wal["pgdata"], args.parallel or wal["parallel"],
                             wal["ack_keep_seconds"])
        status = shipper.run(once=args.once)
        _print(status, args.json, "wal-shipper stopped: %d shipped, %d failures, backlog %d segment(s)" % (
            status["shipped_total"], status["failures_total"], status["backlog_segments"]))
        return 0
    if args.command == "wal-fetch":
        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_fetch import EXIT_FATAL, wal_fetch

        try:
            return wal_fetch(settings, args.name, args.path, relaunch_argv(args.config, settings))
        except PgsafeError as exc:
            LOG.error("wal-fetch %s: %s", args.name, exc.message)
            sys.stderr.write("pgsafe: error: %s\n" % exc.message)
            return EXIT_FATAL
    if args.command == "wal-prefetch":
        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import wal_settings
        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_fetch import prefetch

        context = Context.from_settings(settings, need_postgres=False)
        prefetch(context, args.after, args.spool, args.count, wal_settings(settings)["parallel"])
        return 0
    if args.command == "wal-status":
        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_shipper import read_status

        context = Context.from_settings(settings, need_postgres=False, need_encryption=False)
        status = read_status(context.state_dir, context.cluster)
        _print(status, args.json, "shipper %s; backlog %s segment(s), %s bytes, oldest %s s; last success %s; "
               "failures %s" % ("running" if status["running"] else "NOT running", status.get("backlog_segments"),
                                status.get("lag_bytes"), status.get("lag_seconds"), status.get("last_success"),
                                status.get("failures_total")))
        return 0
    if args.command == "restore-physical":
        from ansible_collections.pgsafe.backup.plugins.module_utils.physical_restore import (
            format_restore, restore_command_for, run_physical_restore)

        context = Context.from_settings(settings)
        target = {"type": "latest"}
        for kind in ("time", "xid", "lsn", "name"):
            if getattr(args, "target_" + kind):
                target = {"type": kind, "value": getattr(args, "target_" + kind)}
        if args.target_immediate:
            target = {"type": "immediate"}
        mapping = dict(item.split("=", 1) for item in args.tablespace_map if "=" in item)
        extra = {"unix_socket_directories": args.socket_dir} if args.socket_dir else {}
        result = run_physical_restore(context, os.path.abspath(args.pgdata), args.port, target,
                                      None if args.backup_id == "latest" else args.backup_id,
                                      restore_command_for(settings, args.config), args.action, args.start,
                                      args.os_user, mapping, extra, force=args.force)
        _print(result, args.json, format_restore(result))
        return 0
    return None


def add_check_parser(commands) -> None:
    check = commands.add_parser("check", help="system status check: PostgreSQL, repositories, keys, disk, "
                                "permissions, WAL archiving; cause and fix for each failure")
    check.add_argument("--only", action="append", metavar="GROUP",
                       help="run only this group (repeatable): postgres, repository, encryption, free_space, "
                       "permissions, wal; and runs (not run by default): runs of the last --runs-hours that "
                       "failed, were killed or exited non-zero, from the run logs")
    check.add_argument("--min-free-mb", type=float, default=1024.0,
                       help="free space needed where pgsafe writes (default 1024; a repository also needs room "
                       "for its largest backup)")
    check.add_argument("--max-wal-archive-age", type=float, default=300.0, metavar="SECONDS",
                       help="oldest WAL segment allowed to wait for archiving (default 300, the RPO alert's)")
    check.add_argument("--max-clock-skew", type=float, default=60.0, metavar="SECONDS",
                       help="clock difference allowed against a repository (default 60)")
    check.add_argument("--runs-hours", type=float, default=25.0, metavar="HOURS",
                       help="how far back --only runs reads the run logs (default 25)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")


def check_command(args, settings: dict) -> int:
    from ansible_collections.pgsafe.backup.plugins.module_utils.preflight import format_report, run_checks

    report = run_checks(settings, config_path=args.config, only=args.only, min_free_mb=args.min_free_mb,
                        max_wal_archive_age_seconds=args.max_wal_archive_age,
                        max_clock_skew_seconds=args.max_clock_skew, runs_hours=args.runs_hours)
    _print(report, args.json, format_report(report))
    return 0 if report["ok"] else 1


def dispatch(args, settings: dict) -> int:
    if args.command == "check":
        return check_command(args, settings)
    handled = dispatch_physical(args, settings)
    if handled is not None:
        return handled
    if args.command == "files":
        return dispatch_files(args, settings)
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
    if args.command in ("hold", "unhold"):
        from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import release_hold, set_hold

        context = Context.from_settings(settings, need_postgres=False, need_encryption=False)
        if args.command == "hold":
            _print(set_hold(context.repository, context.cluster, args.backup_id, args.reason), args.json,
                   "backup %s is on hold: %s" % (args.backup_id, args.reason))
        else:
            released = release_hold(context.repository, context.cluster, args.backup_id)
            sys.stdout.write(("hold on %s released" if released else "backup %s had no hold") % args.backup_id + "\n")
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
