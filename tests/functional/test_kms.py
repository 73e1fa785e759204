# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Envelope encryption against KMS served over HTTP by a real moto server (which does real AES)."""

from __future__ import annotations

import os
import subprocess

import boto3
import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import (
    Envelope,
    generate_key_file,
    wrapping_key_ids,
)
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import EncryptionError
from tests.support.esdk_cli import EncryptionCliUnavailable, ensure_encryption_cli

CONTEXT = {"cluster": "main", "backup_id": "20261122T051500Z"}


def _kms(endpoint: str, region: str = "us-east-1"):
    return boto3.client("kms", endpoint_url=endpoint, region_name=region)


@pytest.fixture
def second_region_key(moto_endpoint):
    """A key in another region, as a second-region copy would use."""
    return _kms(moto_endpoint, "eu-west-1").create_key(Description="pgsafe second region")["KeyMetadata"]["Arn"]


@pytest.fixture
def escrow(tmp_path):
    path = str(tmp_path / "escrow" / "escrow.key")
    generate_key_file(path)
    return path


def test_two_kms_keys_and_escrow_any_one_decrypts(moto_endpoint, kms_key_arn, second_region_key, escrow):
    full = Envelope.from_spec({"kms_key_ids": [kms_key_arn, second_region_key], "key_files": [{"path": escrow}],
                               "kms_endpoint_url": moto_endpoint})
    plaintext = os.urandom(3 * 1024 * 1024 + 17)
    ciphertext = full.encrypt_bytes(plaintext, CONTEXT)
    ids = wrapping_key_ids(ciphertext)
    assert sorted(k["key_id"] for k in ids) == sorted([kms_key_arn, second_region_key, "escrow"])
    described_kms = {k["key_id"] for k in full.describe()["keys"] if k["type"] == "aws-kms"}
    assert described_kms == {kms_key_arn, second_region_key}

    only_second = Envelope.from_spec({"kms_key_ids": [second_region_key], "kms_endpoint_url": moto_endpoint})
    assert only_second.decrypt_bytes(ciphertext, CONTEXT) == plaintext

    only_escrow = Envelope.from_spec({"key_files": [{"path": escrow}]})
    assert only_escrow.decrypt_bytes(ciphertext, CONTEXT) == plaintext


def test_first_kms_unreachable_still_decrypts_with_escrow(moto_endpoint, kms_key_arn, escrow):
    writer = Envelope.from_spec({"kms_key_ids": [kms_key_arn], "key_files": [{"path": escrow}],
                                 "kms_endpoint_url": moto_endpoint})
    ciphertext = writer.encrypt_bytes(b"base backup", CONTEXT)
    # Port 9 (discard) on loopback refuses connections: the KMS region is "down".
    reader = Envelope.from_spec({"kms_key_ids": [kms_key_arn], "key_files": [{"path": escrow}],
                                 "kms_endpoint_url": "http://127.0.0.1:9"})
    assert reader.decrypt_bytes(ciphertext, CONTEXT) == b"base backup"


def test_unreachable_kms_only_says_unreachable(moto_endpoint, kms_key_arn):
    writer = Envelope.from_spec({"kms_key_ids": [kms_key_arn], "kms_endpoint_url": moto_endpoint})
    ciphertext = writer.encrypt_bytes(b"x", CONTEXT)
    reader = Envelope.from_spec({"kms_key_ids": [kms_key_arn], "kms_endpoint_url": "http://127.0.0.1:9"})
    with pytest.raises(EncryptionError) as info:
        reader.decrypt_bytes(ciphertext, CONTEXT)
    assert "unreachable" in info.value.what and kms_key_arn in info.value.what
    with pytest.raises(EncryptionError, match="unreachable"):
        reader.encrypt_bytes(b"x", CONTEXT)


def test_alias_and_bare_key_id_are_resolved(moto_endpoint, kms_key_arn):
    key_id = kms_key_arn.split("/")[-1]
    _kms(moto_endpoint).create_alias(AliasName="alias/pgsafe-%s" % key_id[:8], TargetKeyId=key_id)
    by_alias = Envelope.from_spec({"kms_key_ids": ["alias/pgsafe-%s" % key_id[:8]], "kms_endpoint_url": moto_endpoint,
                                   "kms_region": "us-east-1"})
    ciphertext = by_alias.encrypt_bytes(b"aliased", CONTEXT)
    assert [k["key_id"] for k in wrapping_key_ids(ciphertext)] == [kms_key_arn]
    by_id = Envelope.from_spec({"kms_key_ids": [key_id], "kms_endpoint_url": moto_endpoint})
    assert by_id.decrypt_bytes(ciphertext, CONTEXT) == b"aliased"
    assert by_alias.describe()["keys"] == [{"type": "aws-kms", "key_id": kms_key_arn}]


def test_endpoint_from_shared_aws_settings(moto_endpoint, kms_key_arn):
    envelope = Envelope.from_spec({"kms_key_ids": [kms_key_arn]},
                                  aws={"endpoint_url": moto_endpoint, "access_key": "testing",
                                       "secret_key": "testing-secret", "region": "us-east-1"})
    assert envelope.decrypt_bytes(envelope.encrypt_bytes(b"shared", CONTEXT), CONTEXT) == b"shared"
    assert "testing-secret" not in repr(envelope)


