# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL archive in a repository: segment names, layout, and the durable push of one file.

Layout (one timeline directory per timeline, named like the first 8 hex digits of a segment)::

  <cluster>/wal/<TTTTTTTT>/<file>.json                        the record: written last, never replaced
  <cluster>/wal/<TTTTTTTT>/<file>.<sha256[:16]>[.zst][.enc]   the stored bytes

``<file>`` is what PostgreSQL hands to ``archive_command``: a segment
(``000000010000000000000002``), a partial segment (``...0002.partial``), a backup history
file (``...0002.00000028.backup``) or a timeline history file (``00000002.history``).

A file counts as archived only when its record exists. The record is created with
``put_if_absent`` after the stored bytes are durable, so it is the acknowledgement: a
name once recorded is never overwritten. Pushing the same name again compares the
SHA-256 of the plaintext with the record: identical is a success, different is refused
(``WalConflictError``). Because the stored object's key carries the plaintext digest,
two different contents never share a key either.

This module is imported on the ``wal-push`` hot path: it imports only the standard
library and small engine modules. Compression and encryption are reached through the
context, built by callers only when they really ship.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import socket
import time

# WalConflictError lives in errors.py with the other exit codes; it is re-exported here
# because callers and tests know it as wal_archive.WalConflictError.
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError, NotFoundError, RepositoryError, VerificationError, WalConflictError)
from ansible_collections.pgsafe.backup.plugins.module_utils.repository import join_key

SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
WAL_FILE_RE = re.compile(r"^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$")
RECORD_FORMAT = "pgsafe-wal-record"
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024


# --------------------------------------------------------------------------- names and LSNs

