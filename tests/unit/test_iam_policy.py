# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Least-privilege IAM policies: their structure, the comparison with policies in use, the CLI,
and IAM itself (a moto server over HTTP) accepting every generated document."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils import cli
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError
from ansible_collections.pgsafe.backup.plugins.module_utils.iam_policy import (
    ROLES, compare_policies, least_privilege_policy, policies_by_role, s3_targets, wildcard_match)

BUCKET = "acme-pg-backups"
PREFIX = "prod/eu"
KEY_EU = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KEY_US = "arn:aws:kms:us-east-1:111122223333:key/0987dcba-09fe-87dc-65ba-ab0987654321"
SSE_KEY = "arn:aws:kms:eu-west-1:111122223333:key/5555eeee-12ab-34cd-56ef-1234567890ab"
OBJECTS = "arn:aws:s3:::%s/%s/*" % (BUCKET, PREFIX)
BUCKET_ARN = "arn:aws:s3:::%s" % BUCKET


def grants(document: dict) -> set:
    """Every (action, resource) pair the document allows, spelled out."""
    pairs = set()
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in statement["Action"]:
            for resource in resources:
                pairs.add((action, resource))
    return pairs


def actions_on(document: dict, resource: str) -> set:
    return {action for action, granted in grants(document) if granted == resource}


@pytest.mark.parametrize("roles", [[role] for role in ROLES] + [["host"], ["writer", "restorer"]])
def test_document_structure(roles):
    document = least_privilege_policy(roles, BUCKET, PREFIX, [KEY_EU, KEY_US], [SSE_KEY])
    assert document["Version"] == "2012-10-17"
    sids = [statement["Sid"] for statement in document["Statement"]]
    assert len(sids) == len(set(sids)) and all(sid.isalnum() for sid in sids)
    for statement in document["Statement"]:
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        assert statement["Action"] == sorted(set(statement["Action"]))
        for action in statement["Action"]:
            assert action.split(":")[0] in ("s3", "kms") and "*" not in action
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for resource in resources:
            # Never a whole bucket's objects, never every resource.
            assert resource != "*" and not resource.endswith(":::%s/*" % BUCKET)
            assert resource.startswith(("arn:aws:s3:::%s" % BUCKET, "arn:aws:kms:"))
        if statement["Action"] == ["s3:ListBucket"]:
            assert statement["Condition"] == {"StringLike": {"s3:prefix": [PREFIX + "/*", PREFIX]}}


def test_writer():
    document = least_privilege_policy(["writer"], BUCKET, PREFIX, [KEY_EU, KEY_US], [SSE_KEY])
    assert actions_on(document, OBJECTS) == {"s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"}
    assert actions_on(document, BUCKET_ARN) == {"s3:ListBucket"}
    for key in (KEY_EU, KEY_US):  # the data key is wrapped by each region's key
        assert actions_on(document, key) == {"kms:GenerateDataKey", "kms:Encrypt"}
    # SSE-KMS multipart uploads need Decrypt on the bucket key.
    assert actions_on(document, SSE_KEY) == {"kms:GenerateDataKey", "kms:Decrypt"}
    assert "s3:DeleteObject" not in {action for action, _resource in grants(document)}
    assert {resource for action, resource in grants(document) if action == "kms:Decrypt"} == {SSE_KEY}


@pytest.mark.parametrize("role", ["verifier", "restorer"])
def test_readers(role):
    document = least_privilege_policy([role], BUCKET, PREFIX, [KEY_EU, KEY_US])
    assert actions_on(document, OBJECTS) == {"s3:GetObject"}
    assert actions_on(document, BUCKET_ARN) == {"s3:ListBucket"}
    assert actions_on(document, KEY_EU) == actions_on(document, KEY_US) == {"kms:Decrypt"}
    records = "arn:aws:s3:::%s/%s/*/verify/*" % (BUCKET, PREFIX)
    # The verifier records its result beside the backup; nothing else is ever written.
    assert actions_on(document, records) == ({"s3:PutObject"} if role == "verifier" else set())
    allowed = {"s3:GetObject", "s3:ListBucket", "kms:Decrypt", "s3:PutObject"}
    assert {action for action, _resource in grants(document)} <= allowed


def test_pruner():
    document = least_privilege_policy(["pruner"], BUCKET, PREFIX, [KEY_EU])
    assert actions_on(document, OBJECTS) == {"s3:DeleteObject", "s3:GetObject", "s3:GetObjectRetention",
                                             "s3:GetObjectLegalHold", "s3:AbortMultipartUpload"}
    assert actions_on(document, BUCKET_ARN) == {"s3:ListBucket", "s3:ListBucketMultipartUploads"}
    assert not any(action.startswith("kms:") for action, _resource in grants(document))


