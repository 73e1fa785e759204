# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Physical backups: ``full`` and ``incremental`` base backups, and ``transaction_logs``.

How a base backup is taken (both types, one code path):

* ``pg_backup_start(label, fast => true)`` in a session that stays open (the
  non-exclusive API: if pgsafe dies the session ends and PostgreSQL aborts the backup);
* pgsafe walks the data directory itself and builds ONE tar stream on the fly, pulled
  through the usual pipeline (zstd, AWS Encryption SDK, repository writer): nothing is
  staged on local disk;
* ``pg_backup_stop(false)`` returns ``backup_label`` and ``tablespace_map``; both are
  appended to the tar as its last members and recorded in the manifest; then pgsafe
  waits until every WAL segment from the start to the stop segment is in the archive
  (a base backup without its WAL cannot be restored, so without it there is no manifest).

Why not ``pg_basebackup -D - -Ft``: it cannot write more than one tar to stdout, so a
cluster with tablespaces could not be streamed without staging; and incremental backups
need per-file decisions (size, mtime, checksum) that only a reader of the files can make.
One reader for both types means one format and one restore path, and tablespaces are
supported: their files go into the same tar under ``pg_tblspc/<oid>/`` (the symlink is
followed) and restore relocates them. The cost: pgsafe must run on the database host
with read access to the data directory (it does anyway: it is the archive_command).

Incremental (PostgreSQL 15 has no native incremental backup): each backup stores an
encrypted file list of the WHOLE data directory (size, mtime in ns, SHA-256 of the bytes
stored, and which backup of the chain holds the content). A file is stored again when
its size or mtime changed, when it was modified within a second of the backup that
stored it (mtime granularity cannot prove it unchanged), or, with ``delta_checksum``,
when its SHA-256 differs. Restore takes each file from the backup that holds it and
leaves out files the newest list does not name (deleted files). WAL replay from the
newest backup's start fixes pages torn by concurrent writes, as for any base backup.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import time

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError, EncryptionError, PgsafeError, PostgresError, RestoreError, VerificationError)
from ansible_collections.pgsafe.backup.plugins.module_utils.locking import RunLock
from ansible_collections.pgsafe.backup.plugins.module_utils.pipeline import CHUNK_SIZE, store_stream
from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import server_info
from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import (
    archived_names, format_lsn, missing_segments, next_segment, parse_lsn, read_archived, read_record, segment_of,
    timeline_of, wait_for_archive, wal_settings)

LOG = logging.getLogger("pgsafe")
PHYSICAL_TYPES = ("full", "incremental")
# What pg_basebackup leaves out (src/backend/backup/basebackup.c): the directories are
# kept empty, the files are skipped.
EXCLUDED_DIR_CONTENTS = ("pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots",
                         "pg_stat_tmp", "pg_subtrans")
EXCLUDED_FILES = ("postmaster.pid", "postmaster.opts", "backup_label", "tablespace_map", "backup_manifest",
                  "postgresql.auto.conf.tmp", "current_logfiles.tmp", "recovery.signal", "standby.signal",
                  "backup_label.old")
TEMP_RELATION_RE = re.compile(r"^t\d+_\d+")
STABLE_MARGIN_NS = 1_000_000_000


def data_object_name(compression, envelope) -> str:
    return "pgdata.tar%s%s" % (compression.extension, ".enc" if envelope.enabled else "")


def filelist_object_name(compression, envelope) -> str:
    return "filelist.json%s%s" % (compression.extension, ".enc" if envelope.enabled else "")


# --------------------------------------------------------------------------- tar stream

