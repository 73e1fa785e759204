# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fault matrix, PostgreSQL side and concurrency: the server down, or stopped and restarted
mid-dump; a wrong password; a database that does not exist; two runs at once; the WAL
shipper killed mid-upload. See docs/faults.md.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, LockError, PostgresError
from ansible_collections.pgsafe.backup.plugins.module_utils.logical_backup import run_logical_backup
from tests.support.cli import write_config
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.faults import (
    assert_failure_recorded, assert_recovered, assert_still_verifies, backup_metrics, base_settings, complete_ids,
    context_for, create_big_database, half_written, metric, read_text, sigkill, start_pgsafe, statuses, wait_for)
from tests.support.physical import ArchivingCluster, chown_postgres


def filesystem_settings(tmp_path, cluster, key_file, **postgres) -> dict:
    settings = base_settings(tmp_path, cluster, {"type": "filesystem", "path": str(tmp_path / "repo"),
                                                 "create": True}, {"key_files": [{"path": key_file}]})
    settings["postgres"].update(postgres)
    return settings


def first_backup(settings: dict, databases: list) -> tuple:
    context = context_for(settings)
    return context, run_logical_backup(context, databases)["backup_id"], backup_metrics(settings)


# ---------------------------------------------------------------------------- the server goes away


def test_postgres_down_or_restarted_mid_dump(tmp_path, fresh_cluster, key_file):
    cluster = fresh_cluster
    cluster.psql("CREATE DATABASE small")
    cluster.psql("CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 10) g", "small")
    big_counts = create_big_database(cluster, unlogged=False)  # it must survive the crash recovery
    settings = filesystem_settings(tmp_path, cluster, key_file)
    context, kept, before = first_backup(settings, ["small"])
    where = "postgresql://postgres@127.0.0.1:%d/postgres" % cluster.port

    # Down before the run starts.
    cluster.stop("immediate")
    with pytest.raises(PostgresError) as caught:
        run_logical_backup(context_for(settings), ["small"])
    error = caught.value
    assert error.what.startswith("cannot connect to PostgreSQL:") and "Connection refused" in error.what
    assert error.where == where and error.exit_code == 5
    assert "start PostgreSQL or correct postgres.host/port" in error.fix and "pg_isready" in error.fix
    assert_failure_recorded(settings, before)
    cluster.start()

    # Stopped (immediate: a crash for the clients) while `pgsafe backup` streams pg_dump's output, then restarted.
    config = write_config(tmp_path / "pgsafe.yml", settings)
    run = start_pgsafe(config, "backup", "logical", "-d", "big", log_path=str(tmp_path / "backup.log"))
    try:
        wait_for(half_written(settings["repository"]["path"], "big.dump"), 60, "pg_dump to be streaming")
        cluster.stop("immediate")
        assert run.wait(timeout=60) == 5
    finally:
        if run.poll() is None:
            sigkill(run)
    cluster.start()
    stderr = read_text(str(tmp_path / "backup.log.stderr"))
    assert "pgsafe: error: pg_dump of big failed (exit code 1): " in stderr, stderr
    assert "server closed the connection unexpectedly" in stderr or "terminating connection" in stderr, stderr
    assert "nothing valid was removed, so re-run after fixing the cause" in stderr and "Traceback" not in stderr

    assert not context.repository.abandoned_uploads(0)  # the half-written dump was discarded
    assert statuses(context) == {kept: "complete"}
    assert_still_verifies(context, kept)
    assert_failure_recorded(settings, before)
    result = run_logical_backup(context_for(settings), ["big"])
    assert result["row_counts"]["big"] == big_counts
    assert_recovered(settings, before, result)


# ---------------------------------------------------------------------------- wrong input to the server


