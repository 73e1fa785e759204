# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verification: a backup is good because it was proven, not because a file exists.

Levels, each including the ones before:
  presence   the newest complete backup of each expected type exists and is fresh, in
             the primary repository and in every configured copy
  integrity  manifest intact; every object present with the manifest's size and SHA-256.
             Incremental: an object proven within ``recheck_days`` whose size and
             modification time are unchanged is not read again (``full_recheck`` forces it)
  decrypt    every object decrypts (authenticated) and decompresses (checksummed), and its
             structure is valid (``pg_restore --list`` for dumps)
  restore    logical: each database is restored into a scratch database, every table's row
             count is compared with the manifest's exact counts, SQL probes run, the restore
             is timed, and the scratch database is always dropped. Physical (full,
             incremental): the chain is restored into a scratch data directory to the
             backup's own end, started on a free port as the OS user, its databases are
             compared with the manifest's list, every table is counted (reported), SQL
             probes run, and the scratch server is always stopped and its directory removed
Each failure names the backup, the object and the check. The result is recorded beside
the backup in the repository (``<cluster>/verify/<id>.json``) with, per object, when
and at which level it was proven.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups, verify_record_key
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError, NotFoundError, PgsafeError, VerificationError)
from ansible_collections.pgsafe.backup.plugins.module_utils.pipeline import CHUNK_SIZE, ObjectReader

LOG = logging.getLogger("pgsafe")
LEVELS = ("presence", "integrity", "decrypt", "restore")
DEFAULT_RECHECK_DAYS = 7.0


def check_level(level: str) -> int:
    if level not in LEVELS:
        raise ConfigError("unknown verification level %r" % level, where="level",
                          fix="use one of: %s (each includes the ones before)" % ", ".join(LEVELS))
    return LEVELS.index(level)


def max_age_for(max_age_hours, backup_type: str) -> float | None:
    """A number for every type, or a mapping per type (the seeds use 25 hours)."""
    if isinstance(max_age_hours, dict):
        value = max_age_hours.get(backup_type, max_age_hours.get("default"))
    else:
        value = max_age_hours
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError("max_age_hours %r is not a number" % (value,), where="max_age_hours",
                          fix="give hours as a number, or a mapping of backup type to hours") from None


