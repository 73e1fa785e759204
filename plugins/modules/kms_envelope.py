#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module kms_envelope: encrypt, decrypt or re-wrap one file with pgsafe's envelope keys."""

from __future__ import annotations

DOCUMENTATION = r"""
module: kms_envelope
short_description: Encrypt, decrypt or re-encrypt (rotate keys of) a file with envelope encryption
version_added: 0.1.0
description:
  - Encrypts a file in the AWS Encryption SDK message format (committing suite) with the keys of O(encryption)
    (AWS KMS keys and/or local key files), decrypts such a file, or re-wraps it for a new key set (key rotation).
  - The same format and keys as the backups, so an operator can seal a configuration file, a key escrow copy or
    a restored object with the keys the team already holds; C(aws-encryption-cli) decrypts the result too.
  - Idempotent by content, not by timestamps. V(encrypted) leaves O(dest) alone when it already decrypts (with
    the given O(context)) to the bytes of O(src); V(decrypted) leaves O(dest) alone when it already holds the
    plaintext; V(reencrypted) leaves O(src) alone when its header already lists exactly the keys of O(encryption).
  - Every write goes to a private (0600) temporary file beside the target, is synced and renamed over it, so an
    interruption leaves the old file or the new one, never half of either. A re-encrypted file is decrypted again
    with the new keys and compared with the original plaintext before it replaces the original.
options:
  src:
    description:
      - The file to read. For O(state=reencrypted), the encrypted file that is rewritten in place.
    type: path
    required: true
  dest:
    description:
      - The file to write. Required for O(state=encrypted) and O(state=decrypted); the directory must exist.
      - Not used with O(state=reencrypted) (the file at O(src) is replaced); if given it must equal O(src).
    type: path
  state:
    description:
      - V(encrypted) writes O(dest) as the encryption of O(src) with the keys of O(encryption).
      - V(decrypted) writes O(dest) as the authenticated plaintext of O(src); any one configured key suffices.
      - V(reencrypted) decrypts O(src) with the keys of O(previous_encryption) (or of O(encryption) when that is
        unset) and encrypts it again for exactly the keys of O(encryption), keeping its encryption context.
    type: str
    choices: [encrypted, decrypted, reencrypted]
    default: encrypted
  context:
    description:
      - Encryption context, a mapping of strings to strings. It is bound to the ciphertext when encrypting and
        must match (every given pair present) when decrypting. Not secret; visible in the file header.
    type: dict
    default: {}
  previous_encryption:
    description:
      - For O(state=reencrypted), the keys the file is wrapped with now (the old key set). Same suboptions as
        O(encryption). Unset means O(encryption) is tried for decrypting too.
    type: dict
    suboptions:
      mode:
        description: Always V(envelope) here (a plaintext file cannot be re-encrypted).
        type: str
        choices: [envelope, none]
        default: envelope
      key_files:
        description: Local raw AES-256 key files of the old key set.
        type: list
        elements: dict
        suboptions:
          path:
            description: Key file path.
            type: path
            required: true
          name:
            description: Key name recorded in each message; defaults to the file name without extension.
            type: str
      kms_key_ids:
        description: AWS KMS key ARNs, ids or aliases of the old key set.
        type: list
        elements: str
      kms_endpoint_url:
        description: KMS endpoint URL for a KMS-compatible service or a test server.
        type: str
      kms_region:
        description: Region for KMS keys given without an ARN.
        type: str
      frame_length:
        description: Encryption frame length in bytes (not used for decrypting).
        type: int
        default: 1048576
      access_key:
        description: AWS access key id for KMS.
        type: str
        aliases: [aws_access_key_id]
      secret_key:
        description: AWS secret access key for KMS. Never logged.
        type: str
        aliases: [aws_secret_access_key]
      session_token:
        description: AWS session token for KMS. Never logged.
        type: str
        aliases: [aws_session_token]
      profile:
        description: AWS profile for KMS.
        type: str
        aliases: [aws_profile]
      region:
        description: AWS region for KMS.
        type: str
        aliases: [aws_region]
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads and authenticates the existing files to decide; writes nothing. V(decrypted) decrypts O(src) to
        nothing, which proves a configured key works.
  diff_mode:
    support: full
    details:
      - Before and after of the written file, with its SHA-256 on disk and the keys that wrap it. In check mode
        the SHA-256 of a ciphertext not yet written cannot be known and is shown as the text C(new ciphertext).
  idempotent:
    support: full
    details: Decided by content (plaintext SHA-256 after authenticated decryption, or the wrapping keys), never
      by file times.
notes:
  - The repository, compression and metrics options are accepted, so that C(module_defaults) for the group
    C(group/pgsafe.backup.pgsafe) apply unchanged, but they are not used.
  - The encrypted output of the same input differs on every run (fresh data key), which is why idempotence is
    decided by decrypting, not by comparing ciphertexts.
seealso:
  - name: AWS Encryption SDK message format
    description: The format of the files this module writes.
    link: https://docs.aws.amazon.com/encryption-sdk/latest/developer-guide/message-format.html
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: Seal the escrow copy of a key file with two KMS keys
  pgsafe.backup.kms_envelope:
    src: /root/escrow/backup.key
    dest: /root/escrow/backup.key.enc
    context:
      purpose: escrow
    encryption:
      kms_key_ids:
        - arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
        - arn:aws:kms:eu-central-1:111122223333:key/abcd1234-12ab-34cd-56ef-1234567890ab

- name: Decrypt it again with the local key
  pgsafe.backup.kms_envelope:
    src: /root/escrow/backup.key.enc
    dest: /root/escrow/backup.key
    state: decrypted
    context:
      purpose: escrow
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key

- name: Rotate from the old local key to a KMS key plus the new local key
  pgsafe.backup.kms_envelope:
    src: /root/escrow/backup.key.enc
    state: reencrypted
    context:
      purpose: escrow
    previous_encryption:
      key_files:
        - path: /etc/pgsafe/keys/old.key
    encryption:
      kms_key_ids:
        - arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
      key_files:
        - path: /etc/pgsafe/keys/backup.key
"""

