# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The quarterly audit (the seeds' "End of Quarter Backup Audit") as one read-only pass.

For one cluster it proves, from the repositories themselves:

coverage     every database on the server (or the ones named) has a complete backup younger
             than ``max_age_hours`` and a backup that passed verification younger than
             ``verified_max_age_hours``; a physical backup covers every database. The newest
             backup must also be present in each copy.
retention    the prune plan of each repository expires nothing (nothing overdue for deletion)
             and every group holds at least ``min_keep`` complete backups.
encryption   every manifest in every repository records envelope encryption with a key.
s3           for each S3 repository: default bucket encryption, a public access block with
             all four settings on, versioning, Object Lock.
iam          the IAM policy in use (documents given, or the attached and inline policies of
             the caller or of a named principal, read through IAM) against the least-privilege
             policy of the roles the host plays (iam_policy.py).

Each problem is a finding ``{check, severity, subject, repository, message, fix}``. Severity
``critical`` means the backups cannot be trusted (missing, stale, unverified, failed
verification, unencrypted, or the audit could not read the repository); everything else is a
``warning``. Nothing is written anywhere: the audit runs the same in check mode.
"""

from __future__ import annotations

import datetime
import fnmatch

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import group_name, list_backups
from ansible_collections.pgsafe.backup.plugins.module_utils.config import merged_aws
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.iam_policy import (
    KMS_KEY_ARN_RE, compare_policies, least_privilege_policy, normalize_roles, parse_document)
from ansible_collections.pgsafe.backup.plugins.module_utils.retention import records_from_catalog
from ansible_collections.pgsafe.backup.plugins.module_utils.retention_policy import RetentionPolicy, plan

SEVERITIES = ("critical", "warning")
WHOLE_CLUSTER_TYPES = ("full", "incremental")
DEFAULT_MAX_AGE_HOURS = 25.0
# A daily backup at 01:00 verified at 08:00 leaves the newest verified backup up to ~31 h
# old just before the next verification; 49 h tolerates one missed verification run.
DEFAULT_VERIFIED_MAX_AGE_HOURS = 49.0
S3_CHECKS = ("default_encryption", "public_access_block", "versioning", "object_lock")
PUBLIC_ACCESS_SETTINGS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
# The call each S3 check makes, and the permission an auditor needs for it.
S3_CHECK_CALLS = {
    "default_encryption": ("get_bucket_encryption", "s3:GetEncryptionConfiguration"),
    "public_access_block": ("get_public_access_block", "s3:GetBucketPublicAccessBlock"),
    "versioning": ("get_bucket_versioning", "s3:GetBucketVersioning"),
    "object_lock": ("get_object_lock_configuration", "s3:GetBucketObjectLockConfiguration"),
}
# What each check's "not configured" error code means.
S3_ABSENT_CODES = {
    "default_encryption": "ServerSideEncryptionConfigurationNotFoundError",
    "public_access_block": "NoSuchPublicAccessBlockConfiguration",
    "object_lock": "ObjectLockConfigurationNotFoundError",
}


def finding(check: str, severity: str, subject: str | None, message: str, fix: str | None = None,
            repository: str | None = None) -> dict:
    return {"check": check, "severity": severity, "subject": subject, "repository": repository,
            "message": message, "fix": fix}


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(text: str | None) -> str | None:
    """Manifest times to the second: reports read better and compare equal across runs."""
    return (text[:19] + "Z") if text else None


def _positive(value, option: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or number <= 0:
        raise ConfigError("%s must be a positive number of hours, not %r" % (option, value), where=option,
                          fix="e.g. %s: 25" % option)
    return number


# --- coverage -----------------------------------------------------------------------------

def expected_databases(context, databases, exclude, findings: list, seen: list[str]) -> list[str]:
    """The databases that must be covered: the server's (for 'all') or the ones named."""
    databases = list(databases or ["all"])
    if databases not in (["all"], ["*"]):
        names = databases
    else:
        from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import list_databases

        try:
            names = list_databases(context.postgres)
        except PgsafeError as exc:
            findings.append(finding("coverage", "critical", None,
                                    "cannot list the databases of %s: %s" % (context.postgres.where, exc.message),
                                    "give the audit a working connection (login_host, port, login_user) or name "
                                    "the databases in databases"))
            names = seen  # still audit what the backups hold
    return [name for name in names if not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude or [])]


