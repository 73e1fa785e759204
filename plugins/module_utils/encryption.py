# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Envelope encryption of repository objects in the AWS Encryption SDK message format.

Every object is one AWS Encryption SDK message (format version 2) with the committing,
non-signing suite AES_256_GCM_HKDF_SHA512_COMMIT_KEY and 1 MiB frames. Each message's
data key is wrapped by every configured key (AWS KMS keys, possibly in several regions,
and raw AES-256 key files such as an offline escrow key), so any one of them decrypts it,
and ``aws-encryption-cli`` decrypts our objects without our code in an emergency.

The encryption context binds an object to its place (cluster, backup id, object name):
readers refuse a message whose context does not carry the expected pairs, so an object
that was moved, swapped or renamed in the repository is detected before it is used.

Key material never leaves this module: messages, reprs and ``describe()`` name keys by
id, never by value. The SDK's own loggers only ever see key ids too.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import re
import secrets
import stat
import struct
import threading
from pathlib import Path
from typing import IO, Any, Iterable

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError,
    EncryptionError,
    PgsafeError,
    missing_python_package,
)

try:
    import aws_encryption_sdk
    from aws_encryption_sdk import exceptions as esdk_exceptions
    from aws_encryption_sdk.caches.local import LocalCryptoMaterialsCache
    from aws_encryption_sdk.identifiers import (
        Algorithm,
        CommitmentPolicy,
        EncryptionKeyType,
        WrappingAlgorithm,
    )
    from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
    from aws_encryption_sdk.internal.formatting.deserialize import deserialize_header
    from aws_encryption_sdk.key_providers.base import MasterKeyProvider, MasterKeyProviderConfig
    from aws_encryption_sdk.key_providers.kms import KMSMasterKey, KMSMasterKeyConfig
    from aws_encryption_sdk.key_providers.raw import RawMasterKey, RawMasterKeyConfig
    from aws_encryption_sdk.materials_managers.caching import CachingCryptoMaterialsManager
    from aws_encryption_sdk.materials_managers.default import DefaultCryptoMaterialsManager

    HAS_ESDK = True
    ESDK_IMPORT_ERROR: str | None = None
except ImportError as exc:  # ansible-test sanity imports module_utils without it
    HAS_ESDK = False
    ESDK_IMPORT_ERROR = str(exc)

try:
    import boto3
    import botocore.config
    import botocore.exceptions

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR: str | None = None
except ImportError as exc:
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = str(exc)

try:
    from cryptography.exceptions import InvalidTag
except ImportError:  # only ever raised by the SDK, which needs cryptography

    class InvalidTag(Exception):  # type: ignore[no-redef]
        """Stand-in so except clauses stay valid without cryptography."""


# The SDK logs every failed key attempt with a traceback at ERROR level; with no logging
# configured Python would print those to stderr beside our own translated error. They still
# reach any handler the application installs.
logging.getLogger("aws_encryption_sdk").addHandler(logging.NullHandler())

KEY_NAMESPACE = "pgsafe"
KEY_LENGTH = 32
DEFAULT_FRAME_LENGTH = 1024 * 1024
# The SDK's own ceiling for frames is 2**31 - 1; GCM wants whole blocks.
MAX_FRAME_LENGTH = 2**31 - 1
ALGORITHM_SUITE = "AES_256_GCM_HKDF_SHA512_COMMIT_KEY"
COMMITMENT_POLICY = "REQUIRE_ENCRYPT_REQUIRE_DECRYPT"
# A crafted message with thousands of encrypted data keys would make us call KMS
# thousands of times; the SDK refuses more than this on decrypt (and encrypt).
MAX_WRAPPING_KEYS = 16
KMS_PROVIDER_ID = "aws-kms"
_RESERVED_CONTEXT_PREFIX = "aws-crypto-"
_SPEC_KEYS = frozenset(
    (
        "mode",
        "kms_key_ids",
        "key_files",
        "frame_length",
        "kms_endpoint_url",
        "kms_region",
        "cache_capacity",
        "cache_max_age_seconds",
        "cache_max_messages",
    )
)
_AWS_KEYS = frozenset(
    ("access_key", "secret_key", "session_token", "profile", "region", "endpoint_url", "verify_tls", "ca_bundle")
)
_KMS_ACTIONS = {
    "GenerateDataKey": "kms:GenerateDataKey",
    "Encrypt": "kms:Encrypt",
    "Decrypt": "kms:Decrypt",
    "DescribeKey": "kms:DescribeKey",
}
_ARN_RE = re.compile(r"^arn:(?P<partition>[^:]+):kms:(?P<region>[^:]+):(?P<account>[^:]*):(?P<resource>.+)$")


def _require_sdk() -> None:
    if not HAS_ESDK:
        raise missing_python_package("aws-encryption-sdk", ESDK_IMPORT_ERROR)
    if not HAS_BOTO3:
        raise missing_python_package("boto3", BOTO3_IMPORT_ERROR)


# --------------------------------------------------------------------------- key files


