# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The modules on physical backups, for real: an archiving cluster, pg_backup full -> incremental ->
transaction_logs (each planned in check mode first), backup_info's chains and WAL summary,
backup_restore to a point in time into a fresh data directory on a spare port, its refusals
and its check-mode plan, and backup_verify at decrypt level (tar against file list, WAL).

Modules run in-process as in test_modules.py; after each run the repository, the restored
server or the data directory is looked at directly.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time

import pytest
from test_modules import files_under, ok, run_module

from tests.support.pgcluster import PG_BIN, Cluster, free_port, load_sample
from tests.support.physical import ArchivingCluster, chown_postgres, settle, table_checksums

CLUSTER = "modphys"


@pytest.fixture(scope="module")
def source():
    cluster = ArchivingCluster(cluster_name=CLUSTER).init().start()
    cluster.start_shipper()
    load_sample(cluster, "app")
    cluster.psql("CREATE TABLE ledger (id int PRIMARY KEY, note text)", "app")
    settle(cluster)
    yield cluster
    cluster.destroy()


def module_args(cluster: ArchivingCluster, repository: str | None = None, postgres: bool = True, **extra) -> dict:
    args = {"cluster": CLUSTER, "state_dir": cluster.state_dir,
            "repository": {"type": "filesystem", "path": repository or cluster.repository["path"]},
            "encryption": {"key_files": [{"path": cluster.key_path}]},
            "compression": {"algorithm": "zstd", "level": 1, "threads": 0}}
    if postgres:
        args.update(login_host=cluster.host, port=cluster.port, login_user="postgres", pg_bin_dir=PG_BIN)
    args.update(extra)
    return args


def backup_ids(cluster: ArchivingCluster) -> list:
    folder = os.path.join(cluster.repository["path"], CLUSTER, "backups")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def manifest_of(cluster: ArchivingCluster, backup_id: str) -> dict:
    with open(os.path.join(cluster.repository["path"], CLUSTER, "backups", backup_id, "manifest.json"),
              encoding="utf-8") as handle:
        return json.load(handle)


def utc_now_text(cluster: ArchivingCluster) -> str:
    return cluster.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")


@pytest.fixture(scope="module")
def history(source):
    """pg_backup: full, incremental (each planned first), ledger rows A, a time, rows B, transaction_logs."""
    base = module_args(source)

    planned_full = ok(run_module("pg_backup", dict(base, type="full"), check=True))
    assert planned_full["changed"] is True and planned_full["type"] == "full"
    assert planned_full["parent_backup_id"] is None and planned_full["pgdata"] == source.datadir
    assert backup_ids(source) == []  # check mode wrote nothing

    full = ok(run_module("pg_backup", dict(base, type="full")))
    assert full["type"] == "full" and full["parent_backup_id"] is None and full["chain"] == [full["backup_id"]]
    assert backup_ids(source) == [full["backup_id"]]
    assert manifest_of(source, full["backup_id"])["physical"]["chain_depth"] == 0

    planned_incremental = ok(run_module("pg_backup", dict(base, type="incremental"), check=True))
    assert planned_incremental["type"] == "incremental" and planned_incremental["forced_full"] is False
    assert planned_incremental["parent_backup_id"] == full["backup_id"]
    assert planned_incremental["chain"] == [full["backup_id"]] and planned_incremental["chain_depth"] == 1

    source.psql("INSERT INTO ledger SELECT g, 'A' FROM generate_series(1, 100) g", "app")
    incremental = ok(run_module("pg_backup", dict(base, type="incremental", delta_checksum=True)))
    assert incremental["type"] == "incremental" and incremental["parent_backup_id"] == full["backup_id"]
    assert incremental["chain"] == [full["backup_id"], incremental["backup_id"]]
    assert incremental["files_stored"] < incremental["files_total"] / 2, incremental

    depth_reached = ok(run_module("pg_backup", dict(base, type="incremental", max_chain_depth=1), check=True))
    assert depth_reached["type"] == "full" and depth_reached["forced_full"] is True
    assert "chain depth limit 1 reached" in depth_reached["why"], depth_reached["why"]
    refused_depth = run_module("pg_backup", dict(base, type="incremental", max_chain_depth=0), check=True)
    assert refused_depth["failed"] and refused_depth["error"]["where"] == "max_chain_depth"

    after_a = table_checksums(source, "app")
    time.sleep(0.3)
    between = utc_now_text(source)
    time.sleep(0.3)
    source.psql("INSERT INTO ledger SELECT g, 'B' FROM generate_series(101, 200) g", "app")
    after_b = table_checksums(source, "app")

    planned_logs = ok(run_module("pg_backup", dict(base, type="transaction_logs"), check=True))
    assert planned_logs["wal"]["start_segment"] == incremental["wal"]["start_segment"]
    assert len(planned_logs["would_switch_segment"]) == 24
    assert backup_ids(source) == sorted([full["backup_id"], incremental["backup_id"]])

    logs = ok(run_module("pg_backup", dict(base, type="transaction_logs", archive_wait_seconds=60,
                                           labels={"ticket": "OPS-1"})))
    assert logs["type"] == "transaction_logs" and logs["rpo_seconds"] >= 0
    assert logs["wal"]["start_segment"] == incremental["wal"]["start_segment"]
    assert logs["wal"]["stop_segment"] >= planned_logs["would_switch_segment"]
    assert manifest_of(source, logs["backup_id"])["labels"] == {"ticket": "OPS-1"}
    return {"full": full, "incremental": incremental, "logs": logs, "between": between, "after_a": after_a,
            "after_b": after_b}


