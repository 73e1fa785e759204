# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fault matrix, damaged repository and killed runs: one flipped byte, a truncated object, two
objects swapped between backups, a missing manifest; ``pgsafe backup`` and ``pgsafe restore``
killed with SIGKILL mid-work. See docs/faults.md.

Two backups (A then B) are taken once per module into a filesystem repository; each damage
test works on its own copy of that repository, damages B and checks that A is untouched.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    EncryptionError, NotFoundError)
from ansible_collections.pgsafe.backup.plugins.module_utils.logical_backup import run_logical_backup
from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import (
    plan_logical_restore, run_logical_restore)
from tests.support.cli import describe, write_config
from tests.support.faults import (
    CLUSTER, assert_still_verifies, backup_metrics, base_settings, complete_ids, context_for, create_big_database,
    half_written, metric, pgsafe, sigkill, start_pgsafe, statuses, verify_ids, wait_for)

DUMP = "databases/app.dump.zst.enc"


@pytest.fixture(scope="module")
def big_database(pg_cluster):
    return create_big_database(pg_cluster)


@pytest.fixture(scope="module")
def two_backups(tmp_path_factory, pg_cluster):
    """Backups A and B of ``app``, taken once; tests damage copies of this repository."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import generate_key_file

    base = tmp_path_factory.mktemp("two-backups")
    key_file = str(base / "keys" / "backup.key")
    generate_key_file(key_file)
    repository = str(base / "repo")
    settings = base_settings(base, pg_cluster, {"type": "filesystem", "path": repository, "create": True},
                             {"key_files": [{"path": key_file}]})
    context = context_for(settings)
    first = run_logical_backup(context, ["app"])["backup_id"]
    second = run_logical_backup(context, ["app"])["backup_id"]
    return {"repository": repository, "key_file": key_file, "a": first, "b": second}


@pytest.fixture
def damaged(tmp_path, pg_cluster, two_backups):
    """A private copy of the two-backup repository, with settings and metrics of its own."""
    repository = str(tmp_path / "repo")
    shutil.copytree(two_backups["repository"], repository)
    settings = base_settings(tmp_path, pg_cluster, {"type": "filesystem", "path": repository},
                             {"key_files": [{"path": two_backups["key_file"]}]})
    return dict(two_backups, settings=settings, context=context_for(settings),
                path=lambda backup_id, name: os.path.join(repository, mf.object_key(CLUSTER, backup_id, name)))


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def databases(pg_cluster, pattern: str) -> list[str]:
    return pg_cluster.psql("SELECT datname FROM pg_database WHERE datname LIKE '%s' ORDER BY 1" % pattern).split()


def verify_metrics(settings: dict) -> tuple:
    labels = {"type": "logical", "level": "decrypt"}
    return (metric(settings, "verify", "verify_success", **labels),
            metric(settings, "verify", "verify_failures", **labels))


def assert_damage_contained(damaged_repo, pg_cluster, expected_check: str, message_part: str, error_class,
                            restore_message: str | None = None) -> None:
    """B fails verification and restore with a clear error; A still verifies; nothing is left over."""
    context, settings, good, bad = damaged_repo["context"], damaged_repo["settings"], damaged_repo["a"], damaged_repo["b"]
    report = verify_ids(context, [bad], record=True)
    assert not report["ok"]
    assert [(f["backup_id"], f["object"], f["check"]) for f in report["failures"]] == [(bad, DUMP, expected_check)], \
        report["summary"]
    assert message_part in report["failures"][0]["message"], report["failures"][0]["message"]
    assert verify_metrics(settings) == (0.0, 1.0)
    # The catalog keeps the verdict beside the backup: `pgsafe list` shows it FAILED.
    entry = {item["backup_id"]: item for item in list_backups(context.repository, CLUSTER)}[bad]
    assert entry["verification"]["ok"] is False and entry["verification"]["failures"][0]["check"] == expected_check

    with pytest.raises(error_class) as caught:
        run_logical_restore(context, bad, "app", "restored_from_damage")
    assert (restore_message or message_part) in caught.value.message, caught.value.message
    assert "restore" in caught.value.fix and damaged_repo["b"] in caught.value.message
    assert databases(pg_cluster, "restored_from_damage%") == []  # neither the target nor a staging copy
    assert metric(settings, "restore", "restore_success", type="logical") == 0.0

    assert_still_verifies(context, good)
    assert complete_ids(context) == [good, bad]


def assert_repaired(damaged_repo) -> None:
    """Once the object is put back (from a repository copy), B verifies again and the metric says so."""
    report = verify_ids(damaged_repo["context"], [damaged_repo["b"]], record=True)
    assert report["ok"], report["summary"]
    assert verify_metrics(damaged_repo["settings"]) == (1.0, 0.0)


# ---------------------------------------------------------------------------- damage


def test_one_flipped_byte(damaged, pg_cluster):
    path = damaged["path"](damaged["b"], DUMP)
    original = read(path)
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    write(path, bytes(flipped))

    assert_damage_contained(damaged, pg_cluster, "decrypt",
                            "the ciphertext failed authentication: the object was modified or corrupted",
                            EncryptionError)
    # The cheaper level catches it too, by the manifest's SHA-256.
    integrity = verify_ids(damaged["context"], [damaged["b"]], level="integrity")
    assert [(f["object"], f["check"]) for f in integrity["failures"]] == [(DUMP, "sha256")]
    write(path, original)
    assert_repaired(damaged)


def test_truncated_object(damaged, pg_cluster):
    path = damaged["path"](damaged["b"], DUMP)
    original = read(path)
    write(path, original[: len(original) // 2])

    assert_damage_contained(damaged, pg_cluster, "size",
                            "stored size %d, manifest says %d" % (len(original) // 2, len(original)),
                            EncryptionError, "the encrypted object is truncated or malformed")
    write(path, original)
    assert_repaired(damaged)


def test_objects_swapped_between_backups(damaged, pg_cluster):
    """A's dump under B's name, B's manifest patched to A's size and SHA-256: only the
    encryption context (cluster, backup id, object name) can tell."""
    good, bad, context = damaged["a"], damaged["b"], damaged["context"]
    target = damaged["path"](bad, DUMP)
    original = read(target)
    shutil.copyfile(damaged["path"](good, DUMP), target)
    manifest_path = os.path.join(damaged["settings"]["repository"]["path"], mf.manifest_key(CLUSTER, bad))
    original_manifest = read(manifest_path)
    patched = json.loads(original_manifest)
    source = {obj["name"]: obj for obj in mf.read_manifest(context.repository, CLUSTER, good)["objects"]}[DUMP]
    for obj in patched["objects"]:
        if obj["name"] == DUMP:
            obj.update(size_stored=source["size_stored"], sha256=source["sha256"])
    write(manifest_path, mf.dumps(patched))

    # Sizes and checksums agree, so the integrity level is satisfied...
    assert verify_ids(context, [bad], level="integrity")["ok"]
    # ...and the decrypt level (the default) is not.
    assert_damage_contained(damaged, pg_cluster, "decrypt",
                            "encryption context mismatch: expected pgsafe:backup_id=%s got %s" % (bad, good),
                            EncryptionError)
    write(target, original)
    write(manifest_path, original_manifest)
    assert_repaired(damaged)


def test_missing_manifest(damaged, pg_cluster):
    good, bad, context, settings = damaged["a"], damaged["b"], damaged["context"], damaged["settings"]
    manifest_path = os.path.join(settings["repository"]["path"], mf.manifest_key(CLUSTER, bad))
    original = read(manifest_path)
    os.unlink(manifest_path)

    assert statuses(context) == {good: "complete", bad: "incomplete"}
    report = verify_ids(context, [bad], record=True)
    assert [(f["backup_id"], f["check"], f["message"]) for f in report["failures"]] == \
        [(bad, "presence", "backup %s is incomplete" % bad)]
    assert verify_metrics(settings) == (0.0, 1.0)
    with pytest.raises(NotFoundError) as caught:
        run_logical_restore(context, bad, "app", "restored_from_damage")
    assert "backup %s has no manifest in %s (it does not exist or is incomplete)" % (
        bad, settings["repository"]["path"]) in caught.value.what
    assert "pgsafe list" in caught.value.fix
    # "latest" means the newest complete backup: A, which still verifies.
    assert plan_logical_restore(context, "latest", "app", "restored_from_damage")["backup_id"] == good
    assert_still_verifies(context, good)
    assert databases(pg_cluster, "restored_from_damage%") == []

    write(manifest_path, original)
    assert_repaired(damaged)


# ---------------------------------------------------------------------------- SIGKILL


def test_backup_killed_mid_upload(tmp_path, pg_cluster, big_database, key_file):
    repository = str(tmp_path / "repo")
    settings = base_settings(tmp_path, pg_cluster, {"type": "filesystem", "path": repository, "create": True},
                             {"key_files": [{"path": key_file}]})
    config = write_config(tmp_path / "pgsafe.yml", settings)
    context = context_for(settings)
    kept = run_logical_backup(context, ["app"])["backup_id"]
    before = backup_metrics(settings)

    process = start_pgsafe(config, "backup", "logical", "-d", "big", log_path=str(tmp_path / "backup.log"))
    try:
        # Mid-work: the dump is streaming into its temporary object.
        wait_for(half_written(repository, "big.dump"), 60, "the dump to be half written")
    finally:
        assert sigkill(process) == -9
    # pg_dump (its own session) loses its reader and ends; no backend is left dumping.
    wait_for(lambda: pg_cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'big' AND "
                                     "application_name = 'pgsafe'") == "0", 30, "pg_dump to end")

    listed = pgsafe(config, "list", "--json")
    assert listed.returncode == 0, describe(listed)
    assert [(entry["backup_id"], entry["status"]) for entry in json.loads(listed.stdout)["backups"]] == \
        [(kept, "complete")]
    leftovers = context.repository.abandoned_uploads(0)
    assert len(leftovers) == 1 and ".tmp-big.dump" in leftovers[0]  # removed by prune after the grace period
    # The morning check names the run: its log stops without a closing line and its process is gone.
    runs = pgsafe(config, "check", "--only", "runs", "--json")
    assert runs.returncode == 1, describe(runs)
    problems = json.loads(runs.stdout)["problem_runs"]
    assert [(run["command"], run["outcome"]) for run in problems] == [("backup", "killed")], problems
    assert_still_verifies(context, kept)
    # A killed process records nothing: the last success does not move, so the age alert fires.
    assert backup_metrics(settings) == before

    again = run_logical_backup(context_for(settings), ["big"])  # the lock died with the process
    assert again["row_counts"]["big"] == big_database
    assert complete_ids(context) == [kept, again["backup_id"]]
    after = backup_metrics(settings)
    assert after["success"] == 1.0 and after["last_success"] > before["last_success"]


def test_restore_killed_mid_restore(tmp_path, pg_cluster, big_database, key_file):
    settings = base_settings(tmp_path, pg_cluster, {"type": "filesystem", "path": str(tmp_path / "repo"),
                                                    "create": True}, {"key_files": [{"path": key_file}]})
    config = write_config(tmp_path / "pgsafe.yml", settings)
    run_logical_backup(context_for(settings), ["big"])
    # The database the restore is meant to replace, with content of its own.
    pg_cluster.psql("DROP DATABASE IF EXISTS big_target")
    pg_cluster.psql("CREATE DATABASE big_target")
    pg_cluster.psql("CREATE TABLE still_here AS SELECT g AS id FROM generate_series(1, 123) g", "big_target")
    staging = "big\\_target\\_pgsafe\\_%"

    process = start_pgsafe(config, "restore", "-d", "big", "-t", "big_target", "--force",
                           log_path=str(tmp_path / "restore.log"))
    try:
        wait_for(lambda: pg_cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '%s' AND "
                                         "query LIKE 'COPY %%' AND state = 'active'" % staging) != "0",
                 60, "pg_restore to be loading the staging database")
    finally:
        assert sigkill(process) == -9
    wait_for(lambda: pg_cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '%s'"
                                     % staging) == "0", 30, "the orphaned pg_restore to end")

    # The target was never touched: no half-renamed database, the old content intact.
    assert pg_cluster.psql("SELECT count(*) FROM still_here", "big_target") == "123"
    assert len(databases(pg_cluster, staging)) == 1  # the killed run's staging copy, never renamed
    assert restore_metric(settings) is None  # a killed process records nothing

    stale = databases(pg_cluster, staging)
    again = run_logical_restore(context_for(settings), "latest", "big", "big_target", force=True)
    assert again["row_counts"] == big_database and again["row_counts_match"] is True
    assert pg_cluster.psql("SELECT count(*) FROM filler", "big_target") == "400000"
    # The next run dropped the dead run's staging copy (it holds the lock, so nobody else uses it).
    assert again["stale_staging_dropped"] == stale and databases(pg_cluster, staging) == []
    assert restore_metric(settings) == 1.0
    pg_cluster.psql("DROP DATABASE big_target")


def restore_metric(settings: dict):
    return metric(settings, "restore", "restore_success", type="logical")
