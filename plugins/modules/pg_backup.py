#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_backup
short_description: Take a streamed, compressed and envelope-encrypted PostgreSQL backup
version_added: 0.1.0
description:
  - Takes a backup of a PostgreSQL cluster into a pgsafe repository (filesystem or S3).
  - V(logical) runs C(pg_dump) in custom format for each database, plus C(pg_dumpall --globals-only), and streams
    the output through zstd and envelope encryption straight into the repository; nothing is staged on local
    disk and memory stays bounded whatever the database size.
  - Exact row counts of every table are taken in the same snapshot as the dump and recorded in the manifest, so
    a restore can be proven complete.
  - The backup exists only once its manifest is written, last. A failed or interrupted run leaves no manifest
    and never counts as a backup.
  - One backup per cluster and type runs at a time; a second run fails at once and names the holder of the lock.
options:
  type:
    description: Backup type.
    type: str
    choices: [logical]
    default: logical
  databases:
    description: Databases to dump. V(all) (the default) dumps every connectable, non-template database.
    type: list
    elements: str
    default: [all]
  globals:
    description: Also dump roles and tablespaces (C(pg_dumpall --globals-only)).
    type: bool
    default: true
  role_passwords:
    description:
      - Include role password hashes in the globals dump. Needs a superuser; without one they are left out.
    type: bool
    default: true
  labels:
    description: Free-form labels recorded in the manifest (for example the change ticket).
    type: dict
    default: {}
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.postgres
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Connects to PostgreSQL and checks the databases exist, but dumps nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation
      indicates no change.
    support: none
    details: Every run takes a new backup, so it always reports changed.
notes:
  - Runs on the database host (or any host that reaches it) with the Python packages of requirements.txt; the
    pgsafe.backup.install role provides them in a virtualenv.
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: Back up every database with the local key (the embedded default)
  pgsafe.backup.pg_backup:
    repository:
      path: /var/backups/pgsafe
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key

- name: Back up two databases to S3 with two KMS keys (two regions)
  pgsafe.backup.pg_backup:
    cluster: db01
    databases: [app, billing]
    login_host: /var/run/postgresql
    repository:
      type: s3
      bucket: acme-pg-backups
      prefix: prod
    encryption:
      kms_key_ids:
        - arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
        - arn:aws:kms:eu-central-1:111122223333:key/abcd1234-12ab-34cd-56ef-1234567890ab
  register: backup
"""

RETURN = r"""
backup_id:
  description: Id of the new backup (UTC timestamp and type).
  returned: success, not in check mode
  type: str
  sample: 20261122T050102Z-logical
databases:
  description: Databases dumped (or that would be dumped, in check mode).
  returned: always
  type: list
  elements: str
  sample: [app, billing]
duration_seconds:
  description: Wall time of the backup.
  returned: success, not in check mode
  type: float
size_raw_bytes:
  description: Bytes produced by pg_dump and pg_dumpall.
  returned: success, not in check mode
  type: int
size_stored_bytes:
  description: Bytes stored after compression and encryption.
  returned: success, not in check mode
  type: int
throughput_mb_s:
  description: Raw megabytes (10^6) per second.
  returned: success, not in check mode
  type: float
row_counts:
  description: Exact rows per table and database, in the dump's snapshot.
  returned: success, not in check mode
  type: dict
  sample: {"app": {"public.users": 2000, "public.bookings": 10000}}
objects:
  description: Names of the stored objects.
  returned: success, not in check mode
  type: list
  elements: str
repository:
  description: Where the backup went.
  returned: always
  type: str
error:
  description: What failed, where, and the fix.
  returned: failure
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.logical_backup import (
    plan_logical_backup, run_logical_backup)
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    common_argument_spec, postgres_argument_spec, settings_from_params)


def main():
    argument_spec = common_argument_spec()
    argument_spec.update(postgres_argument_spec())
    argument_spec.update(
        type={"type": "str", "choices": ["logical"], "default": "logical"},
        databases={"type": "list", "elements": "str", "default": ["all"]},
        globals={"type": "bool", "default": True},
        role_passwords={"type": "bool", "default": True},
        labels={"type": "dict", "default": {}},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        context = Context.from_settings(settings_from_params(params))
        if module.check_mode:
            result = plan_logical_backup(context, params["databases"], params["globals"])
        else:
            result = run_logical_backup(context, params["databases"], params["globals"], params["role_passwords"],
                                        params["labels"])
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