def test_backup_info_shows_chains_and_the_wal_archive(source, history):
    full, incremental, logs = history["full"], history["incremental"], history["logs"]
    info = ok(run_module("backup_info", module_args(source, postgres=False, type="physical"), check=True))
    assert [entry["backup_id"] for entry in info["backups"]] == [full["backup_id"], incremental["backup_id"]]
    first, second = info["backups"]
    assert (first["chain"], first["chain_depth"]) == ([full["backup_id"]], 0)
    assert (second["chain"], second["chain_depth"]) == ([full["backup_id"], incremental["backup_id"]], 1)
    assert second["parent_backup_id"] == full["backup_id"] and second["full_backup_id"] == full["backup_id"]
    assert second["wal"]["start_segment"] == incremental["wal"]["start_segment"]
    timeline = info["wal_archive"]["00000001"]
    assert timeline["first_segment"] <= full["wal"]["start_segment"]
    assert timeline["last_segment"] >= logs["wal"]["stop_segment"]
    assert timeline["missing_between"] == 0 and timeline["last_archived_at"]
    logs_entry = ok(run_module("backup_info", module_args(source, postgres=False, type="transaction_logs",
                                                          wal_archive=False)))
    assert logs_entry["backups"][0]["rpo_seconds"] == logs["rpo_seconds"] and "wal_archive" not in logs_entry


class Restored:
    """A data directory (and socket directory) for a restore on a spare port, cleaned up after."""

    def __init__(self, source: ArchivingCluster):
        base = tempfile.mkdtemp(prefix="module-restore-", dir=source.root)
        os.chmod(base, 0o755)
        self.sock = os.path.join(base, "sock")
        os.makedirs(self.sock)
        chown_postgres(self.sock)
        self.cluster = Cluster(base_dir=base)
        self.cluster.datadir = os.path.join(base, "data")
        self.cluster.socket_dir = self.sock
        self.pgdata = self.cluster.datadir
        self.port = self.cluster.port = free_port()

    def args(self, source: ArchivingCluster, **extra) -> dict:
        args = module_args(source, kind="physical", pgdata=self.pgdata, port=self.port, login_host="127.0.0.1",
                           restore_command="%s wal-fetch %%f %%p" % source.wrapper,
                           server_settings={"unix_socket_directories": self.sock}, recovery_timeout_seconds=120)
        args.update(extra)
        return args

    def destroy(self) -> None:
        self.cluster.running = True
        self.cluster.destroy()


