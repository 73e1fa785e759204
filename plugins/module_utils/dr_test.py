# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""DR test results: recovery time and data loss against their targets, the report, the metrics.

The pgsafe.backup.dr_test role does the work (restore into an isolated target, start the
services, check the application and the SQL probes, clean up) and records a timeline of
steps. This file turns that timeline into the measurements the runbooks ask for:

* recovery time (achieved RTO): from the start of the restore to the moment the last
  health check passed. A test that never became healthy has no recovery time: it did
  not recover, and a number would understate the outage;
* data loss (achieved RPO): from the newest point the restored data holds to the
  reference moment - the incident time when the test simulates a given incident, else
  the start of the test ("if the disaster had struck when the test began"). For a
  logical backup the newest point is the start of the dump (its snapshot is exported
  then, so later commits are not in it); for a physical restore it is the last replayed
  transaction, else the end of the base backup's WAL;

then evaluates them against the targets, renders the report (JSON and Markdown) and
publishes the seeds' DR metrics (``<prefix>_dr_test_*{type=...}``) through MetricsSink.
Pure functions except ``publish``.
"""

from __future__ import annotations

import datetime

TYPES = ("database", "application", "system")


def parse_moment(value, what: str) -> datetime.datetime | None:
    """A UTC datetime from ISO 8601 (naive means UTC), Unix seconds, or a datetime; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, bool):
        raise ValueError("%s: a boolean is not a time" % what)
    elif isinstance(value, (int, float)):
        moment = datetime.datetime.fromtimestamp(float(value), datetime.timezone.utc)
    else:
        text = str(value).strip().replace(" ", "T", 1)
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        # PostgreSQL writes '+00' for the zone; fromisoformat wants '+00:00'.
        if len(text) > 3 and text[-3] in "+-" and text[-2:].isdigit() and ":" not in text[-3:]:
            text += ":00"
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("%s: %r is not an ISO 8601 time" % (what, value)) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def iso(moment: datetime.datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment else None


def _seconds(later, earlier) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier).total_seconds(), 3)


def timeline(steps) -> list[dict]:
    """Steps with parsed times, a duration each and the offset from the first step's start."""
    parsed = []
    for index, step in enumerate(steps or []):
        name = step.get("name") or "step %d" % (index + 1)
        started = parse_moment(step.get("started_at"), "steps[%d].started_at" % index)
        finished = parse_moment(step.get("finished_at"), "steps[%d].finished_at" % index)
        parsed.append({"name": name, "started": started, "finished": finished, "ok": bool(step.get("ok")),
                       "detail": step.get("detail") or ""})
    origin = min((step["started"] for step in parsed if step["started"]), default=None)
    return [{"step": step["name"], "started_at": iso(step["started"]), "finished_at": iso(step["finished"]),
             "seconds": _seconds(step["finished"], step["started"]),
             "offset_seconds": _seconds(step["started"], origin), "ok": step["ok"], "detail": step["detail"]}
            for step in parsed]


def _target(measured: float | None, target) -> dict:
    target = float(target) if target not in (None, "", 0, 0.0) else None
    if target is None:
        return {"target_seconds": None, "measured_seconds": measured, "met": measured is not None,
                "note": "no target set" if measured is not None else "not measured"}
    met = measured is not None and measured <= target
    return {"target_seconds": target, "measured_seconds": measured, "met": met,
            "note": ("within the target" if met else "target missed") if measured is not None
            else "not measured: the test did not recover"}


def build_report(run_id: str, dr_type: str, cluster: str, host: str, started_at, steps, recovery_started_at,
                 healthy_at, restored_point=None, restored_point_source: str = "", incident_time=None,
                 services=None, app=None, probes=None, backup=None, failure: str = "", cleanup=None,
                 rto_target_seconds=14400, rpo_target_seconds=None, target=None) -> dict:
    """The whole report of one DR test; ``passed`` is the recovery, ``targets_met`` the objectives."""
    if dr_type not in TYPES:
        raise ValueError("type %r is not one of %s" % (dr_type, ", ".join(TYPES)))
    started = parse_moment(started_at, "started_at")
    recovery_start = parse_moment(recovery_started_at, "recovery_started_at")
    healthy = parse_moment(healthy_at, "healthy_at")
    point = parse_moment(restored_point, "restored_point")
    incident = parse_moment(incident_time, "incident_time")
    reference = incident or started
    services = [dict(item) for item in (services or [])]
    probes = [dict(item) for item in (probes or [])]
    app = dict(app or {})
    steps_out = timeline(steps)
    services_ok = bool(services) and all(item.get("ok") for item in services)
    app_checked = bool(app.get("url")) or bool(probes)
    app_ok = bool(app.get("ok", True) if app.get("url") else True) and all(item.get("ok") for item in probes) \
        and app_checked
    # The recovery, not the cleanup: a cleanup that left something is reported (cleanup_ok) and
    # fails the test's ``ok``, but the service did recover.
    passed = not failure and healthy is not None and services_ok and app_ok
    recovery_seconds = _seconds(healthy, recovery_start) if passed else None
    data_loss_seconds = _seconds(reference, point) if point else None
    if data_loss_seconds is not None and data_loss_seconds < 0:
        # The restored data is newer than the reference (an incident time before the backup):
        # nothing committed before the incident was lost.
        data_loss_seconds = 0.0
    rto = _target(recovery_seconds, rto_target_seconds)
    rpo = _target(data_loss_seconds, rpo_target_seconds)
    cleanup = dict(cleanup or {})
    return {
        "format": "pgsafe-dr-test-report", "run_id": run_id, "type": dr_type, "cluster": cluster, "host": host,
        "started_at": iso(started), "incident_time": iso(incident),
        "reference_time": iso(reference),
        "reference": "incident_time" if incident else "start of the test (as if the disaster struck then)",
        "recovery_started_at": iso(recovery_start), "healthy_at": iso(healthy),
        "passed": passed, "failure": failure or None,
        "recovery_time_seconds": recovery_seconds,
        "data_loss_seconds": data_loss_seconds,
        "restored_point": iso(point), "restored_point_source": restored_point_source or None,
        "rto": rto, "rpo": rpo, "targets_met": bool(rto["met"] and rpo["met"]),
        "services_ok": services_ok, "app_ok": app_ok, "services": services, "app": app, "probes": probes,
        "backup": dict(backup or {}), "target": dict(target or {}),
        "cleanup": cleanup, "cleanup_ok": bool(cleanup.get("ok", True)),
        "timeline": steps_out,
        "ok": passed and bool(rto["met"] and rpo["met"]) and bool(cleanup.get("ok", True)),
    }


