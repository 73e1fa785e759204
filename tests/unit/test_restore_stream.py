# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The physical restore's read path: the producer thread that decrypts ahead (PrefetchingReader)
and the one-pass tar reader (TarStream), on real bytes.

The reader must hand over every byte in order, raise the producer's own exception (type and
message) in the consumer, stop its thread when the consumer gives up, and hold a bounded
number of chunks; the tar reader must read what physical_backup writes (pax headers included)
and refuse truncated or invalid streams.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import time

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import EncryptionError, VerificationError
from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import tar_header, tar_padding
from ansible_collections.pgsafe.backup.plugins.module_utils.physical_restore import (
    PrefetchingReader, TarStream, Writeback, sync_to_disk)


class Source:
    """An ObjectReader stand-in over real bytes: read(n), finish(), close(); counts what it hands out."""

    def __init__(self, data: bytes, fail_at: int | None = None, error: BaseException | None = None,
                 finish_error: BaseException | None = None, delay: float = 0.0):
        self.stream = io.BytesIO(data)
        self.fail_at = fail_at
        self.error = error
        self.finish_error = finish_error
        self.delay = delay
        self.handed = 0
        self.finished = False
        self.closed = False
        self.reading_thread = None

    def read(self, size: int) -> bytes:
        self.reading_thread = threading.current_thread()
        if self.delay:
            time.sleep(self.delay)
        if self.fail_at is not None and self.handed >= self.fail_at:
            raise self.error
        chunk = self.stream.read(size)
        self.handed += len(chunk)
        return chunk

    def finish(self) -> None:
        if self.finish_error is not None:
            raise self.finish_error
        self.finished = True

    def close(self) -> None:
        self.closed = True


def prefetch_threads() -> list:
    return [thread for thread in threading.enumerate() if thread.name == "pgsafe-prefetch"]


@pytest.mark.parametrize("sizes", [[1], [511, 513, 7], [1 << 20], [3 << 20, 5]])
def test_every_byte_arrives_in_order_and_finish_runs_in_the_producer(sizes):
    data = os.urandom(3 * (1 << 20) + 12345)
    source = Source(data)
    reader = PrefetchingReader(source, depth=2, chunk_size=1 << 20, name="test object")
    received = []
    position = 0
    while True:
        chunk = reader.read(sizes[position % len(sizes)])
        position += 1
        if not chunk:
            break
        assert len(chunk) <= sizes[(position - 1) % len(sizes)]
        received.append(chunk)
    reader.finish()
    reader.close()
    assert b"".join(received) == data
    assert source.finished and source.closed
    assert source.reading_thread is not threading.current_thread()
    assert prefetch_threads() == []


def test_read_all_and_finish_skip_the_rest():
    data = os.urandom(200000)
    source = Source(data)
    with_all = PrefetchingReader(source, chunk_size=4096)
    assert with_all.read() == data and with_all.read(10) == b""
    with_all.close()

    partial = Source(data)
    reader = PrefetchingReader(partial, chunk_size=4096)
    assert reader.read(100) == data[:100]
    reader.finish()  # the tar's end padding is skipped, the producer's finish() still runs
    reader.close()
    assert partial.finished and partial.handed == len(data)


def test_a_producer_failure_reaches_the_consumer_unchanged_and_stays():
    error = EncryptionError("the ciphertext failed authentication: the object was modified", where="repo: key",
                            fix="restore it from another copy")
    source = Source(os.urandom(50000), fail_at=20000, error=error)
    reader = PrefetchingReader(source, chunk_size=4096)
    received = 0
    with pytest.raises(EncryptionError) as raised:
        while True:
            chunk = reader.read(1000)
            assert chunk, "the stream must not look complete"
            received += len(chunk)
    assert raised.value is error and raised.value.message == error.message
    assert received == 20480  # everything before the failure was handed over, nothing after
    with pytest.raises(EncryptionError):
        reader.read(1)  # every later read raises it again: never a silent end of stream
    with pytest.raises(EncryptionError):
        reader.finish()
    reader.close()
    assert source.closed and prefetch_threads() == []


def test_a_failure_in_finish_is_raised_by_finish():
    error = VerificationError("SHA-256 of the stored bytes differs from the manifest", where="repo: key")
    reader = PrefetchingReader(Source(b"x" * 10000, finish_error=error), chunk_size=4096)
    assert len(reader.read(100)) == 100
    with pytest.raises(VerificationError) as raised:
        reader.finish()
    assert raised.value is error
    reader.close()


