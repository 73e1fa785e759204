# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fault matrix, storage and keys: S3 down, answering 500, stalling mid-upload; KMS refusing;
a full filesystem repository; prune killed mid-delete. See docs/faults.md.

Faults are real: a closed port, a proxy on the wire (tests/support/faultproxy.py) in front
of the moto server, a small tmpfs, SIGKILL of the ``pgsafe`` process.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import time
import uuid

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    EncryptionError, RepositoryError)
from ansible_collections.pgsafe.backup.plugins.module_utils.logical_backup import run_logical_backup
from ansible_collections.pgsafe.backup.plugins.module_utils.repository import open_repository
from ansible_collections.pgsafe.backup.plugins.module_utils.retention import prune
from tests.support.cli import write_config
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.faults import (
    CLUSTER, assert_failure_recorded, assert_recovered, assert_still_verifies, backup_metrics, base_settings,
    complete_ids, context_for, sigkill, start_pgsafe, statuses, verify_ids, wait_for)
from tests.support.pgcluster import free_port

DUMP_PATH = "/backups/"  # every backup object's key contains it; WAL and records do not


def s3_repository(bucket: str, endpoint: str, **options) -> dict:
    spec = {"type": "s3", "bucket": bucket, "endpoint_url": endpoint, "path_style": True,
            "connect_timeout": 1, "read_timeout": 2, "max_attempts": 2}
    spec.update(options)
    return spec


def keyfile_encryption(key_file: str) -> dict:
    return {"key_files": [{"path": key_file}]}


@pytest.fixture
def proxy(moto_endpoint):
    with FaultProxy(moto_endpoint) as fault_proxy:
        yield fault_proxy


def first_backup(settings: dict) -> tuple[dict, str, dict]:
    """The backup that must survive the fault, and the metrics it left."""
    context = context_for(settings)
    backup_id = run_logical_backup(context, ["app"])["backup_id"]
    return context, backup_id, backup_metrics(settings)


def no_objects_of_failed_run(context, before_ids) -> None:
    """Nothing but the earlier backups: no complete, no incomplete, no half-written object."""
    assert complete_ids(context) == list(before_ids)
    assert list(statuses(context)) == list(before_ids), statuses(context)


# ---------------------------------------------------------------------------- S3


def test_s3_defaults_bound_every_request():
    """Timeouts and retries exist by default, so a dead or stalled S3 ends a run, never hangs it."""
    repository = open_repository({"type": "s3", "bucket": "any-bucket", "endpoint_url": "http://127.0.0.1:9"})
    config = repository.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (10.0, 60.0)
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}


def test_s3_endpoint_down(tmp_path, pg_cluster, moto_endpoint, s3_bucket, key_file):
    good = base_settings(tmp_path, pg_cluster, s3_repository(s3_bucket, moto_endpoint), keyfile_encryption(key_file))
    context, kept, before = first_backup(good)
    closed = "http://127.0.0.1:%d" % free_port()
    down = dict(good, repository=s3_repository(s3_bucket, closed))

    started = time.monotonic()
    with pytest.raises(RepositoryError) as caught:
        run_logical_backup(context_for(down), ["app"])
    assert time.monotonic() - started < 15
    error = caught.value
    assert error.exit_code == 3
    assert "could not reach the S3 repository s3://%s (endpoint %s)" % (s3_bucket, closed) in error.what
    assert "after 2 attempts" in error.what and "repository.endpoint_url (%s)" % closed in error.fix

    no_objects_of_failed_run(context, [kept])
    assert_still_verifies(context, kept)
    assert_failure_recorded(good, before)
    assert_recovered(good, before, run_logical_backup(context, ["app"]))


def test_s3_answering_500(tmp_path, pg_cluster, proxy, s3_bucket, key_file):
    settings = base_settings(tmp_path, pg_cluster, s3_repository(s3_bucket, proxy.url, max_attempts=3),
                             keyfile_encryption(key_file))
    context, kept, before = first_backup(settings)

    failing = proxy.add(Rule("error", method="PUT", path_contains=DUMP_PATH, status=500, code="InternalError"))
    with pytest.raises(RepositoryError) as caught:
        run_logical_backup(context_for(settings), ["app"])
    error = caught.value
    assert "the S3 service at %s failed to store %s/backups/" % (proxy.url, CLUSTER) in error.what
    assert "after 3 attempts (500 InternalError)" in error.what
    assert error.where.startswith("s3://%s/%s/backups/" % (s3_bucket, CLUSTER))
    assert "retry later" in error.fix and "repository.max_attempts" in error.fix
    assert failing.injected == 3  # retried, and bounded: exactly max_attempts tries

    no_objects_of_failed_run(context, [kept])
    assert_still_verifies(context, kept)
    assert_failure_recorded(settings, before)

    # A fault that clears within the retries costs nothing: two 500s, then success.
    proxy.clear()
    flaky = proxy.add(Rule("error", method="PUT", path_contains=DUMP_PATH, times=2))
    assert_recovered(settings, before, run_logical_backup(context_for(settings), ["app"]))
    assert flaky.injected == 2
    assert len(complete_ids(context)) == 2


