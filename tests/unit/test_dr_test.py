# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""DR test measurements: recovery time and data loss against their targets, the report, and the
seeds' DR metrics written by the dr_test_report module into a real textfile directory."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.pgsafe.backup.plugins.module_utils import dr_test

STEPS = [
    {"name": "restore database (logical)", "started_at": "2026-12-01T09:00:01Z",
     "finished_at": "2026-12-01T09:10:01Z", "ok": True, "detail": "restored"},
    {"name": "start services", "started_at": "2026-12-01T09:10:01Z", "finished_at": "2026-12-01T09:10:31Z",
     "ok": True},
    {"name": "run SQL probes", "started_at": "2026-12-01T09:10:31Z", "finished_at": "2026-12-01T09:10:41Z",
     "ok": True},
    {"name": "clean up the isolated target", "started_at": "2026-12-01T09:10:41Z",
     "finished_at": "2026-12-01T09:10:51Z", "ok": True},
]
SERVICES = [{"name": "database", "ok": True}, {"name": "api", "ok": True}]
PROBES = [{"sql": "SELECT count(*) > 0 FROM users", "ok": True, "value": "t"}]


def report(**overrides):
    arguments = dict(run_id="r1", dr_type="database", cluster="main", host="db01", started_at="2026-12-01T09:00:00Z",
                     steps=STEPS, recovery_started_at="2026-12-01T09:00:01Z", healthy_at="2026-12-01T09:10:41Z",
                     restored_point="2026-12-01T01:00:00Z", restored_point_source="logical backup start",
                     services=SERVICES, probes=PROBES, cleanup={"ok": True, "done": ["dropped"], "left": []},
                     rto_target_seconds=14400, rpo_target_seconds=90000)
    arguments.update(overrides)
    return dr_test.build_report(**arguments)


def test_recovery_time_and_data_loss_are_measured_against_the_targets():
    result = report()
    assert result["passed"] and result["targets_met"] and result["ok"]
    assert result["recovery_time_seconds"] == 640.0  # 09:00:01 -> 09:10:41
    assert result["data_loss_seconds"] == 8 * 3600.0  # 01:00 -> 09:00 (start of the test)
    assert result["rto"] == {"target_seconds": 14400.0, "measured_seconds": 640.0, "met": True,
                             "note": "within the target"}
    assert [step["offset_seconds"] for step in result["timeline"]] == [0.0, 600.0, 630.0, 640.0]
    assert [step["seconds"] for step in result["timeline"]] == [600.0, 30.0, 10.0, 10.0]


@pytest.mark.parametrize("overrides, met", [
    ({"rto_target_seconds": 600}, {"rto": False, "rpo": True}),
    ({"rpo_target_seconds": 3600}, {"rto": True, "rpo": False}),
    ({"incident_time": "2026-12-02T09:00:00+00:00"}, {"rto": True, "rpo": False}),
    ({"incident_time": "2026-11-30T00:00:00Z"}, {"rto": True, "rpo": True}),
    ({"rto_target_seconds": 0, "rpo_target_seconds": 0}, {"rto": True, "rpo": True}),
])
def test_targets(overrides, met):
    result = report(**overrides)
    assert {"rto": result["rto"]["met"], "rpo": result["rpo"]["met"]} == met
    assert result["passed"]
    assert result["targets_met"] == (met["rto"] and met["rpo"]) == result["ok"]


def test_an_incident_before_the_backup_loses_nothing():
    result = report(incident_time="2026-11-30T00:00:00Z")
    assert result["data_loss_seconds"] == 0.0 and result["reference"] == "incident_time"


def test_a_test_that_never_became_healthy_has_no_recovery_time():
    failed_steps = STEPS[:2] + [{"name": "check application health", "started_at": "2026-12-01T09:10:31Z",
                                 "finished_at": "2026-12-01T09:11:31Z", "ok": False, "detail": "HTTP 503"}]
    result = report(steps=failed_steps, healthy_at=None, failure="check application health: HTTP 503",
                    app={"url": "http://127.0.0.1:3000/health", "ok": False})
    assert not result["passed"] and not result["ok"]
    assert result["recovery_time_seconds"] is None
    assert result["rto"]["met"] is False and "did not recover" in result["rto"]["note"]
    assert result["app_ok"] is False and result["services_ok"] is True
    text = dr_test.render_markdown(result)
    assert text.startswith("# DR test r1: FAILED") and "| Failure | check application health: HTTP 503 |" in text