def parse_lsn(text: str) -> int:
    """'0/2000028' -> integer byte position."""
    match = re.match(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$", (text or "").strip())
    if not match:
        raise ConfigError("%r is not a WAL location" % text, where="target_lsn",
                          fix="write it as PostgreSQL prints it, e.g. 0/3000060 (pg_current_wal_lsn())")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(position: int) -> str:
    return "%X/%X" % (position >> 32, position & 0xFFFFFFFF)


def segments_per_id(segment_size: int) -> int:
    return 0x100000000 // segment_size


def segment_name(timeline: int, segment_number: int, segment_size: int) -> str:
    per_id = segments_per_id(segment_size)
    return "%08X%08X%08X" % (timeline, segment_number // per_id, segment_number % per_id)


def segment_of(position: int, timeline: int, segment_size: int) -> str:
    """The segment file that holds the byte at ``position``."""
    return segment_name(timeline, position // segment_size, segment_size)


def parse_segment(name: str, segment_size: int) -> tuple[int, int]:
    """(timeline, segment number) of a segment name."""
    if not SEGMENT_RE.match(name or ""):
        raise ConfigError("%r is not a WAL segment name" % name, fix="segment names are 24 hexadecimal digits")
    return int(name[:8], 16), int(name[8:16], 16) * segments_per_id(segment_size) + int(name[16:], 16)


def next_segment(name: str, segment_size: int) -> str:
    timeline, number = parse_segment(name, segment_size)
    return segment_name(timeline, number + 1, segment_size)


def segment_start_lsn(name: str, segment_size: int) -> int:
    return parse_segment(name, segment_size)[1] * segment_size


def check_wal_file_name(name: str) -> str:
    """Refuse anything but the four kinds of archive file names (also keeps keys safe)."""
    if not WAL_FILE_RE.match(name or ""):
        raise ConfigError("%r is not a WAL file name PostgreSQL archives" % name, where="wal file",
                          fix="archive_command must pass %p (or %f): a segment, .partial, .backup or .history "
                          "file")
    return name


def timeline_of(name: str) -> str:
    return name[:8]


# --------------------------------------------------------------------------- layout

def wal_prefix(cluster: str, timeline: str | None = None) -> str:
    return join_key(cluster, "wal", timeline) + "/" if timeline else join_key(cluster, "wal") + "/"


def record_key(cluster: str, name: str) -> str:
    return join_key(cluster, "wal", timeline_of(name), name + ".json")


def wal_encryption_context(cluster: str, timeline: str) -> dict:
    """One context per cluster and timeline, so the data-key cache serves many segments
    (encryption.py). A swapped segment is still caught: its plaintext SHA-256 is in the record."""
    return {"pgsafe:cluster": cluster, "pgsafe:kind": "wal", "pgsafe:timeline": timeline}


def read_record(repository, cluster: str, name: str) -> dict | None:
    """The archive record of one file, or None when the file is not archived."""
    key = record_key(cluster, name)
    try:
        data = repository.get_bytes(key)
    except NotFoundError:
        return None
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerificationError("the WAL record is not valid JSON (%s)" % exc, where="%s: %s" % (
            repository.describe(), key), fix="restore the record from a repository copy; never delete it by hand "
            "unless the segment is re-archived from the server's pg_wal") from None
    if record.get("format") != RECORD_FORMAT:
        raise VerificationError("not a pgsafe WAL record", where="%s: %s" % (repository.describe(), key),
                                fix="another tool wrote into pgsafe's wal/ prefix; give it its own prefix")
    return record


def archived_names(repository, cluster: str, timeline: str) -> set[str]:
    """Every file name with a record on one timeline (one LIST, no reads)."""
    prefix = wal_prefix(cluster, timeline)
    return {info.key[len(prefix):-5] for info in repository.list(prefix) if info.key.endswith(".json")}


def expired_wal_keys(repository, cluster: str, keep_from: str) -> list[str]:
    """Keys of archived WAL that no retained physical backup needs: segments (and their
    ``.partial``/``.backup`` companions) whose 24-digit name sorts before ``keep_from``.

    Timeline ``.history`` files are never expired: they are tiny, and recovery to any later
    timeline reads them. For each file the record comes first in the list, so a deletion
    interrupted halfway leaves data without a record (not archived, re-archivable), never
    a record whose data is gone."""
    keep_from = keep_from.upper()
    if not SEGMENT_RE.match(keep_from):
        raise VerificationError("%r is not a WAL segment name" % keep_from, where="retention",
                                fix="this is a bug in the retention plan; no WAL was deleted")
    records, data = [], []
    for info in repository.list(wal_prefix(cluster)):
        name = info.key.rsplit("/", 1)[-1]
        segment = name[:24]
        if not SEGMENT_RE.match(segment) or segment >= keep_from:
            continue  # .history files (8 digits) never match; newer segments stay
        (records if name.endswith(".json") else data).append(info.key)
    return records + data


def archive_summary(repository, cluster: str, segment_size: int | None = None) -> dict:
    """Per timeline: first and last archived segment, how many, how many are missing between
    them, and when the last one was archived. One LIST of the WAL prefix, one read per timeline."""
    prefix = wal_prefix(cluster)
    by_timeline: dict[str, dict] = {}
    for info in repository.list(prefix):
        name = info.key.rsplit("/", 1)[-1]
        if not name.endswith(".json"):
            continue
        name = name[:-5]
        timeline = by_timeline.setdefault(timeline_of(name), {"segments": [], "history": False, "other_files": 0})
        if SEGMENT_RE.match(name):
            timeline["segments"].append(name)
        elif name.endswith(".history"):
            timeline["history"] = True
        else:
            timeline["other_files"] += 1
    summary = {}
    for timeline, found in sorted(by_timeline.items()):
        segments = sorted(found["segments"])
        entry = {"timeline": int(timeline, 16), "segments": len(segments), "first_segment": None,
                 "last_segment": None, "missing_between": None, "last_archived_at": None,
                 "history_file": found["history"], "other_files": found["other_files"]}
        if segments:
            entry["first_segment"], entry["last_segment"] = segments[0], segments[-1]
            record = read_record(repository, cluster, segments[-1]) or {}
            entry["last_archived_at"] = record.get("archived_at")
            size = segment_size or int(record.get("size") or DEFAULT_SEGMENT_SIZE)
            span = parse_segment(segments[-1], size)[1] - parse_segment(segments[0], size)[1] + 1
            entry["missing_between"] = span - len(segments)
        summary["%08X" % int(timeline, 16)] = entry
    return summary


def contiguous_end(names: set[str], start_segment: str, segment_size: int, stop_at: str | None = None) -> str | None:
    """The last segment of the unbroken run that starts at ``start_segment`` (None when the
    start itself is missing). Stops early at ``stop_at`` when given."""
    if start_segment not in names:
        return None
    current = start_segment
    while current != stop_at:
        following = next_segment(current, segment_size)
        if following not in names:
            break
        current = following
    return current


def missing_segments(names: set[str], first: str, last: str, segment_size: int, limit: int = 20) -> list[str]:
    """Segments from first to last (inclusive) that have no record, at most ``limit`` of them."""
    missing = []
    current = first
    end = parse_segment(last, segment_size)[1]
    while parse_segment(current, segment_size)[1] <= end and len(missing) < limit:
        if current not in names:
            missing.append(current)
        current = next_segment(current, segment_size)
    return missing


# --------------------------------------------------------------------------- push

def sha256_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(1 << 20)
            if not chunk:
                return digest.hexdigest(), size
            digest.update(chunk)
            size += len(chunk)


def _isotime(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _compare(record: dict, name: str, sha256: str, where: str) -> dict:
    if record.get("sha256") == sha256:
        return {"name": name, "status": "duplicate", "sha256": sha256, "size": record.get("size"),
                "message": "already archived with identical content"}
    raise WalConflictError(
        "refusing to archive %s: the archive already holds a different file under this name (archived %s from "
        "%s, SHA-256 %s; this one has %s); it is never overwritten" % (
            name, record.get("archived_at"), record.get("host"), (record.get("sha256") or "")[:16], sha256[:16]),
        where=where,
        fix="two clusters are probably archiving into the same repository and cluster name, or this server was "
        "restored and kept the old archive settings: give each cluster its own `cluster` name (or run "
        "`SELECT pg_switch_wal()` after a fresh timeline); do not delete archived WAL to make room")


def archive_file(context, path: str, name: str | None = None) -> dict:
    """Store one WAL file durably; returns once its record exists (the acknowledgement).

    Identical content already archived -> ``status: duplicate`` (success). Different
    content under the same name -> WalConflictError. The file is read into memory once
    (a segment is 16 MiB by default) so its digest is known before anything is written.
    """
    started = time.monotonic()
    name = check_wal_file_name(name or os.path.basename(path))
    repository = context.repository
    where = "%s: %s" % (repository.describe(), record_key(context.cluster, name))
    try:
        with open(path, "rb") as handle:
            data = handle.read()
            closed_at = os.fstat(handle.fileno()).st_mtime
    except FileNotFoundError:
        raise NotFoundError("the WAL file %s does not exist" % path, where=name,
                            fix="archive_command must pass %p (the path relative to the data directory, which is "
                            "the command's working directory)") from None
    except OSError as exc:
        raise RepositoryError("cannot read the WAL file %s: %s" % (path, exc.strerror), where=name,
                              fix="run pgsafe as the PostgreSQL OS user (it owns pg_wal)") from None
    sha256 = hashlib.sha256(data).hexdigest()
    existing = read_record(repository, context.cluster, name)
    if existing is not None:
        return _compare(existing, name, sha256, where)

    timeline = timeline_of(name)
    compressed = _compress(context.compression, data)
    encryption_context = wal_encryption_context(context.cluster, timeline)
    stored = context.envelope.encrypt_bytes(compressed, encryption_context, name=name) \
        if context.envelope.enabled else compressed
    object_name = "%s.%s%s%s" % (name, sha256[:16], context.compression.extension,
                                 ".enc" if context.envelope.enabled else "")
    object_key = join_key(context.cluster, "wal", timeline, object_name)
    repository.put_bytes(object_key, stored)
    record = {
        "format": RECORD_FORMAT,
        "name": name,
        "object": object_name,
        "sha256": sha256,
        "size": len(data),
        "size_stored": len(stored),
        "stored_sha256": hashlib.sha256(stored).hexdigest(),
        "compression": context.compression.algorithm,
        "encrypted": bool(context.envelope.enabled),
        "encryption_context": encryption_context if context.envelope.enabled else {},
        "closed_at": _isotime(closed_at),
        "archived_at": _isotime(time.time()),
        "host": socket.gethostname(),
    }
    body = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    if not repository.put_if_absent(record_key(context.cluster, name), body):
        # Another pusher (the shipper's read-ahead, a retry) recorded it first: same rule.
        winner = read_record(repository, context.cluster, name)
        if winner is None:
            raise RepositoryError("the WAL record for %s was refused as existing but cannot be read" % name,
                                  where=where, fix="check the repository; the archive command will retry")
        return _compare(winner, name, sha256, where)
    return {"name": name, "status": "archived", "sha256": sha256, "size": len(data), "size_stored": len(stored),
            "seconds": round(time.monotonic() - started, 4)}


def _compress(compression, data: bytes) -> bytes:
    reader = compression.compressing_reader(io.BytesIO(data))
    parts = []
    while True:
        chunk = reader.read(1 << 20)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def read_archived(context, name: str, record: dict | None = None) -> bytes:
    """The verified plaintext of one archived file (raises NotFoundError when absent)."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.compression import Compression

    repository = context.repository
    record = record or read_record(repository, context.cluster, name)
    if record is None:
        raise NotFoundError("%s is not in the WAL archive" % name, where=repository.describe(),
                            fix="the archive ends before this file; choose an earlier target")
    key = join_key(context.cluster, "wal", timeline_of(name), record["object"])
    where = "%s: %s" % (repository.describe(), key)
    stored = repository.get_bytes(key)
    if hashlib.sha256(stored).hexdigest() != record.get("stored_sha256"):
        raise VerificationError("the stored WAL object does not match its record (SHA-256)", where=where,
                                fix="the object is corrupt: restore it from a repository copy")
    if record.get("encrypted"):
        stored = context.envelope.decrypt_bytes(stored, record.get("encryption_context")
                                                or wal_encryption_context(context.cluster, timeline_of(name)),
                                                name=name)
    reader = Compression.decompressing_reader(io.BytesIO(stored), record.get("compression") or "none")
    parts = []
    while True:
        chunk = reader.read(1 << 20)
        if not chunk:
            break
        parts.append(chunk)
    plain = b"".join(parts)
    if len(plain) != record.get("size") or hashlib.sha256(plain).hexdigest() != record.get("sha256"):
        raise VerificationError("the WAL file %s does not match its archived SHA-256" % name, where=where,
                                fix="the object is corrupt or was swapped: restore it from a repository copy")
    return plain


def wait_for_archive(repository, cluster: str, first: str, last: str, segment_size: int, timeout: float,
                     poll: float = 0.2) -> dict:
    """Wait until every segment from ``first`` to ``last`` has a record; raise with the gap otherwise."""
    deadline = time.monotonic() + timeout
    timeline = timeline_of(last)
    while True:
        names = archived_names(repository, cluster, timeline)
        missing = missing_segments(names, first, last, segment_size)
        if not missing:
            return {"first": first, "last": last, "segments": parse_segment(last, segment_size)[1]
                    - parse_segment(first, segment_size)[1] + 1}
        if time.monotonic() >= deadline:
            raise RepositoryError(
                "WAL segment(s) %s not archived after %.0f s" % (", ".join(missing[:5]) + (
                    " and more" if len(missing) > 5 else ""), timeout),
                where="%s: %s" % (repository.describe(), wal_prefix(cluster, timeline)),
                fix="check that archive_command runs `pgsafe wal-push %p` and succeeds (server log, "
                "pg_stat_archiver), that `pgsafe wal-shipper` is running, and that the repository is reachable")
        time.sleep(poll)


def wal_settings(settings: dict) -> dict:
    """The ``wal`` section with defaults, validated once."""
    spec = dict(settings.get("wal") or {})
    allowed = {"pgdata", "command", "parallel", "prefetch", "push_timeout_seconds", "archive_wait_seconds",
               "max_chain_depth", "ack_keep_seconds"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError("unknown wal option(s) %s" % ", ".join(unknown), where="wal",
                          fix="use only: %s" % ", ".join(sorted(allowed)))
    defaults = {"parallel": 4, "prefetch": 8, "push_timeout_seconds": 600, "archive_wait_seconds": 120,
                "max_chain_depth": 6, "ack_keep_seconds": 3600}
    # Only an unset value takes the default: 0 is refused below, not silently replaced.
    result = {"pgdata": spec.get("pgdata"), "command": spec.get("command")}
    result.update({key: spec[key] if spec.get(key) is not None else default for key, default in defaults.items()})
    for key in ("parallel", "prefetch", "push_timeout_seconds", "archive_wait_seconds", "max_chain_depth",
                "ack_keep_seconds"):
        try:
            value = float(result[key])
        except (TypeError, ValueError):
            value = -1
        if value <= 0:
            raise ConfigError("wal.%s must be a positive number, not %r" % (key, result[key]), where="wal.%s" % key,
                              fix="remove it to use the default")
        result[key] = int(value) if key not in ("push_timeout_seconds", "archive_wait_seconds") else value
    return result