def test_no_prefix_means_the_whole_bucket_without_condition():
    document = least_privilege_policy(["restorer"], BUCKET, "", [])
    assert actions_on(document, "arn:aws:s3:::%s/*" % BUCKET) == {"s3:GetObject"}
    assert all("Condition" not in statement for statement in document["Statement"])


def test_host_policy_is_the_union_of_its_roles():
    host = least_privilege_policy(["host"], BUCKET, PREFIX, [KEY_EU, KEY_US])
    for role, document in policies_by_role(["writer", "verifier", "pruner"], BUCKET, PREFIX, [KEY_EU, KEY_US]).items():
        comparison = compare_policies([("host", host)], document)
        assert comparison["missing"] == [], role
    restorer = least_privilege_policy(["restorer"], BUCKET, PREFIX, [KEY_EU])
    assert "s3:DeleteObject" not in {action for action, _resource in grants(restorer)}


@pytest.mark.parametrize("arguments, where", [
    ((["writer"], "s3://acme", "", []), "bucket"),
    ((["writer"], "Acme_Backups", "", []), "bucket"),
    ((["writer"], BUCKET, "prod/*", []), "prefix"),
    ((["writer"], BUCKET, "prod/../x", []), "prefix"),
    ((["writer"], BUCKET, "", ["alias/pgsafe"]), "kms_key_arns"),
    ((["writer"], BUCKET, "", ["arn:aws:kms:eu-west-1:111122223333:alias/pgsafe"]), "kms_key_arns"),
    ((["admin"], BUCKET, "", []), "role"),
    (([], BUCKET, "", []), "role"),
])
def test_bad_input_names_the_option(arguments, where):
    with pytest.raises(ConfigError) as raised:
        least_privilege_policy(*arguments)
    assert raised.value.where == where and raised.value.fix


# --- comparison ---------------------------------------------------------------------------------

def test_least_privilege_compares_clean_with_itself():
    document = least_privilege_policy(["host"], BUCKET, PREFIX, [KEY_EU])
    assert compare_policies([("same", json.dumps(document))], document) == {
        "ok": True, "missing": [], "excess": [], "statements_checked": len(document["Statement"])}


def test_broad_policy_is_excess_and_missing_keys_are_missing():
    needed = least_privilege_policy(["writer"], BUCKET, PREFIX, [KEY_EU])
    broad = {"Version": "2012-10-17", "Statement": [
        {"Sid": "All", "Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Sid": "List", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": BUCKET_ARN},
        {"Sid": "Read", "Effect": "Allow", "Action": ["s3:GetObject", "kms:Decrypt"],
         "Resource": ["arn:aws:s3:::%s/*" % BUCKET, "*"]}]}
    result = compare_policies([("broad", broad)], needed)
    assert not result["ok"]
    assert {(item["action"], item["resource"]) for item in result["missing"]} == {
        ("kms:GenerateDataKey", KEY_EU), ("kms:Encrypt", KEY_EU)}
    problems = {(item["statement"], item["action"], item["resource"]): item["problem"] for item in result["excess"]}
    assert "s3:DeleteBucket" in problems[("broad: All", "s3:*", None)]
    assert "whole bucket" in problems[("broad: List", "s3:ListBucket", BUCKET_ARN)]
    assert "wider" in problems[("broad: Read", "s3:GetObject", "arn:aws:s3:::%s/*" % BUCKET)]
    assert "not needed" in problems[("broad: Read", "kms:Decrypt", None)]


def test_deny_and_narrower_grants_are_missing():
    needed = least_privilege_policy(["restorer"], BUCKET, PREFIX, [])
    narrow = {"Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::%s/%s/db01/*" % (BUCKET, PREFIX)},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": BUCKET_ARN,
         "Condition": {"StringLike": {"s3:prefix": [PREFIX + "/*"]}}},
        {"Effect": "Deny", "Action": "s3:List*", "Resource": "*"}]}
    result = compare_policies([("narrow", narrow)], needed)
    assert {(item["action"], item["problem"].split(" ")[0]) for item in result["missing"]} == {
        ("s3:GetObject", "not"), ("s3:ListBucket", "denied")}
    assert result["excess"] == []