def verify(context, level: str = "decrypt", backup_ids=None, types=("logical",), max_age_hours=25.0,
           record: bool = True, pg_restore: str | None = None, recheck_days: float = DEFAULT_RECHECK_DAYS,
           full_recheck: bool = False, probes=None, copies=None, scratch_dir: str | None = None,
           os_user: str = "postgres") -> dict:
    """Verify backups; ``backup_ids`` None means the newest complete backup of each type.

    ``scratch_dir`` (default: the system's temporary directory) holds the scratch data
    directory of a physical restore test, run as ``os_user``."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import check_backup_type, check_number

    depth = check_level(level)
    for backup_type in types or ():
        check_backup_type(backup_type, "types")
    for hours in (max_age_hours.values() if isinstance(max_age_hours, dict) else [max_age_hours]):
        if hours is not None:  # a mapping gives hours per backup type (max_age_for)
            check_number(hours, "max_age_hours", 0.001, integer=False, fix="use a positive number of hours, e.g. 25")
    _check_probes(probes)
    started = time.monotonic()
    report = {"level": level, "cluster": context.cluster, "repository": context.repository.describe(),
              "backups": [], "failures": [], "bytes_read": 0, "objects_skipped": 0}
    entries = list_backups(context.repository, context.cluster)
    complete = [entry for entry in entries if entry["status"] == "complete"]
    _check_presence(context, report, complete, types, max_age_hours, copies or [])
    selected = _select(report, entries, complete, backup_ids, types)
    if depth >= 1:
        for backup_id in selected:
            result = verify_backup(context, backup_id, depth, pg_restore, recheck_days, full_recheck, probes,
                                   scratch_dir, os_user)
            report["backups"].append(result)
            report["failures"].extend(result["failures"])
            report["bytes_read"] += result["bytes_read"]
            report["objects_skipped"] += result["objects_skipped"]
            if record:
                _record(context, result, level)
    report["ok"] = not report["failures"]
    report["duration_seconds"] = round(time.monotonic() - started, 3)
    report["summary"] = summary(report)
    _publish_metrics(context, report, complete, types)
    return report


def _check_presence(context, report, complete, types, max_age_hours, copies) -> None:
    for backup_type in types or ():
        of_type = [entry for entry in complete if entry["type"] == backup_type]
        if not of_type:
            report["failures"].append(_failure(None, None, "presence", "no complete %s backup of cluster %s in %s"
                                               % (backup_type, context.cluster, context.repository.describe())))
            continue
        newest = of_type[-1]
        limit = max_age_for(max_age_hours, backup_type)
        age_hours = newest["age_seconds"] / 3600.0
        if limit is not None and age_hours > limit:
            report["failures"].append(_failure(newest["backup_id"], None, "freshness",
                                               "newest %s backup is %.1f hours old (limit %.1f)"
                                               % (backup_type, age_hours, limit)))
        for copy in copies:
            # The cloud copy must hold the same newest backup, complete (manifest present).
            if copy.stat(mf.manifest_key(context.cluster, newest["backup_id"])) is None:
                report["failures"].append(_failure(newest["backup_id"], mf.MANIFEST_NAME, "copy",
                                                   "newest %s backup is missing from the copy %s"
                                                   % (backup_type, copy.describe())))


def _select(report, entries, complete, backup_ids, types) -> list[str]:
    if backup_ids in (None, "latest", ["latest"]):
        selected = []
        for backup_type in types or sorted({entry["type"] for entry in complete}):
            of_type = [entry for entry in complete if entry["type"] == backup_type]
            if of_type:
                selected.append(of_type[-1]["backup_id"])
        return selected
    if backup_ids in ("all", ["all"]):
        return [entry["backup_id"] for entry in complete]
    known = {entry["backup_id"]: entry for entry in entries}
    selected = []
    for backup_id in backup_ids:
        status = known.get(backup_id, {}).get("status", "missing")
        if status == "complete":
            selected.append(backup_id)
        else:
            report["failures"].append(_failure(backup_id, mf.MANIFEST_NAME, "presence",
                                               "backup %s is %s" % (backup_id, status)))
    return selected


def previous_record(context, backup_id: str) -> dict:
    try:
        return json.loads(context.repository.get_bytes(verify_record_key(context.cluster, backup_id)).decode())
    except (NotFoundError, ValueError):
        return {}


def _recently_proven(previous: dict, name: str, info, recheck_days: float) -> bool:
    """An object proven at integrity level or deeper, recently, and unchanged since."""
    proven = (previous.get("objects") or {}).get(name)
    if not proven or not proven.get("ok"):
        return False
    if proven.get("size") != info.size or abs(float(proven.get("modified") or 0) - info.modified) > 1e-3:
        return False
    if proven.get("change_token") != info.change_token:
        return False  # rewritten since (S3's LastModified has one-second resolution)
    at = mf.parse_time(proven["at"])
    return (mf.utcnow() - at) < datetime.timedelta(days=recheck_days)


def verify_backup(context, backup_id: str, depth: int, pg_restore: str | None = None,
                  recheck_days: float = DEFAULT_RECHECK_DAYS, full_recheck: bool = False, probes=None,
                  scratch_dir: str | None = None, os_user: str = "postgres") -> dict:
    result = {"backup_id": backup_id, "checks": [], "failures": [], "objects": {}, "bytes_read": 0,
              "objects_skipped": 0}
    try:
        manifest = mf.read_manifest(context.repository, context.cluster, backup_id)
    except PgsafeError as exc:
        result["failures"].append(_failure(backup_id, mf.MANIFEST_NAME, "manifest", exc.message))
        return result
    result["type"] = manifest["type"]
    result["checks"].append({"check": "manifest", "object": mf.MANIFEST_NAME, "ok": True})
    previous = {} if full_recheck else previous_record(context, backup_id)
    for obj in manifest["objects"]:
        key = mf.object_key(context.cluster, backup_id, obj["name"])
        info = context.repository.stat(key)
        if info is None:
            result["failures"].append(_failure(backup_id, obj["name"], "presence", "object is missing"))
            continue
        if info.size != obj["size_stored"]:
            result["failures"].append(_failure(backup_id, obj["name"], "size", "stored size %d, manifest says %d"
                                               % (info.size, obj["size_stored"])))
            continue
        proven = {"ok": True, "size": info.size, "modified": info.modified, "change_token": info.change_token,
                  "at": mf.isoformat(mf.utcnow()), "level": LEVELS[depth]}
        try:
            if depth >= 2:
                result["bytes_read"] += _decrypt_and_check(context, manifest, obj, pg_restore)
                checks = ("size", "sha256", "decrypt", "structure")
            elif _recently_proven(previous, obj["name"], info, recheck_days):
                result["objects_skipped"] += 1
                proven = previous["objects"][obj["name"]]
                checks = ("size", "sha256 (proven %s)" % proven["at"])
            else:
                reader = ObjectReader(context.repository, key, "none", _Passthrough(), {},
                                      expected_sha256=obj["sha256"], expected_size=obj["size_stored"])
                try:
                    reader.finish()
                finally:
                    reader.close()
                result["bytes_read"] += reader.raw.count
                checks = ("size", "sha256")
        except PgsafeError as exc:
            result["failures"].append(_failure(backup_id, obj["name"], _check_name(exc), exc.message))
            continue
        result["objects"][obj["name"]] = proven
        result["checks"].extend({"check": check, "object": obj["name"], "ok": True} for check in checks)
    if manifest["type"] in ("full", "incremental", "transaction_logs"):
        _check_chain_and_wal(context, manifest, result, depth)
    if depth >= 3 and not result["failures"]:
        _restore_test(context, manifest, result, probes, scratch_dir, os_user)
    return result


def _check_chain_and_wal(context, manifest, result, depth) -> None:
    """Physical types: the chain's manifests and the WAL the backup needs (decrypted from depth 2)."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import verify_chain_and_wal

    try:
        found = verify_chain_and_wal(context, manifest, depth >= 2)
    except PgsafeError as exc:
        result["failures"].append(_failure(manifest["backup_id"], None, "wal", exc.message))
        return
    result["checks"].extend(found["checks"])
    result["bytes_read"] += found["bytes_read"]
    result["failures"].extend(_failure(manifest["backup_id"], obj, check, message)
                              for check, obj, message in found["failures"])


