# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Physical base backups on a real archiving cluster: full -> incremental -> incremental, the
restored copy equal to the source, chain depth, refusals, and backup chain recovery."""

from __future__ import annotations

import os

import pytest

from tests.support.pgcluster import load_sample
from tests.support.physical import ArchivingCluster, chown_postgres, restore_into, settle, table_checksums


@pytest.fixture(scope="module")
def source():
    cluster = ArchivingCluster(cluster_name="phys").init().start()
    cluster.start_shipper()
    cluster.sample_counts = load_sample(cluster, "app")
    settle(cluster)
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="module")
def chain(source):
    """full, then two incrementals with inserts, updates, deletes, a new and a dropped table,
    and a table rewritten under a new file (VACUUM FULL) in between."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import run_physical_backup

    full = run_physical_backup(source.context(), "full")
    source.psql("UPDATE bookings SET amount = amount + 1 WHERE id % 10 = 0; "
                "DELETE FROM bookings WHERE user_id > 1900; DELETE FROM users WHERE id > 1900; "
                "CREATE TABLE extra AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g", "app")
    # The changes age past the mtime margin before the first incremental stores them, so the second
    # need not store them again and a restore of the chain really reads all three backups.
    settle(source)
    first = run_physical_backup(source.context(), "incremental")
    old_services_file = source.psql("SELECT pg_relation_filepath('services')", "app")
    source.psql("DROP TABLE extra", "app")
    source.psql("VACUUM FULL services", "app")
    source.psql("INSERT INTO audit.events (payload) SELECT jsonb_build_object('n', g) FROM generate_series(1, 300) g",
                "app")
    second = run_physical_backup(source.context(), "incremental")
    return {"full": full, "first": first, "second": second, "old_services_file": old_services_file,
            "checksums": table_checksums(source, "app")}


def test_incremental_chain_records_parents_and_stores_less(chain):
    full, first, second = chain["full"], chain["first"], chain["second"]
    assert full["type"] == "full" and full["parent_backup_id"] is None
    assert first["type"] == "incremental" and first["parent_backup_id"] == full["backup_id"]
    assert second["parent_backup_id"] == first["backup_id"]
    assert second["chain"] == [full["backup_id"], first["backup_id"], second["backup_id"]]
    assert full["files_stored"] == full["files_total"]
    assert first["files_stored"] < full["files_total"] / 2, first
    assert second["size_stored_bytes"] < full["size_stored_bytes"] / 2, (second, full)
    for result in (full, first, second):
        wal = result["wal"]
        assert wal["start_segment"] <= wal["stop_segment"] and wal["timeline"] == 1
        assert set(wal) >= {"start_segment", "stop_segment", "start_lsn", "stop_lsn", "timeline"}


def test_full_incremental_incremental_restore_equals_the_source(source, chain):
    result, restored = restore_into(source, target={"type": "immediate"})
    try:
        assert result["chain"] == chain["second"]["chain"]
        assert result["skipped"] == []
        assert table_checksums(restored, "app") == chain["checksums"]
        # The dropped table and the file VACUUM FULL replaced are gone: deletions were applied.
        assert restored.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'extra'", "app") == "0"
        assert not os.path.exists(os.path.join(restored.datadir, chain["old_services_file"]))
        assert restored.psql("SHOW archive_mode") == "off"
        assert restored.psql("SHOW port") == str(restored.port) != str(source.port)
        with open(os.path.join(restored.datadir, "postgresql.auto.conf"), encoding="utf-8") as handle:
            assert "archive_mode = 'off'" in handle.read()
    finally:
        restored.destroy()


def test_chain_depth_limit_forces_a_full_backup(source, chain):
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import run_physical_backup

    forced = run_physical_backup(source.context(), "incremental", max_chain_depth=2)
    assert forced["type"] == "full" and "chain depth limit 2" in forced["why"]
    following = run_physical_backup(source.context(), "incremental", max_chain_depth=2)
    assert following["type"] == "incremental" and following["parent_backup_id"] == forced["backup_id"]


def test_corrupt_incremental_restores_from_the_last_good_backup_plus_wal(source, chain):
    """Backup chain recovery (seeds): say what was skipped and reach the same point anyway."""
    from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import run_transaction_logs

    context = source.context()
    first_id = chain["first"]["backup_id"]
    manifest = mf.read_manifest(context.repository, "phys", first_id)
    data = [obj for obj in manifest["objects"] if obj["kind"] == "pgdata"][0]
    path = os.path.join(source.repository["path"], mf.object_key("phys", first_id, data["name"]))
    with open(path, "r+b") as handle:
        handle.seek(data["size_stored"] // 2)
        byte = handle.read(1)
        handle.seek(data["size_stored"] // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    source.psql("INSERT INTO services (name, price) VALUES ('after the chain', 1)", "app")
    expected = table_checksums(source, "app")
    run_transaction_logs(context)
    # Only the chain that holds the corrupt backup: pin the newest incremental of it.
    result, restored = restore_into(source, target={"type": "latest"}, backup_id=chain["second"]["backup_id"])
    try:
        assert result["chain"] == [chain["full"]["backup_id"]]
        assert [item["backup_id"] for item in result["skipped"]] == [first_id, chain["second"]["backup_id"]]
        assert "SHA-256" in result["skipped"][0]["reason"] or "authentication" in result["skipped"][0]["reason"]
        assert "depends on %s" % first_id in result["skipped"][1]["reason"]
        assert "restored from %s plus WAL" % chain["full"]["backup_id"] in result["chain_recovery"]
        assert table_checksums(restored, "app") == expected
        assert result["reached"]["redo_done_at"]
    finally:
        restored.destroy()


def test_backup_refused_without_archiving(pg_cluster, key_file, tmp_path):
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
    from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import run_physical_backup

    os.makedirs(str(tmp_path / "repo"))
    context = Context.from_settings({"cluster": "noarchive", "state_dir": str(tmp_path / "state"),
                                     "repository": {"type": "filesystem", "path": str(tmp_path / "repo")},
                                     "encryption": {"key_files": [{"path": key_file}]},
                                     "postgres": pg_cluster.conn_spec()})
    with pytest.raises(ConfigError) as caught:
        run_physical_backup(context, "full")
    assert "archive_mode is off" in caught.value.message and "wal-push" in caught.value.fix
    assert not os.listdir(str(tmp_path / "repo"))


def test_tablespace_is_backed_up_and_relocated(source, chain):
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import run_physical_backup

    location = os.path.join(source.root, "tblspc")
    os.makedirs(location, mode=0o700)
    chown_postgres(location)
    source.psql("CREATE TABLESPACE extra_space LOCATION '%s'" % location)
    source.psql("CREATE TABLE spaced TABLESPACE extra_space AS SELECT g AS id, md5(g::text) AS v "
                "FROM generate_series(1, 2000) g", "app")
    backup = run_physical_backup(source.context(), "full")
    assert backup["type"] == "full"
    expected = table_checksums(source, "app")
    result, restored = restore_into(source, target={"type": "immediate"}, backup_id=backup["backup_id"])
    try:
        assert table_checksums(restored, "app") == expected
        oid = restored.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'extra_space'")
        link = os.readlink(os.path.join(restored.datadir, "pg_tblspc", oid))
        assert link != location and link.startswith(restored.datadir)
        assert result["chain"] == [backup["backup_id"]]
    finally:
        restored.destroy()
