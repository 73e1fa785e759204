# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Least-privilege IAM policies for pgsafe, and a comparison with the policies in use.

Pure functions: bucket, prefix and KMS key ARNs in, IAM policy documents (plain dicts)
out. Nothing here talks to AWS; ``audit.py`` fetches the policies in use and calls
:func:`compare_policies`.

Roles, each the calls that part of pgsafe makes (repository_s3.py, encryption.py):

``writer``    backups, WAL archiving, sync push: PutObject (single and multipart), GetObject
              (HeadObject is authorised as GetObject: idempotent pushes compare checksums),
              AbortMultipartUpload, ListBucket below the prefix; KMS GenerateDataKey for the
              first key and Encrypt for each additional one.
``verifier``  reads every object (GetObject), lists, KMS Decrypt, and records the result
              beside the backup: PutObject on ``<prefix>/*/verify/*`` only.
``restorer``  GetObject, ListBucket below the prefix, KMS Decrypt.
``pruner``    DeleteObject, GetObject (manifests, Object Lock state from HeadObject),
              GetObjectRetention and GetObjectLegalHold, ListBucket below the prefix,
              ListBucketMultipartUploads and AbortMultipartUpload for abandoned uploads. No KMS.

A host with the install role's timers runs backup, verify and prune: it needs
``writer + verifier + pruner`` (the default of :data:`HOST_ROLES`).
"""

from __future__ import annotations

import copy
import json
import re

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError

POLICY_VERSION = "2012-10-17"
ROLES = ("writer", "verifier", "restorer", "pruner")
ROLE_ALIASES = {"backup": "writer", "reader": "restorer", "verify": "verifier", "restore": "restorer",
                "prune": "pruner", "cleanup": "pruner"}
HOST_ROLES = ("writer", "verifier", "pruner")

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
KMS_KEY_ARN_RE = re.compile(r"^arn:(?P<partition>aws[a-z-]*):kms:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
                            r"(?P<kind>key|alias)/(?P<name>[A-Za-z0-9/_+=,.@:-]+)$")

S3_ACTIONS = {
    "writer": {"objects": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"], "list": True},
    "verifier": {"objects": ["s3:GetObject"], "list": True, "records": ["s3:PutObject"]},
    "restorer": {"objects": ["s3:GetObject"], "list": True},
    "pruner": {"objects": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:GetObjectLegalHold",
                           "s3:GetObjectRetention"],
               "list": True, "bucket": ["s3:ListBucketMultipartUploads"]},
}
# pgsafe's own envelope keys (encryption.kms_key_ids).
KMS_ACTIONS = {"writer": ["kms:Encrypt", "kms:GenerateDataKey"], "verifier": ["kms:Decrypt"],
               "restorer": ["kms:Decrypt"], "pruner": []}
# The bucket's SSE-KMS key (repository.sse_kms_key_id): S3 calls KMS on the caller's behalf.
# Multipart uploads under SSE-KMS need Decrypt as well (S3 decrypts the data key per part).
SSE_KMS_ACTIONS = {"writer": ["kms:Decrypt", "kms:GenerateDataKey"], "verifier": ["kms:Decrypt", "kms:GenerateDataKey"],
                   "restorer": ["kms:Decrypt"], "pruner": []}
# Actions that never belong to a backup credential, named when a wildcard grants them.
DANGEROUS_ACTIONS = ("s3:DeleteBucket", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy", "s3:PutBucketAcl",
                     "s3:PutObjectAcl", "s3:PutBucketVersioning", "s3:PutLifecycleConfiguration",
                     "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention", "s3:PutObjectRetention",
                     "s3:PutObjectLegalHold", "s3:PutBucketObjectLockConfiguration", "kms:ScheduleKeyDeletion",
                     "kms:DisableKey", "kms:PutKeyPolicy", "kms:CreateGrant", "iam:PassRole")


# --- inputs ------------------------------------------------------------------------------

def normalize_roles(roles) -> list[str]:
    """Role names in canonical order; aliases (backup, reader, prune, ...) accepted."""
    if isinstance(roles, str):
        roles = [part.strip() for part in roles.split(",") if part.strip()]
    if not roles:
        raise ConfigError("no pgsafe role given for the IAM policy", where="role",
                          fix="name one or more of: %s" % ", ".join(ROLES))
    found = set()
    for role in roles:
        name = ROLE_ALIASES.get(str(role).lower(), str(role).lower())
        if name == "host":
            found.update(HOST_ROLES)
            continue
        if name not in ROLES:
            raise ConfigError("unknown pgsafe role %r" % role, where="role",
                              fix="use one of: %s (or 'host' for writer+verifier+pruner)" % ", ".join(ROLES))
        found.add(name)
    return [role for role in ROLES if role in found]


def check_bucket(bucket: str) -> str:
    if not isinstance(bucket, str) or not BUCKET_RE.match(bucket) or ".." in bucket:
        raise ConfigError("%r is not an S3 bucket name" % (bucket,), where="bucket",
                          fix="give the bare bucket name: 3-63 lowercase letters, digits, '.' and '-' (no s3://)")
    return bucket


def check_prefix(prefix: str | None) -> str:
    prefix = (prefix or "").strip("/")
    if any(char in prefix for char in "*?$"):
        raise ConfigError("prefix %r contains a wildcard or policy variable" % prefix, where="prefix",
                          fix="give the literal key prefix of the repository (repository.prefix)")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ConfigError("prefix %r has empty, '.' or '..' segments" % prefix, where="prefix",
                          fix="give the key prefix as the repository has it, e.g. prod or prod/eu")
    return prefix


def check_kms_key_arns(arns, where: str = "kms_key_arns") -> list[str]:
    """Full key ARNs only: IAM matches KMS resources by key ARN, never by alias."""
    checked = []
    for arn in arns or []:
        match = KMS_KEY_ARN_RE.match(str(arn))
        if not match:
            raise ConfigError("%r is not a KMS key ARN" % (arn,), where=where,
                              fix="give arn:aws:kms:REGION:ACCOUNT:key/KEY-ID (aws kms describe-key --key-id ID "
                              "prints it)")
        if match.group("kind") == "alias":
            raise ConfigError("%s is an alias ARN; IAM policies grant KMS actions on key ARNs" % arn, where=where,
                              fix="use the key ARN the alias points at (aws kms describe-key --key-id %s)" % arn)
        if arn not in checked:
            checked.append(arn)
    return checked


def partition_of(kms_key_arns) -> str:
    for arn in kms_key_arns:
        return KMS_KEY_ARN_RE.match(arn).group("partition")
    return "aws"


def bucket_arn(bucket: str, partition: str = "aws") -> str:
    return "arn:%s:s3:::%s" % (partition, bucket)


def objects_arn(bucket: str, prefix: str, partition: str = "aws", below: str = "*") -> str:
    return "%s/%s%s" % (bucket_arn(bucket, partition), (prefix + "/") if prefix else "", below)


# --- generation ---------------------------------------------------------------------------

def _statement(sid: str, actions, resources, condition: dict | None = None) -> dict:
    statement = {"Sid": sid, "Effect": "Allow", "Action": sorted(set(actions)),
                 "Resource": resources[0] if len(resources) == 1 else sorted(resources)}
    if condition:
        statement["Condition"] = condition
    return statement


def _list_condition(prefix: str) -> dict | None:
    # The repository lists "<prefix>/<cluster>/..." and "<prefix>/" (the clusters).
    return {"StringLike": {"s3:prefix": [prefix + "/*", prefix]}} if prefix else None


def role_statements(role: str, bucket: str, prefix: str = "", kms_key_arns=(), sse_kms_key_arns=(),
                    partition: str = "aws") -> list[dict]:
    """The statements one role needs, each with a Sid that names the role."""
    name = role.capitalize()
    actions = S3_ACTIONS[role]
    statements = [_statement("Pgsafe%sObjects" % name, actions["objects"], [objects_arn(bucket, prefix, partition)])]
    if actions.get("records"):
        statements.append(_statement("Pgsafe%sRecords" % name, actions["records"],
                                     [objects_arn(bucket, prefix, partition, "*/verify/*")]))
    if actions.get("list"):
        statements.append(_statement("Pgsafe%sList" % name, ["s3:ListBucket"], [bucket_arn(bucket, partition)],
                                     _list_condition(prefix)))
    if actions.get("bucket"):
        statements.append(_statement("Pgsafe%sUploads" % name, actions["bucket"], [bucket_arn(bucket, partition)]))
    if KMS_ACTIONS[role] and kms_key_arns:
        statements.append(_statement("Pgsafe%sKms" % name, KMS_ACTIONS[role], list(kms_key_arns)))
    if SSE_KMS_ACTIONS[role] and sse_kms_key_arns:
        statements.append(_statement("Pgsafe%sBucketKms" % name, SSE_KMS_ACTIONS[role], list(sse_kms_key_arns)))
    return statements


def _merge(statements: list[dict]) -> list[dict]:
    """One statement per (resource, condition): the union of the roles' actions, first Sid kept."""
    merged: dict[str, dict] = {}
    for statement in statements:
        key = json.dumps([statement["Resource"], statement.get("Condition")], sort_keys=True)
        if key in merged:
            merged[key]["Action"] = sorted(set(merged[key]["Action"]) | set(statement["Action"]))
        else:
            merged[key] = copy.deepcopy(statement)
    return list(merged.values())


def least_privilege_policy(roles, bucket: str, prefix: str | None = "", kms_key_arns=(), sse_kms_key_arns=()) -> dict:
    """The IAM policy document for one or more roles on one repository (bucket + prefix)."""
    roles = normalize_roles(roles)
    bucket = check_bucket(bucket)
    prefix = check_prefix(prefix)
    kms_key_arns = check_kms_key_arns(kms_key_arns)
    sse_kms_key_arns = check_kms_key_arns(sse_kms_key_arns, "sse_kms_key_arns")
    partition = partition_of(kms_key_arns + sse_kms_key_arns)
    statements = []
    for role in roles:
        statements.extend(role_statements(role, bucket, prefix, kms_key_arns, sse_kms_key_arns, partition))
    if len(roles) > 1:
        statements = _drop_redundant(_merge(statements))
        for statement in statements:
            # A merged statement serves several roles: name it after what it grants.
            statement["Sid"] = re.sub(r"^Pgsafe[A-Z][a-z]+", "Pgsafe", statement["Sid"])
        _unique_sids(statements)
    return {"Version": POLICY_VERSION, "Statement": statements}


def _drop_redundant(statements: list[dict]) -> list[dict]:
    """Drop a statement whose every grant another unconditional statement already makes (the
    verifier's records when the writer may put anywhere below the prefix)."""
    kept = list(statements)
    for statement in statements:
        others = [other for other in kept if other is not statement and not other.get("Condition")]
        if statement.get("Condition") or not others:
            continue
        if all(any(_covers(other, action, resource) for other in others)
               for action in _as_list(statement["Action"]) for resource in _as_list(statement["Resource"])):
            kept.remove(statement)
    return kept


def _unique_sids(statements: list[dict]) -> None:
    seen: dict[str, int] = {}
    for statement in statements:
        sid = statement["Sid"]
        seen[sid] = seen.get(sid, 0) + 1
        if seen[sid] > 1:
            statement["Sid"] = "%s%d" % (sid, seen[sid])


def policies_by_role(roles, bucket: str, prefix: str | None = "", kms_key_arns=(), sse_kms_key_arns=()) -> dict:
    """One document per role (for one IAM policy per job template or host class)."""
    return {role: least_privilege_policy([role], bucket, prefix, kms_key_arns, sse_kms_key_arns)
            for role in normalize_roles(roles)}


# --- comparison ---------------------------------------------------------------------------

def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _wildcard_regex(pattern: str, ignore_case: bool) -> re.Pattern:
    # IAM wildcards: '*' any run of characters, '?' one character; nothing else is special.
    text = "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.compile("^%s$" % text, re.IGNORECASE if ignore_case else 0)


def wildcard_match(text: str, pattern: str, ignore_case: bool = False) -> bool:
    """True when ``pattern`` (IAM wildcards) matches ``text``. A '*' in ``text`` is a literal, so
    matching a required pattern against a granted one tells whether the grant covers it."""
    return bool(_wildcard_regex(pattern, ignore_case).match(text))


def parse_document(document, source: str = "policy") -> dict:
    """A policy document from a dict or a JSON string (IAM returns both shapes)."""
    if isinstance(document, (bytes, bytearray)):
        document = document.decode("utf-8")
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:
            import urllib.parse

            try:
                document = json.loads(urllib.parse.unquote(document))
            except ValueError as exc:
                raise ConfigError("%s is not a JSON policy document (%s)" % (source, exc), where=source,
                                  fix="give the policy document as a mapping or a JSON string") from None
    if not isinstance(document, dict) or "Statement" not in document:
        raise ConfigError("%s has no Statement" % source, where=source,
                          fix="give a whole IAM policy document: {Version: '2012-10-17', Statement: [...]}")
    return document


def _statements(document: dict) -> list[dict]:
    return [statement for statement in _as_list(document.get("Statement")) if isinstance(statement, dict)]


def required_permissions(policy: dict) -> list[dict]:
    """Every (action, resource) pair a least-privilege document grants, with its condition."""
    pairs = []
    for statement in _statements(policy):
        for action in _as_list(statement.get("Action")):
            for resource in _as_list(statement.get("Resource")):
                pairs.append({"action": action, "resource": resource, "condition": statement.get("Condition"),
                              "sid": statement.get("Sid")})
    return pairs


def _covers(statement: dict, action: str, resource: str) -> bool:
    actions = _as_list(statement.get("Action"))
    not_actions = _as_list(statement.get("NotAction"))
    if actions:
        action_ok = any(wildcard_match(action, pattern, ignore_case=True) for pattern in actions)
    elif not_actions:
        action_ok = not any(wildcard_match(action, pattern, ignore_case=True) for pattern in not_actions)
    else:
        action_ok = False
    if not action_ok:
        return False
    resources = _as_list(statement.get("Resource"))
    not_resources = _as_list(statement.get("NotResource"))
    if resources:
        return any(wildcard_match(resource, pattern) for pattern in resources)
    if not_resources:
        return not any(wildcard_match(resource, pattern) for pattern in not_resources)
    return False


def _needed_resources(required: list[dict], action: str) -> list[str]:
    return [pair["resource"] for pair in required if pair["action"].lower() == action.lower()]


def _has_prefix_condition(statement: dict) -> bool:
    for values in (statement.get("Condition") or {}).values():
        if isinstance(values, dict) and any(key.lower() == "s3:prefix" for key in values):
            return True
    return False


def compare_policies(documents: list, least_privilege: dict) -> dict:
    """Compare the policies in use (``[(name, document), ...]``) with the least-privilege one.

    ``missing``: a needed (action, resource) that no Allow grants, or that an unconditional Deny
    refuses. ``excess``: grants beyond the need - wildcard or unneeded actions, resources wider
    than the repository's, NotAction/NotResource allows, a listing without the prefix condition.
    Conditions on Allow statements are not evaluated (they can only narrow a grant).
    """
    required = required_permissions(least_privilege)
    needed_actions = {pair["action"].lower(): pair["action"] for pair in required}
    prefix_limited = {pair["resource"] for pair in required if pair["action"] == "s3:ListBucket" and pair["condition"]}
    allows, denies = [], []
    for name, document in documents:
        for index, statement in enumerate(_statements(parse_document(document, name))):
            label = "%s: %s" % (name, statement.get("Sid") or "statement %d" % (index + 1))
            (denies if statement.get("Effect") == "Deny" else allows).append((label, statement))

    missing = []
    for pair in required:
        granted = any(_covers(statement, pair["action"], pair["resource"]) for _label, statement in allows)
        denied = [label for label, statement in denies
                  if not statement.get("Condition") and _covers(statement, pair["action"], pair["resource"])]
        if not granted or denied:
            missing.append({"action": pair["action"], "resource": pair["resource"],
                            "problem": "denied by %s" % ", ".join(denied) if denied else "not granted"})

    excess = []

    def flag(label, problem, action=None, resource=None):
        excess.append({"statement": label, "action": action, "resource": resource, "problem": problem})

    for label, statement in allows:
        if statement.get("NotAction"):
            flag(label, "NotAction in an Allow grants every other action of every service")
        if statement.get("NotResource"):
            flag(label, "NotResource in an Allow grants every other resource")
        resources = _as_list(statement.get("Resource"))
        for action in _as_list(statement.get("Action")):
            if "*" in action or "?" in action:
                named = [danger for danger in DANGEROUS_ACTIONS if wildcard_match(danger, action, ignore_case=True)]
                flag(label, "wildcard action grants more than pgsafe calls%s" % (
                    " (including %s)" % ", ".join(named[:4]) if named else ""), action=action)
                continue
            if action.lower() not in needed_actions:
                flag(label, "not needed by the pgsafe role(s) checked", action=action)
                continue
            allowed = _needed_resources(required, action)
            for resource in resources:
                if not any(wildcard_match(resource, pattern) for pattern in allowed):
                    flag(label, "resource is wider than the repository needs (least privilege: %s)"
                         % ", ".join(sorted(set(allowed))), action=action, resource=resource)
                elif (action.lower() == "s3:listbucket" and resource in prefix_limited
                      and not _has_prefix_condition(statement)):
                    flag(label, "lists the whole bucket: add the s3:prefix condition of the least-privilege "
                         "policy", action=action, resource=resource)
    return {"ok": not missing and not excess, "missing": missing, "excess": excess,
            "statements_checked": len(allows) + len(denies)}


# --- settings -----------------------------------------------------------------------------

def s3_targets(settings: dict) -> list[dict]:
    """The S3 repositories of a pgsafe settings dict (repository, then copies), with the key ARNs
    a policy needs: ``[{bucket, prefix, kms_key_arns, sse_kms_key_arns, where}]``."""
    kms_key_ids = list(((settings or {}).get("encryption") or {}).get("kms_key_ids") or [])
    targets = []
    specs = [("repository", (settings or {}).get("repository"))]
    specs += [("copies[%d]" % index, spec) for index, spec in enumerate((settings or {}).get("copies") or [])]
    for where, spec in specs:
        if not isinstance(spec, dict):
            continue
        if (spec.get("type") or ("s3" if spec.get("bucket") else "filesystem")) != "s3":
            continue
        targets.append({"bucket": spec.get("bucket"), "prefix": spec.get("prefix") or "", "where": where,
                        "kms_key_arns": kms_key_ids,
                        "sse_kms_key_arns": [spec["sse_kms_key_id"]] if spec.get("sse_kms_key_id") else []})
    return targets
