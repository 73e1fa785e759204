# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pgsafe check`` and the backup_check module on real parts, and the per-run log files.

Healthy setups pass (a real cluster, a filesystem repository and a key file; an S3 copy and a
KMS key on the moto server). Broken ones name a cause and a fix: archive_command set to
``false`` on a throwaway cluster until pg_stat_archiver counts failures, an S3 endpoint on a
closed port, a repository the backup user cannot write (run as the postgres user), a key file
others can read. Every operation writes a 0600 run log that ends with "completed in" and
holds no secret, even with --debug.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid

import boto3
import pytest

from ansible.module_utils.testing import patch_module_args

from tests.support.cli import COLLECTIONS, PYTHON, cli_argv, cli_env, describe, write_config
from tests.support.pgcluster import free_port

# The postgres user cannot execute the venv's interpreter (it lives under /root): the system
# Python of the same minor version runs on the venv's packages, as archive_command does.
SYSTEM_PYTHON = "/usr/bin/python3.%d" % sys.version_info.minor


def pgsafe(*args: str, config: str, user: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = cli_env()
    argv = cli_argv(*args, config=config)
    if user:
        env["PYTHONPATH"] = "%s:%s" % (COLLECTIONS, sysconfig.get_paths()["purelib"])
        argv = ["runuser", "-u", user, "--", SYSTEM_PYTHON] + argv[1:]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, cwd="/", check=False)


def report_of(result: subprocess.CompletedProcess) -> dict:
    assert result.stdout.strip(), describe(result)
    return json.loads(result.stdout)


def by_name(report: dict) -> dict:
    return {check["name"]: check for check in report["checks"]}


def run_logs(directory: str) -> list[str]:
    return sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".log"))


@pytest.fixture
def fs_settings(tmp_path, pg_cluster, key_file) -> dict:
    return {"cluster": "main", "state_dir": str(tmp_path / "state"), "postgres": pg_cluster.conn_spec(),
            "repository": {"type": "filesystem", "path": str(tmp_path / "repo"), "create": True},
            "encryption": {"key_files": [{"path": key_file}]}}


# ---------------------------------------------------------------------------- healthy setups


def test_healthy_filesystem_setup_passes_and_leaves_nothing(tmp_path, fs_settings):
    config = write_config(tmp_path / "pgsafe.yml", fs_settings)
    result = pgsafe("check", config=config)
    assert result.returncode == 0, describe(result)
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("all ") and lines[-1].endswith(" checks passed"), result.stdout
    assert all(line.startswith("ok ") for line in lines[:-1]), result.stdout
    assert "cause:" not in result.stdout

    report = report_of(pgsafe("check", "--json", config=config))
    checks = by_name(report)
    assert report["ok"] is True and report["failed"] == [] and report["errors"] == 0
    for name in ("postgres", "postgres_privileges", "postgres_programs", "repository:primary", "clock:primary",
                 "encryption", "permissions"):
        assert checks[name]["ok"] is True and checks[name]["cause"] is None and checks[name]["fix"] is None, name
    assert "PostgreSQL 15" in checks["postgres"]["detail"] and "primary" in checks["postgres"]["detail"]
    assert "superuser" in checks["postgres_privileges"]["detail"]
    assert "wrote, listed, read back and deleted" in checks["repository:primary"]["detail"]
    assert "key file %s" % fs_settings["encryption"]["key_files"][0]["path"] in checks["encryption"]["detail"]
    assert any(name.startswith("free_space:") for name in checks)
    # archive_mode is off and no wal section: logical only, which is fine.
    assert checks["wal_archive_command"]["ok"] and "logical backups only" in checks["wal_archive_command"]["detail"]
    # The probe is gone: the repository holds exactly what it held before (nothing).
    assert os.listdir(fs_settings["repository"]["path"]) == []


def test_healthy_s3_copy_with_kms_and_key_file_passes(tmp_path, fs_settings, moto_endpoint, s3_bucket, kms_key_arn):
    settings = dict(fs_settings)
    settings["aws"] = {"access_key": "testing", "secret_key": "testing-secret", "region": "us-east-1"}
    settings["copies"] = [{"name": "cloud", "type": "s3", "bucket": s3_bucket, "prefix": "prod",
                           "endpoint_url": moto_endpoint, "path_style": True}]
    settings["encryption"] = {"kms_key_ids": [kms_key_arn], "kms_endpoint_url": moto_endpoint,
                              "key_files": fs_settings["encryption"]["key_files"]}
    config = write_config(tmp_path / "pgsafe.yml", settings)
    result = pgsafe("check", "--json", config=config)
    report = report_of(result)
    assert result.returncode == 0 and report["ok"], describe(result)
    checks = by_name(report)
    assert "s3://%s/prod" % s3_bucket in checks["repository:cloud"]["detail"]
    assert "Date header" in checks["clock:cloud"]["detail"]
    assert "each key decrypts on its own" in checks["encryption"]["detail"]
    assert kms_key_arn in checks["encryption"]["detail"]
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0  # probe deleted


