# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The quarterly audit and the weekly review against real parts.

A real PostgreSQL cluster, real backups through the engine, a moto server over HTTP for S3,
STS and IAM: a hardened bucket with the least-privilege policy audits clean; a plain bucket,
a broad policy, an unencrypted and an unverified backup are each found; retention overdue,
min_keep, a new database without a backup and a copy missing the newest backup are found.
The weekly review is checked against figures the test computes itself (durations, slopes,
bytes listed from the bucket, a verification failure caused by flipping a byte).
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from xml.etree import ElementTree

import boto3
import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.audit import audit
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups
from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.iam_policy import least_privilege_policy
from ansible_collections.pgsafe.backup.plugins.module_utils.logical_backup import run_logical_backup
from ansible_collections.pgsafe.backup.plugins.module_utils.sync import sync_repositories
from ansible_collections.pgsafe.backup.plugins.module_utils.trends import collect
from ansible_collections.pgsafe.backup.plugins.module_utils.verify import verify

CLUSTER = "main"
PREFIX = "prod"


def client(service: str, endpoint: str, **credentials):
    credentials = credentials or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing-secret"}
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", **credentials)


def settings_for(tmp_path, pg_cluster, key_file, repository: dict, **extra) -> dict:
    settings = {"cluster": CLUSTER, "state_dir": str(tmp_path / "state"), "postgres": pg_cluster.conn_spec(),
                "repository": repository, "encryption": {"key_files": [{"path": key_file}]}}
    settings.update(extra)
    return settings


def s3_repository(bucket: str, endpoint: str, **extra) -> dict:
    spec = {"type": "s3", "name": "cloud", "bucket": bucket, "prefix": PREFIX, "endpoint_url": endpoint,
            "path_style": True, "region": "us-east-1"}
    spec.update(extra)
    return spec


def iam_user(endpoint: str, policy: dict, via_group: bool = False) -> dict:
    """A real IAM user with the policy (inline, or managed through a group) and its access key."""
    iam = client("iam", endpoint)
    name = "pgsafe-%s" % uuid.uuid4().hex[:8]
    iam.create_user(UserName=name)
    if via_group:
        iam.create_group(GroupName=name + "-group")
        arn = iam.create_policy(PolicyName=name + "-policy", PolicyDocument=json.dumps(policy))["Policy"]["Arn"]
        iam.attach_group_policy(GroupName=name + "-group", PolicyArn=arn)
        iam.add_user_to_group(GroupName=name + "-group", UserName=name)
    else:
        iam.put_user_policy(UserName=name, PolicyName="pgsafe", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"name": name, "access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"]}


def by_check(result: dict) -> dict:
    found: dict[str, list] = {}
    for item in result["findings"]:
        found.setdefault(item["check"], []).append(item)
    return found


# --- S3 and IAM ---------------------------------------------------------------------------------

def test_hardened_bucket_with_least_privilege_audits_clean(tmp_path, pg_cluster, key_file, moto_endpoint):
    bucket = "pgsafe-hard-%s" % uuid.uuid4().hex[:10]
    s3 = client("s3", moto_endpoint)
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    user = iam_user(moto_endpoint, least_privilege_policy(["host"], bucket, PREFIX))
    context = Context.from_settings(settings_for(tmp_path, pg_cluster, key_file, s3_repository(bucket, moto_endpoint)))
    backup = run_logical_backup(context, ["app"])
    assert verify(context, "integrity")["ok"]

    result = audit(context, databases=["app"], retention={"keep_daily": 7},
                   iam={"from_caller": True, "endpoint_url": moto_endpoint, "access_key": user["access_key"],
                        "secret_key": user["secret_key"]})
    assert result["findings"] == [], result["summary"]
    assert result["ok"] and result["flagged_databases"] == []
    assert result["coverage"] == [{"database": "app", "newest_backup_id": backup["backup_id"],
                                   "newest_finished_at": result["coverage"][0]["newest_finished_at"],
                                   "newest_verified_backup_id": backup["backup_id"],
                                   "newest_verified_finished_at": result["coverage"][0]["newest_finished_at"],
                                   "fresh": True, "verified": True, "problems": [], "missing_from_copies": []}]
    bucket_state = result["s3"][0]
    assert bucket_state["default_encryption"] == {"ok": True, "algorithms": ["AES256"], "kms_key_ids": []}
    assert bucket_state["public_access_block"]["ok"] and bucket_state["versioning"]["status"] == "Enabled"
    assert bucket_state["object_lock"] == {"ok": True, "default_retention": {"Mode": "GOVERNANCE", "Days": 1}}
    assert result["iam"]["principal"].endswith(":user/" + user["name"])
    assert result["iam"]["policies"] == ["user %s inline pgsafe" % user["name"]]
    assert result["encryption"][0]["manifests"] == 1 and result["encryption"][0]["unencrypted"] == []


