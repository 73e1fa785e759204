# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pgsafe wal-fetch %f %p``: the restore_command, with parallel prefetch.

Replay asks for one file at a time and waits for each; a Python process that imports
boto3 costs ~0.7 s, so fetching every segment in its own process would make replay
crawl. The first fetch (slow path) downloads the file itself, then starts a detached
prefetcher that downloads the next N segments in parallel into a private spool inside
the restored cluster's own ``pg_wal/.pgsafe-prefetch`` (mode 0700, same filesystem as
``%p``). Later fetches find their segment there and only rename it (fast path, no
boto3 import).

Exit codes, as PostgreSQL reads them:
  0    the file is at ``%p``, complete (written to a temporary name, then renamed);
  1    the file is not in the archive: recovery treats that as the end of the archive;
  255  anything else (repository unreachable, corrupt object, wrong key): PostgreSQL
       treats a status above 125 as fatal and stops, instead of ending recovery early
       at the wrong point and promoting.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import subprocess
import time

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import NotFoundError
from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import (
    SEGMENT_RE, check_wal_file_name, next_segment)

LOG = logging.getLogger("pgsafe")
EXIT_FOUND = 0
EXIT_MISSING = 1
EXIT_FATAL = 255
SPOOL_NAME = ".pgsafe-prefetch"


def spool_dir_for(destination: str) -> str:
    """The prefetch spool beside ``%p`` (``pg_wal/RECOVERYXLOG`` -> ``pg_wal/.pgsafe-prefetch``)."""
    return os.path.join(os.path.dirname(os.path.abspath(destination)), SPOOL_NAME)


def _lock_is_free(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes) -> None:
    """Never leave a partial file under ``path``: temporary name in the same directory, then rename."""
    temp = os.path.join(os.path.dirname(os.path.abspath(path)),
                        ".pgsafe-tmp-%d-%s" % (os.getpid(), os.path.basename(path)))
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def fetch_from_spool(name: str, destination: str, prefetch: int, relaunch: list[str] | None) -> bool:
    """Fast path: move a prefetched file into place (no heavy imports). True when served."""
    check_wal_file_name(name)
    spool = spool_dir_for(destination)
    spooled = os.path.join(spool, name)
    try:
        os.rename(spooled, destination)
    except FileNotFoundError:
        return False
    if SEGMENT_RE.match(name) and relaunch:
        ahead = [entry for entry in _spool_entries(spool) if entry > name]
        if len(ahead) < max(1, prefetch // 2):
            start_prefetcher(relaunch, name, destination, prefetch)
    return True


def _spool_entries(spool: str) -> list[str]:
    try:
        return sorted(entry for entry in os.listdir(spool) if SEGMENT_RE.match(entry))
    except OSError:
        return []


def start_prefetcher(relaunch: list[str], after: str, destination: str, count: int) -> None:
    """Start a detached ``wal-prefetch`` unless one is already running for this spool."""
    spool = spool_dir_for(destination)
    if not _lock_is_free(os.path.join(spool, ".lock")):
        return
    argv = list(relaunch) + ["wal-prefetch", after, "--spool", spool, "--count", str(count)]
    try:
        # Detached and silent: PostgreSQL waits for restore_command's own process only.
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError as exc:
        LOG.warning("cannot start the WAL prefetcher (%s); fetching one segment at a time", exc)


def fetch(context, name: str, destination: str) -> dict:
    """Slow path: download, verify and place one file. Raises NotFoundError when absent."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import read_archived

    check_wal_file_name(name)
    started = time.monotonic()
    data = read_archived(context, name)
    write_atomically(destination, data)
    return {"name": name, "size": len(data), "seconds": round(time.monotonic() - started, 4)}


def prefetch(context, after: str, spool: str, count: int, parallel: int = 4) -> dict:
    """Download the ``count`` segments after ``after`` into ``spool``; stop at the archive's end."""
    import concurrent.futures

    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import (
        read_archived, read_record)

    os.makedirs(spool, mode=0o700, exist_ok=True)
    lock_fd = os.open(os.path.join(spool, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return {"skipped": "another prefetcher is running"}
        first = read_record(context.repository, context.cluster, after)
        segment_size = (first or {}).get("size") or 16 * 1024 * 1024
        # Files older than the one replay just consumed will never be asked for again.
        for stale in _spool_entries(spool):
            if stale <= after:
                try:
                    os.unlink(os.path.join(spool, stale))
                except OSError:
                    pass
        names = []
        current = after
        for _position in range(count):
            current = next_segment(current, segment_size)
            if not os.path.exists(os.path.join(spool, current)):
                names.append(current)

        def one(name: str) -> str:
            record = read_record(context.repository, context.cluster, name)
            if record is None:
                return "missing"
            write_atomically(os.path.join(spool, name), read_archived(context, name, record))
            return "fetched"

        results = {}
        with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as executor:
            for name, future in [(name, executor.submit(one, name)) for name in names]:
                try:
                    results[name] = future.result()
                except Exception as exc:  # pylint: disable=broad-except
                    # The fetch itself will retry this one in the slow path and report properly.
                    results[name] = "failed: %s" % exc
        return {"after": after, "results": results}
    finally:
        os.close(lock_fd)


def wal_fetch(settings: dict, name: str, destination: str, relaunch: list[str] | None = None) -> int:
    """The whole restore_command: returns the exit code PostgreSQL expects."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import wal_settings

    count = wal_settings(settings)["prefetch"]
    if fetch_from_spool(name, destination, count, relaunch):
        return EXIT_FOUND
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context

    context = Context.from_settings(settings, need_postgres=False)
    try:
        fetch(context, name, destination)
    except NotFoundError:
        return EXIT_MISSING
    if SEGMENT_RE.match(name) and relaunch:
        start_prefetcher(relaunch, name, destination, count)
    return EXIT_FOUND
