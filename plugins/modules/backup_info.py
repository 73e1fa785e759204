#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module backup_info: list the backups of a cluster, their status and the storage used."""

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_info
short_description: List the backups of a cluster in a pgsafe repository, with status and storage used
version_added: 0.1.0
description:
  - Lists every backup of O(cluster) in the repository, oldest first, with its status, databases, sizes, age,
    the last verification result and any hold.
  - Status comes from the repository itself, never from a local database that could drift. A backup with a
    manifest is V(complete); without one it is V(incomplete) (running, failed or interrupted) and never counts;
    a manifest that cannot be read makes it V(damaged).
  - Physical backups (V(full), V(incremental)) show their chain (the ids from the full to the backup), their
    depth in it and the WAL range they need; V(transaction_logs) records show the WAL range they confirmed and the
    RPO achieved.
  - The WAL archive is summarised per timeline (first and last archived segment, count, gaps, when the last
    one was archived).
  - Read-only; nothing is written and no key is needed.
options:
  type:
    description:
      - List only backups of this type (V(logical), V(full), V(incremental), V(transaction_logs)), or V(physical)
        for full and incremental ones.
    type: str
  max_age_days:
    description: List only backups younger than this many days.
    type: float
  wal_archive:
    description:
      - Summarise the WAL archive in RV(wal_archive). Costs one listing of the archive (one request per 1000
        segments on S3) and one small read per timeline; turn it off for a very large archive.
    type: bool
    default: true
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.attributes.read_only
notes:
  - The encryption and compression options are accepted, so that C(module_defaults) for the group
    C(group/pgsafe.backup.pgsafe) apply unchanged, but they are not used.
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: List the backups in S3
  pgsafe.backup.backup_info:
    cluster: db01
    repository:
      type: s3
      bucket: acme-pg-backups
      prefix: prod
  register: info

- name: Fail when the newest logical backup is older than a day
  ansible.builtin.assert:
    that:
      - info.latest.logical is not none
      - info.latest.logical.age_seconds < 86400

- name: List the physical backups with their chains
  pgsafe.backup.backup_info:
    type: physical
    repository:
      path: /var/backups/pgsafe
  register: physical

- name: Show where the newest physical backup sits in its chain
  vars:
    newest: "{{ physical.backups | selectattr('status', 'equalto', 'complete') | last }}"
  ansible.builtin.debug:
    msg: "{{ newest.backup_id }} is at depth {{ newest.chain_depth }} of the chain of {{ newest.full_backup_id }}"
  when: physical.backups | selectattr('status', 'equalto', 'complete') | list | length > 0
"""

RETURN = r"""
cluster:
  description: The cluster listed.
  returned: always
  type: str
backups:
  description:
    - Every backup, oldest first. Each has C(backup_id), C(type), C(status) (complete, incomplete, damaged),
      C(databases), C(started_at), C(finished_at), C(age_seconds), C(size_raw_bytes), C(size_stored_bytes),
      C(objects), C(verification) (the last verification record or null), C(hold) and C(locked_until).
    - Complete physical backups also have C(parent_backup_id), C(chain) (ids from the full to this backup),
      C(chain_depth) (0 for a full), C(full_backup_id), C(files_total), C(files_stored) and C(wal)
      (C(start_segment), C(stop_segment), C(start_lsn), C(stop_lsn), C(timeline), C(stop_time)).
      V(transaction_logs) records have C(wal) and C(rpo_seconds).
  returned: always
  type: list
  elements: dict
  sample: [{"backup_id": "20261122T050102Z-logical", "type": "logical", "status": "complete",
            "databases": ["app"], "finished_at": "2026-11-22T05:01:09Z", "size_stored_bytes": 1048576}]
latest:
  description: Per backup type, the newest complete backup (an entry of RV(backups)).
  returned: always
  type: dict
wal_archive:
  description:
    - Per timeline (keyed by its 8 hex digits), C(first_segment), C(last_segment), C(segments) (how many are
      archived), C(missing_between) (segments missing between the first and the last; retention removes the
      oldest ones, so a gap here is worth a look), C(last_archived_at), C(history_file) and C(other_files)
      (partial and backup history files). Empty when nothing is archived.
  returned: when O(wal_archive=true)
  type: dict
  sample: {"00000001": {"timeline": 1, "first_segment": "000000010000000000000002",
           "last_segment": "000000010000000000000031", "segments": 48, "missing_between": 0,
           "last_archived_at": "2026-11-22T05:41:10.123456Z", "history_file": false, "other_files": 3}}
storage:
  description:
    - Bytes the cluster uses in the repository, the repository's capacity where it has one (a filesystem),
      and the percentage used.
  returned: always
  type: dict
  sample: {"repository": "local", "location": "/var/backups/pgsafe", "used_bytes": 1048576,
           "capacity_bytes": 107374182400, "usage_percent": 0.0}
error:
  description: What failed, where, and the fix.
  returned: failure
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups, storage_used
from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    module_argument_spec, settings_from_params)
from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import archive_summary


def main():
    argument_spec = module_argument_spec(
        type={"type": "str"},
        max_age_days={"type": "float"},
        wal_archive={"type": "bool", "default": True},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        context = Context.from_settings(settings_from_params(params), need_postgres=False, need_encryption=False)
        backups = list_backups(context.repository, context.cluster, params["type"], params["max_age_days"])
        storage = storage_used(context.repository, context.cluster)
        wal = archive_summary(context.repository, context.cluster) if params["wal_archive"] else None
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    latest = {}
    for entry in backups:  # oldest first, so the last complete one of each type wins
        if entry["status"] == "complete":
            latest[entry["type"]] = entry
    extra = {"wal_archive": wal} if wal is not None else {}
    module.exit_json(changed=False, cluster=context.cluster, backups=backups, latest=latest, storage=storage, **extra)


if __name__ == "__main__":
    main()
