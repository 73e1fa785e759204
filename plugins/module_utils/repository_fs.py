# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A repository in a local (or NFS-mounted) directory.

Every object is written to a temporary file beside its final name (``.tmp-*``, so
listings skip it), fsynced, renamed into place and the directory fsynced: a reader
sees either no object or the complete object, and a crash leaves at most a temp
file that ``remove_abandoned_uploads`` cleans up.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_module
import time
import uuid
from typing import BinaryIO, Iterator

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError,
    NotFoundError,
    RepositoryError,
)
from ansible_collections.pgsafe.backup.plugins.module_utils.ownership import hand_over_fd, inherited_owner, make_dirs
from ansible_collections.pgsafe.backup.plugins.module_utils.repository import (
    ObjectInfo,
    ObjectWriter,
    Repository,
    join_key,
)

TEMP_PREFIX = ".tmp-"
DIR_MODE = 0o700
FILE_MODE = 0o600

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def _fsync_dir(path: str) -> None:
    """Make a rename or unlink in ``path`` durable (the entry lives in the directory)."""
    dir_fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        # Some network filesystems refuse fsync on a directory; their rename is
        # already synchronous on the server, so this is not a durability hole.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(dir_fd)


def _make_private_dirs(path: str) -> None:
    """Create ``path`` and any missing parents with mode 0700 each (os.makedirs would leave the parents
    readable by others); run as root, each takes the owner of the directory it is made in (ownership.py)."""
    make_dirs(path, DIR_MODE)