def test_plain_bucket_broad_policy_unencrypted_unverified(tmp_path, pg_cluster, key_file, moto_endpoint, s3_bucket):
    broad = {"Version": "2012-10-17", "Statement": [{"Sid": "Everything", "Effect": "Allow", "Action": "s3:*",
                                                     "Resource": "*"}]}
    user = iam_user(moto_endpoint, broad, via_group=True)
    kms_key = "arn:aws:kms:us-east-1:123456789012:key/%s" % uuid.uuid4()
    settings = settings_for(tmp_path, pg_cluster, key_file, s3_repository(s3_bucket, moto_endpoint),
                            encryption={"mode": "none"})
    context = Context.from_settings(settings)
    backup = run_logical_backup(context, ["app"])
    # The envelope's KMS key is what the IAM comparison needs grants on (nothing is encrypted here).
    context.settings["encryption"] = {"kms_key_ids": [kms_key, "alias/pgsafe"]}

    result = audit(context, databases=["app"], iam={"from_caller": True, "endpoint_url": moto_endpoint,
                                                    "access_key": user["access_key"],
                                                    "secret_key": user["secret_key"]})
    found = by_check(result)
    assert not result["ok"]
    assert [(item["severity"], item["subject"]) for item in found["encryption"]] == [("critical",
                                                                                      backup["backup_id"])]
    assert [(item["severity"], item["subject"]) for item in found["verification"]] == [("critical", "app")]
    for check in ("s3_default_encryption", "s3_public_access_block", "s3_versioning", "s3_object_lock"):
        assert [(item["severity"], item["subject"]) for item in found[check]] == [("warning", s3_bucket)], check
    assert result["s3"][0]["public_access_block"]["settings_off"] == [
        "BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"]
    assert result["iam"]["policies"] == ["arn:aws:iam::123456789012:policy/%s-policy" % user["name"]]
    assert [item["action"] for item in result["iam"]["excess"]] == ["s3:*"]
    assert {item["action"] for item in result["iam"]["missing"]} == {"kms:GenerateDataKey", "kms:Encrypt",
                                                                     "kms:Decrypt"}
    assert [item["subject"] for item in found["iam"]] == ["alias/pgsafe"]  # aliases cannot be compared
    assert result["flagged_databases"] == ["app"]

    # Given documents are compared without IAM; only the named bucket checks run.
    documents = audit(context, databases=["app"], require_encryption=False,
                      s3_checks={"default_encryption": False, "public_access_block": False, "versioning": False,
                                 "object_lock": True},
                      iam={"roles": ["restorer"], "policy_documents": [json.dumps(least_privilege_policy(
                          ["restorer"], s3_bucket, PREFIX, [kms_key]))]})
    assert sorted(by_check(documents)) == ["iam", "s3_object_lock", "verification"]
    assert documents["iam"]["ok"] and documents["iam"]["principal"] is None


def test_iam_read_errors_are_findings_not_crashes(tmp_path, pg_cluster, key_file, moto_endpoint, s3_bucket):
    context = Context.from_settings(settings_for(tmp_path, pg_cluster, key_file,
                                                 s3_repository(s3_bucket, moto_endpoint)))
    result = audit(context, databases=["app"], s3_checks={name: False for name in (
        "default_encryption", "public_access_block", "versioning", "object_lock")},
        iam={"principal_arn": "arn:aws:iam::123456789012:role/pgsafe-does-not-exist",
             "endpoint_url": moto_endpoint})
    assert [item["check"] for item in result["findings"]] == ["coverage", "iam"]
    assert "NoSuchEntity" in by_check(result)["iam"][0]["message"]
    assert by_check(result)["coverage"][0]["severity"] == "critical"  # no backup of app at all


# --- coverage, retention, copies ----------------------------------------------------------------