def generate_key_file(path: str | os.PathLike) -> None:
    """Write 32 random bytes, base64 on one line, to a new file with mode 0600.

    The file is created with O_EXCL: an existing key is never overwritten, because
    every object wrapped with it would become undecryptable with that key.
    """
    target = Path(path)
    parent = target.parent
    if not parent.exists():
        # 0700: the directory holds key files, nobody else needs to list it.
        os.makedirs(parent, mode=0o700, exist_ok=True)
    encoded = base64.b64encode(secrets.token_bytes(KEY_LENGTH)) + b"\n"
    try:
        fd = os.open(str(target), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise EncryptionError(
            "refusing to overwrite the existing key file",
            where=str(target),
            fix="choose another path; delete an old key only after every object wrapped with it "
            "has been re-encrypted (pgsafe.backup.kms_envelope state=rotated)",
        ) from None
    except OSError as error:
        raise EncryptionError(
            "cannot create the key file: %s" % error.strerror, where=str(target),
            fix="check that the directory exists and is writable by this user",
        ) from None
    try:
        # The umask can only narrow 0600, but be explicit in case the fd was inherited oddly.
        os.fchmod(fd, 0o600)
        view = memoryview(encoded)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(parent)


def load_key_file(path: str | os.PathLike) -> bytes:
    """Return the 32-byte key from a key file (base64 text of 44 characters, or 32 raw bytes).

    Refuses files readable or writable by group or others: a key anyone on the host can
    read protects nothing.
    """
    source = Path(path)
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise EncryptionError(
            "the key file does not exist",
            where=str(source),
            fix="generate one with `pgsafe key generate %s` or point encryption.key_files at the existing key"
            % source,
        ) from None
    except OSError as error:
        raise EncryptionError(
            "cannot read the key file: %s" % error.strerror, where=str(source),
            fix="run pgsafe as a user that can read it",
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise EncryptionError("the key file is not a regular file", where=str(source),
                              fix="point encryption.key_files at a key file made by `pgsafe key generate`")
    if st.st_mode & 0o077:
        raise EncryptionError(
            "refusing a key file that group or others can access (mode %04o; it must be 0600 or 0400)"
            % stat.S_IMODE(st.st_mode),
            where=str(source),
            fix="chmod 600 %s" % source,
        )
    try:
        with open(source, "rb") as handle:
            content = handle.read(1024)
    except OSError as error:
        raise EncryptionError("cannot read the key file: %s" % error.strerror, where=str(source),
                              fix="run pgsafe as a user that can read it") from None
    if len(content) == KEY_LENGTH:
        return content
    text = content.strip()
    if len(text) == 44:
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) == KEY_LENGTH:
            return key
    # Say only the length: the content is key material even when malformed.
    raise EncryptionError(
        "the key file holds %d bytes, not a 256-bit key (expected 44 base64 characters or 32 raw bytes)"
        % len(content),
        where=str(source),
        fix="point encryption.key_files at a key made by `pgsafe key generate PATH`",
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- KMS errors


def _kms_action(operation: str | None, default: str | None) -> str:
    if operation and operation in _KMS_ACTIONS:
        return _KMS_ACTIONS[operation]
    return default or "the KMS call"


def translate_kms_error(error: BaseException, key_id: str, action: str | None = None) -> EncryptionError:
    """Turn a botocore error about ``key_id`` into an EncryptionError saying what to fix.

    ``action`` (``kms:GenerateDataKey``, ``kms:Decrypt``...) is used when the error does not
    name its operation. Pure function: the AWS error message is quoted, never the request.
    """
    code = ""
    text = str(error)
    operation = None
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        text = str(response.get("Error", {}).get("Message", "")) or text
        operation = getattr(error, "operation_name", None)
    act = _kms_action(operation, action)
    where = "KMS key %s" % key_id
    if code in ("AccessDeniedException", "AccessDenied"):
        return EncryptionError(
            "KMS denied %s on key %s: %s" % (act, key_id, text), where=where,
            fix="grant %s on this key to the identity pgsafe runs as, in the key policy or its IAM policy" % act,
        )
    if code in ("DisabledException", "KMSInvalidStateException"):
        return EncryptionError(
            "KMS key %s is disabled or pending deletion (%s during %s): %s" % (key_id, code, act, text),
            where=where,
            fix="enable the key (aws kms enable-key / aws kms cancel-key-deletion), "
            "or decrypt with another key the object is wrapped for, such as the escrow key file",
        )
    if code == "NotFoundException":
        return EncryptionError(
            "KMS key %s does not exist in this account and region (%s): %s" % (key_id, act, text), where=where,
            fix="check encryption.kms_key_ids (ARN, key id or alias), the region (encryption.kms_region or the "
            "region in the ARN) and the account the credentials belong to",
        )
    if code in ("InvalidCiphertextException", "IncorrectKeyException"):
        return EncryptionError(
            "KMS key %s refused to unwrap the data key (%s): %s" % (key_id, code, text), where=where,
            fix="the encrypted data key or its encryption context was altered, or it belongs to another key; "
            "restore the object from another repository copy",
        )
    if code in ("ThrottlingException", "KMSInternalException", "DependencyTimeoutException", "LimitExceededException"):
        return EncryptionError(
            "KMS is busy or failing (%s during %s on %s): %s" % (code, act, key_id, text), where=where,
            fix="retry later; raise the KMS request quota or enable encryption.cache_* so fewer calls are made",
        )
    if code in ("UnrecognizedClientException", "InvalidClientTokenId", "ExpiredTokenException",
                "InvalidSignatureException", "SignatureDoesNotMatch"):
        return EncryptionError(
            "KMS rejected the AWS credentials (%s during %s on %s)" % (code, act, key_id), where=where,
            fix="check the access key / session token or profile given to pgsafe (or the AWS_* environment)",
        )
    if HAS_BOTO3:
        if isinstance(error, botocore.exceptions.NoCredentialsError):
            return EncryptionError(
                "no AWS credentials were found for %s on KMS key %s" % (act, key_id), where=where,
                fix="set repository/encryption aws access_key+secret_key or profile, the AWS_* environment "
                "variables, or an instance role",
            )
        if isinstance(error, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
                              botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError)):
            return EncryptionError(
                "the KMS endpoint for key %s is unreachable (%s): %s" % (key_id, act, error), where=where,
                fix="check the network path, encryption.kms_endpoint_url / endpoint_url and the region; "
                "an object wrapped for several keys can also be decrypted with another of them",
            )
    return EncryptionError(
        "KMS failed %s on key %s: %s%s" % (act, key_id, ("%s: " % code) if code else "", text), where=where,
        fix="read the KMS error above; check the key id, region, endpoint and permissions",
    )


def _find_cause(error: BaseException) -> BaseException | None:
    """The botocore error somewhere in the exception chain, if there is one."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:
        if HAS_BOTO3 and isinstance(current, (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


# --------------------------------------------------------------------------- SDK glue


class _AttemptLog(threading.local):
    """Why each key failed to unwrap the data key, per thread, for the 'no key could decrypt' message."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def reset(self) -> None:
        self.failures = []

    def add(self, text: str) -> None:
        if text not in self.failures:
            self.failures.append(text)


if HAS_ESDK:

    class _KeySet(MasterKeyProvider):
        """A neutral container: each configured key is a member, the first one is the primary.

        The container's own provider id matches no encrypted data key, so decryption asks each
        member once (a MasterKey as the root would be asked twice).
        """

        provider_id = "pgsafe-keyset"
        _config_class = MasterKeyProviderConfig

        def _new_master_key(self, key_id):
            raise esdk_exceptions.InvalidKeyIdError("pgsafe key sets only hold the configured keys")

    class _PgsafeKMSMasterKey(KMSMasterKey):
        """KMS master key whose failures are translated, and recorded so that decryption moves on.

        The SDK lets a BotoCoreError (unreachable endpoint) escape decryption, which would stop
        it from trying the escrow key: we turn every failure into DecryptKeyError.
        """

        _pgsafe_log: _AttemptLog

        def _generate_data_key(self, algorithm, encryption_context=None):
            try:
                return super()._generate_data_key(algorithm, encryption_context)
            except Exception as error:
                raise _translate_key_failure(error, self._key_id, "kms:GenerateDataKey") from None

        def _encrypt_data_key(self, data_key, algorithm, encryption_context=None):
            try:
                return super()._encrypt_data_key(data_key, algorithm, encryption_context)
            except Exception as error:
                raise _translate_key_failure(error, self._key_id, "kms:Encrypt") from None

        def _decrypt_data_key(self, encrypted_data_key, algorithm, encryption_context=None):
            try:
                return super()._decrypt_data_key(encrypted_data_key, algorithm, encryption_context)
            except Exception as error:
                translated = _translate_key_failure(error, self._key_id, "kms:Decrypt")
                self._pgsafe_log.add(translated.what)
                raise esdk_exceptions.DecryptKeyError(translated.what) from None

    class _PgsafeRawMasterKey(RawMasterKey):
        """Raw AES key from a key file; a same-named but different key is recorded, not fatal."""

        _pgsafe_log: _AttemptLog
        _pgsafe_path: str

        def _decrypt_data_key(self, encrypted_data_key, algorithm, encryption_context):
            try:
                return super()._decrypt_data_key(encrypted_data_key, algorithm, encryption_context)
            except Exception:
                text = (
                    "key file %s (name %r) is not the key this object was wrapped with "
                    "(same name, different key material)" % (self._pgsafe_path, _text(self.key_id))
                )
                self._pgsafe_log.add(text)
                raise esdk_exceptions.DecryptKeyError(text) from None


def _translate_key_failure(error: BaseException, key_id: str, action: str) -> EncryptionError:
    if isinstance(error, EncryptionError):
        return error
    cause = _find_cause(error)
    if cause is not None:
        return translate_kms_error(cause, key_id, action)
    return EncryptionError("KMS key %s failed %s: %s" % (key_id, action, error), where="KMS key %s" % key_id,
                           fix="check the key id, region, endpoint and permissions")


def _sdk_text(error: BaseException) -> str:
    """The SDK packs tuples into its exception args; keep the readable parts."""
    parts = []
    for arg in error.args:
        if isinstance(arg, tuple):
            parts.extend(str(a) for a in arg if not isinstance(a, type))
        elif not isinstance(arg, type):
            parts.append(str(arg))
    return ": ".join(p for p in parts if p) or type(error).__name__


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _check_context(context: dict, what: str) -> dict[str, str]:
    if not isinstance(context, dict):
        raise EncryptionError("the %s must be a dict of strings" % what, where=what)
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise EncryptionError("the %s must map strings to strings (got %r)" % (what, key), where=what)
        if key.startswith(_RESERVED_CONTEXT_PREFIX):
            raise EncryptionError("encryption context keys starting with %r are reserved" % _RESERVED_CONTEXT_PREFIX,
                                  where="%s[%s]" % (what, key))
    return dict(context)


class _ReplayReader:
    """Read ``prefix`` first, then ``source``: returns the parsed header bytes to the SDK."""

    def __init__(self, prefix: bytes, source: IO[bytes]):
        self._prefix = prefix
        self._source = source
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            data = self._prefix + self._source.read()
            self._prefix = b""
            return data
        if self._prefix:
            head = self._prefix[:size]
            self._prefix = self._prefix[size:]
            if len(head) == size:
                return head
            return head + _read_fully(self._source, size - len(head))
        return _read_fully(self._source, size)


def _read_fully(source: IO[bytes], size: int) -> bytes:
    """Read exactly ``size`` bytes unless EOF: pipes and sockets return short reads."""
    if size < 0:
        return source.read()
    parts = []
    remaining = size
    while remaining > 0:
        chunk = source.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


class _FullReader:
    """Source wrapper whose read(n) insists, for our own header parsing."""

    def __init__(self, source: IO[bytes]):
        self._source = source

    def read(self, size: int = -1) -> bytes:
        return _read_fully(self._source, -1 if size is None else size)


def _header_summary(header: Any) -> dict:
    keys = _edk_ids(header.encrypted_data_keys)
    return {
        "algorithm_suite": header.algorithm.name,
        "frame_length": header.frame_length,
        "encryption_context": dict(header.encryption_context),
        "keys": keys,
        "message_format_version": int(header.version.value),
    }


def _edk_ids(encrypted_data_keys: Iterable[Any]) -> list[dict]:
    ids = []
    for edk in encrypted_data_keys:
        provider = _text(edk.key_provider.provider_id)
        info = edk.key_provider.key_info
        if provider == KMS_PROVIDER_ID:
            ids.append({"type": "aws-kms", "provider_id": provider, "key_id": _text(info)})
        else:
            # Raw AES key info is name + tag bits (4 bytes) + IV length (4 bytes) + IV.
            name = info
            if len(info) >= 20:
                tag_bits, iv_len = struct.unpack(">II", info[-20:-12])
                if iv_len == 12 and tag_bits == 128:
                    name = info[:-20]
            ids.append({"type": "raw-aes", "provider_id": provider, "namespace": provider, "key_id": _text(name),
                        "name": _text(name)})
    ids.sort(key=lambda item: (item["type"], item["key_id"]))
    return ids


def _describe_ids(ids: list[dict]) -> str:
    if not ids:
        return "(none)"
    described = []
    for item in ids:
        if item["type"] == "aws-kms":
            described.append("aws-kms %s" % item["key_id"])
        else:
            described.append("raw-aes %s/%s" % (item["namespace"], item["key_id"]))
    return ", ".join(described)


def read_header(source: IO[bytes], name: str | None = None) -> tuple[Any, bytes]:
    """Parse a message header from ``source`` without decrypting: (header, raw header bytes)."""
    _require_sdk()
    try:
        return deserialize_header(_FullReader(source), MAX_WRAPPING_KEYS)
    except esdk_exceptions.MaxEncryptedDataKeysExceeded:
        raise EncryptionError(
            "the object's header lists more than %d wrapped data keys" % MAX_WRAPPING_KEYS, where=name,
            fix="this is not an object pgsafe wrote, or its header was forged; restore it from its own backup",
        ) from None
    except (esdk_exceptions.AWSEncryptionSDKClientError, struct.error, ValueError) as error:
        raise EncryptionError(
            "the object is not an AWS Encryption SDK message, or its header is truncated (%s)" % _sdk_text(error), where=name,
            fix="check that encryption is configured as when the object was written (mode none objects are "
            "plaintext) and restore a complete copy from another repository",
        ) from None


def wrapping_key_ids(source: IO[bytes] | bytes, name: str | None = None) -> list[dict]:
    """Key ids (provider id + key id) the message's data key is wrapped for, read from its header.

    Nothing is decrypted and no key is needed. Each entry: ``{"type": "aws-kms"|"raw-aes",
    "provider_id": ..., "key_id": ...}`` (raw keys also carry ``namespace`` and ``name``).
    """
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(bytes(source))
    header, _raw = read_header(source, name)
    return _edk_ids(header.encrypted_data_keys)


# --------------------------------------------------------------------------- readers


class _ChunkedReader(io.RawIOBase):
    """Serves reads of any size from an SDK stream pulled one frame at a time.

    The SDK keeps its output in a bytes buffer and re-slices it on every read, so many small
    reads of a 1 MiB frame copy the frame over and over; we pull whole frames and hand out
    views. Memory stays at about two frames whatever the object size.
    """

    def __init__(self, envelope: "Envelope", name: str | None):
        super().__init__()
        self._envelope = envelope
        self._name = name
        self._chunk = b""
        self._offset = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def _pull(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def read(self, size: int = -1) -> bytes:
        if self.closed:  # pylint: disable=using-constant-test  # io.RawIOBase.closed is a property
            raise ValueError("I/O operation on closed reader")
        if size is None or size < 0:
            parts = [self._chunk[self._offset:]]
            self._chunk, self._offset = b"", 0
            while not self._eof:
                parts.append(self._next())
            return b"".join(parts)
        parts = []
        wanted = size
        while wanted > 0:
            available = len(self._chunk) - self._offset
            if available == 0:
                if self._eof:
                    break
                self._chunk, self._offset = self._next(), 0
                continue
            take = min(available, wanted)
            if take == len(self._chunk) and self._offset == 0:
                parts.append(self._chunk)
            else:
                parts.append(self._chunk[self._offset:self._offset + take])
            self._offset += take
            wanted -= take
        return b"".join(parts)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def _next(self) -> bytes:
        data = self._pull()
        if not data:
            self._eof = True
        return data

    def __iter__(self):
        while True:
            chunk = self.read(self._envelope.frame_length)
            if not chunk:
                return
            yield chunk


class _EncryptingReader(_ChunkedReader):
    def __init__(self, envelope: "Envelope", stream: Any, name: str | None):
        super().__init__(envelope, name)
        self._stream = stream

    def _pull(self) -> bytes:
        try:
            return self._stream.read(self._envelope.frame_length)
        except PgsafeError:
            raise
        except Exception as error:
            raise self._envelope._translate(error, None, self._name, encrypting=True) from None

    def close(self) -> None:
        if not self.closed:
            try:
                self._stream.close()
            except Exception:  # closing an unfinished encryptor has nothing to report
                pass
        super().close()


class _DecryptingReader(_ChunkedReader):
    def __init__(self, envelope: "Envelope", stream: Any, header: Any, source: IO[bytes], name: str | None):
        super().__init__(envelope, name)
        self._stream = stream
        self._header = header
        self._source = source
        self.header_info = _header_summary(header)

    def _pull(self) -> bytes:
        try:
            data = self._stream.read(self._envelope.frame_length)
        except PgsafeError:
            raise
        except Exception as error:
            raise self._envelope._translate(error, self._header, self._name, encrypting=False) from None
        if not data:
            # The SDK stops at the final frame; bytes after it mean the object was altered.
            if self._source.read(1):
                raise EncryptionError(
                    "the encrypted object has trailing bytes after the end of the message", where=self._name,
                    fix="the object was modified or two objects were concatenated; restore it from another "
                    "repository copy",
                )
        return data

    def close(self) -> None:
        if not self.closed:
            try:
                self._stream.close()
            except Exception:  # the SDK complains when closed before the footer: the caller chose to stop
                pass
        super().close()


class _PassthroughReader(_ChunkedReader):
    """mode none: bytes pass through unchanged."""

    def __init__(self, envelope: "Envelope", source: IO[bytes], name: str | None):
        super().__init__(envelope, name)
        self._source = source

    def _pull(self) -> bytes:
        return _read_fully(self._source, self._envelope.frame_length)


# --------------------------------------------------------------------------- Envelope


class _KeyFile:
    __slots__ = ("name", "path", "_key")

    def __init__(self, name: str, path: str, key: bytes):
        self.name = name
        self.path = path
        self._key = key

    def __repr__(self) -> str:
        return "_KeyFile(name=%r, path=%r)" % (self.name, self.path)


class Envelope:
    """The configured key set and algorithm; builds encrypting and decrypting readers.

    Build it with :meth:`from_spec`. Thread-safe for concurrent readers.
    """

    def __init__(
        self,
        *,
        mode: str = "envelope",
        kms_key_ids: list[str] | None = None,
        key_files: list[_KeyFile] | None = None,
        frame_length: int = DEFAULT_FRAME_LENGTH,
        aws: dict | None = None,
        kms_endpoint_url: str | None = None,
        kms_region: str | None = None,
        cache_capacity: int = 100,
        cache_max_age_seconds: float = 300.0,
        cache_max_messages: int = 1000,
    ):
        self.mode = mode
        self.kms_key_ids = list(kms_key_ids or [])
        self.key_files = list(key_files or [])
        self.frame_length = frame_length
        self._aws = dict(aws or {})
        self.kms_endpoint_url = kms_endpoint_url or self._aws.get("endpoint_url") or None
        self.kms_region = kms_region or self._aws.get("region") or None
        self.cache_capacity = cache_capacity
        self.cache_max_age_seconds = float(cache_max_age_seconds)
        self.cache_max_messages = cache_max_messages
        self._lock = threading.RLock()
        self._log = _AttemptLog()
        self._session = None
        self._clients: dict[str, Any] = {}
        self._resolved: dict[str, str] = {}
        self._resolve_errors: dict[str, EncryptionError] = {}
        self._keyset = None
        self._cmm = None
        self._client = None

    def __repr__(self) -> str:
        return "Envelope(mode=%r, kms_key_ids=%r, key_files=%r, frame_length=%d)" % (
            self.mode, self.kms_key_ids, [k.name for k in self.key_files], self.frame_length)

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_spec(cls, spec: dict | None, aws: dict | None = None) -> "Envelope":
        """Validate the ``encryption`` options and load key files (refusing loose permissions)."""
        spec = dict(spec or {})
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise ConfigError(
                "unknown encryption option(s): %s" % ", ".join(unknown), where="encryption",
                fix="use only %s" % ", ".join(sorted(_SPEC_KEYS)),
            )
        aws = dict(aws or {})
        unknown_aws = sorted(set(aws) - _AWS_KEYS)
        if unknown_aws:
            raise ConfigError("unknown aws option(s): %s" % ", ".join(unknown_aws), where="aws",
                              fix="use only %s" % ", ".join(sorted(_AWS_KEYS)))
        mode = spec.get("mode") or "envelope"
        if mode not in ("envelope", "none"):
            raise ConfigError("encryption.mode must be 'envelope' or 'none', not %r" % (mode,),
                              where="encryption.mode", fix="set encryption.mode: envelope (or none to store plaintext)")
        frame_length = _positive_int(spec, "frame_length", DEFAULT_FRAME_LENGTH)
        if frame_length > MAX_FRAME_LENGTH or frame_length % 16:
            raise ConfigError("encryption.frame_length must be a multiple of 16 up to %d" % MAX_FRAME_LENGTH,
                              where="encryption.frame_length", fix="leave it at the default 1048576 (1 MiB)")
        common = dict(
            frame_length=frame_length,
            cache_capacity=_positive_int(spec, "cache_capacity", 100),
            cache_max_age_seconds=_positive_number(spec, "cache_max_age_seconds", 300.0),
            cache_max_messages=_positive_int(spec, "cache_max_messages", 1000),
        )
        if common["cache_max_messages"] > 2**32:
            raise ConfigError("encryption.cache_max_messages must be at most 2**32",
                              where="encryption.cache_max_messages", fix="use the default 1000")
        if mode == "none":
            return cls(mode="none", **common)

        kms_key_ids = spec.get("kms_key_ids") or []
        if isinstance(kms_key_ids, str):
            kms_key_ids = [kms_key_ids]
        if not isinstance(kms_key_ids, list) or not all(isinstance(k, str) and k.strip() for k in kms_key_ids):
            raise ConfigError("encryption.kms_key_ids must be a list of KMS key ARNs, key ids or aliases",
                              where="encryption.kms_key_ids", fix="e.g. [arn:aws:kms:eu-west-1:111122223333:key/...]")
        kms_key_ids = [k.strip() for k in kms_key_ids]
        if len(set(kms_key_ids)) != len(kms_key_ids):
            raise ConfigError("encryption.kms_key_ids lists a key twice", where="encryption.kms_key_ids",
                              fix="list each key once")
        key_files = []
        for index, entry in enumerate(spec.get("key_files") or []):
            where = "encryption.key_files[%d]" % index
            if isinstance(entry, str):
                entry = {"path": entry}
            if not isinstance(entry, dict) or not entry.get("path"):
                raise ConfigError("each key file needs a path", where=where, fix="use {path: /etc/pgsafe/escrow.key}")
            extra = sorted(set(entry) - {"path", "name"})
            if extra:
                raise ConfigError("unknown key file option(s): %s" % ", ".join(extra), where=where,
                                  fix="use only path and name")
            path = str(entry["path"])
            name = str(entry.get("name") or Path(path).stem)
            if not name:
                raise ConfigError("the key file name is empty", where=where, fix="set name explicitly")
            key_files.append(_KeyFile(name, path, load_key_file(path)))
        names = [k.name for k in key_files]
        if len(set(names)) != len(names):
            raise ConfigError("two key files have the same name: %s" % ", ".join(sorted(names)),
                              where="encryption.key_files", fix="give each key file a distinct name")
        if not kms_key_ids and not key_files:
            raise ConfigError(
                "encryption is enabled but no key is configured",
                where="encryption.kms_key_ids/encryption.key_files",
                fix="list KMS keys in encryption.kms_key_ids and/or key files in encryption.key_files "
                "(generate one with `pgsafe key generate PATH`), or set encryption.mode: none to store plaintext",
            )
        if len(kms_key_ids) + len(key_files) > MAX_WRAPPING_KEYS:
            raise ConfigError("at most %d keys may wrap an object" % MAX_WRAPPING_KEYS,
                              where="encryption.kms_key_ids/encryption.key_files", fix="configure fewer keys")
        return cls(
            mode="envelope",
            kms_key_ids=kms_key_ids,
            key_files=key_files,
            aws=aws,
            kms_endpoint_url=spec.get("kms_endpoint_url"),
            kms_region=spec.get("kms_region"),
            **common,
        )

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    # ----------------------------------------------------------------- AWS clients

    def _boto_session(self):
        if self._session is None:
            kwargs = {}
            if self._aws.get("access_key"):
                kwargs["aws_access_key_id"] = self._aws["access_key"]
                kwargs["aws_secret_access_key"] = self._aws.get("secret_key")
                if self._aws.get("session_token"):
                    kwargs["aws_session_token"] = self._aws["session_token"]
            if self._aws.get("profile"):
                kwargs["profile_name"] = self._aws["profile"]
            if self.kms_region:
                kwargs["region_name"] = self.kms_region
            try:
                self._session = boto3.session.Session(**kwargs)
            except botocore.exceptions.ProfileNotFound as error:
                raise ConfigError(str(error), where="aws.profile", fix="name a profile from ~/.aws/config") from None
        return self._session

    def _kms_client(self, region: str):
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                verify: Any = True
                if self._aws.get("ca_bundle"):
                    verify = self._aws["ca_bundle"]
                elif self._aws.get("verify_tls") is False:
                    verify = False
                config = botocore.config.Config(
                    connect_timeout=5,
                    read_timeout=30,
                    retries={"max_attempts": 3, "mode": "standard"},
                    user_agent_extra="pgsafe",
                )
                client = self._boto_session().client(
                    "kms", region_name=region, endpoint_url=self.kms_endpoint_url, verify=verify, config=config
                )
                self._clients[region] = client
            return client

    def _region_for(self, key_id: str) -> str:
        match = _ARN_RE.match(key_id)
        if match:
            return match.group("region")
        region = self.kms_region or self._boto_session().region_name
        if not region:
            raise ConfigError(
                "no AWS region for KMS key %s (not an ARN)" % key_id, where="encryption.kms_region",
                fix="use the key's full ARN, or set encryption.kms_region (or aws.region / AWS_DEFAULT_REGION)",
            )
        return region

    def _resolve_kms_key(self, key_id: str) -> str:
        """The key ARN: decrypting needs it, because the SDK matches wrapped keys by ARN."""
        match = _ARN_RE.match(key_id)
        if match and match.group("resource").startswith("key/"):
            return key_id
        client = self._kms_client(self._region_for(key_id))
        try:
            return client.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
        except Exception as error:
            raise _translate_key_failure(error, key_id, "kms:DescribeKey") from None

    # ----------------------------------------------------------------- key set

    def _materials(self):
        """The crypto materials manager, built once, on first use (no network before that)."""
        with self._lock:
            if self._cmm is not None:
                return self._cmm
            _require_sdk()
            keys = []
            for key_id in self.kms_key_ids:
                try:
                    arn = self._resolved.get(key_id) or self._resolve_kms_key(key_id)
                except EncryptionError as error:
                    # Keep going: decryption works with any one key. Encryption refuses below.
                    self._resolve_errors[key_id] = error
                    continue
                self._resolved[key_id] = arn
                master_key = _PgsafeKMSMasterKey(
                    config=KMSMasterKeyConfig(key_id=arn, client=self._kms_client(self._region_for(arn)))
                )
                master_key._pgsafe_log = self._log
                keys.append(master_key)
            for key_file in self.key_files:
                master_key = _PgsafeRawMasterKey(
                    config=RawMasterKeyConfig(
                        key_id=key_file.name,
                        provider_id=KEY_NAMESPACE,
                        wrapping_key=WrappingKey(
                            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                            wrapping_key=key_file._key,
                            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
                        ),
                    )
                )
                master_key._pgsafe_log = self._log
                master_key._pgsafe_path = key_file.path
                keys.append(master_key)
            keyset = _KeySet()
            # The first configured key is the primary (it generates the data key); the others
            # wrap the same data key, so any one of them decrypts.
            for master_key in keys:
                keyset.add_master_key_provider(master_key)
            if self.kms_key_ids:
                # The cache partitions entries by encryption context: it saves KMS calls only for
                # callers that reuse one context for many objects (WAL uses {cluster, kind: wal,
                # timeline}); per-object contexts (backup files) always get a fresh data key.
                self._cmm = CachingCryptoMaterialsManager(
                    master_key_provider=keyset,
                    cache=LocalCryptoMaterialsCache(capacity=self.cache_capacity),
                    max_age=self.cache_max_age_seconds,
                    max_messages_encrypted=self.cache_max_messages,
                )
            else:
                # Raw keys cost nothing to use: a fresh data key per object.
                self._cmm = DefaultCryptoMaterialsManager(master_key_provider=keyset)
            self._keyset = keyset
            self._client = aws_encryption_sdk.EncryptionSDKClient(
                commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT,
                max_encrypted_data_keys=MAX_WRAPPING_KEYS,
            )
            return self._cmm

    def expected_wrapping_key_ids(self) -> list[dict]:
        """What :func:`wrapping_key_ids` returns for a message this envelope writes (KMS ids as ARNs)."""
        if not self.enabled:
            return []
        self._materials()
        self._raise_resolve_errors()
        ids = [{"type": "aws-kms", "provider_id": KMS_PROVIDER_ID, "key_id": self._resolved[k]}
               for k in self.kms_key_ids]
        ids += [{"type": "raw-aes", "provider_id": KEY_NAMESPACE, "namespace": KEY_NAMESPACE, "key_id": k.name,
                 "name": k.name} for k in self.key_files]
        ids.sort(key=lambda item: (item["type"], item["key_id"]))
        return ids

    def is_wrapped_by(self, source: IO[bytes] | bytes, name: str | None = None) -> bool:
        """True when the message is wrapped for exactly this envelope's keys.

        Raw keys are named, not fingerprinted, in the header: a different key file with the
        same name would look identical, so each raw key must also unwrap its data key (local,
        no KMS call).
        """
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(bytes(source))
        header, _raw = read_header(source, name)
        if _edk_ids(header.encrypted_data_keys) != self.expected_wrapping_key_ids():
            return False
        for member in self._keyset._members:
            if member.provider_id != KEY_NAMESPACE:
                continue
            edks = [edk for edk in header.encrypted_data_keys if member.owns_data_key(edk)]
            try:
                member.decrypt_data_key(edks[0], header.algorithm, header.encryption_context)
            except Exception:
                return False
        return True

    def _raise_resolve_errors(self) -> None:
        for key_id in self.kms_key_ids:
            if key_id in self._resolve_errors:
                raise self._resolve_errors[key_id]

    def describe(self) -> dict:
        """The manifest's description of how objects are encrypted: key ids only, never key material."""
        if not self.enabled:
            return {"format": "none"}
        keys = [{"type": "aws-kms", "key_id": self._resolved.get(k, k)} for k in self.kms_key_ids]
        keys += [{"type": "raw-aes", "namespace": KEY_NAMESPACE, "name": k.name} for k in self.key_files]
        return {
            "format": "aws-encryption-sdk",
            "message_format_version": 2,
            "algorithm_suite": ALGORITHM_SUITE,
            "frame_length": self.frame_length,
            "commitment_policy": COMMITMENT_POLICY,
            "keys": keys,
        }

    def _configured_text(self) -> str:
        parts = ["aws-kms %s" % self._resolved.get(k, k) for k in self.kms_key_ids]
        parts += ["raw-aes %s/%s (%s)" % (KEY_NAMESPACE, k.name, k.path) for k in self.key_files]
        return ", ".join(parts) or "(none)"

    # ----------------------------------------------------------------- readers

    def encrypting_reader(self, source: IO[bytes], context: dict[str, str], size: int | None = None,
                          name: str | None = None) -> io.RawIOBase:
        """A file-like object whose read(n) returns the ciphertext of ``source`` (pull streaming).

        ``size`` (plaintext bytes) lets the data-key cache serve this object; seekable sources
        report it themselves. Memory is bounded by about two frames.
        """
        context = _check_context(context, "encryption context")
        if not self.enabled:
            return _PassthroughReader(self, source, name)
        cmm = self._materials()
        self._raise_resolve_errors()
        kwargs: dict[str, Any] = {}
        if size is not None:
            kwargs["source_length"] = size
        stream = self._client.stream(
            mode="e",
            source=source,
            materials_manager=cmm,
            encryption_context=context,
            algorithm=Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
            frame_length=self.frame_length,
            **kwargs,
        )
        return _EncryptingReader(self, stream, name)

    def decrypting_reader(self, source: IO[bytes], expected_context: dict[str, str],
                          name: str | None = None) -> io.RawIOBase:
        """A file-like object whose read(n) returns authenticated plaintext of the message in ``source``.

        The header is checked against ``expected_context`` before any key is used: an object
        from another backup or place fails at once with a message saying so.
        """
        expected_context = _check_context(expected_context, "expected encryption context")
        if not self.enabled:
            return _PassthroughReader(self, source, name)
        cmm = self._materials()
        header, raw_header = read_header(source, name)
        actual = header.encryption_context
        for key, value in sorted(expected_context.items()):
            if actual.get(key) != value:
                got = actual.get(key)
                raise EncryptionError(
                    "encryption context mismatch: expected %s=%s got %s: the object belongs to another "
                    "backup or object" % (key, value, "(absent)" if got is None else got),
                    where=name,
                    fix="the object was moved, swapped or renamed in the repository; restore it from its own backup",
                )
        if header.algorithm.name != ALGORITHM_SUITE:
            raise EncryptionError(
                "the object uses algorithm suite %s, not %s" % (header.algorithm.name, ALGORITHM_SUITE), where=name,
                fix="pgsafe only reads objects it wrote; decrypt this one with aws-encryption-cli",
            )
        self._log.reset()
        stream = self._client.stream(
            mode="decrypt-unsigned",
            source=_ReplayReader(raw_header, source),
            materials_manager=cmm,
        )
        return _DecryptingReader(self, stream, header, source, name)

    def encrypt_bytes(self, data: bytes, context: dict[str, str], name: str | None = None) -> bytes:
        """Encrypt a small object in memory."""
        with self.encrypting_reader(io.BytesIO(data), context, size=len(data), name=name) as reader:
            return reader.read()

    def decrypt_bytes(self, data: bytes, expected_context: dict[str, str], name: str | None = None) -> bytes:
        """Decrypt a small object in memory."""
        with self.decrypting_reader(io.BytesIO(data), expected_context, name=name) as reader:
            return reader.read()

    # ----------------------------------------------------------------- errors

    def _translate(self, error: BaseException, header: Any, name: str | None, encrypting: bool) -> PgsafeError:
        if isinstance(error, PgsafeError):
            return error
        if isinstance(error, InvalidTag):
            return EncryptionError(
                "the ciphertext failed authentication: the object was modified or corrupted", where=name,
                fix="do not use this copy; restore the object from another repository copy or backup",
            )
        if HAS_ESDK and isinstance(error, esdk_exceptions.DecryptKeyError) and header is not None:
            wrapped = _edk_ids(header.encrypted_data_keys)
            reasons = list(self._log.failures)
            reasons += [e.what for k, e in self._resolve_errors.items()]
            text = "none of the configured keys can decrypt the object: it is wrapped for %s; configured: %s" % (
                _describe_ids(wrapped), self._configured_text())
            if reasons:
                text += "; attempts: %s" % "; ".join(reasons)
            return EncryptionError(
                text, where=name,
                fix="configure one of the keys it is wrapped for (encryption.kms_key_ids or encryption.key_files, "
                "e.g. the escrow key file), or fix the KMS error listed",
            )
        if HAS_ESDK and isinstance(error, esdk_exceptions.MasterKeyProviderError) and "commitment" in str(error):
            return EncryptionError(
                "key commitment check failed: the object's header was altered", where=name,
                fix="do not use this copy; restore the object from another repository copy or backup",
            )
        if HAS_ESDK and isinstance(error, esdk_exceptions.SerializationError):
            if "Header authorization failed" in str(error):
                return EncryptionError(
                    "the message header failed authentication: the object was modified", where=name,
                    fix="do not use this copy; restore the object from another repository copy or backup",
                )
            return EncryptionError(
                "the encrypted object is truncated or malformed (%s)" % _sdk_text(error), where=name,
                fix="copy the object again from a repository that holds it complete, or restore from another backup",
            )
        cause = _find_cause(error)
        if cause is not None:
            key = self._resolved.get(self.kms_key_ids[0], self.kms_key_ids[0]) if self.kms_key_ids else "?"
            return translate_kms_error(cause, key, "kms:GenerateDataKey" if encrypting else "kms:Decrypt")
        return EncryptionError(
            "%s failed: %s: %s" % ("encryption" if encrypting else "decryption", type(error).__name__, error),
            where=name, fix="check the encryption settings and the object",
        )


def _positive_int(spec: dict, key: str, default: int) -> int:
    value = spec.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        try:
            value = int(value) if not isinstance(value, bool) else -1
        except (TypeError, ValueError):
            value = -1
        if value <= 0:
            raise ConfigError("encryption.%s must be a positive integer" % key, where="encryption.%s" % key,
                              fix="use a whole number above 0 or leave the default (%s)" % default)
    return int(value)


def _positive_number(spec: dict, key: str, default: float) -> float:
    value = spec.get(key)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or number <= 0:
        raise ConfigError("encryption.%s must be a positive number" % key, where="encryption.%s" % key,
                          fix="use a number of seconds above 0 or leave the default (%s)" % default)
    return number