def check_coverage(context, complete: list[dict], databases: list[str], max_age_hours: float,
                   verified_max_age_hours: float, copies: list, findings: list) -> list[dict]:
    repository = context.repository.describe()
    coverage = []
    for database in databases:
        covering = [entry for entry in complete
                    if database in (entry.get("databases") or []) or entry["type"] in WHOLE_CLUSTER_TYPES]
        verified = [entry for entry in covering if (entry.get("verification") or {}).get("ok")]
        newest = covering[-1] if covering else None
        newest_verified = verified[-1] if verified else None
        row = {"database": database, "newest_backup_id": newest and newest["backup_id"],
               "newest_finished_at": newest and _short(newest["finished_at"]),
               "newest_verified_backup_id": newest_verified and newest_verified["backup_id"],
               "newest_verified_finished_at": newest_verified and _short(newest_verified["finished_at"]),
               "fresh": False, "verified": False, "problems": []}
        if newest is None:
            row["problems"].append("missing")
            findings.append(finding("coverage", "critical", database,
                                    "database %s has no complete backup in %s" % (database, repository),
                                    "add it to the backup (pgsafe_databases) and run backup.yml", repository))
            coverage.append(row)
            continue
        row["fresh"] = newest["age_seconds"] <= max_age_hours * 3600
        if not row["fresh"]:
            row["problems"].append("stale")
            findings.append(finding("freshness", "critical", database,
                                    "newest backup of database %s (%s) finished %s, more than %g hours ago"
                                    % (database, newest["backup_id"], row["newest_finished_at"], max_age_hours),
                                    "check the backup schedule and the last backup run's log; run backup.yml",
                                    repository))
        row["verified"] = bool(newest_verified and
                               newest_verified["age_seconds"] <= verified_max_age_hours * 3600)
        if not row["verified"]:
            row["problems"].append("unverified")
            findings.append(finding("verification", "critical", database,
                                    "database %s has no backup younger than %g hours that passed verification "
                                    "(newest verified: %s)" % (database, verified_max_age_hours,
                                                               row["newest_verified_backup_id"] or "none"),
                                    "run verify_daily.yml and fix what it reports", repository))
        last_check = newest.get("verification")
        if last_check and not last_check.get("ok"):
            row["problems"].append("verification_failed")
            findings.append(finding("verification", "critical", database,
                                    "the newest backup of database %s (%s) failed verification at %s"
                                    % (database, newest["backup_id"], _short(last_check.get("at"))),
                                    "read the verification record (%s/verify/%s.json) and take a new backup"
                                    % (context.cluster, newest["backup_id"]), repository))
        row["missing_from_copies"] = []
        for copy in copies:
            try:
                present = copy.stat(mf.manifest_key(context.cluster, newest["backup_id"])) is not None
            except PgsafeError as exc:
                findings.append(finding("copies", "warning", database, "cannot check the copy %s: %s"
                                        % (copy.describe(), exc.message), None, copy.describe()))
                continue
            if not present:
                row["missing_from_copies"].append(copy.describe())
                findings.append(finding("copies", "warning", database,
                                        "the newest backup of database %s (%s) is missing from the copy %s"
                                        % (database, newest["backup_id"], copy.describe()),
                                        "run the sync (pgsafe sync --mode push, or the backup role with "
                                        "pgsafe_copies)", copy.describe()))
        coverage.append(row)
    return coverage


# --- retention and encryption ---------------------------------------------------------------