def _decrypt_and_check(context, manifest, obj, pg_restore) -> int:
    from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import open_object

    reader = open_object(context, manifest, obj)
    try:
        if obj.get("format") == "pg_dump-custom":
            _pg_restore_list(reader, pg_restore or context_program(context, "pg_restore", manifest))
        elif obj.get("kind") == "files":
            from ansible_collections.pgsafe.backup.plugins.module_utils.files_backup import check_archive

            check_archive(context, manifest, reader)  # every file against the file manifest's SHA-256
        elif obj.get("kind") == "pgdata":
            from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import check_base_backup_tar

            check_base_backup_tar(context, manifest, reader)  # tar members against the backup's file list
        reader.drain_plain()
        reader.finish()
        return reader.raw.count
    finally:
        reader.close()


def _restore_test(context, manifest, result, probes, scratch_dir=None, os_user="postgres") -> None:
    """Restore each database into a scratch database, compare, probe, always drop it."""
    if manifest["type"] == "files":
        _restore_test_files(context, manifest, result)
        return
    if manifest["type"] in ("full", "incremental"):
        _restore_test_physical(context, manifest, result, probes, scratch_dir, os_user)
        return
    if manifest["type"] == "transaction_logs":
        # Nothing of its own to restore; its WAL is replayed by every restore past its
        # base, and point-in-time restores through it are proven by dr_test.
        result.setdefault("notes", []).append(
            "transaction_logs holds no data: not restore-tested (its WAL range was checked; restore-test the "
            "full/incremental backups, or run a point-in-time dr_test through it)")
        return
    if manifest["type"] != "logical":
        result["failures"].append(_failure(manifest["backup_id"], None, "restore",
                                           "no restore test exists for %s backups" % manifest["type"]))
        return
    from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import run_logical_restore
    from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import database_exists, drop_database

    if context.postgres is None:
        raise ConfigError("the restore level needs a PostgreSQL server to restore into", where="level",
                          fix="give the connection options (login_host, port, ...) of a server with room for a "
                          "scratch database")
    result["restores"] = []
    for database in manifest.get("databases", []):
        scratch = "pgsafe_verify_%s" % time.strftime("%Y%m%d%H%M%S")
        started = time.monotonic()
        restore = {"database": database, "scratch_database": scratch, "ok": False}
        try:
            run_logical_restore(context, manifest["backup_id"], database, scratch, force=False,
                                verify_row_counts=True, metrics_is_test=True)
            restore["row_counts"] = "equal to the manifest's"
            restore["probes"] = _run_probes(context.postgres, scratch, database, probes)
            restore["ok"] = True
        except PgsafeError as exc:
            check = "row_counts" if "row counts" in exc.message else ("probe" if "probe" in exc.message else
                                                                      "restore")
            result["failures"].append(_failure(manifest["backup_id"], database, check, exc.message))
        finally:
            try:
                if database_exists(context.postgres, scratch):
                    drop_database(context.postgres, scratch)
            except PgsafeError as exc:
                result["failures"].append(_failure(manifest["backup_id"], database, "cleanup",
                                                   "scratch database %s could not be dropped: %s"
                                                   % (scratch, exc.message)))
            restore["seconds"] = round(time.monotonic() - started, 3)
            result["restores"].append(restore)
        if restore["ok"]:
            result["checks"].append({"check": "restore", "object": database, "ok": True,
                                     "seconds": restore["seconds"]})


