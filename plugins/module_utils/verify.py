# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verification: a backup is good because it was proven, not because a file exists.

Levels, each including the ones before:
  presence   the newest complete backup of each expected type exists and is fresh
  integrity  manifest intact; every object present with the manifest's size and SHA-256
  decrypt    every object decrypts (authenticated) and decompresses (checksummed), and its
             structure is valid (``pg_restore --list`` for dumps)
Each failure names the backup, the object and the check. The result of each checked
backup is recorded beside it in the repository (``<cluster>/verify/<id>.json``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import time

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups, verify_record_key
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.pipeline import CHUNK_SIZE, ObjectReader

LOG = logging.getLogger("pgsafe")
LEVELS = ("presence", "integrity", "decrypt")


def check_level(level: str) -> int:
    if level not in LEVELS:
        raise ConfigError("unknown verification level %r" % level, where="level",
                          fix="use one of: %s (each includes the ones before)" % ", ".join(LEVELS))
    return LEVELS.index(level)


def verify(context, level: str = "decrypt", backup_ids=None, types=("logical",), max_age_hours: float = 25.0,
           record: bool = True, pg_restore: str | None = None) -> dict:
    """Verify backups; ``backup_ids`` None means the newest complete backup of each type."""
    depth = check_level(level)
    started = time.monotonic()
    report = {"level": level, "cluster": context.cluster, "repository": context.repository.describe(),
              "backups": [], "failures": []}
    entries = list_backups(context.repository, context.cluster)
    complete = [entry for entry in entries if entry["status"] == "complete"]
    for backup_type in types or ():
        newest = [entry for entry in complete if entry["type"] == backup_type]
        if not newest:
            report["failures"].append(_failure(None, None, "presence", "no complete %s backup of cluster %s"
                                               % (backup_type, context.cluster)))
            continue
        age_hours = newest[-1]["age_seconds"] / 3600.0
        if max_age_hours is not None and age_hours > max_age_hours:
            report["failures"].append(_failure(newest[-1]["backup_id"], None, "freshness",
                                               "newest %s backup is %.1f hours old (limit %.1f)"
                                               % (backup_type, age_hours, max_age_hours)))
    if backup_ids in (None, "latest", ["latest"]):
        selected = []
        for backup_type in types or sorted({entry["type"] for entry in complete}):
            of_type = [entry for entry in complete if entry["type"] == backup_type]
            if of_type:
                selected.append(of_type[-1]["backup_id"])
    elif backup_ids in ("all", ["all"]):
        selected = [entry["backup_id"] for entry in complete]
    else:
        selected = list(backup_ids)
        known = {entry["backup_id"]: entry for entry in entries}
        for backup_id in selected:
            if backup_id not in known or known[backup_id]["status"] != "complete":
                report["failures"].append(_failure(backup_id, mf.MANIFEST_NAME, "presence",
                                                   "backup %s is %s" % (backup_id, known.get(backup_id, {}).get(
                                                       "status", "missing"))))
        selected = [backup_id for backup_id in selected if known.get(backup_id, {}).get("status") == "complete"]
    if depth >= 1:
        for backup_id in selected:
            result = verify_backup(context, backup_id, depth, pg_restore)
            report["backups"].append(result)
            report["failures"].extend(result["failures"])
            if record:
                _record(context, result, level)
    report["ok"] = not report["failures"]
    report["duration_seconds"] = round(time.monotonic() - started, 3)
    report["summary"] = summary(report)
    if context.metrics is not None:
        newest = [entry for entry in complete if entry["type"] in (types or ())]
        context.metrics.record_verify(context.cluster, ",".join(types or ()) or "all", level, report["ok"],
                                      len(report["failures"]), None,
                                      newest[-1]["age_seconds"] if newest else None)
    return report


def verify_backup(context, backup_id: str, depth: int, pg_restore: str | None = None) -> dict:
    result = {"backup_id": backup_id, "checks": [], "failures": []}
    try:
        manifest = mf.read_manifest(context.repository, context.cluster, backup_id)
    except PgsafeError as exc:
        result["failures"].append(_failure(backup_id, mf.MANIFEST_NAME, "manifest", exc.message))
        return result
    result["checks"].append({"check": "manifest", "object": mf.MANIFEST_NAME, "ok": True})
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
        try:
            if depth >= 2:
                _decrypt_and_check(context, manifest, obj, pg_restore)
                checks = ("size", "sha256", "decrypt", "structure")
            else:
                reader = ObjectReader(context.repository, key, "none", _Passthrough(), {},
                                      expected_sha256=obj["sha256"], expected_size=obj["size_stored"])
                reader.finish()
                checks = ("size", "sha256")
        except PgsafeError as exc:
            result["failures"].append(_failure(backup_id, obj["name"], _check_name(exc), exc.message))
            continue
        result["checks"].extend({"check": check, "object": obj["name"], "ok": True} for check in checks)
    return result


def _decrypt_and_check(context, manifest, obj, pg_restore) -> None:
    from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import open_object

    reader = open_object(context, manifest, obj)
    try:
        if obj.get("format") == "pg_dump-custom":
            _pg_restore_list(reader, pg_restore or context_program(context, "pg_restore", manifest))
        reader.drain_plain()
        reader.finish()
    finally:
        reader.close()


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
        from ansible_collections.pgsafe.backup.plugins.module_utils.errors import VerificationError

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
              "checks": len(result["checks"])}
    try:
        context.repository.put_bytes(verify_record_key(context.cluster, result["backup_id"]),
                                     json.dumps(record, indent=2, sort_keys=True).encode())
    except PgsafeError as exc:
        LOG.warning("could not record the verification of %s: %s", result["backup_id"], exc.message)


def summary(report: dict) -> str:
    if report["ok"]:
        return "OK: %d backup(s) of cluster %s verified at level %s in %.1f s" % (
            len(report["backups"]), report["cluster"], report["level"], report["duration_seconds"])
    lines = ["FAILED: %d problem(s) in cluster %s at level %s"
             % (len(report["failures"]), report["cluster"], report["level"])]
    for failure in report["failures"]:
        lines.append("  %s %s [%s]: %s" % (failure["backup_id"] or "-", failure["object"] or "-", failure["check"],
                                           failure["message"]))
    return "\n".join(lines)
