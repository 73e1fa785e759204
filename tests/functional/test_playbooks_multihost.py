# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The operations playbooks on a fleet of three hosts, run by ansible-playbook with three forks.

Three throwaway PostgreSQL clusters stand for three database hosts (local connections, each
with its own PGHOST/PGPORT, cluster name and state directory) backing up into one shared
filesystem repository. The playbooks run as an operator runs them: backup.yml,
verify_daily.yml, restore_test_monthly.yml (when present), audit_quarterly.yml and
maintenance_weekly.yml. Then one host's backups are made stale (their manifests rewritten
through the engine, as if the last backups had finished three days ago) and the audit must
flag exactly that host. After each run the reports on disk and the repository are read back.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
from xml.etree import ElementTree

import pytest
import yaml

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups
from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import generate_key_file
from ansible_collections.pgsafe.backup.plugins.module_utils.repository import open_repository
from tests.support.pgcluster import Cluster, load_sample

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
PLAYBOOKS = os.path.join(ROOT, "playbooks")
BIN = os.path.dirname(sys.executable)
HOSTS = ("db1", "db2", "db3")
STALE_HOST = "db2"
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three running clusters, a shared repository, a key, and an inventory with three hosts."""
    work = tmp_path_factory.mktemp("fleet")
    clusters = {}
    try:
        for host in HOSTS:
            cluster = Cluster().init().start()
            clusters[host] = cluster
            # Small data: this test is about the playbooks across hosts, not throughput.
            load_sample(cluster, "app", users=200, bookings=500)
        key = str(work / "keys" / "backup.key")
        generate_key_file(key)
        repository = str(work / "repository")
        inventory = {"all": {
            "hosts": {host: {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "pgsafe_cluster": host,
                "pgsafe_state_dir": str(work / "state" / host),
                "pgsafe_postgres": {"login_host": clusters[host].host, "port": clusters[host].port,
                                    "login_user": "postgres", "pg_bin_dir": clusters[host].bin_dir},
            } for host in HOSTS},
            "vars": {
                "pgsafe_repository": {"name": "shared", "type": "filesystem", "path": repository, "create": True},
                "pgsafe_encryption": {"key_files": [{"path": key}]},
                "pgsafe_compression": {"algorithm": "zstd", "level": 3, "threads": 1},
                "pgsafe_databases": ["all"],
                "pgsafe_verify_level": "decrypt",
                "pgsafe_max_age_hours": 25,
                "pgsafe_retention": {"keep_daily": 30, "keep_weekly": 12, "keep_monthly": 12, "min_keep": 1},
            },
            "children": {"monitoring": {"hosts": {}}},
        }}
        inventory_path = work / "inventory.yml"
        inventory_path.write_text(yaml.safe_dump(inventory))
        yield {"work": work, "inventory": str(inventory_path), "repository": repository, "clusters": clusters,
               "reports": str(work / "reports")}
    finally:
        for cluster in clusters.values():
            cluster.destroy()


def play(fleet, playbook: str, *extra: str, expect_rc: int = 0) -> dict:
    """ansible-playbook with three forks; returns the output and the per-host recap."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, PGSAFE_REPORT_DIR=fleet["reports"],
               ANSIBLE_NOCOLOR="1", ANSIBLE_NOCOWS="1", ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_PIPELINING="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_HOST_KEY_CHECKING="0")
    run = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", fleet["inventory"], "--forks", "3",
                          os.path.join(PLAYBOOKS, playbook)] + list(extra),
                         env=env, capture_output=True, text=True, cwd=str(fleet["work"]), check=False, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == expect_rc, output
    recap = {host: {"ok": int(ok), "changed": int(changed), "unreachable": int(unreachable), "failed": int(failed)}
             for host, ok, changed, unreachable, failed in RECAP_RE.findall(run.stdout)}
    return {"output": output, "recap": recap}


def only_dir(path: str) -> str:
    entries = sorted(os.listdir(path))
    assert len(entries) == 1, entries
    return os.path.join(path, entries[0])


def catalog(fleet, host: str) -> list:
    repository = open_repository({"type": "filesystem", "path": fleet["repository"]})
    return [entry for entry in list_backups(repository, host) if entry["status"] == "complete"]


