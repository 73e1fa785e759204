#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module files_backup: back up and restore files (application configuration)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: files_backup
short_description: Back up files and directories (application configuration) and restore them selectively
version_added: 0.1.0
description:
  - Backs up files, directories and symbolic links (with mode, owner, group and mtime) as a backup of type
    C(files), through the same pipeline as database backups - one tar stream, zstd, envelope encryption - into
    the repository. Nothing is staged on local disk; the backup exists only once its manifest is written, last.
  - Each backup holds a file manifest (encrypted like the data) listing every entry's path, type, size, mode,
    owner and group, mtime and SHA-256. C(manifest.json) itself only summarises (paths, counts, bytes), because
    it is stored in clear text.
  - Restores any subset of the paths, to their original location or under O(target_dir). Each file is written
    to a temporary name beside its destination, checked against its SHA-256, given its mode, owner and mtime,
    and renamed into place. A destination that exists and differs from the backup is refused unless O(force);
    one that already matches is left alone.
  - M(pgsafe.backup.files_backup_info) lists the file manifest of a backup.
options:
  state:
    description:
      - V(backup) takes a new backup of O(paths); V(restore) restores from a backup.
    type: str
    choices: [backup, restore]
    default: backup
  paths:
    description:
      - With O(state=backup), the absolute files and directories to back up (required). Directories are taken
        with everything below them; symbolic links are stored as links, not followed.
      - With O(state=restore), only these paths (and everything below them); unset means everything in the
        backup.
    type: list
    elements: path
  exclude:
    description: Glob patterns matched against each full path and each name (for example V(*.swp)); matches are
      left out of the backup.
    type: list
    elements: str
    default: []
  skip_unchanged:
    description:
      - With O(state=backup), take no backup when the newest C(files) backup of the same O(paths) and O(exclude)
        already holds the same content, types, sizes, modes and owners (mtimes aside), and report unchanged.
      - Every file is read and hashed to decide. Leave it off for scheduled backups, whose freshness is
        monitored.
    type: bool
    default: false
  backup_id:
    description: With O(state=restore), the backup to restore from, or V(latest) for the newest complete C(files)
      backup.
    type: str
    default: latest
  target_dir:
    description:
      - With O(state=restore), restore under this directory instead of the original location; a path C(/etc/app/x)
        becomes C(<target_dir>/etc/app/x).
    type: path
  force:
    description:
      - With O(state=restore), replace destinations that exist and differ from the backup (content, type, mode or
        owner). Without it such a restore is refused before anything is written.
    type: bool
    default: false
  labels:
    description: With O(state=backup), free-form labels stored in the manifest.
    type: dict
    default: {}
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.attributes
attributes:
  check_mode:
    support: full
    details: V(backup) walks the paths and reports what would be stored, reading no file; V(restore) reads the
      file manifest, compares every destination and reports what would be written or refused, writing nothing.
  diff_mode:
    support: partial
    details: V(restore) shows each destination it writes, absent or differing before and as in the backup after;
      V(backup) always adds a new backup and shows no diff.
  idempotent:
    support: partial
    details: V(restore) is idempotent (a restored file that matches the backup is left alone); V(backup) takes a
      new backup on every run unless O(skip_unchanged=true).
notes:
  - Run as root to back up files other users own and to restore owners; without root, owners that differ are
    reported in RV(ownership_not_restored).
  - Restoring needs the keys of O(encryption) (any one of the keys that wrap the backup).
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: Back up the application's configuration beside the database backups
  pgsafe.backup.files_backup:
    paths:
      - /etc/spendsync
      - /etc/systemd/system/spendsync-api.service
    exclude: ["*.swp", "*~"]
    repository:
      path: /var/backups/pgsafe
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key

- name: Restore one deleted file to where it was
  pgsafe.backup.files_backup:
    state: restore
    paths: [/etc/spendsync/config.yml]
    repository:
      path: /var/backups/pgsafe
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key

- name: Restore a given backup beside the live files, to compare
  pgsafe.backup.files_backup:
    state: restore
    backup_id: 20261122T050102Z-files
    target_dir: /var/tmp/spendsync-restore
    repository:
      type: s3
      bucket: acme-pg-backups
      prefix: prod
    encryption:
      kms_key_ids:
        - arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