class GeneratorReader:
    """A readable stream over a generator of byte chunks (what store_stream pulls from)."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.buffer = bytearray()
        self.done = False

    def read(self, size: int = -1) -> bytes:
        size = size if size and size > 0 else CHUNK_SIZE
        while len(self.buffer) < size and not self.done:
            try:
                self.buffer.extend(next(self.chunks))
            except StopIteration:
                self.done = True
        chunk = bytes(self.buffer[:size])
        del self.buffer[:size]
        return chunk

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass


def tar_header(path: str, kind: bytes, size: int = 0, mode: int = 0o600, mtime: float = 0.0, uid: int = 0,
               gid: int = 0, uname: str = "", gname: str = "", linkname: str = "") -> bytes:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    info.mode = mode
    info.mtime = int(mtime)
    # Owners matter for file-system backups (files_backup.py); the data directory's owner is
    # set at restore time instead, so physical backups leave them empty.
    info.uid, info.gid = uid, gid
    info.uname, info.gname = uname, gname
    info.linkname = linkname
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def tar_padding(size: int) -> bytes:
    remainder = size % tarfile.BLOCKSIZE
    return b"\0" * (tarfile.BLOCKSIZE - remainder) if remainder else b""


def tar_member(path: str, data: bytes) -> bytes:
    return tar_header(path, tarfile.REGTYPE, len(data), 0o600, time.time()) + data + tar_padding(len(data))


# --------------------------------------------------------------------------- data directory walk

def walk_data_directory(pgdata: str, tablespaces: dict[str, str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(directories, [(relative path, absolute path)]) to back up, sorted, exclusions applied."""
    directories: list[str] = []
    files: list[tuple[str, str]] = []

    def visit(absolute: str, relative: str, top: bool) -> None:
        try:
            entries = sorted(os.scandir(absolute), key=lambda entry: entry.name)
        except FileNotFoundError:
            return  # removed while we walked (a dropped database): nothing to back up
        for entry in entries:
            name = entry.name
            rel = name if not relative else relative + "/" + name
            if top and name in EXCLUDED_FILES:
                continue
            if name.startswith("pgsql_tmp") or name == "pg_internal.init" or TEMP_RELATION_RE.match(name):
                continue
            if top and name == "pg_tblspc":
                directories.append(rel)
                for oid, location in sorted(tablespaces.items()):
                    directories.append(rel + "/" + oid)
                    visit(location, rel + "/" + oid, False)
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks: pg_wal may be a link elsewhere
                is_file = entry.is_file()
            except OSError:
                continue
            if is_dir:
                directories.append(rel)
                if top and name in EXCLUDED_DIR_CONTENTS:
                    if name == "pg_wal":
                        directories.append("pg_wal/archive_status")
                    continue
                visit(entry.path, rel, False)
            elif is_file:
                files.append((rel, entry.path))

    visit(pgdata, "", True)
    return directories, files


def tablespace_locations(pgdata: str) -> dict[str, str]:
    """oid -> target of each pg_tblspc symlink."""
    result = {}
    folder = os.path.join(pgdata, "pg_tblspc")
    try:
        entries = os.listdir(folder)
    except OSError:
        return result
    for oid in entries:
        path = os.path.join(folder, oid)
        if os.path.islink(path):
            result[oid] = os.path.realpath(path)
        elif os.path.isdir(path):
            result[oid] = path  # in-place tablespace (allow_in_place_tablespaces)
    return result


class DataDirectoryTar:
    """Builds the tar of one base backup and the file list of the whole data directory."""

    def __init__(self, pgdata: str, backup_id: str, started_ns: int, parent_files: dict | None,
                 delta_checksum: bool, stop_backup):
        self.pgdata = pgdata
        self.backup_id = backup_id
        self.started_ns = started_ns
        self.parent_files = parent_files or {}
        self.delta_checksum = delta_checksum
        self.stop_backup = stop_backup
        self.tablespaces = tablespace_locations(pgdata)
        self.files: dict[str, dict] = {}
        self.directories: list[str] = []
        self.stop_result: dict | None = None
        self.files_stored = 0
        self.bytes_stored = 0
        self.bytes_total = 0

    def _unchanged(self, rel: str, info: os.stat_result, path: str) -> bool:
        previous = self.parent_files.get(rel)
        if not previous or not previous.get("stable"):
            return False
        if previous["size"] != info.st_size or previous["mtime_ns"] != info.st_mtime_ns:
            return False
        if self.delta_checksum:
            try:
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
                        digest.update(chunk)
            except OSError:
                return False
            return digest.hexdigest() == previous["sha256"]
        return True

    def chunks(self):
        directories, files = walk_data_directory(self.pgdata, self.tablespaces)
        self.directories = directories
        for rel in directories:
            yield tar_header(rel, tarfile.DIRTYPE, mode=0o700)
        for rel, path in files:
            try:
                handle = open(path, "rb")  # pylint: disable=consider-using-with
            except FileNotFoundError:
                continue  # dropped since the walk: WAL replay drops it too
            with handle:
                info = os.fstat(handle.fileno())
                self.bytes_total += info.st_size
                if self._unchanged(rel, info, path):
                    self.files[rel] = dict(self.parent_files[rel])
                    continue
                size = info.st_size
                yield tar_header(rel, tarfile.REGTYPE, size, 0o600, info.st_mtime)
                digest = hashlib.sha256()
                remaining = size
                while remaining > 0:
                    chunk = handle.read(min(CHUNK_SIZE, remaining))
                    if not chunk:
                        # Truncated while we read: pad as pg_basebackup does; replay rewrites it.
                        chunk = b"\0" * min(CHUNK_SIZE, remaining)
                    digest.update(chunk)
                    remaining -= len(chunk)
                    yield chunk
                yield tar_padding(size)
                self.files[rel] = {"size": size, "mtime_ns": info.st_mtime_ns, "sha256": digest.hexdigest(),
                                   "in": self.backup_id,
                                   "stable": info.st_mtime_ns < self.started_ns - STABLE_MARGIN_NS}
                self.files_stored += 1
                self.bytes_stored += size
        self.stop_result = self.stop_backup()
        yield tar_member("backup_label", self.stop_result["labelfile"].encode("utf-8"))
        if self.stop_result.get("spcmapfile"):
            yield tar_member("tablespace_map", self.stop_result["spcmapfile"].encode("utf-8"))
        yield b"\0" * (tarfile.BLOCKSIZE * 2)

    def file_list(self) -> dict:
        return {"format": "pgsafe-filelist", "backup_id": self.backup_id, "directories": self.directories,
                "files": self.files, "tablespaces": self.tablespaces}


