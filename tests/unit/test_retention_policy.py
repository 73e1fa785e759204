# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The retention policy on synthetic catalogs: exact GFS selection, and every protection under attack.

Expectations are computed here with plain date arithmetic, never with the module's own
helpers, so a shared mistake cannot make both sides agree.
"""

from __future__ import annotations

import datetime
import json
import random

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError
from ansible_collections.pgsafe.backup.plugins.module_utils.retention_policy import (
    BackupRecord,
    RetentionPolicy,
    plan,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 22, 6, 0, 0, tzinfo=UTC)
DAY = datetime.timedelta(days=1)
# Some records carry a +05:00 offset: 02:00 there is 21:00 UTC the previous day.
PLUS5 = datetime.timezone(datetime.timedelta(hours=5))


def ago(days: float = 0, hours: float = 0) -> datetime.datetime:
    return NOW - datetime.timedelta(days=days, hours=hours)


def record(backup_id: str, finished_at: datetime.datetime | None, group: str = "logical:app",
           complete: bool = True, **fields) -> BackupRecord:
    fields.setdefault("type", group.split(":", 1)[0])
    fields.setdefault("started_at", (finished_at - datetime.timedelta(minutes=20)) if finished_at else None)
    return BackupRecord(backup_id=backup_id, group=group, finished_at=finished_at, complete=complete, **fields)


def policy(**options) -> RetentionPolicy:
    return RetentionPolicy(**options)


def kept_ids(retention_plan) -> set[str]:
    return {decision.backup_id for decision in retention_plan.kept}


def reasons_of(retention_plan, backup_id: str) -> list[str]:
    return retention_plan.decision(backup_id).reasons


# --- a catalog spanning more than a year --------------------------------------------------

def long_catalog(seed: int, days: int = 430) -> list[BackupRecord]:
    """About one backup a day: some days twice, some missing, some incomplete, ids unrelated to time."""
    rng = random.Random(seed)
    moments: list[tuple[datetime.datetime, bool]] = []
    for day in range(days):
        if day > 2 and rng.random() < 0.1:
            continue  # a missed night
        runs = 2 if rng.random() < 0.15 else 1
        for _run in range(runs):
            moment = (NOW - day * DAY).replace(hour=0, minute=0, second=0) + datetime.timedelta(
                seconds=rng.randrange(0, 86400))
            moments.append((moment, True))
        if day > 2 and rng.random() < 0.08:
            moments.append(((NOW - day * DAY).replace(hour=rng.randrange(24)), False))  # crashed run
    # Ids are shuffled so any ordering by id instead of finished_at shows up as a wrong plan.
    labels = ["bk-%05d" % number for number in range(len(moments))]
    rng.shuffle(labels)
    records = []
    for label, (moment, complete) in zip(labels, moments):
        if complete and rng.random() < 0.2:
            moment = moment.astimezone(PLUS5)
        if complete:
            records.append(record(label, moment))
        else:
            records.append(record(label, None, complete=False, started_at=moment))
    rng.shuffle(records)
    return records


def expected_gfs(records: list[BackupRecord], daily: int, weekly: int, monthly: int, yearly: int,
                 max_age: datetime.timedelta | None = None) -> set[str]:
    complete = [item for item in records if item.complete]
    if max_age is not None:
        complete = [item for item in complete if item.finished_at >= NOW - max_age]
    complete.sort(key=lambda item: item.finished_at, reverse=True)
    expected: set[str] = set()
    period_rules = (
        (daily, lambda moment: moment.date()),
        (weekly, lambda moment: moment.isocalendar()[:2]),
        (monthly, lambda moment: (moment.year, moment.month)),
        (yearly, lambda moment: moment.year),
    )
    for count, period_of in period_rules:
        periods_seen: list = []
        for item in complete:
            period = period_of(item.finished_at.astimezone(UTC))
            if period not in periods_seen:
                periods_seen.append(period)
                if len(periods_seen) <= count:
                    expected.add(item.backup_id)
    return expected


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("daily, weekly, monthly, yearly", [
    (30, 12, 12, 0),   # the seeds' policy
    (30, 12, 12, 3),
    (7, 4, 6, 2),
    (0, 0, 12, 0),
    (0, 0, 0, 5),
    (1, 0, 0, 0),
    (400, 0, 0, 0),
])
def test_gfs_keeps_exactly_the_expected_backups(seed, daily, weekly, monthly, yearly):
    records = long_catalog(seed)
    assert min(item.finished_at for item in records if item.complete) < NOW - 400 * DAY
    retention_plan = plan(records, policy(keep_daily=daily, keep_weekly=weekly, keep_monthly=monthly,
                                          keep_yearly=yearly), NOW)
    expected = expected_gfs(records, daily, weekly, monthly, yearly)
    # The catalog's incomplete runs are all older than a day, so nothing else is kept.
    assert kept_ids(retention_plan) == expected
    assert all(not reason.startswith("incomplete-in-grace") for decision in retention_plan.decisions
               for reason in decision.reasons)


@pytest.mark.parametrize("seed", [4, 5])
def test_gfs_labels_name_the_utc_period(seed):
    records = long_catalog(seed)
    retention_plan = plan(records, policy(keep_daily=30, keep_weekly=12, keep_monthly=12, keep_yearly=2), NOW)
    for item in records:
        if not item.complete:
            continue
        moment = item.finished_at.astimezone(UTC)
        for reason in reasons_of(retention_plan, item.backup_id):
            if reason.startswith("daily "):
                assert reason == "daily %s" % moment.strftime("%Y-%m-%d")
            if reason.startswith("weekly "):
                assert reason == "weekly %d-W%02d" % moment.isocalendar()[:2]
            if reason.startswith("monthly "):
                assert reason == "monthly %s" % moment.strftime("%Y-%m")
            if reason.startswith("yearly "):
                assert reason == "yearly %d" % moment.year


@pytest.mark.parametrize("seed", [1, 6])
@pytest.mark.parametrize("max_age_days", [45, 200, 365])
def test_max_age_caps_the_gfs_rules(seed, max_age_days):
    records = long_catalog(seed)
    max_age = datetime.timedelta(days=max_age_days)
    retention_plan = plan(records, policy(keep_daily=30, keep_weekly=12, keep_monthly=12, keep_yearly=5,
                                          max_age=max_age), NOW)
    assert kept_ids(retention_plan) == expected_gfs(records, 30, 12, 12, 5, max_age)
    for decision in retention_plan.deleted:
        if decision.finished_at and decision.finished_at < NOW - max_age:
            assert decision.reasons == ["max_age %dd exceeded" % max_age_days]
        elif decision.finished_at:
            assert decision.reasons == ["expired: not selected by any rule"]
        else:
            assert decision.reasons == ["incomplete older than grace 24h"]


def test_ordering_is_by_finished_at_not_by_id():
    # Ids sort the other way round from the times they finished.
    records = [record("z-oldest", ago(3)), record("m-middle", ago(2)), record("a-newest", ago(1))]
    retention_plan = plan(records, policy(keep_last=1, min_keep=0), NOW)
    assert kept_ids(retention_plan) == {"a-newest"}
    assert reasons_of(retention_plan, "a-newest") == ["last #1", "newest-complete (none verified)"]


def test_two_backups_on_one_day_keep_the_newer():
    records = [record("late", ago(1, hours=-10)), record("early", ago(1, hours=-2)), record("today", ago(0))]
    retention_plan = plan(records, policy(keep_daily=2, min_keep=0), NOW)
    assert kept_ids(retention_plan) == {"late", "today"}


def test_a_day_is_a_utc_day():
    # 02:00 at +05:00 on Nov 21 is 21:00 UTC on Nov 20: a different day from the 23:00 UTC Nov 21 run.
    records = [record("east", datetime.datetime(2026, 11, 21, 2, 0, tzinfo=PLUS5)),
               record("utc-20th", datetime.datetime(2026, 11, 20, 10, 0, tzinfo=UTC)),
               record("utc-21st", datetime.datetime(2026, 11, 21, 23, 0, tzinfo=UTC))]
    retention_plan = plan(records, policy(keep_daily=2, min_keep=0), NOW)
    assert kept_ids(retention_plan) == {"east", "utc-21st"}
    assert reasons_of(retention_plan, "east") == ["daily 2026-11-20"]


def test_within_a_period_a_failed_verification_loses_to_a_good_backup():
    records = [record("good", ago(1, hours=-1), verified_ok=True),
               record("failed-later", ago(1, hours=-3), verified_ok=False),
               record("today", ago(0))]
    retention_plan = plan(records, policy(keep_daily=2, min_keep=0), NOW)
    assert kept_ids(retention_plan) == {"good", "today"}


# --- protections under attack --------------------------------------------------------------

def daily_series(days, group: str = "logical:app", prefix: str = "d", **fields) -> list[BackupRecord]:
    return [record("%s%03d" % (prefix, day), ago(day), group=group, **fields) for day in days]


def test_hold_keeps_a_390_day_old_backup():
    records = daily_series(range(0, 400, 10))
    records.append(record("held", ago(390, hours=5), hold="legal case 42"))
    retention_plan = plan(records, policy(keep_daily=7, max_age=datetime.timedelta(days=30)), NOW)
    assert retention_plan.decision("held").keep
    assert reasons_of(retention_plan, "held") == ["hold: legal case 42"]
    assert not retention_plan.decision("d390").keep


def test_hold_keeps_an_old_incomplete_backup():
    records = daily_series(range(3)) + [record("held-partial", None, complete=False, started_at=ago(50),
                                               hold="forensics")]
    retention_plan = plan(records, policy(keep_daily=7), NOW)
    assert reasons_of(retention_plan, "held-partial") == ["hold: forensics"]


@pytest.mark.parametrize("max_age", [None, datetime.timedelta(days=30)])
def test_the_only_verified_backup_survives_when_everything_newer_failed(max_age):
    records = daily_series(range(0, 200), verified_ok=False)
    records.append(record("verified-old", ago(250), verified_ok=True))
    records.append(record("never-checked", ago(260)))
    retention_plan = plan(records, policy(keep_daily=7, max_age=max_age), NOW)
    assert reasons_of(retention_plan, "verified-old") == ["newest-verified"]
    assert not retention_plan.decision("never-checked").keep


def test_newest_verified_is_kept_even_when_gfs_prefers_others():
    records = daily_series(range(0, 40), verified_ok=None)
    records[25] = record("d025", ago(25), verified_ok=True)
    retention_plan = plan(records, policy(keep_daily=3, min_keep=0), NOW)
    assert kept_ids(retention_plan) == {"d000", "d001", "d002", "d025"}
    assert reasons_of(retention_plan, "d025") == ["newest-verified"]


@pytest.mark.parametrize("max_age", [None, datetime.timedelta(days=1)])
def test_when_every_backup_failed_verification_the_newest_complete_stays(max_age):
    records = daily_series(range(5, 15), verified_ok=False)
    retention_plan = plan(records, policy(keep_weekly=1, min_keep=0, max_age=max_age), NOW)
    assert "newest-complete (none verified)" in reasons_of(retention_plan, "d005")
    if max_age:
        assert kept_ids(retention_plan) == {"d005"}


def incremental_chain():
    """An old full, a chain of daily incrementals on top of it, and a newer unrelated full."""
    records = [record("full-old", ago(60), group="full", type="full", wal_start="000000010000000A000000F0"),
               record("full-new", ago(10), group="full", type="full", wal_start="000000010000000B00000040")]
    parent = "full-old"
    for day in range(59, -1, -1):
        backup_id = "inc%03d" % day
        records.append(record(backup_id, ago(day), group="incremental", type="incremental", parent_id=parent,
                              wal_start="000000010000000A%08X" % (0x100 + 59 - day)))
        parent = backup_id
    return records


def test_an_incremental_kept_by_daily_keeps_its_whole_chain():
    records = incremental_chain()
    retention_plan = plan(records, policy(keep_daily=7, max_age=datetime.timedelta(days=30)), NOW)
    assert all(retention_plan.decision("inc%03d" % day).keep for day in range(60))
    assert reasons_of(retention_plan, "full-old") == ["chain-parent-of inc059"]
    assert reasons_of(retention_plan, "inc030") == ["chain-parent-of inc029"]
    assert "daily %s" % ago(0).strftime("%Y-%m-%d") in reasons_of(retention_plan, "inc000")
    # Only the full gets its WAL position from outside the incremental chain.
    assert retention_plan.wal_keep_from == "000000010000000A000000F0"


def test_a_chain_is_released_once_nothing_on_it_is_kept():
    records = incremental_chain()
    records.append(record("inc-next", ago(0, hours=-1), group="incremental", type="incremental",
                          parent_id="full-new", wal_start="000000010000000B00000050"))
    retention_plan = plan(records, policy(keep_last=1, min_keep=1), NOW)
    assert kept_ids(retention_plan) == {"inc-next", "full-new"}
    assert retention_plan.wal_keep_from == "000000010000000B00000040"


def test_a_held_incremental_keeps_its_ancestors():
    records = incremental_chain()
    records = [item for item in records if item.backup_id in ("full-old", "inc059", "inc058", "inc057")]
    records[-1].hold = "audit"  # inc057, the newest here
    records.append(record("logical-new", ago(0)))
    retention_plan = plan(records, policy(keep_daily=1), NOW)
    assert reasons_of(retention_plan, "inc058") == ["chain-parent-of inc057"]
    assert reasons_of(retention_plan, "inc059") == ["chain-parent-of inc058"]
    assert "chain-parent-of inc059" in reasons_of(retention_plan, "full-old")


def test_a_missing_parent_is_reported():
    records = [record("inc", ago(0), group="incremental", type="incremental", parent_id="gone",
                      wal_start="000000010000000000000009")]
    retention_plan = plan(records, policy(keep_daily=1), NOW)
    assert retention_plan.decision("inc").keep
    assert any("gone" in warning for warning in retention_plan.warnings)


@pytest.mark.parametrize("lock_days, kept", [(30, True), (-1, False)])
def test_object_locked_old_backup_is_reported_kept(lock_days, kept):
    records = daily_series(range(0, 10)) + [record("locked", ago(300), locked_until=NOW + lock_days * DAY)]
    retention_plan = plan(records, policy(keep_daily=7), NOW)
    assert retention_plan.decision("locked").keep is kept
    if kept:
        assert reasons_of(retention_plan, "locked") == ["object-lock until 2026-12-22"]
    else:
        assert reasons_of(retention_plan, "locked") == ["expired: not selected by any rule"]


def test_max_age_below_everything_still_keeps_min_keep():
    records = daily_series(range(10, 20))
    retention_plan = plan(records, policy(keep_daily=30, keep_monthly=12, min_keep=2,
                                          max_age=datetime.timedelta(days=5)), NOW)
    assert kept_ids(retention_plan) == {"d010", "d011"}
    assert reasons_of(retention_plan, "d010") == ["newest-complete (none verified)", "min_keep"]
    assert reasons_of(retention_plan, "d011") == ["min_keep"]
    assert reasons_of(retention_plan, "d012") == ["max_age 5d exceeded"]


def test_incomplete_backups_young_and_old():
    records = daily_series(range(1, 6))
    records += [record("running", None, complete=False, started_at=ago(0, hours=2)),
                record("crashed", None, complete=False, started_at=ago(3)),
                record("edge", None, complete=False, started_at=ago(1))]
    retention_plan = plan(records, policy(keep_last=1, min_keep=3), NOW)
    assert reasons_of(retention_plan, "running") == ["incomplete-in-grace"]
    assert reasons_of(retention_plan, "edge") == ["incomplete-in-grace"]  # exactly 24h: still in grace
    assert reasons_of(retention_plan, "crashed") == ["incomplete older than grace 24h"]
    # Incomplete runs never count towards min_keep or keep_last.
    assert kept_ids(retention_plan) == {"d001", "d002", "d003", "running", "edge"}


def test_two_groups_are_pruned_independently():
    records = daily_series(range(0, 40), group="logical:app", prefix="app")
    records += daily_series(range(100, 105), group="logical:billing", prefix="bill")
    retention_plan = plan(records, policy(keep_daily=7), NOW)
    assert kept_ids(retention_plan) == {"app%03d" % day for day in range(7)} | {
        "bill%03d" % day for day in range(100, 105)}
    summary = retention_plan.summary()
    assert summary["groups"]["logical:app"] == {"kept": 7, "deleted": 33, "bytes_deleted": 0}
    assert summary["groups"]["logical:billing"]["deleted"] == 0


# --- WAL ----------------------------------------------------------------------------------

def physical(backup_id, days, wal_start, backup_type="full", **fields):
    return record(backup_id, ago(days), group=backup_type, type=backup_type, wal_start=wal_start, **fields)


@pytest.mark.parametrize("records, expected", [
    ([physical("f1", 20, "000000010000000100000010"), physical("f2", 2, "000000010000000100000080"),
      physical("f3", 1, "0000000100000001000000A0")], "000000010000000100000080"),
    # A promoted standby: timeline 2 sorts after timeline 1, the minimum stays on timeline 1.
    ([physical("f2", 2, "000000010000000100000080"), physical("f3", 1, "000000020000000100000090")],
     "000000010000000100000080"),
    # Lower case from a hand-written manifest is the same segment.
    ([physical("f2", 2, "000000010000000100000080"), physical("f3", 1, "0000000100000001000000a0")],
     "000000010000000100000080"),
    # A kept physical backup whose start segment is unknown: delete no WAL.
    ([physical("f2", 2, None), physical("f3", 1, "0000000100000001000000A0")], None),
    ([physical("f2", 2, "not-a-segment"), physical("f3", 1, "0000000100000001000000A0")], None),
    # No physical backup in the catalog: this plan cannot say what WAL is needed.
    ([record("l1", ago(1))], None),
    # A physical run that may still be in progress has no manifest, hence no start segment.
    ([physical("f3", 1, "0000000100000001000000A0"),
      record("f-running", None, group="full", type="full", complete=False, started_at=ago(0, hours=1))], None),
    # An old crashed physical run does not block WAL removal.
    ([physical("f3", 1, "0000000100000001000000A0"),
      record("f-crashed", None, group="full", type="full", complete=False, started_at=ago(5))],
     "0000000100000001000000A0"),
])
def test_wal_keep_from(records, expected):
    retention_plan = plan(records, policy(keep_daily=2, min_keep=1), NOW)
    assert retention_plan.wal_keep_from == expected


def test_wal_archives_needed_by_a_kept_physical_backup_stay():
    records = [physical("f-old", 40, "000000010000000100000010"), physical("f-new", 7, "000000010000000100000080")]
    records += [record("wal%03d" % day, ago(day), group="transaction_logs", type="transaction_logs")
                for day in range(0, 50, 5)]
    retention_plan = plan(records, policy(keep_last=1), NOW)
    kept = kept_ids(retention_plan)
    # wal000 is kept by keep_last; wal005 finished after f-new started, so it may hold WAL f-new replays.
    assert reasons_of(retention_plan, "wal005") == ["wal-for-retained-backup f-new"]
    assert {"wal010", "wal045"}.isdisjoint(kept)
    assert "f-old" not in kept


# --- plan output --------------------------------------------------------------------------

def test_plan_output_shapes():
    records = daily_series(range(0, 5)) + [record("crashed", None, complete=False, started_at=ago(3),
                                                  size_bytes=5)]
    records[3].size_bytes = 100
    retention_plan = plan(records, policy(keep_last=2), NOW)
    diff = retention_plan.as_diff()
    assert diff["before"] == {"logical:app": ["d004", "crashed", "d003", "d002", "d001", "d000"]}
    assert diff["after"] == {"logical:app": ["d001", "d000"]}
    summary = retention_plan.summary()
    assert (summary["kept"], summary["deleted"], summary["bytes_deleted"]) == (2, 4, 105)
    assert summary["rules"] == {"last": 2, "newest-complete": 1, "min_keep": 1, "expired": 3, "incomplete": 1}
    document = json.loads(json.dumps(retention_plan.to_dict()))
    assert document["deleted"] == ["d004", "crashed", "d003", "d002"]
    assert document["policy"]["keep_last"] == 2
    assert document["decisions"][0]["finished_at"] == "2026-11-18T06:00:00Z"


# --- policy parsing -----------------------------------------------------------------------

def test_from_spec_parses_the_seed_policy():
    parsed = RetentionPolicy.from_spec({"keep_daily": 30, "keep_weekly": 12, "keep_monthly": 12, "max_age": "400d",
                                        "min_keep": 2, "incomplete_grace": "24h"})
    assert parsed == RetentionPolicy(keep_daily=30, keep_weekly=12, keep_monthly=12, min_keep=2,
                                     max_age=datetime.timedelta(days=400))
    assert parsed.to_dict()["max_age"] == "400d"


@pytest.mark.parametrize("text, seconds", [
    ("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("2w", 14 * 86400), (7200, 7200), ("7200", 7200),
    ("45s", 45), (" 3D ", 3 * 86400), (datetime.timedelta(hours=2), 7200),
])
def test_durations(text, seconds):
    parsed = RetentionPolicy.from_spec({"keep_daily": 1, "max_age": text})
    assert parsed.max_age.total_seconds() == seconds


def test_templated_counts_arrive_as_strings():
    assert RetentionPolicy.from_spec({"keep_daily": "30", "keep_weekly": None}).keep_daily == 30


@pytest.mark.parametrize("spec, where", [
    ({"keep_daily": -1}, "retention.keep_daily"),
    ({"keep_daily": 2.5}, "retention.keep_daily"),
    ({"keep_daily": "thirty"}, "retention.keep_daily"),
    ({"keep_daily": True}, "retention.keep_daily"),
    ({"keep_daily": 7, "min_keep": -2}, "retention.min_keep"),
    ({"keep_daily": 7, "keep_dayly": 3}, "retention.keep_dayly"),
    ({"keep_daily": 7, "max_age": "a year"}, "retention.max_age"),
    ({"keep_daily": 7, "max_age": "10y"}, "retention.max_age"),
    ({"keep_daily": 7, "max_age": 0}, "retention.max_age"),
    ({"keep_daily": 7, "max_age": -5}, "retention.max_age"),
    ({"keep_daily": 7, "incomplete_grace": "10m"}, "retention.incomplete_grace"),
    ({"keep_daily": 7, "incomplete_grace": [1]}, "retention.incomplete_grace"),
    ({}, "retention"),
    ({"keep_daily": 0, "keep_weekly": None, "min_keep": 5}, "retention"),
    ("keep 30 days", "retention"),
])
def test_bad_specs_name_the_option(spec, where):
    with pytest.raises(ConfigError) as raised:
        RetentionPolicy.from_spec(spec)
    assert raised.value.where == where
    assert raised.value.fix


# --- properties ---------------------------------------------------------------------------

def random_catalog(rng: random.Random) -> list[BackupRecord]:
    """Up to 40 backups over 800 days: mixed types and groups, chains, holds, locks, failures."""
    records: list[BackupRecord] = []
    for number in range(rng.randint(1, 40)):
        backup_type = rng.choice(["logical", "full", "incremental"])
        complete = rng.random() < 0.75
        moment = ago(rng.randrange(0, 800 * 24 * 60) / (24 * 60))
        earlier = [item.backup_id for item in records if item.type in ("full", "incremental")]
        records.append(BackupRecord(
            backup_id="r%03d" % number, type=backup_type,
            group=rng.choice(["logical:app", "logical:billing"]) if backup_type == "logical" else backup_type,
            finished_at=moment if complete else None, complete=complete, started_at=moment,
            verified_ok=rng.choice([None, True, False]) if complete else None,
            hold=rng.choice([None, None, None, "case"]),
            locked_until=rng.choice([None, None, NOW + DAY, NOW - DAY]),
            parent_id=rng.choice(earlier) if backup_type == "incremental" and earlier else None,
            wal_start=rng.choice([None, "0000000100000001%08X" % number]),
        ))
    return records


def random_policy(rng: random.Random) -> RetentionPolicy:
    counts = {option: rng.randint(0, 15)
              for option in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")}
    if not any(counts.values()):
        counts["keep_daily"] = 1
    max_age = rng.choice([None, datetime.timedelta(days=3), datetime.timedelta(days=300)])
    return RetentionPolicy(min_keep=rng.randint(0, 4), max_age=max_age, **counts)


# Seeded rather than hypothesis-driven: hypothesis is not in requirements-dev.txt, and a
# fixed set of seeds makes a failure reproducible by its number.
@pytest.mark.parametrize("first_seed", range(0, 2000, 250))
def test_protections_always_hold(first_seed):
    for seed in range(first_seed, first_seed + 250):
        rng = random.Random(seed)
        check_protections(random_catalog(rng), random_policy(rng))


def check_protections(records: list[BackupRecord], retention_policy: RetentionPolicy) -> None:
    retention_plan = plan(records, retention_policy, NOW)
    kept = kept_ids(retention_plan)
    deleted = {decision.backup_id for decision in retention_plan.deleted}
    assert kept | deleted == {item.backup_id for item in records}
    assert not kept & deleted
    by_id = {item.backup_id: item for item in records}
    for group in {item.group for item in records}:
        complete = sorted((item for item in records if item.group == group and item.complete),
                          key=lambda item: item.finished_at, reverse=True)
        verified = [item for item in complete if item.verified_ok is True]
        if verified:
            assert verified[0].backup_id in kept
        elif complete:
            assert complete[0].backup_id in kept
        assert {item.backup_id for item in complete[:retention_policy.min_keep]} <= kept
    for item in records:
        if item.hold or (item.locked_until and item.locked_until > NOW):
            assert item.backup_id in kept
        if item.backup_id in kept and item.parent_id:
            assert item.parent_id in kept
        decision = retention_plan.decision(item.backup_id)
        assert decision.reasons
    if retention_plan.wal_keep_from is not None:
        for backup_id in kept:
            item = by_id[backup_id]
            if item.type in ("full", "incremental") and item.complete:
                assert item.wal_start and item.wal_start >= retention_plan.wal_keep_from