def test_backup_restore_to_a_time_refuses_without_force_then_replaces_with_force(source, history):
    restored = Restored(source)
    try:
        args = restored.args(source, target_time=history["between"])
        result = ok(run_module("backup_restore", args, diff=True))
        assert result["changed"] is True and result["kind"] == "physical" and result["state"] == "promoted"
        assert result["chain"] == [history["full"]["backup_id"], history["incremental"]["backup_id"]]
        assert result["target"]["type"] == "time" and "recovery stopping before commit" in result["reached"]["stop"]
        assert result["diff"]["before"]["replaces_existing"] is False
        # The data as it was at that time: rows A, not rows B; archiving off, its own port.
        assert table_checksums(restored.cluster, "app") == history["after_a"]
        assert restored.cluster.psql("SELECT count(*) FROM ledger WHERE note = 'B'", "app") == "0"
        assert restored.cluster.psql("SHOW archive_mode") == "off"
        assert restored.cluster.psql("SHOW port") == str(restored.port) != str(source.port)

        # Again into the same directory, where the restored server now runs: refused, nothing touched.
        restored.cluster.psql("CREATE TABLE marker (id int)", "app")
        refused = run_module("backup_restore", args)
        assert refused["failed"] is True and refused["error"]["category"] == "restore"
        assert "is running in %s" % restored.pgdata in refused["msg"] and "force=true" in refused["msg"]
        assert restored.cluster.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'marker'", "app") == "1"

        # Check mode with force says what it would replace and stop, and still touches nothing.
        forced_args = dict({key: value for key, value in args.items() if key != "target_time"}, force=True,
                           target="latest")
        planned = ok(run_module("backup_restore", forced_args, check=True))
        assert planned["destination"]["replaces_existing"] is True
        assert planned["destination"]["running_server"]["port"] == restored.port
        assert restored.cluster.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'marker'", "app") == "1"

        # With force: the running copy is stopped and its directory replaced. Prepared only (start=false):
        # one WAL replay per test keeps the file fast; the replay itself was proven above.
        replaced = ok(run_module("backup_restore", dict(forced_args, start=False)))
        assert replaced["replaced_existing"] is True and replaced["stopped_server"]["port"] == restored.port
        assert replaced["state"] == "prepared (not started)"
        assert restored.cluster.psql("SELECT 1", check=False) == ""  # the old copy is down
        assert not os.path.exists(os.path.join(restored.pgdata, "postmaster.pid"))
        assert os.path.exists(os.path.join(restored.pgdata, "recovery.signal"))
        with open(os.path.join(restored.pgdata, "backup_label"), encoding="utf-8") as handle:
            assert "pgsafe %s" % history["incremental"]["backup_id"] in handle.read()
        with open(os.path.join(restored.pgdata, "postgresql.auto.conf"), encoding="utf-8") as handle:
            settings = handle.read()
        assert "recovery_target_time =" not in settings and "port = '%d'" % restored.port in settings
        # Nothing of the replaced copy is left: its new timeline's WAL and history file are gone.
        assert not [name for name in os.listdir(os.path.join(restored.pgdata, "pg_wal"))
                    if name.startswith("00000002")]
    finally:
        restored.destroy()


def test_backup_restore_check_mode_plan_and_refusals(source, history):
    restored = Restored(source)
    full, incremental = history["full"], history["incremental"]
    try:
        plan = ok(run_module("backup_restore", restored.args(source, target_time=history["between"]), check=True,
                             diff=True))
        assert plan["changed"] is True and plan["kind"] == "physical" and plan["target_reachable"] is True
        assert plan["chain"] == [full["backup_id"], incremental["backup_id"]]
        assert plan["backup_id"] == plan["base_backup_id"] == incremental["backup_id"]
        assert plan["window"]["start"]["backup_id"] == full["backup_id"]
        assert plan["window"]["end"]["segment"] >= history["logs"]["wal"]["stop_segment"]
        assert "restorable window: from" in plan["window_text"]
        assert plan["destination"] == dict(plan["diff"]["before"]) and plan["destination"]["exists"] is False
        assert not os.path.exists(restored.pgdata)

        # A backup id decides the kind by itself (no kind given) and pins the chain.
        pinned = restored.args(source, target="immediate", backup_id=full["backup_id"])
        pinned.pop("kind")
        pinned_plan = ok(run_module("backup_restore", pinned, check=True))
        assert pinned_plan["kind"] == "physical" and pinned_plan["chain"] == [full["backup_id"]]

        too_late = run_module("backup_restore", restored.args(source, target_time="2999-01-01T00:00:00Z"),
                              check=True)
        assert too_late["failed"] and "beyond the end of the WAL archive" in too_late["msg"]
        assert "restorable window: from" in too_late["msg"] and not os.path.exists(restored.pgdata)

        os.makedirs(restored.pgdata)
        with open(os.path.join(restored.pgdata, "notes.txt"), "w", encoding="utf-8") as handle:
            handle.write("not a data directory")
        not_empty = run_module("backup_restore", restored.args(source, target="immediate"), check=True)
        assert not_empty["failed"] and "is not empty" in not_empty["msg"] and "force=true" in not_empty["msg"]
        kept = run_module("backup_restore", restored.args(source, target="immediate", force=True))
        assert kept["failed"] and "not a PostgreSQL data directory" in kept["msg"]
        assert os.listdir(restored.pgdata) == ["notes.txt"]

        busy = run_module("backup_restore", dict(restored.args(source, target="immediate"), port=source.port,
                                                 pgdata=restored.pgdata + "-new"), check=True)
        assert busy["failed"] and "port %d is in use" % source.port in busy["msg"]

        mixed = run_module("backup_restore", restored.args(source, database="app"), check=True)
        assert mixed["failed"] and "does not take database" in mixed["msg"]
        two_targets = run_module("backup_restore", restored.args(source, target="latest", target_xid="5"),
                                 check=True)
        assert two_targets["failed"] and "mutually exclusive" in two_targets["msg"]
    finally:
        restored.destroy()