RETURN = r"""
src:
  description: The file read.
  returned: success
  type: str
dest:
  description: The file written (equal to RV(src) for V(reencrypted)).
  returned: success
  type: str
sha256_plaintext:
  description:
    - SHA-256 of the plaintext. Null for V(reencrypted) when nothing had to be decrypted, and in check mode
      for V(reencrypted).
  returned: success
  type: str
size:
  description: Plaintext size in bytes (null where RV(sha256_plaintext) is null).
  returned: success
  type: int
keys:
  description: Keys that wrap the data key of the written file (or would, in check mode).
  returned: success
  type: list
  elements: dict
  sample: [{"type": "raw-aes", "provider_id": "pgsafe", "namespace": "pgsafe", "key_id": "backup"}]
diff:
  description: Before and after of the written file (SHA-256 on disk, wrapping key ids), in diff mode.
  returned: diff mode
  type: dict
error:
  description: What failed, where, and the fix.
  returned: failure
  type: dict
"""

import copy
import hashlib
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.config import envelope_from
from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import wrapping_key_ids
from ansible_collections.pgsafe.backup.plugins.module_utils.envelope_file import (
    decrypt_file, encrypt_file, open_bytes, reencrypt_file)
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    ENCRYPTION_OPTIONS, module_argument_spec, settings_from_params)

NEW_CIPHERTEXT = "new ciphertext"


def file_state(path: str, encrypted: bool) -> dict:
    """What diff mode shows of one file: its bytes' digest and, for ciphertext, the keys in its header."""
    if not os.path.isfile(path):
        return {"path": path, "exists": False, "sha256": None, "keys": []}
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    keys = []
    if encrypted:
        try:
            keys = [key["key_id"] for key in wrapping_key_ids(open_bytes(path), path)]
        except PgsafeError:
            keys = []  # not (yet) an envelope message: plaintext or foreign content
    return {"path": path, "exists": True, "sha256": digest.hexdigest(), "keys": keys}


def main():
    argument_spec = module_argument_spec(
        src={"type": "path", "required": True},
        dest={"type": "path"},
        state={"type": "str", "choices": ["encrypted", "decrypted", "reencrypted"], "default": "encrypted"},
        context={"type": "dict", "default": {}},
        previous_encryption={"type": "dict", "options": copy.deepcopy(ENCRYPTION_OPTIONS)},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("state", "encrypted", ["dest"]), ("state", "decrypted", ["dest"])])
    params = module.params
    state = params["state"]
    src = params["src"]
    dest = src if state == "reencrypted" else params["dest"]
    if state == "reencrypted" and params["dest"] not in (None, src):
        module.fail_json(msg="state=reencrypted rewrites src in place; dest must be omitted or equal src",
                         error={"category": "config", "what": "dest differs from src", "where": "dest",
                                "fix": "omit dest, or copy the file first and re-encrypt the copy"})
    writes_ciphertext = state != "decrypted"
    try:
        # A file needs keys only, not a repository: build the envelope alone rather than a whole Context.
        settings = settings_from_params(params)
        envelope = envelope_from(settings)
        before = file_state(dest, writes_ciphertext) if module._diff else None
        if state == "encrypted":
            result = encrypt_file(src, dest, envelope, params["context"], check_mode=module.check_mode)
        elif state == "decrypted":
            result = decrypt_file(src, dest, envelope, params["context"], check_mode=module.check_mode)
        else:
            previous = settings_from_params({"encryption": params["previous_encryption"]}).get("encryption")
            old_envelope = envelope_from({"encryption": previous}) if previous is not None else envelope
            result = reencrypt_file(src, old_envelope, envelope, params["context"], check_mode=module.check_mode)
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    if module._diff:
        if module.check_mode and result["changed"]:
            after = {"path": dest, "exists": True,
                     "sha256": result["sha256_plaintext"] if state == "decrypted" else NEW_CIPHERTEXT,
                     "keys": [key["key_id"] for key in result["keys"]] if writes_ciphertext else []}
        elif result["changed"]:
            after = file_state(dest, writes_ciphertext)
        else:
            after = before
        result["diff"] = {"before": before, "after": after}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
