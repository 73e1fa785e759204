# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A repository in an S3 bucket (AWS, or an S3-compatible store through ``endpoint_url``).

Writes are atomic by S3's own rule: an object appears only when PutObject or
CompleteMultipartUpload succeeds. Large objects stream as multipart uploads with a
bounded window of parts in flight, so memory stays near
``(max_concurrency + 1) * part_size`` whatever the object size. Every part and every
small object carries its SHA-256 (``ChecksumSHA256``) so the store can refuse
corrupted bytes, and the whole object's SHA-256 is recorded in the ``sha256``
metadata so later comparisons need no read.

Credentials are never kept on the repository object nor put into messages: they go
into the boto3 session once, which falls back to the standard chain (environment
``AWS_*`` variables, shared profiles, instance role) for what the spec leaves out.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import hashlib
import io
import threading
import time
import urllib.parse
from typing import Any, BinaryIO, Iterator

try:
    import boto3
    import botocore.config
    import botocore.exceptions

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR: str | None = None
except ImportError as import_exc:  # ansible-test sanity imports module_utils without boto3
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = str(import_exc)

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError,
    NotFoundError,
    RepositoryError,
    missing_python_package,
)
from ansible_collections.pgsafe.backup.plugins.module_utils.repository import (
    ObjectInfo,
    ObjectWriter,
    Repository,
    join_key,
)

MIB = 1024 * 1024
MIN_PART_SIZE_MB = 5  # S3's floor for every part but the last
MAX_PART_SIZE_MB = 5 * 1024
MAX_PARTS = 10000  # S3's ceiling on parts per upload
SHA256_METADATA = "sha256"

SSE_CHOICES = (None, "AES256", "aws:kms")
OBJECT_LOCK_MODES = (None, "GOVERNANCE", "COMPLIANCE")

# The IAM action each client call needs, for AccessDenied messages that say what to grant.
IAM_ACTIONS = {
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "get_object": "s3:GetObject",
    "head_object": "s3:GetObject",
    "delete_object": "s3:DeleteObject",
    "list_objects_v2": "s3:ListBucket",
    "list_multipart_uploads": "s3:ListBucketMultipartUploads",
}
BUCKET_LEVEL_CALLS = {"list_objects_v2", "list_multipart_uploads"}

CREDENTIAL_ERROR_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
NOT_IMPLEMENTED_CODES = {"501", "NotImplemented"}


def _require_boto3() -> None:
    if not HAS_BOTO3:
        raise missing_python_package("boto3", BOTO3_IMPORT_ERROR)


