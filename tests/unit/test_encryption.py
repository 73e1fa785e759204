# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Envelope encryption with raw AES key files: real SDK, real files, no mocks."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils import encryption
from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import (
    Envelope,
    generate_key_file,
    load_key_file,
    read_header,
    translate_kms_error,
    wrapping_key_ids,
)
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, EncryptionError

CONTEXT = {"cluster": "main", "backup_id": "20261122T051500Z", "object": "base.tar.zst"}


@pytest.fixture
def keys(tmp_path):
    paths = {}
    for name in ("primary", "escrow", "stranger"):
        path = str(tmp_path / "keys" / ("%s.key" % name))
        generate_key_file(path)
        paths[name] = path
    return paths


@pytest.fixture
def envelope(keys):
    return Envelope.from_spec({"key_files": [{"path": keys["primary"]}, {"path": keys["escrow"]}]})


class TrickleReader:
    """A pipe-like source that returns short reads, as subprocess pipes and sockets do."""

    def __init__(self, data: bytes, step: int = 7001):
        self._data = memoryview(data)
        self._step = step

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = len(self._data)
        take = min(size, self._step)
        chunk = bytes(self._data[:take])
        self._data = self._data[take:]
        return chunk


def _stream_through(reader, chunk: int = 65536) -> bytes:
    out = io.BytesIO()
    while True:
        data = reader.read(chunk)
        if not data:
            return out.getvalue()
        out.write(data)


@pytest.mark.parametrize("kind", ["random", "compressible", "empty", "one-frame-exact"])
def test_round_trip_streams(envelope, kind):
    if kind == "random":
        plaintext = os.urandom(5 * 1024 * 1024 + 12345)
    elif kind == "compressible":
        plaintext = (b"INSERT INTO t VALUES (42, 'pgsafe');\n" * 150000)[: 5 * 1024 * 1024]
    elif kind == "empty":
        plaintext = b""
    else:
        plaintext = os.urandom(1024 * 1024)
    source = TrickleReader(plaintext)
    with envelope.encrypting_reader(source, CONTEXT) as reader:
        ciphertext = _stream_through(reader, 8192)
    assert plaintext[:4096] not in ciphertext or not plaintext
    with envelope.decrypting_reader(TrickleReader(ciphertext), CONTEXT) as reader:
        assert hashlib.sha256(_stream_through(reader, 100003)).digest() == hashlib.sha256(plaintext).digest()


def test_header_carries_suite_frame_length_context_and_both_keys(envelope):
    ciphertext = envelope.encrypt_bytes(os.urandom(3 * 1024 * 1024), CONTEXT)
    header, _raw = read_header(io.BytesIO(ciphertext))
    assert header.algorithm.name == "AES_256_GCM_HKDF_SHA512_COMMIT_KEY"
    assert header.frame_length == 1024 * 1024
    assert header.encryption_context == CONTEXT
    assert [k["name"] for k in wrapping_key_ids(ciphertext)] == ["escrow", "primary"]
    assert all(k["namespace"] == "pgsafe" for k in wrapping_key_ids(ciphertext))


def test_frame_length_is_configurable(keys):
    small = Envelope.from_spec({"key_files": [keys["primary"]], "frame_length": 65536})
    header, _raw = read_header(io.BytesIO(small.encrypt_bytes(b"x" * 200000, CONTEXT)))
    assert header.frame_length == 65536


def test_any_one_key_decrypts(envelope, keys):
    ciphertext = envelope.encrypt_bytes(b"wal segment", CONTEXT)
    for name in ("primary", "escrow"):
        alone = Envelope.from_spec({"key_files": [{"path": keys[name]}]})
        assert alone.decrypt_bytes(ciphertext, CONTEXT) == b"wal segment"


def test_context_mismatch_names_the_pair(envelope):
    ciphertext = envelope.encrypt_bytes(b"data", CONTEXT)
    with pytest.raises(EncryptionError) as info:
        envelope.decrypt_bytes(ciphertext, dict(CONTEXT, backup_id="20260101T000000Z"))
    message = str(info.value)
    assert "encryption context mismatch: expected backup_id=20260101T000000Z got 20261122T051500Z" in message
    assert "moved, swapped or renamed" in message
    with pytest.raises(EncryptionError, match="expected tenant=a got \\(absent\\)"):
        envelope.decrypt_bytes(ciphertext, {"tenant": "a"})


def test_subset_of_context_is_enough(envelope):
    ciphertext = envelope.encrypt_bytes(b"data", CONTEXT)
    assert envelope.decrypt_bytes(ciphertext, {"backup_id": CONTEXT["backup_id"]}) == b"data"