def test_retention_min_keep_new_database_and_copies(tmp_path, pg_cluster, key_file):
    primary = {"type": "filesystem", "name": "local", "path": str(tmp_path / "repo"), "create": True}
    offsite = {"type": "filesystem", "name": "offsite", "path": str(tmp_path / "offsite"), "create": True}
    context = Context.from_settings(settings_for(tmp_path, pg_cluster, key_file, primary, copies=[offsite]))
    copy = context.copies()[0]
    first = run_logical_backup(context, ["app"])
    sync_repositories(context.repository, copy, CLUSTER, "push")
    second = run_logical_backup(context, ["app"])
    assert verify(context, "integrity")["ok"]
    # A run interrupted two days ago: objects without a manifest, long past the grace period.
    stale_id = mf.format_backup_id("logical", mf.utcnow() - datetime.timedelta(days=2))
    context.repository.put_bytes(mf.object_key(CLUSTER, stale_id, "databases/app.dump.zst.enc"), b"partial")
    pg_cluster.psql("CREATE DATABASE newapp")
    try:
        result = audit(context, [copy], databases=["all"], exclude_databases=["postgres", "template*"],
                       retention={"keep_daily": 1, "min_keep": 3})
        excluded = audit(context, [copy], databases=["all"], exclude_databases=["postgres", "new*"],
                         retention={"keep_daily": 1, "min_keep": 1})
    finally:
        pg_cluster.psql("DROP DATABASE newapp")
    found = by_check(result)
    assert result["databases"] == ["app", "newapp"]
    assert [(item["severity"], item["subject"]) for item in found["coverage"]] == [("critical", "newapp")]
    assert [item["subject"] for item in found["copies"]] == ["app"]  # the second backup was not pushed
    assert second["backup_id"] in found["copies"][0]["message"]
    primary_retention = result["retention"][0]
    # min_keep 3 protects both complete backups; the interrupted run is overdue all the same.
    assert primary_retention["overdue"] == [stale_id]
    assert primary_retention["min_keep_short"] == ["logical:app"] and not primary_retention["ok"]
    # The copy holds one complete backup: nothing overdue, but below min_keep 3.
    assert result["retention"][1]["overdue"] == [] and result["retention"][1]["min_keep_short"] == ["logical:app"]
    assert {item["severity"] for item in found["retention"] + found["min_keep"]} == {"warning"}
    assert result["flagged_databases"] == ["newapp"] and not result["ok"]
    # Excluding the new database and asking for one backup per group: only retention and the copy remain.
    assert excluded["ok"] and excluded["databases"] == ["app"]
    assert sorted({item["check"] for item in excluded["findings"]}) == ["copies", "retention"]
    # With min_keep 1, keep_daily 1 keeps only the newest of today's two: the first is overdue too.
    assert sorted(excluded["retention"][0]["overdue"]) == sorted([stale_id, first["backup_id"]])
    assert excluded["retention"][0]["min_keep_short"] == []


# --- the weekly review --------------------------------------------------------------------------

