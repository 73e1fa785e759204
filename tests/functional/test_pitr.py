# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery on a real archiving cluster: the exact rows committed before a time
or a restore point, refusals with the restorable window, archiving off on the copy."""

from __future__ import annotations

import datetime
import os
import time

import pytest

from tests.support.pgcluster import load_sample
from tests.support.physical import ArchivingCluster, restore_into, table_checksums


@pytest.fixture(scope="module")
def history():
    """A full backup, then transaction A, a known time, transaction B, a restore point, C."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import (
        run_physical_backup, run_transaction_logs)

    cluster = ArchivingCluster(cluster_name="pitr").init().start()
    cluster.start_shipper()
    try:
        load_sample(cluster, "app")
        cluster.psql("CREATE TABLE ledger (id int PRIMARY KEY, note text)", "app")
        backup = run_physical_backup(cluster.context(), "full")
        cluster.psql("INSERT INTO ledger SELECT g, 'A' FROM generate_series(1, 100) g; "
                     "UPDATE users SET bio = 'changed by A' WHERE id <= 50", "app")
        after_a = table_checksums(cluster, "app")
        time.sleep(0.3)
        between = cluster.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                               "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        time.sleep(0.3)
        cluster.psql("INSERT INTO ledger SELECT g, 'B' FROM generate_series(101, 200) g; "
                     "DELETE FROM bookings WHERE id <= 500", "app")
        after_b = table_checksums(cluster, "app")
        cluster.psql("SELECT pg_create_restore_point('before_c')")
        cluster.psql("INSERT INTO ledger SELECT g, 'C' FROM generate_series(201, 300) g", "app")
        logs = run_transaction_logs(cluster.context())
        yield {"cluster": cluster, "backup": backup, "between": between, "after_a": after_a, "after_b": after_b,
               "logs": logs}
    finally:
        cluster.destroy()


def test_restore_to_a_time_between_two_transactions(history):
    result, restored = restore_into(history["cluster"], target={"type": "time", "value": history["between"]})
    try:
        assert result["backup_id"] == history["backup"]["backup_id"]
        assert table_checksums(restored, "app") == history["after_a"]
        assert restored.psql("SELECT count(*) FROM ledger WHERE note = 'B'", "app") == "0"
        assert "recovery stopping before commit" in result["reached"]["stop"]
        assert result["state"] == "promoted"
        # The copy never writes into the production archive, and it runs on its own port.
        assert restored.psql("SHOW archive_mode") == "off"
        assert restored.psql("SHOW port") == str(restored.port) != str(history["cluster"].port)
    finally:
        restored.destroy()


def test_restore_to_a_named_restore_point(history):
    result, restored = restore_into(history["cluster"], target={"type": "name", "value": "before_c"})
    try:
        assert table_checksums(restored, "app") == history["after_b"]
        assert "before_c" in result["reached"]["stop"]
    finally:
        restored.destroy()


def test_too_early_and_too_late_targets_are_refused_with_the_window(history):
    from ansible_collections.pgsafe.backup.plugins.module_utils.errors import RestoreError
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_restore import run_physical_restore

    cluster = history["cluster"]
    pgdata = os.path.join(cluster.root, "never-created")
    started = datetime.datetime.strptime(history["backup"]["wal"]["stop_time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    too_early = (started - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    too_late = (datetime.datetime.utcnow() + datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for target, words in (({"type": "time", "value": too_early}, "earlier than the oldest usable backup"),
                          ({"type": "time", "value": too_late}, "beyond the end of the WAL archive"),
                          ({"type": "lsn", "value": "FF/0"}, "beyond the end of the WAL archive"),
                          ({"type": "lsn", "value": "0/1"}, "earlier than the oldest usable backup")):
        with pytest.raises(RestoreError) as caught:
            run_physical_restore(cluster.context(), pgdata, 5999, target=target)
        message = caught.value.message
        assert words in message, message
        assert "restorable window: from %s" % history["backup"]["wal"]["stop_time"] in message, message
        assert history["backup"]["backup_id"] in message
        assert not os.path.exists(pgdata)  # refused before anything was touched


def test_cli_commands_for_transaction_logs_status_and_refused_restore(history, capsys):
    import json

    from ansible_collections.pgsafe.backup.plugins.module_utils.cli import main

    cluster = history["cluster"]
    assert main(["-c", cluster.config_path, "backup", "transaction_logs", "--json"]) == 0
    logs = json.loads(capsys.readouterr().out)
    assert logs["type"] == "transaction_logs" and logs["rpo_seconds"] >= 0
    assert logs["wal"]["start_segment"] == history["backup"]["wal"]["start_segment"]

    assert main(["-c", cluster.config_path, "backup", "incremental"]) == 0
    assert "incremental backup" in capsys.readouterr().out

    # The backup's own segment switch may still be in flight: the shipper must drain it promptly.
    deadline = time.monotonic() + 20
    while True:
        assert main(["-c", cluster.config_path, "wal-status", "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        if status["backlog_segments"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status["running"] is True and status["backlog_segments"] == 0 and status["failures_total"] == 0

    pgdata = os.path.join(cluster.root, "cli-never-created")
    code = main(["-c", cluster.config_path, "restore-physical", "--pgdata", pgdata, "--port", "5998",
                 "--target-time", "2000-01-01T00:00:00Z"])
    assert code == 9
    assert "restorable window" in capsys.readouterr().err and not os.path.exists(pgdata)