def check_retention(repository, cluster: str, entries: list[dict], policy: RetentionPolicy,
                    now: datetime.datetime, findings: list) -> dict:
    where = repository.describe()
    retention_plan = plan(records_from_catalog(entries), policy, now)
    overdue = [decision.backup_id for decision in retention_plan.deleted]
    for decision in retention_plan.deleted:
        findings.append(finding("retention", "warning", decision.backup_id,
                                "backup %s should have been deleted: %s" % (decision.backup_id,
                                                                            "; ".join(decision.reasons)),
                                "run cleanup.yml (or pgsafe prune) on %s" % where, where))
    groups: dict[str, int] = {}
    for entry in entries:
        if entry["status"] == "complete":
            name = group_name(entry["type"], entry.get("databases") or [])
            groups[name] = groups.get(name, 0) + 1
    short = {name: count for name, count in sorted(groups.items()) if count < policy.min_keep}
    for name, count in short.items():
        findings.append(finding("min_keep", "warning", name,
                                "group %s has %d complete backup(s) in %s, fewer than min_keep %d"
                                % (name, count, where, policy.min_keep),
                                "let the schedule take more backups, or check why older ones are gone", where))
    return {"repository": where, "policy": policy.to_dict(), "complete_per_group": dict(sorted(groups.items())),
            "overdue": overdue, "min_keep_short": sorted(short), "ok": not overdue and not short}


def check_encryption(repository, entries: list[dict], findings: list) -> dict:
    where = repository.describe()
    unencrypted = []
    checked = 0
    for entry in entries:
        if entry["status"] != "complete":
            continue
        checked += 1
        encryption = (entry.get("manifest") or {}).get("encryption") or {}
        if encryption.get("format") in (None, "none") or not encryption.get("keys"):
            unencrypted.append(entry["backup_id"])
            findings.append(finding("encryption", "critical", entry["backup_id"],
                                    "backup %s is not encrypted (manifest encryption: %s)"
                                    % (entry["backup_id"], encryption.get("format") or "absent"),
                                    "configure encryption (key_files and/or kms_key_ids; never mode none), take a "
                                    "new backup, and delete this one once a new one is verified", where))
    return {"repository": where, "manifests": checked, "unencrypted": unencrypted}


# --- S3 bucket settings ---------------------------------------------------------------------

def _error_code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")) or type(exc).__name__


def check_s3_bucket(repository, requirements: dict, findings: list) -> dict:
    """Bucket settings of one S3 repository; every unmet requirement is a warning."""
    where = repository.describe()
    bucket = repository.bucket
    result = {"repository": where, "bucket": bucket}
    for check in S3_CHECKS:
        if not requirements.get(check, True):
            continue
        call, permission = S3_CHECK_CALLS[check]
        try:
            answer = getattr(repository.client, call)(Bucket=bucket)
        except Exception as exc:  # pylint: disable=broad-except  # botocore errors and connection failures alike
            code = _error_code(exc)
            if code == S3_ABSENT_CODES.get(check):
                answer = None
            else:
                result[check] = {"ok": False, "error": code}
                fix = ("grant %s on arn:aws:s3:::%s to the auditing credentials" % (permission, bucket)
                       if code in ("AccessDenied", "403") else "check the endpoint and the credentials")
                findings.append(finding("s3_" + check, "warning", bucket, "cannot read the %s of bucket %s: %s"
                                        % (check.replace("_", " "), bucket, code), fix, where))
                continue
        result[check] = _judge_s3(check, bucket, answer, findings, where)
    return result