def test_weekly_trends_failures_storage_cost(tmp_path, pg_cluster, key_file, moto_endpoint, s3_bucket):
    now = mf.utcnow().replace(microsecond=0)
    primary = {"type": "filesystem", "name": "local", "path": str(tmp_path / "repo"), "create": True}
    cloud = s3_repository(s3_bucket, moto_endpoint, storage_class="STANDARD_IA")
    context = Context.from_settings(settings_for(tmp_path, pg_cluster, key_file, primary, copies=[cloud]))
    ids = [run_logical_backup(context, ["app"])["backup_id"] for _round in range(4)]
    # Spread the four backups over four weeks with durations of 10, 20, 30 and 40 seconds.
    for weeks_ago, (backup_id, duration) in zip((3, 2, 1, 0), zip(ids, (10, 20, 30, 40))):
        manifest = mf.read_manifest(context.repository, CLUSTER, backup_id)
        finished = now - datetime.timedelta(weeks=weeks_ago, hours=1)
        manifest["finished_at"] = mf.isoformat(finished)
        manifest["started_at"] = mf.isoformat(finished - datetime.timedelta(seconds=duration))
        manifest["duration_seconds"] = float(duration)
        mf.write_manifest(context.repository, manifest)
    sync_repositories(context.repository, context.copies()[0], CLUSTER, "push")
    # Flip one byte of the third backup's dump: a real verification failure, recorded.
    third = mf.read_manifest(context.repository, CLUSTER, ids[2])
    dump = next(obj for obj in third["objects"] if obj["name"].startswith("databases/"))
    path = os.path.join(primary["path"], mf.object_key(CLUSTER, ids[2], dump["name"]))
    with open(path, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert not verify(context, "integrity", backup_ids=[ids[2]])["ok"]
    # A run that died a week ago (objects, no manifest).
    failed_id = mf.format_backup_id("logical", now - datetime.timedelta(days=6))
    context.repository.put_bytes(mf.object_key(CLUSTER, failed_id, "databases/app.dump.zst.enc"), b"partial")

    review = collect(context, context.copies(), weeks=12, prices={"local": 0.04}, now=now)
    logical = review["trends"]["logical"]
    assert logical["backups"] == 4
    assert [point["duration_seconds"] for point in logical["series"]] == [10.0, 20.0, 30.0, 40.0]
    assert logical["duration_seconds"]["mean"] == 25.0 and logical["duration_seconds"]["last"] == 40.0
    assert logical["duration_seconds"]["slope_per_week"] == pytest.approx(10.0, abs=1e-6)
    assert len(logical["weekly"]) == 4
    assert any("duration grew 300%" in note for note in review["observations"]), review["observations"]

    failures = review["failures"]
    assert [run["backup_id"] for run in failures["failed_runs"]] == [failed_id]
    assert [(item["backup_id"], item["checks"]) for item in failures["verification_failures"]] == [
        (ids[2], ["sha256"])]
    assert failures["by_type"]["logical"] == {"runs": 5, "succeeded": 4, "failed": 1, "success_rate_percent": 80.0,
                                              "longest_failure_streak": 1}

    # Storage: the filesystem copy priced by its name, the bucket by its objects' class.
    local, remote = review["storage"]
    on_disk = sum(os.path.getsize(os.path.join(directory, name))
                  for directory, _dirs, names in os.walk(os.path.join(primary["path"], CLUSTER)) for name in names)
    assert local["used_bytes"] == on_disk and local["classes"][0]["price_per_gb_month"] == 0.04
    listed = {}
    paginator = client("s3", moto_endpoint).get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=s3_bucket, Prefix=PREFIX + "/" + CLUSTER):
        for item in page.get("Contents", []):
            listed[item.get("StorageClass", "STANDARD")] = listed.get(item.get("StorageClass", "STANDARD"), 0) + \
                item["Size"]
    assert listed and set(listed) == {"STANDARD_IA"}
    assert [(item["storage_class"], item["bytes"]) for item in remote["classes"]] == sorted(listed.items())
    expected = round(on_disk / 1024 ** 3 * 0.04, 4) + round(listed["STANDARD_IA"] / 1024 ** 3 * 0.0125, 4)
    assert review["cost"]["per_month"] == pytest.approx(expected, abs=1e-4)
    assert review["encryption"] == {"manifests": 4, "unencrypted": [],
                                    "keys_in_use": ["raw-aes pgsafe/backup"]}

    chart = ElementTree.fromstring(review["chart_svg"])
    assert len(chart.findall("{http://www.w3.org/2000/svg}circle")) == 8  # 4 backups x 2 panels
    assert len(chart.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    # The same repository state gives the same review, byte for byte.
    assert collect(context, context.copies(), weeks=12, prices={"local": 0.04}, now=now) == review
    assert [entry["backup_id"] for entry in list_backups(context.repository, CLUSTER)
            if entry["status"] == "complete"] == ids


def test_awx_environment_credentials_are_honoured(tmp_path, pg_cluster, key_file, moto_endpoint, s3_bucket,
                                                  monkeypatch):
    """AWX's AWS credential type injects AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SECURITY_TOKEN (or
    AWS_SESSION_TOKEN): with no credential options, the audit's STS and IAM calls run as that identity."""
    user = iam_user(moto_endpoint, least_privilege_policy(["restorer"], s3_bucket, PREFIX))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", user["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", user["secret_key"])
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "token-from-awx")
    context = Context.from_settings(settings_for(tmp_path, pg_cluster, key_file,
                                                 s3_repository(s3_bucket, moto_endpoint)))
    result = audit(context, databases=["app"], s3_checks={name: False for name in (
        "default_encryption", "public_access_block", "versioning", "object_lock")},
        iam={"roles": ["restorer"], "from_caller": True, "endpoint_url": moto_endpoint})
    assert result["iam"]["principal"].endswith(":user/" + user["name"])
    assert result["iam"]["ok"] and result["iam"]["policies"] == ["user %s inline pgsafe" % user["name"]]


def test_unreachable_server_is_a_critical_finding(tmp_path, key_file):
    from tests.support.pgcluster import free_port

    settings = {"cluster": CLUSTER, "state_dir": str(tmp_path / "state"),
                "postgres": {"host": "127.0.0.1", "port": free_port(), "user": "postgres"},
                "repository": {"type": "filesystem", "path": str(tmp_path / "repo"), "create": True},
                "encryption": {"key_files": [{"path": key_file}]}}
    result = audit(Context.from_settings(settings), databases=["all"])
    assert not result["ok"] and result["databases"] == []
    [item] = result["findings"]
    assert (item["check"], item["severity"]) == ("coverage", "critical")
    assert "cannot list the databases of postgresql://postgres@127.0.0.1:%d" % settings["postgres"]["port"] in \
        item["message"] and "login_host" in item["fix"]
