# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL archiving on real clusters: archive_command = `pgsafe wal-push %p` (through a wrapper
script, as the postgres user), the shipper as a real process, wal-fetch as restore_command.

The shared setup (``ArchivingCluster`` and friends) lives in tests/support/physical.py; it is
re-exported here for test files that still import it from test_wal.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from tests.support.pgcluster import PG_BIN
# Re-exported: other test files import these from test_wal.
from tests.support.physical import (  # pylint: disable=unused-import
    ArchivingCluster, chown_postgres, restore_into, table_checksums, wait_for)


@pytest.fixture(scope="module")
def archiving():
    cluster = ArchivingCluster(cluster_name="walc").init().start()
    cluster.start_shipper()
    yield cluster
    cluster.destroy()


def _segment_file(cluster: ArchivingCluster, seed: bytes) -> str:
    """A segment-sized file with a valid-looking name, outside any data directory."""
    path = os.path.join(cluster.root, "000000010000000000000F01")
    with open(path, "wb") as handle:
        handle.write(hashlib.sha256(seed).digest() * (1024 * 1024 // 32))
    return path


def test_duplicate_push_succeeds_and_conflicting_push_is_refused(archiving):
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import (
        read_archived, read_record)

    path = _segment_file(archiving, b"first")
    os.chmod(path, 0o644)
    first = archiving.pgsafe("--debug", "wal-push", path)
    assert "via shipper" in first.stderr or "via read-ahead" in first.stderr, first.stderr
    context = archiving.context()
    record = read_record(context.repository, "walc", "000000010000000000000F01")
    with open(path, "rb") as handle:
        original = handle.read()
    assert record["sha256"] == hashlib.sha256(original).hexdigest()

    again = archiving.pgsafe("--debug", "wal-push", path)  # identical content: fine
    assert again.returncode == 0

    with open(path, "wb") as handle:
        handle.write(b"\1" * len(original))
    refused = archiving.pgsafe("wal-push", path, check=False)
    assert refused.returncode == 11, refused.stderr
    assert "different file under this name" in refused.stderr and "never overwritten" in refused.stderr
    # The archive still holds the first content, byte for byte.
    assert read_archived(context, "000000010000000000000F01") == original

    # Without a shipper, wal-push ships by itself with the same rules.
    archiving.stop_shipper()
    try:
        direct = archiving.pgsafe("--debug", "wal-push", path, check=False)
        assert direct.returncode == 11 and "different file under this name" in direct.stderr
        with open(path, "wb") as handle:
            handle.write(original)
        assert "direct (no shipper running)" in archiving.pgsafe("--debug", "wal-push", path).stderr
    finally:
        archiving.start_shipper()


def test_history_backup_and_partial_files_round_trip(archiving):
    contents = {"00000002.history": b"1\t0/3000000\tno recovery target specified\n",
                "000000010000000000000F02.00000028.backup": b"START WAL LOCATION: 0/F020028\n",
                "000000010000000000000F03.partial": os.urandom(4096)}
    source_dir = os.path.join(archiving.root, "sources")
    os.makedirs(source_dir, mode=0o755)
    for name, data in contents.items():
        with open(os.path.join(source_dir, name), "wb") as handle:
            handle.write(data)
        os.chmod(os.path.join(source_dir, name), 0o644)
        archiving.pgsafe("wal-push", os.path.join(source_dir, name))
    fetch_dir = os.path.join(archiving.root, "fetch", "pg_wal")
    os.makedirs(fetch_dir)
    chown_postgres(os.path.dirname(fetch_dir), fetch_dir)
    for name, data in contents.items():
        archiving.pgsafe("wal-fetch", name, os.path.join(fetch_dir, "RECOVERYHISTORY"))
        with open(os.path.join(fetch_dir, "RECOVERYHISTORY"), "rb") as handle:
            assert handle.read() == data
    missing = archiving.pgsafe("wal-fetch", "00000009.history", os.path.join(fetch_dir, "RECOVERYHISTORY"),
                               check=False)
    assert missing.returncode == 1  # "not in the archive": recovery ends cleanly
    bad = archiving.pgsafe("wal-fetch", "../../etc/passwd", os.path.join(fetch_dir, "X"), check=False)
    assert bad.returncode == 255  # never 0, never 1: a misuse must not end recovery quietly


def test_archiving_under_pgbench_load_misses_nothing(archiving):
    """Every segment from a backup's start to the last switched segment is in the repository."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import (
        run_physical_backup, run_transaction_logs)
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import (
        archived_names, missing_segments, read_record)

    env = archiving.env()
    subprocess.run([os.path.join(PG_BIN, "pgbench"), "-i", "-s", "2", "-q", "postgres"], env=env, check=True,
                   capture_output=True)
    backup = run_physical_backup(archiving.context(), "full")
    started = time.monotonic()
    subprocess.run([os.path.join(PG_BIN, "pgbench"), "-T", "10", "-c", "2", "-n", "postgres"], env=env, check=True,
                   capture_output=True)
    logs = run_transaction_logs(archiving.context())
    assert logs["wal"]["start_segment"] == backup["wal"]["start_segment"]
    context = archiving.context()
    names = archived_names(context.repository, "walc", "00000001")
    assert not missing_segments(names, backup["wal"]["start_segment"], logs["wal"]["stop_segment"], 1024 * 1024)
    assert logs["wal"]["segments"] > 20, logs  # the load really switched many segments
    # Spot-check content: the newest archived segment equals what PostgreSQL wrote, if still in pg_wal.
    last = logs["wal"]["stop_segment"]
    local = os.path.join(archiving.datadir, "pg_wal", last)
    if os.path.exists(local):
        with open(local, "rb") as handle:
            assert read_record(context.repository, "walc", last)["sha256"] == hashlib.sha256(handle.read()).hexdigest()
    archiver = archiving.psql("SELECT failed_count FROM pg_stat_archiver")
    assert archiver == "0"
    status = json.load(open(os.path.join(archiving.state_dir, "wal-status", "walc.json"), encoding="utf-8"))
    assert status["failures_total"] == 0 and "lag_seconds" in status and "lag_bytes" in status
    assert time.monotonic() - started < 60


def test_shipper_killed_mid_upload_loses_no_acknowledged_segment(archiving):
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import (
        archived_names, missing_segments, read_archived, read_record)

    env = archiving.env()
    archiving.psql("CREATE TABLE IF NOT EXISTS churn (id serial PRIMARY KEY, payload text)")
    first = archiving.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    load = subprocess.Popen([os.path.join(PG_BIN, "psql"), "-X", "-q", "-c",
                             "INSERT INTO churn (payload) SELECT md5(g::text) || repeat('x', 200) "
                             "FROM generate_series(1, 150000) g"], env=env)
    status_path = os.path.join(archiving.state_dir, "wal-status", "walc.json")

    def busy():
        # The status is published at most once a second: a snapshot can fall between two uploads, so
        # segments waiting for it count as mid-work too (seen on a loaded 2-core machine).
        try:
            with open(status_path, "r", encoding="utf-8") as handle:
                status = json.load(handle)
        except (OSError, ValueError):
            return False
        return status.get("in_flight", 0) > 0 or (status.get("backlog_segments", 0) > 0 and load.poll() is None)

    wait_for(busy, 60, "the shipper to be uploading")
    archiving.stop_shipper(signal.SIGKILL)
    load.wait(timeout=60)
    # What PostgreSQL believes archived (.done) must be in the repository, intact.
    status_dir = os.path.join(archiving.datadir, "pg_wal", "archive_status")
    done = sorted(name[:-5] for name in os.listdir(status_dir) if name.endswith(".done"))
    context = archiving.context()
    for name in done:
        assert read_record(context.repository, "walc", name) is not None, name
    acked_dir = os.path.join(archiving.state_dir, "wal-spool", "walc", "acked")
    for name in os.listdir(acked_dir):
        if name.startswith("0"):
            local = os.path.join(archiving.datadir, "pg_wal", name)
            if os.path.exists(local):
                with open(local, "rb") as handle:
                    assert read_archived(context, name) == handle.read()
    # Archiving carries on: wal-push ships by itself while the shipper is down, and the
    # restarted shipper drains whatever is left. PostgreSQL runs one archive_command at a time,
    # a `pgsafe wal-push` process of ~0.15 CPU-s even when the shipper has read ahead, and the
    # backlog here is 50-90 one-MiB segments (the insert, plus autovacuum after the pgbench test
    # above): 20 s on a quiet machine, over a minute on two cores at load 8-10. So the wait
    # lasts while the archive advances; 60 s without any progress is a stall and fails.
    archiving.start_shipper()
    last = archiving.psql("SELECT pg_walfile_name(pg_switch_wal())")
    archiving.wait_archived(600, stall_seconds=60)
    # Caught up: no gap from before the load to the last switched segment, and every segment
    # PostgreSQL was told is archived (.done) has its record.
    names = archived_names(context.repository, "walc", "00000001")
    assert missing_segments(names, first, last, 1024 * 1024) == []
    done = [name[:-5] for name in os.listdir(status_dir) if name.endswith(".done")]
    assert [name for name in done if name not in names] == []


def test_wal_fetch_prefetches_the_following_segments(archiving):
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import (
        archived_names, next_segment)

    archiving.psql("SELECT pg_switch_wal()")
    archiving.wait_archived(30)
    names = sorted(name for name in archived_names(archiving.context().repository, "walc", "00000001")
                   if len(name) == 24 and name < "000000010000000000000F00")
    first = names[len(names) // 2]
    pg_wal = os.path.join(archiving.root, "fetch2", "pg_wal")
    os.makedirs(pg_wal)
    chown_postgres(os.path.dirname(pg_wal), pg_wal)
    slow = time.monotonic()
    archiving.pgsafe("wal-fetch", first, os.path.join(pg_wal, "RECOVERYXLOG"))
    slow = time.monotonic() - slow
    spool = os.path.join(pg_wal, ".pgsafe-prefetch")
    following = next_segment(first, 1024 * 1024)
    wait_for(lambda: os.path.exists(os.path.join(spool, following)), 20, "the prefetcher to fetch %s" % following)
    fast = time.monotonic()
    archiving.pgsafe("wal-fetch", following, os.path.join(pg_wal, "RECOVERYXLOG"))
    fast = time.monotonic() - fast
    assert not os.path.exists(os.path.join(spool, following))  # served from the spool (moved)
    with open(os.path.join(pg_wal, "RECOVERYXLOG"), "rb") as handle:
        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import read_archived

        assert handle.read() == read_archived(archiving.context(), following)
    assert not [name for name in os.listdir(pg_wal) if name.startswith(".pgsafe-tmp")]
    assert fast < slow, (fast, slow)
