# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Encrypt, decrypt and re-wrap single files: the engine behind the kms_envelope module.

Idempotence is by content, never by timestamps: a destination that already holds the same
plaintext (compared by SHA-256 after authenticated decryption) is left alone, and a file
already wrapped by exactly the wanted key set is not re-encrypted. Every write goes to a
0600 temporary file beside the target, is fsynced and renamed over it, so a crash leaves
either the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from typing import IO, Iterator

from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import Envelope, read_header, wrapping_key_ids
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import EncryptionError, PgsafeError

CHUNK = 1024 * 1024


class _HashingReader:
    """Counts and hashes what passes through, so one pass yields both the copy and its SHA-256."""

    def __init__(self, source: IO[bytes]):
        self._source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data


def _copy(reader: IO[bytes], out: IO[bytes] | None) -> None:
    while True:
        chunk = reader.read(CHUNK)
        if not chunk:
            return
        if out is not None:
            out.write(chunk)


def _file_sha256(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(CHUNK)
            if not chunk:
                return digest.hexdigest(), size
            digest.update(chunk)
            size += len(chunk)


def _plaintext_sha256(path: str, envelope: Envelope, expected_context: dict[str, str]) -> tuple[str, int]:
    """SHA-256 and size of the authenticated plaintext of an encrypted file."""
    with open(path, "rb") as handle, envelope.decrypting_reader(handle, expected_context, name=path) as reader:
        hashing = _HashingReader(reader)
        _copy(hashing, None)
    return hashing.sha256.hexdigest(), hashing.size


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_output(dest: str) -> Iterator[tuple[IO[bytes], str]]:
    """A 0600 temp file beside ``dest``; yields (handle, temp path). The caller renames it."""
    parent = os.path.dirname(os.path.abspath(dest))
    fd, temp_path = tempfile.mkstemp(dir=parent, prefix=".%s." % os.path.basename(dest), suffix=".pgsafe-tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            yield handle, temp_path
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise


def _commit(temp_path: str, dest: str) -> None:
    try:
        os.replace(temp_path, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(dest)))


def _check_source(path: str) -> None:
    if not os.path.isfile(path):
        raise EncryptionError("the source file does not exist or is not a regular file", where=path,
                              fix="check the src path")


def _result(changed: bool, src: str, dest: str, sha256: str | None, size: int | None, keys: list) -> dict:
    return {"changed": changed, "src": src, "dest": dest, "sha256_plaintext": sha256, "size": size, "keys": keys}


def encrypt_file(src: str, dest: str, envelope: Envelope, context: dict[str, str], check_mode: bool = False) -> dict:
    """Write ``dest`` as the encryption of ``src`` unless it already decrypts to the same plaintext.

    A ``dest`` that our keys cannot decrypt, or whose context differs, is replaced.
    """
    _check_source(src)
    src_sha, src_size = _file_sha256(src)
    if os.path.exists(dest):
        try:
            dest_sha, _size = _plaintext_sha256(dest, envelope, context)
        except PgsafeError:
            dest_sha = None
        if dest_sha == src_sha:
            return _result(False, src, dest, src_sha, src_size, wrapping_key_ids(open_bytes(dest), dest))
    if check_mode:
        return _result(True, src, dest, src_sha, src_size, envelope.expected_wrapping_key_ids())
    with open(src, "rb") as source:
        hashing = _HashingReader(source)
        with _atomic_output(dest) as (out, temp_path):
            with envelope.encrypting_reader(hashing, context, size=src_size, name=src) as reader:
                _copy(reader, out)
        if hashing.sha256.hexdigest() != src_sha:
            os.unlink(temp_path)
            raise EncryptionError("the source file changed while it was being encrypted", where=src,
                                  fix="stop whatever writes to it and run again")
    _commit(temp_path, dest)
    return _result(True, src, dest, src_sha, src_size, wrapping_key_ids(open_bytes(dest), dest))


def decrypt_file(src: str, dest: str, envelope: Envelope, expected_context: dict[str, str],
                 check_mode: bool = False) -> dict:
    """Write ``dest`` as the authenticated plaintext of ``src`` unless it already holds it."""
    _check_source(src)
    keys = wrapping_key_ids(open_bytes(src), src)
    dest_sha = _file_sha256(dest)[0] if os.path.isfile(dest) else None
    if check_mode:
        # Decrypting to nothing proves the keys work and gives the plaintext digest.
        plain_sha, plain_size = _plaintext_sha256(src, envelope, expected_context)
        return _result(plain_sha != dest_sha, src, dest, plain_sha, plain_size, keys)
    with open(src, "rb") as source, _atomic_output(dest) as (out, temp_path):
        with envelope.decrypting_reader(source, expected_context, name=src) as reader:
            hashing = _HashingReader(reader)
            _copy(hashing, out)
    plain_sha = hashing.sha256.hexdigest()
    if plain_sha == dest_sha:
        os.unlink(temp_path)
        return _result(False, src, dest, plain_sha, hashing.size, keys)
    _commit(temp_path, dest)
    return _result(True, src, dest, plain_sha, hashing.size, keys)


def reencrypt_file(path: str, old_envelope: Envelope, new_envelope: Envelope, context: dict[str, str],
                   check_mode: bool = False) -> dict:
    """Re-wrap ``path`` for the new key set (key rotation), verified before it replaces the original.

    Unchanged when the header already lists exactly the new keys (then ``sha256_plaintext`` and
    ``size`` are None: nothing was decrypted). Otherwise: decrypt with the old keys and encrypt
    with the new ones into a temp file, decrypt that temp file with the new keys and compare
    plaintext digests, and only then rename over ``path``. The encryption context is carried
    over whole from the original header.
    """
    _check_source(path)
    if new_envelope.is_wrapped_by(open_bytes(path), path):
        return _result(False, path, path, None, None, wrapping_key_ids(open_bytes(path), path))
    if check_mode:
        return _result(True, path, path, None, None, new_envelope.expected_wrapping_key_ids())
    with open(path, "rb") as handle:
        header, _raw = read_header(handle, path)
    full_context = dict(header.encryption_context)
    with open(path, "rb") as source, _atomic_output(path) as (out, temp_path):
        with old_envelope.decrypting_reader(source, context, name=path) as plain:
            hashing = _HashingReader(plain)
            with new_envelope.encrypting_reader(hashing, full_context, name=path) as cipher:
                _copy(cipher, out)
    original_sha = hashing.sha256.hexdigest()
    try:
        check_sha, _size = _plaintext_sha256(temp_path, new_envelope, context)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise
    if check_sha != original_sha:
        os.unlink(temp_path)
        raise EncryptionError(
            "the re-encrypted copy does not decrypt to the original plaintext; the original is untouched",
            where=path, fix="report this as a bug; keep the original file",
        )
    _commit(temp_path, path)
    return _result(True, path, path, original_sha, hashing.size, wrapping_key_ids(open_bytes(path), path))


def open_bytes(path: str, limit: int = 64 * 1024) -> bytes:
    """The first bytes of a file: enough for any header we write (at most 16 wrapped keys)."""
    with open(path, "rb") as handle:
        return handle.read(limit)