"""

RETURN = r"""
backup_id:
  description: The backup taken or restored from (with O(skip_unchanged), the backup that already holds the
    content).
  returned: success, except O(state=backup) in check mode
  type: str
  sample: 20261122T050102Z-files
paths:
  description: The configured paths.
  returned: O(state=backup)
  type: list
  elements: str
entries:
  description: The number of entries stored (O(state=backup)) or considered (O(state=restore)).
  returned: success
  type: int
  sample: 16
counts:
  description: Files, directories and symbolic links stored.
  returned: O(state=backup), when a backup was taken
  type: dict
  sample: {"file": 12, "directory": 3, "symlink": 1}
size_stored_bytes:
  description: Bytes stored in the repository (compressed and encrypted).
  returned: O(state=backup), when a backup was taken
  type: int
duration_seconds:
  description: Wall time of the backup or restore.
  returned: success, not in check mode
  type: float
unchanged_since:
  description: With O(skip_unchanged), when no backup was taken, the end time of the backup that already holds the
    content.
  returned: O(state=backup) with O(skip_unchanged), when nothing changed
  type: str
skipped:
  description: Entries left out because they are neither files, directories nor links (sockets, fifos, devices).
  returned: O(state=backup)
  type: list
  elements: dict
changed_during_backup:
  description: Files that changed while they were read; back them up again.
  returned: O(state=backup), when a backup was taken
  type: list
  elements: str
warnings_list:
  description: Things to look at (a configured path that is a symbolic link, files that changed while read).
  returned: O(state=backup)
  type: list
  elements: str
restored:
  description: Destinations written (or, in check mode, that would be written), including directories.
  returned: O(state=restore)
  type: list
  elements: str
replaced:
  description: Destinations that existed and differed, replaced because of O(force).
  returned: O(state=restore)
  type: list
  elements: str
unchanged:
  description: Destinations that already match the backup and were left alone.
  returned: O(state=restore)
  type: list
  elements: str
ownership_not_restored:
  description: Paths whose owner or group could not be restored because the module did not run as root.
  returned: O(state=restore), not in check mode
  type: list
  elements: str
target_dir:
  description: The directory restored under, or null for the original location.
  returned: O(state=restore)
  type: str
error:
  description: What failed, where, and the fix.
  returned: failure
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.files_backup import (
    plan_files_backup, plan_files_restore, run_files_backup, run_files_restore)
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    module_argument_spec, settings_from_params)


def _public(result: dict) -> dict:
    return {key: value for key, value in result.items() if not key.startswith("_")}


def main():
    argument_spec = module_argument_spec(
        state={"type": "str", "choices": ["backup", "restore"], "default": "backup"},
        paths={"type": "list", "elements": "path"},
        exclude={"type": "list", "elements": "str", "default": []},
        skip_unchanged={"type": "bool", "default": False},
        backup_id={"type": "str", "default": "latest"},
        target_dir={"type": "path"},
        force={"type": "bool", "default": False},
        labels={"type": "dict", "default": {}},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("state", "backup", ("paths",))])
    params = module.params
    state = params["state"]
    try:
        # A backup in check mode only walks the paths: no key needed to say what would be stored.
        context = Context.from_settings(settings_from_params(params), need_postgres=False,
                                        need_encryption=not (state == "backup" and module.check_mode))
        if state == "backup":
            if module.check_mode:
                result = plan_files_backup(context, params["paths"], params["exclude"])
            else:
                result = run_files_backup(context, params["paths"], params["exclude"], params["labels"],
                                          params["skip_unchanged"])
            result["warnings_list"] = result.pop("warnings", [])
        elif module.check_mode:
            result = _public(plan_files_restore(context, params["backup_id"], params["paths"] or None,
                                                params["target_dir"], params["force"]))
        else:
            result = run_files_restore(context, params["backup_id"], params["paths"] or None,
                                       params["target_dir"], params["force"])
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    for warning in result.get("warnings_list", []):
        module.warn(warning)
    if state == "restore" and module._diff:
        result["diff"] = {
            "before": {path: "differs from the backup" if path in result["replaced"] else "absent"
                       for path in result["restored"]},
            "after": {path: "as in backup %s" % result["backup_id"] for path in result["restored"]}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