def _b64_sha256(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _validate_endpoint_url(endpoint_url: str) -> str:
    """Accept exactly http(s)://host[:port] (optionally a trailing '/')."""
    problem = None
    try:
        parsed = urllib.parse.urlsplit(endpoint_url)
        port = parsed.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        parsed, port, problem = None, None, str(exc)
    if parsed is not None and problem is None:
        if parsed.scheme not in ("http", "https"):
            problem = "the scheme must be http or https"
        elif not parsed.hostname:
            problem = "there is no host name"
        elif parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            problem = "it has a path, query or fragment (the bucket goes in repository.bucket)"
        elif parsed.username or parsed.password:
            problem = "it contains credentials (use access_key/secret_key or the AWS_* environment)"
        elif port == 0:
            problem = "port 0 is not a port"
    if problem:
        # Never echo the URL when it contains credentials.
        shown = endpoint_url if parsed is None or not (parsed.username or parsed.password) else "(redacted)"
        raise ConfigError(
            "repository.endpoint_url %s is not usable: %s" % (shown, problem),
            where="repository.endpoint_url",
            fix="write it as http(s)://host[:port], for example http://127.0.0.1:9000",
        )
    return endpoint_url.rstrip("/")


def _positive_int(spec: dict, option: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
    value = spec.get(option)
    if value is None:
        return default
    try:
        number = int(value)
        if isinstance(value, bool) or number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(
            "repository.%s must be a whole number, not %r" % (option, value), where="repository.%s" % option
        ) from None
    if number < minimum or (maximum is not None and number > maximum):
        limits = "at least %d" % minimum if maximum is None else "between %d and %d" % (minimum, maximum)
        raise ConfigError(
            "repository.%s is %d; it must be %s" % (option, number, limits), where="repository.%s" % option
        )
    return number


def _positive_seconds(spec: dict, option: str, default: float) -> float:
    value = spec.get(option)
    if value is None:
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or seconds <= 0:
        raise ConfigError(
            "repository.%s must be a positive number of seconds, not %r" % (option, value),
            where="repository.%s" % option,
        )
    return seconds


def _choice(spec: dict, option: str, choices: tuple) -> Any:
    value = spec.get(option) or None
    if value not in choices:
        raise ConfigError(
            "repository.%s is %r; it must be one of %s" % (option, value, ", ".join(repr(c) for c in choices if c)),
            where="repository.%s" % option,
        )
    return value


def _to_posix(value: Any) -> float | None:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    return None


class _HiddenCredentials:
    """Holds explicit credentials until the client is built; its repr shows nothing,
    so vars(), debug dumps and tracebacks with locals cannot leak the secret."""

    __slots__ = ("values",)

    def __init__(self, values: dict):
        self.values = {key: value for key, value in values.items() if value}

    def __repr__(self) -> str:
        return "<credentials hidden>"

    __str__ = __repr__


class S3Repository(Repository):
    """Objects are ``<prefix>/<key>`` in one bucket."""

    kind = "s3"

    def __init__(
        self,
        name: str,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: dict | None = None,
        profile: str | None = None,
        path_style: bool = False,
        verify_tls: bool = True,
        ca_bundle: str | None = None,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        storage_class: str | None = None,
        object_lock_mode: str | None = None,
        object_lock_days: int | None = None,
        part_size_mb: int = 16,
        max_concurrency: int = 4,
        checksum_when_required: bool = False,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
    ):
        super().__init__(name)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.path_style = path_style
        self.verify_tls = verify_tls
        self.ca_bundle = ca_bundle
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
        self.storage_class = storage_class
        self.object_lock_mode = object_lock_mode
        self.object_lock_days = object_lock_days
        self.part_size = part_size_mb * MIB
        self.max_concurrency = max_concurrency
        self.checksum_when_required = checksum_when_required
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        # Held only until the client is built, then dropped: the secret lives in the
        # botocore credential object alone, never in an attribute a repr could show.
        self._pending_credentials = _HiddenCredentials(credentials or {})
        self._client = None
        self._client_lock = threading.Lock()

    @classmethod
    def from_spec(cls, name: str, spec: dict) -> "S3Repository":
        bucket = spec.get("bucket")
        if not bucket or not isinstance(bucket, str):
            raise ConfigError(
                "an S3 repository needs a bucket",
                where="repository.bucket",
                fix="set repository.bucket to the bucket name (without s3://)",
            )
        if bucket.startswith("s3://") or "/" in bucket:
            raise ConfigError(
                "repository.bucket %r must be a bare bucket name" % bucket,
                where="repository.bucket",
                fix="put the bucket name in repository.bucket and any path below it in repository.prefix",
            )
        prefix = spec.get("prefix") or ""
        if prefix.strip("/"):
            join_key(prefix)  # refuses '..' and empty segments
        endpoint_url = spec.get("endpoint_url") or None
        if endpoint_url is not None:
            endpoint_url = _validate_endpoint_url(str(endpoint_url))

        access_key = spec.get("access_key") or None
        secret_key = spec.get("secret_key") or None
        if bool(access_key) != bool(secret_key):
            raise ConfigError(
                "repository.access_key and repository.secret_key must be given together",
                where="repository.secret_key" if access_key else "repository.access_key",
                fix="set both, or neither to use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an instance role",
            )
        credentials = {
            "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key,
            "aws_session_token": spec.get("session_token") or None,
        }

        sse = _choice(spec, "sse", SSE_CHOICES)
        sse_kms_key_id = spec.get("sse_kms_key_id") or None
        if sse_kms_key_id and sse != "aws:kms":
            raise ConfigError(
                "repository.sse_kms_key_id is set but repository.sse is %r" % sse,
                where="repository.sse_kms_key_id",
                fix="set repository.sse: aws:kms, or remove sse_kms_key_id",
            )
        object_lock_mode = _choice(spec, "object_lock_mode", OBJECT_LOCK_MODES)
        object_lock_days = None
        if object_lock_mode:
            if spec.get("object_lock_days") is None:
                raise ConfigError(
                    "repository.object_lock_mode is %s but repository.object_lock_days is not set" % object_lock_mode,
                    where="repository.object_lock_days",
                    fix="set how many days each object stays locked (at least the retention you promise)",
                )
            object_lock_days = _positive_int(spec, "object_lock_days", 0)
        elif spec.get("object_lock_days") is not None:
            raise ConfigError(
                "repository.object_lock_days is set without repository.object_lock_mode",
                where="repository.object_lock_mode",
                fix="set object_lock_mode: GOVERNANCE or COMPLIANCE, or remove object_lock_days",
            )

        return cls(
            name,
            bucket=bucket,
            prefix=prefix,
            endpoint_url=endpoint_url,
            region=spec.get("region") or None,
            credentials=credentials,
            profile=spec.get("profile") or None,
            path_style=bool(spec.get("path_style", False)),
            verify_tls=bool(spec.get("verify_tls", True)),
            ca_bundle=spec.get("ca_bundle") or None,
            sse=sse,
            sse_kms_key_id=sse_kms_key_id,
            storage_class=spec.get("storage_class") or None,
            object_lock_mode=object_lock_mode,
            object_lock_days=object_lock_days,
            part_size_mb=_positive_int(spec, "part_size_mb", 16, MIN_PART_SIZE_MB, MAX_PART_SIZE_MB),
            max_concurrency=_positive_int(spec, "max_concurrency", 4, 1, 64),
            checksum_when_required=bool(spec.get("checksum_when_required", False)),
            connect_timeout=_positive_seconds(spec, "connect_timeout", 10.0),
            read_timeout=_positive_seconds(spec, "read_timeout", 60.0),
            max_attempts=_positive_int(spec, "max_attempts", 5, 1, 20),
        )

    def __repr__(self) -> str:
        return "S3Repository(name=%r, bucket=%r, prefix=%r, endpoint_url=%r)" % (
            self.name,
            self.bucket,
            self.prefix,
            self.endpoint_url,
        )

    def describe(self) -> str:
        location = "s3://%s/%s" % (self.bucket, self.prefix) if self.prefix else "s3://%s" % self.bucket
        if self.endpoint_url:
            location += " (endpoint %s)" % self.endpoint_url
        return location

    # --- client -------------------------------------------------------------------------
    @property
    def client(self):
        """The boto3 client, built on first use (importing boto3 costs ~0.7 s)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._build_client()
        return self._client

    def _build_client(self):
        _require_boto3()
        credentials = self._pending_credentials.values
        self._pending_credentials = _HiddenCredentials({})
        try:
            session = boto3.session.Session(profile_name=self.profile, region_name=self.region, **credentials)
        except botocore.exceptions.ProfileNotFound:
            raise ConfigError(
                "the AWS profile %r does not exist on this host" % self.profile,
                where="repository.profile",
                fix="create it in ~/.aws/config of the user that runs pgsafe, or remove repository.profile",
            ) from None
        # S3-compatible stores need some region for signing; AWS itself redirects.
        region = session.region_name or "us-east-1"
        config_options: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            # 'standard' retries throttling, 5xx and connection errors with jittered
            # exponential backoff, and only within a retry quota. total_max_attempts counts
            # the first try too (botocore's "max_attempts" would add one more).
            "retries": {"mode": "standard", "total_max_attempts": self.max_attempts},
            "max_pool_connections": max(10, self.max_concurrency + 2),
            "s3": {"addressing_style": "path" if self.path_style else "auto"},
        }
        if self.checksum_when_required:
            # Old MinIO/Ceph reject the aws-chunked trailing checksums botocore >= 1.36
            # adds by default. Our explicit ChecksumSHA256 headers still go out.
            config_options["request_checksum_calculation"] = "when_required"
            config_options["response_checksum_validation"] = "when_required"
        verify: bool | str = self.ca_bundle if (self.verify_tls and self.ca_bundle) else self.verify_tls
        return session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=region,
            verify=verify,
            config=botocore.config.Config(**config_options),
        )

    # --- keys and errors ----------------------------------------------------------------
    def _full_key(self, key: str) -> str:
        key = join_key(key)
        return "%s/%s" % (self.prefix, key) if self.prefix else key

    def _relative_key(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def _list_prefix(self, prefix: str) -> str:
        if not self.prefix:
            return prefix
        return "%s/%s" % (self.prefix, prefix)

    def _error(self, exc: Exception, call: str, key: str | None = None, action: str | None = None) -> RepositoryError:
        """A botocore failure as a message that says what to fix (like amazon.aws)."""
        full_key = self._full_key(key) if key else None
        where = "s3://%s/%s" % (self.bucket, full_key) if full_key else "s3://%s" % self.bucket
        doing = action or call.replace("_", " ")
        endpoint = self.endpoint_url or "the AWS S3 endpoint"

        if not HAS_BOTO3:
            return RepositoryError("%s failed: %s" % (doing, exc), where=where)
        if isinstance(exc, (botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError)):
            # Connected, then silence or a cut mid-request: a stalled link or an overloaded store,
            # not a wrong address. Each attempt waited read_timeout at most.
            return RepositoryError(
                "the S3 repository %s stopped answering while trying to %s (%s after %d attempts, each "
                "waiting at most repository.read_timeout = %g s)"
                % (self.describe(), doing, type(exc).__name__, self.max_attempts, self.read_timeout),
                where=where,
                fix="check the network path to %s and the S3 service's health, then re-run; raise "
                "repository.read_timeout only for a slow link" % endpoint,
            )
        if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)):
            return RepositoryError(
                "could not reach the S3 repository %s to %s after %d attempts: %s"
                % (self.describe(), doing, self.max_attempts, type(exc).__name__),
                where=where,
                fix="check repository.endpoint_url (%s), DNS, proxies, firewalls and that the "
                "S3 service is running" % endpoint,
            )
        if isinstance(exc, botocore.exceptions.SSLError):
            return RepositoryError(
                "TLS verification failed talking to %s" % self.describe(),
                where=where,
                fix="set repository.ca_bundle to the CA that signed the endpoint's certificate",
            )
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return RepositoryError(
                "no AWS credentials were found for the S3 repository %s" % self.describe(),
                where="repository.access_key",
                fix="set repository.access_key/secret_key, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or give the host an instance role",
            )
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket":
                return RepositoryError(
                    "the bucket %s does not exist at %s" % (self.bucket, endpoint),
                    where="repository.bucket",
                    fix="create the bucket, or correct repository.bucket (and endpoint_url/region)",
                )
            if code in CREDENTIAL_ERROR_CODES:
                return RepositoryError(
                    "S3 refused the credentials while trying to %s in %s (%s)" % (doing, self.describe(), code),
                    where=where,
                    fix="check the access key and secret key (repository.access_key/secret_key or the "
                    "AWS_* environment), that the session token has not expired, and the host clock",
                )
            if code in ("AccessDenied", "Forbidden", "AllAccessDisabled", "403") or status == 403:
                iam_action = IAM_ACTIONS.get(call, "s3:*")
                arn = "arn:aws:s3:::%s" % self.bucket
                if call not in BUCKET_LEVEL_CALLS and full_key:
                    arn += "/" + full_key
                return RepositoryError(
                    "access denied: %s on %s (while trying to %s)" % (iam_action, arn, doing),
                    where=where,
                    fix="grant %s on %s in the IAM policy of these credentials (and check the bucket "
                    "policy and any KMS key policy)" % (iam_action, arn),
                )
            if code in ("SlowDown", "ServiceUnavailable", "InternalError") or status >= 500:
                return RepositoryError(
                    "the S3 service at %s failed to %s after %d attempts (%s %s)"
                    % (endpoint, doing, self.max_attempts, status, code),
                    where=where,
                    fix="retry later; if it persists, check the S3 service's health, or raise "
                    "repository.max_attempts",
                )
            message = error.get("Message") or ""
            return RepositoryError(
                "S3 refused to %s in %s: %s %s" % (doing, self.describe(), code or status, message),
                where=where,
            )
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return RepositoryError("could not %s in %s: %s" % (doing, self.describe(), exc), where=where)
        return RepositoryError(
            "could not %s in %s: %s: %s" % (doing, self.describe(), type(exc).__name__, exc), where=where
        )

    @staticmethod
    def _error_code(exc: Exception) -> str:
        if HAS_BOTO3 and isinstance(exc, botocore.exceptions.ClientError):
            return str(exc.response.get("Error", {}).get("Code", ""))
        return ""

    def _write_options(self, content_type: str | None = None) -> dict:
        """Encryption, storage class, lock and content type shared by every write call."""
        options: dict[str, Any] = {}
        if self.sse:
            options["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id:
            options["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.storage_class:
            options["StorageClass"] = self.storage_class
        if self.object_lock_mode:
            options["ObjectLockMode"] = self.object_lock_mode
            options["ObjectLockRetainUntilDate"] = self.lock_until()
        if content_type:
            options["ContentType"] = content_type
        return options

    def lock_until(self) -> datetime.datetime | None:
        if not self.object_lock_mode:
            return None
        return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=self.object_lock_days or 0)

    # --- writing ------------------------------------------------------------------------
    def open_writer(self, key: str, sha256: str | None = None, content_type: str | None = None) -> ObjectWriter:
        _require_boto3()
        return _S3Writer(self, join_key(key), sha256, content_type)

    def _put_small(
        self,
        key: str,
        data: bytes | bytearray,
        sha256_hex: str,
        content_type: str | None = None,
        if_none_match: bool = False,
    ) -> dict:
        arguments = dict(
            Bucket=self.bucket,
            Key=self._full_key(key),
            Body=data,
            # ChecksumAlgorithm also satisfies Object Lock's "checksum header required".
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=_b64_sha256(data),
            Metadata={SHA256_METADATA: sha256_hex},
            **self._write_options(content_type),
        )
        if if_none_match:
            arguments["IfNoneMatch"] = "*"
        return self.client.put_object(**arguments)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        _require_boto3()
        sha256_hex = hashlib.sha256(data).hexdigest()
        try:
            # A conditional write: the existence check and the creation are one step on
            # the server. Note: if a retried attempt follows a success whose answer was
            # lost, the retry sees 412 and we report "existed"; callers (WAL archiving)
            # compare content in that case, so an identical object is still accepted.
            self._put_small(key, data, sha256_hex, if_none_match=True)
            return True
        except botocore.exceptions.ClientError as exc:
            code = self._error_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("PreconditionFailed", "412") or status == 412:
                return False
            if code == "ConditionalRequestConflict" or status == 409:
                # A concurrent conditional write to the same key won the race.
                return False
            if not (code in NOT_IMPLEMENTED_CODES or status == 501):
                raise self._error(exc, "put_object", key, "create " + key) from exc
        except Exception as exc:
            raise self._error(exc, "put_object", key, "create " + key) from exc
        # Fallback for S3-compatible servers without conditional writes (501): check,
        # then put. Not atomic: two writers racing on one key could both "create" it;
        # WAL archiving has a single writer per cluster (it holds the archive lock), so
        # the window is acceptable there.
        if self.stat(key) is not None:
            return False
        try:
            self._put_small(key, data, sha256_hex)
        except Exception as exc:
            raise self._error(exc, "put_object", key, "create " + key) from exc
        return True

    # --- reading ------------------------------------------------------------------------
    def open_reader(self, key: str) -> BinaryIO:
        _require_boto3()
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full_key(key))
        except botocore.exceptions.ClientError as exc:
            if self._error_code(exc) in NOT_FOUND_CODES:
                raise NotFoundError(
                    "object %s does not exist in bucket %s" % (self._full_key(key), self.bucket),
                    where=self.describe(),
                ) from None
            raise self._error(exc, "get_object", key, "read " + key) from exc
        except Exception as exc:
            raise self._error(exc, "get_object", key, "read " + key) from exc
        return _S3Reader(self, key, response["Body"])  # type: ignore[return-value]

    def _head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        except botocore.exceptions.ClientError as exc:
            if self._error_code(exc) in NOT_FOUND_CODES:
                return None
            raise self._error(exc, "head_object", key, "read the metadata of " + key) from exc
        except Exception as exc:
            raise self._error(exc, "head_object", key, "read the metadata of " + key) from exc

    def stat(self, key: str) -> ObjectInfo | None:
        _require_boto3()
        head = self._head(key)
        if head is None:
            return None
        return ObjectInfo(
            key=join_key(key),
            size=int(head.get("ContentLength", 0)),
            modified=_to_posix(head.get("LastModified")) or 0.0,
            sha256=(head.get("Metadata") or {}).get(SHA256_METADATA),
            # head_object, not get_object_retention: moto answers the latter with 500,
            # and HEAD needs only s3:GetObject.
            locked_until=_to_posix(head.get("ObjectLockRetainUntilDate")),
            change_token="%s:%s" % (head.get("ETag", ""), head.get("VersionId", "")),
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Keys in S3's order (UTF-8 binary, which equals Python's str order).
        ``sha256`` stays None here: filling it would cost one HEAD per object."""
        _require_boto3()
        full_prefix = self._list_prefix(prefix)
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for entry in page.get("Contents", []):
                    yield ObjectInfo(
                        key=self._relative_key(entry["Key"]),
                        size=int(entry.get("Size", 0)),
                        modified=_to_posix(entry.get("LastModified")) or 0.0,
                    )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, "list_objects_v2", None, "list %s" % (full_prefix or "the bucket")) from exc

    # --- deleting -----------------------------------------------------------------------
    def delete(self, key: str) -> None:
        _require_boto3()
        # HEAD first: on a versioned bucket with Object Lock, a DeleteObject without a
        # version id "succeeds" by adding a delete marker while the locked bytes stay
        # (and are billed). Refusing here keeps prune honest about what it removed.
        head = self._head(key)
        if head is None:
            return
        locked_until = _to_posix(head.get("ObjectLockRetainUntilDate"))
        if locked_until and locked_until > time.time():
            raise self._retention_error(key, head)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._full_key(key))
        except botocore.exceptions.ClientError as exc:
            code = self._error_code(exc)
            if code in NOT_FOUND_CODES:
                return
            if code == "AccessDenied":
                head = self._head(key)
                if head is not None and head.get("ObjectLockRetainUntilDate"):
                    raise self._retention_error(key, head) from exc
            raise self._error(exc, "delete_object", key, "delete " + key) from exc
        except Exception as exc:
            raise self._error(exc, "delete_object", key, "delete " + key) from exc

    def _retention_error(self, key: str, head: dict) -> RepositoryError:
        until = head.get("ObjectLockRetainUntilDate")
        until_text = until.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(until, datetime.datetime) else str(until)
        return RepositoryError(
            "object %s in %s is under %s retention until %s and cannot be deleted before then"
            % (key, self.describe(), head.get("ObjectLockMode", "Object Lock"), until_text),
            where="s3://%s/%s" % (self.bucket, self._full_key(key)),
            fix="keep it until the retention ends (prune will remove it later), or shorten "
            "repository.object_lock_days for new objects",
        )

    # --- housekeeping -------------------------------------------------------------------
    def _multipart_uploads(self, older_than_seconds: float) -> list[tuple[str, str]]:
        cutoff = time.time() - older_than_seconds
        found = []
        list_prefix = self.prefix + "/" if self.prefix else ""
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=list_prefix):
                for upload in page.get("Uploads", []):
                    initiated = _to_posix(upload.get("Initiated"))
                    if initiated is None or initiated < cutoff:
                        found.append((upload["Key"], upload["UploadId"]))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, "list_multipart_uploads", None, "list incomplete uploads") from exc
        return sorted(found)

    def abandoned_uploads(self, older_than_seconds: float) -> list[str]:
        _require_boto3()
        return [self._relative_key(full_key) for full_key, _upload_id in self._multipart_uploads(older_than_seconds)]

    def remove_abandoned_uploads(self, older_than_seconds: float) -> list[str]:
        _require_boto3()
        removed = []
        for full_key, upload_id in self._multipart_uploads(older_than_seconds):
            key = self._relative_key(full_key)
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
            except botocore.exceptions.ClientError as exc:
                if self._error_code(exc) != "NoSuchUpload":
                    raise self._error(exc, "abort_multipart_upload", key, "abort the upload of " + key) from exc
            removed.append(key)
        return removed