def test_wrong_key_says_which_keys(envelope, keys):
    ciphertext = envelope.encrypt_bytes(b"data", CONTEXT)
    stranger = Envelope.from_spec({"key_files": [{"path": keys["stranger"]}]})
    with pytest.raises(EncryptionError) as info:
        stranger.decrypt_bytes(ciphertext, CONTEXT)
    message = str(info.value)
    assert "none of the configured keys can decrypt" in message
    assert "pgsafe/primary" in message and "pgsafe/escrow" in message and "pgsafe/stranger" in message


def test_same_name_different_key_material(envelope, keys):
    ciphertext = envelope.encrypt_bytes(b"data", CONTEXT)
    impostor = Envelope.from_spec({"key_files": [{"path": keys["stranger"], "name": "escrow"}]})
    with pytest.raises(EncryptionError, match="same name, different key material"):
        impostor.decrypt_bytes(ciphertext, CONTEXT)


@pytest.mark.parametrize("damage", ["truncate-tail", "truncate-frame-boundary", "truncate-header", "flip-body",
                                    "flip-header-context", "flip-last-byte", "append"])
def test_tampering_is_detected(envelope, damage):
    plaintext = os.urandom(2 * 1024 * 1024 + 10)
    ciphertext = envelope.encrypt_bytes(plaintext, CONTEXT)
    _header, raw = read_header(io.BytesIO(ciphertext))
    if damage == "truncate-tail":
        bad = ciphertext[:-7]
    elif damage == "truncate-frame-boundary":
        # header + header auth (IV 12 + tag 16) + two full frames (4 + 12 + 1 MiB + 16 each)
        bad = ciphertext[: len(raw) + 28 + 2 * (4 + 12 + 1024 * 1024 + 16)]
    elif damage == "truncate-header":
        bad = ciphertext[: len(raw) // 2]
    elif damage == "flip-body":
        position = len(raw) + 28 + 5000
        bad = ciphertext[:position] + bytes([ciphertext[position] ^ 0x01]) + ciphertext[position + 1:]
    elif damage == "flip-header-context":
        position = raw.index(b"20261122T051500Z")
        bad = ciphertext[:position] + b"3" + ciphertext[position + 1:]
    elif damage == "flip-last-byte":
        bad = ciphertext[:-1] + bytes([ciphertext[-1] ^ 0x80])
    else:
        bad = ciphertext + b"\x00"
    with pytest.raises(EncryptionError):
        envelope.decrypt_bytes(bad, {"cluster": "main"})


def test_tampered_body_message_says_tampered(envelope):
    ciphertext = bytearray(envelope.encrypt_bytes(os.urandom(100000), CONTEXT))
    ciphertext[-100] ^= 0x04
    with pytest.raises(EncryptionError, match="failed authentication"):
        envelope.decrypt_bytes(bytes(ciphertext), CONTEXT)


def test_truncated_message_says_truncated(envelope):
    ciphertext = envelope.encrypt_bytes(os.urandom(100000), CONTEXT)
    with pytest.raises(EncryptionError, match="truncated"):
        envelope.decrypt_bytes(ciphertext[:-50], CONTEXT)


def test_plaintext_is_not_an_sdk_message(envelope):
    with pytest.raises(EncryptionError, match="not an AWS Encryption SDK message"):
        envelope.decrypt_bytes(b"(\xb5/\xfd plain zstd frame", CONTEXT)


def test_mode_none_passes_bytes_through():
    plain = Envelope.from_spec({"mode": "none"})
    assert plain.enabled is False
    assert plain.describe() == {"format": "none"}
    data = os.urandom(3 * 1024 * 1024 + 1)
    assert plain.encrypt_bytes(data, CONTEXT) == data
    assert plain.decrypt_bytes(data, CONTEXT) == data


def test_describe_names_keys_never_material(envelope, keys):
    description = envelope.describe()
    assert description == {
        "format": "aws-encryption-sdk",
        "message_format_version": 2,
        "algorithm_suite": "AES_256_GCM_HKDF_SHA512_COMMIT_KEY",
        "frame_length": 1048576,
        "commitment_policy": "REQUIRE_ENCRYPT_REQUIRE_DECRYPT",
        "keys": [{"type": "raw-aes", "namespace": "pgsafe", "name": "primary"},
                 {"type": "raw-aes", "namespace": "pgsafe", "name": "escrow"}],
    }
    for path in keys.values():
        material = load_key_file(path)
        encoded = open(path, "rb").read().strip()
        for text in (repr(envelope), str(description), repr(envelope.key_files)):
            assert encoded.decode() not in text
            assert repr(material) not in text


def test_no_key_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        Envelope.from_spec({"kms_key_ids": [], "key_files": []})
    assert info.value.where == "encryption.kms_key_ids/encryption.key_files"
    assert "pgsafe key generate" in info.value.fix


@pytest.mark.parametrize("spec, where", [
    ({"mode": "aes"}, "encryption.mode"),
    ({"kms_key_id": "x"}, "encryption"),
    ({"key_files": [{"path": "/x"}], "frame_length": 1000}, "encryption.frame_length"),
    ({"key_files": [{"path": "/x"}], "cache_capacity": 0}, "encryption.cache_capacity"),
])
def test_bad_options(spec, where):
    with pytest.raises(ConfigError) as info:
        Envelope.from_spec(spec)
    assert info.value.where == where


def test_duplicate_key_names_refused(keys):
    with pytest.raises(ConfigError, match="same name"):
        Envelope.from_spec({"key_files": [{"path": keys["primary"]}, {"path": keys["escrow"], "name": "primary"}]})


# ---------------------------------------------------------------- key files


def test_generate_key_file_mode_and_format(tmp_path):
    path = tmp_path / "new" / "dir" / "k.key"
    generate_key_file(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    text = path.read_bytes()
    assert text.endswith(b"\n") and len(text.strip()) == 44
    assert len(base64.b64decode(text.strip())) == 32
    assert load_key_file(str(path)) == base64.b64decode(text.strip())


def test_generate_key_file_refuses_overwrite(tmp_path):
    path = tmp_path / "k.key"
    generate_key_file(str(path))
    before = path.read_bytes()
    with pytest.raises(EncryptionError, match="refusing to overwrite"):
        generate_key_file(str(path))
    assert path.read_bytes() == before


def test_generated_keys_differ(tmp_path):
    generate_key_file(str(tmp_path / "a.key"))
    generate_key_file(str(tmp_path / "b.key"))
    assert load_key_file(str(tmp_path / "a.key")) != load_key_file(str(tmp_path / "b.key"))


def test_raw_32_byte_key_file(tmp_path):
    path = tmp_path / "raw.key"
    material = os.urandom(32)
    path.write_bytes(material)
    os.chmod(path, 0o400)
    assert load_key_file(str(path)) == material


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(keys, mode):
    os.chmod(keys["primary"], mode)
    with pytest.raises(EncryptionError) as info:
        Envelope.from_spec({"key_files": [{"path": keys["primary"]}]})
    assert "0600 or 0400" in info.value.what
    assert info.value.fix == "chmod 600 %s" % keys["primary"]


def test_missing_key_file_says_how_to_make_one(tmp_path):
    path = str(tmp_path / "absent.key")
    with pytest.raises(EncryptionError) as info:
        Envelope.from_spec({"key_files": [{"path": path}]})
    assert "pgsafe key generate %s" % path in info.value.fix


@pytest.mark.parametrize("content", [b"short", os.urandom(31), os.urandom(33), b"A" * 43 + b"\n", b"!" * 44])
def test_wrong_length_key_file(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(EncryptionError, match="not a 256-bit key") as info:
        load_key_file(str(path))
    # The message may say the length, never the content.
    assert content.decode("latin-1") not in str(info.value) or len(content) < 6


# ---------------------------------------------------------------- KMS error translation (pure)


def _client_error(code: str, operation: str):
    import botocore.exceptions

    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "msg from kms"}}, operation)


ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize("code, operation, expect_what, expect_fix", [
    ("AccessDeniedException", "GenerateDataKey", "denied kms:GenerateDataKey", "key policy"),
    ("AccessDeniedException", "Decrypt", "denied kms:Decrypt", "grant kms:Decrypt"),
    ("DisabledException", "Decrypt", "disabled or pending deletion", "escrow key file"),
    ("KMSInvalidStateException", "GenerateDataKey", "disabled or pending deletion", "enable the key"),
    ("NotFoundException", "GenerateDataKey", "does not exist", "encryption.kms_key_ids"),
    ("InvalidCiphertextException", "Decrypt", "refused to unwrap", "another repository copy"),
    ("ThrottlingException", "GenerateDataKey", "busy", "retry"),
])
def test_translate_kms_client_errors(code, operation, expect_what, expect_fix):
    error = translate_kms_error(_client_error(code, operation), ARN)
    assert isinstance(error, EncryptionError)
    assert expect_what in error.what and ARN in error.what
    assert expect_fix in error.fix


def test_translate_unreachable_endpoint():
    import botocore.exceptions

    error = translate_kms_error(botocore.exceptions.EndpointConnectionError(endpoint_url="https://kms.example"), ARN,
                                "kms:Decrypt")
    assert "unreachable" in error.what and "kms:Decrypt" in error.what
    assert "endpoint" in error.fix


def test_translate_never_echoes_secrets():
    import botocore.exceptions

    error = translate_kms_error(botocore.exceptions.NoCredentialsError(), ARN, "kms:GenerateDataKey")
    assert "no AWS credentials" in error.what


def test_sanity_import_without_sdk_flags():
    assert encryption.HAS_ESDK and encryption.HAS_BOTO3