def test_wrong_password(tmp_path, pg_cluster, key_file):
    right, wrong = "Right-horse-battery-7", "Wrong-horse-battery-8"
    pg_cluster.psql("CREATE ROLE pgsafe_pw LOGIN SUPERUSER PASSWORD '%s'" % right)
    hba = os.path.join(pg_cluster.datadir, "pg_hba.conf")
    with open(hba, "r", encoding="utf-8") as handle:
        rules = handle.read()
    with open(hba, "w", encoding="utf-8") as handle:  # before the cluster's `trust` lines, for this role only
        handle.write("host all pgsafe_pw 127.0.0.1/32 scram-sha-256\n" + rules)
    pg_cluster.psql("SELECT pg_reload_conf()")

    settings = filesystem_settings(tmp_path, pg_cluster, key_file, user="pgsafe_pw", password=right)
    context, kept, before = first_backup(settings, ["app"])
    wrong_settings = filesystem_settings(tmp_path, pg_cluster, key_file, user="pgsafe_pw", password=wrong)
    with pytest.raises(PostgresError) as caught:
        run_logical_backup(context_for(wrong_settings), ["app"])
    error = caught.value
    assert 'password authentication failed for user "pgsafe_pw"' in error.what
    assert error.where == "postgresql://pgsafe_pw@127.0.0.1:%d/postgres" % pg_cluster.port
    assert "postgres.user/password" in error.fix and "pg_hba.conf" in error.fix
    assert wrong not in error.message and right not in error.message

    assert statuses(context) == {kept: "complete"}
    assert_still_verifies(context, kept)
    assert_failure_recorded(settings, before)
    assert_recovered(settings, before, run_logical_backup(context_for(settings), ["app"]))


def test_database_does_not_exist(tmp_path, pg_cluster, key_file):
    settings = filesystem_settings(tmp_path, pg_cluster, key_file)
    context, kept, before = first_backup(settings, ["app"])
    with pytest.raises(ConfigError) as caught:
        run_logical_backup(context_for(settings), ["app", "no_such_db"])
    error = caught.value
    assert error.what == "database(s) no_such_db do not exist on postgresql://postgres@127.0.0.1:%d" % pg_cluster.port
    assert error.where == "databases" and error.exit_code == 2
    assert error.fix.startswith("use existing names (") and "app" in error.fix

    assert statuses(context) == {kept: "complete"}  # refused before any object was written
    assert_still_verifies(context, kept)
    assert_failure_recorded(settings, before)
    assert_recovered(settings, before, run_logical_backup(context_for(settings), ["app"]))


# ---------------------------------------------------------------------------- two runs at once


def test_two_runs_at_once(tmp_path, pg_cluster, key_file):
    big_counts = create_big_database(pg_cluster, "big_two_runs")
    settings = filesystem_settings(tmp_path, pg_cluster, key_file)
    context, kept, before = first_backup(settings, ["app"])
    config = write_config(tmp_path / "pgsafe.yml", settings)
    lock_path = os.path.join(settings["state_dir"], "locks", "main.backup-logical.lock")

    def holder() -> dict:
        try:
            with open(lock_path, "r", encoding="utf-8") as handle:
                return json.loads(handle.read() or "{}")
        except (OSError, ValueError):
            return {}

    first = start_pgsafe(config, "backup", "logical", "-d", "big_two_runs", "--json",
                         log_path=str(tmp_path / "first.log"))
    try:
        wait_for(lambda: holder().get("pid") == first.pid, 60, "the first run to take the lock")
        with pytest.raises(LockError) as caught:
            run_logical_backup(context_for(settings), ["app"])
        error = caught.value
        assert error.what.startswith("another pgsafe backup-logical is running for cluster main: pid %d on "
                                     % first.pid)
        assert error.where == lock_path and error.exit_code == 6
        assert "wait for it to finish" in error.fix and "nothing to delete" in error.fix
        assert_failure_recorded(settings, before)  # the refused run is visible until the first one ends
        assert first.wait(timeout=120) == 0, read_text(str(tmp_path / "first.log.stderr"))
    finally:
        if first.poll() is None:
            sigkill(first)

    winner = json.loads(read_text(str(tmp_path / "first.log")))
    assert winner["row_counts"]["big_two_runs"] == big_counts
    assert complete_ids(context) == [kept, winner["backup_id"]]  # the refused run wrote nothing
    assert_still_verifies(context, winner["backup_id"])
    after = backup_metrics(settings)
    assert after["success"] == 1.0 and after["last_success"] > before["last_success"]
    assert run_logical_backup(context_for(settings), ["app"])["backup_id"] not in (kept, winner["backup_id"])
    pg_cluster.psql("DROP DATABASE big_two_runs")


# ---------------------------------------------------------------------------- WAL shipper killed


SEGMENT = 1024 * 1024  # ArchivingCluster runs initdb --wal-segsize=1


