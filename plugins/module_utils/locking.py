# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One run per cluster and operation at a time, and a message that says who holds the lock.

The lock is an flock on a file in the state directory: the kernel releases it when
the holder dies, even by SIGKILL, so a crashed run never blocks the next one. The
file holds the holder's pid, host, start time and command for the error message.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, LockError
from ansible_collections.pgsafe.backup.plugins.module_utils.ownership import hand_over_fd, inherited_owner, make_dirs


class RunLock:
    """``with RunLock(state_dir, cluster, "backup-logical"):`` fails at once if held."""

    def __init__(self, state_dir: str, cluster: str, operation: str):
        self.path = os.path.join(state_dir, "locks", "%s.%s.lock" % (cluster, operation))
        self.cluster = cluster
        self.operation = operation
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            make_dirs(os.path.dirname(self.path), 0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            # Run as root: the lock stays usable by the pgsafe user's timers (also one an older root run left).
            hand_over_fd(fd, inherited_owner(os.path.dirname(self.path)))
        except OSError as exc:
            raise ConfigError("cannot create the lock file %s: %s" % (self.path, exc.strerror), where="state_dir",
                              fix="set state_dir to a directory this user can write (default /var/lib/pgsafe)") \
                from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = self._read_holder(fd)
            os.close(fd)
            raise LockError(
                "another pgsafe %s is running for cluster %s: %s" % (self.operation, self.cluster, holder),
                where=self.path,
                fix="wait for it to finish (one run per cluster and operation at a time); the lock is released "
                "automatically when that process ends, so there is nothing to delete") from exc
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(os.path.basename(a) for a in sys.argv[:3])}
        ).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    @staticmethod
    def _read_holder(fd: int) -> str:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            holder = json.loads(os.read(fd, 4096).decode() or "{}")
            return "pid %s on %s since %s (%s)" % (holder.get("pid"), holder.get("host"), holder.get("since"),
                                                   holder.get("command"))
        except (OSError, ValueError):
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
