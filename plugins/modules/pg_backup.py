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
    disk and memory stays bounded whatever the database size. Exact row counts of every table are taken in the
    same snapshot as the dump and recorded in the manifest, so a restore can be proven complete.
  - V(full) and V(incremental) are physical base backups of the whole cluster (C(pg_backup_start)/C(pg_backup_stop),
    one tar of the data directory and its tablespaces streamed through the same pipeline). An incremental stores
    only the files changed since the previous physical backup of the same cluster, plus the list of all files.
    It becomes a full when there is no earlier physical backup, or when the chain would get deeper than
    O(max_chain_depth); RV(why) says which. The backup waits until the WAL from its start to its stop is in the
    archive, so it is restorable. Needs WAL archiving (C(archive_command = 'pgsafe wal-push %p')) and must run on
    the database host, with read access to the data directory.
  - V(transaction_logs) stores no data; it forces a WAL segment switch, waits until the archive holds every
    segment since the newest physical backup's start, and records the RPO achieved.
  - The backup exists only once its manifest is written, last. A failed or interrupted run leaves no manifest
    and never counts as a backup.
  - One backup per cluster and type runs at a time; a second run fails at once and names the holder of the lock.
  - See C(docs/physical.md) and C(docs/wal.md) for the physical types and WAL archiving.
options:
  type:
    description:
      - Backup type. V(logical) dumps databases; V(full), V(incremental) and V(transaction_logs) are physical (see
        the description).
    type: str
    choices: [logical, full, incremental, transaction_logs]
    default: logical
  databases:
    description:
      - Databases to dump. V(all) (the default) dumps every connectable, non-template database.
      - O(type=logical) only.
    type: list
    elements: str
    default: [all]
  globals:
    description:
      - Also dump roles and tablespaces (C(pg_dumpall --globals-only)).
      - O(type=logical) only.
    type: bool
    default: true
  role_passwords:
    description:
      - Include role password hashes in the globals dump. Needs a superuser; without one they are left out.
      - O(type=logical) only.
    type: bool
    default: true
  pgdata:
    description:
      - Data directory of the server, read by V(full) and V(incremental) backups.
      - Unset asks the server (C(SHOW data_directory)). When set it must be that same directory (a check that the
        connection options reach the server whose files are read).
    type: path
  max_chain_depth:
    description:
      - How many incrementals may follow a full. When an V(incremental) would go deeper, a V(full) is taken
        instead and RV(why) says so. Unset means 6.
      - O(type=incremental) only; 1 or more.
    type: int
  delta_checksum:
    description:
      - For V(incremental), also compare the SHA-256 of every file whose size and modification time are
        unchanged. Reads the whole data directory; use it when clocks or file systems are suspect.
    type: bool
    default: false
  archive_wait_seconds:
    description:
      - How long a physical backup (V(full), V(incremental), V(transaction_logs)) waits for its WAL to reach the
        archive before it fails. Unset means 120.
    type: float
  labels:
    description: Free-form labels recorded in the manifest (for example the change ticket).
    type: dict
    default: {}
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.postgres
  - pgsafe.backup.attributes
attributes:
  check_mode:
    support: full
    details:
      - Connects to PostgreSQL and runs the same checks as a real run, but writes nothing.
      - V(logical) checks the databases exist. V(full) and V(incremental) check archiving, C(wal_level) and the data
        directory, and report the type that would really be taken, its parent and chain depth, and why (for
        example a full forced because O(max_chain_depth) is reached). V(transaction_logs) reports the segment that
        would be switched and the archive range it would wait for.
  diff_mode:
    support: none
    details: A backup always adds new objects to the repository; there is no previous state to compare with.
  idempotent:
    support: none
    details: Every run takes a new backup, so it always reports changed.
notes:
  - Runs on the database host (or, for V(logical), any host that reaches it) with the Python packages of
    requirements.txt; the pgsafe.backup.install role provides them in a virtualenv.
  - Physical backups read the data directory, so run them as root or as the PostgreSQL OS user, with a role
    allowed to call C(pg_backup_start) and C(pg_backup_stop).
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

- name: Weekly full, daily incremental (a full is forced once 6 incrementals follow one)
  pgsafe.backup.pg_backup:
    type: "{{ 'full' if ansible_date_time.weekday == 'Sunday' else 'incremental' }}"
    max_chain_depth: 6
    login_host: /var/run/postgresql
    repository:
      path: /var/backups/pgsafe
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key

- name: Prove the WAL up to now is archived (hourly), and record the RPO
  pgsafe.backup.pg_backup:
    type: transaction_logs
    archive_wait_seconds: 300
    login_host: /var/run/postgresql
    repository:
      path: /var/backups/pgsafe
  register: wal_checkpoint
"""

RETURN = r"""
backup_id:
  description: Id of the new backup (UTC timestamp and type).
  returned: success, not in check mode
  type: str
  sample: 20261122T050102Z-logical