# ---------------------------------------------------------------------------- failures: cause and fix


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.2)


def test_failing_archive_command_names_cause_and_fix(tmp_path, fresh_cluster, key_file):
    fresh_cluster.psql("ALTER SYSTEM SET archive_mode = 'on'")
    fresh_cluster.psql("ALTER SYSTEM SET archive_command = 'false'")
    fresh_cluster.stop()
    fresh_cluster.start()
    fresh_cluster.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
    switched = fresh_cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    _wait_for(lambda: int(fresh_cluster.psql("SELECT failed_count FROM pg_stat_archiver")) > 0, 30,
              "pg_stat_archiver to count a failure")
    settings = {"cluster": "main", "state_dir": str(tmp_path / "state"), "postgres": fresh_cluster.conn_spec(),
                "repository": {"type": "filesystem", "path": str(tmp_path / "repo"), "create": True},
                "encryption": {"key_files": [{"path": key_file}]},
                "wal": {"pgdata": fresh_cluster.datadir}}
    config = write_config(tmp_path / "pgsafe.yml", settings)

    result = pgsafe("check", "--json", config=config)
    assert result.returncode == 1, describe(result)
    checks = by_name(report_of(result))
    archiver = checks["wal_archiver"]
    assert archiver["ok"] is False and archiver["severity"] == "error"
    assert "archive_command is failing" in archiver["cause"]
    assert switched in archiver["cause"]  # the segment that failed
    assert "server log" in archiver["fix"] and "'false'" in archiver["fix"]
    command = checks["wal_archive_command"]
    assert command["ok"] is False and "archive_command is 'false'" in command["cause"]
    assert "ALTER SYSTEM SET archive_command = 'pgsafe wal-push %p'" in command["fix"]
    shipper = checks["wal_shipper"] if "wal_shipper" in checks else None
    assert shipper is None  # not pgsafe's archive_command: no shipper expected
    # The rest of the host is fine: the failure is pinned on archiving alone.
    assert checks["repository:primary"]["ok"] and checks["encryption"]["ok"] and checks["postgres"]["ok"]

    text = pgsafe("check", "--only", "wal", config=config)
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    failing = [index for index, line in enumerate(lines) if line.startswith("FAIL wal_archiver:")]
    assert failing, text.stdout
    assert lines[failing[0] + 1].strip().startswith("cause: archive_command is failing")
    assert lines[failing[0] + 2].strip().startswith("fix:")

    # A role without the grants: named, with the GRANTs that fix it (error: physical backups need them).
    from ansible_collections.pgsafe.backup.plugins.module_utils.preflight import run_checks

    fresh_cluster.psql("CREATE ROLE backup_reader LOGIN")
    settings["postgres"] = dict(fresh_cluster.conn_spec(), user="backup_reader")
    privileges = by_name(run_checks(settings, only=["postgres"]))["postgres_privileges"]
    assert privileges["ok"] is False and privileges["severity"] == "error", privileges
    assert "pg_backup_start/pg_backup_stop" in privileges["cause"] and "pg_read_all_data" in privileges["cause"]
    assert "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO backup_reader" \
        in privileges["fix"] and "GRANT pg_read_all_data TO backup_reader" in privileges["fix"]
    # Logical backups only: the missing pg_read_all_data is a warning, and granting it passes.
    logical = dict(settings)
    logical.pop("wal")
    assert by_name(run_checks(logical, only=["postgres"]))["postgres_privileges"]["severity"] == "warning"
    fresh_cluster.psql("GRANT pg_read_all_data TO backup_reader")
    assert by_name(run_checks(logical, only=["postgres"]))["postgres_privileges"]["ok"] is True


