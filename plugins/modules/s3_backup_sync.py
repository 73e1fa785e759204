#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module s3_backup_sync: copy complete backups between the local repository and a remote one."""

from __future__ import annotations

DOCUMENTATION = r"""
module: s3_backup_sync
short_description: Copy complete backups between the local repository and a remote (usually S3) repository
version_added: 0.1.0
description:
  - Copies complete backups of one cluster from O(repository) (the local copy) to O(remote) (V(push)), back
    (V(pull)), or both ways (V(sync)).
  - Only complete backups are copied; a backup without a manifest (running, failed or interrupted) is skipped
    and reported in RV(skipped_incomplete).
  - Idempotent by checksum. A backup whose manifest is byte-identical at the destination and whose objects are
    all there with the manifest's sizes (and SHA-256 where the destination records it) is left alone.
  - Objects are streamed and hashed on the way; an object that does not match its manifest is not copied and
    the task fails. The manifest is copied last, so an interrupted copy leaves an incomplete backup at the
    destination, never a complete-looking one.
  - Objects are copied as stored (compressed and encrypted), so no encryption key is needed and none is used.
  - Sync never deletes. Run M(pgsafe.backup.retention_prune) on each repository.
options:
  remote:
    description:
      - The other repository. Same suboptions as O(repository); usually V(s3).
    type: dict
    required: true
    suboptions:
      name:
        description: A label for messages and metrics (for example V(cloud)). Defaults to V(remote).
        type: str
      type:
        description: Repository kind.
        type: str
        choices: [filesystem, s3]
        default: filesystem
      path:
        description: Root directory of a filesystem repository.
        type: path
      create:
        description: Create a missing filesystem repository root (0700).
        type: bool
        default: false
      bucket:
        description: S3 bucket name.
        type: str
      prefix:
        description: Key prefix inside the bucket.
        type: str
      endpoint_url:
        description: URL of an S3-compatible endpoint (MinIO, Ceph, a local test server). Unset for AWS.
        type: str
      path_style:
        description: Use path-style addressing (MinIO and Ceph usually need it).
        type: bool
        default: false
      verify_tls:
        description: Verify the endpoint's TLS certificate.
        type: bool
        default: true
      ca_bundle:
        description: CA bundle file for a private endpoint certificate.
        type: path
      sse:
        description: Server-side encryption requested from S3, in addition to pgsafe's own envelope encryption.
        type: str
        choices: [AES256, "aws:kms"]
      sse_kms_key_id:
        description: KMS key for O(remote.sse=aws:kms).
        type: str
      storage_class:
        description: S3 storage class for new objects (for example V(STANDARD_IA)).
        type: str
      object_lock_mode:
        description: Object Lock retention mode for new objects (the bucket must have Object Lock enabled).
        type: str
        choices: [GOVERNANCE, COMPLIANCE]
      object_lock_days:
        description: Days of Object Lock retention for new objects.
        type: int
      part_size_mb:
        description: Multipart upload part size.
        type: int
        default: 16
      max_concurrency:
        description: Parts uploaded in parallel.
        type: int
        default: 4
      checksum_when_required:
        description: Send and check payload checksums only when required, for older S3-compatible servers.
        type: bool
        default: false
      connect_timeout:
        description: Seconds to wait for a connection.
        type: int
        default: 10
      read_timeout:
        description: Seconds to wait on a stalled transfer before retrying.
        type: int
        default: 60
      max_attempts:
        description: Attempts per request (jittered backoff; only safe calls are retried).
        type: int
        default: 5
      access_key:
        description: AWS access key id. Falls back to the environment.
        type: str
        aliases: [aws_access_key_id]
      secret_key:
        description: AWS secret access key. Never logged.
        type: str
        aliases: [aws_secret_access_key]
      session_token:
        description: AWS session token. Never logged.
        type: str
        aliases: [aws_session_token]
      profile:
        description: AWS profile name.
        type: str
        aliases: [aws_profile]
      region:
        description: AWS region.
        type: str
        aliases: [aws_region]
  mode:
    description:
      - V(push) copies from O(repository) to O(remote); V(pull) from O(remote) to O(repository); V(sync) does
        both, so each ends up with every complete backup of the other.
    type: str
    choices: [push, pull, sync]
    default: push
  backup_ids:
    description: Copy only these backups. Unset copies every complete backup of O(cluster).
    type: list
    elements: str
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.attributes
attributes:
  check_mode:
    support: full
    details: Compares manifests, sizes and checksums and lists what would be copied (RV(copied)); copies nothing.
  diff_mode:
    support: full
    details: Complete backup ids at each destination repository, before and after.
  idempotent:
    support: full
    details: Decided by manifest bytes, object sizes and SHA-256, not by times.
notes:
  - The encryption and compression options are accepted, so that C(module_defaults) for the group
    C(group/pgsafe.backup.pgsafe) apply unchanged, but they are not used (objects are copied as stored).
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: Push every complete local backup to S3
  pgsafe.backup.s3_backup_sync:
    cluster: db01
    repository:
      path: /var/backups/pgsafe
    remote:
      name: cloud
      type: s3
      bucket: acme-pg-backups
      prefix: prod
      storage_class: STANDARD_IA

- name: Fetch one backup from S3 to the local repository before a restore
  pgsafe.backup.s3_backup_sync:
    cluster: db01
    mode: pull
    backup_ids: [20261122T050102Z-logical]
    repository:
      path: /var/backups/pgsafe
    remote:
      type: s3
      bucket: acme-pg-backups
      prefix: prod
"""

