#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module backup_audit: the quarterly audit of one cluster's backups (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_audit
short_description: Audit a cluster's backups - coverage, freshness, verification, retention, encryption, S3, IAM
version_added: 0.1.0
description:
  - The runbooks' quarterly audit as one read-only pass over the repository and its copies. Every problem is
    returned as a finding naming the check, the subject (database, backup, bucket, action), the message and the
    fix.
  - B(Coverage) - every database of the server (or those in O(databases)) has a complete backup younger than
    O(max_age_hours), and a backup that passed verification younger than O(verified_max_age_hours). A physical
    backup covers every database. The newest backup of each database must also be in every copy.
  - B(Retention) - with O(retention), the prune plan of each repository expires nothing (nothing overdue for
    deletion) and every group keeps at least O(retention.min_keep) complete backups.
  - B(Encryption) - every manifest in every repository records envelope encryption with at least one key.
  - B(S3) - for each S3 repository, the bucket's default encryption, public access block (all four settings),
    versioning and Object Lock, each of which O(s3_checks) can turn off.
  - B(IAM) - with O(iam), the policies in use (given documents, or the managed and inline policies of the
    caller or of O(iam.principal_arn), read through IAM) are compared with the least-privilege policy of
    O(iam.roles) for these repositories and keys; missing grants and grants beyond the need are findings.
  - Severity V(critical) marks backups that cannot be trusted (missing, stale, unverified, failed
    verification, unencrypted, or a repository the audit could not read); every other finding is a V(warning).
    RV(ok) is false when there is a critical finding. The module itself fails only when the audit cannot run
    (bad options); decide in the play what fails a host (the C(audit_quarterly.yml) playbook does).