@pytest.mark.skipif(os.geteuid() != 0, reason="the archiving cluster runs pgsafe as the postgres user")
def test_healthy_wal_archiving_through_pgsafe_passes():
    """archive_command = pgsafe wal-push, the shipper running, segments archived: the wal checks pass."""
    from tests.support.physical import ArchivingCluster

    cluster = ArchivingCluster(cluster_name="checked").init().start()
    try:
        os.chmod(cluster.repository["path"], 0o700)
        cluster.start_shipper()
        cluster.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
        cluster.psql("SELECT pg_switch_wal()")
        cluster.wait_archived()
        # ArchivingCluster's makedirs leaves the state directory 0755, and Spool.ensure() leaves
        # wal-spool/<cluster> 0755 (os.makedirs applies the mode to the leaf only): the permissions
        # check rightly flags both (see the report); this test is about the WAL checks.
        for path in (cluster.state_dir, os.path.join(cluster.state_dir, "wal-spool"),
                     os.path.join(cluster.state_dir, "wal-spool", "checked")):
            os.chmod(path, 0o700)
        _wait_for(lambda: int(cluster.psql("SELECT archived_count FROM pg_stat_archiver")) > 0, 30,
                  "pg_stat_archiver to count the archived segment")
        result = cluster.pgsafe("check", "--json", check=False)
        report = report_of(result)
        assert result.returncode == 0 and report["ok"], describe(result)
        checks = by_name(report)
        assert "wal-push %p" in checks["wal_archive_command"]["detail"]
        assert checks["wal_shipper"]["ok"] and checks["wal_archiver"]["ok"]
        assert "0 segment(s) waiting" in checks["wal_archiver"]["detail"]
        assert "user postgres" in checks["permissions"]["detail"]
    finally:
        cluster.destroy()


def test_unreachable_s3_repository_names_the_endpoint(tmp_path, pg_cluster, key_file, moto_endpoint):
    closed = "http://127.0.0.1:%d" % free_port()
    settings = {"cluster": "main", "state_dir": str(tmp_path / "state"), "postgres": pg_cluster.conn_spec(),
                "aws": {"access_key": "testing", "secret_key": "testing-secret", "region": "us-east-1"},
                "repository": {"type": "s3", "bucket": "nowhere", "endpoint_url": closed, "path_style": True,
                               "max_attempts": 1, "connect_timeout": 2},
                "encryption": {"key_files": [{"path": key_file}]}}
    config = write_config(tmp_path / "pgsafe.yml", settings)
    started = time.monotonic()
    result = pgsafe("check", "--json", config=config)
    assert time.monotonic() - started < 30
    assert result.returncode == 1, describe(result)
    checks = by_name(report_of(result))
    repository = checks["repository:primary"]
    assert repository["ok"] is False and repository["severity"] == "error"
    assert "could not write the probe object _preflight/" in repository["cause"]
    assert "could not reach the S3 repository" in repository["cause"] and closed in repository["cause"]
    assert "endpoint_url" in repository["fix"]
    assert "clock:primary" not in checks  # nothing answered, so no time was measured
    assert checks["encryption"]["ok"] and checks["postgres"]["ok"]


@pytest.fixture
def postgres_owned_setup(pg_cluster):
    """A setup owned by the postgres user, whose repository belongs to root (mode 0700)."""
    base = tempfile.mkdtemp(prefix="pgsafe-check-")
    os.chmod(base, 0o755)
    entry = pwd.getpwnam("postgres")
    state = os.path.join(base, "state")
    keys = os.path.join(base, "keys")
    repo = os.path.join(base, "repo")
    os.makedirs(state, mode=0o700)
    os.makedirs(repo, mode=0o700)
    from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import generate_key_file

    generate_key_file(os.path.join(keys, "backup.key"))
    settings = {"cluster": "main", "state_dir": state, "postgres": pg_cluster.conn_spec(),
                "repository": {"type": "filesystem", "path": repo},
                "encryption": {"key_files": [{"path": os.path.join(keys, "backup.key")}]}}
    config = write_config(os.path.join(base, "pgsafe.yml"), settings)
    for path in (state, keys, os.path.join(keys, "backup.key"), config):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    yield {"base": base, "repo": repo, "config": config, "state": state}
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON), reason="needs root and %s to run as "
                    "the postgres user" % SYSTEM_PYTHON)
def test_repository_the_backup_user_cannot_write_is_reported(postgres_owned_setup):
    setup = postgres_owned_setup
    result = pgsafe("check", "--json", "--only", "repository", "--only", "permissions", "--only", "encryption",
                    config=setup["config"], user="postgres")
    assert result.returncode == 1, describe(result)
    checks = by_name(report_of(result))
    repository = checks["repository:primary"]
    assert repository["ok"] is False
    assert "permission denied in the filesystem repository at %s" % setup["repo"] in repository["cause"]
    assert "owned and writable by the user that runs pgsafe (uid %d)" % pwd.getpwnam("postgres").pw_uid \
        in repository["fix"]
    permissions = checks["permissions"]
    assert permissions["ok"] is False
    assert "repository primary %s is owned by root, not postgres" % setup["repo"] in permissions["cause"]
    assert "chown postgres %s" % setup["repo"] in permissions["fix"]
    assert checks["encryption"]["ok"]  # the postgres user reads its own key
    # The run log was written by and for the postgres user.
    logs = run_logs(os.path.join(setup["state"], "log"))
    assert len(logs) == 1 and os.stat(logs[0]).st_uid == pwd.getpwnam("postgres").pw_uid
    assert not os.listdir(setup["repo"])


