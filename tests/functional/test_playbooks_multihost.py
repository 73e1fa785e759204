# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The operations playbooks on a fleet of three hosts, run by ansible-playbook with three forks.

Three throwaway PostgreSQL clusters stand for three database hosts (local connections, each
with its own PGHOST/PGPORT, cluster name and its own "root" directory for /etc, /opt and /var)
backing up into one shared filesystem repository. The playbooks run as an operator runs them,
in the order of a new fleet: install.yml first (a virtualenv per host from a wheelhouse, with
no index: the air-gapped path; config, keys, cron schedules, archive_command wired and
archiving), then, with the modules running in each host's installed virtualenv as the
production inventory has it, backup.yml, verify_daily.yml, restore_test_monthly.yml,
dr_test.yml, audit_quarterly.yml and maintenance_weekly.yml. Then one host's backups are made
stale (their manifests rewritten through the engine, as if the last backups had finished three
days ago) and the audit must flag exactly that host. After each run the reports on disk and
the repository are read back. Last, the scheduled jobs run as the pgsafe user, and WAL
archiving is still healthy after all the root-run playbooks.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from xml.etree import ElementTree

import pytest
import yaml

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups
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


SYSTEM_PYTHON = "/usr/bin/python3"  # what a database host has before install.yml (the pyenv one is under /root)


def wheelhouse() -> str:
    """Wheels of the install role's pins for the hosts' Python, built once per requirements file."""
    with open(os.path.join(ROOT, "roles", "install", "files", "requirements.txt"), "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:12]
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    path = os.path.join(ROOT, ".build", "wheelhouse-%s-py%s" % (digest, version))
    if not os.path.exists(path + ".complete"):
        shutil.rmtree(path, ignore_errors=True)
        run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "wheelhouse.sh"), path, version],
                             capture_output=True, text=True, check=False, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        open(path + ".complete", "w").close()
    return path