def test_nothing_checked_is_not_healthy():
    result = report(probes=[])
    assert not result["app_ok"] and not result["passed"]


def test_a_cleanup_that_left_something_fails_the_test_but_not_the_recovery():
    result = report(cleanup={"ok": False, "left": ["scratch database pgsafe_dr_r1"]})
    assert result["passed"] and result["targets_met"] and not result["ok"] and not result["cleanup_ok"]
    assert "INCOMPLETE" in dr_test.render_markdown(result)


def test_postgres_time_formats_are_read():
    assert dr_test.parse_moment("2026-12-01 09:10:41.123+00", "t").isoformat() == "2026-12-01T09:10:41.123000+00:00"
    assert dr_test.parse_moment(0, "t").year == 1970
    with pytest.raises(ValueError, match="restored_point"):
        report(restored_point="yesterday")
    with pytest.raises(ValueError, match="type"):
        report(dr_type="network")


def test_markdown_has_verdict_objectives_timeline_and_checks():
    text = dr_test.render_markdown(report(rpo_target_seconds=3600))
    assert text.startswith("# DR test r1: TARGETS MISSED")
    assert "| Recovery time (RTO) | 4.00 h (14400 s) | 10.7 min (640 s) | yes (within the target) |" in text
    assert "| Data loss (RPO) | 60.0 min (3600 s) | 8.00 h (28800 s) | NO (target missed) |" in text
    assert "| 1 | restore database (logical) | 2026-12-01T09:00:01.000000Z | 0.0 s | 10.0 min (600 s) | yes |" in text
    assert "| probe `SELECT count(*) > 0 FROM users` | yes | t |" in text


def run_report_module(args: dict, check: bool = False) -> dict:
    module = importlib.import_module("ansible_collections.pgsafe.backup.plugins.modules.dr_test_report")
    stdout = io.StringIO()
    with patch_module_args(dict(args, _ansible_check_mode=check)), contextlib.redirect_stdout(stdout):
        with pytest.raises(SystemExit):
            module.main()
    return json.loads(stdout.getvalue())


def test_module_exports_the_seeds_dr_metrics_with_the_type_label(tmp_path):
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    args = {"cluster": "main", "state_dir": str(tmp_path / "state"), "run_id": "r1", "type": "application",
            "started_at": "2026-12-01T09:00:00Z", "recovery_started_at": "2026-12-01T09:00:01Z",
            "healthy_at": "2026-12-01T09:10:41Z", "restored_point": "2026-12-01T01:00:00Z", "steps": STEPS,
            "services": SERVICES, "probes": PROBES, "app": {"url": "http://127.0.0.1/health", "ok": True},
            "cleanup": {"ok": True}, "metrics": {"prefix": "spendsync", "textfile_dir": str(textfile)}}
    planned = run_report_module(args, check=True)
    assert not planned["changed"] and planned["report"]["ok"] and not os.listdir(textfile)

    result = run_report_module(args)
    assert result["changed"] and result["report"]["recovery_time_seconds"] == 640.0
    assert result["markdown"].startswith("# DR test r1: PASSED")
    prom = (textfile / "spendsync_main_dr_test.prom").read_text()
    for line in ('spendsync_dr_test_recovery_time_seconds{cluster="main",type="application"} 640.0',
                 'spendsync_dr_test_services_ok{cluster="main",type="application"} 1.0',
                 'spendsync_dr_test_app_ok{cluster="main",type="application"} 1.0',
                 'spendsync_dr_test_data_loss_seconds{cluster="main",type="application"} 28800.0'):
        assert line in prom
    assert 'spendsync_dr_test_last_run_timestamp_seconds{cluster="main",type="application"}' in prom

    failed = run_report_module(dict(args, healthy_at=None, failure="health: 503",
                                    app={"url": "http://127.0.0.1/health", "ok": False}))
    assert not failed["report"]["passed"]
    prom = (textfile / "spendsync_main_dr_test.prom").read_text()
    assert 'spendsync_dr_test_app_ok{cluster="main",type="application"} 0.0' in prom
    assert "spendsync_dr_test_recovery_time_seconds{" not in prom

    bad = run_report_module(dict(args, started_at="soon"))
    assert bad["failed"] and "started_at" in bad["msg"]