# --------------------------------------------------------------------------- backup label

def parse_backup_label(text: str) -> dict:
    """START WAL LOCATION, START TIMELINE and friends from a backup_label."""
    result = {}
    match = re.search(r"START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)", text)
    if match:
        result["start_lsn"], result["start_segment"] = match.group(1), match.group(2)
    match = re.search(r"START TIMELINE: (\d+)", text)
    if match:
        result["timeline"] = int(match.group(1))
    match = re.search(r"BACKUP FROM: (\w+)", text)
    if match:
        result["backup_from"] = match.group(1)
    return result


# --------------------------------------------------------------------------- chain

def physical_backups(repository, cluster: str) -> list[dict]:
    """Complete full/incremental backups, oldest first, with their manifests."""
    return [entry for entry in list_backups(repository, cluster, with_manifests=True)
            if entry["type"] in PHYSICAL_TYPES and entry["status"] == "complete"]


def read_file_list(context, manifest: dict) -> dict:
    from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import find_object, open_object

    obj = find_object(manifest, "filelist")
    reader = open_object(context, manifest, obj)
    try:
        parts = []
        while True:
            chunk = reader.read(CHUNK_SIZE)
            if not chunk:
                break
            parts.append(chunk)
        reader.finish()
    finally:
        reader.close()
    return json.loads(b"".join(parts).decode("utf-8"))


def _choose_parent(context, backup_type: str, info: dict, max_chain_depth: int) -> tuple[dict | None, str]:
    """The manifest to build an incremental on, or None with the reason it becomes a full."""
    if backup_type == "full":
        return None, "full requested"
    candidates = [entry["manifest"] for entry in physical_backups(context.repository, context.cluster)
                  if entry["manifest"].get("postgres", {}).get("system_identifier") == info["system_identifier"]]
    if not candidates:
        return None, "no earlier full backup of this cluster: taking a full one"
    parent = candidates[-1]
    depth = int((parent.get("physical") or {}).get("chain_depth", 0))
    if depth + 1 > max_chain_depth:
        return None, "chain depth limit %d reached (parent %s is at depth %d): taking a full one" % (
            max_chain_depth, parent["backup_id"], depth)
    return parent, "incremental on %s" % parent["backup_id"]


# --------------------------------------------------------------------------- verification

class TarMismatchError(VerificationError):
    """The tar of a base backup does not hold what its file list says (verify's ``structure`` check)."""

    check = "structure"


