# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The retention policy as pure functions: which backups to keep, which to delete, and why.

No I/O happens here: ``retention.py`` turns the catalog into ``BackupRecord`` objects,
calls :func:`plan`, and carries the plan out. Keeping this pure lets every rule be
tested against synthetic catalogs spanning years, in milliseconds.

How a plan is made (docs/retention.md has the long form and an example):

1. Grandfather-father-son selection per group, like restic/borg/pgBackRest: ``keep_daily N``
   keeps the newest complete backup of each of the N most recent UTC calendar days that
   have one; weekly by ISO week, monthly by calendar month, yearly by year; ``keep_last N``
   keeps the N newest. Ordering is by ``finished_at``, never by id or name.
2. ``max_age`` is a ceiling for step 1 only: a backup older than it is not selected by any
   keep rule. It never overrides the protections below.
3. Protections, which nothing overrides: the newest verified backup per group (or the
   newest complete one if none ever passed), holds, S3 Object Lock, ``min_keep`` newest
   complete per group, and finally every ancestor of a kept incremental.
4. Incomplete backups (no manifest) never count for any rule; they are deleted once older
   than ``incomplete_grace`` and kept while younger, because a run in progress looks the
   same as a failed one until its manifest is written.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from typing import Any, Callable

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError

UTC = datetime.timezone.utc

PHYSICAL_TYPES = ("full", "incremental")
WAL_ARCHIVE_TYPE = "transaction_logs"

# Rules whose count is an int; None or 0 means the rule is off.
KEEP_RULES = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
COUNT_OPTIONS = KEEP_RULES + ("min_keep",)
DURATION_OPTIONS = ("max_age", "incomplete_grace")
SPEC_OPTIONS = COUNT_OPTIONS + DURATION_OPTIONS

DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
DURATION_HELP = "a positive duration such as 30d, 12h, 90m, 2w, or an integer number of seconds"

# A running backup has no manifest yet; deleting it mid-run would make the run fail at the
# very end. Below an hour that risk is real for any database worth backing up.
MIN_INCOMPLETE_GRACE = datetime.timedelta(hours=1)

# WAL segment names: timeline, log, segment, 8 hex digits each.
WAL_SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")


# --- policy -------------------------------------------------------------------------------

def parse_duration(value: Any, option: str) -> datetime.timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s``, an integer of seconds, or a timedelta."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        seconds = -1.0  # YAML `yes` is not a duration
    elif isinstance(value, int):
        seconds = float(value)
    elif isinstance(value, str):
        match = DURATION_RE.match(value.lower())
        if not match:
            raise ConfigError("%r is not a duration" % value, where="retention.%s" % option, fix=DURATION_HELP)
        seconds = float(int(match.group(1)) * DURATION_UNITS[match.group(2)])
    else:
        raise ConfigError("%r is not a duration" % (value,), where="retention.%s" % option, fix=DURATION_HELP)
    if seconds <= 0:
        raise ConfigError("%r is not a positive duration" % (value,), where="retention.%s" % option,
                          fix=DURATION_HELP)
    return datetime.timedelta(seconds=seconds)