def make_stale(fleet, host: str, days: float = 3.0) -> None:
    """Rewrite the host's manifests through the engine as if its backups finished days ago."""
    repository = open_repository({"type": "filesystem", "path": fleet["repository"]})
    shift = datetime.timedelta(days=days)
    for entry in catalog(fleet, host):
        manifest = mf.read_manifest(repository, host, entry["backup_id"])
        for field in ("started_at", "finished_at"):
            manifest[field] = mf.isoformat(mf.parse_time(manifest[field]) - shift)
        mf.write_manifest(repository, manifest)


def test_fleet_backup_verify_audit_review(fleet):
    # --- backup: every host, its own cluster name, one shared repository ------------------
    result = play(fleet, "backup.yml")
    assert sorted(result["recap"]) == list(HOSTS)
    for host in HOSTS:
        backups = catalog(fleet, host)
        assert len(backups) == 1, backups
        assert set(backups[0]["databases"]) == {"app", "postgres"}
    assert sorted(os.listdir(fleet["repository"])) == list(HOSTS)

    # --- the daily check: one report per host, one for the run -----------------------------
    play(fleet, "verify_daily.yml")
    run_dir = only_dir(os.path.join(fleet["reports"], "verify"))
    run_report = json.load(open(os.path.join(run_dir, "run.json")))
    assert sorted(run_report["ok"]) == list(HOSTS) and run_report["problems"] == []
    for host in HOSTS:
        host_report = json.load(open(os.path.join(run_dir, host + ".json")))
        assert host_report["ok"] is True and host_report["cluster"] == host
        # The verification is recorded beside the backup, where the audit reads it.
        assert catalog(fleet, host)[-1]["verification"]["ok"] is True

    # --- the monthly restore test, when that playbook exists -------------------------------
    if os.path.exists(os.path.join(PLAYBOOKS, "restore_test_monthly.yml")):
        play(fleet, "restore_test_monthly.yml")
        for host in HOSTS:  # a restore test leaves no database behind for the audit to miss
            names = fleet["clusters"][host].psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database "
                                                 "WHERE NOT datistemplate")
            assert names == "app,postgres", (host, names)

    # --- the DR test on every host at once: measured RTO and RPO, metrics, reports ---------
    textfile = os.path.join(str(fleet["work"]), "textfile")
    os.makedirs(textfile, mode=0o755, exist_ok=True)  # node_exporter's directory (the monitoring role's job)
    extra = {"pgsafe_dr_test_database": "app", "pgsafe_dr_test_work_dir": os.path.join(str(fleet["work"]), "dr"),
             "pgsafe_dr_test_run_id": "fleet-dr", "pgsafe_dr_rpo_target_seconds": 3600,
             "pgsafe_metrics": {"prefix": "spendsync", "textfile_dir": textfile},
             "pgsafe_dr_test_probes": ["SELECT count(*) > 0 FROM public.users"]}
    dr = play(fleet, "dr_test.yml", "-e", json.dumps(extra))
    assert all(dr["recap"][host]["failed"] == 0 for host in HOSTS), dr["output"]
    dr_dir = os.path.join(fleet["reports"], "dr_test", "fleet-dr")
    for host in HOSTS:
        report = json.load(open(os.path.join(dr_dir, host + ".json")))
        assert report["type"] == "database", report
        assert report["passed"] is True and report["targets_met"] is True, report
        assert 0 < report["recovery_time_seconds"] < 14400 and 0 <= report["data_loss_seconds"] < 3600, report
        assert report["rto"]["met"] is True and report["rpo"]["target_seconds"] == 3600
        assert os.path.isfile(os.path.join(dr_dir, host + ".md"))
    metrics = "".join(open(os.path.join(textfile, name)).read() for name in os.listdir(textfile)
                      if name.endswith(".prom"))
    for host in HOSTS:
        assert re.search(r'spendsync_dr_test_recovery_time_seconds\{cluster="%s",type="database"\} [0-9.]+' % host,
                         metrics), metrics
    for host in HOSTS:  # the isolated targets are gone
        names = fleet["clusters"][host].psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database "
                                             "WHERE NOT datistemplate")
        assert names == "app,postgres", (host, names)

    # --- the quarterly audit: every host covered -------------------------------------------
    first = play(fleet, "audit_quarterly.yml")
    audit_dir = only_dir(os.path.join(fleet["reports"], "audit"))
    assert re.match(r"^\d{4}-Q[1-4]$", os.path.basename(audit_dir))
    audit = json.load(open(os.path.join(audit_dir, "audit.json")))
    assert audit["flagged"] == [] and audit["ok"] == list(HOSTS) and audit["critical"] == 0
    for host in HOSTS:
        findings = json.load(open(os.path.join(audit_dir, host + ".json")))
        assert findings["ok"] is True and findings["host"] == host
        assert sorted(findings["databases"]) == ["app", "postgres"]
        assert all(row["fresh"] and row["verified"] for row in findings["coverage"])
        assert findings["encryption"][0]["unencrypted"] == [] and findings["encryption"][0]["manifests"] == 1
        assert findings["retention"][0]["ok"] is True
    assert sum(first["recap"][host]["changed"] for host in HOSTS) > 0
    markdown = open(os.path.join(audit_dir, "audit.md")).read()
    for host in HOSTS:
        assert "| %s | %s | 2 | 0 |" % (host, host) in markdown

    # --- the weekly review: trends, storage, cost, a chart per host ------------------------
    play(fleet, "maintenance_weekly.yml", "-e", '{"pgsafe_weekly_prices": {"shared": 0.05}}')
    week_dir = only_dir(os.path.join(fleet["reports"], "weekly"))
    review = json.load(open(os.path.join(week_dir, "report.json")))
    assert review["hosts"] == list(HOSTS)
    for host in HOSTS:
        figures = review["results"][host]
        assert figures["trends"]["logical"]["backups"] == 1
        used = figures["storage"][0]["used_bytes"]
        assert used == sum(os.path.getsize(os.path.join(directory, name))
                           for directory, _dirs, names in os.walk(os.path.join(fleet["repository"], host))
                           for name in names)
        assert figures["cost"]["per_month"] == round(used / 1024 ** 3 * 0.05, 4)
        assert figures["failures"]["by_type"]["logical"]["success_rate_percent"] == 100.0
        chart = ElementTree.parse(os.path.join(week_dir, host + ".svg")).getroot()
        assert chart.tag.endswith("svg") and len(chart.findall("{http://www.w3.org/2000/svg}circle")) == 2
        report = open(os.path.join(week_dir, "report.md")).read()
        assert "![backup duration and size, %s](%s.svg)" % (host, host) in report

    # --- one host's backups go stale: the audit flags exactly that host --------------------
    make_stale(fleet, STALE_HOST)
    stale = play(fleet, "audit_quarterly.yml", expect_rc=2)
    assert stale["recap"][STALE_HOST]["failed"] == 1
    assert all(stale["recap"][host]["failed"] == 0 for host in HOSTS if host != STALE_HOST)
    audit = json.load(open(os.path.join(audit_dir, "audit.json")))
    assert audit["flagged"] == [STALE_HOST]
    assert audit["ok"] == [host for host in HOSTS if host != STALE_HOST]
    findings = json.load(open(os.path.join(audit_dir, STALE_HOST + ".json")))
    assert findings["flagged_databases"] == ["app", "postgres"]
    assert {(item["check"], item["subject"]) for item in findings["findings"] if item["severity"] == "critical"} == {
        ("freshness", "app"), ("freshness", "postgres"), ("verification", "app"), ("verification", "postgres")}

    # Again, reporting only (pgsafe_audit_fail=false) and in check mode: the same findings give the same
    # reports, so nothing would change (a rerun reports nothing changed), and nothing is written.
    before = {name: os.stat(os.path.join(audit_dir, name)).st_mtime_ns for name in os.listdir(audit_dir)}
    checked = play(fleet, "audit_quarterly.yml", "--check", "-e", "pgsafe_audit_fail=false")
    assert all(checked["recap"][host] == {"ok": checked["recap"][host]["ok"], "changed": 0, "unreachable": 0,
                                          "failed": 0} for host in HOSTS), checked["output"]
    assert "FAILED: cluster %s" % STALE_HOST in checked["output"]  # the verdict is still shown
    assert {name: os.stat(os.path.join(audit_dir, name)).st_mtime_ns for name in os.listdir(audit_dir)} == before