class _S3Reader(io.RawIOBase):
    """The GET body as a binary stream; network failures become RepositoryError."""

    def __init__(self, repository: S3Repository, key: str, body):
        super().__init__()
        self.repository = repository
        self.key = key
        self.body = body

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            if size is None or size < 0:
                return self.body.read()
            return self.body.read(size)
        except Exception as exc:
            raise self.repository._error(exc, "get_object", self.key, "read " + self.key) from exc

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self.body.close()
            finally:
                super().close()


class _S3Writer(ObjectWriter):
    """Buffers one part; objects smaller than a part go up in one PutObject at commit,
    larger ones as a multipart upload with at most ``max_concurrency`` parts in flight.

    ``buffered_bytes`` counts bytes this writer holds (the filling part plus parts in
    flight); ``peak_buffered_bytes`` its maximum, which tests check against the bound.
    """

    def __init__(self, repository: S3Repository, key: str, sha256: str | None, content_type: str | None):
        self.repository = repository
        self.key = key
        self.expected_sha256 = sha256.lower() if sha256 else None
        self.content_type = content_type
        self.part_size = repository.part_size
        self.hasher = hashlib.sha256()
        self.total_bytes = 0
        self.part_buffer = bytearray()
        self.upload_id: str | None = None
        self.next_part_number = 1
        self.completed_parts: list[dict] = []
        self.in_flight: set[concurrent.futures.Future] = set()
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.counter_lock = threading.Lock()
        self.buffered_bytes = 0
        self.peak_buffered_bytes = 0
        self.finished = False

    # --- accounting -------------------------------------------------------------------
    def _account(self, delta: int) -> None:
        with self.counter_lock:
            self.buffered_bytes += delta
            if self.buffered_bytes > self.peak_buffered_bytes:
                self.peak_buffered_bytes = self.buffered_bytes

    # --- streaming --------------------------------------------------------------------
    def write(self, chunk: bytes) -> None:
        if self.finished:
            raise RepositoryError("write after commit or abort", where=self.key)
        self.hasher.update(chunk)
        self.total_bytes += len(chunk)
        view = memoryview(chunk)
        try:
            # Fill the part buffer slice by slice so a huge chunk never sits in it whole.
            while view:
                room = self.part_size - len(self.part_buffer)
                piece = view[:room]
                self.part_buffer += piece
                self._account(len(piece))
                view = view[len(piece) :]
                if len(self.part_buffer) >= self.part_size:
                    self._send_part()
        except BaseException:
            self._abort_quietly()
            raise

    def _send_part(self) -> None:
        repository = self.repository
        if self.upload_id is None:
            create_arguments = dict(
                Bucket=repository.bucket,
                Key=repository._full_key(self.key),
                ChecksumAlgorithm="SHA256",
                **repository._write_options(self.content_type),
            )
            if self.expected_sha256:
                create_arguments["Metadata"] = {SHA256_METADATA: self.expected_sha256}
            try:
                self.upload_id = repository.client.create_multipart_upload(**create_arguments)["UploadId"]
            except Exception as exc:
                raise repository._error(
                    exc, "create_multipart_upload", self.key, "start the upload of " + self.key
                ) from exc
            self.executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=repository.max_concurrency, thread_name_prefix="pgsafe-s3-part"
            )
        if self.next_part_number > MAX_PARTS:
            raise RepositoryError(
                "object %s is larger than %d parts of %d MiB" % (self.key, MAX_PARTS, self.part_size // MIB),
                where=repository.describe(),
                fix="raise repository.part_size_mb (memory use is about (max_concurrency + 1) x part size)",
            )
        # The window: block until a slot frees, so at most max_concurrency parts are in
        # flight plus the one being filled. Failures surface here, not at commit.
        while len(self.in_flight) >= repository.max_concurrency:
            done, _pending = concurrent.futures.wait(self.in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            self._collect(done)
        part_body, self.part_buffer = self.part_buffer, bytearray()
        part_number = self.next_part_number
        self.next_part_number += 1
        if self.executor is None:
            raise AssertionError("multipart upload has no executor")
        self.in_flight.add(self.executor.submit(self._upload_part, part_number, part_body))

    def _upload_part(self, part_number: int, part_body: bytearray) -> dict:
        repository = self.repository
        part_size = len(part_body)
        try:
            checksum = _b64_sha256(part_body)
            response = repository.client.upload_part(
                Bucket=repository.bucket,
                Key=repository._full_key(self.key),
                UploadId=self.upload_id,
                PartNumber=part_number,
                Body=part_body,
                ChecksumSHA256=checksum,
            )
            return {"PartNumber": part_number, "ETag": response["ETag"], "ChecksumSHA256": checksum}
        except Exception as exc:
            raise repository._error(
                exc, "upload_part", self.key, "upload part %d of %s" % (part_number, self.key)
            ) from exc
        finally:
            del part_body
            self._account(-part_size)

    def _collect(self, done: set) -> None:
        for future in done:
            self.in_flight.discard(future)
            self.completed_parts.append(future.result())  # re-raises the part's error

    # --- finishing --------------------------------------------------------------------
    def commit(self) -> ObjectInfo:
        if self.finished:
            raise RepositoryError("commit after commit or abort", where=self.key)
        repository = self.repository
        actual_sha256 = self.hasher.hexdigest()
        try:
            if self.expected_sha256 and actual_sha256 != self.expected_sha256:
                raise RepositoryError(
                    "the bytes written to %s have sha256 %s, not the announced %s; nothing was stored"
                    % (self.key, actual_sha256, self.expected_sha256),
                    where=repository.describe(),
                    fix="this is a bug in the caller or corrupted input; retry the operation",
                )
            lock_until = None
            if self.upload_id is None:
                try:
                    repository._put_small(self.key, self.part_buffer, actual_sha256, self.content_type)
                except Exception as exc:
                    raise repository._error(exc, "put_object", self.key, "store " + self.key) from exc
            else:
                if self.part_buffer:
                    self._send_part()
                self._collect(set(concurrent.futures.wait(self.in_flight).done))
                self.completed_parts.sort(key=lambda part: part["PartNumber"])
                try:
                    repository.client.complete_multipart_upload(
                        Bucket=repository.bucket,
                        Key=repository._full_key(self.key),
                        UploadId=self.upload_id,
                        MultipartUpload={"Parts": self.completed_parts},
                    )
                except Exception as exc:
                    raise repository._error(
                        exc, "complete_multipart_upload", self.key, "complete the upload of " + self.key
                    ) from exc
            if repository.object_lock_mode:
                lock_until = _to_posix(repository.lock_until())
        except BaseException:
            self._abort_quietly()
            raise
        self.finished = True
        self._release()
        return ObjectInfo(
            key=self.key, size=self.total_bytes, modified=time.time(), sha256=actual_sha256, locked_until=lock_until
        )

    def _release(self) -> None:
        self._account(-len(self.part_buffer))
        self.part_buffer = bytearray()
        if self.executor is not None:
            # Pending parts were cancelled by abort() or finished by commit(); no
            # cancel_futures= (Python 3.9+) so older remote Pythons work too.
            self.executor.shutdown(wait=True)
            self.executor = None

    def _abort_quietly(self) -> None:
        """Abort on an error path: the original error is the one worth reporting; an
        upload we could not abort is found later by remove_abandoned_uploads."""
        try:
            self.abort()
        except Exception:
            pass

    def __exit__(self, exc_type, exc, tb) -> None:
        # Abort whenever the block ends uncommitted, not only on an exception: a
        # forgotten commit() must not leave an incomplete multipart upload behind.
        if not self.finished:
            self._abort_quietly()

    def abort(self) -> None:
        if self.finished:
            return
        self.finished = True
        for future in self.in_flight:
            future.cancel()
        # Parts already running must finish (or fail) before the abort, or S3 could
        # accept a part after AbortMultipartUpload and keep billing for it.
        concurrent.futures.wait(self.in_flight)
        self.in_flight = set()
        self._release()
        if self.upload_id is not None:
            repository = self.repository
            try:
                repository.client.abort_multipart_upload(
                    Bucket=repository.bucket, Key=repository._full_key(self.key), UploadId=self.upload_id
                )
            except botocore.exceptions.ClientError as exc:
                if repository._error_code(exc) != "NoSuchUpload":
                    raise repository._error(
                        exc, "abort_multipart_upload", self.key, "abort the upload of " + self.key
                    ) from exc
            except Exception as exc:
                raise repository._error(
                    exc, "abort_multipart_upload", self.key, "abort the upload of " + self.key
                ) from exc
