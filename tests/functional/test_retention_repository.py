# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention on real repositories (filesystem and S3 over HTTP) holding 400 days of backups.

The catalog is written through the engine's own manifest and repository code (no
PostgreSQL needed: the policy reads manifests, never data), then ``retention.prune``
runs in check mode and for real. Expectations come from plain date arithmetic
(``expected_gfs`` of the pure tests), not from the module under test. Every protection
(hold, the newest verified backup, incremental chains, WAL a kept physical backup needs)
is set up so that the GFS rules alone would delete it.
"""

from __future__ import annotations

import datetime
import json

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import (
    list_backups, release_hold, set_hold, verify_record_key)
from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.retention import prune
from ansible_collections.pgsafe.backup.plugins.module_utils.retention_policy import BackupRecord
from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import record_key, wal_prefix
from tests.unit.test_retention_policy import expected_gfs

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 22, 6, 0, 0, tzinfo=UTC)
DAY = datetime.timedelta(days=1)
CLUSTER = "gfs"
SEED_POLICY = {"keep_daily": 30, "keep_weekly": 12, "keep_monthly": 12, "min_keep": 1}
SEGMENT_SIZE = 16 * 1024 * 1024


def segment(number: int, timeline: int = 1) -> str:
    return "%08X%08X%08X" % (timeline, number // 256, number % 256)


def write_backup(repository, backup_type: str, finished: datetime.datetime, parent: str | None = None,
                 wal_start: str | None = None, databases=("app",)) -> str:
    started = finished - datetime.timedelta(minutes=10)
    backup_id = mf.format_backup_id(backup_type, started)
    manifest = mf.new_manifest(backup_id, backup_type, CLUSTER, started)
    name = "data.bin"
    payload = backup_id.encode()
    repository.put_bytes(mf.object_key(CLUSTER, backup_id, name), payload)
    manifest["objects"].append({"name": name, "size_raw": len(payload), "size_stored": len(payload)})
    manifest["databases"] = list(databases)
    manifest["parent_backup_id"] = parent
    if wal_start:
        manifest["wal"] = {"start_segment": wal_start, "stop_segment": wal_start}
    mf.write_manifest(repository, mf.finalize(manifest, finished))
    return backup_id


def write_wal(repository, name: str) -> None:
    """A record and its data object, at the keys wal_archive uses (the data is not read here)."""
    repository.put_bytes(record_key(CLUSTER, name), json.dumps({"name": name}).encode())
    repository.put_bytes(wal_prefix(CLUSTER, name[:8]) + name + ".0123456789abcdef.zst.enc", b"x" * 16)


def mark_verified(repository, backup_id: str, ok: bool, at: datetime.datetime) -> None:
    record = {"backup_id": backup_id, "ok": ok, "level": "decrypt", "at": mf.isoformat(at)}
    repository.put_bytes(verify_record_key(CLUSTER, backup_id), json.dumps(record).encode())


@pytest.fixture(params=["filesystem", "s3"])
def context(request, tmp_path):
    settings = {"cluster": CLUSTER, "state_dir": str(tmp_path / "state")}
    if request.param == "filesystem":
        settings["repository"] = {"type": "filesystem", "path": str(tmp_path / "repo"), "create": True}
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        settings["repository"] = {"type": "s3", "bucket": request.getfixturevalue("s3_bucket"),
                                  "endpoint_url": endpoint, "path_style": True, "region": "us-east-1"}
    context = Context.from_settings(settings, need_postgres=False, need_encryption=False)
    # 400 nights on the filesystem; 120 over HTTP (each prune reads every manifest: moto
    # answers ~100 requests/s here), still spanning the daily, weekly and monthly rules.
    context.test_days = 400 if request.param == "filesystem" else 120
    return context


def catalog_ids(context) -> set[str]:
    return {entry["backup_id"] for entry in list_backups(context.repository, CLUSTER, now=NOW)
            if entry["status"] == "complete"}


def wal_names(context) -> set[str]:
    return {info.key.rsplit("/", 1)[-1][:-5] for info in context.repository.list(wal_prefix(CLUSTER))
            if info.key.endswith(".json")}


def test_four_hundred_days_keep_exactly_the_policy_and_every_protection(context):
    repository = context.repository
    days = context.test_days
    # One logical backup a night, at 01:30 UTC (the 0th is this morning's).
    logical = {day: write_backup(repository, "logical", (NOW - day * DAY).replace(hour=1, minute=30))
               for day in range(days)}
    # Protections that GFS alone would delete:
    held = logical[days - 10]
    set_hold(repository, CLUSTER, held, "audit 2026-Q3, ticket OPS-1234")
    # The last 3 nights failed verification; night 3 is the newest verified one.
    for day in (0, 1, 2):
        mark_verified(repository, logical[day], False, NOW)
    mark_verified(repository, logical[3], True, NOW)
    # A physical chain: a full 200 days ago with incrementals on it; the newest incremental
    # is yesterday, so the daily rule keeps it and with it the full and every link between.
    full = write_backup(repository, "full", (NOW - (days // 2) * DAY).replace(hour=3), wal_start=segment(100))
    chain = [full]
    for day in (days // 3, days // 4, 1):
        chain.append(write_backup(repository, "incremental", (NOW - day * DAY).replace(hour=3),
                                  parent=chain[-1], wal_start=segment(1000 - day)))
    # An older full: the monthly rule keeps it (the physical group has backups in fewer than
    # 12 months), and with it the WAL from its start segment onwards.
    older_full = write_backup(repository, "full", (NOW - (days - 10) * DAY).replace(hour=3), wal_start=segment(10))
    for number in (5, 10, 50, 99, 100, 101, 900, 999):
        write_wal(repository, segment(number))
    write_wal(repository, segment(20, timeline=2))  # a later timeline sorts after every timeline-1 name
    repository.put_bytes(record_key(CLUSTER, "00000002.history"), b"{}")

    before = catalog_ids(context)
    assert len(before) == days + 5

    plan = prune(context, SEED_POLICY, check_mode=True, now=NOW)
    assert catalog_ids(context) == before  # check mode deletes nothing
    records = [BackupRecord(backup_id=backup_id, group="logical:app", type="logical",
                            finished_at=(NOW - day * DAY).replace(hour=1, minute=30), complete=True)
               for day, backup_id in logical.items()]
    by_rule = expected_gfs(records, 30, 12, 12, 0)
    expected_logical_kept = by_rule | {held}
    assert logical[3] in by_rule  # (night 3 is within 30 days: also kept by the daily rule)
    decisions = {item["backup_id"]: item for item in plan["plan"]["decisions"]}
    kept = {backup_id for backup_id, item in decisions.items() if item["keep"]}
    assert kept & set(logical.values()) == expected_logical_kept
    assert set(chain) <= kept and older_full in kept
    assert any(reason.startswith("monthly") for reason in decisions[older_full]["reasons"])
    assert any("chain" in reason or "needed by" in reason for reason in decisions[full]["reasons"]), \
        decisions[full]["reasons"]
    assert any("hold" in reason for reason in decisions[held]["reasons"])
    assert plan["wal_keep_from"] == segment(10)
    assert plan["wal_would_delete"] == 2  # the record and the data of segment 5
    assert sorted(plan["would_delete"]) == sorted(before - kept)

    result = prune(context, SEED_POLICY, now=NOW)
    assert sorted(result["deleted"]) == sorted(before - kept) and result["refused"] == []
    assert catalog_ids(context) == kept
    for backup_id in kept:  # every retained backup still has its objects
        assert repository.get_bytes(mf.object_key(CLUSTER, backup_id, "data.bin")) == backup_id.encode()
    assert result["wal_deleted"] == 1
    assert wal_names(context) == {segment(n) for n in (10, 50, 99, 100, 101, 900, 999)} | {
        segment(20, 2), "00000002.history"}

    # A second run finds nothing to do; releasing the hold lets the policy delete it.
    again = prune(context, SEED_POLICY, now=NOW)
    assert again["changed"] is False and again["deleted"] == []
    assert release_hold(repository, CLUSTER, held) is True
    released = prune(context, SEED_POLICY, now=NOW)
    assert released["deleted"] == [held]


def test_a_failed_verification_streak_never_deletes_the_last_good_backup(context):
    repository = context.repository
    ids = [write_backup(repository, "logical", (NOW - day * DAY).replace(hour=1)) for day in range(10)]
    for backup_id in ids[:9]:
        mark_verified(repository, backup_id, False, NOW)
    mark_verified(repository, ids[9], True, NOW)  # 9 nights ago: the only one that restores
    result = prune(context, {"keep_daily": 3, "min_keep": 1}, now=NOW)
    remaining = catalog_ids(context)
    assert ids[9] in remaining and ids[9] not in result["deleted"]
    assert set(ids[:3]) <= remaining


def test_a_hold_needs_a_reason_and_an_existing_backup(context):
    from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, PgsafeError

    backup_id = write_backup(context.repository, "logical", NOW - DAY)
    with pytest.raises(ConfigError) as info:
        set_hold(context.repository, CLUSTER, backup_id, "  ")
    assert "reason" in str(info.value.message)
    with pytest.raises(PgsafeError):
        set_hold(context.repository, CLUSTER, "20200101T000000Z-logical", "ticket")
    assert release_hold(context.repository, CLUSTER, backup_id) is False