def _judge_s3(check: str, bucket: str, answer: dict | None, findings: list, where: str) -> dict:
    if check == "default_encryption":
        rules = ((answer or {}).get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
        defaults = [rule.get("ApplyServerSideEncryptionByDefault") or {} for rule in rules]
        algorithms = sorted({item.get("SSEAlgorithm") for item in defaults if item.get("SSEAlgorithm")})
        state = {"ok": bool(algorithms), "algorithms": algorithms,
                 "kms_key_ids": sorted({item["KMSMasterKeyID"] for item in defaults if item.get("KMSMasterKeyID")})}
        if not state["ok"]:
            findings.append(finding("s3_default_encryption", "warning", bucket,
                                    "bucket %s has no default encryption" % bucket,
                                    "aws s3api put-bucket-encryption --bucket %s --server-side-encryption-"
                                    "configuration '{\"Rules\":[{\"ApplyServerSideEncryptionByDefault\":"
                                    "{\"SSEAlgorithm\":\"aws:kms\"}}]}'" % bucket, where))
        return state
    if check == "public_access_block":
        settings = (answer or {}).get("PublicAccessBlockConfiguration") or {}
        off = [name for name in PUBLIC_ACCESS_SETTINGS if not settings.get(name)]
        state = {"ok": not off, "settings_off": off}
        if off:
            findings.append(finding("s3_public_access_block", "warning", bucket,
                                    "bucket %s does not block public access (off: %s)" % (bucket, ", ".join(off)),
                                    "aws s3api put-public-access-block --bucket %s --public-access-block-"
                                    "configuration BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,"
                                    "RestrictPublicBuckets=true" % bucket, where))
        return state
    if check == "versioning":
        status = (answer or {}).get("Status") or "never enabled"
        state = {"ok": status == "Enabled", "status": status}
        if not state["ok"]:
            findings.append(finding("s3_versioning", "warning", bucket,
                                    "bucket %s has versioning %s" % (bucket, status),
                                    "aws s3api put-bucket-versioning --bucket %s --versioning-configuration "
                                    "Status=Enabled (with a lifecycle rule that expires noncurrent versions)"
                                    % bucket, where))
        return state
    configuration = (answer or {}).get("ObjectLockConfiguration") or {}
    retention = (configuration.get("Rule") or {}).get("DefaultRetention") or {}
    state = {"ok": configuration.get("ObjectLockEnabled") == "Enabled",
             "default_retention": {key: value for key, value in retention.items() if value} or None}
    if not state["ok"]:
        findings.append(finding("s3_object_lock", "warning", bucket,
                                "bucket %s does not have Object Lock enabled" % bucket,
                                "Object Lock can only be enabled with versioning: enable it (aws s3api "
                                "put-object-lock-configuration) and set repository.object_lock_mode/"
                                "object_lock_days", where))
    return state


# --- IAM ----------------------------------------------------------------------------------

def _principal(arn: str) -> tuple[str, str]:
    """('user', name) or ('role', name) from a user, role or assumed-role ARN."""
    resource = arn.split(":", 5)[-1] if arn.count(":") >= 5 else ""
    kind, _sep, rest = resource.partition("/")
    if kind == "user" and rest:
        return "user", rest.rsplit("/", 1)[-1]
    if kind == "role" and rest:
        return "role", rest.rsplit("/", 1)[-1]
    if kind == "assumed-role" and rest:
        return "role", rest.split("/", 1)[0]
    raise ConfigError("cannot tell an IAM user or role from %r" % arn, where="iam.principal_arn",
                      fix="give a user or role ARN (arn:aws:iam::ACCOUNT:user/NAME or role/NAME), or "
                      "iam.policy_documents")


def _paginate(client, call: str, key: str, **arguments) -> list:
    items = []
    for page in client.get_paginator(call).paginate(**arguments):
        items.extend(page.get(key) or [])
    return items


def fetch_policies(iam_client, kind: str, name: str) -> list[tuple[str, object]]:
    """Managed (default version) and inline policies of a user (and its groups) or a role."""
    documents = []

    def managed(attached):
        for policy in attached:
            meta = iam_client.get_policy(PolicyArn=policy["PolicyArn"])["Policy"]
            version = iam_client.get_policy_version(PolicyArn=policy["PolicyArn"],
                                                    VersionId=meta["DefaultVersionId"])
            documents.append((policy["PolicyArn"], version["PolicyVersion"]["Document"]))

    if kind == "user":
        managed(_paginate(iam_client, "list_attached_user_policies", "AttachedPolicies", UserName=name))
        for policy_name in _paginate(iam_client, "list_user_policies", "PolicyNames", UserName=name):
            document = iam_client.get_user_policy(UserName=name, PolicyName=policy_name)["PolicyDocument"]
            documents.append(("user %s inline %s" % (name, policy_name), document))
        for group in _paginate(iam_client, "list_groups_for_user", "Groups", UserName=name):
            group_name_ = group["GroupName"]
            managed(_paginate(iam_client, "list_attached_group_policies", "AttachedPolicies", GroupName=group_name_))
            for policy_name in _paginate(iam_client, "list_group_policies", "PolicyNames", GroupName=group_name_):
                document = iam_client.get_group_policy(GroupName=group_name_, PolicyName=policy_name)["PolicyDocument"]
                documents.append(("group %s inline %s" % (group_name_, policy_name), document))
    else:
        managed(_paginate(iam_client, "list_attached_role_policies", "AttachedPolicies", RoleName=name))
        for policy_name in _paginate(iam_client, "list_role_policies", "PolicyNames", RoleName=name):
            document = iam_client.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
            documents.append(("role %s inline %s" % (name, policy_name), document))
    return documents


def _aws_session(settings: dict, iam_spec: dict):
    from ansible_collections.pgsafe.backup.plugins.module_utils.errors import missing_python_package

    try:
        import boto3
    except ImportError as exc:
        raise missing_python_package("boto3", str(exc)) from None
    # The audit's own credentials, else those of the first S3 repository, else the AWS chain.
    source = next((spec for spec in [settings.get("repository")] + list(settings.get("copies") or [])
                   if isinstance(spec, dict) and spec.get("bucket")), {})
    aws = merged_aws(settings, source)
    aws.update({key: value for key, value in merged_aws({}, iam_spec).items() if value})
    kwargs = {}
    if aws.get("access_key") and aws.get("secret_key"):
        kwargs.update(aws_access_key_id=aws["access_key"], aws_secret_access_key=aws["secret_key"],
                      aws_session_token=aws.get("session_token") or None)
    if aws.get("profile"):
        kwargs["profile_name"] = aws["profile"]
    kwargs["region_name"] = aws.get("region") or "us-east-1"
    return boto3.session.Session(**kwargs)


def check_iam(settings: dict, s3_repositories: list, iam_spec: dict, findings: list) -> dict:
    roles = normalize_roles(iam_spec.get("roles") or ["host"])
    kms_key_ids = list((settings.get("encryption") or {}).get("kms_key_ids") or [])
    kms_arns = []
    for key_id in kms_key_ids:
        match = KMS_KEY_ARN_RE.match(str(key_id))
        if match and match.group("kind") == "key":
            kms_arns.append(key_id)
        else:
            findings.append(finding("iam", "warning", str(key_id),
                                    "KMS key %s is not a key ARN: its grants cannot be compared" % key_id,
                                    "list full key ARNs in encryption.kms_key_ids"))
    statements = []
    for repository in s3_repositories:
        sse = [repository.sse_kms_key_id] if (repository.sse_kms_key_id or "").startswith("arn:") else []
        statements.extend(least_privilege_policy(roles, repository.bucket, repository.prefix, kms_arns,
                                                 sse)["Statement"])
    least = {"Version": "2012-10-17", "Statement": statements}
    result = {"roles": roles, "least_privilege": least, "principal": None, "policies": [], "missing": [],
              "excess": []}
    documents = [("policy_documents[%d]" % index, parse_document(document, "iam.policy_documents[%d]" % index))
                 for index, document in enumerate(iam_spec.get("policy_documents") or [])]
    if not documents:
        if not (iam_spec.get("from_caller") or iam_spec.get("principal_arn")):
            raise ConfigError("the IAM check has nothing to compare", where="iam",
                              fix="give iam.policy_documents, iam.principal_arn, or iam.from_caller: true")
        try:
            session = _aws_session(settings, iam_spec)
            endpoint = iam_spec.get("endpoint_url") or None
            principal = iam_spec.get("principal_arn")
            if not principal:
                principal = session.client("sts", endpoint_url=endpoint).get_caller_identity()["Arn"]
            result["principal"] = principal
            kind, name = _principal(principal)
            documents = fetch_policies(session.client("iam", endpoint_url=endpoint), kind, name)
        except PgsafeError:
            raise
        except Exception as exc:  # pylint: disable=broad-except  # botocore errors and connection failures alike
            findings.append(finding("iam", "warning", result["principal"],
                                    "cannot read the IAM policies in use: %s" % _error_code(exc),
                                    "allow the auditing credentials iam:List*Policies, iam:GetPolicy, "
                                    "iam:GetPolicyVersion, iam:Get*Policy and iam:ListGroupsForUser, or give "
                                    "iam.policy_documents"))
            result["error"] = _error_code(exc)
            return result
    result["policies"] = [name for name, _document in documents]
    comparison = compare_policies(documents, least)
    result.update(missing=comparison["missing"], excess=comparison["excess"], ok=comparison["ok"])
    fix = "use the policy from `pgsafe iam-policy --role %s` (docs/iam.md)" % " --role ".join(roles)
    for item in comparison["missing"]:
        findings.append(finding("iam_missing", "warning", item["action"], "%s on %s is %s"
                                % (item["action"], item["resource"], item["problem"]), fix))
    for item in comparison["excess"]:
        findings.append(finding("iam_excess", "warning", item["action"] or item["statement"], "%s: %s%s%s" % (
            item["statement"], item["problem"], (" [%s]" % item["action"]) if item["action"] else "",
            (" on %s" % item["resource"]) if item["resource"] else ""), fix))
    return result


# --- the audit ------------------------------------------------------------------------------

def audit(context, copies=None, databases=None, exclude_databases=None, max_age_hours=DEFAULT_MAX_AGE_HOURS,
          verified_max_age_hours=DEFAULT_VERIFIED_MAX_AGE_HOURS, retention=None, require_encryption=True,
          s3_checks=None, iam=None, now=None) -> dict:
    """Audit one cluster: coverage, retention, encryption, S3 settings, IAM. Read-only."""
    now = now or mf.utcnow()
    max_age_hours = _positive(max_age_hours, "max_age_hours")
    verified_max_age_hours = _positive(verified_max_age_hours, "verified_max_age_hours")
    policy = RetentionPolicy.from_spec(retention) if retention else None
    copies = list(copies or [])
    findings: list[dict] = []
    result = {"cluster": context.cluster, "audited_at": _iso(now), "repository": context.repository.describe(),
              "copies": [copy.describe() for copy in copies], "coverage": [], "retention": [], "encryption": [],
              "s3": [], "iam": None}

    catalogs = {}
    for repository in [context.repository] + copies:
        try:
            catalogs[repository.describe()] = list_backups(repository, context.cluster, with_manifests=True, now=now)
        except PgsafeError as exc:
            findings.append(finding("repository", "critical", None, "cannot read %s: %s"
                                    % (repository.describe(), exc.message), exc.fix, repository.describe()))
    entries = catalogs.get(context.repository.describe(), [])
    complete = [entry for entry in entries if entry["status"] == "complete"]
    seen = sorted({name for entry in complete for name in entry.get("databases") or []})
    if context.repository.describe() in catalogs:
        expected = expected_databases(context, databases, exclude_databases, findings, seen)
        result["databases"] = expected
        result["coverage"] = check_coverage(context, complete, expected, max_age_hours, verified_max_age_hours,
                                            [copy for copy in copies if copy.describe() in catalogs], findings)
    for repository in [context.repository] + copies:
        repo_entries = catalogs.get(repository.describe())
        if repo_entries is None:
            continue
        if policy is not None:
            result["retention"].append(check_retention(repository, context.cluster, repo_entries, policy, now,
                                                       findings))
        if require_encryption:
            result["encryption"].append(check_encryption(repository, repo_entries, findings))
    s3_repositories = [repository for repository in [context.repository] + copies if repository.kind == "s3"]
    requirements = dict.fromkeys(S3_CHECKS, True)
    requirements.update({key: bool(value) for key, value in (s3_checks or {}).items() if value is not None})
    for repository in s3_repositories:
        result["s3"].append(check_s3_bucket(repository, requirements, findings))
    if iam and s3_repositories:
        result["iam"] = check_iam(context.settings, s3_repositories, iam, findings)

    result["findings"] = findings
    result["critical_count"] = sum(1 for item in findings if item["severity"] == "critical")
    result["warning_count"] = sum(1 for item in findings if item["severity"] == "warning")
    result["ok"] = result["critical_count"] == 0
    result["flagged_databases"] = sorted({row["database"] for row in result["coverage"] if row["problems"]})
    result["summary"] = summary(result)
    return result


def summary(result: dict) -> str:
    head = "%s: cluster %s, %d database(s) audited, %d critical, %d warning(s)" % (
        "OK" if result["ok"] else "FAILED", result["cluster"], len(result.get("databases") or []),
        result["critical_count"], result["warning_count"])
    lines = [head]
    for item in result["findings"]:
        lines.append("  [%s] %s: %s" % (item["severity"], item["check"], item["message"]))
    return "\n".join(lines)