options:
  databases:
    description:
      - Databases that must be covered. V(all) means every connectable, non-template database of the server
        (which needs the connection options).
    type: list
    elements: str
    default: [all]
  exclude_databases:
    description: Shell-style patterns of databases that need no backup (for example V(scratch_*)).
    type: list
    elements: str
    default: []
  max_age_hours:
    description: The newest backup of each database must be younger than this.
    type: float
    default: 25
  verified_max_age_hours:
    description:
      - Each database needs a backup younger than this that passed verification. A daily backup verified each
        morning leaves the newest verified backup up to about 31 hours old; 49 tolerates one missed run.
    type: float
    default: 49
  retention:
    description:
      - The retention policy to check compliance with (the shape of M(pgsafe.backup.retention_prune)'s
        O(pgsafe.backup.retention_prune#module:policy)). Unset skips the retention check.
    type: dict
    suboptions:
      keep_last:
        description: Keep the newest N complete backups of each group.
        type: int
      keep_daily:
        description: Keep the newest backup of each of the last N days that have one.
        type: int
      keep_weekly:
        description: Keep the newest backup of each of the last N ISO weeks that have one.
        type: int
      keep_monthly:
        description: Keep the newest backup of each of the last N months that have one.
        type: int
      keep_yearly:
        description: Keep the newest backup of each of the last N years that have one.
        type: int
      min_keep:
        description: Each group must hold at least this many complete backups.
        type: int
        default: 1
      max_age:
        description: Ceiling for the keep rules (for example V(400d)).
        type: str
      incomplete_grace:
        description: An incomplete backup older than this is overdue for deletion.
        type: str
        default: 24h
  require_encryption:
    description: Check that every manifest records encryption (an unencrypted backup is a critical finding).
    type: bool
    default: true
  s3_checks:
    description: Which bucket settings each S3 repository must have.
    type: dict
    suboptions:
      default_encryption:
        description: Default (server-side) bucket encryption.
        type: bool
        default: true
      public_access_block:
        description: A public access block with BlockPublicAcls, IgnorePublicAcls, BlockPublicPolicy and
          RestrictPublicBuckets all on.
        type: bool
        default: true
      versioning:
        description: Versioning enabled.
        type: bool
        default: true
      object_lock:
        description: Object Lock enabled.
        type: bool
        default: true
  iam:
    description:
      - Compare the IAM policy in use with the least-privilege one (see C(pgsafe iam-policy) and docs/iam.md).
        Unset skips the check; it applies only when a repository or copy is in S3.
      - Credentials for IAM and STS are these suboptions', else those of the first S3 repository, else the
        standard AWS chain (environment, profile, instance role).
    type: dict
    suboptions:
      roles:
        description: The pgsafe roles these credentials play; V(host) is writer, verifier and pruner.
        type: list
        elements: str
        choices: [host, writer, verifier, restorer, pruner]
        default: [host]
      policy_documents:
        description: Policy documents in use (mappings or JSON strings). When set, IAM is not queried.
        type: list
        elements: raw
      from_caller:
        description: Read the managed and inline policies (and those of its groups) of the identity that the
          credentials belong to (STS GetCallerIdentity).
        type: bool
        default: false
      principal_arn:
        description: Read the policies of this IAM user or role instead of the caller's.
        type: str
      endpoint_url:
        description: IAM and STS endpoint URL (a test server). Unset for AWS.
        type: str
      access_key:
        description: AWS access key id for IAM and STS.
        type: str
        aliases: [aws_access_key_id]
      secret_key:
        description: AWS secret access key for IAM and STS. Never logged.
        type: str
        aliases: [aws_secret_access_key]
      session_token:
        description: AWS session token for IAM and STS. Never logged.
        type: str
        aliases: [aws_session_token]
      profile:
        description: AWS profile for IAM and STS.
        type: str
        aliases: [aws_profile]
      region:
        description: AWS region for IAM and STS.
        type: str
        aliases: [aws_region]
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.postgres
  - pgsafe.backup.copies
  - pgsafe.backup.attributes.read_only
notes:
  - The encryption and compression options are accepted, so that C(module_defaults) for the group
    C(group/pgsafe.backup.pgsafe) apply unchanged; only O(encryption.kms_key_ids) is read (for the IAM check).
  - The account-level S3 public access block is not read; the bucket's is.
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: Audit the backups of this host (local repository, S3 copy)
  pgsafe.backup.backup_audit:
    cluster: db01
    repository:
      path: /var/backups/pgsafe
    copies:
      - type: s3
        bucket: acme-pg-backups
        prefix: prod
        region: eu-west-1
    login_host: /var/run/postgresql
    retention:
      keep_daily: 30
      keep_weekly: 12
      keep_monthly: 12
      min_keep: 2
    iam:
      roles: [host]
      from_caller: true
  register: audit

- name: Fail when a database has no fresh, verified backup
  ansible.builtin.assert:
    that: audit.ok
    fail_msg: "{{ audit.summary }}"
"""

RETURN = r"""
ok:
  description: True when no finding is critical.
  returned: success
  type: bool
cluster:
  description: The cluster audited.
  returned: success
  type: str
audited_at:
  description: When the audit ran (UTC, ISO 8601).
  returned: success
  type: str
databases:
  description: The databases that had to be covered.
  returned: success
  type: list
  elements: str
findings:
  description: Every problem, each with C(check), C(severity), C(subject), C(repository), C(message) and C(fix).
  returned: success
  type: list
  elements: dict
  sample: [{"check": "freshness", "severity": "critical", "subject": "app", "repository": "/var/backups/pgsafe",
            "message": "newest backup of database app (20261120T010000Z-logical) finished 2026-11-20T01:00:07Z,
            more than 25 hours ago", "fix": "check the backup schedule ..."}]
critical_count:
  description: Number of critical findings.
  returned: success
  type: int
warning_count:
  description: Number of warnings.
  returned: success
  type: int
flagged_databases:
  description: Databases whose coverage has a problem (missing, stale, unverified, failed verification).
  returned: success
  type: list
  elements: str
coverage:
  description: Per database, the newest backup and the newest verified backup, C(fresh), C(verified) and the
    problems found.
  returned: success
  type: list
  elements: dict
retention:
  description: Per repository, the policy, complete backups per group, backups overdue for deletion and groups
    below min_keep.
  returned: success
  type: list
  elements: dict
encryption:
  description: Per repository, the manifests checked and the backups that are not encrypted.
  returned: success
  type: list
  elements: dict
s3:
  description: Per S3 repository, the state of each bucket setting checked.
  returned: success
  type: list
  elements: dict
iam:
  description: The roles, the principal and policies read, the least-privilege policy, and what is missing or
    in excess. Null when not checked.
  returned: success
  type: dict
summary:
  description: One line, then one line per finding.
  returned: success
  type: str
error:
  description: What failed, where, and the fix.
  returned: failure
  type: dict
"""

import copy

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.audit import audit
from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    AWS_CREDENTIAL_OPTIONS, RETENTION_POLICY_OPTIONS, module_argument_spec, settings_from_params)

S3_CHECK_OPTIONS = {name: {"type": "bool", "default": True}
                    for name in ("default_encryption", "public_access_block", "versioning", "object_lock")}
IAM_OPTIONS = {
    "roles": {"type": "list", "elements": "str", "default": ["host"],
              "choices": ["host", "writer", "verifier", "restorer", "pruner"]},
    "policy_documents": {"type": "list", "elements": "raw"},
    "from_caller": {"type": "bool", "default": False},
    "principal_arn": {"type": "str"},
    "endpoint_url": {"type": "str"},
}
IAM_OPTIONS.update(copy.deepcopy(AWS_CREDENTIAL_OPTIONS))


def main():
    argument_spec = module_argument_spec(
        with_postgres=True, with_copies=True,
        databases={"type": "list", "elements": "str", "default": ["all"]},
        exclude_databases={"type": "list", "elements": "str", "default": []},
        max_age_hours={"type": "float", "default": 25.0},
        verified_max_age_hours={"type": "float", "default": 49.0},
        retention={"type": "dict", "options": RETENTION_POLICY_OPTIONS},
        require_encryption={"type": "bool", "default": True},
        s3_checks={"type": "dict", "options": S3_CHECK_OPTIONS},
        iam={"type": "dict", "options": IAM_OPTIONS},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        settings = settings_from_params(params)
        context = Context.from_settings(settings, need_postgres=True, need_encryption=False)
        copies = context.copies()
        retention = None
        if params["retention"]:
            retention = {key: value for key, value in params["retention"].items() if value is not None}
        iam = None
        if params["iam"]:
            iam = {key: value for key, value in params["iam"].items() if value not in (None, "")}
        result = audit(context, copies, params["databases"], params["exclude_databases"], params["max_age_hours"],
                       params["verified_max_age_hours"], retention, params["require_encryption"],
                       params["s3_checks"], iam)
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
