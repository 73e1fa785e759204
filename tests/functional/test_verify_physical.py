# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_verify at level restore on a physical backup, for real, and `restore-physical --force`.

An archiving cluster with the sample database and one full backup. The restore test puts the
backup into a scratch data directory, starts it as postgres on a free port, compares its
databases with the list the backup recorded, counts every table and runs the probes; after
every run, passed or failed, no server runs in the scratch directory and the directory is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from test_modules import ok, run_module

from tests.support.pgcluster import PG_BIN, free_port, load_sample
from tests.support.physical import ArchivingCluster, chown_postgres

CLUSTER = "verifyphys"


@pytest.fixture(scope="module")
def source():
    cluster = ArchivingCluster(cluster_name=CLUSTER).init().start()
    try:
        cluster.start_shipper()
        cluster.expected = load_sample(cluster, "app", users=300, bookings=1200)
        cluster.psql("CREATE DATABASE empty_one")
        # The copy inherits this pg_hba.conf, which refuses socket connections: the restore test
        # must reach its scratch server through its own pg_hba.conf (the private socket).
        with open(os.path.join(cluster.datadir, "pg_hba.conf"), "w", encoding="utf-8") as handle:
            handle.write("local all all reject\nhost all all 127.0.0.1/32 trust\n")
        cluster.psql("SELECT pg_reload_conf()")
        from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import run_physical_backup

        cluster.backup = run_physical_backup(cluster.context(), "full", archive_wait_seconds=60)
        cluster.scratch_parent = os.path.join(cluster.root, "verify-scratch")
        os.makedirs(cluster.scratch_parent)
        os.chmod(cluster.scratch_parent, 0o755)
        yield cluster
    finally:
        cluster.destroy()


def verify_args(cluster: ArchivingCluster, repository: str | None = None, **extra) -> dict:
    args = {"cluster": CLUSTER, "state_dir": cluster.state_dir,
            "repository": {"type": "filesystem", "path": repository or cluster.repository["path"]},
            "encryption": {"key_files": [{"path": cluster.key_path}]},
            "login_host": cluster.host, "port": cluster.port, "login_user": "postgres", "pg_bin_dir": PG_BIN,
            "level": "restore", "types": ["full"], "max_age_hours": 1, "scratch_dir": cluster.scratch_parent}
    args.update(extra)
    return args