# Settings of the scratch server of a physical restore test. It listens on a private socket
# directory only (no TCP), with its own pg_hba.conf (trust, local only: only processes that
# can enter the 0700 directory reach it), a small shared_buffers (it runs beside production),
# no TLS, logs on stderr (read back by the restore), no hot standby, so the source's
# max_connections & co. need not be matched while it recovers to the backup's end, and no
# fsync: the copy is thrown away (the restore skips its sync pass for the same reason).
SCRATCH_SERVER_SETTINGS = {"listen_addresses": "", "ssl": "off", "logging_collector": "off",
                           "shared_buffers": "128MB", "hot_standby": "off", "fsync": "off"}
SCRATCH_RECOVERY_TIMEOUT = 900.0


def _restore_test_physical(context, manifest, result, probes, scratch_dir, os_user) -> None:
    """Restore the chain into a scratch data directory to the backup's own end (target
    immediate), start it as ``os_user``, compare its databases with the manifest's list,
    count every table (information: physical manifests hold no row counts), run the probes;
    always stop the server and remove the directory."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_restore import run_physical_restore

    backup_id = manifest["backup_id"]
    started = time.monotonic()
    restore = {"backup_id": backup_id, "target": "immediate (the end of the backup)", "ok": False}
    result["restores"] = [restore]
    scratch = None
    try:
        scratch = _make_scratch(manifest, scratch_dir, os_user)
        restore["scratch_dir"] = scratch["root"]
        restore["wal_files_staged"] = _stage_wal(context, manifest, scratch["wal"], scratch["owner"])
        port = _free_port()
        settings = dict(SCRATCH_SERVER_SETTINGS, unix_socket_directories=scratch["sock"], hba_file=scratch["hba"])
        restored = run_physical_restore(
            context, scratch["pgdata"], port, {"type": "immediate"}, backup_id,
            restore_command="cp %s/%%f %%p" % shlex.quote(scratch["wal"]), action="promote", start=True,
            os_user=os_user, server_settings=settings, recovery_timeout_seconds=SCRATCH_RECOVERY_TIMEOUT,
            connect_host=scratch["sock"], record_metrics=False, sync=False)
        restore.update({"port": port, "chain": restored["chain"], "state": restored.get("state"),
                        "reached": restored.get("reached"), "files_restored": restored.get("files_restored"),
                        "restore_seconds": round(time.monotonic() - started, 3)})
        if restored["backup_id"] != backup_id or restored.get("skipped"):
            raise VerificationError("the restore could not use backup %s itself: %s" % (
                backup_id, restored.get("chain_recovery") or "it restored %s" % restored["backup_id"]),
                where=backup_id, fix="the backup or its chain is damaged: take a new full backup")
        target = _scratch_target(context, scratch["sock"], port)
        databases = _compare_databases(manifest, target, restore)
        restore["row_counts"] = _count_tables(target, databases)
        restore["probes"] = []
        for database in databases:
            restore["database_in_error"] = database
            restore["probes"].extend(dict(outcome, database=database)
                                     for outcome in _run_probes(target, database, database, probes))
        del restore["database_in_error"]
        restore["ok"] = True
    except (PgsafeError, OSError) as exc:
        message = exc.message if isinstance(exc, PgsafeError) else "%s: %s" % (type(exc).__name__, exc)
        check = _check_name(exc) if isinstance(exc, PgsafeError) and getattr(exc, "check", None) else (
            "probe" if "probe" in message else "restore")
        if scratch and not restore.get("state"):
            restore["server_log_tail"] = _tail(scratch["pgdata"].rstrip("/") + ".restore.log")
        result["failures"].append(_failure(backup_id, restore.pop("database_in_error", None), check, message))
    finally:
        if scratch is not None:
            problem = _remove_scratch(context, manifest, scratch, os_user)
            restore["scratch_removed"] = problem is None
            if problem:
                restore["ok"] = False
                result["failures"].append(_failure(backup_id, None, "cleanup", problem))
        restore["seconds"] = round(time.monotonic() - started, 3)
    if context.metrics is not None:
        try:
            context.metrics.record_restore(context.cluster, manifest["type"], restore["ok"], restore["seconds"],
                                           is_test=True)
        except Exception as exc:  # pylint: disable=broad-except
            LOG.warning("cannot publish metrics: %s", exc)
    if restore["ok"]:
        result["checks"].append({"check": "restore", "object": "cluster", "ok": True, "seconds": restore["seconds"],
                                 "restore_seconds": restore["restore_seconds"]})


class _ScratchCheckError(VerificationError):
    """A restored scratch cluster differs from what the manifest recorded."""

    check = "databases"


def _make_scratch(manifest, scratch_dir, os_user) -> dict:
    """A private (0700) directory owned by ``os_user``: pgdata/, sock/, wal/, pg_hba.conf.
    Refused up front when its file system lacks room for the data directory and its WAL."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_restore import _owner

    owner = _owner(os_user)
    parent = scratch_dir or tempfile.gettempdir()
    if not os.path.isdir(parent):
        raise ConfigError("the scratch directory %s does not exist" % parent, where="scratch_dir",
                          fix="create it, or point scratch_dir (TMPDIR) at a file system with room for a copy of "
                          "the data directory")
    wal = manifest.get("wal") or {}
    needed = int((manifest.get("physical") or {}).get("bytes_total") or manifest.get("size_raw_bytes") or 0) + \
        int(wal.get("segments") or 1) * int(wal.get("segment_size") or 16 * 1024 * 1024)
    free = shutil.disk_usage(parent).free
    if free < needed * 1.1:
        raise ConfigError("the scratch directory %s has %d MB free; the restore test of %s needs about %d MB" % (
            parent, free // 1000000, manifest["backup_id"], needed * 1.1 // 1000000), where="scratch_dir",
            fix="point scratch_dir (or TMPDIR) at a file system with room for a copy of the data directory")
    root = tempfile.mkdtemp(prefix="pgsafe-verify-%s-" % manifest["backup_id"][:15], dir=parent)
    scratch = {"root": root, "pgdata": os.path.join(root, "data"), "sock": os.path.join(root, "sock"),
               "wal": os.path.join(root, "wal"), "hba": os.path.join(root, "pg_hba.conf"), "owner": owner}
    for folder in (scratch["sock"], scratch["wal"]):
        os.mkdir(folder, 0o700)
    descriptor = os.open(scratch["hba"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("# pgsafe verify: scratch server, local socket in a 0700 directory only\n"
                     "local all all trust\n")
    if owner:
        for path in (root, scratch["sock"], scratch["wal"], scratch["hba"]):
            os.chown(path, *owner)
    return scratch


def _stage_wal(context, manifest, folder: str, owner) -> int:
    """The WAL from the backup's start to its stop, verified and decrypted, where the
    scratch server's ``restore_command`` (cp) finds it; its timeline's history file too."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import next_segment, read_archived

    wal = manifest["wal"]
    segment_size = int(wal["segment_size"])
    names = []
    if int(wal["timeline"]) > 1:
        names.append("%08X.history" % int(wal["timeline"]))
    current = wal["start_segment"]
    while True:
        names.append(current)
        if current == wal["stop_segment"]:
            break
        current = next_segment(current, segment_size)
    staged = 0
    for name in names:
        try:
            data = read_archived(context, name)
        except NotFoundError:
            if name.endswith(".history"):
                continue  # never archived (a timeline made by hand): recovery copes without it
            raise
        path = os.path.join(folder, name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        if owner:
            os.chown(path, *owner)
        staged += 1
    return staged


def _free_port() -> int:
    """A TCP port nobody listens on now (the scratch server listens on a socket file only;
    its port names that file and must not be taken by a server on the host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _scratch_target(context, socket_dir: str, port: int):
    from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import PostgresTarget

    user = context.postgres.user if context.postgres is not None and context.postgres.user else "postgres"
    return PostgresTarget(host=socket_dir, port=port, user=user, dbname="postgres", connect_timeout=10)


def _compare_databases(manifest, target, restore) -> list[str]:
    """The restored copy's connectable databases; equal to the manifest's list when it has one."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import list_databases

    restored = list_databases(target)
    restore["databases"] = restored
    expected = (manifest.get("physical") or {}).get("databases")
    if expected is None:
        restore["databases_compared"] = "not compared: this backup's manifest records no database list (taken " \
            "before pgsafe recorded it)"
        return restored
    missing = sorted(set(expected) - set(restored))
    extra = sorted(set(restored) - set(expected))
    if missing or extra:
        raise _ScratchCheckError(
            "the restored copy's databases differ from the backup's list:%s%s" % (
                " missing %s;" % ", ".join(missing) if missing else "",
                " not in the list %s" % ", ".join(extra) if extra else ""),
            where=manifest["backup_id"], fix="the backup does not restore what was backed up: investigate before "
            "trusting it (a database created or dropped in the instant the backup ended shows here too; verify "
            "the next backup)")
    restore["databases_compared"] = "equal to the manifest's list"
    return restored


def _count_tables(target, databases: list[str]) -> dict:
    """Per database: user tables and their exact rows. Reported, not compared (a physical
    manifest holds no row counts); counting reads every heap page of the restored copy."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import count_rows

    counts = {}
    for database in databases:
        try:
            with target.connect(database) as conn:
                tables = count_rows(conn)
        except PgsafeError:
            raise
        except Exception as exc:  # pylint: disable=broad-except  # a read error of the restored data
            raise VerificationError("counting the rows of database %s failed: %s" % (database, str(exc).strip()),
                                    where="restored copy", fix="the restored data cannot be read: investigate the "
                                    "backup before trusting it") from None
        counts[database] = {"tables": len(tables), "rows": sum(tables.values())}
    return counts


def _tail(path: str, size: int = 2000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _remove_scratch(context, manifest, scratch: dict, os_user: str) -> str | None:
    """Stop the scratch server (immediate: it is thrown away) and delete the directory.
    Returns what could not be cleaned up, or None."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_restore import _bin_dir, stop_server

    problems = []
    try:
        stop_server(scratch["pgdata"], os_user, _bin_dir(context, manifest), mode="immediate")
    except PgsafeError as exc:
        problems.append(exc.message)
    shutil.rmtree(scratch["root"], ignore_errors=True)
    if os.path.exists(scratch["root"]):
        problems.append("the scratch directory %s could not be removed" % scratch["root"])
    return "; ".join(problems) or None


def _restore_test_files(context, manifest, result) -> None:
    """Every path restored into a private scratch directory, checked by SHA-256, removed."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.files_backup import restore_test

    try:
        restore = restore_test(context, manifest)
    except PgsafeError as exc:
        result["failures"].append(_failure(manifest["backup_id"], None, "restore", exc.message))
        return
    result["restores"] = [dict(restore, ok=True)]
    result["checks"].append({"check": "restore", "object": "files", "ok": True, "seconds": restore["seconds"]})


def probes_for(probes, database: str) -> list[str]:
    """The probes for one database: a list applies to every database; a mapping is keyed by
    database name, with ``*`` for every one. A single SQL string counts as a list of one."""
    if not probes:
        return []
    if isinstance(probes, dict):
        return _probe_list(probes.get(database), database) + _probe_list(probes.get("*"), "*")
    return _probe_list(probes, None)


def _check_probes(probes) -> None:
    """Refuse malformed probes before anything runs (they are used only at the restore level)."""
    if isinstance(probes, dict):
        for key, value in probes.items():
            _probe_list(value, key)
    elif probes:
        _probe_list(probes, None)


def _probe_list(value, key) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ConfigError("probes%s must be SQL text or a list of SQL texts, not %r" % (
        "[%s]" % key if key else "", value), where="probes",
        fix="e.g. probes: ['SELECT count(*) > 0 FROM users'] or {app: ['SELECT count(*) > 0 FROM users']}")


def _run_probes(target, scratch: str, database: str, probes) -> list[dict]:
    """Each probe is SQL returning one value; it passes when that value is true or a positive number.
    The seeds' checks are of this kind: ``SELECT count(*) > 0 FROM users``."""
    outcomes = []
    queries = probes_for(probes, database)
    if not queries:
        return outcomes
    with target.connect(scratch) as conn:
        for query in queries:
            try:
                row = conn.execute(query).fetchone()
            except Exception as exc:  # pylint: disable=broad-except  # any SQL error fails the probe
                raise VerificationError("probe %r failed: %s" % (query, str(exc).strip()), where=database,
                                        fix="correct the probe SQL, or investigate the restored data") from None
            value = row[0] if row else None
            passed = value is True or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)
            outcomes.append({"probe": query, "value": value, "ok": passed})
            if not passed:
                raise VerificationError("probe %r returned %r" % (query, value), where=database,
                                        fix="the restored data lacks what the probe expects: investigate the "
                                        "source database and the backup before trusting it")
    return outcomes


def context_program(context, name, manifest) -> str:
    major = (manifest.get("postgres") or {}).get("version_num", 0) // 10000 or None
    if context.postgres is not None:
        return context.postgres.program(name, major)
    from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import PostgresTarget

    return PostgresTarget().program(name, major)


def _pg_restore_list(reader, program: str) -> None:
    """Feed the dump to ``pg_restore --list``; it reads the table of contents and exits."""
    process = subprocess.Popen([program, "--list"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        while True:
            chunk = reader.read(CHUNK_SIZE)
            if not chunk:
                break
            process.stdin.write(chunk)
    except BrokenPipeError:
        pass  # it has read the table of contents; the rest is drained by the caller
    finally:
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass
    stderr = process.stderr.read().decode("utf-8", "replace").strip()
    if process.wait() != 0:
        raise VerificationError("pg_restore --list rejects the dump: %s" % stderr[-500:],
                                fix="the dump is structurally invalid; use an earlier backup")


class _Passthrough:
    """An envelope that leaves bytes as they are (integrity level reads stored bytes only)."""

    enabled = False

    @staticmethod
    def decrypting_reader(source, expected_context, name=None):  # pylint: disable=unused-argument
        return source


def _check_name(exc: PgsafeError) -> str:
    if getattr(exc, "check", None):
        return exc.check
    text = exc.message
    if "SHA-256" in text:
        return "sha256"
    if "size" in text:
        return "size"
    if exc.category == "encryption":
        return "decrypt"
    if "pg_restore" in text:
        return "structure"
    return exc.category


def _failure(backup_id, obj, check, message) -> dict:
    return {"backup_id": backup_id, "object": obj, "check": check, "message": message}


def _record(context, result: dict, level: str) -> None:
    record = {"backup_id": result["backup_id"], "level": level, "ok": not result["failures"],
              "at": mf.isoformat(mf.utcnow()), "failures": result["failures"],
              "checks": len(result["checks"]), "objects": result["objects"],
              "restores": result.get("restores")}
    try:
        context.repository.put_bytes(verify_record_key(context.cluster, result["backup_id"]),
                                     json.dumps(record, indent=2, sort_keys=True).encode())
    except PgsafeError as exc:
        LOG.warning("could not record the verification of %s: %s", result["backup_id"], exc.message)


def _publish_metrics(context, report, complete, types) -> None:
    if context.metrics is None:
        return
    for backup_type in types or sorted({entry["type"] for entry in complete}):
        of_type = [entry for entry in complete if entry["type"] == backup_type]
        # By the id's own type: a requested backup that is incomplete or missing is a failure too.
        failures = [failure for failure in report["failures"] if _failure_type(failure) in (None, backup_type)]
        verified = [entry for entry in of_type if (entry.get("verification") or {}).get("ok")]
        just_verified = [backup["backup_id"] for backup in report["backups"] if not backup["failures"]]
        newest_verified = [entry for entry in of_type if entry["backup_id"] in just_verified] or verified
        context.metrics.record_verify(context.cluster, backup_type, report["level"], not failures, len(failures),
                                      newest_verified[-1]["age_seconds"] if newest_verified else None,
                                      of_type[-1]["age_seconds"] if of_type else None)


def _failure_type(failure: dict) -> str | None:
    """The backup type a failure belongs to (None: every type, e.g. 'no complete backup')."""
    try:
        return mf.parse_backup_id(failure["backup_id"])[1] if failure["backup_id"] else None
    except PgsafeError:
        return None


def summary(report: dict) -> str:
    if report["ok"]:
        return "OK: %d backup(s) of cluster %s verified at level %s in %.1f s (%d bytes read, %d object(s) " \
               "already proven)" % (len(report["backups"]), report["cluster"], report["level"],
                                    report["duration_seconds"], report["bytes_read"], report["objects_skipped"])
    lines = ["FAILED: %d problem(s) in cluster %s at level %s"
             % (len(report["failures"]), report["cluster"], report["level"])]
    for failure in report["failures"]:
        lines.append("  %s %s [%s]: %s" % (failure["backup_id"] or "-", failure["object"] or "-", failure["check"],
                                           failure["message"]))
    return "\n".join(lines)