@pytest.fixture(scope="module")
def fleet():
    """Three running clusters, a shared repository, and an inventory of three hosts not yet installed."""
    # Not under pytest's tmp_path (0700 under /tmp/pytest-of-root): archive_command runs as postgres
    # and must reach the installed command, as on a real host.
    work = tempfile.mkdtemp(prefix="pgsafe-fleet-")
    os.chmod(work, 0o755)
    clusters = {}
    try:
        wheels = wheelhouse()
        for host in HOSTS:
            # archive_mode is on from the start, as on a server restarted for it; archive_command is empty
            # (PostgreSQL keeps the WAL) until the install role wires pgsafe in with a reload.
            cluster = Cluster(settings={"archive_mode": "on"}).init().start()
            clusters[host] = cluster
            # Small data: this test is about the playbooks across hosts, not throughput.
            load_sample(cluster, "app", users=200, bookings=500)
        repository = os.path.join(work, "repository")
        hosts = {}
        for host in HOSTS:
            root = os.path.join(work, "hosts", host)  # stands for the host's /
            # What every host has before install: stand-ins for /etc/cron.d, /etc/logrotate.d, ...
            for directory in ("etc/cron.d", "etc/logrotate.d", "etc/systemd/system", "usr/local/bin"):
                os.makedirs(os.path.join(root, directory))
            app_config = os.path.join(root, "etc", "app")
            os.makedirs(app_config)
            with open(os.path.join(app_config, "app.conf"), "w") as handle:
                handle.write("host = %s\n" % host)
            hosts[host] = {
                "ansible_connection": "local",
                # As inventories/production has it: the system Python while install.yml bootstraps,
                # then the virtualenv it created, which must hold everything the modules import.
                "ansible_python_interpreter": "{{ '%s' if pgsafe_bootstrap | default(false) | bool "
                                              "else pgsafe_install_venv ~ '/bin/python' }}" % SYSTEM_PYTHON,
                "pgsafe_cluster": host,
                "pgsafe_state_dir": os.path.join(root, "var", "lib", "pgsafe"),
                "pgsafe_log_dir": os.path.join(root, "var", "log", "pgsafe"),
                "pgsafe_postgres": {"login_host": clusters[host].host, "port": clusters[host].port,
                                    "login_user": "postgres", "pg_bin_dir": clusters[host].bin_dir},
                # Each host's own key, generated by the install role.
                "pgsafe_encryption": {"key_files": [{"path": os.path.join(root, "etc", "pgsafe", "keys",
                                                                          "backup.key")}]},
                "pgsafe_files_paths": [app_config],
                "pgsafe_install_venv": os.path.join(root, "opt", "pgsafe", "venv"),
                "pgsafe_install_launcher_link": os.path.join(root, "usr", "local", "bin", "pgsafe"),
                "pgsafe_install_config_dir": os.path.join(root, "etc", "pgsafe"),
                "pgsafe_install_logrotate_dir": os.path.join(root, "etc", "logrotate.d"),
                "pgsafe_install_textfile_dir": os.path.join(root, "var", "lib", "node_exporter", "textfile_collector"),
                "pgsafe_install_systemd_dir": os.path.join(root, "etc", "systemd", "system"),
                "pgsafe_install_cron_file": os.path.join(root, "etc", "cron.d", "pgsafe"),
            }
        inventory = {"all": {
            "hosts": hosts,
            "vars": {
                "pgsafe_repository": {"name": "shared", "type": "filesystem", "path": repository, "create": True},
                "pgsafe_compression": {"algorithm": "zstd", "level": 3, "threads": 1},
                "pgsafe_databases": ["all"],
                "pgsafe_verify_level": "decrypt",
                "pgsafe_max_age_hours": 25,
                "pgsafe_retention": {"keep_daily": 30, "keep_weekly": 12, "keep_monthly": 12, "min_keep": 1},
                "pgsafe_install_python": SYSTEM_PYTHON,
                "pgsafe_install_wheelhouse": wheels,
                "pgsafe_install_engine_build_dir": os.path.join(work, "engine-build"),
                "pgsafe_install_wal_archiving": True,
            },
            "children": {"monitoring": {"hosts": {}}},
        }}
        inventory_path = os.path.join(work, "inventory.yml")
        with open(inventory_path, "w") as handle:
            handle.write(yaml.safe_dump(inventory))
        yield {"work": work, "inventory": inventory_path, "repository": repository, "clusters": clusters,
               "reports": os.path.join(work, "reports"), "hosts": hosts, "wheelhouse": wheels}
    finally:
        for cluster in clusters.values():
            cluster.destroy()
        if os.environ.get("PGSAFE_TEST_KEEP"):  # keep the hosts' files and reports to look into a failure
            print("fleet kept in %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def play(fleet, playbook: str, *extra: str, expect_rc: int = 0) -> dict:
    """ansible-playbook with three forks; returns the output and the per-host recap."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, PGSAFE_REPORT_DIR=fleet["reports"],
               ANSIBLE_NOCOLOR="1", ANSIBLE_NOCOWS="1", ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_PIPELINING="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_HOST_KEY_CHECKING="0")
    run = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", fleet["inventory"], "--forks", "3",
                          os.path.join(PLAYBOOKS, playbook)] + list(extra),
                         env=env, capture_output=True, text=True, cwd=fleet["work"], check=False, timeout=600)
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


def archiver(cluster) -> dict:
    return json.loads(cluster.psql("SELECT json_build_object('archived', archived_count, 'failed', failed_count, "
                                   "'last_failed_wal', last_failed_wal) FROM pg_stat_archiver"))


def wait_archived(cluster, after: int, timeout: float = 120) -> dict:
    """Write, switch to a new segment and wait until the archiver has counted more than ``after``."""
    cluster.psql("CREATE TABLE IF NOT EXISTS wal_probe (at timestamptz); INSERT INTO wal_probe VALUES (now())",
                 dbname="app")
    cluster.psql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + timeout
    while True:
        state = archiver(cluster)
        if state["archived"] > after or state["failed"] or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def cron_jobs(fleet, host: str) -> dict:
    """Entry name -> (user, command) in the host's cron file, as cron reads it."""
    jobs, name = {}, None
    with open(fleet["hosts"][host]["pgsafe_install_cron_file"]) as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("#Ansible: "):
                name = line[len("#Ansible: "):]
            elif line and not line.startswith("#") and name:
                fields = line.split(None, 6)
                jobs[name] = (fields[5], fields[6])
                name = None
    return jobs


def run_as(user: str, command: str) -> subprocess.CompletedProcess:
    """A command line as cron runs it: /bin/sh as that user, from its home, without our environment."""
    env = {"PATH": "/usr/bin:/bin", "HOME": pwd.getpwnam(user).pw_dir, "LANG": "C.UTF-8"}
    return subprocess.run([shutil.which("runuser"), "-u", user, "--", "/bin/sh", "-c", command], env=env, cwd="/",
                          capture_output=True, text=True, check=False, timeout=300)


def test_fleet_backup_verify_audit_review(fleet):
    # --- install: a new fleet, offline from the wheelhouse, three hosts at once -------------
    archived_before = {host: archiver(fleet["clusters"][host])["archived"] for host in HOSTS}
    installed = play(fleet, "install.yml")
    assert sorted(installed["recap"]) == list(HOSTS)  # the monitoring play matched no host
    assert all(installed["recap"][host]["changed"] > 0 for host in HOSTS), installed["output"]
    wheels = sorted(os.listdir(fleet["wheelhouse"]))
    for host in HOSTS:
        settings = fleet["hosts"][host]
        venv = settings["pgsafe_install_venv"]
        assert sorted(os.listdir(os.path.join(venv, "wheelhouse"))) == wheels
        key = os.stat(settings["pgsafe_encryption"]["key_files"][0]["path"])
        assert stat.S_IMODE(key.st_mode) == 0o600 and pwd.getpwuid(key.st_uid).pw_name == "postgres"
        config = os.stat(os.path.join(settings["pgsafe_install_config_dir"], "pgsafe.yml"))
        assert stat.S_IMODE(config.st_mode) == 0o640
        # No systemd here: the schedules are cron entries, run as the pgsafe user.
        jobs = cron_jobs(fleet, host)
        assert sorted(jobs) == ["pgsafe backup-logical", "pgsafe files", "pgsafe prune", "pgsafe sync",
                                "pgsafe verify"], jobs
        assert {user for user, _command in jobs.values()} == {"postgres"}
        assert jobs["pgsafe files"][1] == venv + "/bin/pgsafe files backup >/dev/null"
        # archive_command is wired with a reload (archive_mode was already on) and PostgreSQL archives through it.
        cluster = fleet["clusters"][host]
        assert cluster.psql("SHOW archive_command") == venv + "/bin/pgsafe wal-push %p"
        state = wait_archived(cluster, archived_before[host])
        assert state["archived"] > archived_before[host] and state["failed"] == 0, (host, state)
        # The seeds' system status check with the installed command, as the pgsafe user.
        check = run_as("postgres", settings["pgsafe_install_launcher_link"] + " check")
        assert check.returncode == 0, (host, check.stdout, check.stderr)
    # Again: nothing changes on any host.
    again = play(fleet, "install.yml")
    assert all(again["recap"][host]["changed"] == 0 for host in HOSTS), again["output"]

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
        # The checklist's "errors in logs" (the install's `pgsafe check` runs passed) and "retention applied".
        assert host_report["failed_runs"] == [], host_report
        assert host_report["retention"] == {"checked": True, "would_delete": []}, host_report
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
    textfile = os.path.join(fleet["work"], "textfile")
    os.makedirs(textfile, mode=0o755, exist_ok=True)  # node_exporter's directory (the monitoring role's job)
    extra = {"pgsafe_dr_test_database": "app", "pgsafe_dr_test_work_dir": os.path.join(fleet["work"], "dr"),
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

    # --- the scheduled jobs, as cron runs them: the files schedule on every host ------------
    repository = open_repository({"type": "filesystem", "path": fleet["repository"]})
    for host in HOSTS:
        user, command = cron_jobs(fleet, host)["pgsafe files"]
        job = run_as(user, command)
        assert job.returncode == 0, (host, job.stdout, job.stderr)
        files = [entry for entry in list_backups(repository, host, "files") if entry["status"] == "complete"]
        assert len(files) == 1, files
        listing = run_as(user, "%s files list --json" % fleet["hosts"][host]["pgsafe_install_launcher_link"])
        assert listing.returncode == 0, listing.stderr
        assert os.path.join(fleet["hosts"][host]["pgsafe_files_paths"][0], "app.conf") in listing.stdout

    # --- WAL archiving is still healthy after every root-run playbook and job ---------------
    for host in HOSTS:
        cluster = fleet["clusters"][host]
        before = archiver(cluster)
        state = wait_archived(cluster, before["archived"])
        assert state["archived"] > before["archived"] and state["failed"] == 0, (host, before, state)

    # --- the physical DR path: a full base backup, then a system restore replaying the archive --
    full = play(fleet, "backup.yml", "-e", "pgsafe_backup_type=full")
    assert all(full["recap"][host]["failed"] == 0 for host in HOSTS), full["output"]
    for host in HOSTS:  # a transaction after the backup, archived through the installed wal-push
        cluster = fleet["clusters"][host]
        before = archiver(cluster)
        assert wait_archived(cluster, before["archived"])["archived"] > before["archived"]
    extra = {"pgsafe_dr_test_restore_method": "physical", "pgsafe_dr_test_database": "app",
             "pgsafe_dr_test_run_id": "fleet-physical",
             # Each host's own scratch directory (here all three share one filesystem).
             "pgsafe_dr_test_work_dir": os.path.join(fleet["work"], "dr-physical", "{{ inventory_hostname }}"),
             # The scratch cluster fetches WAL with the command the install role put on each host.
             "pgsafe_dr_test_restore_command": "{{ pgsafe_install_launcher_link }} wal-fetch %f %p",
             "pgsafe_dr_rpo_target_seconds": 3600, "pgsafe_dr_test_probes": ["SELECT count(*) > 0 FROM public.users"]}
    physical = play(fleet, "dr_test.yml", "-e", json.dumps(extra))
    assert all(physical["recap"][host]["failed"] == 0 for host in HOSTS), physical["output"]
    for host in HOSTS:
        report = json.load(open(os.path.join(fleet["reports"], "dr_test", "fleet-physical", host + ".json")))
        assert report["passed"] is True and report["targets_met"] is True, report
        assert report["backup"]["type"] == "full" and report["cleanup_ok"] is True, report
        # Measured from the WAL replayed past the backup (fetched by the installed `pgsafe wal-fetch`).
        assert report["restored_point"] and "no transaction replayed" not in report["restored_point_source"], report
        assert 0 < report["recovery_time_seconds"] < 14400 and 0 <= report["data_loss_seconds"] < 3600, report
    for host in HOSTS:  # the scratch clusters are stopped and gone
        scratch = os.path.join(fleet["work"], "dr-physical", host)
        assert not [name for name in os.listdir(scratch) if name.endswith("-pgdata")], os.listdir(scratch)

    # --- a run that failed overnight: the daily check lists it and the host needs attention --
    failed = run_as("postgres", "%s restore --backup-id 20000101T000000Z-logical"
                    % fleet["hosts"]["db1"]["pgsafe_install_launcher_link"])
    assert failed.returncode != 0, failed.stdout
    morning = play(fleet, "verify_daily.yml", expect_rc=2)
    assert morning["recap"]["db1"]["failed"] == 1 and morning["recap"]["db3"]["failed"] == 0, morning["output"]
    latest = sorted(os.listdir(os.path.join(fleet["reports"], "verify")))[-1]
    run_report = json.load(open(os.path.join(fleet["reports"], "verify", latest, "run.json")))
    assert run_report["ok"] == ["db3"] and run_report["problems"] == ["db1", STALE_HOST], run_report
    db1 = json.load(open(os.path.join(fleet["reports"], "verify", latest, "db1.json")))
    assert [(run["command"], run["outcome"]) for run in db1["failed_runs"]] == [("restore", "failed")], db1
    assert "20000101T000000Z-logical" in db1["failed_runs"][0]["message"], db1
    assert "runs that did not complete in the last 25 h: restore failed" in morning["output"]
