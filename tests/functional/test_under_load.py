# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups taken while pgbench writes as fast as it can, restored and proven equal to their snapshot.

One throwaway cluster archives WAL through pgsafe (the shipper as a real process, 1 MiB
segments). While ``pgbench -c 4`` runs the TPC-B-like load and a second writer commits
marker rows and records the WAL position after each commit, we take a logical backup and
a physical full backup. Then:

* logical: restored into a scratch database, the row counts equal the manifest's and the
  md5 of the sorted rows of pgbench_accounts and pgbench_history equals the md5 taken in
  the very snapshot pg_dump dumped (the engine's exported REPEATABLE READ snapshot);
* physical: restored into a scratch cluster with PITR to the backup's stop LSN, every
  transaction committed before that LSN is present and none after it: the marker written
  before the backup started, every marker whose commit was flushed before the stop LSN, and
  exactly the pgbench transactions whose COMMIT record (read with pg_waldump from the
  archived WAL) precedes the stop LSN;
* archiving keeps up: the shipper's backlog and the exported backlog metric drop to 0 after
  the load, and while a backlog existed the lag metrics said so.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time

import pytest
from test_wal import ArchivingCluster, chown_postgres, restore_into

from tests.support.pgcluster import PG_BIN

DB = "bench"
TABLES = ("public.pgbench_accounts", "public.pgbench_history", "public.pgbench_branches", "public.pgbench_tellers")
CHECKSUM_SQL = {
    "public.pgbench_accounts": "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY aid), '')) "
                               "FROM pgbench_accounts t",
    "public.pgbench_history": "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) "
                              "FROM pgbench_history t",
}


class LoadCluster(ArchivingCluster):
    """An archiving cluster whose shipper also exports the WAL metrics to a textfile directory."""

    def __init__(self):
        super().__init__(cluster_name="load")
        self.textfile_dir = os.path.join(self.root, "textfile")
        os.makedirs(self.textfile_dir, mode=0o755)
        chown_postgres(self.textfile_dir)

    def pgsafe_settings(self) -> dict:
        settings = super().pgsafe_settings()
        settings["metrics"] = {"textfile_dir": self.textfile_dir}
        return settings

    def context(self, **overrides):
        # The in-process backups run as root: leave the shipper's metrics to the shipper.
        from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context

        settings = ArchivingCluster.pgsafe_settings(self)
        settings.update(overrides)
        return Context.from_settings(settings)


class MarkerWriter(threading.Thread):
    """Commits one row at a time and records (id, insert position before, write position after commit)."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stop = threading.Event()
        self.rows: list[tuple[int, int, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        import psycopg

        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import parse_lsn

        try:
            with psycopg.connect(host=self.cluster.host, port=self.cluster.port, user="postgres", dbname=DB,
                                 autocommit=True) as conn:
                while not self.stop.is_set():
                    before = parse_lsn(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
                    marker_id = conn.execute("INSERT INTO marker (note) VALUES ('stream') RETURNING id").fetchone()[0]
                    # synchronous_commit is on: the commit record is flushed, so written, before this read.
                    after = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
                    self.rows.append((marker_id, before, after))
                    time.sleep(0.002)
        except BaseException as exc:  # pylint: disable=broad-except
            self.error = exc


class StatusWatcher(threading.Thread):
    """Samples the shipper's status file: the largest backlog seen, and whether lag was reported with it."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.path = os.path.join(cluster.state_dir, "wal-status", "%s.json" % cluster.cluster_name)
        self.stop = threading.Event()
        self.samples: list[dict] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with open(self.path, "r", encoding="utf-8") as handle:
                    self.samples.append(json.load(handle))
            except (OSError, ValueError):
                pass
            time.sleep(0.2)


def snapshot_checksums(conn) -> dict:
    return {table: "%d:%s" % tuple(conn.execute(sql).fetchone()) for table, sql in CHECKSUM_SQL.items()}


def checksums(cluster, dbname: str) -> dict:
    return {table: cluster.psql(sql.replace("SELECT count(*), ", "SELECT count(*) || ':' || "), dbname)
            for table, sql in CHECKSUM_SQL.items()}


def counts(cluster, dbname: str) -> dict:
    return {table: int(cluster.psql("SELECT count(*) FROM %s" % table, dbname)) for table in TABLES}


def commits_in_archive(cluster, context, first_segment: str) -> list[tuple[int, int]]:
    """(xid, LSN of its COMMIT record) for every commit in the archived WAL from ``first_segment`` on."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import (
        archived_names, parse_lsn, read_archived)

    names = sorted(name for name in archived_names(context.repository, cluster.cluster_name, "00000001")
                   if len(name) == 24 and name >= first_segment)
    folder = tempfile.mkdtemp(prefix="waldump-", dir=cluster.root)
    for name in names:
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(read_archived(context, name))
    dumped = subprocess.run([os.path.join(PG_BIN, "pg_waldump"), "-p", folder, "-r", "Transaction",
                             names[0], names[-1]], capture_output=True, text=True, check=False)
    pattern = re.compile(r"tx:\s+(\d+), lsn: ([0-9A-F]+/[0-9A-F]+),.*desc: COMMIT")
    found = [(int(match.group(1)), parse_lsn(match.group(2))) for match in pattern.finditer(dumped.stdout)]
    assert found, dumped.stderr[-2000:]
    return found


@pytest.fixture(scope="module")
def loaded():
    """pgbench -c 4 at full speed; a logical and a physical full backup taken during it."""
    from ansible_collections.pgsafe.backup.plugins.module_utils import logical_backup
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import run_physical_backup
    from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import ExportedSnapshot
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import parse_lsn

    seen_in_snapshot: dict = {}

    class ChecksummedSnapshot(ExportedSnapshot):
        """The engine's own exported snapshot; md5 of the pgbench tables is taken inside it."""

        def row_counts(self):
            found = super().row_counts()
            seen_in_snapshot[self.dbname] = {"counts": dict(found), "checksums": snapshot_checksums(self.conn)}
            return found

    cluster = LoadCluster().init().start()
    marker = watcher = pgbench = None
    try:
        cluster.start_shipper()
        env = cluster.env()
        cluster.psql("CREATE DATABASE %s" % DB)
        subprocess.run([os.path.join(PG_BIN, "pgbench"), "-i", "-s", "2", "-q", DB], env=env, check=True,
                       capture_output=True)
        cluster.psql("CREATE TABLE marker (id bigserial PRIMARY KEY, note text NOT NULL)", DB)
        watcher = StatusWatcher(cluster)
        watcher.start()
        started = time.monotonic()
        pgbench = subprocess.Popen([os.path.join(PG_BIN, "pgbench"), "-c", "4", "-j", "2", "-T", "150", "-n", DB],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        marker = MarkerWriter(cluster)
        marker.start()
        time.sleep(2.0)  # the load is at full speed before the first backup
        history_before_logical = int(cluster.psql("SELECT count(*) FROM pgbench_history", DB))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(logical_backup, "ExportedSnapshot", ChecksummedSnapshot)
            logical = logical_backup.run_logical_backup(cluster.context(), [DB], include_globals=True)
        # The marker committed (and flushed) before the physical backup starts.
        before = cluster.psql("INSERT INTO marker (note) VALUES ('before-backup') RETURNING id, "
                              "pg_current_xact_id()::text", DB).split("|")
        before_lsn = parse_lsn(cluster.psql("SELECT pg_current_wal_lsn()::text"))
        physical = run_physical_backup(cluster.context(), "full")
        time.sleep(1.0)
        assert pgbench.poll() is None, "pgbench ended before both backups were taken"
        load_seconds = time.monotonic() - started
        pgbench.send_signal(signal.SIGINT)
        pgbench.communicate(timeout=30)
        marker.stop.set()
        marker.join(timeout=10)
        assert marker.error is None, marker.error
        history_after = int(cluster.psql("SELECT count(*) FROM pgbench_history", DB))
        # Close the last segment so everything the load wrote is archived.
        cluster.psql("SELECT pg_switch_wal()")
        yield {"cluster": cluster, "logical": logical, "physical": physical, "snapshot": seen_in_snapshot[DB],
               "marker_before": {"id": int(before[0]), "xid": before[1], "lsn": before_lsn},
               "markers": list(marker.rows), "watcher": watcher, "load_seconds": load_seconds,
               "history_before_logical": history_before_logical, "history_after": history_after}
    finally:
        if pgbench is not None and pgbench.poll() is None:
            pgbench.kill()
            pgbench.wait()
        if marker is not None:
            marker.stop.set()
        if watcher is not None:
            watcher.stop.set()
        cluster.destroy()


def test_the_backups_were_taken_under_real_load(loaded):
    history = loaded["logical"]["row_counts"][DB]["public.pgbench_history"]
    # pgbench committed transactions before, during and after the logical backup's snapshot.
    assert loaded["history_before_logical"] <= history < loaded["history_after"]
    assert loaded["history_after"] - loaded["history_before_logical"] > 500, loaded
    # The load switched many 1 MiB segments while the physical backup ran.
    assert len(loaded["markers"]) > 100


def test_logical_backup_restores_exactly_its_snapshot(loaded):
    from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import run_logical_restore

    cluster = loaded["cluster"]
    manifest_counts = loaded["logical"]["row_counts"][DB]
    # The manifest's counts are the ones taken in the dump's snapshot.
    assert {table: manifest_counts[table] for table in TABLES} == {
        table: loaded["snapshot"]["counts"][table] for table in TABLES}
    result = run_logical_restore(cluster.context(), loaded["logical"]["backup_id"], DB, "bench_restored")
    assert result["row_counts_match"] is True and result["row_count_mismatches"] == []
    restored = counts(cluster, "bench_restored")
    assert restored == {table: manifest_counts[table] for table in TABLES}
    assert checksums(cluster, "bench_restored") == loaded["snapshot"]["checksums"]
    # The live database moved on after the snapshot: the equality above is not trivially true.
    assert checksums(cluster, DB)["public.pgbench_history"] != loaded["snapshot"]["checksums"][
        "public.pgbench_history"]


def test_physical_backup_restored_to_its_stop_lsn_has_every_commit_before_it(loaded):
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import parse_lsn

    cluster = loaded["cluster"]
    cluster.wait_archived(60)
    physical = loaded["physical"]
    stop = parse_lsn(physical["wal"]["stop_lsn"])
    assert loaded["marker_before"]["lsn"] <= parse_lsn(physical["wal"]["start_lsn"]) <= stop
    commits = commits_in_archive(cluster, cluster.context(), physical["wal"]["start_segment"])
    source_history_xids = set(cluster.psql("SELECT DISTINCT xmin::text FROM pgbench_history", DB).split())

    result, restored = restore_into(cluster, target={"type": "lsn", "value": physical["wal"]["stop_lsn"]})
    try:
        assert result["state"] == "promoted" and result["backup_id"] == physical["backup_id"]
        # The marker committed before the backup started is there, with its transaction id.
        assert restored.psql("SELECT xmin::text FROM marker WHERE id = %d" % loaded["marker_before"]["id"],
                             DB) == loaded["marker_before"]["xid"]
        # Every streamed marker flushed before the stop LSN is present; none begun after it is.
        present = {int(value) for value in restored.psql("SELECT id FROM marker", DB).split()}
        must = {marker_id for marker_id, _before, after in loaded["markers"] if after <= stop}
        must_not = {marker_id for marker_id, before, _after in loaded["markers"] if before > stop}
        assert must and must_not, "the marker stream did not straddle the stop LSN"
        assert must <= present, sorted(must - present)[:10]
        assert not must_not & present, sorted(must_not & present)[:10]
        # pgbench: exactly the transactions whose COMMIT record precedes the stop LSN (PostgreSQL
        # may replay the one record that starts at or after the target, as recovery_target_inclusive).
        committed_after = sorted((lsn, xid) for xid, lsn in commits if lsn >= stop)
        expected = source_history_xids - {str(xid) for _lsn, xid in committed_after}
        restored_xids = set(restored.psql("SELECT DISTINCT xmin::text FROM pgbench_history", DB).split())
        assert expected <= restored_xids, sorted(expected - restored_xids)[:10]
        extra = restored_xids - expected
        assert extra <= {str(committed_after[0][1])} if committed_after else not extra, extra
        assert len(expected) > loaded["history_before_logical"] // 2
        # TPC-B invariant: the restored copy is transactionally consistent.
        sums = restored.psql("SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || "
                             "(SELECT sum(bbalance) FROM pgbench_branches) || ' ' || "
                             "(SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || "
                             "(SELECT coalesce(sum(delta), 0) FROM pgbench_history)", DB).split()
        assert len(set(sums)) == 1, sums
        assert restored.psql("SHOW archive_mode") == "off"
    finally:
        restored.destroy()


def test_archiving_kept_up_and_the_lag_metrics_said_so(loaded):
    cluster = loaded["cluster"]
    watcher = loaded["watcher"]
    deadline = time.time() + 60
    status = {}
    while time.time() < deadline:
        status = json.loads(cluster.pgsafe("wal-status", "--json").stdout)
        if status["backlog_segments"] == 0:
            break
        time.sleep(0.2)
    assert status["running"] is True and status["backlog_segments"] == 0, status
    assert status["failures_total"] == 0 and status["lag_bytes"] == 0
    assert cluster.psql("SELECT failed_count FROM pg_stat_archiver") == "0"
    watcher.stop.set()
    samples = watcher.samples
    assert samples, "the shipper never published its status"
    # Whenever segments waited, the lag was reported with them (bytes and age), never hidden.
    for sample in samples:
        if sample["backlog_segments"]:
            assert sample["lag_bytes"] > 0 and sample["lag_seconds"] >= 0, sample
    # The exported metric drops to 0 too (the shipper republishes every second).
    prom = os.path.join(cluster.textfile_dir, "pgsafe_load_wal.prom")
    backlog = re.compile(r'^pgsafe_wal_archive_backlog_segments\{[^}]*cluster="load"[^}]*\} (\S+)$', re.M)

    def published_backlog():
        try:
            with open(prom, "r", encoding="utf-8") as handle:
                found = backlog.search(handle.read())
        except OSError:
            return None
        return float(found.group(1)) if found else None

    deadline = time.time() + 15
    while time.time() < deadline and published_backlog() != 0.0:
        time.sleep(0.2)
    assert published_backlog() == 0.0, open(prom, encoding="utf-8").read() if os.path.exists(prom) else "no file"
    with open(prom, "r", encoding="utf-8") as handle:
        text = handle.read()
    assert "pgsafe_wal_archive_lag_seconds{" in text and "pgsafe_wal_archive_lag_bytes{" in text
