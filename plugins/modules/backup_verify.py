#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module backup_verify: prove backups are present, intact and decryptable."""

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_verify
short_description: Prove that backups are present, fresh, intact, decryptable and restorable
version_added: 0.1.0
description:
  - Verifies backups in a pgsafe repository at one of four levels, each including the ones before.
  - V(presence) checks that the newest complete backup of each of O(types) exists, is younger than
    O(max_age_hours) (or its entry in O(max_age_hours_by_type)), and is also in each of O(copies).
  - V(integrity) also reads the manifest and checks that every object is present with the manifest's size and
    SHA-256. An object proven within O(recheck_days) whose size and modification time are unchanged is not read
    again (O(full_recheck=true) reads everything). For physical backups (V(full), V(incremental),
    V(transaction_logs)) it also checks that every earlier backup of the chain has a manifest and that every WAL
    segment from the backup's start to its stop is archived.
  - V(decrypt) also decrypts every object (authenticated) and decompresses it (checksummed), and checks its
    structure; C(pg_restore --list) for a dump, and for a physical backup that the tar holds exactly the files
    its file list says it stores, each with the recorded size and SHA-256, plus its C(backup_label). The WAL
    segments a V(full) or V(incremental) backup needs to become consistent are decrypted and checked too.
  - V(restore) also restores each database of a logical backup into a scratch database, compares every table's
    row count with the backup's, runs the O(probes), and always drops the scratch database.
  - At V(restore) a V(full) or V(incremental) backup has its chain restored into a scratch data directory under
    O(scratch_dir), to the backup's own end (recovery target C(immediate), WAL from the repository), started as
    O(os_user) on a private socket and a free port, then its databases are compared with the list the backup
    recorded, every table is counted (reported per database; physical backups record no row counts to compare)
    and the O(probes) run in each database. The scratch server is always stopped and the directory removed.
    V(transaction_logs) records hold no data and are not restore-tested (a note says so).
  - Each failure names the backup, the object and the check that failed. The result of each checked backup is
    recorded beside it in the repository (C(<cluster>/verify/<backup id>.json)), where retention and
    M(pgsafe.backup.backup_info) read it.
options:
  level:
    description: How deep to check. Each level includes the ones before.
    type: str
    choices: [presence, integrity, decrypt, restore]
    default: decrypt
  backup_ids:
    description:
      - Backups to check. Unset (or V(latest)) checks the newest complete backup of each of O(types);
        V(all) checks every complete backup of the cluster.
    type: list
    elements: str
  types:
    description:
      - Backup types expected to exist (and checked by default), among V(logical), V(full), V(incremental) and
        V(transaction_logs).
    type: list
    elements: str
    default: [logical]
  max_age_hours:
    description: The newest backup of each type must be younger than this, or the freshness check fails.
    type: float
    default: 25
  max_age_hours_by_type:
    description:
      - Freshness limits per backup type, overriding O(max_age_hours) for the types named (for example a weekly
        V(full) and an hourly V(transaction_logs)).
    type: dict
  recheck_days:
    description:
      - At V(integrity), an object proven (at integrity level or deeper) within this many days, whose size and
        modification time are unchanged since, is not read again.
    type: float
    default: 7
  full_recheck:
    description: At V(integrity), read every object again, however recently it was proven.
    type: bool
    default: false
  probes:
    description:
      - At V(restore), SQL run in each scratch database after the restore; each must return one value that is
        true or a positive number (for example V(SELECT count(*) > 0 FROM users)).
      - A list applies to every database; a mapping is keyed by database name, with V(*) for every database.
    type: raw
  scratch_dir:
    description:
      - At V(restore), where the scratch data directory of a physical restore test is created (and removed). It
        needs room for a copy of the data directory; the test is refused up front when it has too little.
      - Unset means the system's temporary directory (C(TMPDIR), else C(/tmp)).
    type: path
  os_user:
    description: At V(restore), the OS user that owns and runs the scratch server of a physical restore test.
    type: str
    default: postgres
  copies:
    description:
      - Repository copies (for example the cloud copy of a local repository) that must hold the newest complete
        backup of each of O(types), with its manifest. Checked at every level; the copies' objects are not read
        (verify a copy in depth by running the module with it as O(repository)).
      - Same suboptions as O(repository).
  fail_on_error:
    description:
      - Fail the task with the summary when verification finds a problem. With V(false) the task succeeds and
        returns RV(ok=false), for a play that reports rather than stops.
    type: bool
    default: true
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.postgres
  - pgsafe.backup.copies
  - pgsafe.backup.attributes
attributes:
  check_mode:
    support: full
    details: Runs the same read-only checks (at V(restore), the scratch databases are created and dropped as in
      a real run; so is the scratch data directory of a physical backup) but does not record their results in
      the repository.
  diff_mode:
    support: none
    details: Verification changes nothing in the backups, so there is nothing to show; the report is the result.
  idempotent:
    support: full
    details: Always reports unchanged; the verification records it writes are bookkeeping, not a change to the
      backups.