def _fmt_seconds(value) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value < 120:
        return "%.1f s" % value
    if value < 7200:
        return "%.1f min (%.0f s)" % (value / 60.0, value)
    return "%.2f h (%.0f s)" % (value / 3600.0, value)


def _yes(flag) -> str:
    return "yes" if flag else "NO"


def render_markdown(report: dict) -> str:
    """The report for people: verdict, objectives, timeline, checks."""
    verdict = "PASSED" if report["ok"] else ("FAILED" if not report["passed"] else "TARGETS MISSED")
    lines = [
        "# DR test %s: %s" % (report["run_id"], verdict), "",
        "| | |", "|---|---|",
        "| Type | %s |" % report["type"],
        "| Cluster / host | %s / %s |" % (report["cluster"], report["host"]),
        "| Started | %s |" % report["started_at"],
        "| Recovered (healthy) | %s |" % (report["healthy_at"] or "never"),
        "| Backup restored | %s |" % (report["backup"].get("backup_id") or "-"),
        "| Isolated target | %s |" % (", ".join("%s=%s" % (key, value) for key, value in
                                                sorted(report["target"].items())) or "-"),
        "| Cleanup | %s |" % ("done" if report["cleanup_ok"] else "INCOMPLETE: " + str(report["cleanup"])),
    ]
    if report["failure"]:
        lines.append("| Failure | %s |" % str(report["failure"]).replace("|", "/").replace("\n", " "))
    lines += ["", "## Objectives", "", "| Objective | Target | Measured | Met |", "|---|---|---|---|"]
    for key, title in (("rto", "Recovery time (RTO)"), ("rpo", "Data loss (RPO)")):
        item = report[key]
        lines.append("| %s | %s | %s | %s (%s) |" % (
            title, _fmt_seconds(item["target_seconds"]), _fmt_seconds(item["measured_seconds"]), _yes(item["met"]),
            item["note"]))
    lines += ["", "Recovery time runs from the start of the restore to the last passing health check. Data loss "
              "runs from the newest point in the restored data (%s: %s) to the reference (%s: %s)."
              % (report["restored_point_source"] or "unknown", report["restored_point"] or "-",
                 report["reference"], report["reference_time"]),
              "", "## Timeline", "", "| # | Step | Start (UTC) | +offset | Duration | OK | Detail |",
              "|---|---|---|---|---|---|---|"]
    for index, step in enumerate(report["timeline"], 1):
        lines.append("| %d | %s | %s | %s | %s | %s | %s |" % (
            index, step["step"], step["started_at"] or "-", _fmt_seconds(step["offset_seconds"]),
            _fmt_seconds(step["seconds"]), _yes(step["ok"]), str(step["detail"]).replace("|", "/").replace("\n", " ")))
    lines += ["", "## Checks", "", "| Check | OK | Detail |", "|---|---|---|"]
    for service in report["services"]:
        lines.append("| service %s | %s | %s |" % (service.get("name"), _yes(service.get("ok")),
                                                   str(service.get("detail") or "").replace("|", "/")))
    if report["app"].get("url"):
        lines.append("| health %s | %s | %s |" % (report["app"]["url"], _yes(report["app"].get("ok")),
                                                  str(report["app"].get("detail") or "").replace("|", "/")))
    for probe in report["probes"]:
        lines.append("| probe `%s` | %s | %s |" % (str(probe.get("sql")).replace("|", "/"), _yes(probe.get("ok")),
                                                   str(probe.get("value")).replace("|", "/")))
    return "\n".join(lines) + "\n"


def publish(metrics, report: dict) -> dict | None:
    """The seeds' DR metrics for this type: recovery time, services, application, data loss, last run."""
    if metrics is None:
        return None
    return metrics.record_dr_test(report["cluster"], report["type"], report["recovery_time_seconds"],
                                  report["services_ok"], report["app_ok"], report["data_loss_seconds"])