def check_tar_against_list(stream, expected: dict, directories, backup_label: str | None, where: str) -> dict:
    """Read a base backup's tar to the end: every regular file is one the file list says this
    backup holds, with the recorded size and SHA-256; every file so listed is there; directories
    are listed ones; ``backup_label`` is present (and equal to the manifest's copy)."""
    problems: list[str] = []
    seen: set[str] = set()
    label = None
    directories = set(directories or ())
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            if member.name in ("backup_label", "tablespace_map") and member.isfile():
                data = archive.extractfile(member).read()
                if member.name == "backup_label":
                    label = data.decode("utf-8", "replace")
                continue
            if member.isdir():
                if member.name not in directories:
                    problems.append("directory %s is not in the file list" % member.name)
                continue
            entry = expected.get(member.name)
            if not member.isfile() or entry is None:
                problems.append("%s is in the tar but the file list does not say this backup holds it" % member.name)
                continue
            if member.size != entry["size"]:
                problems.append("%s is %d bytes in the tar, %d in the file list" % (
                    member.name, member.size, entry["size"]))
                continue
            digest = hashlib.sha256()
            source = archive.extractfile(member)
            for chunk in iter(lambda: source.read(CHUNK_SIZE), b""):
                digest.update(chunk)
            if digest.hexdigest() != entry.get("sha256"):
                problems.append("%s does not match the checksum in the file list" % member.name)
            seen.add(member.name)
    missing = sorted(set(expected) - seen)
    if missing:
        problems.append("%d file(s) the file list says this backup holds are not in the tar (e.g. %s)" % (
            len(missing), missing[0]))
    if label is None:
        problems.append("the tar has no backup_label")
    elif backup_label is not None and label != backup_label:
        problems.append("the tar's backup_label differs from the manifest's")
    if problems:
        raise TarMismatchError("the tar does not match the file list: %s%s" % (
            "; ".join(problems[:5]), " (and %d more)" % (len(problems) - 5) if len(problems) > 5 else ""),
            where=where, fix="the backup is damaged; restore from an older backup (its chain plus WAL) and take a "
            "new full backup")
    return {"files": len(seen), "directories": len(directories)}


def check_base_backup_tar(context, manifest: dict, reader) -> dict:
    """verify's decrypt level for the ``pgdata`` object of a full or incremental backup."""
    listing = read_file_list(context, manifest)
    backup_id = manifest["backup_id"]
    expected = {rel: entry for rel, entry in (listing.get("files") or {}).items() if entry.get("in") == backup_id}
    return check_tar_against_list(reader, expected, listing.get("directories"),
                                  (manifest.get("physical") or {}).get("backup_label"), backup_id)


def verify_chain_and_wal(context, manifest: dict, decrypt: bool) -> dict:
    """verify's checks beyond the objects, for physical types. Integrity: every earlier backup
    of the chain has a readable manifest; every WAL segment from the backup's start to its stop
    has an archive record. Decrypt (full and incremental): those segments decrypt and match
    their SHA-256, so the backup can be made consistent."""
    result = {"checks": [], "failures": [], "bytes_read": 0}
    backup_id = manifest["backup_id"]
    for ancestor in ((manifest.get("physical") or {}).get("chain") or [])[:-1]:
        try:
            found = mf.read_manifest(context.repository, context.cluster, ancestor)
        except PgsafeError as exc:
            result["failures"].append(("chain", ancestor, "backup %s of the chain of %s is unusable: %s" % (
                ancestor, backup_id, exc.message)))
            continue
        if found.get("type") not in PHYSICAL_TYPES:
            result["failures"].append(("chain", ancestor, "backup %s of the chain is a %s backup" % (
                ancestor, found.get("type"))))
            continue
        result["checks"].append({"check": "chain", "object": ancestor, "ok": True})
    wal = manifest.get("wal") or {}
    first, last = wal.get("start_segment"), wal.get("stop_segment")
    if not first or not last:
        return result
    segment_size = int(wal.get("segment_size") or 16 * 1024 * 1024)
    names = archived_names(context.repository, context.cluster, timeline_of(last))
    missing = missing_segments(names, first, last, segment_size)
    span = "%s..%s" % (first, last)
    if missing:
        result["failures"].append(("wal", missing[0], "WAL segment(s) %s of %s not archived; %s" % (
            ", ".join(missing[:5]), span, "the backup cannot be made consistent" if manifest["type"] in
            PHYSICAL_TYPES else "the archive has a gap")))
        return result
    result["checks"].append({"check": "wal", "object": span, "ok": True})
    if decrypt and manifest["type"] in PHYSICAL_TYPES:
        current = first
        while True:
            record = read_record(context.repository, context.cluster, current)
            try:
                read_archived(context, current, record)
            except PgsafeError as exc:
                result["failures"].append(("wal", current, exc.message))
            else:
                result["bytes_read"] += int((record or {}).get("size_stored") or 0)
            if current == last:
                break
            current = next_segment(current, segment_size)
        if not [failure for failure in result["failures"] if failure[0] == "wal"]:
            result["checks"].append({"check": "wal decrypt", "object": span, "ok": True})
    return result


# --------------------------------------------------------------------------- run

def _record_metrics(context, backup_type: str, ok: bool, seconds: float, size: int, exc=None) -> None:
    if context.metrics is None:
        return
    try:
        if exc is not None and isinstance(exc, EncryptionError):
            context.metrics.record_encryption_failure(context.cluster)
        context.metrics.record_backup(context.cluster, backup_type, ok, seconds, size, time.time() if ok else None)
    except Exception as error:  # pylint: disable=broad-except
        LOG.warning("cannot publish metrics: %s", error)