def servers_running_under(path: str) -> list[str]:
    """Command lines of live processes that mention ``path`` (a postmaster started with -D there)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if path in cmdline and "postgres" in cmdline:
            found.append("%s: %s" % (pid, cmdline))
    return found


def assert_scratch_gone(cluster: ArchivingCluster, restore: dict) -> None:
    assert restore["scratch_removed"] is True
    assert restore["scratch_dir"].startswith(cluster.scratch_parent + "/pgsafe-verify-")
    assert not os.path.exists(restore["scratch_dir"])
    assert os.listdir(cluster.scratch_parent) == []
    assert servers_running_under(cluster.scratch_parent) == []


def test_restore_level_restores_compares_counts_and_probes_then_removes_the_scratch(source):
    backup_id = source.backup["backup_id"]
    assert json.load(open(os.path.join(source.repository["path"], CLUSTER, "backups", backup_id, "manifest.json"),
                          encoding="utf-8"))["physical"]["databases"] == ["app", "empty_one", "postgres"]
    report = ok(run_module("backup_verify", verify_args(
        source, probes={"app": ["SELECT count(*) = 300 FROM users", "SELECT count(*) FROM bookings"]})))
    assert report["ok"] is True and report["failures"] == [], report["summary"]
    (checked,) = report["backups"]
    assert checked["backup_id"] == backup_id
    checks = {check["check"]: check for check in checked["checks"]}
    assert {"decrypt", "structure", "wal decrypt", "restore"} <= set(checks)
    (restore,) = checked["restores"]
    assert restore["ok"] is True and restore["state"] == "promoted" and restore["chain"] == [backup_id]
    assert restore["databases"] == ["app", "empty_one", "postgres"]
    assert restore["databases_compared"] == "equal to the manifest's list"
    assert restore["row_counts"]["app"] == {"tables": 4, "rows": sum(source.expected.values())}
    assert restore["row_counts"]["empty_one"] == {"tables": 0, "rows": 0}
    assert [(probe["database"], probe["value"], probe["ok"]) for probe in restore["probes"]] == [
        ("app", True, True), ("app", 1200, True)]
    assert restore["wal_files_staged"] >= 1 and restore["port"] != source.port
    assert 0 < restore["restore_seconds"] <= restore["seconds"] == checks["restore"]["seconds"]
    assert_scratch_gone(source, restore)
    record = os.path.join(source.repository["path"], CLUSTER, "verify", backup_id + ".json")
    with open(record, encoding="utf-8") as handle:
        recorded = json.load(handle)
    assert recorded["ok"] is True and recorded["level"] == "restore" and recorded["restores"][0]["ok"] is True


def test_a_failing_probe_fails_the_backup_and_still_stops_and_removes_the_scratch(source):
    backup_id = source.backup["backup_id"]
    failed = run_module("backup_verify", verify_args(source, probes={"app": ["SELECT count(*) > 5000 FROM users"]}),
                        check=True)
    assert failed["failed"] is True and failed["ok"] is False
    assert [(f["backup_id"], f["object"], f["check"]) for f in failed["failures"]] == [(backup_id, "app", "probe")]
    assert "returned False" in failed["failures"][0]["message"]
    (restore,) = failed["backups"][0]["restores"]
    assert restore["ok"] is False and restore["state"] == "promoted"  # it got as far as the probes
    assert_scratch_gone(source, restore)


def test_a_database_missing_from_the_restore_is_a_failure(source):
    from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context

    copy = os.path.join(source.root, "repo-copy")
    shutil.copytree(source.repository["path"], copy)
    chown_postgres(copy)
    context = Context.from_settings(dict(source.pgsafe_settings(), repository={"type": "filesystem", "path": copy}),
                                    need_postgres=False)
    manifest = mf.read_manifest(context.repository, CLUSTER, source.backup["backup_id"])
    manifest["physical"]["databases"] = sorted(manifest["physical"]["databases"] + ["ghost"])
    mf.write_manifest(context.repository, manifest)
    try:
        failed = run_module("backup_verify", verify_args(source, repository=copy, full_recheck=True), check=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    assert failed["failed"] is True
    assert [(f["object"], f["check"]) for f in failed["failures"]] == [(None, "databases")]
    assert "missing ghost" in failed["failures"][0]["message"]
    assert_scratch_gone(source, failed["backups"][0]["restores"][0])


def test_a_scratch_directory_that_cannot_hold_the_copy_is_refused_up_front(source):
    missing = os.path.join(source.root, "no-such-dir")
    failed = run_module("backup_verify", verify_args(source, scratch_dir=missing), check=True)
    assert failed["failed"] is True
    assert [(f["check"], f["message"].split(" [")[0]) for f in failed["failures"]] == [
        ("restore", "the scratch directory %s does not exist" % missing)]
    assert not os.path.exists(missing)

    # A 1 MiB file system is too small for any data directory: refused, nothing left behind.
    tiny = os.path.join(source.root, "tiny")
    os.makedirs(tiny)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", tiny], capture_output=True,
                      check=False).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    try:
        failed = run_module("backup_verify", verify_args(source, scratch_dir=tiny), check=True)
        assert failed["failed"] is True
        (failure,) = failed["failures"]
        assert failure["check"] == "restore" and "MB free" in failure["message"] and "scratch_dir" in \
            failure["message"]
        assert os.listdir(tiny) == []
    finally:
        subprocess.run(["umount", tiny], check=False)


def test_cli_restore_physical_force_replaces_a_prepared_copy(source, capsys):
    from ansible_collections.pgsafe.backup.plugins.module_utils.cli import main

    pgdata = os.path.join(source.root, "cli-restore", "data")
    os.makedirs(os.path.dirname(pgdata))
    os.chmod(os.path.dirname(pgdata), 0o755)
    port = str(free_port())
    base = ["-c", source.config_path, "restore-physical", "--pgdata", pgdata, "--port", port, "--target-immediate",
            "--no-start", "--json"]
    assert main(base) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["state"] == "prepared (not started)" and first["replaced_existing"] is False
    marker = os.path.join(pgdata, "left-by-someone")
    with open(marker, "w", encoding="utf-8") as handle:
        handle.write("x")

    assert main(base) == 9  # a non-empty data directory: refused without --force, untouched
    assert "force" in capsys.readouterr().err and os.path.exists(marker)

    assert main(base + ["--force"]) == 0
    replaced = json.loads(capsys.readouterr().out)
    assert replaced["replaced_existing"] is True and replaced["backup_id"] == source.backup["backup_id"]
    assert replaced["sync_seconds"] >= 0  # the prepared copy was made durable (syncfs) before success
    assert not os.path.exists(marker) and os.path.exists(os.path.join(pgdata, "PG_VERSION"))