def test_key_that_does_not_exist(moto_endpoint):
    missing = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    envelope = Envelope.from_spec({"kms_key_ids": [missing], "kms_endpoint_url": moto_endpoint})
    with pytest.raises(EncryptionError) as info:
        envelope.encrypt_bytes(b"x", CONTEXT)
    assert "does not exist" in info.value.what and missing in info.value.what
    assert "kms:GenerateDataKey" in info.value.what


def test_wrong_kms_key_lists_wrapped_and_configured(moto_endpoint, kms_key_arn, second_region_key):
    writer = Envelope.from_spec({"kms_key_ids": [kms_key_arn], "kms_endpoint_url": moto_endpoint})
    ciphertext = writer.encrypt_bytes(b"x", CONTEXT)
    other = Envelope.from_spec({"kms_key_ids": [second_region_key], "kms_endpoint_url": moto_endpoint})
    with pytest.raises(EncryptionError) as info:
        other.decrypt_bytes(ciphertext, CONTEXT)
    assert "wrapped for aws-kms %s" % kms_key_arn in info.value.what
    assert "configured: aws-kms %s" % second_region_key in info.value.what


def test_kms_enforces_context_binding(moto_endpoint, kms_key_arn):
    """Our own check stops a swapped object before KMS is even asked."""
    envelope = Envelope.from_spec({"kms_key_ids": [kms_key_arn], "kms_endpoint_url": moto_endpoint})
    ciphertext = envelope.encrypt_bytes(b"x", CONTEXT)
    with pytest.raises(EncryptionError, match="encryption context mismatch: expected backup_id=other got "):
        envelope.decrypt_bytes(ciphertext, {"backup_id": "other"})


def test_scheduled_deletion_translation(moto_endpoint):
    """moto does not enforce disabled or pending-deletion keys (MACHINE-NOTES): if it ever
    does, this checks the real path; otherwise the translation is covered by the pure test in
    tests/unit/test_encryption.py."""
    kms = _kms(moto_endpoint)
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    kms.schedule_key_deletion(KeyId=arn.split("/")[-1], PendingWindowInDays=7)
    envelope = Envelope.from_spec({"kms_key_ids": [arn], "kms_endpoint_url": moto_endpoint})
    try:
        envelope.encrypt_bytes(b"x", CONTEXT)
    except EncryptionError as error:
        assert "disabled or pending deletion" in error.what
    else:
        pytest.skip("moto accepts GenerateDataKey on a key pending deletion")


def test_data_key_cache_reuses_context(moto_endpoint, kms_key_arn):
    envelope = Envelope.from_spec({"kms_key_ids": [kms_key_arn], "kms_endpoint_url": moto_endpoint,
                                   "cache_max_messages": 5})
    envelope.expected_wrapping_key_ids()  # builds the key set and its client
    calls = []
    client = envelope._kms_client("us-east-1")  # pylint: disable=protected-access
    client.meta.events.register("before-call.kms", lambda model, **_kw: calls.append(model.name))
    wal = {"cluster": "main", "kind": "wal", "timeline": "1"}
    segments = [envelope.encrypt_bytes(os.urandom(4096), wal) for _segment in range(12)]
    # 12 messages with at most 5 per data key: 3 data keys.
    assert calls.count("GenerateDataKey") == 3
    # A per-object context never hits the cache.
    envelope.encrypt_bytes(b"a", {"object": "1"})
    envelope.encrypt_bytes(b"a", {"object": "2"})
    assert calls.count("GenerateDataKey") == 5
    for segment in segments:
        envelope.decrypt_bytes(segment, wal)
    assert calls.count("Decrypt") <= 3


# ---------------------------------------------------------------- emergency path: aws-encryption-cli


@pytest.fixture(scope="session")
def encryption_cli():
    """aws-encryption-cli 4.3.0 in its own virtualenv (it pins aws-encryption-sdk 3.x), built once."""
    try:
        return ensure_encryption_cli()
    except EncryptionCliUnavailable as exc:
        pytest.skip(str(exc))


def test_aws_encryption_cli_decrypts_our_objects(moto_endpoint, kms_key_arn, escrow, tmp_path, encryption_cli):
    envelope = Envelope.from_spec({"kms_key_ids": [kms_key_arn], "key_files": [{"path": escrow}],
                                   "kms_endpoint_url": moto_endpoint})
    plaintext = os.urandom(2 * 1024 * 1024 + 999)
    encrypted = tmp_path / "base.tar.zst.enc"
    encrypted.write_bytes(envelope.encrypt_bytes(plaintext, CONTEXT))
    output = tmp_path / "base.tar.zst"
    env = dict(os.environ, AWS_ENDPOINT_URL=moto_endpoint)
    command = [
        encryption_cli, "--decrypt", "--input", str(encrypted), "--output", str(output),
        "--wrapping-keys", "key=%s" % kms_key_arn,
        "--encryption-context", "cluster=main", "backup_id=20261122T051500Z",
        "--commitment-policy", "require-encrypt-require-decrypt", "-S",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert output.read_bytes() == plaintext

    # And the CLI refuses when the context says the object belongs elsewhere.
    wrong = command[:]
    wrong[wrong.index("backup_id=20261122T051500Z")] = "backup_id=other"
    output.unlink()
    result = subprocess.run(wrong, env=env, capture_output=True, text=True, timeout=120, check=False)
    # The CLI reports the failure on stderr (its exit code stays 0) and deletes its output.
    assert "Operation failed" in result.stderr or result.returncode != 0
    assert not output.exists()
