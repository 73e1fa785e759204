# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``pgsafe`` host command, run as a subprocess the way timers and operators run it.

Each test writes its own YAML settings file (mode 0600) and checks what a person or a
script sees: the exit code (one meaning each), the text on stdout/stderr, the JSON,
and the real state afterwards (row counts read back with psql, files on disk).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess

import boto3
import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.locking import RunLock
from tests.support.cli import ROOT, cli_argv, cli_env, describe, write_config
from tests.support.pgcluster import free_port

CLUSTER = "main"
DUMP_OBJECT = "databases/app.dump.zst.enc"


def pgsafe(*args: str, config: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``pgsafe [--config FILE] ARGS`` in a new process."""
    return subprocess.run(cli_argv(*args, config=config), capture_output=True, text=True, env=cli_env(),
                          timeout=timeout, cwd=ROOT, check=False)


def psql_counts(cluster, dbname: str) -> dict:
    tables = cluster.psql("SELECT table_schema || '.' || table_name FROM information_schema.tables WHERE "
                          "table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')",
                          dbname).splitlines()
    union = " UNION ALL ".join("SELECT '%s', count(*) FROM %s" % (table, table) for table in tables)
    return {table: int(count) for table, count in
            (line.split("|") for line in cluster.psql(union, dbname).splitlines())}


def as_json(result: subprocess.CompletedProcess):
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def fs_settings(tmp_path, pg_cluster, key_file) -> dict:
    """Filesystem repository, local key file; a postgres password makes the file secret-bearing
    (the test cluster trusts 127.0.0.1, so the password itself is not checked)."""
    return {"cluster": CLUSTER, "state_dir": str(tmp_path / "state"),
            "postgres": dict(pg_cluster.conn_spec(), password="not-checked-by-trust"),
            "repository": {"type": "filesystem", "path": str(tmp_path / "repo"), "create": True},
            "encryption": {"key_files": [{"path": key_file}]}}


@pytest.fixture
def s3_kms_settings(tmp_path, pg_cluster, moto_endpoint, s3_bucket, kms_key_arn) -> dict:
    """S3 on the moto server (path style) and a KMS key there; credentials in the file."""
    return {"cluster": CLUSTER, "state_dir": str(tmp_path / "state"), "postgres": pg_cluster.conn_spec(),
            "aws": {"access_key": "testing", "secret_key": "testing-secret", "region": "us-east-1"},
            "repository": {"type": "s3", "bucket": s3_bucket, "endpoint_url": moto_endpoint, "path_style": True},
            "encryption": {"kms_key_ids": [kms_key_arn], "kms_endpoint_url": moto_endpoint}}


def flip_stored_byte(settings: dict, key: str) -> None:
    repository = settings["repository"]
    if repository["type"] == "filesystem":
        path = os.path.join(repository["path"], key)
        with open(path, "r+b") as handle:
            data = bytearray(handle.read())
            data[len(data) // 2] ^= 0x01
            handle.seek(0)
            handle.write(data)
        return
    s3 = boto3.client("s3", endpoint_url=repository["endpoint_url"], region_name="us-east-1")
    data = bytearray(s3.get_object(Bucket=repository["bucket"], Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=repository["bucket"], Key=key, Body=bytes(data))


# ---------------------------------------------------------------------------- the operator's day


@pytest.mark.parametrize("kind", ["filesystem-keyfile", "s3-kms"])
def test_backup_list_verify_restore(request, tmp_path, pg_cluster, kind):
    settings = request.getfixturevalue("fs_settings" if kind == "filesystem-keyfile" else "s3_kms_settings")
    config = write_config(tmp_path / "pgsafe.yml", settings)
    source_counts = psql_counts(pg_cluster, "app")

    backup = pgsafe("backup", "logical", "-d", "app", "--json", config=config)
    assert backup.returncode == 0, describe(backup)
    summary = as_json(backup)
    backup_id = summary["backup_id"]
    assert summary["databases"] == ["app"] and summary["row_counts"]["app"] == source_counts

    listing = pgsafe("list", config=config)
    assert listing.returncode == 0, describe(listing)
    row = [line for line in listing.stdout.splitlines() if line.startswith(backup_id)]
    assert len(row) == 1 and " logical " in row[0] and " complete " in row[0] and row[0].endswith("app")
    assert "1 backup(s)" in listing.stdout

    listed = pgsafe("list", "logical", "1", "--json", config=config)
    assert listed.returncode == 0, describe(listed)
    entries = as_json(listed)["backups"]
    assert [(entry["backup_id"], entry["status"], entry["databases"]) for entry in entries] == \
        [(backup_id, "complete", ["app"])]
    assert as_json(listed)["storage"]["used_bytes"] >= entries[0]["size_stored_bytes"] > 0
    other_type = pgsafe("list", "full", "--json", config=config)
    assert other_type.returncode == 0 and as_json(other_type)["backups"] == []

    verified = pgsafe("verify", config=config)
    assert verified.returncode == 0, describe(verified)
    assert verified.stdout.startswith("OK: 1 backup(s) of cluster main verified at level decrypt")

    target = "cli_%s" % kind.replace("-", "_")
    try:
        restored = pgsafe("restore", "-d", "app", "-t", target, "--json", config=config)
        assert restored.returncode == 0, describe(restored)
        assert as_json(restored)["row_counts_match"] is True and as_json(restored)["backup_id"] == backup_id
        assert psql_counts(pg_cluster, target) == source_counts

        again = pgsafe("restore", "-d", "app", "-t", target, config=config)
        assert again.returncode == 9, describe(again)
        assert "already exists" in again.stderr and "--force" in again.stderr

        pg_cluster.psql("DELETE FROM bookings WHERE id > 10", target)
        forced = pgsafe("restore", "-d", "app", "-t", target, "--force", config=config)
        assert forced.returncode == 0, describe(forced)
        assert "row counts match the backup" in forced.stdout
        assert psql_counts(pg_cluster, target) == source_counts
    finally:
        pg_cluster.psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % target)

    # One flipped byte: both levels fail with exit 7 and name backup, object and check.
    flip_stored_byte(settings, mf.object_key(CLUSTER, backup_id, DUMP_OBJECT))
    integrity = pgsafe("verify", "--level", "integrity", config=config)
    assert integrity.returncode == 7, describe(integrity)
    assert "FAILED: 1 problem(s)" in integrity.stdout
    assert "%s %s [sha256]" % (backup_id, DUMP_OBJECT) in integrity.stdout
    decrypt = pgsafe("verify", "--level", "decrypt", "--json", config=config)
    assert decrypt.returncode == 7, describe(decrypt)
    assert [(f["backup_id"], f["object"], f["check"]) for f in as_json(decrypt)["failures"]] == \
        [(backup_id, DUMP_OBJECT, "decrypt")]
    relisted = pgsafe("list", config=config)
    assert "FAILED decrypt" in relisted.stdout


def test_key_generate(tmp_path):
    path = str(tmp_path / "keys" / "escrow.key")
    generated = pgsafe("key", "generate", path)
    assert generated.returncode == 0, describe(generated)
    assert path in generated.stdout and "keep a copy" in generated.stdout
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as handle:
        content = handle.read()
    assert len(base64.b64decode(content.strip(), validate=True)) == 32
    # Never overwritten: every object wrapped with it would be lost.
    again = pgsafe("key", "generate", path)
    assert again.returncode == 4, describe(again)
    assert "refusing to overwrite" in again.stderr
    with open(path, "rb") as handle:
        assert handle.read() == content


# ---------------------------------------------------------------------------- configuration mistakes


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "nowhere.yml")
    result = pgsafe("list", config=missing)
    assert result.returncode == 2, describe(result)
    assert "configuration file %s does not exist" % missing in result.stderr and "--config" in result.stderr
    assert "Traceback" not in result.stderr


def test_world_readable_config_with_a_secret_is_refused(tmp_path, fs_settings):
    config = write_config(tmp_path / "pgsafe.yml", fs_settings, mode=0o644)
    result = pgsafe("list", config=config)
    assert result.returncode == 2, describe(result)
    assert "holds secrets and is readable by others" in result.stderr
    assert "chmod 640 %s" % config in result.stderr
    assert "not-checked-by-trust" not in result.stderr + result.stdout
    # Without a secret in it, a readable file is fine.
    no_secret = dict(fs_settings, postgres={k: v for k, v in fs_settings["postgres"].items() if k != "password"})
    config = write_config(tmp_path / "pgsafe.yml", no_secret, mode=0o644)
    assert pgsafe("list", config=config).returncode == 0


def test_invalid_config_content(tmp_path, fs_settings):
    broken = tmp_path / "broken.yml"
    broken.write_text("cluster: [unclosed\n")
    result = pgsafe("list", config=str(broken))
    assert result.returncode == 2 and "not valid YAML" in result.stderr, describe(result)
    config = write_config(tmp_path / "pgsafe.yml", dict(fs_settings, reposiotry={"path": "/x"}))
    result = pgsafe("list", config=config)
    assert result.returncode == 2 and "reposiotry" in result.stderr, describe(result)


# ---------------------------------------------------------------------------- failures and their exit codes


def test_second_run_exits_6_naming_the_holder(tmp_path, fs_settings):
    config = write_config(tmp_path / "pgsafe.yml", fs_settings)
    lock = RunLock(fs_settings["state_dir"], CLUSTER, "backup-logical").acquire()
    try:
        result = pgsafe("backup", "logical", "-d", "app", config=config)
    finally:
        lock.release()
    assert result.returncode == 6, describe(result)
    assert "another pgsafe backup-logical is running for cluster main: pid %d " % os.getpid() in result.stderr
    listed = as_json(pgsafe("list", "--json", config=config))
    assert listed["backups"] == []


def test_killed_pg_dump_exits_5(tmp_path, pg_cluster, fs_settings):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "pg_dump"
    wrapper.write_text('#!/bin/bash\n"%s" "$@" | head -c 100000\nkill -9 $$\n'
                       % os.path.join(pg_cluster.bin_dir, "pg_dump"))
    wrapper.chmod(0o755)
    settings = dict(fs_settings, postgres=dict(fs_settings["postgres"], bin_dir=str(bin_dir)))
    config = write_config(tmp_path / "pgsafe.yml", settings)
    result = pgsafe("backup", "logical", "-d", "app", config=config)
    assert result.returncode == 5, describe(result)
    assert "pg_dump of app failed (killed by signal 9)" in result.stderr
    listed = as_json(pgsafe("list", "--json", config=config))
    assert [entry for entry in listed["backups"] if entry["status"] == "complete"] == []
    verified = pgsafe("verify", config=config)
    assert verified.returncode == 7 and "no complete logical backup" in verified.stdout, describe(verified)


def test_unreachable_s3_exits_3(tmp_path, pg_cluster, s3_bucket, key_file):
    closed = "http://127.0.0.1:%d" % free_port()
    settings = {"cluster": CLUSTER, "state_dir": str(tmp_path / "state"), "postgres": pg_cluster.conn_spec(),
                "repository": {"type": "s3", "bucket": s3_bucket, "endpoint_url": closed, "path_style": True,
                               "connect_timeout": 1, "read_timeout": 1, "max_attempts": 1},
                "encryption": {"key_files": [{"path": key_file}]}}
    config = write_config(tmp_path / "pgsafe.yml", settings)
    result = pgsafe("backup", "logical", "-d", "app", config=config, timeout=60)
    assert result.returncode == 3, describe(result)
    assert "could not reach the S3 repository" in result.stderr and closed in result.stderr


def test_missing_key_and_unknown_backup_exit_codes(tmp_path, fs_settings):
    config = write_config(tmp_path / "pgsafe.yml", fs_settings)
    backup = pgsafe("backup", "logical", "-d", "app", "--json", config=config)
    assert backup.returncode == 0, describe(backup)

    unknown = pgsafe("restore", "--backup-id", "20200101T000000Z-logical", "-t", "never", config=config)
    assert unknown.returncode == 8, describe(unknown)
    assert "20200101T000000Z-logical has no manifest" in unknown.stderr and "pgsafe list" in unknown.stderr

    missing_key = str(tmp_path / "keys" / "lost.key")
    config = write_config(tmp_path / "pgsafe.yml", dict(fs_settings, encryption={"key_files": [missing_key]}))
    result = pgsafe("verify", config=config)
    assert result.returncode == 4, describe(result)
    assert "the key file does not exist [%s]" % missing_key in result.stderr
    assert "pgsafe key generate %s" % missing_key in result.stderr
    # The backup is untouched: with the right key it still verifies.
    config = write_config(tmp_path / "pgsafe.yml", fs_settings)
    assert pgsafe("verify", config=config).returncode == 0