def test_backup_verify_decrypt_proves_tar_file_list_and_wal(source, history, tmp_path):
    from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import read_file_list
    from ansible_collections.pgsafe.backup.plugins.module_utils.pipeline import store_stream

    incremental_id = history["incremental"]["backup_id"]
    args = module_args(source, types=["full", "incremental", "transaction_logs"], max_age_hours=1)
    verified = ok(run_module("backup_verify", args))
    assert verified["ok"] is True and verified["failures"] == []
    checked = {backup["backup_id"]: backup for backup in verified["backups"]}
    assert set(checked) == {history["full"]["backup_id"], incremental_id, history["logs"]["backup_id"]}
    incremental_checks = {check["check"] for check in checked[incremental_id]["checks"]}
    assert {"sha256", "decrypt", "structure", "chain", "wal", "wal decrypt"} <= incremental_checks
    assert "wal" in {check["check"] for check in checked[history["logs"]["backup_id"]]["checks"]}
    record = os.path.join(source.repository["path"], CLUSTER, "verify", incremental_id + ".json")
    assert json.load(open(record, encoding="utf-8"))["ok"] is True

    # A file list that no longer names a file the tar holds (re-encrypted with the right key,
    # the manifest updated): integrity cannot tell, decrypt must.
    copy = str(tmp_path / "repo")
    shutil.copytree(source.repository["path"], copy)
    settings = dict(source.pgsafe_settings(), repository={"type": "filesystem", "path": copy})
    context = Context.from_settings(settings, need_postgres=False)
    manifest = mf.read_manifest(context.repository, CLUSTER, incremental_id)
    listing = read_file_list(context, manifest)
    victim = sorted(rel for rel, entry in listing["files"].items() if entry["in"] == incremental_id)[0]
    del listing["files"][victim]
    filelist = next(obj for obj in manifest["objects"] if obj["kind"] == "filelist")
    stored = store_stream(io.BytesIO(json.dumps(listing).encode("utf-8")), context.repository,
                          mf.object_key(CLUSTER, incremental_id, filelist["name"]), filelist["name"],
                          context.compression, context.envelope,
                          mf.encryption_context(CLUSTER, incremental_id, filelist["name"]))
    filelist.update(stored.to_manifest(), kind="filelist", format="json")
    mf.write_manifest(context.repository, manifest)
    pgdata_object = next(obj["name"] for obj in manifest["objects"] if obj["kind"] == "pgdata")

    tampered = dict(module_args(source, repository=copy), backup_ids=[incremental_id], types=["incremental"],
                    full_recheck=True)
    assert ok(run_module("backup_verify", dict(tampered, level="integrity"), check=True))["ok"] is True
    failed = run_module("backup_verify", tampered, check=True)
    assert failed["failed"] is True and failed["ok"] is False
    assert [(f["backup_id"], f["object"], f["check"]) for f in failed["failures"]] == [
        (incremental_id, pgdata_object, "structure")]
    assert victim in failed["failures"][0]["message"] and "file list does not say" in failed["failures"][0]["message"]
    assert files_under(os.path.join(copy, CLUSTER, "verify")) == files_under(
        os.path.join(source.repository["path"], CLUSTER, "verify"))  # check mode recorded nothing new