def run_physical_backup(context, backup_type: str = "full", pgdata: str | None = None,
                        max_chain_depth: int | None = None, delta_checksum: bool = False,
                        labels: dict | None = None, archive_wait_seconds: float | None = None) -> dict:
    """Take a full or incremental base backup; returns a summary. The manifest is written last."""
    _check_type(backup_type)
    wal = wal_settings(context.settings)
    started = time.monotonic()
    try:
        with RunLock(context.state_dir, context.cluster, "backup-physical"):
            result = _base_backup(context, backup_type, pgdata or wal["pgdata"],
                                  _depth_limit(max_chain_depth, wal), delta_checksum, labels or {},
                                  _archive_wait(archive_wait_seconds, wal))
    except PgsafeError as exc:
        _record_metrics(context, backup_type, False, time.monotonic() - started, 0, exc)
        raise
    _record_metrics(context, result["type"], True, result["duration_seconds"], result["size_stored_bytes"])
    return result


def _settings_of(conn) -> dict:
    rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name IN ('data_directory', 'archive_mode', "
                        "'wal_level', 'wal_segment_size', 'archive_command')").fetchall()
    return dict(rows)


def _check_type(backup_type: str) -> None:
    if backup_type not in PHYSICAL_TYPES:
        raise ConfigError("unknown physical backup type %r" % backup_type, where="type",
                          fix="use full or incremental (or transaction_logs)")


def _archive_wait(archive_wait_seconds, wal: dict) -> float:
    if archive_wait_seconds is None:
        return float(wal["archive_wait_seconds"])
    if float(archive_wait_seconds) <= 0:
        raise ConfigError("archive_wait_seconds must be positive, not %r" % archive_wait_seconds,
                          where="archive_wait_seconds", fix="give the seconds to wait for the WAL to reach the "
                          "archive (leave it unset for %s)" % wal["archive_wait_seconds"])
    return float(archive_wait_seconds)


def _depth_limit(max_chain_depth, wal: dict) -> int:
    if max_chain_depth is None:
        return int(wal["max_chain_depth"])
    if int(max_chain_depth) < 1:
        raise ConfigError("max_chain_depth must be 1 or more, not %r" % max_chain_depth, where="max_chain_depth",
                          fix="give the number of incrementals allowed after a full (leave it unset for %d)"
                          % int(wal["max_chain_depth"]))
    return int(max_chain_depth)


def _check_server(context, conn, info: dict, pgdata: str | None) -> tuple[str, int]:
    """Refuse a server a base backup cannot be taken from; (data directory, WAL segment size)."""
    settings = _settings_of(conn)
    if not settings.get("data_directory"):
        raise PostgresError("the role cannot read data_directory", where=context.postgres.where,
                            fix="run the backup as a superuser or a member of pg_read_all_settings and "
                            "pg_checkpoint (and grant EXECUTE on pg_backup_start/pg_backup_stop)")
    pgdata = pgdata or settings["data_directory"]
    if os.path.realpath(pgdata) != os.path.realpath(settings["data_directory"]):
        raise ConfigError("wal.pgdata %s is not the server's data directory %s" % (
            pgdata, settings["data_directory"]), where="pgdata (wal.pgdata)",
            fix="physical backups read the files of the server they connect to; correct pgdata (leave it unset "
            "to use the server's) or the postgres connection settings")
    if not os.access(pgdata, os.R_OK | os.X_OK):
        raise ConfigError("cannot read the data directory %s" % pgdata, where="pgdata (wal.pgdata)",
                          fix="run pgsafe on the database host as the PostgreSQL OS user (or root)")
    mode = settings.get("archive_mode")
    if mode == "off" or (info["in_recovery"] and mode != "always"):
        raise ConfigError(
            "archive_mode is %s on %s: a physical backup needs its WAL archived" % (mode, context.postgres.where),
            where="archive_mode", fix="set archive_mode = on (always on a standby), archive_command = "
            "'pgsafe wal-push %p', restart PostgreSQL and start `pgsafe wal-shipper`")
    if settings.get("wal_level") == "minimal":
        raise ConfigError("wal_level is minimal", where="wal_level",
                          fix="set wal_level = replica (or logical) and restart PostgreSQL")
    return pgdata, int(settings.get("wal_segment_size") or 16 * 1024 * 1024)