def test_key_file_others_can_read_is_reported(tmp_path, fs_settings):
    key_path = fs_settings["encryption"]["key_files"][0]["path"]
    os.chmod(key_path, 0o644)
    config = write_config(tmp_path / "pgsafe.yml", fs_settings)
    result = pgsafe("check", "--json", config=config)
    assert result.returncode == 1, describe(result)
    report = report_of(result)
    checks = by_name(report)
    permissions = checks["permissions"]
    assert permissions["ok"] is False and permissions["severity"] == "error"
    assert "key file %s has mode 0644 (must be 0600 or 0400)" % key_path in permissions["cause"]
    assert "chmod 600 %s" % key_path in permissions["fix"]
    encryption = checks["encryption"]
    assert encryption["ok"] is False and "group or others can access" in encryption["cause"]
    assert "chmod 600 %s" % key_path in encryption["fix"]
    assert set(report["failed"]) == {"permissions", "encryption"}  # the repository and PostgreSQL are fine


# ---------------------------------------------------------------------------- the module


def run_module(args: dict, check: bool = False) -> dict:
    module = importlib.import_module("ansible_collections.pgsafe.backup.plugins.modules.backup_check")
    stdout = io.StringIO()
    with patch_module_args(dict(args, _ansible_check_mode=check)), contextlib.redirect_stdout(stdout):
        with pytest.raises(SystemExit) as exited:
            module.main()
    result = json.loads(stdout.getvalue())
    assert (exited.value.code != 0) == bool(result.get("failed")), stdout.getvalue()
    return result


def test_module_returns_the_checks_and_fails_only_on_errors(tmp_path, pg_cluster, key_file, moto_endpoint,
                                                            s3_bucket):
    password = "module-secret-%s" % uuid.uuid4().hex
    args = {"state_dir": str(tmp_path / "state"), "login_host": pg_cluster.host, "port": pg_cluster.port,
            "login_user": "postgres", "login_password": password, "pg_bin_dir": pg_cluster.bin_dir,
            "repository": {"path": str(tmp_path / "repo"), "create": True},
            "copies": [{"name": "cloud", "type": "s3", "bucket": s3_bucket, "endpoint_url": moto_endpoint,
                        "path_style": True, "access_key": "testing", "secret_key": "testing-secret",
                        "region": "us-east-1"}],
            "encryption": {"key_files": [{"path": key_file}]}}
    result = run_module(args, check=True)
    assert result["ok"] is True and result["changed"] is False and result["failed_checks"] == []
    names = [check["name"] for check in result["checks"]]
    assert "repository:primary" in names and "repository:cloud" in names and "encryption" in names
    assert password not in json.dumps(result)

    # WAL archiving asked for, but archive_mode is off: an error, so the task fails with the report.
    failing = run_module(dict(args, wal_archiving=True))
    assert failing["failed"] is True and failing["ok"] is False and "wal_archive_command" in failing["failed_checks"]
    assert failing["msg"] == failing["summary"]
    command = {check["name"]: check for check in failing["checks"]}["wal_archive_command"]
    assert "archive_mode is off" in command["cause"] and "ALTER SYSTEM SET archive_mode" in command["fix"]
    reported = run_module(dict(args, wal_archiving=True, fail_on_error=False))
    assert not reported.get("failed") and reported["ok"] is False and reported["error_count"] == 1


def test_module_documentation_renders():
    result = subprocess.run([os.path.join(os.path.dirname(PYTHON), "ansible-doc"), "-t", "module",
                             "pgsafe.backup.backup_check"], capture_output=True, text=True, check=False,
                            env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS), timeout=120)
    assert result.returncode == 0, result.stderr
    for word in ("fail_on_error", "wal_archiving", "copies", "login_password", "failed_checks", "cause"):
        assert word in result.stdout


# ---------------------------------------------------------------------------- run logs