def test_a_consumer_that_gives_up_stops_the_producer_and_memory_stays_bounded():
    chunk_size = 64 * 1024
    source = Source(os.urandom(64 * chunk_size), delay=0.001)
    reader = PrefetchingReader(source, depth=4, chunk_size=chunk_size)
    assert len(reader.read(10)) == 10
    deadline = time.monotonic() + 10
    while source.handed < 5 * chunk_size and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    # Queue full: depth chunks waiting, one consumed, one read and waiting to be queued.
    assert source.handed <= (4 + 2) * chunk_size, source.handed
    started = time.monotonic()
    reader.close()
    assert time.monotonic() - started < 5
    assert source.closed and prefetch_threads() == [] and not source.finished
    assert source.handed < 64 * chunk_size


def test_a_consumer_exception_inside_a_with_block_leaves_no_thread():
    source = Source(os.urandom(1 << 20))
    with pytest.raises(OSError):
        reader = PrefetchingReader(source, depth=1, chunk_size=1024)
        try:
            reader.read(10)
            raise OSError("No space left on device")
        finally:
            reader.close()
    assert prefetch_threads() == [] and source.closed


def backup_tar(members, directories=("base",)) -> bytes:
    """A tar exactly as DataDirectoryTar writes one."""
    out = io.BytesIO()
    for directory in directories:
        out.write(tar_header(directory, tarfile.DIRTYPE, mode=0o700))
    for name, data in members:
        out.write(tar_header(name, tarfile.REGTYPE, len(data), 0o600, time.time()) + data + tar_padding(len(data)))
    out.write(b"\0" * (tarfile.BLOCKSIZE * 2))
    return out.getvalue()


class Trickle:
    """Hands out at most ``step`` bytes per read, like a reader at chunk boundaries."""

    def __init__(self, data: bytes, step: int):
        self.stream = io.BytesIO(data)
        self.step = step

    def read(self, size: int) -> bytes:
        return self.stream.read(min(size, self.step))


@pytest.mark.parametrize("step", [1, 700, 1 << 20])
def test_tar_stream_reads_what_the_backup_writes(step):
    members = [("base/1/1259", os.urandom(8192 * 3)), ("global/pg_control", os.urandom(8192)),
               ("a/" + "long" * 40 + "/name", b"pax path"), ("pg_tblspc/16385/PG_15_dé/1", b""),
               ("base/1/skipped", os.urandom(513)), ("backup_label", b"START WAL LOCATION: 0/2000028\n")]
    archive = TarStream(Trickle(backup_tar(members), step), "backup X")
    seen = []
    for name, kind, size in archive.members():
        if kind == tarfile.DIRTYPE:
            seen.append((name, "directory", size))
        elif name != "base/1/skipped":  # its data is skipped by moving on
            seen.append((name, hashlib.sha256(b"".join(archive.data())).hexdigest(), size))
    assert seen == [("base", "directory", 0)] + [(name, hashlib.sha256(data).hexdigest(), len(data))
                                                 for name, data in members if name != "base/1/skipped"]


def test_tar_stream_takes_the_size_and_path_of_a_pax_header():
    info = tarfile.TarInfo("short")
    info.size = 3
    info.pax_headers = {"path": "pg_tblspc/1/ünïcode", "size": "5"}
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    stream = header + b"12345" + b"\0" * (tarfile.BLOCKSIZE - 5) + b"\0" * 1024
    archive = TarStream(Trickle(stream, 4096), "backup X")
    assert [(name, size, b"".join(archive.data())) for name, _kind, size in archive.members()] == [
        ("pg_tblspc/1/ünïcode", 5, b"12345")]


@pytest.mark.parametrize("cut", [100, 512 + 10, 512 + 8192 * 3 - 1])
def test_tar_stream_refuses_a_truncated_stream(cut):
    data = backup_tar([("base/1/1259", os.urandom(8192 * 3))], directories=())
    archive = TarStream(Trickle(data[:cut], 4096), "backup X")
    with pytest.raises(VerificationError, match="ends in the middle of a member"):
        for _name, _kind, _size in archive.members():
            b"".join(archive.data())


def test_tar_stream_refuses_a_corrupt_header():
    data = bytearray(backup_tar([("base/1/1259", b"x" * 10)], directories=()))
    data[0] ^= 0xFF  # the name changes, the header checksum no longer matches
    with pytest.raises(VerificationError, match="invalid tar header in backup X"):
        list(TarStream(Trickle(bytes(data), 4096), "backup X").members())


def test_writeback_starts_writing_files_and_its_thread_ends_with_close(tmp_path):
    paths = []
    for number in range(20):
        path = tmp_path / ("file%d" % number)
        path.write_bytes(os.urandom(100000))
        paths.append(str(path))
    writeback = Writeback()
    for path in paths + [str(tmp_path / "wiped-meanwhile")]:  # a missing file is skipped, not an error
        writeback.add(path)
    writeback.close()
    assert [thread for thread in threading.enumerate() if thread.name == "pgsafe-writeback"] == []
    sync_to_disk([str(tmp_path), str(tmp_path)])  # one file system, synced once; durable from here
    assert all(os.path.getsize(path) == 100000 for path in paths)