def plan_physical_backup(context, backup_type: str = "full", pgdata: str | None = None,
                         max_chain_depth: int | None = None) -> dict:
    """What run_physical_backup would do (check mode): the server checks, the type it would
    really take and why, and the chain it would extend. Writes nothing."""
    _check_type(backup_type)
    wal = wal_settings(context.settings)
    limit = _depth_limit(max_chain_depth, wal)
    info = server_info(context.postgres)
    with context.postgres.connect() as conn:
        pgdata, segment_size = _check_server(context, conn, info, pgdata or wal["pgdata"])
    parent, why = _choose_parent(context, backup_type, info, limit)
    ancestors = list((parent or {}).get("physical", {}).get("chain") or [])
    return {"changed": True, "type": "incremental" if parent else "full", "requested_type": backup_type,
            "why": why, "cluster": context.cluster, "pgdata": pgdata, "wal_segment_size": segment_size,
            "parent_backup_id": parent["backup_id"] if parent else None, "chain": ancestors,
            "chain_depth": len(ancestors), "max_chain_depth": limit,
            "forced_full": backup_type == "incremental" and parent is None,
            "repository": context.repository.describe()}


def _base_backup(context, requested_type, pgdata, max_chain_depth, delta_checksum, labels, archive_wait) -> dict:
    info = server_info(context.postgres)
    conn = context.postgres.connect()
    try:
        pgdata, segment_size = _check_server(context, conn, info, pgdata)
        parent, why = _choose_parent(context, requested_type, info, max_chain_depth)
        backup_type = "incremental" if parent else "full"
        parent_list = read_file_list(context, parent) if parent else None
        backup_id = mf.new_backup_id(context, backup_type)
        started_at = mf.utcnow()
        manifest = mf.new_manifest(backup_id, backup_type, context.cluster, started_at)
        LOG.info("backup %s of cluster %s started (%s)", backup_id, context.cluster, why)
        started_ns = time.time_ns()
        try:
            start_lsn = conn.execute("SELECT pg_backup_start(%s, true)::text", ("pgsafe " + backup_id,)).fetchone()[0]
        except Exception as exc:  # psycopg errors: privileges, another backup in this session
            raise PostgresError("pg_backup_start failed: %s" % str(exc).strip(), where=context.postgres.where,
                                fix="the role needs EXECUTE on pg_backup_start and pg_backup_stop") from None
        stop_info: dict = {}

        def stop_backup() -> dict:
            # The database list in the same statement, so it is what a restore to the end of
            # this backup holds (verify's restore level compares it with the restored copy).
            row = conn.execute("SELECT lsn::text, labelfile, spcmapfile, now(), "
                               "pg_snapshot_xmin(pg_current_snapshot())::text, "
                               "(SELECT array_agg(datname::text ORDER BY datname) FROM pg_database "
                               "WHERE datallowconn AND NOT datistemplate) FROM pg_backup_stop(false)").fetchone()
            stop_info.update({"lsn": row[0], "labelfile": row[1], "spcmapfile": row[2], "time": row[3],
                              "xmin": row[4], "databases": list(row[5] or [])})
            return stop_info

        tar = DataDirectoryTar(pgdata, backup_id, started_ns, (parent_list or {}).get("files"), delta_checksum,
                               stop_backup)
        try:
            data_name = data_object_name(context.compression, context.envelope)
            stored = store_stream(GeneratorReader(tar.chunks()), context.repository,
                                  mf.object_key(context.cluster, backup_id, data_name), data_name,
                                  context.compression, context.envelope,
                                  mf.encryption_context(context.cluster, backup_id, data_name))
            label = parse_backup_label(stop_info["labelfile"])
            timeline = int(label.get("timeline") or 1)
            stop_lsn = parse_lsn(stop_info["lsn"])
            stop_segment = segment_of(stop_lsn - 1, timeline, segment_size)
            list_name = filelist_object_name(context.compression, context.envelope)
            listing = json.dumps(tar.file_list(), sort_keys=True).encode("utf-8")
            stored_list = store_stream(io.BytesIO(listing), context.repository,
                                       mf.object_key(context.cluster, backup_id, list_name), list_name,
                                       context.compression, context.envelope,
                                       mf.encryption_context(context.cluster, backup_id, list_name))
            archived = wait_for_archive(context.repository, context.cluster, label["start_segment"], stop_segment,
                                        segment_size, archive_wait)
            chain = list((parent or {}).get("physical", {}).get("chain") or []) + [backup_id]
            manifest.update({
                "databases": [],
                "postgres": {"version": info["version"], "version_num": info["version_num"],
                             "system_identifier": info["system_identifier"], "in_recovery": info["in_recovery"],
                             "host": context.postgres.host, "port": context.postgres.port,
                             "data_directory": pgdata, "wal_segment_size": segment_size},
                "compression": context.compression.describe(),
                "encryption": context.envelope.describe(),
                "labels": labels,
                "parent_backup_id": parent["backup_id"] if parent else None,
                "wal": {"start_segment": label["start_segment"], "stop_segment": stop_segment,
                        "start_lsn": label["start_lsn"], "stop_lsn": format_lsn(stop_lsn), "timeline": timeline,
                        "segment_size": segment_size, "stop_time": mf.isoformat(stop_info["time"]),
                        "xmin_at_stop": int(stop_info["xmin"]), "segments": archived["segments"]},
                "physical": {"method": "pg_backup_start/stop, pgsafe tar", "backup_from": label.get("backup_from"),
                             "chain": chain, "chain_depth": len(chain) - 1, "why": why,
                             "files_total": len(tar.files), "files_stored": tar.files_stored,
                             "bytes_total": tar.bytes_total, "bytes_stored": tar.bytes_stored,
                             "delta_checksum": delta_checksum,
                             # Not the top-level "databases": retention groups and logical
                             # restores select by that; a physical backup holds the whole cluster.
                             "databases": stop_info["databases"],
                             "tablespaces": [{"oid": oid, "location": location}
                                             for oid, location in sorted(tar.tablespaces.items())],
                             "backup_label": stop_info["labelfile"],
                             "tablespace_map": stop_info.get("spcmapfile") or ""},
            })
            write_tar_manifest(context, manifest, stored, stored_list, "pgdata")
        except BaseException:
            discard_partial(context, backup_id)
            raise
    finally:
        conn.close()  # ends the session: PostgreSQL aborts a backup we did not stop
    LOG.info("completed %s backup %s in %.1f s (%d of %d files stored)", backup_type, backup_id,
             manifest["duration_seconds"], tar.files_stored, len(tar.files))
    seconds = max(manifest["duration_seconds"], 1e-6)
    return {
        "changed": True, "backup_id": backup_id, "type": backup_type, "requested_type": requested_type,
        "why": why, "cluster": context.cluster, "parent_backup_id": manifest["parent_backup_id"],
        "chain": manifest["physical"]["chain"], "repository": context.repository.describe(),
        "duration_seconds": manifest["duration_seconds"], "size_raw_bytes": manifest["size_raw_bytes"],
        "size_stored_bytes": manifest["size_stored_bytes"],
        "throughput_mb_s": round(tar.bytes_total / seconds / 1e6, 2),
        "files_total": len(tar.files), "files_stored": tar.files_stored, "wal": manifest["wal"],
    }


