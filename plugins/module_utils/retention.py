# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Applying the retention policy to a repository: plan first, then delete safely.

The decisions come from retention_policy.py (pure). This file turns the catalog into
policy records and carries out a plan. A backup is deleted manifest first, so that a
deletion interrupted halfway leaves an incomplete backup (never counted), not a
"complete" one with objects missing.
"""

from __future__ import annotations

import datetime
import logging

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import (
    group_name, hold_key, list_backups, verify_record_key)
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError, RepositoryError
from ansible_collections.pgsafe.backup.plugins.module_utils.locking import RunLock
from ansible_collections.pgsafe.backup.plugins.module_utils.retention_policy import (
    BackupRecord, RetentionPolicy, plan)

LOG = logging.getLogger("pgsafe")


def _when(text: str | None) -> datetime.datetime | None:
    return mf.parse_time(text) if text else None


def records_from_catalog(entries: list[dict]) -> list:
    records = []
    for entry in entries:
        verification = entry.get("verification") or {}
        locked = entry.get("locked_until")
        manifest = entry.get("manifest") or {}
        records.append(BackupRecord(
            backup_id=entry["backup_id"], type=entry["type"],
            group=group_name(entry["type"], entry.get("databases") or []),
            finished_at=_when(entry.get("finished_at")), complete=entry["status"] == "complete",
            started_at=_when(entry.get("started_at")),
            verified_ok=verification.get("ok") if verification else None,
            verified_at=_when(verification.get("at")) if verification else None,
            # A manifest we cannot read may be a passing read error: never prune it automatically.
            hold=entry.get("hold") or ("damaged manifest: investigate" if entry["status"] == "damaged" else None),
            locked_until=datetime.datetime.fromtimestamp(locked, datetime.timezone.utc) if locked else None,
            parent_id=entry.get("parent_backup_id"),
            wal_start=(manifest.get("wal") or {}).get("start_segment"),
            size_bytes=entry.get("size_stored_bytes") or 0))
    return records


def plan_prune(context, policy_spec: dict, now=None) -> tuple:
    """Plan over the whole catalog: chains and WAL needs cross backup types."""
    policy = RetentionPolicy.from_spec(policy_spec)
    entries = list_backups(context.repository, context.cluster, with_manifests=True, now=now)
    return plan(records_from_catalog(entries), policy, now or mf.utcnow()), policy


def prune(context, policy_spec: dict, backup_type: str | None = None, check_mode: bool = False, now=None) -> dict:
    """Plan, and unless check_mode, delete what the plan expires."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import check_backup_type

    check_backup_type(backup_type, "type")
    with RunLock(context.state_dir, context.cluster, "prune"):
        retention_plan, policy = plan_prune(context, policy_spec, now)
        expired = [decision for decision in retention_plan.deleted
                   if backup_type is None or decision.type == backup_type]
        result = {"changed": bool(expired), "cluster": context.cluster,
                  "repository": context.repository.describe(), "plan": retention_plan.to_dict(),
                  "diff": retention_plan.as_diff(), "deleted": [], "refused": [], "summary": retention_plan.summary()}
        wal_expired = _expired_wal(context, retention_plan, backup_type)
        result["wal_keep_from"] = retention_plan.wal_keep_from
        if check_mode:
            result["would_delete"] = [decision.backup_id for decision in expired]
            result["wal_would_delete"] = len(wal_expired)
            result["changed"] = bool(expired or wal_expired)
            return result
        for decision in expired:
            try:
                delete_backup(context.repository, context.cluster, decision.backup_id)
                result["deleted"].append(decision.backup_id)
            except RepositoryError as exc:
                # Object Lock (or a permission) refused: report, keep going, never half-count.
                result["refused"].append({"backup_id": decision.backup_id, "message": exc.message})
        # WAL last: only once the backups that needed it are gone, and never while any
        # retained physical backup's start segment is unknown (wal_keep_from is then None).
        result["wal_deleted"] = 0
        for key in wal_expired:
            try:
                context.repository.delete(key)
                result["wal_deleted"] += key.endswith(".json")
            except RepositoryError as exc:
                result["refused"].append({"wal": key, "message": exc.message})
        try:
            result["abandoned_uploads_removed"] = context.repository.remove_abandoned_uploads(
                policy.incomplete_grace.total_seconds())
        except PgsafeError as exc:
            result["abandoned_uploads_error"] = exc.message
        result["changed"] = bool(result["deleted"] or result["wal_deleted"] or result.get("abandoned_uploads_removed"))
        LOG.info("prune of cluster %s: deleted %d, kept %d", context.cluster, len(result["deleted"]),
                 len(retention_plan.kept))
        return result


def _expired_wal(context, retention_plan, backup_type: str | None) -> list[str]:
    """Archived WAL keys older than every retained physical backup needs (none when unknown)."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import expired_wal_keys

    if retention_plan.wal_keep_from is None or backup_type not in (None, "full", "incremental"):
        return []
    return expired_wal_keys(context.repository, context.cluster, retention_plan.wal_keep_from)


def delete_backup(repository, cluster: str, backup_id: str) -> None:
    """Manifest first: from that moment the backup no longer counts, whatever happens next."""
    repository.delete(mf.manifest_key(cluster, backup_id))
    repository.delete_prefix(mf.backup_prefix(cluster, backup_id))
    for key in (verify_record_key(cluster, backup_id), hold_key(cluster, backup_id)):
        repository.delete(key)