notes:
  - Below V(restore) only O(pg_bin_dir) of the PostgreSQL options is used (to find C(pg_restore) for the
    structure check) and no connection to PostgreSQL is made. At V(restore) the connection options name the
    server the scratch databases are created on; a physical restore test connects to its scratch server as
    O(login_user) over the private socket (its own C(pg_hba.conf) trusts local connections).
  - Decrypting needs the keys of O(encryption) (any one of the keys that wrap the objects).
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: Verify the newest logical backup fully (decrypt and pg_restore --list)
  pgsafe.backup.backup_verify:
    repository:
      path: /var/backups/pgsafe
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key

- name: Check every backup's checksums weekly and report without failing the play
  pgsafe.backup.backup_verify:
    level: integrity
    backup_ids: [all]
    fail_on_error: false
    repository:
      type: s3
      bucket: acme-pg-backups
      prefix: prod
  register: weekly_check

- name: Show the problems
  ansible.builtin.debug:
    msg: "{{ weekly_check.summary }}"
  when: not weekly_check.ok

- name: Physical backups and WAL, with per-type freshness, and the cloud copy present
  pgsafe.backup.backup_verify:
    level: decrypt
    types: [full, incremental, transaction_logs]
    max_age_hours_by_type:
      full: 170
      incremental: 25
      transaction_logs: 2
    copies:
      - name: cloud
        type: s3
        bucket: acme-pg-backups
        prefix: prod
    repository:
      path: /var/backups/pgsafe
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key

- name: Restore the newest logical backup into scratch databases and probe it
  pgsafe.backup.backup_verify:
    level: restore
    probes:
      app:
        - SELECT count(*) > 0 FROM users
        - SELECT max(created_at) > now() - interval '2 days' FROM bookings
    login_host: /var/run/postgresql
    repository:
      path: /var/backups/pgsafe
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key
"""

RETURN = r"""
ok:
  description: True when every check passed.
  returned: always
  type: bool
level:
  description: The level checked.
  returned: success
  type: str
cluster:
  description: The cluster checked.
  returned: success
  type: str
repository:
  description: The repository checked.
  returned: success
  type: str
failures:
  description: Every problem found, each naming the backup, the object and the check.
  returned: when the checks ran (also when they found problems)
  type: list
  elements: dict
  sample: [{"backup_id": "20261122T050102Z-logical", "object": "app.dump.zst.enc", "check": "sha256",
            "message": "SHA-256 of the stored object differs from the manifest"}]
summary:
  description: One line when all is well, else one line per problem.
  returned: when the checks ran (also when they found problems)
  type: str
backups:
  description:
    - Per backup checked, its C(type), the C(checks) that passed (for physical backups also C(chain), C(wal) and
      C(wal decrypt)), the C(failures), C(bytes_read), and at V(restore) the C(restores) with their probes.
  returned: when the checks ran (also when they found problems)
  type: list
  elements: dict
bytes_read:
  description: Bytes read from the repository.
  returned: success
  type: int
objects_skipped:
  description: Objects not read again because they were proven within O(recheck_days).
  returned: success
  type: int
duration_seconds:
  description: Wall time of the verification.
  returned: success
  type: float
error:
  description: What failed, where, and the fix (when the verification itself could not run).
  returned: failure
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    module_argument_spec, settings_from_params)
from ansible_collections.pgsafe.backup.plugins.module_utils.verify import verify


def main():
    argument_spec = module_argument_spec(
        with_postgres=True, with_copies=True,
        level={"type": "str", "choices": ["presence", "integrity", "decrypt", "restore"], "default": "decrypt"},
        backup_ids={"type": "list", "elements": "str"},
        types={"type": "list", "elements": "str", "default": ["logical"]},
        max_age_hours={"type": "float", "default": 25.0},
        max_age_hours_by_type={"type": "dict"},
        recheck_days={"type": "float", "default": 7.0},
        full_recheck={"type": "bool", "default": False},
        probes={"type": "raw"},
        scratch_dir={"type": "path"},
        os_user={"type": "str", "default": "postgres"},
        fail_on_error={"type": "bool", "default": True},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    max_age_hours = params["max_age_hours"]
    if params["max_age_hours_by_type"]:
        max_age_hours = dict(params["max_age_hours_by_type"], default=max_age_hours)
    try:
        # Keys are needed only to decrypt; presence and integrity work without any configured.
        context = Context.from_settings(settings_from_params(params), need_postgres=True,
                                        need_encryption=params["level"] in ("decrypt", "restore"))
        report = verify(context, params["level"], params["backup_ids"], params["types"], max_age_hours,
                        record=not module.check_mode, recheck_days=params["recheck_days"],
                        full_recheck=params["full_recheck"], probes=params["probes"], copies=context.copies(),
                        scratch_dir=params["scratch_dir"], os_user=params["os_user"])
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict(), ok=False)
    report["changed"] = False
    if params["fail_on_error"] and not report["ok"]:
        module.fail_json(msg=report["summary"], **report)
    module.exit_json(**report)


if __name__ == "__main__":
    main()