def format_duration(duration: datetime.timedelta) -> str:
    """The shortest exact spelling a person would type: 400d, 24h, 90m, 45s."""
    seconds = int(duration.total_seconds())
    # 24h reads better than 1d for a grace period; whole days from two on read as days.
    if seconds % 86400 == 0 and seconds >= 2 * 86400:
        return "%dd" % (seconds // 86400)
    if seconds % 3600 == 0:
        return "%dh" % (seconds // 3600)
    if seconds % 60 == 0:
        return "%dm" % (seconds // 60)
    return "%ds" % seconds


def _parse_count(value: Any, option: str) -> int:
    fix = "a whole number of backups, 0 or more (0 or null turns the rule off)"
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError("%r is not a whole number" % (value,), where="retention.%s" % option, fix=fix)
    if isinstance(value, str):
        # Ansible templates render to strings unless jinja2_native is on: "{{ days }}" is "30".
        if not value.strip().isdigit():
            raise ConfigError("%r is not a whole number" % value, where="retention.%s" % option, fix=fix)
        value = int(value.strip())
    if value < 0:
        raise ConfigError("%d is negative" % value, where="retention.%s" % option, fix=fix)
    return value


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    """What to keep per group. Counts of 0 or None turn a rule off."""

    keep_last: int | None = None
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    min_keep: int = 1
    max_age: datetime.timedelta | None = None
    incomplete_grace: datetime.timedelta = datetime.timedelta(hours=24)

    def __post_init__(self) -> None:
        for option in COUNT_OPTIONS:
            value = getattr(self, option)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError("%r is not a whole number of 0 or more" % (value,), where="retention.%s" % option,
                                  fix="a whole number of backups, 0 or more (0 or null turns the rule off)")
        if not any(getattr(self, option) for option in KEEP_RULES):
            # min_keep alone is a floor, not a policy; an empty retention section is far more
            # often a templating mistake than a wish to keep one backup.
            raise ConfigError("the retention policy keeps nothing: every keep rule is off", where="retention",
                              fix="set at least one of %s to a number above 0, e.g. keep_daily: 30, "
                              "keep_weekly: 12, keep_monthly: 12" % ", ".join(KEEP_RULES))
        if self.max_age is not None and self.max_age.total_seconds() <= 0:
            raise ConfigError("max_age must be positive", where="retention.max_age", fix=DURATION_HELP)
        if self.incomplete_grace < MIN_INCOMPLETE_GRACE:
            raise ConfigError("incomplete_grace %s is shorter than a backup may run"
                              % format_duration(self.incomplete_grace), where="retention.incomplete_grace",
                              fix="use at least 1h (default 24h): an incomplete backup younger than this may "
                              "be a run in progress")

    @classmethod
    def from_spec(cls, spec: dict | None) -> "RetentionPolicy":
        """Parse user input (module option, CLI config); raise ConfigError naming the option."""
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ConfigError("the retention policy must be a mapping, not %s" % type(spec).__name__,
                              where="retention", fix="e.g. {keep_daily: 30, keep_weekly: 12, keep_monthly: 12}")
        unknown = sorted(str(key) for key in spec if key not in SPEC_OPTIONS)
        if unknown:
            raise ConfigError("unknown retention option%s %s" % ("s" if len(unknown) > 1 else "", ", ".join(unknown)),
                              where="retention.%s" % unknown[0], fix="use only: %s" % ", ".join(SPEC_OPTIONS))
        values: dict[str, Any] = {}
        for option in COUNT_OPTIONS:
            if spec.get(option) is not None:
                values[option] = _parse_count(spec[option], option)
        if spec.get("max_age") is not None:
            values["max_age"] = parse_duration(spec["max_age"], "max_age")
        if spec.get("incomplete_grace") is not None:
            values["incomplete_grace"] = parse_duration(spec["incomplete_grace"], "incomplete_grace")
        return cls(**values)

    def to_dict(self) -> dict:
        return {
            "keep_last": self.keep_last or 0,
            "keep_daily": self.keep_daily,
            "keep_weekly": self.keep_weekly,
            "keep_monthly": self.keep_monthly,
            "keep_yearly": self.keep_yearly,
            "min_keep": self.min_keep,
            "max_age": format_duration(self.max_age) if self.max_age else None,
            "incomplete_grace": format_duration(self.incomplete_grace),
        }


# --- inputs and outputs -------------------------------------------------------------------

@dataclasses.dataclass
class BackupRecord:
    """One backup as retention sees it. Times are UTC-aware (naive ones are taken as UTC)."""

    backup_id: str
    type: str
    group: str
    finished_at: datetime.datetime | None
    complete: bool
    started_at: datetime.datetime | None = None
    verified_ok: bool | None = None
    verified_at: datetime.datetime | None = None
    hold: str | None = None
    locked_until: datetime.datetime | None = None
    parent_id: str | None = None
    wal_start: str | None = None
    size_bytes: int = 0


@dataclasses.dataclass
class Decision:
    """Keep or delete one backup, with every rule that keeps it (or why it goes)."""

    backup_id: str
    group: str
    keep: bool
    reasons: list[str]
    type: str = ""
    finished_at: datetime.datetime | None = None
    size_bytes: int = 0

    def to_dict(self) -> dict:
        return {
            "backup_id": self.backup_id,
            "group": self.group,
            "type": self.type,
            "keep": self.keep,
            "reasons": list(self.reasons),
            "finished_at": _iso(self.finished_at),
            "size_bytes": self.size_bytes,
        }


def rule_of(reason: str) -> str:
    """The rule a reason names: 'daily 2026-11-20' -> 'daily', 'hold: case 42' -> 'hold'."""
    return reason.split(" ", 1)[0].rstrip(":")


@dataclasses.dataclass
class RetentionPlan:
    """Every decision, oldest first within each group, and how far back WAL is needed."""

    decisions: list[Decision]
    policy: RetentionPolicy
    now: datetime.datetime
    wal_keep_from: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def kept(self) -> list[Decision]:
        return [decision for decision in self.decisions if decision.keep]

    @property
    def deleted(self) -> list[Decision]:
        return [decision for decision in self.decisions if not decision.keep]

    def decision(self, backup_id: str) -> Decision:
        for decision in self.decisions:
            if decision.backup_id == backup_id:
                return decision
        raise KeyError(backup_id)

    def as_diff(self) -> dict:
        """Ansible's diff: backup ids per group before, and the ids that remain after."""
        before: dict[str, list[str]] = {}
        after: dict[str, list[str]] = {}
        for decision in self.decisions:
            before.setdefault(decision.group, []).append(decision.backup_id)
            after.setdefault(decision.group, [])
            if decision.keep:
                after[decision.group].append(decision.backup_id)
        return {"before": before, "after": after}

    def summary(self) -> dict:
        groups: dict[str, dict] = {}
        rules: dict[str, int] = {}
        for decision in self.decisions:
            counts = groups.setdefault(decision.group, {"kept": 0, "deleted": 0, "bytes_deleted": 0})
            if decision.keep:
                counts["kept"] += 1
            else:
                counts["deleted"] += 1
                counts["bytes_deleted"] += decision.size_bytes
            # A backup kept by daily and weekly counts once for each: this answers
            # "what does each rule hold on to", not "how many backups".
            for rule in sorted({rule_of(reason) for reason in decision.reasons}):
                rules[rule] = rules.get(rule, 0) + 1
        return {
            "total": len(self.decisions),
            "kept": len(self.kept),
            "deleted": len(self.deleted),
            "bytes_deleted": sum(decision.size_bytes for decision in self.deleted),
            "groups": groups,
            "rules": rules,
            "wal_keep_from": self.wal_keep_from,
        }

    def to_dict(self) -> dict:
        return {
            "now": _iso(self.now),
            "policy": self.policy.to_dict(),
            "decisions": [decision.to_dict() for decision in self.decisions],
            "kept": [decision.backup_id for decision in self.kept],
            "deleted": [decision.backup_id for decision in self.deleted],
            "wal_keep_from": self.wal_keep_from,
            "warnings": list(self.warnings),
            "summary": self.summary(),
        }


# --- planning -----------------------------------------------------------------------------

def _utc(moment: datetime.datetime | None) -> datetime.datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _iso(moment: datetime.datetime | None) -> str | None:
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def _newest_first_key(record: BackupRecord) -> tuple:
    # finished_at decides; started_at and id only break exact ties so plans are repeatable.
    return (_utc(record.finished_at), _utc(record.started_at) or datetime.datetime.min.replace(tzinfo=UTC),
            record.backup_id)


PERIODS: tuple[tuple[str, str, Callable[[datetime.datetime], str]], ...] = (
    ("keep_daily", "daily", lambda moment: moment.strftime("%Y-%m-%d")),
    ("keep_weekly", "weekly", lambda moment: "%04d-W%02d" % moment.isocalendar()[:2]),
    ("keep_monthly", "monthly", lambda moment: moment.strftime("%Y-%m")),
    ("keep_yearly", "yearly", lambda moment: moment.strftime("%Y")),
)


def _select_periods(candidates: list[BackupRecord], count: int,
                    period_of: Callable[[datetime.datetime], str]) -> list[tuple[str, BackupRecord]]:
    """The representative of each of the ``count`` most recent periods that have a backup.

    Candidates come newest first. Within a period the newest backup that has not failed
    verification represents it; a period whose backups all failed is still counted (and
    represented by its newest), so a bad week does not silently stretch the policy back
    in time.
    """
    periods: dict[str, list[BackupRecord]] = {}
    for record in candidates:
        periods.setdefault(period_of(_utc(record.finished_at)), []).append(record)
    selected = []
    for period, members in list(periods.items())[:count]:
        good = [record for record in members if record.verified_ok is not False]
        selected.append((period, (good or members)[0]))
    return selected


def plan(records: list[BackupRecord], policy: RetentionPolicy, now: datetime.datetime) -> RetentionPlan:
    """Decide every record. Pure: same inputs, same plan."""
    now = _utc(now)
    by_id = {record.backup_id: record for record in records}
    reasons: dict[str, list[str]] = {record.backup_id: [] for record in records}
    warnings: list[str] = []

    def keep(record: BackupRecord, reason: str) -> None:
        if reason not in reasons[record.backup_id]:
            reasons[record.backup_id].append(reason)

    groups: dict[str, list[BackupRecord]] = {}
    for record in records:
        groups.setdefault(record.group, []).append(record)

    age_limit = now - policy.max_age if policy.max_age else None
    for group, members in groups.items():
        complete = sorted((record for record in members if record.complete and record.finished_at),
                          key=_newest_first_key, reverse=True)

        # 1. GFS and keep_last, under the max_age ceiling.
        candidates = [record for record in complete if age_limit is None or _utc(record.finished_at) >= age_limit]
        for position, record in enumerate(candidates[:policy.keep_last or 0], start=1):
            keep(record, "last #%d" % position)
        for option, label, period_of in PERIODS:
            for period, record in _select_periods(candidates, getattr(policy, option), period_of):
                keep(record, "%s %s" % (label, period))

        # 2. Protections: ignore max_age on purpose.
        verified = [record for record in complete if record.verified_ok is True]
        if verified:
            keep(verified[0], "newest-verified")
        elif complete:
            keep(complete[0], "newest-complete (none verified)")
        for record in complete[:policy.min_keep]:
            keep(record, "min_keep")

        for record in members:
            if record.complete and not record.finished_at:
                keep(record, "complete without finish time")
                warnings.append("backup %s has a manifest but no finish time: kept, since it cannot be ordered"
                                % record.backup_id)
            if not record.complete:
                moment = _utc(record.finished_at or record.started_at)
                if moment is None:
                    keep(record, "incomplete-age-unknown")
                    warnings.append("incomplete backup %s has no start time: kept; remove it by hand once no "
                                    "run is writing it" % record.backup_id)
                elif now - moment <= policy.incomplete_grace:
                    keep(record, "incomplete-in-grace")

    for record in records:
        if record.hold:
            keep(record, "hold: %s" % record.hold)
        locked_until = _utc(record.locked_until)
        if locked_until and locked_until > now:
            # The store refuses the delete anyway; saying so up front keeps the plan honest.
            keep(record, "object-lock until %s" % locked_until.strftime("%Y-%m-%d"))

    # 3. Chains last, so that whatever any rule above kept also keeps what it needs.
    for record in sorted(records, key=lambda item: item.backup_id):
        if not reasons[record.backup_id]:
            continue
        child = record
        seen = {child.backup_id}
        while child.parent_id:
            parent = by_id.get(child.parent_id)
            if parent is None:
                warnings.append("backup %s needs %s, which is not in the catalog: %s cannot be restored"
                                % (child.backup_id, child.parent_id, child.backup_id))
                break
            if parent.backup_id in seen:
                warnings.append("backup %s has a parent loop through %s" % (record.backup_id, parent.backup_id))
                break
            seen.add(parent.backup_id)
            keep(parent, "chain-parent-of %s" % child.backup_id)
            child = parent

    kept_ids = {backup_id for backup_id, kept_by in reasons.items() if kept_by}
    _keep_wal_archives(records, kept_ids, keep)
    kept_ids = {backup_id for backup_id, kept_by in reasons.items() if kept_by}
    wal_keep_from = _wal_keep_from(records, kept_ids, reasons, warnings)

    decisions = []
    for group, members in groups.items():
        for record in sorted(members, key=lambda item: (_utc(item.finished_at or item.started_at)
                                                        or datetime.datetime.min.replace(tzinfo=UTC),
                                                        item.backup_id)):
            kept_by = reasons[record.backup_id]
            if kept_by:
                why = kept_by
            elif not record.complete:
                why = ["incomplete older than grace %s" % format_duration(policy.incomplete_grace)]
            elif age_limit is not None and _utc(record.finished_at) < age_limit:
                why = ["max_age %s exceeded" % format_duration(policy.max_age)]
            else:
                why = ["expired: not selected by any rule"]
            decisions.append(Decision(backup_id=record.backup_id, group=group, keep=bool(kept_by), reasons=list(why),
                                      type=record.type, finished_at=_utc(record.finished_at),
                                      size_bytes=record.size_bytes))
    return RetentionPlan(decisions=decisions, policy=policy, now=now, wal_keep_from=wal_keep_from,
                         warnings=list(dict.fromkeys(warnings)))


def _in_progress(record: BackupRecord, reasons: dict[str, list[str]]) -> bool:
    return not record.complete and "incomplete-in-grace" in reasons[record.backup_id]


def _keep_wal_archives(records: list[BackupRecord], kept_ids: set[str],
                       keep: Callable[[BackupRecord, str], None]) -> None:
    """Keep transaction_logs backups a retained physical backup may replay.

    Their segment ranges are not in the record, so time stands in for position: an
    archive that finished after the oldest retained physical backup started may hold
    WAL that backup needs. Unknown times mean every archive stays.
    """
    archives = [record for record in records if record.type == WAL_ARCHIVE_TYPE and record.backup_id not in kept_ids]
    physical = [record for record in records if record.type in PHYSICAL_TYPES and record.backup_id in kept_ids]
    if not archives or not physical:
        return
    starts = [(_utc(record.started_at or record.finished_at), record.backup_id) for record in physical]
    if any(moment is None for moment, _backup_id in starts):
        for archive in archives:
            keep(archive, "wal-for-retained-backups (a retained physical backup has no start time)")
        return
    oldest_start, oldest_id = min(starts)
    for archive in archives:
        moment = _utc(archive.finished_at or archive.started_at)
        if moment is None or moment >= oldest_start:
            keep(archive, "wal-for-retained-backup %s" % oldest_id)


def _wal_keep_from(records: list[BackupRecord], kept_ids: set[str], reasons: dict[str, list[str]],
                   warnings: list[str]) -> str | None:
    """The oldest WAL segment a retained physical backup needs; None means delete no WAL.

    Assumes PostgreSQL's 24-hex-digit segment names (timeline, log, segment): within a
    timeline they sort lexically in WAL order, and a later timeline sorts after every
    earlier one, so the lexical minimum is never newer than what any retained backup needs.
    Restorable physical backups count, and so do physical runs that may still be in
    progress: they have no manifest, hence no known start segment, hence None.
    """
    needing = [record for record in records
               if record.type in PHYSICAL_TYPES and record.backup_id in kept_ids
               and (record.complete or _in_progress(record, reasons))]
    if not needing:
        return None  # no physical backup seen: this catalog cannot tell what WAL is needed
    segments = []
    for record in needing:
        segment = (record.wal_start or "").upper()
        if not WAL_SEGMENT_RE.match(segment):
            if record.complete:
                warnings.append("retained backup %s has no usable start WAL segment (%r): no WAL may be removed"
                                % (record.backup_id, record.wal_start))
            return None
        segments.append(segment)
    return min(segments)
