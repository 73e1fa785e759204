# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pgsafe check``: the runbooks' "system status check", automated and with answers.

Each check returns ``{name, ok, severity, detail, cause, fix}``: ``severity`` is ``error``
(backups, WAL archiving or restores cannot work) or ``warning`` (they work, but something
will hurt later); a failing check says what is wrong (``cause``) and what to type or change
(``fix``). One check failing never stops the others: each builds only the part of the
context it needs (config.repository_from, config.envelope_from, PostgresTarget.from_spec), so
a bad key file fails the encryption check and the repository probes still run.

Checks (groups for ``only``):

* ``postgres``: the server answers (version, primary or standby), the role's privileges
  (superuser, or pg_read_all_data for logical dumps; EXECUTE on pg_backup_start/pg_backup_stop
  and pg_read_all_settings for physical backups), client programs new enough for the server.
* ``repository``: every repository (primary and copies) takes a small probe object under
  ``_preflight/``: written, listed, read back byte for byte, deleted. Also the clock skew
  between this host and the store (S3: the response's Date header; filesystem: the probe
  file's mtime, which an NFS server sets).
* ``encryption``: a small message encrypted and decrypted through the configured envelope
  (KMS data key and/or key files), then decrypted by each key on its own, so an escrow key
  or a second KMS region that cannot unwrap is found before the day it is needed.
* ``free_space``: where pgsafe writes (state dir, WAL spool, log dir, filesystem repositories),
  against ``min_free_mb`` and, for a repository, the size of its largest backup.
* ``permissions``: settings file 0640 or stricter, key files 0600, private directories 0700
  (log directory: nothing for others), all owned by the user that runs pgsafe.
* ``wal``: when WAL archiving is configured, archive_command runs ``pgsafe wal-push %p``, the
  shipper runs, and pg_stat_archiver is healthy (no failure newer than the last success, no
  segment waiting longer than ``max_wal_archive_age_seconds``).
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import logging
import os
import re
import secrets
import socket
import stat
import subprocess
import time

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.runlog import FILE_ONLY

LOG = logging.getLogger("pgsafe")

ERROR = "error"
WARNING = "warning"
CHECK_GROUPS = ("postgres", "repository", "encryption", "free_space", "permissions", "wal")
# Run only when asked for: a failed run stays failed for a day, which is the daily check's
# business, not a reason for every preflight of that day to fail.
OPTIONAL_GROUPS = ("runs",)
DEFAULT_RUNS_HOURS = 25.0
DEFAULT_MIN_FREE_MB = 1024
DEFAULT_MAX_WAL_ARCHIVE_AGE_SECONDS = 300.0  # the alert rules' default RPO
DEFAULT_MAX_CLOCK_SKEW_SECONDS = 60.0
# S3 refuses requests signed more than 15 minutes away from its clock (RequestTimeTooSkewed).
S3_SKEW_LIMIT_SECONDS = 900.0
PROBE_PREFIX = "_preflight/"
PROBE_CONTEXT_KIND = "preflight"


@dataclasses.dataclass
class CheckResult:
    """One check's verdict. ``cause`` and ``fix`` are set when it failed."""

    name: str
    ok: bool
    severity: str
    detail: str
    cause: str | None = None
    fix: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def passed(name: str, severity: str, detail: str) -> CheckResult:
    return CheckResult(name, True, severity, detail)


def failed(name: str, severity: str, detail: str, cause: str, fix: str) -> CheckResult:
    return CheckResult(name, False, severity, detail, cause, fix)


def from_error(name: str, severity: str, exc: PgsafeError, detail: str = "", fix: str | None = None) -> CheckResult:
    cause = exc.what + (" [%s]" % exc.where if exc.where else "")
    return failed(name, severity, detail or exc.what, cause, exc.fix or fix or "read the message above")


# --------------------------------------------------------------------------- entry point

def run_checks(settings: dict, config_path: str | None = None, only: list | tuple | None = None,
               wal_archiving: bool | None = None, min_free_mb: float = DEFAULT_MIN_FREE_MB,
               max_wal_archive_age_seconds: float = DEFAULT_MAX_WAL_ARCHIVE_AGE_SECONDS,
               max_clock_skew_seconds: float = DEFAULT_MAX_CLOCK_SKEW_SECONDS,
               runs_hours: float = DEFAULT_RUNS_HOURS) -> dict:
    """Run the checks and return ``{ok, checks, failed, errors, warnings, summary, ...}``.

    ``only`` may also name the optional group ``runs`` (recent runs from the run logs); with it the
    report holds ``problem_runs``.

    ``wal_archiving`` None means "configured when the settings have a ``wal`` section".
    ``ok`` is True only when every check passed (warnings included).
    """
    from ansible_collections.pgsafe.backup.plugins.module_utils.manifest import check_cluster_name

    started = time.monotonic()
    settings = dict(settings or {})
    groups = set(only or CHECK_GROUPS)
    unknown = sorted(groups - set(CHECK_GROUPS + OPTIONAL_GROUPS))
    if unknown:
        raise ConfigError("unknown check group(s) %s" % ", ".join(unknown), where="checks",
                          fix="choose from %s" % ", ".join(CHECK_GROUPS + OPTIONAL_GROUPS))
    cluster = check_cluster_name(str(settings.get("cluster") or "main"))
    wal_configured = bool(settings.get("wal")) if wal_archiving is None else bool(wal_archiving)
    results: list[CheckResult] = []

    def add(result: CheckResult) -> None:
        results.append(result)
        log = LOG.info if result.ok else (LOG.error if result.severity == ERROR else LOG.warning)
        # The command prints the report itself: these lines are for the run log only.
        log("check %s: %s%s", result.name, "ok" if result.ok else "FAILED",
            ": %s" % result.detail if result.ok else ": %s. Fix: %s" % (result.cause, result.fix), extra=FILE_ONLY)

    if "postgres" in groups or "wal" in groups:
        for result in _guarded("postgres", postgres_checks, settings, wal_configured, "postgres" in groups,
                               "wal" in groups, max_wal_archive_age_seconds):
            add(result)
    repositories = _repository_specs(settings)
    if "repository" in groups:
        for label, spec, where in repositories:
            for result in _guarded("repository:%s" % label, probe_repository, settings, cluster, label, spec, where,
                                   max_clock_skew_seconds):
                add(result)
    if "encryption" in groups:
        for result in _guarded("encryption", check_encryption, settings, cluster):
            add(result)
    if "free_space" in groups:
        for result in _guarded("free_space", check_free_space, settings, cluster, repositories, min_free_mb):
            add(result)
    if "permissions" in groups:
        for result in _guarded("permissions", check_permissions, settings, cluster, repositories, config_path):
            add(result)

    found_runs: dict = {}
    if "runs" in groups:
        for result in _guarded("runs", check_recent_runs, settings, runs_hours, found_runs):
            add(result)

    failures = [result for result in results if not result.ok]
    errors = sum(1 for result in failures if result.severity == ERROR)
    warnings = len(failures) - errors
    if failures:
        summary = "%d of %d checks failed (%d error(s), %d warning(s)): %s" % (
            len(failures), len(results), errors, warnings, ", ".join(result.name for result in failures))
    else:
        summary = "all %d checks passed" % len(results)
    report = {"ok": not failures, "cluster": cluster, "checks": [result.to_dict() for result in results],
              "failed": [result.name for result in failures], "errors": errors, "warnings": warnings,
              "summary": summary, "duration_seconds": round(time.monotonic() - started, 3)}
    if "runs" in groups:
        report["problem_runs"] = found_runs.get("problems", [])
    return report


def format_report(report: dict) -> str:
    """One line per check; cause and fix under each failing one."""
    lines = []
    for check in report["checks"]:
        mark = "ok  " if check["ok"] else ("FAIL" if check["severity"] == ERROR else "WARN")
        lines.append("%s %s: %s" % (mark, check["name"], check["detail"]))
        if not check["ok"]:
            lines.append("     cause: %s" % check["cause"])
            lines.append("     fix:   %s" % check["fix"])
    lines.append(report["summary"])
    return "\n".join(lines)


def _repository_specs(settings: dict) -> list[tuple[str, dict, str]]:
    """(label, spec, option path) of the primary repository and every copy."""
    primary = settings.get("repository")
    found = [((primary.get("name") if isinstance(primary, dict) else None) or "primary", primary, "repository")]
    for index, spec in enumerate(settings.get("copies") or []):
        label = (spec.get("name") if isinstance(spec, dict) else None) or "copies[%d]" % index
        found.append((label, spec, "copies[%d]" % index))
    return found


def _guarded(name: str, check, *args) -> list[CheckResult]:
    """Run one check; an unexpected exception becomes a failed result instead of ending the run."""
    try:
        outcome = check(*args)
    except PgsafeError as exc:
        return [from_error(name, ERROR, exc)]
    except Exception as exc:  # a bug or an unforeseen library error must not hide the other checks
        LOG.debug("check %s raised", name, exc_info=True)
        return [failed(name, ERROR, "the check itself failed", "unexpected %s: %s" % (type(exc).__name__, exc),
                       "run `pgsafe --debug check` and report the traceback in the run log")]
    return outcome if isinstance(outcome, list) else [outcome]


# --------------------------------------------------------------------------- PostgreSQL

def postgres_checks(settings: dict, wal_configured: bool, want_postgres: bool, want_wal: bool,
                    max_wal_archive_age_seconds: float) -> list[CheckResult]:
    from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import PostgresTarget, server_info

    try:
        target = PostgresTarget.from_spec(settings.get("postgres"))
        info = server_info(target)
    except PgsafeError as exc:
        # Without a connection neither the privileges nor the archiver can be read: one result says why.
        return [from_error("postgres", ERROR, exc, "cannot reach PostgreSQL")]
    results = []
    if want_postgres:
        role = "standby (in recovery)" if info["in_recovery"] else "primary"
        detail = "PostgreSQL %s at %s, %s, system identifier %s" % (info["version"], target.where, role,
                                                                    info["system_identifier"])
        if wal_configured and info["major"] < 15:
            results.append(failed("postgres", ERROR, detail, "PostgreSQL %s is older than 15: physical backups "
                                  "use pg_backup_start/pg_backup_stop (PostgreSQL 15 and later)" % info["version"],
                                  "upgrade PostgreSQL, or remove the wal section and take logical backups only"))
        else:
            results.append(passed("postgres", ERROR, detail))
    try:
        conn = target.connect()
    except PgsafeError as exc:
        results.append(from_error("postgres_privileges", ERROR, exc))
        return results
    with conn:
        if want_postgres:
            results.append(check_privileges(conn, info, wal_configured, target.where))
            results.append(check_client_programs(target, info))
        if want_wal:
            results.extend(check_wal(conn, settings, info, wal_configured, max_wal_archive_age_seconds))
    return results


def check_privileges(conn, info: dict, wal_configured: bool, where: str) -> CheckResult:
    name = "postgres_privileges"
    major = info["major"]
    columns = ["r.rolsuper", "r.rolreplication", "current_user",
               "pg_has_role(current_user, 'pg_read_all_data', 'MEMBER')" if major >= 14 else "false",
               "pg_has_role(current_user, 'pg_read_all_settings', 'MEMBER')",
               "has_function_privilege('pg_backup_start(text, boolean)', 'EXECUTE')" if major >= 15 else "false",
               "has_function_privilege('pg_backup_stop(boolean)', 'EXECUTE')" if major >= 15 else "false"]
    row = conn.execute("SELECT %s FROM pg_roles r WHERE r.rolname = current_user" % ", ".join(columns)).fetchone()
    superuser, replication, user, read_all_data, read_all_settings, can_start, can_stop = row
    if superuser:
        return passed(name, ERROR, "role %s is a superuser: it can dump every table and run pg_backup_start/"
                      "pg_backup_stop" % user)
    logical_problem = not read_all_data
    physical_missing = []
    if wal_configured:
        if not (can_start and can_stop):
            physical_missing.append("EXECUTE on pg_backup_start/pg_backup_stop")
        if not read_all_settings:
            physical_missing.append("pg_read_all_settings (to read data_directory)")
    detail = "role %s: not a superuser; pg_read_all_data %s; replication %s" % (
        user, "yes" if read_all_data else "no", "yes" if replication else "no")
    if not logical_problem and not physical_missing:
        return passed(name, ERROR, detail + ("; may run pg_backup_start/stop" if wal_configured else ""))
    causes, fixes = [], []
    if physical_missing:
        causes.append("for physical backups the role lacks %s" % " and ".join(physical_missing))
        fixes.append("GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO %s; "
                     "GRANT pg_read_all_settings, pg_monitor TO %s;" % (user, user))
    if logical_problem:
        causes.append("the role is not a member of pg_read_all_data, so a logical backup dumps only the tables "
                      "it has SELECT on and fails on the first it has not")
        fixes.append("GRANT pg_read_all_data TO %s; (or connect as a superuser)" % user)
    return failed(name, ERROR if physical_missing else WARNING, detail, "; ".join(causes) + " [%s]" % where,
                  " ".join(fixes))


def _program_major(path: str) -> int | None:
    try:
        completed = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", completed.stdout or "")
    return int(match.group(1)) if match else None


def check_client_programs(target, info: dict) -> CheckResult:
    name = "postgres_programs"
    found = []
    for program in ("pg_dump", "pg_restore"):
        try:
            path = target.program(program, info["major"])
        except PgsafeError as exc:
            return from_error(name, ERROR, exc)
        major = _program_major(path)
        if major is None:
            return failed(name, ERROR, "%s does not run" % path, "%s --version did not answer with a PostgreSQL "
                          "version" % path, "reinstall the PostgreSQL client package or set postgres.bin_dir")
        if major < info["major"]:
            return failed(name, ERROR, "%s is version %d" % (path, major),
                          "%s %d is older than the server (%d): it refuses to dump a newer server"
                          % (program, major, info["major"]),
                          "install postgresql-client-%d or set postgres.bin_dir to its bin directory" % info["major"])
        found.append("%s %d (%s)" % (program, major, path))
    return passed(name, ERROR, ", ".join(found))


def _stat_archiver(conn) -> dict:
    row = conn.execute(
        "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, "
        "last_failed_time, stats_reset, now() FROM pg_stat_archiver").fetchone()
    keys = ("archived_count", "last_archived_wal", "last_archived_time", "failed_count", "last_failed_wal",
            "last_failed_time", "stats_reset", "now")
    return dict(zip(keys, row))


def _ready_backlog(conn, in_recovery: bool, last_archived: str | None) -> tuple[int | None, datetime.datetime | None]:
    """Segments waiting for archive_command and since when (None when the role may not look)."""
    try:
        row = conn.execute("SELECT count(*), min(modification) FROM pg_ls_archive_statusdir() "
                           "WHERE name LIKE '%.ready'").fetchone()
        return int(row[0]), row[1]
    except Exception:  # psycopg errors: pg_ls_archive_statusdir needs pg_monitor or superuser
        pass
    if in_recovery or not last_archived:
        return None, None
    try:
        current = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        size = int(conn.execute("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()[0])
    except Exception:  # psycopg errors: privileges
        return None, None
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import SEGMENT_RE, parse_segment

    if not (SEGMENT_RE.match(current) and SEGMENT_RE.match(last_archived[:24])) or current[:8] != last_archived[:8]:
        return None, None
    # The segment being written is not due yet: everything between it and the last archived one is.
    return max(0, parse_segment(current, size)[1] - parse_segment(last_archived[:24], size)[1] - 1), None


def _age(now: datetime.datetime, moment: datetime.datetime | None) -> float | None:
    return None if moment is None else max(0.0, (now - moment).total_seconds())


def _when(moment: datetime.datetime | None) -> str:
    if moment is None:
        return "never"
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_wal(conn, settings: dict, info: dict, wal_configured: bool, max_age_seconds: float) -> list[CheckResult]:
    """archive_command is pgsafe's, the shipper runs, and pg_stat_archiver is healthy."""
    row = conn.execute("SELECT current_setting('archive_mode', true), current_setting('archive_command', true), "
                       "current_setting('archive_library', true)").fetchone()
    mode, command, library = row[0] or "off", row[1] or "", row[2] or ""
    wal = settings.get("wal") or {}
    pushed_by = (wal.get("command") if isinstance(wal, dict) else None) or "pgsafe"
    wanted = "%s wal-push %%p" % pushed_by
    is_pgsafe = "wal-push" in command and "%p" in command and not library
    name = "wal_archive_command"
    results = []
    if mode == "off":
        if wal_configured:
            return [failed(name, ERROR, "archive_mode is off",
                           "WAL archiving is configured for pgsafe (wal section) but archive_mode is off: no WAL "
                           "reaches the repository, so physical backups and point-in-time recovery cannot work",
                           "ALTER SYSTEM SET archive_mode = 'on'; ALTER SYSTEM SET archive_command = '%s'; then "
                           "restart PostgreSQL and start `pgsafe wal-shipper`" % wanted)]
        return [passed(name, WARNING, "archive_mode is off and no wal section is configured: logical backups only, "
                       "no point-in-time recovery")]
    if wal_configured and not is_pgsafe:
        shown = ("archive_library is %r (it replaces archive_command)" % library) if library else \
            "archive_command is %r" % command
        results.append(failed(name, ERROR, shown,
                              "%s, not pgsafe's `wal-push %%p`: WAL does not reach the pgsafe repository, so "
                              "physical backups wait for segments that never arrive" % shown,
                              "ALTER SYSTEM SET archive_command = '%s';%s SELECT pg_reload_conf();" % (
                                  wanted, " ALTER SYSTEM RESET archive_library;" if library else "")))
    elif is_pgsafe:
        results.append(passed(name, ERROR, "archive_mode %s, archive_command %r" % (mode, command)))
    else:
        # Another tool archives this server's WAL; pgsafe is not asked to, so that is not our failure.
        return [passed(name, WARNING, "archive_mode %s with archive_command %r (not pgsafe; no wal section "
                       "configured)" % (mode, command or library))]

    if wal_configured and is_pgsafe:
        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_shipper import Spool

        state_dir = settings.get("state_dir") or "/var/lib/pgsafe"
        spool = Spool(state_dir, str(settings.get("cluster") or "main"))
        if spool.shipper_running():
            results.append(passed("wal_shipper", WARNING, "the WAL shipper holds its lock (%s)" % spool.lock_path))
        else:
            results.append(failed("wal_shipper", WARNING, "no WAL shipper is running for this cluster",
                                  "`pgsafe wal-shipper` is not running (its lock %s is free): each wal-push ships "
                                  "its segment itself, loading boto3 and the encryption SDK once per segment, "
                                  "which caps archiving far below the shipper's rate" % spool.lock_path,
                                  "start it: `systemctl start pgsafe-wal-shipper` (installed by "
                                  "pgsafe.backup.install), or run `pgsafe wal-shipper` as the PostgreSQL user"))
    results.append(check_archiver(conn, info, max_age_seconds, command or library))
    return results


def check_archiver(conn, info: dict, max_age_seconds: float, command: str) -> CheckResult:
    name = "wal_archiver"
    stats = _stat_archiver(conn)
    now = stats["now"]
    backlog, oldest_ready = _ready_backlog(conn, info["in_recovery"], stats["last_archived_wal"])
    archived_age = _age(now, stats["last_archived_time"])
    reset = _when(stats["stats_reset"]) if stats["stats_reset"] else "the statistics were reset"
    detail = "%d archived, %d failed since %s; last archived %s%s; %s waiting" % (
        stats["archived_count"], stats["failed_count"], reset,
        stats["last_archived_wal"] or "nothing yet",
        " %.0f s ago" % archived_age if archived_age is not None else "",
        "unknown segments (grant pg_monitor to see them)" if backlog is None else "%d segment(s)" % backlog)
    last_failed = stats["last_failed_time"]
    last_success = stats["last_archived_time"]
    if stats["failed_count"] and last_failed and (last_success is None or last_failed > last_success):
        if last_success:
            since = "after the last success (%s at %s)" % (stats["last_archived_wal"], _when(last_success))
        else:
            since = "and nothing has been archived since %s" % reset
        return failed(name, ERROR, detail,
                      "archive_command is failing: %d failed attempt(s); the latest was for %s at %s, %s. PostgreSQL "
                      "keeps every unarchived segment in pg_wal and retries, so pg_wal grows and the RPO is not met"
                      % (stats["failed_count"], stats["last_failed_wal"], _when(last_failed), since),
                      "read the PostgreSQL server log near %s for the command's own error ('archive command failed "
                      "with exit code'); run it by hand as the PostgreSQL OS user from the data directory "
                      "(archive_command = %r, with %%p = pg_wal/%s) to see it; fix what the repository, encryption "
                      "and permissions checks report; see docs/troubleshooting.md#walarchivefailing"
                      % (_when(last_failed), command, stats["last_failed_wal"]))
    lag = _age(now, oldest_ready)
    if lag is None and backlog:
        # Without pg_ls_archive_statusdir: the last success is the best bound on how long WAL has waited.
        lag = archived_age
    if backlog and lag is not None and lag > max_age_seconds:
        return failed(name, ERROR, detail,
                      "%d WAL segment(s) are waiting to be archived, the oldest for %.0f s (limit %.0f s): the "
                      "archiver is not keeping up and the RPO is at risk" % (backlog, lag, max_age_seconds),
                      "check `pgsafe wal-status` (is the shipper running and shipping?), the repository's "
                      "reachability and throughput (the repository check above), and the server log; see "
                      "docs/troubleshooting.md#walarchivelag")
    return passed(name, ERROR, detail)


# --------------------------------------------------------------------------- repositories

def _probe_key(cluster: str, locked: bool) -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
    if locked:
        # Object Lock keeps every probe until its retention ends: reuse one key per host.
        return "%s%s-%s.probe" % (PROBE_PREFIX, cluster, host)
    return "%s%s-%s-%s.probe" % (PROBE_PREFIX, cluster, host, secrets.token_hex(6))


def probe_repository(settings: dict, cluster: str, label: str, spec, where: str,
                     max_skew_seconds: float) -> list[CheckResult]:
    """Write, list, read back and delete a probe object; measure the clock skew on the way."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import repository_from

    name = "repository:%s" % label
    try:
        repository = repository_from(settings, spec, where)
    except PgsafeError as exc:
        return [from_error(name, ERROR, exc, "the %s repository cannot be opened" % label)]
    location = repository.describe()
    locked = bool(getattr(repository, "object_lock_mode", None))
    key = _probe_key(cluster, locked)
    payload = ("pgsafe preflight probe from %s at %s\n" % (socket.gethostname(), time.time())).encode("utf-8") \
        + secrets.token_hex(16).encode("ascii") + b"\n"
    step = "write"
    written = False
    skew = None
    started = time.monotonic()
    try:
        before = time.time()
        repository.put_bytes(key, payload)
        after = time.time()
        written = True
        step = "list"
        if key not in {info.key for info in repository.list(PROBE_PREFIX)}:
            return [failed(name, ERROR, location, "the probe %s was written but a listing of %s does not show it"
                           % (key, PROBE_PREFIX), "listing is how pgsafe finds backups: check the store's "
                           "consistency and, on S3, the s3:ListBucket permission and repository.prefix")]
        step = "read back"
        if repository.get_bytes(key) != payload:
            return [failed(name, ERROR, location, "the probe %s read back differs from what was written" % key,
                           "the store returns other bytes than it was given: check the volume or S3 gateway "
                           "(and any caching proxy) before trusting backups in it")]
        step = "measure the clock against"
        skew = _clock_skew(repository, key, before, after)
        if not locked:
            step = "delete"
            repository.delete(key)
            written = False
            if repository.stat(key) is not None:
                return [failed(name, ERROR, location, "the probe %s is still there after delete" % key,
                               "check delete permissions (s3:DeleteObject) and versioning/retention settings")]
    except PgsafeError as exc:
        result = from_error(name, ERROR, exc, "could not %s the probe %s in %s" % (step, key, location))
        result.cause = "could not %s the probe object %s: %s" % (step, key, result.cause)
        return [result]
    finally:
        if written and not locked:
            try:
                repository.delete(key)
            except PgsafeError:
                pass  # the failure already reported is the one that matters
    milliseconds = (time.monotonic() - started) * 1000
    detail = "%s: wrote, listed, read back and %s a %d-byte probe under %s in %.0f ms" % (
        location, "kept (Object Lock retains it)" if locked else "deleted", len(payload), PROBE_PREFIX, milliseconds)
    return [passed(name, ERROR, detail), _skew_result(label, repository, skew, max_skew_seconds)]


def _clock_skew(repository, key: str, before: float, after: float) -> tuple[float, str] | None:
    """(store time minus local time, how it was measured), or None when the store does not say."""
    if repository.kind == "s3":
        asked = time.time()
        head = repository._head(key)  # pylint: disable=protected-access
        answered = time.time()
        date = ((head or {}).get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}).get("date")
        if not date:
            return None
        try:
            server = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return None
        # The Date header has whole seconds: compare with the middle of the request.
        return server - (asked + answered) / 2.0, "the S3 response's Date header"
    info = repository.stat(key)
    if info is None:
        return None
    # The mtime is set by whoever stores the file (the NFS server for a network mount).
    if before - 1.0 <= info.modified <= after + 1.0:
        return 0.0, "the probe file's mtime"
    return info.modified - (before + after) / 2.0, "the probe file's mtime"


def _skew_result(label: str, repository, skew, max_skew_seconds: float) -> CheckResult:
    name = "clock:%s" % label
    if skew is None:
        return passed(name, WARNING, "%s does not report its time; skew not measured" % repository.describe())
    seconds, how = skew
    if abs(seconds) < 0.5:
        detail = "this host's clock agrees with %s within a second (from %s)" % (repository.describe(), how)
    else:
        detail = "this host's clock is %.1f s %s %s (from %s)" % (
            abs(seconds), "behind" if seconds > 0 else "ahead of", repository.describe(), how)
    if abs(seconds) <= max_skew_seconds:
        return passed(name, WARNING, detail)
    severe = repository.kind == "s3" and abs(seconds) >= S3_SKEW_LIMIT_SECONDS
    s3_limit = "; S3 refuses requests signed more than 15 minutes off (RequestTimeTooSkewed)" if severe else ""
    return failed(name, ERROR if severe else WARNING, detail,
                  "the clocks differ by %.0f s (limit %.0f s): backup ages, retention and the freshness alerts "
                  "compare times from both sides%s" % (abs(seconds), max_skew_seconds, s3_limit),
                  "synchronise the clock with NTP (chrony or systemd-timesyncd: `chronyc tracking`, `timedatectl`) "
                  "on this host%s" % (" and on the NFS server" if repository.kind == "filesystem" else ""))


# --------------------------------------------------------------------------- encryption

def check_encryption(settings: dict, cluster: str) -> CheckResult:
    """Round trip through the configured envelope, then each wrapping key alone."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import AWS_KEYS, envelope_from, merged_aws
    from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import Envelope

    name = "encryption"
    try:
        envelope = envelope_from(settings)
    except PgsafeError as exc:
        return from_error(name, ERROR, exc, "the encryption settings cannot be used")
    if not envelope.enabled:
        return passed(name, ERROR, "encryption.mode is none: objects are stored unencrypted (by choice)")
    message = b"pgsafe preflight " + secrets.token_bytes(32)
    context = {"pgsafe:cluster": cluster, "pgsafe:kind": PROBE_CONTEXT_KIND}
    started = time.monotonic()
    try:
        sealed = envelope.encrypt_bytes(message, context, name="preflight message")
        if envelope.decrypt_bytes(sealed, context, name="preflight message") != message:
            return failed(name, ERROR, "round trip returned other bytes", "decrypting the preflight message did "
                          "not return what was encrypted", "report this as a pgsafe bug, with the library versions")
    except PgsafeError as exc:
        return from_error(name, ERROR, exc, "encrypt and decrypt of a %d-byte message failed" % len(message))
    spec = dict(settings.get("encryption") or {})
    aws = merged_aws(settings, spec)
    shared = {key: value for key, value in spec.items()
              if key not in AWS_KEYS and key not in ("kms_key_ids", "key_files")}
    singles = [("KMS key %s" % key_id, dict(shared, kms_key_ids=[key_id])) for key_id in envelope.kms_key_ids]
    singles += [("key file %s" % key_file.path, dict(shared, key_files=[{"path": key_file.path,
                                                                        "name": key_file.name}]))
                for key_file in envelope.key_files]
    if len(singles) > 1:
        # The round trip above proves one key; an object must open with ANY configured key.
        for what, single_spec in singles:
            try:
                alone = Envelope.from_spec(single_spec, aws=aws or None)
                if alone.decrypt_bytes(sealed, context, name="preflight message") != message:
                    raise AssertionError("decrypt returned other bytes")
            except (PgsafeError, AssertionError) as exc:
                text = exc.message if isinstance(exc, PgsafeError) else str(exc)
                return failed(name, ERROR, "the %s cannot decrypt on its own" % what,
                              "an object wrapped by every configured key could not be decrypted with the %s "
                              "alone: %s" % (what, text),
                              (exc.fix if isinstance(exc, PgsafeError) and exc.fix else
                               "check that key (KMS key policy kms:Decrypt, region, or the key file's content)") +
                              "; until then that key is not a working escrow or second region")
    keys = ", ".join(what for what, _spec in singles)
    return passed(name, ERROR, "encrypted and decrypted a %d-byte message with %s in %.0f ms%s" % (
        len(message), keys, (time.monotonic() - started) * 1000,
        "; each key decrypts on its own" if len(singles) > 1 else ""))


# --------------------------------------------------------------------------- disk space

def _existing(path: str) -> str:
    """The path, or its nearest existing parent (a directory pgsafe will create lives there)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _mount_point(path: str) -> str:
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _largest_backup_bytes(repository, cluster: str) -> int:
    """Stored bytes of the largest backup (one listing, no manifests read)."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.manifest import backups_prefix

    prefix = backups_prefix(cluster)
    sizes: dict[str, int] = {}
    for info in repository.list(prefix):
        backup_id = info.key[len(prefix):].split("/", 1)[0]
        sizes[backup_id] = sizes.get(backup_id, 0) + info.size
    return max(sizes.values()) if sizes else 0


def _gib(size: float) -> str:
    return "%.1f GiB" % (size / 1024.0 ** 3)


def check_free_space(settings: dict, cluster: str, repositories, min_free_mb: float) -> list[CheckResult]:
    """One result per filesystem pgsafe writes to, against the largest need of the paths on it."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import DEFAULT_STATE_DIR, repository_from
    from ansible_collections.pgsafe.backup.plugins.module_utils.runlog import log_dir_for
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_shipper import Spool

    state_dir = settings.get("state_dir") or DEFAULT_STATE_DIR
    minimum = int(float(min_free_mb) * 1024 * 1024)
    places = [("state_dir", state_dir, minimum), ("WAL spool", Spool(state_dir, cluster).root, minimum)]
    try:
        places.append(("log_dir", log_dir_for(settings), minimum))
    except PgsafeError:
        pass  # a relative log_dir: the command itself refuses it with the fix
    for label, spec, where in repositories:
        if not isinstance(spec, dict) or (spec.get("type") or ("s3" if spec.get("bucket") else "filesystem")) == "s3":
            continue
        need = minimum
        try:
            need = max(minimum, _largest_backup_bytes(repository_from(settings, spec, where), cluster))
        except PgsafeError:
            pass  # the repository check reports why it cannot be opened; still measure the volume
        places.append(("repository %s" % label, str(spec.get("path") or ""), need))
    by_mount: dict[str, dict] = {}
    for label, path, need in places:
        if not path or not os.path.isabs(path):
            continue
        mount = _mount_point(_existing(path))
        entry = by_mount.setdefault(mount, {"labels": [], "need": 0, "path": _existing(path)})
        entry["labels"].append("%s %s" % (label, path))
        entry["need"] = max(entry["need"], need)
    results = []
    for mount, entry in sorted(by_mount.items()):
        name = "free_space:%s" % mount
        try:
            fs_stat = os.statvfs(entry["path"])
        except OSError as exc:
            results.append(failed(name, ERROR, mount, "cannot measure free space at %s: %s" % (
                entry["path"], exc.strerror), "check that the volume is mounted"))
            continue
        free = fs_stat.f_bavail * fs_stat.f_frsize
        total = fs_stat.f_blocks * fs_stat.f_frsize
        detail = "%s free of %s on %s (%s); need %s" % (
            _gib(free), _gib(total), mount, ", ".join(entry["labels"]), _gib(entry["need"]))
        if free >= entry["need"]:
            results.append(passed(name, ERROR, detail))
            continue
        results.append(failed(name, ERROR, detail,
                              "only %s free on %s, below the %s needed (min_free_mb, or the largest backup for a "
                              "repository): the next backup, WAL spool or log write can fail with 'No space left "
                              "on device'" % (_gib(free), mount, _gib(entry["need"])),
                              "free space there: prune expired backups (`pgsafe prune --dry-run`, then `pgsafe "
                              "prune`), remove old run logs, or grow or move the volume; see "
                              "docs/troubleshooting.md#backupstoragecapacity"))
    return results


# --------------------------------------------------------------------------- permissions

def _expected_owner(state_dir: str) -> int:
    """The user pgsafe runs as: us, or when root checks a host, the owner of the state directory
    (the install role makes it the account that timers and archive_command use)."""
    uid = os.geteuid()
    if uid == 0:
        try:
            return os.stat(state_dir).st_uid
        except OSError:
            return 0
    return uid


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return "uid %d" % uid


def check_permissions(settings: dict, cluster: str, repositories, config_path: str | None) -> CheckResult:
    """Secrets private, directories private, everything owned by the user that runs pgsafe."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import DEFAULT_STATE_DIR
    from ansible_collections.pgsafe.backup.plugins.module_utils.runlog import log_dir_for
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_shipper import Spool

    name = "permissions"
    state_dir = settings.get("state_dir") or DEFAULT_STATE_DIR
    owner = _expected_owner(state_dir)
    owner_name = _user_name(owner)
    # (what, path, forbidden mode bits, rule text, owners allowed, chmod value)
    items = []
    if config_path:
        items.append(("settings file", config_path, 0o037, "0640 or stricter", {0, owner}, "640"))
    encryption = settings.get("encryption") if isinstance(settings.get("encryption"), dict) else {}
    for entry in encryption.get("key_files") or []:
        path = entry.get("path") if isinstance(entry, dict) else entry
        if path:
            items.append(("key file", str(path), 0o077, "0600 or 0400", {owner}, "600"))
            items.append(("key directory", os.path.dirname(str(path)), 0o077, "0700", {0, owner}, "700"))
    items.append(("state directory", state_dir, 0o077, "0700", {owner}, "700"))
    items.append(("WAL spool", Spool(state_dir, cluster).root, 0o077, "0700", {owner}, "700"))
    try:
        items.append(("log directory", log_dir_for(settings), 0o027, "0750 or stricter", {owner}, "750"))
    except PgsafeError:
        pass  # a relative log_dir: the command itself refuses it with the fix
    for label, spec, _where in repositories:
        if isinstance(spec, dict) and spec.get("path") and not spec.get("bucket") and spec.get("type") != "s3":
            items.append(("repository %s" % label, str(spec["path"]), 0o077, "0700", {owner}, "700"))
    problems, fixes, checked = [], [], 0
    for what, path, forbidden, rule, owners, chmod in items:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            continue  # created on first use with the right mode; the other checks say if it must exist
        except OSError as exc:
            problems.append("cannot stat %s %s: %s" % (what, path, exc.strerror))
            continue
        checked += 1
        mode = stat.S_IMODE(info.st_mode)
        if mode & forbidden:
            problems.append("%s %s has mode %04o (must be %s)" % (what, path, mode, rule))
            fixes.append("chmod %s %s" % (chmod, path))
        if info.st_uid not in owners:
            problems.append("%s %s is owned by %s, not %s" % (what, path, _user_name(info.st_uid), owner_name))
            fixes.append("chown %s %s" % (owner_name, path))
    detail = "%d path(s) checked for user %s" % (checked, owner_name)
    if not problems:
        return passed(name, ERROR, detail + ": modes and owners are right")
    return failed(name, ERROR, detail, "; ".join(problems) + ". Keys and settings readable by others leak the "
                  "backups' secrets; a path pgsafe's user does not own fails the first scheduled run",
                  "; ".join(fixes) + " (the pgsafe.backup.install role sets these)")


# --------------------------------------------------------------------------- recent runs

def check_recent_runs(settings: dict, hours: float, found: dict) -> list[CheckResult]:
    """The seeds' "check the logs for errors": runs of the last ``hours`` that did not complete."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.run_history import (
        describe, problem_runs, recent_runs)
    from ansible_collections.pgsafe.backup.plugins.module_utils.runlog import log_dir_for

    directory = log_dir_for(settings)
    runs = recent_runs(directory, hours)
    problems = problem_runs(runs)
    found["problems"] = problems
    if not problems:
        return [passed("runs", ERROR, "%d run(s) logged in the last %g h in %s, none failed, was killed or "
                                      "exited non-zero" % (len(runs), hours, directory))]
    shown = "; ".join(describe(run) for run in problems[:5])
    if len(problems) > 5:
        shown += "; and %d more" % (len(problems) - 5)
    return [failed("runs", ERROR, "%d of %d run(s) in the last %g h in %s did not complete" % (
        len(problems), len(runs), hours, directory), shown,
        "read each log named (in %s): its last lines say what failed and how to fix it; a run killed without a "
        "closing line was stopped by a signal, the OOM killer or a reboot (journalctl -k | grep -i oom; uptime); "
        "run the operation again once the cause is fixed" % directory)]
