# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The streaming pipeline: source -> compress -> encrypt -> SHA-256 -> repository, and back.

Nothing is staged on local disk: a child process's stdout is pulled through zstd and
the AWS Encryption SDK framing straight into a repository writer, one chunk at a time,
so memory is bounded whatever the database size. The object is committed only after
the source reported success (``finish``): a pg_dump that dies mid-stream aborts the
write and leaves nothing under the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import threading
import time
from typing import BinaryIO, Callable

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError, VerificationError

CHUNK_SIZE = 1 << 20


@dataclasses.dataclass
class StoredObject:
    """One object written by the pipeline, as recorded in a manifest."""

    name: str  # relative to the backup directory
    key: str  # full repository key
    size_raw: int  # bytes the source produced
    size_stored: int  # bytes stored (compressed + encrypted)
    sha256: str  # of the stored bytes
    encryption_context: dict
    seconds: float = 0.0

    def to_manifest(self) -> dict:
        return {
            "name": self.name,
            "size_raw": self.size_raw,
            "size_stored": self.size_stored,
            "sha256": self.sha256,
            "encryption_context": self.encryption_context,
        }


class CountingReader:
    """Counts the bytes pulled through it (raw size before compression)."""

    def __init__(self, source: BinaryIO):
        self.source = source
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        self.count += len(chunk)
        return chunk

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass


class ProcessSource:
    """stdout of a child process as a readable stream; ``finish()`` raises if it failed.

    stderr is drained by a thread into a bounded tail so the child never blocks on it.
    Secrets go to the child through ``env`` only, never argv.
    """

    STDERR_TAIL = 64 * 1024

    def __init__(self, argv: list[str], env: dict | None = None, error_class: type = PgsafeError,
                 what: str | None = None, stdin=subprocess.DEVNULL):
        self.argv = list(argv)
        self.what = what or os.path.basename(argv[0])
        self.error_class = error_class
        self._stderr = bytearray()
        try:
            self.process = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            env=env, bufsize=0, start_new_session=True)
        except OSError as exc:
            raise error_class("cannot start %s: %s" % (self.what, exc), where=argv[0],
                              fix="install the PostgreSQL client programs or set postgres.bin_dir") from exc
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        for line in iter(lambda: self.process.stderr.read(8192), b""):
            self._stderr.extend(line)
            if len(self._stderr) > self.STDERR_TAIL:
                del self._stderr[: len(self._stderr) - self.STDERR_TAIL]

    def read(self, size: int = -1) -> bytes:
        return self.process.stdout.read(size if size and size > 0 else CHUNK_SIZE)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    @property
    def stderr_text(self) -> str:
        return self._stderr.decode("utf-8", "replace").strip()

    def finish(self) -> None:
        """Wait for the child; raise ``error_class`` with its stderr when it failed."""
        self.process.stdout.close()
        returncode = self.process.wait()
        self._stderr_thread.join(timeout=5)
        if returncode != 0:
            reason = "killed by signal %d" % -returncode if returncode < 0 else "exit code %d" % returncode
            raise self.error_class("%s failed (%s): %s" % (self.what, reason, self.stderr_text[-2000:] or "no output"),
                                   where=" ".join(self.argv[:1]),
                                   fix="read the message above; the backup was not recorded and nothing valid was "
                                   "removed, so re-run after fixing the cause")

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:
                pass
            self.process.wait()


def store_stream(source: BinaryIO, repository, key: str, name: str, compression, envelope, context: dict,
                 finish: Callable[[], None] | None = None, on_progress: Callable[[int], None] | None = None
                 ) -> StoredObject:
    """Pull ``source`` through compression and encryption into ``repository`` at ``key``.

    ``finish`` is called after the source is exhausted and before the commit: it is where
    a child process's exit status is checked, so a failed producer never yields an object.
    """
    started = time.monotonic()
    counted = CountingReader(source)
    compressed = compression.compressing_reader(counted)
    encrypted = envelope.encrypting_reader(compressed, context)
    digest = hashlib.sha256()
    stored = 0
    writer = repository.open_writer(key)
    try:
        while True:
            chunk = encrypted.read(CHUNK_SIZE)
            if not chunk:
                break
            digest.update(chunk)
            stored += len(chunk)
            writer.write(chunk)
            if on_progress is not None:
                on_progress(counted.count)
        if finish is not None:
            finish()
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return StoredObject(name=name, key=key, size_raw=counted.count, size_stored=stored,
                        sha256=digest.hexdigest(), encryption_context=dict(context),
                        seconds=time.monotonic() - started)


class HashingReader:
    """Hashes and counts the stored bytes as they are read from the repository."""

    def __init__(self, source: BinaryIO):
        self.source = source
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        self.digest.update(chunk)
        self.count += len(chunk)
        return chunk

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(CHUNK_SIZE):
            pass

    def close(self) -> None:
        self.source.close()


class ObjectReader:
    """Plaintext of one stored object; ``finish()`` proves the stored bytes matched the manifest.

    Decryption authenticates every frame and zstd checks its content checksum, and
    ``finish()`` additionally compares size and SHA-256 of the stored bytes, so one
    flipped byte anywhere is caught by at least two independent checks.
    """

    def __init__(self, repository, key: str, compression_algorithm: str, envelope, expected_context: dict,
                 expected_sha256: str | None = None, expected_size: int | None = None):
        from ansible_collections.pgsafe.backup.plugins.module_utils.compression import Compression

        self.key = key
        self.repository = repository
        self.expected_sha256 = expected_sha256
        self.expected_size = expected_size
        self.raw = HashingReader(repository.open_reader(key))
        self.plain = Compression.decompressing_reader(
            envelope.decrypting_reader(self.raw, expected_context,
                                       name="%s: %s" % (repository.describe(), key)), compression_algorithm)
        self.plain_count = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.plain.read(size if size and size > 0 else CHUNK_SIZE)
        self.plain_count += len(chunk)
        return chunk

    def readable(self) -> bool:
        return True

    def drain_plain(self) -> None:
        while self.read(CHUNK_SIZE):
            pass

    def finish(self) -> None:
        """Read what is left of the stored bytes and compare size and SHA-256."""
        self.raw.drain()
        where = "%s: %s" % (self.repository.describe(), self.key)
        if self.expected_size is not None and self.raw.count != self.expected_size:
            raise VerificationError("stored size %d differs from the manifest's %d" % (self.raw.count, self.expected_size),
                                    where=where, fix="the object was truncated or replaced; restore from another "
                                    "repository copy or use an earlier backup")
        if self.expected_sha256 and self.raw.digest.hexdigest() != self.expected_sha256:
            raise VerificationError("SHA-256 of the stored bytes differs from the manifest", where=where,
                                    fix="the object is corrupt; restore from another repository copy or use an "
                                    "earlier backup")

    def close(self) -> None:
        try:
            self.raw.close()
        except Exception:  # pylint: disable=broad-except
            pass


def pump(reader, write: Callable[[bytes], None]) -> int:
    """Copy a reader into a write callable chunk by chunk; returns the bytes copied."""
    total = 0
    while True:
        chunk = reader.read(CHUNK_SIZE)
        if not chunk:
            return total
        write(chunk)
        total += len(chunk)