class FilesystemRepository(Repository):
    """Objects are files under ``root``; keys are their relative POSIX paths."""

    kind = "filesystem"

    def __init__(self, name: str, root: str, create: bool = False):
        super().__init__(name)
        self.root = os.path.normpath(root)
        if create:
            try:
                _make_private_dirs(self.root)
            except OSError as exc:
                raise self._os_error(exc, "create the repository directory", self.root) from exc
        if not os.path.isdir(self.root):
            raise RepositoryError(
                "the filesystem repository directory %s does not exist" % self.root,
                where="repository.path",
                fix="create it (owned by the backup user, mode 0700), mount the volume, "
                "or set repository.create: true",
            )

    @classmethod
    def from_spec(cls, name: str, spec: dict) -> "FilesystemRepository":
        root = spec.get("path")
        if not root or not isinstance(root, str):
            raise ConfigError(
                "a filesystem repository needs a path",
                where="repository.path",
                fix="set repository.path to an absolute directory such as /srv/pgsafe",
            )
        if not os.path.isabs(root):
            raise ConfigError(
                "the filesystem repository path %r is relative" % root,
                where="repository.path",
                fix="use an absolute path such as /srv/pgsafe",
            )
        return cls(name, root, create=bool(spec.get("create", False)))

    def __repr__(self) -> str:
        return "FilesystemRepository(name=%r, root=%r)" % (self.name, self.root)

    def describe(self) -> str:
        return self.root

    # --- paths and errors ---------------------------------------------------------------
    def _path(self, key: str) -> str:
        # join_key refuses '..' and empty segments, so the path stays under the root.
        return os.path.join(self.root, *join_key(key).split("/"))

    def _os_error(self, exc: OSError, action: str, path: str, size: int | None = None) -> RepositoryError:
        """Turn an OSError into a message that says what to do about it."""
        if exc.errno in _FULL_ERRNOS:
            amount = " while writing %d bytes" % size if size is not None else ""
            return RepositoryError(
                "the filesystem repository at %s is full (%s)%s: could not %s"
                % (self.root, os.strerror(exc.errno), amount, action),
                where=path,
                fix="free space on that volume, prune old backups (pgsafe prune / "
                "pg_backup_prune), or move the repository to a larger volume",
            )
        if exc.errno in _DENIED_ERRNOS:
            return RepositoryError(
                "permission denied in the filesystem repository at %s: could not %s (%s)"
                % (self.root, action, os.strerror(exc.errno)),
                where=path,
                fix="make the repository directory owned and writable by the user that runs "
                "pgsafe (uid %d), mode 0700, and check the volume is not mounted read-only" % os.geteuid(),
            )
        return RepositoryError(
            "could not %s in the filesystem repository at %s: %s" % (action, self.root, exc.strerror or exc),
            where=path,
            fix="check the volume is mounted and healthy (dmesg, mount)",
        )

    def _make_parent(self, path: str) -> str:
        parent = os.path.dirname(path)
        try:
            _make_private_dirs(parent)
        except OSError as exc:
            raise self._os_error(exc, "create the directory", parent) from exc
        return parent

    def _new_temp(self, path: str) -> tuple[str, int]:
        parent = self._make_parent(path)
        temp_path = os.path.join(parent, "%s%s-%s" % (TEMP_PREFIX, os.path.basename(path), uuid.uuid4().hex[:12]))
        try:
            temp_fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        except OSError as exc:
            raise self._os_error(exc, "create a temporary file", temp_path) from exc
        # The umask may have narrowed it further, never widened; make it exact.
        os.fchmod(temp_fd, FILE_MODE)
        hand_over_fd(temp_fd, inherited_owner(parent))
        return temp_path, temp_fd

    # --- writing ------------------------------------------------------------------------
    def open_writer(self, key: str, sha256: str | None = None, content_type: str | None = None) -> ObjectWriter:
        return _FilesystemWriter(self, key, self._path(key), sha256)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if os.path.exists(path):
            return False
        temp_path, temp_fd = self._new_temp(path)
        try:
            try:
                _write_all(temp_fd, data)
                os.fsync(temp_fd)
            except OSError as exc:
                raise self._os_error(exc, "write %s" % key, path, size=len(data)) from exc
            finally:
                os.close(temp_fd)
            try:
                # link() fails with EEXIST when the name exists: the check and the
                # creation are one atomic step, unlike exists()+rename().
                os.link(temp_path, path)
            except FileExistsError:
                return False
            except OSError as exc:
                raise self._os_error(exc, "create %s" % key, path) from exc
            _fsync_dir(os.path.dirname(path))
            return True
        finally:
            try:
                os.unlink(temp_path)
            except FileNotFoundError:
                pass

    # --- reading ------------------------------------------------------------------------
    def open_reader(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(
                "object %s does not exist in the filesystem repository at %s" % (key, self.root), where=path
            ) from None
        except OSError as exc:
            raise self._os_error(exc, "open %s" % key, path) from exc

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            file_stat = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._os_error(exc, "stat %s" % key, path) from exc
        if not stat_module.S_ISREG(file_stat.st_mode):
            return None
        return ObjectInfo(key=join_key(key), size=file_stat.st_size, modified=file_stat.st_mtime,
                          change_token="%d:%d" % (file_stat.st_ino, file_stat.st_mtime_ns))

    def _walk(self, start_dir: str | None = None) -> Iterator[tuple[str, str, os.stat_result]]:
        """(key, path, stat) of every regular file under ``start_dir``, temp files included."""

        def on_error(exc: OSError) -> None:
            if not isinstance(exc, FileNotFoundError):
                raise self._os_error(exc, "list", exc.filename or self.root) from exc

        for dir_path, _dir_names, file_names in os.walk(start_dir or self.root, onerror=on_error):
            for file_name in file_names:
                path = os.path.join(dir_path, file_name)
                try:
                    file_stat = os.lstat(path)
                except FileNotFoundError:
                    continue  # deleted while we walked
                if not stat_module.S_ISREG(file_stat.st_mode):
                    continue
                key = os.path.relpath(path, self.root).replace(os.sep, "/")
                yield key, path, file_stat

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the deepest directory the prefix names, not the whole repository.
        start_dir = self.root
        dir_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if dir_part:
            start_dir = self._path(dir_part)
        if not os.path.isdir(start_dir):
            return iter(())
        found = [
            ObjectInfo(key=key, size=file_stat.st_size, modified=file_stat.st_mtime)
            for key, _path, file_stat in self._walk(start_dir)
            if key.startswith(prefix) and not os.path.basename(key).startswith(TEMP_PREFIX)
        ]
        # Sort by the full key string: os.walk order differs from key order for
        # names such as 'a/b' vs 'a-b'.
        found.sort(key=lambda info: info.key)
        return iter(found)

    # --- deleting -----------------------------------------------------------------------
    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._os_error(exc, "delete %s" % key, path) from exc
        self._remove_empty_parents(os.path.dirname(path))

    def _remove_empty_parents(self, directory: str) -> None:
        last_parent = directory
        while directory != self.root and directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                break  # not empty (or another writer just used it): stop here
            directory = os.path.dirname(directory)
            last_parent = directory
        try:
            _fsync_dir(last_parent)
        except OSError:
            pass  # the unlink itself succeeded; durability of a delete is best effort

    # --- housekeeping -------------------------------------------------------------------
    def abandoned_uploads(self, older_than_seconds: float) -> list[str]:
        cutoff = time.time() - older_than_seconds
        return sorted(
            key
            for key, _path, file_stat in self._walk()
            if os.path.basename(key).startswith(TEMP_PREFIX) and file_stat.st_mtime < cutoff
        )

    def remove_abandoned_uploads(self, older_than_seconds: float) -> list[str]:
        removed = []
        for key in self.abandoned_uploads(older_than_seconds):
            path = os.path.join(self.root, *key.split("/"))
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._os_error(exc, "remove the abandoned temporary file %s" % key, path) from exc
            removed.append(key)
            self._remove_empty_parents(os.path.dirname(path))
        return removed

    def capacity_bytes(self) -> int | None:
        try:
            fs_stat = os.statvfs(self.root)
        except OSError as exc:
            raise self._os_error(exc, "read the filesystem capacity", self.root) from exc
        return fs_stat.f_blocks * fs_stat.f_frsize

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer can still use on the repository's volume."""
        fs_stat = os.statvfs(self.root)
        return fs_stat.f_bavail * fs_stat.f_frsize


def _write_all(file_fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(file_fd, view)
        view = view[written:]


class _FilesystemWriter(ObjectWriter):
    """Streams into ``.tmp-<name>-<random>`` beside the final path; commit renames it."""

    def __init__(self, repository: FilesystemRepository, key: str, path: str, sha256: str | None):
        self.repository = repository
        self.key = join_key(key)
        self.path = path
        self.expected_sha256 = sha256.lower() if sha256 else None
        self.hasher = hashlib.sha256()
        self.bytes_written = 0
        self.temp_path, self.temp_fd = repository._new_temp(path)
        self.finished = False

    def write(self, chunk: bytes) -> None:
        if self.finished:
            raise RepositoryError("write after commit or abort", where=self.key)
        try:
            _write_all(self.temp_fd, chunk)
        except OSError as exc:
            self.abort()
            raise self.repository._os_error(
                exc, "write %s" % self.key, self.path, size=self.bytes_written + len(chunk)
            ) from exc
        self.hasher.update(chunk)
        self.bytes_written += len(chunk)

    def commit(self) -> ObjectInfo:
        if self.finished:
            raise RepositoryError("commit after commit or abort", where=self.key)
        actual_sha256 = self.hasher.hexdigest()
        if self.expected_sha256 and actual_sha256 != self.expected_sha256:
            self.abort()
            raise RepositoryError(
                "the bytes written to %s have sha256 %s, not the announced %s; nothing was stored"
                % (self.key, actual_sha256, self.expected_sha256),
                where=self.path,
                fix="this is a bug in the caller or corrupted input; retry the operation",
            )
        try:
            os.fsync(self.temp_fd)
            os.close(self.temp_fd)
            self.temp_fd = -1
            os.rename(self.temp_path, self.path)
        except OSError as exc:
            self.abort()
            raise self.repository._os_error(exc, "store %s" % self.key, self.path, size=self.bytes_written) from exc
        self.finished = True
        try:
            _fsync_dir(os.path.dirname(self.path))
        except OSError as exc:
            raise self.repository._os_error(exc, "sync the directory of %s" % self.key, self.path) from exc
        file_stat = os.stat(self.path)
        return ObjectInfo(key=self.key, size=file_stat.st_size, modified=file_stat.st_mtime, sha256=actual_sha256)

    def abort(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.temp_fd >= 0:
            try:
                os.close(self.temp_fd)
            except OSError:
                pass
            self.temp_fd = -1
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass
        # A parent directory created for this write and now empty is left to delete()
        # / remove_abandoned_uploads: another writer may be about to use it.

    def __exit__(self, exc_type, exc, tb) -> None:
        # Abort whenever the block ends uncommitted (the base class only does so on an
        # exception): a forgotten commit() must not leave a temp file behind.
        if not self.finished:
            try:
                self.abort()
            except OSError:
                if exc_type is None:
                    raise

    def __del__(self) -> None:
        # A writer dropped without commit must not leave its temp file behind.
        if not getattr(self, "finished", True):
            try:
                self.abort()
            except Exception:
                pass
