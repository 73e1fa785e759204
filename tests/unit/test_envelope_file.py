# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kms_envelope engine on real files with raw key files: idempotence, rotation, atomicity."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import (
    Envelope,
    generate_key_file,
    wrapping_key_ids,
)
from ansible_collections.pgsafe.backup.plugins.module_utils.envelope_file import (
    decrypt_file,
    encrypt_file,
    reencrypt_file,
)
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import EncryptionError

CONTEXT = {"cluster": "main", "object": "pg_hba.conf"}


@pytest.fixture
def key_paths(tmp_path):
    paths = {}
    for name in ("a", "b", "escrow", "wrong"):
        path = str(tmp_path / "keys" / ("%s.key" % name))
        generate_key_file(path)
        paths[name] = path
    return paths


def _envelope(key_paths, *names):
    return Envelope.from_spec({"key_files": [{"path": key_paths[n]} for n in names]})


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "plain.bin"
    path.write_bytes(os.urandom(2 * 1024 * 1024 + 333))
    return str(path)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _names(path):
    return [k["key_id"] for k in wrapping_key_ids(open(path, "rb").read(65536))]


def _no_temp_files(directory):
    return not [name for name in os.listdir(directory) if name.endswith(".pgsafe-tmp")]


def test_encrypt_four_steps(tmp_path, key_paths, plain):
    envelope = _envelope(key_paths, "a", "escrow")
    dest = str(tmp_path / "out" / "plain.bin.enc")
    os.makedirs(os.path.dirname(dest))

    first = encrypt_file(plain, dest, envelope, CONTEXT, check_mode=True)
    assert first["changed"] is True and not os.path.exists(dest)
    assert first["sha256_plaintext"] == _sha(plain)

    second = encrypt_file(plain, dest, envelope, CONTEXT)
    assert second["changed"] is True
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    assert _names(dest) == ["a", "escrow"]
    assert envelope.decrypt_bytes(open(dest, "rb").read(), CONTEXT) == open(plain, "rb").read()
    assert second["size"] == os.path.getsize(plain)
    before = open(dest, "rb").read()

    third = encrypt_file(plain, dest, envelope, CONTEXT, check_mode=True)
    assert third["changed"] is False and open(dest, "rb").read() == before

    fourth = encrypt_file(plain, dest, envelope, CONTEXT)
    assert fourth["changed"] is False and open(dest, "rb").read() == before
    assert fourth["keys"] == second["keys"]
    assert _no_temp_files(os.path.dirname(dest))


def test_encrypt_replaces_when_source_changes(tmp_path, key_paths, plain):
    envelope = _envelope(key_paths, "a")
    dest = str(tmp_path / "x.enc")
    encrypt_file(plain, dest, envelope, CONTEXT)
    with open(plain, "ab") as handle:
        handle.write(b"one more line")
    assert encrypt_file(plain, dest, envelope, CONTEXT, check_mode=True)["changed"] is True
    assert encrypt_file(plain, dest, envelope, CONTEXT)["changed"] is True
    assert envelope.decrypt_bytes(open(dest, "rb").read(), CONTEXT) == open(plain, "rb").read()


def test_decrypt_four_steps(tmp_path, key_paths, plain):
    envelope = _envelope(key_paths, "a", "escrow")
    encrypted = str(tmp_path / "enc")
    encrypt_file(plain, encrypted, envelope, CONTEXT)
    dest = str(tmp_path / "restored.bin")
    escrow_only = _envelope(key_paths, "escrow")

    first = decrypt_file(encrypted, dest, escrow_only, CONTEXT, check_mode=True)
    assert first["changed"] is True and not os.path.exists(dest)
    second = decrypt_file(encrypted, dest, escrow_only, CONTEXT)
    assert second["changed"] is True and _sha(dest) == _sha(plain) == second["sha256_plaintext"]
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    third = decrypt_file(encrypted, dest, escrow_only, CONTEXT, check_mode=True)
    assert third["changed"] is False
    mtime = os.stat(dest).st_mtime_ns
    fourth = decrypt_file(encrypted, dest, escrow_only, CONTEXT)
    assert fourth["changed"] is False and os.stat(dest).st_mtime_ns == mtime
    assert _no_temp_files(str(tmp_path))