def test_every_run_writes_a_private_log_without_secrets(tmp_path, fs_settings, moto_endpoint, s3_bucket):
    password = "pg-secret-%s" % uuid.uuid4().hex
    aws_secret = "aws-secret-%s" % uuid.uuid4().hex  # moto does not check signatures
    settings = dict(fs_settings, log_dir=str(tmp_path / "logs" / "pgsafe"))
    settings["postgres"] = dict(fs_settings["postgres"], password=password)  # the cluster trusts 127.0.0.1
    settings["aws"] = {"access_key": "testing", "secret_key": aws_secret, "region": "us-east-1"}
    settings["copies"] = [{"name": "cloud", "type": "s3", "bucket": s3_bucket, "endpoint_url": moto_endpoint,
                           "path_style": True}]
    config = write_config(tmp_path / "pgsafe.yml", settings)
    log_dir = settings["log_dir"]

    check = pgsafe("--debug", "check", config=config)
    assert check.returncode == 0, describe(check)
    backup = pgsafe("backup", "logical", "-d", "app", config=config)
    assert backup.returncode == 0, describe(backup)
    restore = pgsafe("restore", "--backup-id", "20000101T000000Z-logical", config=config)
    assert restore.returncode == 8, describe(restore)
    listing = pgsafe("list", config=config)
    assert listing.returncode == 0, describe(listing)

    assert stat.S_IMODE(os.stat(log_dir).st_mode) == 0o700
    logs = run_logs(log_dir)
    assert [os.path.basename(path).split("-")[0] for path in logs] == ["backup", "check", "restore"]  # not list
    texts = {}
    for path in logs:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        with open(path, "r", encoding="utf-8") as handle:
            texts[os.path.basename(path).split("-")[0]] = handle.read()
    for command, text in texts.items():
        assert password not in text and aws_secret not in text, command
        assert "pgsafe" in text.splitlines()[0] and "%s started" % command in text.splitlines()[0]
    assert "check completed in" in texts["check"] and "(exit 0)" in texts["check"]
    assert "check repository:cloud: ok" in texts["check"]
    # --debug: the settings are in the log, with the secrets replaced.
    assert "settings (secrets replaced by ***)" in texts["check"] and "'password': '***'" in texts["check"]
    assert "backup completed in" in texts["backup"]
    assert "restore failed after" in texts["restore"] and "20000101T000000Z-logical" in texts["restore"]
    # The error reached the operator once on stderr, not doubled by the run log's closing line.
    assert restore.stderr.count("failed after") == 0 and "pgsafe: error:" in restore.stderr


def test_redaction_covers_engine_messages_and_tracebacks(tmp_path):
    """Defence in depth: a secret that reaches the logger anyway is replaced in the file."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.runlog import RunLog

    secret = "leaky-%s" % uuid.uuid4().hex
    logger = logging.getLogger("pgsafe.test-redaction")
    settings = {"state_dir": str(tmp_path / "state"), "postgres": {"password": secret}}
    with pytest.raises(RuntimeError):
        with RunLog("backup", settings, debug=True, logger=logger) as run_log:
            logger.info("connecting with %s", secret)
            raise RuntimeError("boom " + secret)
    with open(run_log.path, "r", encoding="utf-8") as handle:
        text = handle.read()
    assert secret not in text
    assert "connecting with ***" in text and "boom ***" in text and "Traceback" in text
    assert "backup failed after" in text
    assert stat.S_IMODE(os.stat(os.path.dirname(run_log.path)).st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")
def test_root_run_leaves_the_log_directory_to_the_backup_user(tmp_path):
    """An operator's run as root must not take <state_dir>/log away from the user the timers run as."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.runlog import RunLog

    entry = pwd.getpwnam("postgres")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, entry.pw_uid, entry.pw_gid)
    with RunLog("check", {"state_dir": str(state)}, logger=logging.getLogger("pgsafe.test-root-run")) as run_log:
        pass
    directory = os.stat(os.path.dirname(run_log.path))
    assert (directory.st_uid, stat.S_IMODE(directory.st_mode)) == (entry.pw_uid, 0o700)
    assert stat.S_IMODE(os.stat(run_log.path).st_mode) == 0o600
    with open(run_log.path, "r", encoding="utf-8") as handle:
        assert "check completed in" in handle.read()


def test_relative_log_dir_is_refused_with_the_option_named():
    from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError
    from ansible_collections.pgsafe.backup.plugins.module_utils.runlog import RunLog

    with pytest.raises(ConfigError) as refused:
        RunLog("backup", {"log_dir": "logs"}, logger=logging.getLogger("pgsafe.test-relative")).open()
    assert refused.value.where == "log_dir" and "not an absolute path" in refused.value.what
    assert "/var/log/pgsafe" in refused.value.fix
