# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The catalog: what backups a repository holds, their status, and how to pick one.

Status comes from the repository itself, never from a local database that could
drift: a backup directory with a manifest is ``complete``; without one it is
``incomplete`` (in progress, failed or interrupted) and never counts. Verification
results and holds are small JSON records stored beside the backups, so every host
and every repository copy sees the same facts.
"""

from __future__ import annotations

import datetime
import json
import os

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, NotFoundError, PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.repository import join_key


PHYSICAL_TYPES = ("full", "incremental")


def verify_record_key(cluster: str, backup_id: str) -> str:
    return join_key(cluster, "verify", backup_id + ".json")


def hold_key(cluster: str, backup_id: str) -> str:
    return join_key(cluster, "holds", backup_id + ".json")


def _read_json(repository, key: str) -> dict | None:
    try:
        return json.loads(repository.get_bytes(key).decode("utf-8"))
    except NotFoundError:
        return None
    except ValueError:
        return {"damaged": True}


def set_hold(repository, cluster: str, backup_id: str, reason: str, who: str | None = None) -> dict:
    """Put a backup on hold: retention never deletes it until the hold is released."""
    if not (reason or "").strip():
        raise ConfigError("a hold needs a reason", where="reason",
                          fix="say why the backup must be kept (a ticket, an audit, a legal hold)")
    mf.read_manifest(repository, cluster, backup_id)  # only existing, complete backups are held
    record = {"backup_id": backup_id, "reason": reason.strip(), "at": mf.isoformat(mf.utcnow()),
              "by": who or os.environ.get("USER") or "unknown"}
    repository.put_bytes(hold_key(cluster, backup_id), (json.dumps(record, sort_keys=True) + "\n").encode())
    return record


def release_hold(repository, cluster: str, backup_id: str) -> bool:
    """Release a hold; False when there was none."""
    key = hold_key(cluster, backup_id)
    if repository.stat(key) is None:
        return False
    repository.delete(key)
    return True


def list_clusters(repository) -> list[str]:
    return repository.list_dirs("")


def list_backups(repository, cluster: str, backup_type: str | None = None, max_age_days: float | None = None,
                 now: datetime.datetime | None = None, with_manifests: bool = False) -> list[dict]:
    """Every backup of ``cluster``, oldest first by end time (start time for incomplete ones)."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import check_backup_type, check_number

    check_backup_type(backup_type, "type", allowed=mf.BACKUP_TYPES + ("physical",))
    wanted = PHYSICAL_TYPES if backup_type == "physical" else (backup_type,) if backup_type else None
    if max_age_days is not None:
        check_number(max_age_days, "max_age_days", 0.0001, integer=False, fix="use a positive number of days")
    now = now or mf.utcnow()
    prefix = mf.backups_prefix(cluster)
    by_id: dict[str, dict] = {}
    for info in repository.list(prefix):
        backup_id = info.key[len(prefix):].split("/", 1)[0]
        entry = by_id.setdefault(backup_id, {"objects": 0, "stored": 0, "modified": 0.0, "manifest": False,
                                             "locked_until": None})
        entry["objects"] += 1
        entry["stored"] += info.size
        entry["modified"] = max(entry["modified"], info.modified)
        if info.key.endswith("/" + mf.MANIFEST_NAME):
            entry["manifest"] = True
        if info.locked_until:
            entry["locked_until"] = max(entry["locked_until"] or 0, info.locked_until)
    holds = {key.key.rsplit("/", 1)[-1][:-5] for key in repository.list(join_key(cluster, "holds") + "/")}
    verified = {key.key.rsplit("/", 1)[-1][:-5] for key in repository.list(join_key(cluster, "verify") + "/")}
    result = []
    for backup_id, found in by_id.items():
        try:
            id_time, id_type = mf.parse_backup_id(backup_id)
        except PgsafeError:
            continue  # not ours: leave foreign directories alone
        if wanted and id_type not in wanted:
            continue
        entry = {"backup_id": backup_id, "type": id_type, "cluster": cluster, "status": "incomplete",
                 "databases": [], "started_at": mf.isoformat(id_time), "finished_at": None,
                 "size_raw_bytes": None, "size_stored_bytes": found["stored"], "objects": found["objects"],
                 "parent_backup_id": None, "verification": None, "hold": None,
                 "locked_until": found["locked_until"], "repository": repository.name}
        if found["manifest"]:
            try:
                manifest = mf.read_manifest(repository, cluster, backup_id)
            except PgsafeError as exc:
                entry["status"] = "damaged"
                entry["error"] = exc.message
            else:
                entry.update({"status": "complete", "databases": manifest.get("databases", []),
                              "started_at": manifest["started_at"], "finished_at": manifest["finished_at"],
                              "size_raw_bytes": manifest.get("size_raw_bytes"),
                              "size_stored_bytes": manifest.get("size_stored_bytes"),
                              "parent_backup_id": manifest.get("parent_backup_id"),
                              "duration_seconds": manifest.get("duration_seconds")})
                entry.update(_physical_facts(manifest))
                if with_manifests:
                    entry["manifest"] = manifest
        if backup_id in verified:
            entry["verification"] = _read_json(repository, verify_record_key(cluster, backup_id))
        if backup_id in holds:
            entry["hold"] = (_read_json(repository, hold_key(cluster, backup_id)) or {}).get("reason", "on hold")
        moment = mf.parse_time(entry["finished_at"] or entry["started_at"])
        entry["age_seconds"] = round((now - moment).total_seconds(), 1)
        if max_age_days is not None and entry["age_seconds"] > max_age_days * 86400:
            continue
        result.append(entry)
    result.sort(key=lambda item: (item["finished_at"] or item["started_at"], item["backup_id"]))
    return result