def write_tar_manifest(context, manifest: dict, stored, stored_list, kind: str) -> None:
    """Record a tar backup's two objects (the tar, of ``kind``, and its encrypted file list), seal the manifest
    and write it. Written last, the manifest is what makes the backup count (files backups share the layout)."""
    data_entry = stored.to_manifest()
    data_entry.update({"kind": kind, "format": "tar"})
    list_entry = stored_list.to_manifest()
    list_entry.update({"kind": "filelist", "format": "json"})
    manifest["objects"] = [data_entry, list_entry]
    mf.finalize(manifest, mf.utcnow())
    mf.write_manifest(context.repository, manifest)


def discard_partial(context, backup_id: str) -> None:
    try:
        context.repository.delete_prefix(mf.backup_prefix(context.cluster, backup_id))
    except Exception:  # pylint: disable=broad-except
        LOG.warning("could not remove the partial backup %s; prune removes it after the grace period", backup_id)


# --------------------------------------------------------------------------- transaction_logs

def run_transaction_logs(context, archive_wait_seconds: float | None = None, labels: dict | None = None) -> dict:
    """Force a segment switch, wait until the archive holds everything up to it, record the RPO."""
    wait = _archive_wait(archive_wait_seconds, wal_settings(context.settings))
    started = time.monotonic()
    try:
        with RunLock(context.state_dir, context.cluster, "backup-transaction_logs"):
            result = _transaction_logs(context, wait, labels or {})
    except PgsafeError as exc:
        _record_metrics(context, "transaction_logs", False, time.monotonic() - started, 0, exc)
        raise
    _record_metrics(context, "transaction_logs", True, result["duration_seconds"], 0)
    return result