RETURN = r"""
mode:
  description: The direction(s) copied.
  returned: success
  type: str
  sample: push
cluster:
  description: The cluster whose backups were considered.
  returned: success
  type: str
copied:
  description:
    - Backups copied (or that would be, in check mode), each with the objects that moved (the manifest last).
  returned: success
  type: list
  elements: dict
  sample: [{"backup_id": "20261122T050102Z-logical", "from": "local", "to": "cloud",
            "objects": ["app.dump.zst.enc", "manifest.json"]}]
unchanged:
  description: Backups already identical at the destination.
  returned: success
  type: list
  elements: dict
skipped_incomplete:
  description: Backups without a manifest at the source; never copied.
  returned: success
  type: list
  elements: dict
  sample: [{"backup_id": "20261122T060102Z-logical", "repository": "local"}]
bytes_copied:
  description: Stored bytes copied (or that would be, in check mode).
  returned: success
  type: int
objects_copied:
  description: Objects copied, manifests included.
  returned: success
  type: int
diff:
  description: Complete backup ids at each destination, keyed by its location, before and after.
  returned: diff mode
  type: dict
error:
  description: What failed, where, and the fix.
  returned: failure
  type: dict
"""

import copy

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups
from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context, repository_from
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    REPOSITORY_OPTIONS, module_argument_spec, settings_from_params)
from ansible_collections.pgsafe.backup.plugins.module_utils.sync import sync_repositories


def complete_ids(repository, cluster: str) -> list:
    return sorted(entry["backup_id"] for entry in list_backups(repository, cluster) if entry["status"] == "complete")


def main():
    argument_spec = module_argument_spec(
        remote={"type": "dict", "required": True, "options": copy.deepcopy(REPOSITORY_OPTIONS)},
        mode={"type": "str", "choices": ["push", "pull", "sync"], "default": "push"},
        backup_ids={"type": "list", "elements": "str"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        settings = settings_from_params(params)
        context = Context.from_settings(settings, need_postgres=False, need_encryption=False)
        # The same cleaning as the primary repository (filesystem specs drop the S3 options).
        remote_spec = settings_from_params({"repository": params["remote"]}).get("repository") or {}
        remote_spec.setdefault("name", "remote")
        remote = repository_from(settings, remote_spec, "remote")
        destinations = {"push": [remote], "pull": [context.repository],
                        "sync": [context.repository, remote]}[params["mode"]]
        before = {dest.describe(): complete_ids(dest, context.cluster) for dest in destinations} \
            if module._diff else None
        result = sync_repositories(context.repository, remote, context.cluster, params["mode"],
                                   params["backup_ids"], module.check_mode)
        if module._diff:
            by_name = {dest.name: dest.describe() for dest in destinations}
            after = {location: list(ids) for location, ids in before.items()}
            for copied in result["copied"]:
                location = by_name.get(copied["to"])
                if location is not None and copied["backup_id"] not in after[location]:
                    after[location].append(copied["backup_id"])
            result["diff"] = {"before": before, "after": {key: sorted(ids) for key, ids in after.items()}}
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