class MeteredArchivingCluster(ArchivingCluster):
    """An archiving cluster (tests/support/physical.py) whose shipper uploads one segment at a time
    to S3 through the fault proxy and publishes metrics to a textfile directory."""

    def __init__(self, cluster_name: str, repository: dict):
        super().__init__(cluster_name=cluster_name, repository=repository)
        self.metrics_dir = os.path.join(self.root, "metrics")
        os.makedirs(self.metrics_dir, mode=0o755)
        chown_postgres(self.metrics_dir)

    def pgsafe_settings(self) -> dict:
        settings = super().pgsafe_settings()
        settings["metrics"] = {"prefix": "pgsafe", "textfile_dir": self.metrics_dir}
        settings["wal"]["parallel"] = 1
        return settings


def test_wal_shipper_killed_mid_upload(moto_endpoint, s3_bucket):
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import (
        archived_names, parse_segment, read_archived, read_record, segment_name)
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_shipper import read_status

    proxy = FaultProxy(moto_endpoint)
    # The first segment (its object, then its record) goes through; the next upload hangs.
    stall = proxy.add(Rule("stall", method="PUT", path_contains="/wal/", skip=2))
    cluster = MeteredArchivingCluster("walfault", {
        "type": "s3", "bucket": s3_bucket, "endpoint_url": proxy.url, "path_style": True, "read_timeout": 30,
        "access_key": "testing", "secret_key": "testing-secret", "region": "us-east-1"}).init().start()
    try:
        settings = cluster.pgsafe_settings()
        cluster.start_shipper()
        cluster.psql("CREATE TABLE churn AS SELECT g AS id, md5(g::text) || repeat('x', 200) AS payload "
                     "FROM generate_series(1, 20000) g")
        cluster.psql("SELECT pg_switch_wal()")

        def mid_upload() -> bool:
            status = read_status(cluster.state_dir, "walfault")
            # One segment through and published (metrics are written just after the status file),
            # the next one hanging in its upload.
            return stall.stalled.is_set() and status.get("shipped_total", 0) > 0 and \
                metric(settings, "wal", "wal_archive_last_success_timestamp_seconds") is not None

        wait_for(mid_upload, 60, "the shipper to be stuck mid-upload", pause=0.05)
        cluster.stop_shipper(signal.SIGKILL)
        killed_at = time.time()

        # No segment is acknowledged to wal-push without its record: every ack file the shipper
        # wrote names a segment that is in the repository, byte-identical.
        context = cluster.context()
        acked = [name for name in os.listdir(os.path.join(cluster.state_dir, "wal-spool", "walfault", "acked"))
                 if not name.startswith(".")]
        assert acked
        for name in acked:
            assert read_record(context.repository, "walfault", name) is not None, name
            local = os.path.join(cluster.datadir, "pg_wal", name)
            if os.path.exists(local):
                with open(local, "rb") as handle:
                    assert read_archived(context, name) == handle.read(), name
        # The dead shipper is visible: wal-status says so and its gauges stop moving.
        assert read_status(cluster.state_dir, "walfault")["running"] is False
        last_before = metric(settings, "wal", "wal_archive_last_success_timestamp_seconds")
        assert last_before is not None and last_before <= killed_at

        # S3 answers again; the restarted shipper drains the backlog and the metrics move on.
        proxy.clear()
        cluster.start_shipper()
        cluster.psql("SELECT pg_switch_wal()")
        cluster.wait_archived(60)
        # Nor is anything acknowledged to PostgreSQL without its record: it releases a segment
        # (.done, then recycled) only after wal-push said 0, so every segment before the current
        # one is in the repository.
        current = parse_segment(cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())"), SEGMENT)[1]
        archived = archived_names(context.repository, "walfault", "00000001")
        # From the first segment written with archiving on (initdb's own segments never were).
        first = parse_segment(min(archived), SEGMENT)[1]
        released = [segment_name(1, number, SEGMENT) for number in range(first, current)]
        assert len(released) > 3 and [name for name in released if name not in archived] == []
        wait_for(lambda: metric(settings, "wal", "wal_archive_backlog_segments") == 0.0
                 and (metric(settings, "wal", "wal_archive_last_success_timestamp_seconds") or 0) > killed_at,
                 30, "the restarted shipper to publish an empty backlog", pause=0.2)
        assert cluster.psql("SELECT failed_count FROM pg_stat_archiver") == "0"
    finally:
        cluster.destroy()
        proxy.stop()