type:
  description:
    - The type taken (or that would be taken, in check mode). An O(type=incremental) request becomes V(full) when
      there is no parent or the chain depth limit is reached.
  returned: success
  type: str
  sample: incremental
requested_type:
  description: The type asked for (O(type)).
  returned: success, physical types
  type: str
why:
  description: Why this type and parent were chosen.
  returned: success, O(type=full) or O(type=incremental)
  type: str
  sample: chain depth limit 6 reached (parent 20261128T020000Z-incremental is at depth 6) taking a full one
forced_full:
  description: True when an incremental was asked for but a full would be taken.
  returned: check mode, O(type=full) or O(type=incremental)
  type: bool
parent_backup_id:
  description: The backup an incremental builds on (null for a full).
  returned: success, O(type=full) or O(type=incremental)
  type: str
chain:
  description:
    - The ids from the full to the new backup. In check mode, the existing ids the new backup would build on
      (empty for a full).
  returned: success, O(type=full) or O(type=incremental)
  type: list
  elements: str
chain_depth:
  description: Depth the new backup would have in its chain (0 for a full).
  returned: check mode, O(type=full) or O(type=incremental)
  type: int
files_total:
  description: Files in the data directory (and tablespaces) the backup covers.
  returned: success, O(type=full) or O(type=incremental), not in check mode
  type: int
files_stored:
  description: Files stored by this backup (the others are held by its parents).
  returned: success, O(type=full) or O(type=incremental), not in check mode
  type: int
wal:
  description:
    - The WAL range the backup needs and found archived (C(start_segment), C(stop_segment), C(start_lsn),
      C(stop_lsn), C(timeline), C(segments)); for V(transaction_logs) the range from the newest physical backup's
      start to the switched segment. In check mode, the range that would be checked.
  returned: success, physical types
  type: dict
  sample: {"start_segment": "000000010000000000000004", "stop_segment": "000000010000000000000005",
           "timeline": 1, "segments": 2}
rpo_seconds:
  description: For V(transaction_logs), seconds from the segment switch until the archive held it.
  returned: success, O(type=transaction_logs), not in check mode
  type: float
would_switch_segment:
  description: The WAL segment V(transaction_logs) would close.
  returned: check mode, O(type=transaction_logs)
  type: str
not_yet_archived:
  description: Segments of the range not archived yet (the run would wait for them, up to O(archive_wait_seconds)).
  returned: check mode, O(type=transaction_logs)
  type: list
  elements: str
databases:
  description: Databases dumped (or that would be dumped, in check mode).
  returned: success, O(type=logical)
  type: list
  elements: str
  sample: [app, billing]
duration_seconds:
  description: Wall time of the backup.
  returned: success, not in check mode
  type: float
size_raw_bytes:
  description: Bytes produced by pg_dump and pg_dumpall (logical), or stored into the tar (physical).
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
  returned: success, O(type=logical), not in check mode
  type: dict
  sample: {"app": {"public.users": 2000, "public.bookings": 10000}}
objects:
  description: Names of the stored objects.
  returned: success, O(type=logical), not in check mode
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
    module_argument_spec, settings_from_params)
from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import (
    plan_physical_backup, plan_transaction_logs, run_physical_backup, run_transaction_logs)


def main():
    argument_spec = module_argument_spec(
        with_postgres=True,
        type={"type": "str", "choices": ["logical", "full", "incremental", "transaction_logs"], "default": "logical"},
        databases={"type": "list", "elements": "str", "default": ["all"]},
        globals={"type": "bool", "default": True},
        role_passwords={"type": "bool", "default": True},
        pgdata={"type": "path"},
        max_chain_depth={"type": "int"},
        delta_checksum={"type": "bool", "default": False},
        archive_wait_seconds={"type": "float"},
        labels={"type": "dict", "default": {}},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    backup_type = params["type"]
    try:
        # transaction_logs stores nothing, so it needs no key.
        context = Context.from_settings(settings_from_params(params),
                                        need_encryption=backup_type != "transaction_logs")
        if backup_type == "logical" and module.check_mode:
            result = plan_logical_backup(context, params["databases"], params["globals"])
        elif backup_type == "logical":
            result = run_logical_backup(context, params["databases"], params["globals"], params["role_passwords"],
                                        params["labels"])
        elif backup_type == "transaction_logs" and module.check_mode:
            result = plan_transaction_logs(context)
        elif backup_type == "transaction_logs":
            result = run_transaction_logs(context, params["archive_wait_seconds"], params["labels"])
        elif module.check_mode:
            result = plan_physical_backup(context, backup_type, params["pgdata"], params["max_chain_depth"])
        else:
            result = run_physical_backup(context, backup_type, params["pgdata"], params["max_chain_depth"],
                                         params["delta_checksum"], params["labels"], params["archive_wait_seconds"])
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