def test_decrypt_with_wrong_context_leaves_dest_alone(tmp_path, key_paths, plain):
    envelope = _envelope(key_paths, "a")
    encrypted = str(tmp_path / "enc")
    encrypt_file(plain, encrypted, envelope, CONTEXT)
    dest = tmp_path / "restored"
    dest.write_bytes(b"previous content")
    with pytest.raises(EncryptionError, match="encryption context mismatch"):
        decrypt_file(encrypted, str(dest), envelope, {"object": "other"})
    assert dest.read_bytes() == b"previous content"
    assert _no_temp_files(str(tmp_path))


def test_rotation_four_steps(tmp_path, key_paths, plain):
    old = _envelope(key_paths, "a", "escrow")
    new = _envelope(key_paths, "b", "escrow")
    path = str(tmp_path / "obj.enc")
    encrypt_file(plain, path, old, CONTEXT)
    original = open(path, "rb").read()

    first = reencrypt_file(path, old, new, CONTEXT, check_mode=True)
    assert first["changed"] is True and open(path, "rb").read() == original

    second = reencrypt_file(path, old, new, CONTEXT)
    assert second["changed"] is True
    assert second["sha256_plaintext"] == _sha(plain)
    assert _names(path) == ["b", "escrow"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # Only the new key set decrypts it now; key a alone does not.
    assert _envelope(key_paths, "b").decrypt_bytes(open(path, "rb").read(), CONTEXT) == open(plain, "rb").read()
    with pytest.raises(EncryptionError, match="none of the configured keys"):
        _envelope(key_paths, "a").decrypt_bytes(open(path, "rb").read(), CONTEXT)
    rotated = open(path, "rb").read()

    third = reencrypt_file(path, old, new, CONTEXT, check_mode=True)
    assert third["changed"] is False and open(path, "rb").read() == rotated
    fourth = reencrypt_file(path, old, new, CONTEXT)
    assert fourth["changed"] is False and open(path, "rb").read() == rotated
    assert _no_temp_files(str(tmp_path))


def test_rotation_with_wrong_old_key_leaves_file_untouched(tmp_path, key_paths, plain):
    path = str(tmp_path / "obj.enc")
    encrypt_file(plain, path, _envelope(key_paths, "a"), CONTEXT)
    original = open(path, "rb").read()
    with pytest.raises(EncryptionError, match="none of the configured keys"):
        reencrypt_file(path, _envelope(key_paths, "wrong"), _envelope(key_paths, "b"), CONTEXT)
    assert open(path, "rb").read() == original
    assert _no_temp_files(str(tmp_path))


def test_rotation_detects_same_name_different_key(tmp_path, key_paths, plain):
    """A replaced escrow file keeps its name: the header alone cannot tell, so we unwrap."""
    path = str(tmp_path / "obj.enc")
    encrypt_file(plain, path, _envelope(key_paths, "escrow"), CONTEXT)
    replaced = Envelope.from_spec({"key_files": [{"path": key_paths["wrong"], "name": "escrow"}]})
    assert reencrypt_file(path, _envelope(key_paths, "escrow"), replaced, CONTEXT, check_mode=True)["changed"]
    assert reencrypt_file(path, _envelope(key_paths, "escrow"), replaced, CONTEXT)["changed"]
    assert replaced.decrypt_bytes(open(path, "rb").read(), CONTEXT) == open(plain, "rb").read()


def test_rotation_keeps_full_context(tmp_path, key_paths, plain):
    path = str(tmp_path / "obj.enc")
    encrypt_file(plain, path, _envelope(key_paths, "a"), dict(CONTEXT, backup_id="b1"))
    reencrypt_file(path, _envelope(key_paths, "a"), _envelope(key_paths, "b"), {"cluster": "main"})
    with pytest.raises(EncryptionError, match="expected backup_id=b2 got b1"):
        _envelope(key_paths, "b").decrypt_bytes(open(path, "rb").read(), {"backup_id": "b2"})