def test_s3_stalling_mid_upload(tmp_path, pg_cluster, proxy, s3_bucket, key_file):
    repository = s3_repository(s3_bucket, proxy.url, read_timeout=2, max_attempts=2)
    settings = base_settings(tmp_path, pg_cluster, repository, keyfile_encryption(key_file))
    context, kept, before = first_backup(settings)

    # The link goes silent after 64 KiB of the dump's upload and never answers.
    stall = proxy.add(Rule("stall", method="PUT", path_contains="/databases/", after_bytes=64 * 1024))
    started = time.monotonic()
    with pytest.raises(RepositoryError) as caught:
        run_logical_backup(context_for(settings), ["app"])
    elapsed = time.monotonic() - started
    error = caught.value
    assert "stopped answering while trying to" in error.what and "/databases/app.dump" in error.what
    assert "after 2 attempts, each waiting at most repository.read_timeout = 2 s" in error.what
    assert proxy.url in error.fix and "read_timeout" in error.fix
    assert stall.injected == 2 and 4 <= elapsed < 15, elapsed  # two attempts of ~2 s, then it gives up

    proxy.clear()
    no_objects_of_failed_run(context, [kept])
    assert_still_verifies(context, kept)
    assert_failure_recorded(settings, before)
    assert_recovered(settings, before, run_logical_backup(context_for(settings), ["app"]))


# ---------------------------------------------------------------------------- KMS


def test_kms_denied_disabled_or_missing(tmp_path, pg_cluster, proxy, kms_key_arn, moto_endpoint):
    from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import generate_key_file

    escrow = str(tmp_path / "escrow" / "escrow.key")
    generate_key_file(escrow)
    repository = {"type": "filesystem", "path": str(tmp_path / "repo"), "create": True}
    kms_only = {"kms_key_ids": [kms_key_arn], "kms_endpoint_url": proxy.url}
    settings = base_settings(tmp_path, pg_cluster, repository, dict(kms_only, key_files=[{"path": escrow}]))
    context, kept, before = first_backup(settings)
    assert before["encryption_failures"] == 0.0

    refusals = [
        ("AccessDeniedException", "User: arn:aws:iam::123456789012:user/pgsafe is not authorized to perform: "
         "kms:GenerateDataKey", "KMS denied kms:GenerateDataKey on key %s" % kms_key_arn,
         "grant kms:GenerateDataKey on this key"),
        ("DisabledException", "%s is disabled." % kms_key_arn,
         "KMS key %s is disabled or pending deletion (DisabledException during kms:GenerateDataKey)" % kms_key_arn,
         "enable the key"),
        ("KMSInvalidStateException", "%s is pending deletion." % kms_key_arn,
         "KMS key %s is disabled or pending deletion (KMSInvalidStateException" % kms_key_arn,
         "cancel-key-deletion"),
    ]
    for count, (code, message, what, fix) in enumerate(refusals, start=1):
        proxy.clear()
        proxy.add(Rule("error", operation="GenerateDataKey", status=400, code=code, message=message))
        with pytest.raises(EncryptionError) as caught:
            run_logical_backup(context_for(settings), ["app"])
        assert what in caught.value.what and fix in caught.value.fix, caught.value.message
        assert caught.value.where == "KMS key %s" % kms_key_arn and caught.value.exit_code == 4
        after = assert_failure_recorded(settings, before)
        assert after["encryption_failures"] == float(count)
    # A key ARN that does not exist, answered by the KMS itself.
    missing_arn = kms_key_arn.rsplit("/", 1)[0] + "/" + str(uuid.uuid4())
    with pytest.raises(EncryptionError) as caught:
        run_logical_backup(context_for(dict(settings, encryption={"kms_key_ids": [missing_arn],
                                                                  "kms_endpoint_url": moto_endpoint})), ["app"])
    assert "KMS key %s does not exist in this account and region" % missing_arn in caught.value.what
    assert "encryption.kms_key_ids" in caught.value.fix
    assert backup_metrics(settings)["encryption_failures"] == 4.0
    assert not context.repository.abandoned_uploads(0)  # no half-written object left behind
    no_objects_of_failed_run(context, [kept])

    # The key disabled for decryption too: a KMS-only reader is stuck and says which key and why;
    # the escrow key file every object is also wrapped with still decrypts.
    proxy.clear()
    proxy.add(Rule("error", operation="Decrypt", status=400, code="DisabledException",
                   message="%s is disabled." % kms_key_arn))
    report = verify_ids(context_for(dict(settings, encryption=kms_only)), [kept])
    assert [(f["backup_id"], f["check"]) for f in report["failures"]] == [(kept, "decrypt")] * 2, report["summary"]
    assert "is disabled or pending deletion (DisabledException during kms:Decrypt)" in report["failures"][0]["message"]
    assert "escrow key file" in report["failures"][0]["message"]
    assert_still_verifies(context_for(dict(settings, encryption={"key_files": [{"path": escrow}]})), kept)

    proxy.clear()
    assert_still_verifies(context, kept)
    assert_recovered(settings, before, run_logical_backup(context_for(settings), ["app"]))


