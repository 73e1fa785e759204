# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad input is refused up front, with a message that names the option, the problem and the fix.

Modules run in-process through ``run_module`` (Ansible's own argument validation first,
then the engine's), the CLI as a subprocess. Every case checks the exit status or
``failed``, that the message names the option and says what is accepted, and that nothing
was done: no repository written, no database touched. Restores that would overwrite an
existing database or a data directory (a running server's, or any non-empty one) are
refused without ``force`` and leave the target exactly as it was.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess

import pytest
from test_cli import describe, pgsafe, write_config
from test_modules import files_under, ok, row_counts, run_module
from test_wal import ArchivingCluster

from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import generate_key_file

KMS_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid baseline: a filesystem repository that exists, a key, a state directory."""
    root = tmp_path_factory.mktemp("bad-input")
    key = str(root / "keys" / "backup.key")
    generate_key_file(key)
    repo = root / "repo"
    repo.mkdir(mode=0o700)
    return {"root": root, "key": key, "repo": str(repo), "state": str(root / "state")}


POSTGRES_MODULES = ("pg_backup", "backup_verify", "backup_restore")


def module_args(base: dict, name: str, **changes) -> dict:
    args = {"state_dir": base["state"], "repository": {"type": "filesystem", "path": base["repo"]},
            "encryption": {"key_files": [{"path": base["key"]}]}}
    if name in POSTGRES_MODULES:
        # Nothing listens on port 1: a case the validation missed fails on the connection instead.
        args.update({"login_host": "127.0.0.1", "port": 1, "login_user": "postgres"})
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(args.get(key), dict):
            args[key] = dict(args[key], **value)
        else:
            args[key] = value
    return args


S3 = {"type": "s3", "bucket": "pgsafe-bad-input", "path": None}

# (module, changes to the baseline arguments, words the message must contain)
MODULE_CASES = [
    # retention specs
    ("retention_prune", {"policy": {"keep_daily": -1}}, ["retention.keep_daily", "negative", "0 or more"]),
    ("retention_prune", {"policy": {"keep_daily": 7, "keep_forever": 1}}, ["keep_forever", "Supported parameters",
                                                                           "keep_daily"]),
    ("retention_prune", {"policy": {"keep_daily": 7, "max_age": "3 parsecs"}},
     ["retention.max_age", "'3 parsecs' is not a duration", "30d"]),
    ("retention_prune", {"policy": {"keep_daily": 7}, "type": "weekly"}, ["type", "not a backup type",
                                                                          "logical, full, incremental"]),
    # backup types
    ("pg_backup", {"type": "differential"}, ["type", "must be one of", "logical"]),
    ("backup_info", {"type": "snapshot"}, ["type", "'snapshot' is not a backup type", "logical, full"]),
    ("backup_info", {"max_age_days": -2}, ["max_age_days", "out of range", "positive number of days"]),
    ("backup_verify", {"types": ["logical", "nightly"]}, ["types", "'nightly' is not a backup type", "logical"]),
    ("backup_verify", {"max_age_hours": 0}, ["max_age_hours", "out of range", "positive number of hours"]),
    ("backup_verify", {"level": "thorough"}, ["level", "must be one of", "presence", "integrity", "decrypt"]),
    ("backup_restore", {"jobs": 0, "database": "app", "target_database": "app_copy"},
     ["jobs", "out of range", "1", "64"]),
    # endpoints
    ("pg_backup", {"repository": dict(S3, endpoint_url="not a url")},
     ["repository.endpoint_url", "http or https", "http(s)://host[:port]"]),
    ("pg_backup", {"repository": dict(S3, endpoint_url="http://minio.local:9000/bucket")},
     ["repository.endpoint_url", "has a path", "repository.bucket"]),
    ("pg_backup", {"encryption": {"kms_key_ids": [KMS_ARN], "kms_endpoint_url": "kms.local:4566"}},
     ["encryption.kms_endpoint_url", "not a URL", "http(s)://host[:port]"]),
    ("s3_backup_sync", {"remote": dict(S3, endpoint_url="ftp://example.com")},
     ["remote.endpoint_url", "http or https", "http(s)://host[:port]"]),
    ("pg_backup", {"metrics": {"pushgateway_url": "push gateway"}},
     ["metrics.pushgateway_url", "not an http(s) URL", "http://pushgateway.example.com:9091"]),
    # key ids
    ("pg_backup", {"encryption": {"kms_key_ids": ["my-backup-key"]}},
     ["encryption.kms_key_ids[0]", "'my-backup-key' is not a KMS key ARN, alias or key id", "alias/NAME",
      "arn:aws:kms:REGION:ACCOUNT:key/KEY-ID"]),
    ("kms_envelope", {"src": "/etc/hostname", "dest": "/tmp/never-written.enc",
                      "encryption": {"kms_key_ids": [KMS_ARN, "arn:aws:s3:::bucket/key"]}},
     ["encryption.kms_key_ids[1]", "not a KMS key ARN", "alias/NAME"]),
    ("pg_backup", {"repository": dict(S3, sse="aws:kms", sse_kms_key_id="default key")},
     ["repository.sse_kms_key_id", "not a KMS key ARN", "alias/NAME"]),
    # paths
    ("pg_backup", {"repository": {"type": "filesystem", "path": "backups/pgsafe"}},
     ["repository.path", "relative path", "absolute path"]),
    ("pg_backup", {"repository": {"type": "filesystem", "path": "/nonexistent/pgsafe-repo"}},
     ["repository.path", "does not exist", "repository.create: true"]),
    ("pg_backup", {"encryption": {"key_files": [{"path": "keys/backup.key"}]}},
     ["encryption.key_files[0].path", "relative path", "absolute path"]),
    ("pg_backup", {"state_dir": "var/lib/pgsafe"}, ["state_dir", "not an absolute path", "/var/lib/pgsafe"]),
    ("pg_backup", {"repository": dict(S3, ca_bundle="/nonexistent/ca.pem")},
     ["repository.ca_bundle", "does not exist", "existing file"]),
    ("pg_backup", {"metrics": {"textfile_dir": "metrics"}}, ["metrics.textfile_dir", "not an absolute path"]),
    # compression
    ("pg_backup", {"compression": {"level": 0}}, ["compression.level", "out of range", "1 (fastest) to 22"]),
    ("pg_backup", {"compression": {"level": 23}}, ["compression.level", "out of range", "1 (fastest) to 22"]),
    ("pg_backup", {"compression": {"threads": -1}}, ["compression.threads", "negative"]),
    ("pg_backup", {"compression": {"algorithm": "gzip"}}, ["algorithm", "must be one of", "zstd", "none"]),
    # regions, object lock
    ("pg_backup", {"repository": dict(S3, region="eu west 1")},
     ["repository.region", "not a region name", "eu-west-1"]),
    ("pg_backup", {"repository": dict(S3, object_lock_mode="COMPLIANCE")},
     ["repository.object_lock_days", "not set", "days"]),
]


@pytest.mark.parametrize("name,changes,words", MODULE_CASES,
                         ids=["%s-%s" % (case[0], "-".join(sorted(case[1])).replace("_", "")) + str(index)
                              for index, case in enumerate(MODULE_CASES)])
def test_module_refuses_bad_input_naming_the_option(base, name, changes, words):
    before = files_under(base["repo"])
    result = run_module(name, module_args(base, name, **changes))
    assert result.get("failed") is True, result["_stdout"]
    message = result["msg"]
    for word in words:
        assert word in message, "%r not in %r" % (word, message)
    if "error" in result:  # the engine's refusals: a configuration error, never a crash or a connection error
        expected = "repository" if "repository.create: true" in words else "config"  # missing repository: exit 3
        assert result["error"]["category"] == expected, result["error"]
        assert result["error"]["fix"], result["error"]
    assert "Traceback" not in result["_stdout"]
    assert files_under(base["repo"]) == before  # refused before anything was written
    assert not os.path.exists("/tmp/never-written.enc")


# --- the CLI -----------------------------------------------------------------------------

def cli_settings(base: dict, **changes) -> dict:
    settings = {"cluster": "main", "state_dir": base["state"],
                "repository": {"type": "filesystem", "path": base["repo"]},
                "encryption": {"key_files": [{"path": base["key"]}]},
                "postgres": {"host": "127.0.0.1", "port": 1, "user": "postgres"}}
    settings.update(changes)
    return settings


CONFIG_CASES = [
    ({"retention": {"keep_daily": -1}}, ["list"], ["retention.keep_daily", "negative"]),
    ({"retention": {"keep_daily": 7, "keep_forever": True}}, ["prune", "--dry-run"],
     ["retention.keep_forever", "unknown retention option", "keep_daily, keep_weekly"]),
    ({"retention": {"keep_daily": 7, "max_age": "3 parsecs"}}, ["list"], ["retention.max_age", "30d"]),
    ({"compression": {"level": 99}}, ["backup", "logical"], ["compression.level", "out of range", "1 (fastest)"]),
    ({"repository": {"type": "s3", "bucket": "b", "endpoint_url": "localhost 9000"}}, ["list"],
     ["repository.endpoint_url", "http(s)://host[:port]"]),
    ({"encryption": {"kms_key_ids": ["backup-key"]}}, ["backup", "logical"],
     ["encryption.kms_key_ids[0]", "not a KMS key ARN", "alias/NAME"]),
    ({"copies": [{"name": "cloud", "type": "s3", "bucket": "b", "sse": "aws:kms", "sse_kms_key_id": "cloud key"}]},
     ["sync", "--dry-run"], ["copies[0].sse_kms_key_id", "not a KMS key ARN"]),
    ({"repository": {"type": "filesystem", "path": "repo"}}, ["list"], ["repository.path", "relative path"]),
    ({"repository": {"type": "filesystem", "path": "/nonexistent/pgsafe"}}, ["list"],
     ["repository.path", "does not exist", "repository.create: true"]),
    ({"repository": {"type": "filesystem", "path": "/srv/pgsafe", "buckett": "x"}}, ["list"],
     ["unknown option(s) buckett", "repository", "bucket"]),
    ({"wal": {"parallel": 0}}, ["list"], ["wal.parallel", "positive number"]),
    ({"postgres": {"host": "127.0.0.1", "port": 99999}}, ["backup", "logical"], ["postgres.port", "1-65535"]),
    ({"metrics": {"textfile_dir": "/nonexistent/textfile"}}, ["list"], ["metrics.textfile_dir", "does not exist"]),
    ({"bogus": 1}, ["list"], ["unknown option(s) bogus", "repository", "retention"]),
]


@pytest.mark.parametrize("changes,args,words", CONFIG_CASES, ids=[
    "-".join(sorted(case[0])) + str(index) for index, case in enumerate(CONFIG_CASES)])
def test_cli_refuses_a_bad_settings_file_with_exit_2(base, tmp_path, changes, args, words):
    config = write_config(tmp_path / "pgsafe.yml", cli_settings(base, **changes))
    before = files_under(base["repo"])
    result = pgsafe(*args, config=config)
    # 2: a configuration error; 3: the repository (its directory does not exist).
    assert result.returncode == (3 if "repository.create: true" in words else 2), describe(result)
    for word in words:
        assert word in result.stderr, "%r not in:\n%s" % (word, describe(result))
    assert "Traceback" not in result.stderr and "Fix:" in result.stderr
    assert files_under(base["repo"]) == before


ARG_CASES = [
    (["backup", "differential"], ["argument type", "invalid choice", "'logical'", "'full'"]),
    (["restore", "--jobs", "0"], ["--jobs", "out of range", "1 to 64"]),
    (["restore-physical", "--pgdata", "/srv/restore", "--port", "70000"], ["--port", "out of range", "1 to 65535"]),
    (["restore-physical", "--pgdata", "/srv/restore", "--port", "5999", "--target-time", "x", "--target-lsn", "0/1"],
     ["--target-lsn", "not allowed with argument --target-time"]),
    (["list", "logical", "-5"], ["days", "not positive"]),
    (["verify", "--max-age-hours", "zero"], ["--max-age-hours", "not a number"]),
    (["sync", "--mode", "mirror"], ["--mode", "invalid choice", "'push'"]),
    (["wal-shipper", "--parallel", "0"], ["--parallel", "out of range"]),
]


@pytest.mark.parametrize("args,words", ARG_CASES, ids=[" ".join(case[0][:2]) for case in ARG_CASES])
def test_cli_refuses_bad_arguments_with_exit_2(base, tmp_path, args, words):
    config = write_config(tmp_path / "pgsafe.yml", cli_settings(base))
    result = pgsafe(*args, config=config)
    assert result.returncode == 2, describe(result)
    for word in words:
        assert word in result.stderr, "%r not in:\n%s" % (word, describe(result))


ENGINE_ARG_CASES = [
    (["list", "snapshots"], ["type", "'snapshots' is not a backup type", "logical, full"]),
    (["prune", "--dry-run", "--type", "hourly"], ["type", "not a backup type"]),
    (["verify", "--type", "nightly"], ["types", "not a backup type"]),
    (["verify", "--level", "paranoid"], ["level", "paranoid", "presence, integrity, decrypt"]),
]


@pytest.mark.parametrize("args,words", ENGINE_ARG_CASES, ids=[" ".join(case[0][:2]) for case in ENGINE_ARG_CASES])
def test_cli_refuses_bad_values_checked_by_the_engine(base, tmp_path, args, words):
    config = write_config(tmp_path / "pgsafe.yml", cli_settings(base))
    result = pgsafe(*args, config=config)
    assert result.returncode == 2, describe(result)
    for word in words:
        assert word in result.stderr, "%r not in:\n%s" % (word, describe(result))


@pytest.mark.parametrize("secret_section", [
    {"postgres": {"host": "127.0.0.1", "password": "hunter2"}},
    {"copies": [{"name": "cloud", "type": "s3", "bucket": "b", "secret_key": "s3cr3t", "access_key": "AKID"}]},
    {"repository": {"type": "s3", "bucket": "b", "session_token": "token"}},
], ids=["postgres-password", "copy-secret-key", "session-token"])
def test_cli_refuses_a_world_readable_settings_file_that_holds_a_secret(base, tmp_path, secret_section):
    config = write_config(tmp_path / "pgsafe.yml", cli_settings(base, **secret_section), mode=0o644)
    result = pgsafe("list", config=config)
    assert result.returncode == 2, describe(result)
    assert "readable by others" in result.stderr and "chmod 640" in result.stderr
    for secret in ("hunter2", "s3cr3t", "token"):
        assert secret not in result.stderr + result.stdout


# --- restores that would overwrite ------------------------------------------------------------

def test_logical_restore_over_an_existing_database_is_refused_without_force(base, tmp_path, pg_cluster):
    repo = str(tmp_path / "repo")
    args = {"state_dir": str(tmp_path / "state"), "repository": {"type": "filesystem", "path": repo, "create": True},
            "encryption": {"key_files": [{"path": base["key"]}]}, "login_host": pg_cluster.host,
            "port": pg_cluster.port, "login_user": "postgres", "pg_bin_dir": pg_cluster.bin_dir}
    backup_id = ok(run_module("pg_backup", dict(args, databases=["app"])))["backup_id"]
    pg_cluster.psql("INSERT INTO services (name, price) VALUES ('added after the backup', 1)", "app")
    counts = row_counts(pg_cluster, "app", pg_cluster.sample_counts)
    databases = pg_cluster.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")

    refused = run_module("backup_restore", dict(args, backup_id=backup_id, database="app"))
    assert refused["failed"] and refused["error"]["category"] == "restore", refused["_stdout"]
    assert "database app already exists" in refused["msg"] and "force" in refused["msg"]
    assert refused["error"]["where"] == "target_database"

    config = write_config(tmp_path / "pgsafe.yml", {
        "state_dir": args["state_dir"], "repository": {"type": "filesystem", "path": repo},
        "encryption": {"key_files": [{"path": base["key"]}]},
        "postgres": {"host": pg_cluster.host, "port": pg_cluster.port, "user": "postgres",
                     "bin_dir": pg_cluster.bin_dir}})
    cli = pgsafe("restore", "--backup-id", backup_id, "-d", "app", config=config)
    assert cli.returncode == 9, describe(cli)
    assert "database app already exists" in cli.stderr and "--force" in cli.stderr
    # Untouched: same rows (including the one added after the backup), no staging database left.
    assert row_counts(pg_cluster, "app", pg_cluster.sample_counts) == counts
    assert pg_cluster.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database") == databases
    pg_cluster.psql("DELETE FROM services WHERE name = 'added after the backup'", "app")


@pytest.fixture(scope="module")
def physical_source():
    """An archiving cluster (running) with one physical full backup."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import run_physical_backup

    cluster = ArchivingCluster(cluster_name="badin").init().start()
    cluster.start_shipper()
    cluster.psql("CREATE TABLE keep (id int PRIMARY KEY)")
    cluster.psql("INSERT INTO keep SELECT generate_series(1, 100)")
    cluster.backup = run_physical_backup(cluster.context(), "full")
    yield cluster
    cluster.destroy()


def run_cli(cluster, *args: str) -> subprocess.CompletedProcess:
    """The CLI as a new process, as root (who owns the repository's backups in ArchivingCluster)."""
    return subprocess.run([cluster.wrapper] + list(args), capture_output=True, text=True, timeout=120, check=False)


def _tree(path: str) -> dict:
    found = {}
    for folder, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(folder, name)
            if not os.path.islink(full):
                info = os.stat(full)
                found[os.path.relpath(full, path)] = (info.st_size, info.st_mtime_ns)
    return found


def test_physical_restore_refuses_a_running_clusters_data_directory(physical_source):
    cluster = physical_source
    assert os.path.exists(os.path.join(cluster.datadir, "postmaster.pid"))
    before = cluster.psql("SELECT pg_postmaster_start_time()::text")
    result = run_cli(cluster, "restore-physical", "--pgdata", cluster.datadir, "--port", "5999",
                     "--target-immediate")
    assert result.returncode == 9, describe(result)
    assert "is running in %s" % cluster.datadir in result.stderr and "force" in result.stderr, result.stderr
    # The server was not stopped, restarted or changed.
    assert cluster.psql("SELECT pg_postmaster_start_time()::text") == before
    assert cluster.psql("SELECT count(*) FROM keep") == "100"


def test_physical_restore_refuses_a_non_empty_directory(physical_source, tmp_path):
    cluster = physical_source
    target = os.path.join(cluster.root, "occupied")
    os.makedirs(os.path.join(target, "base"))
    with open(os.path.join(target, "PG_VERSION"), "w", encoding="utf-8") as handle:
        handle.write("15\n")
    with open(os.path.join(target, "notes.txt"), "w", encoding="utf-8") as handle:
        handle.write("someone's data\n")
    shutil.chown(target, "postgres")
    before = _tree(target)
    result = run_cli(cluster, "restore-physical", "--pgdata", target, "--port", "5998", "--target-immediate")
    assert result.returncode == 9, describe(result)
    assert "exists and is not empty" in result.stderr and "force" in result.stderr, result.stderr
    assert _tree(target) == before


def test_physical_restore_target_times_are_checked_against_the_window(physical_source):
    cluster = physical_source
    target = os.path.join(cluster.root, "never-created")
    stop = datetime.datetime.strptime(cluster.backup["wal"]["stop_time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    cases = [
        ("half past five", 2, ["target_time", "'half past five' is not a timestamp", "ISO 8601"]),
        ((datetime.datetime.utcnow() + datetime.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ"), 9,
         ["target_time", "is in the future", "restorable window: from %s" % cluster.backup["wal"]["stop_time"]]),
        ((stop - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), 9,
         ["earlier than the oldest usable backup", "restorable window: from %s" % cluster.backup["wal"]["stop_time"]]),
    ]
    for value, code, words in cases:
        result = run_cli(cluster, "restore-physical", "--pgdata", target, "--port", "5997", "--target-time", value)
        assert result.returncode == code, describe(result)
        for word in words:
            assert word in result.stderr, "%r not in:\n%s" % (word, describe(result))
        assert not os.path.exists(target)
