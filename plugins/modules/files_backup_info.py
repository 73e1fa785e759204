#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module files_backup_info: the file manifest of a files backup."""

from __future__ import annotations

DOCUMENTATION = r"""
module: files_backup_info
short_description: List the files, directories and links a files backup holds, with their metadata
version_added: 0.1.0
description:
  - Returns the file manifest of a backup of type C(files) (taken by M(pgsafe.backup.files_backup)) - every
    entry's path, type, size, mode, owner and group, mtime, SHA-256 and link target - decrypted from the
    repository. Nothing is changed.
options:
  backup_id:
    description: The backup to list, or V(latest) for the newest complete C(files) backup.
    type: str
    default: latest
  paths:
    description: Only these paths and everything below them; unset lists every entry. A path the backup does not
      hold fails, naming it.
    type: list
    elements: path
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.attributes.read_only
notes:
  - Listing needs the keys of O(encryption) (the file manifest is encrypted like the data).
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: What does the newest files backup hold under /etc/spendsync/keys?
  pgsafe.backup.files_backup_info:
    paths: [/etc/spendsync/keys]
    repository:
      path: /var/backups/pgsafe
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key
  register: listing

- name: Show modes and owners
  ansible.builtin.debug:
    msg: "{{ listing.entries | map(attribute='path') | zip(listing.entries | map(attribute='mode')) | list }}"
"""

RETURN = r"""
backup_id:
  description: The backup listed.
  returned: success
  type: str
  sample: 20261122T050102Z-files
finished_at:
  description: When the backup finished (UTC).
  returned: success
  type: str
paths:
  description: The paths the backup was taken of.
  returned: success
  type: list
  elements: str
entries:
  description:
    - The file manifest's entries (under O(paths) when given), each with C(path), C(type) (file, directory,
      symlink), C(size), C(mode) (octal string), C(uid), C(gid), C(owner), C(group), C(mtime), C(sha256) (files)
      and C(target) (links).
  returned: success
  type: list
  elements: dict
  sample: [{"path": "/etc/spendsync/config.yml", "type": "file", "size": 812, "mode": "0640", "owner": "root",
            "group": "spendsync", "uid": 0, "gid": 998, "mtime": 1795000000.0, "sha256": "5891b5b5...",
            "target": null}]
skipped:
  description: Entries the backup left out (sockets, fifos, devices), each with C(path) and C(reason).
  returned: success
  type: list
  elements: dict
error:
  description: What failed, where, and the fix.
  returned: failure
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.files_backup import list_files
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    module_argument_spec, settings_from_params)


def main():
    argument_spec = module_argument_spec(
        backup_id={"type": "str", "default": "latest"},
        paths={"type": "list", "elements": "path"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        context = Context.from_settings(settings_from_params(params), need_postgres=False)
        result = list_files(context, params["backup_id"], params["paths"] or None)
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
