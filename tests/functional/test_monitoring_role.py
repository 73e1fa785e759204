# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The monitoring role through ansible-playbook: rules checked by the real promtool before they are
installed, dashboards, the Grafana provider file, a real Pushgateway health check, the metrics
fact for the rest of the play; check mode first, then changed, then nothing changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from tests.support.pgcluster import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
BIN = os.path.dirname(sys.executable)
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
RECAP_RE = re.compile(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)")

pytestmark = pytest.mark.skipif(not os.path.exists(PROMTOOL), reason="promtool is not installed (make system-deps)")


def run_role(tmp_path, role_vars: dict, *extra: str, expect_rc: int = 0) -> dict:
    facts = str(tmp_path / "metrics-fact.json")
    playbook = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
                 "vars": {"ansible_python_interpreter": sys.executable},
                 "roles": [dict({"role": "pgsafe.backup.monitoring"}, **role_vars)],
                 "post_tasks": [{"name": "Save the metrics settings the role chose", "ansible.builtin.copy": {
                     "content": "{{ pgsafe_metrics | default({}) | to_json }}", "dest": facts, "mode": "0600"},
                     "check_mode": False, "changed_when": False}]}]
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump(playbook))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    run = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", str(path)] + list(extra),
                         env=env, capture_output=True, text=True, check=False, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == expect_rc, output
    recap = RECAP_RE.search(run.stdout)
    return {"output": output, "changed": int(recap.group(2)) if recap else None,
            "metrics": json.load(open(facts)) if os.path.exists(facts) and expect_rc == 0 else None}


def test_rules_dashboards_and_textfile_output(tmp_path):
    rules_dir = tmp_path / "prometheus" / "rules.d"
    dashboards = tmp_path / "grafana" / "dashboards"
    role_vars = {
        "pgsafe_monitoring_metric_prefix": "spendsync",
        "pgsafe_monitoring_rules_dir": str(rules_dir),
        "pgsafe_monitoring_promtool": PROMTOOL,
        "pgsafe_monitoring_require_promtool": True,
        "pgsafe_monitoring_rto_seconds": 7200,
        "pgsafe_monitoring_dashboards_dir": str(dashboards),
        "pgsafe_monitoring_grafana_provisioning_file": str(tmp_path / "grafana" / "provisioning" / "pgsafe.yml"),
        "pgsafe_monitoring_output": "textfile",
        "pgsafe_monitoring_textfile_dir": str(tmp_path / "textfile"),
        "pgsafe_monitoring_textfile_owner": "root",
        "pgsafe_monitoring_textfile_group": "root",
    }
    (tmp_path / "grafana" / "provisioning").mkdir(parents=True)

    checked = run_role(tmp_path, role_vars, "--check")
    assert checked["changed"] > 0 and not rules_dir.exists() and not dashboards.exists()

    first = run_role(tmp_path, role_vars)
    assert first["changed"] > 0
    rules_file = rules_dir / "pgsafe_alerts.rules.yml"
    rules = yaml.safe_load(rules_file.read_text())
    by_name = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    assert by_name["RTOBreach"]["expr"] == "spendsync_dr_test_recovery_time_seconds > 7200"
    assert by_name["BackupFailure"]["expr"].startswith("spendsync_backup_success")
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    for name in ("backup-overview", "restore-operations", "dr-testing"):
        dashboard = json.load(open(dashboards / (name + ".json")))
        assert dashboard["uid"] == "spendsync-" + name
    provider = yaml.safe_load((tmp_path / "grafana" / "provisioning" / "pgsafe.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == str(dashboards)
    assert oct(os.stat(tmp_path / "textfile").st_mode & 0o777) == "0o755"
    assert first["metrics"] == {"prefix": "spendsync", "textfile_dir": str(tmp_path / "textfile")}

    again = run_role(tmp_path, role_vars)
    assert again["changed"] == 0, again["output"]


def test_promtool_refuses_a_broken_rule_and_keeps_the_installed_file(tmp_path):
    rules_dir = tmp_path / "rules.d"
    role_vars = {"pgsafe_monitoring_rules_dir": str(rules_dir), "pgsafe_monitoring_promtool": PROMTOOL,
                 "pgsafe_monitoring_deploy_dashboards": False}
    run_role(tmp_path, role_vars)
    installed = (rules_dir / "pgsafe_alerts.rules.yml").read_text()
    # A prefix with a space renders expressions promtool rejects (the argument spec cannot tell).
    broken = dict(role_vars, pgsafe_monitoring_metric_prefix="spend sync")
    result = run_role(tmp_path, broken, expect_rc=2)
    assert "failed to validate" in result["output"], result["output"]
    assert (rules_dir / "pgsafe_alerts.rules.yml").read_text() == installed
    missing = run_role(tmp_path, dict(role_vars, pgsafe_monitoring_promtool=str(tmp_path / "no-promtool"),
                                      pgsafe_monitoring_require_promtool=True), expect_rc=2)
    assert "pgsafe_monitoring_promtool" in missing["output"]


@pytest.mark.skipif(not os.path.exists(PUSHGATEWAY), reason="prometheus-pushgateway is not installed")
def test_pushgateway_output_is_checked(tmp_path):
    port = free_port()
    gateway = subprocess.Popen([PUSHGATEWAY, "--web.listen-address=127.0.0.1:%d" % port],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = "http://127.0.0.1:%d" % port
        deadline = time.time() + 15
        while True:
            try:
                urllib.request.urlopen(url + "/-/healthy", timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        role_vars = {"pgsafe_monitoring_deploy_rules": False, "pgsafe_monitoring_deploy_dashboards": False,
                     "pgsafe_monitoring_output": "pushgateway", "pgsafe_monitoring_pushgateway_url": url + "/",
                     "pgsafe_monitoring_pushgateway_job": "pgsafe-db"}
        result = run_role(tmp_path, role_vars)
        assert result["metrics"] == {"prefix": "pgsafe", "pushgateway_url": url + "/", "job": "pgsafe-db"}
    finally:
        gateway.terminate()
        gateway.wait(timeout=10)
    # With the gateway gone the role says so instead of configuring pushes nobody receives.
    down = run_role(tmp_path, role_vars, expect_rc=2)
    assert "/-/healthy" in down["output"]
