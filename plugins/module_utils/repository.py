# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository interface: where backup objects live (a filesystem path or an S3 bucket).

Keys are relative POSIX paths (``main/backups/20261122T050000Z-logical/manifest.json``).
Every write is atomic from a reader's point of view: an object is either absent or
complete. Writers stream (bounded memory whatever the size); ``commit()`` returns only
once the bytes are durable (fsync + rename on a filesystem, CompleteMultipartUpload
answered on S3).

Layout inside a repository (see catalog.py, manifest.py):
  <cluster>/backups/<backup_id>/manifest.json      written last: makes the backup exist
  <cluster>/backups/<backup_id>/<object name>      stored (compressed, encrypted) objects
  <cluster>/wal/<timeline>/<segment>               archived WAL (physical issue)
  <cluster>/state/...                              verification records, holds
"""

from __future__ import annotations

import abc
import dataclasses
from typing import BinaryIO, Iterator

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError


@dataclasses.dataclass
class ObjectInfo:
    """What a repository knows about one stored object without reading it."""

    key: str
    size: int
    modified: float  # POSIX seconds, UTC
    sha256: str | None = None  # hex, when the store recorded it (S3 metadata or sidecar)
    locked_until: float | None = None  # S3 Object Lock retain-until, POSIX seconds
    # Changes whenever the stored bytes are replaced (S3 ETag and version id; inode and
    # nanosecond mtime on a file system), even within the same second. None: unknown.
    change_token: str | None = None


class ObjectWriter(abc.ABC):
    """A streaming write of one object. Use as a context manager: abort unless committed."""

    @abc.abstractmethod
    def write(self, chunk: bytes) -> None:
        """Append bytes; may block while earlier parts upload (bounded memory)."""

    @abc.abstractmethod
    def commit(self) -> ObjectInfo:
        """Make the object durable and visible under its key, atomically."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written; the key is left as it was. Safe to call twice."""

    def __enter__(self) -> "ObjectWriter":
        return self

    committed = False

    def __exit__(self, exc_type, exc, tb) -> None:
        # Leaving the block without commit() (exception or not) discards the write.
        if exc_type is not None or not self.committed:
            self.abort()


class Repository(abc.ABC):
    """One backup repository. Implementations: FilesystemRepository, S3Repository."""

    kind = "abstract"

    def __init__(self, name: str):
        self.name = name

    # --- description -----------------------------------------------------------------
    @abc.abstractmethod
    def describe(self) -> str:
        """A human location for messages: '/srv/pgsafe' or 's3://bucket/prefix (endpoint)'."""

    # --- writing -----------------------------------------------------------------------
    @abc.abstractmethod
    def open_writer(self, key: str, sha256: str | None = None, content_type: str | None = None) -> ObjectWriter:
        """Start a streamed atomic write. ``sha256`` (hex), when known in advance, is
        recorded with the object (S3 metadata) so later comparisons need no read."""

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Write a small object atomically (manifests, records)."""
        import hashlib

        writer = self.open_writer(key, sha256=hashlib.sha256(data).hexdigest())
        with writer:
            writer.write(data)
            return writer.commit()

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create a small object only if the key does not exist. True when created.
        Used by WAL archiving, where a name once written is never overwritten."""

    # --- reading -----------------------------------------------------------------------
    @abc.abstractmethod
    def open_reader(self, key: str) -> BinaryIO:
        """A readable binary stream of the object (``read(n)``, ``close()``).
        Raises NotFoundError if the key is absent."""

    def get_bytes(self, key: str) -> bytes:
        reader = self.open_reader(key)
        try:
            return reader.read()
        finally:
            reader.close()

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size, time and recorded checksum of one object, or None when absent."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursive), in key order."""

    def list_dirs(self, prefix: str) -> list[str]:
        """The names one level below ``prefix`` (which should end with '/')."""
        names = set()
        for info in self.list(prefix):
            rest = info.key[len(prefix):]
            if "/" in rest:
                names.add(rest.split("/", 1)[0])
        return sorted(names)

    # --- deleting ----------------------------------------------------------------------
    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; absent is not an error. Raises RepositoryError when the
        store refuses (for example S3 Object Lock)."""

    def delete_prefix(self, prefix: str) -> list[str]:
        """Delete every object under prefix; returns the keys deleted."""
        deleted = []
        for info in list(self.list(prefix)):
            self.delete(info.key)
            deleted.append(info.key)
        return deleted

    # --- housekeeping ------------------------------------------------------------------
    def abandoned_uploads(self, older_than_seconds: float) -> list[str]:
        """Incomplete writes older than the given age (temp files, multipart uploads)."""
        return []

    def remove_abandoned_uploads(self, older_than_seconds: float) -> list[str]:
        return []

    def usage_bytes(self, prefix: str = "") -> int:
        return sum(info.size for info in self.list(prefix))

    def capacity_bytes(self) -> int | None:
        """Total capacity where the store can tell (filesystem); None for S3."""
        return None


def join_key(*parts: str) -> str:
    """Join key parts with '/'; refuses empty, '.' and '..' segments (no path traversal)."""
    key = "/".join(part.strip("/") for part in parts if part)
    if not key or any(segment in ("", ".", "..") for segment in key.split("/")):
        raise ConfigError("invalid repository key %r" % key, fix="keys are relative paths without '.' or '..' segments")
    return key


def open_repository(spec: dict) -> Repository:
    """Build a repository from a plain settings dict (see config.py REPOSITORY_KEYS).

    ``{"type": "filesystem", "path": "/srv/pgsafe"}`` or
    ``{"type": "s3", "bucket": "b", "prefix": "p", "endpoint_url": ..., ...}``.
    """
    spec = spec or {}
    kind = spec.get("type") or ("s3" if spec.get("bucket") else "filesystem")
    name = spec.get("name") or kind
    if kind == "filesystem":
        from ansible_collections.pgsafe.backup.plugins.module_utils.repository_fs import FilesystemRepository

        return FilesystemRepository.from_spec(name, spec)
    if kind == "s3":
        from ansible_collections.pgsafe.backup.plugins.module_utils.repository_s3 import S3Repository

        return S3Repository.from_spec(name, spec)
    raise ConfigError(
        "unknown repository type %r" % kind,
        where="repository.type",
        fix="use 'filesystem' (with path) or 's3' (with bucket)",
    )
