#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module retention_prune: apply a grandfather-father-son retention policy to a repository."""

from __future__ import annotations

DOCUMENTATION = r"""
module: retention_prune
short_description: Delete the backups a retention policy no longer keeps
version_added: 0.1.0
description:
  - Plans which backups of a cluster to keep and which to delete under a grandfather-father-son policy, and
    unless in check mode deletes the expired ones.
  - Rules are applied per group (backup type and set of databases). A backup is kept when any rule keeps it;
    every decision names the rules that keep the backup (or why it goes) in RV(plan).
  - Never deleted, whatever the rules say, are a backup on hold, one under S3 Object Lock, the newest
    O(policy.min_keep) complete backups of each group, the newest verified backup of each group (or the newest
    complete one when none passed verification), a backup a kept backup depends on, and an incomplete backup
    younger than O(policy.incomplete_grace) (it may be a run in progress).
  - A backup is deleted manifest first, so a deletion interrupted halfway leaves an incomplete backup that never
    counts, not a complete-looking one with objects missing.
  - One prune per cluster runs at a time.
options:
  policy:
    description: What to keep. At least one of the C(keep_*) rules must be above 0.
    type: dict
    required: true
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
        description: Never keep fewer than this many complete backups per group, whatever the other rules say.
        type: int
        default: 1
      max_age:
        description:
          - A ceiling for the C(keep_*) rules - a backup older than this is not kept by any of them. The
            protections (holds, Object Lock, O(policy.min_keep), the newest verified backup) still apply.
          - A number and a unit (s, m, h, d, w), for example V(400d), V(12w) or V(36h).
        type: str
      incomplete_grace:
        description:
          - An incomplete backup (no manifest) older than this is deleted, as are abandoned multipart uploads.
            At least V(1h).
        type: str
        default: 24h
  type:
    description: Delete only backups of this type (for example V(logical)). Unset applies to every type.
    type: str
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.attributes
attributes:
  check_mode:
    support: full
    details: Returns the whole plan (each backup kept or deleted, with the rules that decided) and
      RV(would_delete); deletes nothing.
  diff_mode:
    support: full
    details: Backup ids per group before, and the ids that remain after.
  idempotent:
    support: full
    details: A second run finds nothing the policy expires, unless time has moved a backup past a rule's edge.
notes:
  - Run it on each repository (the local copy and the cloud copy); M(pgsafe.backup.s3_backup_sync) never deletes.
  - The encryption and compression options are accepted, so that C(module_defaults) for the group
    C(group/pgsafe.backup.pgsafe) apply unchanged, but they are not used.
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: Keep 30 daily, 12 weekly and 12 monthly backups in S3
  pgsafe.backup.retention_prune:
    cluster: db01
    repository:
      type: s3
      bucket: acme-pg-backups
      prefix: prod
    policy:
      keep_daily: 30
      keep_weekly: 12
      keep_monthly: 12

- name: Show what a stricter policy would delete, without deleting
  pgsafe.backup.retention_prune:
    repository:
      path: /var/backups/pgsafe
    policy:
      keep_last: 7
      max_age: 30d
  check_mode: true
  diff: true
  register: preview
"""

RETURN = r"""
cluster:
  description: The cluster pruned.
  returned: success
  type: str
repository:
  description: The repository pruned.
  returned: success
  type: str
plan:
  description:
    - The whole plan - the policy, and for every backup whether it is kept, with the rules that keep it (for
      example C(last 1), C(daily 2026-11-20), C(hold), C(min_keep)) or the reason it goes.
  returned: success
  type: dict
would_delete:
  description: Backup ids the plan expires.
  returned: check mode
  type: list
  elements: str
deleted:
  description: Backup ids deleted.
  returned: success
  type: list
  elements: str
refused:
  description: Backups the repository refused to delete (Object Lock, permissions), with the message.
  returned: success
  type: list
  elements: dict
summary:
  description: Counts kept and deleted per group and per rule, and the bytes freed.
  returned: success
  type: dict
abandoned_uploads_removed:
  description: Abandoned multipart uploads and temporary files removed.
  returned: success, not in check mode
  type: list
  elements: str
diff:
  description: Backup ids per group before and after.
  returned: success
  type: dict
error:
  description: What failed, where, and the fix.
  returned: failure
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    RETENTION_POLICY_OPTIONS, module_argument_spec, settings_from_params)
from ansible_collections.pgsafe.backup.plugins.module_utils.retention import prune


def main():
    argument_spec = module_argument_spec(
        policy={"type": "dict", "required": True, "options": RETENTION_POLICY_OPTIONS},
        type={"type": "str"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    # Unset rules stay unset, so the policy's own defaults and validation apply.
    policy_spec = {key: value for key, value in params["policy"].items() if value is not None}
    try:
        context = Context.from_settings(settings_from_params(params), need_postgres=False, need_encryption=False)
        result = prune(context, policy_spec, params["type"], module.check_mode)
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
