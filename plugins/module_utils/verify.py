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
  restore    each database is restored into a scratch database, every table's row count is
             compared with the manifest's exact counts, SQL probes run, the restore is
             timed, and the scratch database is always dropped
Each failure names the backup, the object and the check. The result is recorded beside
the backup in the repository (``<cluster>/verify/<id>.json``) with, per object, when
and at which level it was proven.
"""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
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
           full_recheck: bool = False, probes=None, copies=None) -> dict:
    """Verify backups; ``backup_ids`` None means the newest complete backup of each type."""
    depth = check_level(level)
    started = time.monotonic()
    report = {"level": level, "cluster": context.cluster, "repository": context.repository.describe(),
              "backups": [], "failures": [], "bytes_read": 0, "objects_skipped": 0}
    entries = list_backups(context.repository, context.cluster)
    complete = [entry for entry in entries if entry["status"] == "complete"]
    _check_presence(context, report, complete, types, max_age_hours, copies or [])
    selected = _select(report, entries, complete, backup_ids, types)
    if depth >= 1:
        for backup_id in selected:
            result = verify_backup(context, backup_id, depth, pg_restore, recheck_days, full_recheck, probes)
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
    at = mf.parse_time(proven["at"])
    return (mf.utcnow() - at) < datetime.timedelta(days=recheck_days)


def verify_backup(context, backup_id: str, depth: int, pg_restore: str | None = None,
                  recheck_days: float = DEFAULT_RECHECK_DAYS, full_recheck: bool = False, probes=None) -> dict:
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
        proven = {"ok": True, "size": info.size, "modified": info.modified, "at": mf.isoformat(mf.utcnow()),
                  "level": LEVELS[depth]}
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
    if depth >= 3 and not result["failures"]:
        _restore_test(context, manifest, result, probes)
    return result


def _decrypt_and_check(context, manifest, obj, pg_restore) -> int:
    from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import open_object

    reader = open_object(context, manifest, obj)
    try:
        if obj.get("format") == "pg_dump-custom":
            _pg_restore_list(reader, pg_restore or context_program(context, "pg_restore", manifest))
        reader.drain_plain()
        reader.finish()
        return reader.raw.count
    finally:
        reader.close()


def _restore_test(context, manifest, result, probes) -> None:
    """Restore each database into a scratch database, compare, probe, always drop it."""
    if manifest["type"] != "logical":
        result["failures"].append(_failure(manifest["backup_id"], None, "restore",
                                           "restore tests of %s backups run through the physical restore "
                                           "(scratch cluster), not this level yet" % manifest["type"]))
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
            restore["probes"] = _run_probes(context, scratch, database, probes)
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


def probes_for(probes, database: str) -> list[str]:
    if not probes:
        return []
    if isinstance(probes, dict):
        return list(probes.get(database) or []) + list(probes.get("*") or [])
    return list(probes)


def _run_probes(context, scratch: str, database: str, probes) -> list[dict]:
    """Each probe is SQL returning one value; it passes when that value is true or a positive number.
    The seeds' checks are of this kind: ``SELECT count(*) > 0 FROM users``."""
    outcomes = []
    queries = probes_for(probes, database)
    if not queries:
        return outcomes
    with context.postgres.connect(scratch) as conn:
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
    def decrypting_reader(source, expected_context):  # pylint: disable=unused-argument
        return source


def _check_name(exc: PgsafeError) -> str:
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
        failures = [failure for failure in report["failures"]
                    if failure["backup_id"] is None or failure["backup_id"] in {e["backup_id"] for e in of_type}]
        verified = [entry for entry in of_type if (entry.get("verification") or {}).get("ok")]
        just_verified = [backup["backup_id"] for backup in report["backups"] if not backup["failures"]]
        newest_verified = [entry for entry in of_type if entry["backup_id"] in just_verified] or verified
        context.metrics.record_verify(context.cluster, backup_type, report["level"], not failures, len(failures),
                                      newest_verified[-1]["age_seconds"] if newest_verified else None,
                                      of_type[-1]["age_seconds"] if of_type else None)


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
