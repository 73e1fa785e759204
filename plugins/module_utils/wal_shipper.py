# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL shipper: a long-running process that archives WAL, and the hand-off ``wal-push`` uses.

Why: ``archive_command`` runs once per segment, and a Python process that imports boto3
and the AWS Encryption SDK costs ~0.7 s before it does anything (measured here), which
would cap archiving near 22 MB/s. So ``wal-push`` (the archive_command) stays light:

1. it hashes the file (SHA-256, ~16 ms for 16 MiB) and, when the shipper already
   acknowledged identical content (``acked/<name>``), exits 0 at once;
2. otherwise it drops a request in ``<state_dir>/wal-spool/<cluster>/requests/`` and
   WAITS for the shipper's answer: exit 0 only after the shipper reports the file durable
   in the repository (its record written), non-zero with the shipper's message otherwise;
3. when no shipper is running (its lock is free), or the shipper dies while we wait, the
   caller ships the file itself: slow, but never wrong.

The shipper reads ahead from ``pg_wal/archive_status/*.ready``: segments are usually
archived before PostgreSQL even asks, and uploads run in parallel. It never renames
``.ready`` files (PostgreSQL does that after archive_command returns 0), so it cannot make
PostgreSQL drop WAL: a segment leaves pg_wal only after a wal-push returned 0 for it.

Backlog (``.ready`` files not yet acknowledged: count, bytes, age of the oldest) is
written to ``<state_dir>/wal-status/<cluster>.json`` every second and, when metrics are
configured, exported through ``MetricsSink.record_wal``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import time

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    PgsafeError, RepositoryError)
from ansible_collections.pgsafe.backup.plugins.module_utils.ownership import make_dirs
from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import (
    check_wal_file_name, sha256_file)

LOG = logging.getLogger("pgsafe")
SHIPPER_OPERATION = "wal-shipper"


# --------------------------------------------------------------------------- spool (light)

class Spool:
    """The directories shared by wal-push and the shipper (mode 0700, owned by the PostgreSQL user)."""

    def __init__(self, state_dir: str, cluster: str):
        self.cluster = cluster
        self.root = os.path.join(state_dir, "wal-spool", cluster)
        self.requests = os.path.join(self.root, "requests")
        self.acked = os.path.join(self.root, "acked")
        self.lock_path = os.path.join(state_dir, "locks", "%s.%s.lock" % (cluster, SHIPPER_OPERATION))
        self.status_path = os.path.join(state_dir, "wal-status", "%s.json" % cluster)

    def ensure(self) -> "Spool":
        # Each level 0700; made by root (an operator's `pgsafe check`), still the PostgreSQL user's.
        for path in (self.requests, self.acked, os.path.dirname(self.status_path)):
            make_dirs(path, 0o700)
        return self

    def shipper_running(self) -> bool:
        """True while a shipper holds its lock (the kernel drops it when the shipper dies)."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            return exc.errno in (errno.EAGAIN, errno.EACCES)
        finally:
            os.close(fd)
        return False

    def acked_sha256(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.acked, name), "r", encoding="utf-8") as handle:
                return json.load(handle).get("sha256")
        except (OSError, ValueError):
            return None

    def write_json(self, path: str, document: dict) -> None:
        """Atomic small write: a reader sees the whole document or nothing."""
        temp = os.path.join(os.path.dirname(path), ".tmp-%d-%s" % (os.getpid(), os.path.basename(path)))
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(document, handle, sort_keys=True)
        os.chmod(temp, 0o600)
        os.rename(temp, path)


def push_via_spool(state_dir: str, cluster: str, path: str, timeout: float) -> dict | None:
    """Hand one file to the shipper and wait for its verdict.

    Returns the result on success, raises the shipper's error on refusal, and returns None
    when no shipper is running (the caller then ships the file itself).
    """
    name = check_wal_file_name(os.path.basename(path))
    spool = Spool(state_dir, cluster)
    if not spool.shipper_running():
        return None
    sha256, size = sha256_file(path)
    if spool.acked_sha256(name) == sha256:
        return {"name": name, "status": "acknowledged", "sha256": sha256, "size": size, "via": "read-ahead"}
    spool.ensure()
    request_id = "%s.%d" % (name, os.getpid())
    request = os.path.join(spool.requests, request_id + ".req")
    response = os.path.join(spool.requests, request_id + ".resp")
    spool.write_json(request, {"name": name, "path": os.path.abspath(path), "sha256": sha256})
    deadline = time.monotonic() + timeout
    next_liveness = time.monotonic() + 1.0
    pause = 0.005
    try:
        while True:
            if os.path.exists(response):
                os.unlink(request)  # first, so the shipper never answers this request twice
                with open(response, "r", encoding="utf-8") as handle:
                    verdict = json.load(handle)
                os.unlink(response)
                if verdict.get("ok"):
                    verdict.update({"name": name, "via": "shipper"})
                    return verdict
                error = PgsafeError(verdict.get("what") or "the shipper refused %s" % name,
                                    where=verdict.get("where"), fix=verdict.get("fix"))
                error.exit_code = int(verdict.get("exit_code") or 1)
                raise error
            if spool.acked_sha256(name) == sha256:
                return {"name": name, "status": "acknowledged", "sha256": sha256, "size": size, "via": "read-ahead"}
            now = time.monotonic()
            if now >= next_liveness:
                next_liveness = now + 1.0
                if not spool.shipper_running():
                    return None  # it died: ship ourselves rather than wait for nothing
            if now >= deadline:
                raise RepositoryError(
                    "the WAL shipper did not confirm %s within %.0f s" % (name, timeout), where=spool.root,
                    fix="PostgreSQL keeps the segment and retries; check the shipper's log and the repository "
                    "(`pgsafe wal-status` shows the backlog)")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.05)
    finally:
        for leftover in (request,):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass


# --------------------------------------------------------------------------- the shipper (heavy)

class WalShipper:
    """Reads ahead from archive_status, answers wal-push requests, uploads in parallel."""

    def __init__(self, context, pgdata: str | None, parallel: int = 4, ack_keep_seconds: float = 3600,
                 poll_seconds: float = 0.05):
        self.context = context
        self.pgdata = pgdata
        self.parallel = max(1, int(parallel))
        self.ack_keep_seconds = ack_keep_seconds
        self.poll_seconds = poll_seconds
        self.spool = Spool(context.state_dir, context.cluster).ensure()
        self.in_flight: dict = {}  # name -> (future, path, [request ids])
        self.retry_after: dict[str, float] = {}
        self.failures_total = 0
        self.shipped_total = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.stopping = False
        self.answered: dict[str, float] = {}  # request id -> when answered (never answer twice)

    # --- sources of work --------------------------------------------------------------
    def _ready_files(self) -> list[tuple[str, int, float]]:
        """(name, size, mtime) of files PostgreSQL has finished and not yet seen archived."""
        if not self.pgdata:
            return []
        status_dir = os.path.join(self.pgdata, "pg_wal", "archive_status")
        found = []
        try:
            entries = os.listdir(status_dir)
        except OSError:
            return []
        for entry in entries:
            if not entry.endswith(".ready"):
                continue
            name = entry[:-6]
            try:
                check_wal_file_name(name)
                info = os.stat(os.path.join(self.pgdata, "pg_wal", name))
            except (PgsafeError, OSError):
                continue
            found.append((name, info.st_size, info.st_mtime))
        # History files first (a new timeline must be visible before its segments), then WAL order.
        found.sort(key=lambda item: (not item[0].endswith(".history"), item[0]))
        return found

    def _requests(self) -> list[tuple[str, dict]]:
        result = []
        try:
            entries = sorted(os.listdir(self.spool.requests))
        except OSError:
            return []
        for entry in entries:
            if not entry.endswith(".req"):
                continue
            try:
                with open(os.path.join(self.spool.requests, entry), "r", encoding="utf-8") as handle:
                    result.append((entry[:-4], json.load(handle)))
            except (OSError, ValueError):
                continue
        return result

    # --- one pass -----------------------------------------------------------------------
    def step(self, executor) -> int:
        """Collect finished uploads, answer requests, start new uploads; returns work in progress."""
        self._collect()
        if self.stopping:
            return len(self.in_flight)  # finish what is in flight, take nothing new
        for request_id, request in self._requests():
            if request_id in self.answered:
                continue
            name = request.get("name") or ""
            if self.spool.acked_sha256(name) == request.get("sha256") and request.get("sha256"):
                self._respond(request_id, {"ok": True, "status": "acknowledged", "sha256": request["sha256"]})
                continue
            if name in self.in_flight:
                if request_id not in self.in_flight[name][2]:
                    self.in_flight[name][2].append(request_id)
                continue
            self._submit(executor, name, request.get("path") or "", [request_id])
        ready = self._ready_files()
        for name, _size, _mtime in ready:
            if len(self.in_flight) >= self.parallel * 2:
                break
            if name in self.in_flight or self.retry_after.get(name, 0) > time.monotonic():
                continue
            if self.spool.acked_sha256(name):
                continue  # acknowledged; PostgreSQL has not renamed .ready yet
            self._submit(executor, name, os.path.join(self.pgdata, "pg_wal", name), [])
        self._publish_status(ready)
        return len(self.in_flight)

    def _submit(self, executor, name: str, path: str, request_ids: list) -> None:
        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import archive_file

        self.in_flight[name] = (executor.submit(archive_file, self.context, path, name), path, request_ids)

    def _collect(self) -> None:
        for name in [name for name, entry in self.in_flight.items() if entry[0].done()]:
            future, _path, request_ids = self.in_flight.pop(name)
            try:
                result = future.result()
            except PgsafeError as exc:
                self.failures_total += 1
                self.last_error = exc.message
                backoff = 60.0 if exc.category == "wal_conflict" else min(30.0, 1.0 + self.failures_total % 30)
                self.retry_after[name] = time.monotonic() + backoff
                LOG.error("archiving %s failed: %s", name, exc.message)
                for request_id in request_ids:
                    self._respond(request_id, {"ok": False, "what": exc.what, "where": exc.where, "fix": exc.fix,
                                               "exit_code": exc.exit_code})
                continue
            except Exception as exc:  # pylint: disable=broad-except
                self.failures_total += 1
                self.last_error = "%s: %s" % (type(exc).__name__, exc)
                self.retry_after[name] = time.monotonic() + 5.0
                LOG.error("archiving %s failed unexpectedly: %s", name, self.last_error)
                for request_id in request_ids:
                    self._respond(request_id, {"ok": False, "what": "archiving %s failed: %s" % (
                        name, self.last_error), "exit_code": 1})
                continue
            # The ack file is written only after archive_file returned, i.e. after the record
            # is durable in the repository: a wal-push that trusts it trusts the repository.
            self.spool.write_json(os.path.join(self.spool.acked, name), {
                "sha256": result["sha256"], "status": result["status"], "at": time.time()})
            self.retry_after.pop(name, None)
            self.shipped_total += 1
            self.last_success = time.time()
            LOG.info("archived %s (%s)", name, result["status"])
            for request_id in request_ids:
                self._respond(request_id, dict(result, ok=True))

    def _respond(self, request_id: str, verdict: dict) -> None:
        self.answered[request_id] = time.monotonic()
        try:
            self.spool.write_json(os.path.join(self.spool.requests, request_id + ".resp"), verdict)
        except OSError as exc:
            LOG.warning("cannot answer request %s: %s", request_id, exc)

    # --- status and metrics -----------------------------------------------------------
    def status(self, ready: list | None = None) -> dict:
        ready = self._ready_files() if ready is None else ready
        pending = [item for item in ready if not self.spool.acked_sha256(item[0])]
        now = time.time()
        oldest = min((item[2] for item in pending), default=None)
        return {"cluster": self.context.cluster, "at": now, "pid": os.getpid(),
                "backlog_segments": len(pending), "lag_bytes": sum(item[1] for item in pending),
                "lag_seconds": round(now - oldest, 3) if oldest is not None else 0.0,
                "in_flight": len(self.in_flight), "shipped_total": self.shipped_total,
                "failures_total": self.failures_total, "last_success": self.last_success,
                "last_error": self.last_error}

    _last_publish = 0.0

    def _publish_status(self, ready: list) -> None:
        if time.monotonic() - self._last_publish < 1.0:
            return
        self._last_publish = time.monotonic()
        status = self.status(ready)
        try:
            self.spool.write_json(self.spool.status_path, status)
        except OSError as exc:
            LOG.warning("cannot write the WAL status file %s: %s", self.spool.status_path, exc)
        metrics = self.context.metrics
        if metrics is not None and hasattr(metrics, "record_wal"):
            try:
                metrics.record_wal(self.context.cluster, status["lag_seconds"], status["lag_bytes"],
                                   status["backlog_segments"], status["last_success"], status["failures_total"])
            except Exception as exc:  # pylint: disable=broad-except
                LOG.warning("cannot publish WAL metrics: %s", exc)
        self._prune_acked()

    def _prune_acked(self) -> None:
        """Forget acknowledgements PostgreSQL no longer needs (no .ready left, old enough)."""
        horizon = time.monotonic() - 300.0
        for request_id in [key for key, at in self.answered.items() if at < horizon]:
            del self.answered[request_id]
            try:  # an answer nobody collected (the pusher died meanwhile)
                os.unlink(os.path.join(self.spool.requests, request_id + ".resp"))
            except OSError:
                pass
        cutoff = time.time() - self.ack_keep_seconds
        try:
            entries = os.listdir(self.spool.acked)
        except OSError:
            return
        for name in entries:
            path = os.path.join(self.spool.acked, name)
            try:
                if os.stat(path).st_mtime >= cutoff:
                    continue
                ready = os.path.join(self.pgdata or "", "pg_wal", "archive_status", name + ".ready")
                if self.pgdata and os.path.exists(ready):
                    continue
                os.unlink(path)
            except OSError:
                continue

    # --- main loop ------------------------------------------------------------------------
    def run(self, once: bool = False, max_seconds: float | None = None) -> dict:
        """Serve until SIGTERM/SIGINT (or, with ``once``, until the backlog is empty)."""
        import concurrent.futures

        from ansible_collections.pgsafe.backup.plugins.module_utils.locking import RunLock

        def stop(_signum, _frame) -> None:
            self.stopping = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)} \
            if not once else {}
        started = time.monotonic()
        lock = RunLock(self.context.state_dir, self.context.cluster, SHIPPER_OPERATION)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                lock.acquire()
                break
            except PgsafeError:
                # wal-push probes the lock with a shared flock for an instant; a real second
                # shipper still holds it after a few seconds, and is refused then.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        try:
            with concurrent.futures.ThreadPoolExecutor(self.parallel, thread_name_prefix="wal-ship") as executor:
                while True:
                    busy = self.step(executor)
                    if self.stopping and not busy:
                        break
                    if once and not busy:
                        self._collect()
                        pending = [item for item in self._ready_files() if not self.spool.acked_sha256(item[0])
                                   and self.retry_after.get(item[0], 0) <= time.monotonic()]
                        if not pending and not self._requests():
                            break
                    if max_seconds is not None and time.monotonic() - started > max_seconds:
                        self.stopping = True
                    time.sleep(self.poll_seconds)
                self._last_publish = 0.0
                self._publish_status(self._ready_files())
        finally:
            lock.release()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.status()


def read_status(state_dir: str, cluster: str) -> dict:
    """The shipper's last published status, with whether it is running now."""
    spool = Spool(state_dir, cluster)
    try:
        with open(spool.status_path, "r", encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError):
        status = {"cluster": cluster, "at": None}
    status["running"] = spool.shipper_running()
    status["age_seconds"] = round(time.time() - status["at"], 1) if status.get("at") else None
    return status