def test_not_action_allow_is_excess():
    needed = least_privilege_policy(["restorer"], BUCKET, PREFIX, [])
    result = compare_policies([("p", {"Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]})],
                              needed)
    assert result["missing"] == [] and "NotAction" in result["excess"][0]["problem"]


@pytest.mark.parametrize("text, pattern, expected", [
    ("arn:aws:s3:::b/p/*/verify/*", "arn:aws:s3:::b/p/*", True),
    ("arn:aws:s3:::b/p/*", "arn:aws:s3:::b/p/db01/*", False),
    ("s3:GetObject", "s3:get*", False),
    ("arn:aws:s3:::b[1]", "arn:aws:s3:::b[1]", True),
    ("arn:aws:s3:::bx", "arn:aws:s3:::b?", True),
])
def test_wildcard_match(text, pattern, expected):
    assert wildcard_match(text, pattern) is expected


# --- settings and the CLI ----------------------------------------------------------------------

def test_s3_targets_from_settings():
    settings = {"repository": {"type": "filesystem", "path": "/srv/pgsafe"},
                "copies": [{"type": "s3", "bucket": BUCKET, "prefix": PREFIX, "sse": "aws:kms",
                            "sse_kms_key_id": SSE_KEY}],
                "encryption": {"kms_key_ids": [KEY_EU, KEY_US]}}
    assert s3_targets(settings) == [{"bucket": BUCKET, "prefix": PREFIX, "where": "copies[0]",
                                     "kms_key_arns": [KEY_EU, KEY_US], "sse_kms_key_arns": [SSE_KEY]}]


def test_cli_prints_the_policy(capsys, tmp_path):
    assert cli.main(["iam-policy", "--role", "writer", "--role", "pruner", "--bucket", BUCKET, "--prefix", PREFIX,
                     "--kms-key-arn", KEY_EU]) == 0
    assert json.loads(capsys.readouterr().out) == least_privilege_policy(["writer", "pruner"], BUCKET, PREFIX,
                                                                         [KEY_EU])
    config = tmp_path / "pgsafe.yml"
    config.write_text(json.dumps({"repository": {"type": "s3", "bucket": BUCKET, "prefix": PREFIX},
                                  "encryption": {"kms_key_ids": [KEY_US]}}))
    os.chmod(config, 0o600)
    assert cli.main(["-c", str(config), "iam-policy", "--role", "restorer", "--per-role"]) == 0
    assert json.loads(capsys.readouterr().out) == {"restorer": least_privilege_policy(["restorer"], BUCKET, PREFIX,
                                                                                      [KEY_US])}
    assert cli.main(["iam-policy", "--role", "restorer", "--bucket", BUCKET, "--kms-key-arn", "alias/x"]) == 2
    assert "kms_key_arns" in capsys.readouterr().err


# --- IAM accepts what we generate ----------------------------------------------------------------

def test_iam_accepts_every_generated_document(moto_endpoint):
    import boto3

    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    documents = {"role-%s" % role: document for role, document in
                 policies_by_role(list(ROLES), BUCKET, PREFIX, [KEY_EU, KEY_US], [SSE_KEY]).items()}
    documents["host"] = least_privilege_policy(["host"], BUCKET, PREFIX, [KEY_EU, KEY_US], [SSE_KEY])
    documents["no-prefix"] = least_privilege_policy(["writer", "restorer"], BUCKET, "", [])
    suffix = uuid.uuid4().hex[:8]
    for name, document in documents.items():
        created = iam.create_policy(PolicyName="pgsafe-%s-%s" % (name, suffix), PolicyDocument=json.dumps(document))
        arn = created["Policy"]["Arn"]
        stored = iam.get_policy_version(PolicyArn=arn, VersionId=created["Policy"]["DefaultVersionId"])
        assert stored["PolicyVersion"]["Document"] == document
    # The server does validate: a malformed document is refused, so the acceptance above means something.
    with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):
        iam.create_policy(PolicyName="pgsafe-bad-%s" % suffix, PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "GetObject", "Resource": "*"}]}))


def test_staging_inventory_policy_is_the_generated_one():
    """inventories/staging keeps the MinIO user's policy as a variable; it must be what we generate."""
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    group_vars = os.path.join(root, "inventories", "staging", "group_vars", "all")
    with open(os.path.join(group_vars, "iam_policy.yml"), "r", encoding="utf-8") as handle:
        kept = yaml.safe_load(handle)["pgsafe_host_policy"]
    with open(os.path.join(group_vars, "encryption.yml"), "r", encoding="utf-8") as handle:
        keys = yaml.safe_load(handle)["pgsafe_kms_key_arns"]
    with open(os.path.join(group_vars, "repositories.yml"), "r", encoding="utf-8") as handle:
        repository = yaml.safe_load(handle)["pgsafe_s3_repository"]
    assert kept == least_privilege_policy(["host"], repository["bucket"], repository["prefix"], keys)