def _check_switchable(context, conn, info: dict) -> int:
    """Refuse a server whose WAL cannot be switched and archived; its WAL segment size."""
    if info["in_recovery"]:
        raise RestoreError("%s is a standby: it cannot switch WAL segments" % context.postgres.where,
                           where="postgres", fix="run transaction_logs against the primary (archive_timeout on the "
                           "primary bounds the RPO of a standby-only setup)")
    settings = _settings_of(conn)
    if settings.get("archive_mode") == "off":
        raise ConfigError("archive_mode is off on %s" % context.postgres.where, where="archive_mode",
                          fix="set archive_mode = on and archive_command = 'pgsafe wal-push %p', then restart")
    return int(settings.get("wal_segment_size") or 16 * 1024 * 1024)


def _first_segment(context, timeline: int, default: str) -> str:
    """Where a transaction_logs check starts: the newest physical backup's start on this timeline."""
    physical = [entry["manifest"] for entry in physical_backups(context.repository, context.cluster)
                if int(entry["manifest"].get("wal", {}).get("timeline") or 0) == int(timeline)]
    return physical[-1]["wal"]["start_segment"] if physical else default


def plan_transaction_logs(context) -> dict:
    """What run_transaction_logs would do (check mode): the server checks, the segment it would
    switch away from, and the archive range it would wait for. Switches nothing, writes nothing."""
    info = server_info(context.postgres)
    with context.postgres.connect() as conn:
        segment_size = _check_switchable(context, conn, info)
        current_lsn, timeline = conn.execute(
            "SELECT pg_current_wal_lsn()::text, timeline_id FROM pg_control_checkpoint()").fetchone()
    current_segment = segment_of(parse_lsn(current_lsn), int(timeline), segment_size)
    first_segment = _first_segment(context, int(timeline), current_segment)
    names = archived_names(context.repository, context.cluster, "%08X" % int(timeline))
    # The current segment is still being written: only the ones before it can be archived yet.
    not_yet = missing_segments(names, first_segment, current_segment, segment_size, limit=6)
    not_yet = [name for name in not_yet if name != current_segment]
    return {"changed": True, "type": "transaction_logs", "cluster": context.cluster,
            "repository": context.repository.describe(), "current_lsn": current_lsn, "timeline": int(timeline),
            "would_switch_segment": current_segment,
            "wal": {"start_segment": first_segment, "stop_segment": current_segment, "timeline": int(timeline),
                    "segment_size": segment_size},
            "not_yet_archived": not_yet[:5]}


def _transaction_logs(context, wait: float, labels: dict) -> dict:
    info = server_info(context.postgres)
    with context.postgres.connect() as conn:
        segment_size = _check_switchable(context, conn, info)
        backup_id = mf.new_backup_id(context, "transaction_logs")
        started_at = mf.utcnow()
        # A commit record just before the switch: recovery to a time needs a commit after
        # the target to stop at, and this one marks "everything before here is archived".
        with conn.transaction():
            marker_xid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        marker_time, switch_lsn, timeline = conn.execute(
            "SELECT clock_timestamp(), pg_switch_wal()::text, timeline_id FROM pg_control_checkpoint()").fetchone()
    position = parse_lsn(switch_lsn)
    last_segment = segment_of(position - 1, int(timeline), segment_size)
    first_segment = _first_segment(context, int(timeline), last_segment)
    archived = wait_for_archive(context.repository, context.cluster, first_segment, last_segment, segment_size, wait)
    confirmed = mf.utcnow()
    manifest = mf.new_manifest(backup_id, "transaction_logs", context.cluster, started_at)
    manifest.update({
        "postgres": {"version": info["version"], "version_num": info["version_num"],
                     "system_identifier": info["system_identifier"], "host": context.postgres.host,
                     "port": context.postgres.port, "wal_segment_size": segment_size},
        "labels": labels,
        "wal": {"start_segment": first_segment, "stop_segment": last_segment, "stop_lsn": format_lsn(position),
                "timeline": int(timeline), "segment_size": segment_size, "segments": archived["segments"],
                "marker_xid": int(marker_xid), "marker_time": mf.isoformat(marker_time)},
        "rpo": {"achieved_seconds": round((confirmed - marker_time).total_seconds(), 3),
                "confirmed_at": mf.isoformat(confirmed),
                "meaning": "every transaction committed before marker_time is durable in the repository; this is "
                           "how long that took after the switch"},
    })
    mf.finalize(manifest, confirmed)
    mf.write_manifest(context.repository, manifest)
    return {"changed": True, "backup_id": backup_id, "type": "transaction_logs", "cluster": context.cluster,
            "repository": context.repository.describe(), "duration_seconds": manifest["duration_seconds"],
            "size_raw_bytes": 0, "size_stored_bytes": 0, "wal": manifest["wal"],
            "rpo_seconds": manifest["rpo"]["achieved_seconds"]}