def _physical_facts(manifest: dict) -> dict:
    """Chain membership and WAL range of a physical backup (or transaction_logs record), from its manifest."""
    facts = {}
    physical = manifest.get("physical") or {}
    if manifest.get("type") in PHYSICAL_TYPES:
        chain = list(physical.get("chain") or [manifest["backup_id"]])
        facts.update({"chain": chain, "chain_depth": int(physical.get("chain_depth", len(chain) - 1)),
                      "full_backup_id": chain[0], "files_total": physical.get("files_total"),
                      "files_stored": physical.get("files_stored")})
    wal = manifest.get("wal") or {}
    if wal:
        wanted = ("start_segment", "stop_segment", "start_lsn", "stop_lsn", "timeline", "stop_time")
        facts["wal"] = {key: wal[key] for key in wanted if wal.get(key) is not None}
    if (manifest.get("rpo") or {}).get("achieved_seconds") is not None:
        facts["rpo_seconds"] = manifest["rpo"]["achieved_seconds"]
    return facts


def group_name(backup_type: str, databases: list[str]) -> str:
    """What retention and 'latest' are applied per: the type and the set of databases."""
    return "%s:%s" % (backup_type, ",".join(sorted(databases))) if databases else backup_type


def select_backup(repository, cluster: str, backup_id: str | None = "latest", backup_type: str | None = None,
                  database: str | None = None) -> dict:
    """The manifest of one complete backup: by id, or the newest matching type/database."""
    if backup_id and backup_id != "latest":
        mf.parse_backup_id(backup_id)
        try:
            return mf.read_manifest(repository, cluster, backup_id)
        except NotFoundError:
            raise NotFoundError("backup %s has no manifest in %s (it does not exist or is incomplete)"
                                % (backup_id, repository.describe()), where="cluster %s" % cluster,
                                fix="list complete backups with `pgsafe list` and pick one of those") from None
    candidates = [entry for entry in list_backups(repository, cluster, backup_type)
                  if entry["status"] == "complete" and (database is None or database in entry["databases"])]
    if not candidates:
        raise NotFoundError("no complete %sbackup%s of cluster %s in %s" % (
            (backup_type + " ") if backup_type else "", (" containing database %s" % database) if database else "",
            cluster, repository.describe()), where="cluster %s" % cluster,
            fix="take one with `pgsafe backup logical` (or the pg_backup module), or check the cluster name")
    return mf.read_manifest(repository, cluster, candidates[-1]["backup_id"])


def storage_used(repository, cluster: str | None = None) -> dict:
    used = repository.usage_bytes((cluster + "/") if cluster else "")
    capacity = repository.capacity_bytes()
    return {"repository": repository.name, "location": repository.describe(), "used_bytes": used,
            "capacity_bytes": capacity,
            "usage_percent": round(100.0 * used / capacity, 2) if capacity else None}