# ---------------------------------------------------------------------------- filesystem full


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "small-volume"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights): %s" % mounted.stderr.strip())
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def test_filesystem_repository_full(tmp_path, pg_cluster, key_file, small_tmpfs):
    repository = {"type": "filesystem", "path": os.path.join(small_tmpfs, "repo"), "create": True}
    settings = base_settings(tmp_path, pg_cluster, repository, keyfile_encryption(key_file))
    context, kept, before = first_backup(settings)

    # Something else fills the volume: 64 KiB stay free, less than one dump.
    ballast = os.path.join(small_tmpfs, "ballast")
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * (context.repository.free_bytes() - 64 * 1024))
    with pytest.raises(RepositoryError) as caught:
        run_logical_backup(context_for(settings), ["app"])
    error = caught.value
    assert "the filesystem repository at %s is full (No space left on device)" % repository["path"] in error.what
    assert "could not write %s/backups/" % CLUSTER in error.what and error.where.startswith(repository["path"])
    assert "free space on that volume" in error.fix and "prune" in error.fix

    assert not context.repository.abandoned_uploads(0)  # the temp file was removed, space given back
    no_objects_of_failed_run(context, [kept])
    assert_still_verifies(context, kept)
    assert_failure_recorded(settings, before)

    os.unlink(ballast)
    assert_recovered(settings, before, run_logical_backup(context_for(settings), ["app"]))


# ---------------------------------------------------------------------------- prune killed


def test_prune_killed_mid_delete(tmp_path, pg_cluster, proxy, s3_bucket, key_file):
    settings = base_settings(tmp_path, pg_cluster, s3_repository(s3_bucket, proxy.url, read_timeout=30),
                             keyfile_encryption(key_file), retention={"keep_last": 1})
    context = context_for(settings)
    expired = run_logical_backup(context, ["app"])["backup_id"]
    kept = run_logical_backup(context, ["app"])["backup_id"]
    config = write_config(tmp_path / "pgsafe.yml", settings)

    # The manifest of the expired backup is deleted (first), then S3 hangs on its next object.
    stall = proxy.add(Rule("stall", operation="DeleteObject", skip=1))
    process = start_pgsafe(config, "prune", "--json", log_path=str(tmp_path / "prune.log"))
    try:
        wait_for(stall.stalled.is_set, 60, "prune to reach the second delete")
    finally:
        assert sigkill(process) == -9

    # The half-deleted backup no longer counts; the retained one is whole.
    assert statuses(context) == {expired: "incomplete", kept: "complete"}
    assert_still_verifies(context, kept)

    proxy.clear()
    rerun = prune(context, settings["retention"])  # the lock died with the killed process
    assert rerun["refused"] == [] and rerun["deleted"] == []
    leftover = {decision["backup_id"]: decision for decision in rerun["plan"]["decisions"]}[expired]
    assert leftover["keep"] and leftover["reasons"] == ["incomplete-in-grace"], leftover
    # The leftover looks like a run in progress until incomplete_grace (default 24 h) has passed;
    # the first prune after that removes it.
    later = prune(context, settings["retention"], now=mf.utcnow() + datetime.timedelta(hours=25))
    assert later["deleted"] == [expired] and later["refused"] == []
    assert [entry["backup_id"] for entry in list_backups(context.repository, CLUSTER)] == [kept]
    assert not [info.key for info in context.repository.list(mf.backup_prefix(CLUSTER, expired))]
    assert_still_verifies(context, kept)
