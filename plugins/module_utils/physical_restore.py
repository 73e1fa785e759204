# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time restore of physical backups into a NEW data directory, started on its own port.

Order of work, so that a refused restore touches nothing:

1. read the catalog and the WAL archive listing; compute the restorable window (from the
   end of the oldest usable base backup to the end of the contiguous archive);
2. validate the target (time, xid, lsn, name, latest): earlier than the window or beyond
   the end of the archive is refused with the window in the message. PostgreSQL itself
   would silently restore the backup's own point for a too-early target;
3. choose the base backup and its incremental chain (newest one that ends before the
   target) and check every object and WAL segment it needs exists;
4. only then create the directory (0700, owned by the PostgreSQL OS user), extract each
   file from the backup of the chain that holds it, verifying its SHA-256 against the
   file list; a missing or corrupt incremental makes the restore start over from the last
   good backup of the chain plus WAL (backup chain recovery), and the result says exactly
   what was skipped;
5. write ``recovery.signal`` and append to ``postgresql.auto.conf``: ``archive_mode = off``
   (the copy never writes into the production archive), its own ``port``,
   ``restore_command`` = ``pgsafe wal-fetch``, the target, ``recovery_target_action``
   (promote by default); start it and wait until recovery ends; report the point reached
   from the server's own log lines.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import logging
import os
import pwd
import queue
import re
import shlex
import shutil
import socket
import subprocess
import tarfile
import threading
import time

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError, EncryptionError, NotFoundError, PgsafeError, PostgresError, RestoreError, VerificationError)
from ansible_collections.pgsafe.backup.plugins.module_utils.locking import RunLock
from ansible_collections.pgsafe.backup.plugins.module_utils.pipeline import CHUNK_SIZE, ObjectReader
from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import (
    physical_backups, read_file_list)
from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import PostgresTarget
from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import (
    archived_names, contiguous_end, format_lsn, next_segment, parse_lsn, read_record, segment_start_lsn,
    wal_settings)

LOG = logging.getLogger("pgsafe")
TARGET_TYPES = ("time", "xid", "lsn", "name", "latest", "immediate")
ACTIONS = ("promote", "pause", "shutdown")
LOG_PATTERNS = {
    "stop": re.compile(r"recovery stopping (?:before|after|at) [^\n]*"),
    "last_transaction": re.compile(r"last completed transaction was at log time ([^\n]+)"),
    "redo_done": re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)[^\n]*"),
    "timeline": re.compile(r"selected new timeline ID: (\d+)"),
    "consistent": re.compile(r"consistent recovery state reached at ([0-9A-F]+/[0-9A-F]+)"),
    "fatal": re.compile(r"(?:FATAL|PANIC):\s+[^\n]*"),
}


# --------------------------------------------------------------------------- targets

def parse_time_target(text: str) -> datetime.datetime:
    """ISO 8601 with a zone ('2026-11-22T05:30:00Z', '2026-11-22 05:30:00+01'); naive means UTC."""
    value = (text or "").strip().replace(" ", "T", 1)
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError("%r is not a timestamp" % text, where="target_time",
                          fix="use ISO 8601 with a zone, e.g. 2026-11-22T05:30:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def normalise_target(target: dict | None) -> dict:
    """{'type': 'time', 'value': ...} with a parsed ``moment``/``position``/``xid``."""
    target = dict(target or {"type": "latest"})
    kind = target.get("type") or "latest"
    if kind not in TARGET_TYPES:
        raise ConfigError("unknown recovery target type %r" % kind, where="target",
                          fix="use one of: %s" % ", ".join(TARGET_TYPES))
    value = target.get("value")
    result = {"type": kind, "value": value}
    if kind == "time":
        result["moment"] = parse_time_target(str(value))
        result["value"] = mf.isoformat(result["moment"])
    elif kind == "lsn":
        result["position"] = parse_lsn(str(value))
        result["value"] = format_lsn(result["position"])
    elif kind == "xid":
        try:
            result["xid"] = int(value)
        except (TypeError, ValueError):
            raise ConfigError("%r is not a transaction id" % value, where="target_xid",
                              fix="give the numeric id (pg_current_xact_id())") from None
        if result["xid"] < 3:
            raise ConfigError("transaction id %d is not a normal id" % result["xid"], where="target_xid",
                              fix="give a normal transaction id (3 or more)")
    elif kind == "name":
        if not value or len(str(value)) > 63:
            raise ConfigError("a restore point name of 1-63 characters is needed", where="target_name",
                              fix="use the name given to pg_create_restore_point()")
        result["value"] = str(value)
    return result


# --------------------------------------------------------------------------- kind

def infer_restore_kind(context, kind: str | None, backup_id: str | None, physical_options: bool) -> str:
    """``logical`` or ``physical``: the type of a named backup decides (and must agree with an
    explicit ``kind``); otherwise ``kind``, else physical when physical options were given."""
    if backup_id and backup_id != "latest":
        _moment, backup_type = mf.parse_backup_id(backup_id)
        if backup_type == "transaction_logs":
            raise ConfigError("backup %s is a transaction_logs record: it holds no data of its own" % backup_id,
                              where="backup_id", fix="restore a physical backup (leave backup_id unset) with "
                              "target_time or target_lsn up to the point it confirmed (its wal.stop_lsn)")
        found = "logical" if backup_type == "logical" else "physical" if backup_type in ("full", "incremental") \
            else None
        if found is None:
            raise ConfigError("backup %s is a %s backup, which backup_restore does not restore" % (
                backup_id, backup_type), where="backup_id", fix="use the module made for that type")
        from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import select_backup

        manifest_type = select_backup(context.repository, context.cluster, backup_id)["type"]
        if manifest_type != backup_type:
            raise VerificationError("backup %s has a manifest of type %s" % (backup_id, manifest_type),
                                    where=backup_id, fix="the manifest is damaged or was swapped; use another backup")
        if kind and kind != found:
            raise ConfigError("kind=%s but backup %s is a %s backup" % (kind, backup_id, backup_type), where="kind",
                              fix="leave kind unset (the backup decides) or name a %s backup" % kind)
        return found
    return kind or ("physical" if physical_options else "logical")


# --------------------------------------------------------------------------- chain and window

def _effective_chains(context) -> tuple[list[dict], dict]:
    """Every complete physical backup, each with the longest restorable prefix of its chain."""
    entries = physical_backups(context.repository, context.cluster)
    manifests = {entry["backup_id"]: entry["manifest"] for entry in entries}
    result = []
    for entry in entries:
        manifest = entry["manifest"]
        chain_ids = list((manifest.get("physical") or {}).get("chain") or [manifest["backup_id"]])
        good: list[dict] = []
        skipped = []
        for position, backup_id in enumerate(chain_ids):
            found = manifests.get(backup_id)
            problem = None if found else "its manifest is missing (deleted or never completed)"
            if found and not _objects_present(context, found):
                problem = "an object of it is missing or has the wrong size"
            if problem:
                skipped = [{"backup_id": later, "reason": problem if later == backup_id else
                            "depends on %s, which is unusable" % backup_id} for later in chain_ids[position:]]
                break
            good.append(found)
        if good:
            result.append({"requested": manifest["backup_id"], "chain": good, "skipped": skipped})
    return result, manifests


_presence_cache: dict = {}


def _objects_present(context, manifest: dict) -> bool:
    key = (id(context.repository), manifest["backup_id"])
    if key not in _presence_cache:
        ok = True
        for obj in manifest["objects"]:
            info = context.repository.stat(mf.object_key(manifest["cluster"], manifest["backup_id"], obj["name"]))
            if info is None or (obj.get("size_stored") is not None and info.size != obj["size_stored"]):
                ok = False
        _presence_cache[key] = ok
    return _presence_cache[key]


def _base_point(manifest: dict) -> dict:
    wal = manifest["wal"]
    return {"backup_id": manifest["backup_id"], "time": mf.parse_time(wal["stop_time"]),
            "lsn": parse_lsn(wal["stop_lsn"]), "xmin": int(wal.get("xmin_at_stop") or 0),
            "timeline": int(wal["timeline"]), "start_segment": wal["start_segment"],
            "stop_segment": wal["stop_segment"], "segment_size": int(wal["segment_size"])}


def restorable_window(context, candidates: list[dict]) -> dict:
    """From the end of the oldest usable base backup to the end of the contiguous archive."""
    names_by_timeline: dict[str, set] = {}
    usable = []
    for candidate in candidates:
        base = _base_point(candidate["chain"][-1])
        timeline = "%08X" % base["timeline"]
        names = names_by_timeline.setdefault(timeline, archived_names(context.repository, context.cluster, timeline))
        end = contiguous_end(names, base["start_segment"], base["segment_size"])
        if end is None or segment_start_lsn(end, base["segment_size"]) < segment_start_lsn(
                base["stop_segment"], base["segment_size"]):
            candidate["unusable"] = "WAL from %s to %s is not all archived" % (
                base["start_segment"], base["stop_segment"])
            continue
        record = read_record(context.repository, context.cluster, end) or {}
        candidate.update({"base": base, "archive_end_segment": end,
                          "archive_end_lsn": segment_start_lsn(end, base["segment_size"]) + base["segment_size"],
                          "archive_end_time": mf.parse_time(record["closed_at"]) if record.get("closed_at")
                          else base["time"]})
        usable.append(candidate)
    if not usable:
        return {"usable": [], "start": None, "end": None}
    oldest = min(usable, key=lambda item: item["base"]["lsn"])
    newest_end = max(usable, key=lambda item: item["archive_end_lsn"])
    return {"usable": usable, "start": {"time": oldest["base"]["time"], "lsn": oldest["base"]["lsn"],
                                        "backup_id": oldest["base"]["backup_id"]},
            "end": {"time": newest_end["archive_end_time"], "lsn": newest_end["archive_end_lsn"],
                    "segment": newest_end["archive_end_segment"]}}


def describe_window(window: dict) -> str:
    if not window.get("start"):
        return "no restorable window: no complete physical backup with its WAL archived"
    return "restorable window: from %s (LSN %s, end of backup %s) to %s (LSN %s, end of archived segment %s)" % (
        mf.isoformat(window["start"]["time"]), format_lsn(window["start"]["lsn"]), window["start"]["backup_id"],
        mf.isoformat(window["end"]["time"]), format_lsn(window["end"]["lsn"]), window["end"]["segment"])


def _reaches(candidate: dict, target: dict) -> bool:
    """The candidate's consistent point is at or before the target, and its archive reaches the target."""
    base = candidate["base"]
    kind = target["type"]
    if kind == "time":
        return base["time"] <= target["moment"] <= candidate["archive_end_time"]
    if kind == "lsn":
        return base["lsn"] <= target["position"] <= candidate["archive_end_lsn"]
    if kind == "xid":
        return base["xmin"] <= target["xid"]
    return True


def plan_physical_restore(context, target: dict | None = None, backup_id: str | None = None,
                          pgdata: str | None = None, port: int | None = None, force: bool = False,
                          tablespace_mapping: dict | None = None, start: bool = True) -> dict:
    """Choose the chain for the target, or refuse with the window. Touches nothing.

    With ``pgdata`` the destination is checked too (``destination`` in the result): a
    non-empty directory or a running server there is refused unless ``force``; a port
    another server listens on is refused always."""
    target = normalise_target(target)
    _presence_cache.clear()
    candidates, _manifests = _effective_chains(context)
    if backup_id and backup_id != "latest":
        candidates = [item for item in candidates if item["requested"] == backup_id]
        if not candidates:
            raise NotFoundError("backup %s is not a complete physical backup of cluster %s" % (
                backup_id, context.cluster), where=context.repository.describe(),
                fix="list them with `pgsafe list full` / `pgsafe list incremental`")
    window = restorable_window(context, candidates)
    if not window["usable"]:
        raise RestoreError("nothing to restore for cluster %s: %s" % (context.cluster, describe_window(window)),
                           where=context.repository.describe(),
                           fix="take a full backup (`pgsafe backup full`) with WAL archiving running")
    kind = target["type"]
    if kind == "time" and target["moment"] < window["start"]["time"] or \
            kind == "lsn" and target["position"] < window["start"]["lsn"]:
        raise RestoreError("the target %s %s is earlier than the oldest usable backup; %s" % (
            kind, target["value"], describe_window(window)), where="target",
            fix="choose a target inside the window (PostgreSQL would silently restore the backup's own point)")
    if kind == "time" and target["moment"] > mf.utcnow() + datetime.timedelta(seconds=60):
        raise RestoreError("target_time %s is in the future (now is %s), beyond the end of the WAL archive; %s" % (
            target["value"], mf.isoformat(mf.utcnow()), describe_window(window)), where="target_time",
            fix="give a past time inside the window, or omit the target to restore to the end of the archive")
    if kind == "time" and target["moment"] > window["end"]["time"] or \
            kind == "lsn" and target["position"] > window["end"]["lsn"]:
        raise RestoreError("the target %s %s is beyond the end of the WAL archive; %s" % (
            kind, target["value"], describe_window(window)), where="target",
            fix="choose a target inside the window, or check archiving (`pgsafe wal-status`) if WAL is missing")
    reaching = [item for item in window["usable"] if _reaches(item, target)]
    if not reaching:
        raise RestoreError("no backup ends before the target %s %s and reaches it through archived WAL; %s" % (
            kind, target["value"], describe_window(window)), where="target", fix="choose a target inside the window")
    # Ties (a broken chain falls back to the same base as an older backup): prefer the
    # newest requested backup, so the result names what was skipped on the way.
    order = {item["requested"]: index for index, item in enumerate(window["usable"])}
    chosen = max(reaching, key=lambda item: (item["base"]["lsn"], order[item["requested"]]))
    skipped = list(chosen["skipped"])
    newer = [item["requested"] for item in window["usable"] if item["base"]["lsn"] > chosen["base"]["lsn"]]
    destination = None
    if pgdata is not None:
        destination = check_destination(pgdata, port if start else None, force, chosen["chain"][-1],
                                        tablespace_mapping)
    return {"target": target, "chain": [manifest["backup_id"] for manifest in chosen["chain"]],
            "destination": destination,
            "chain_manifests": chosen["chain"], "requested_backup_id": chosen["requested"], "skipped": skipped,
            "base_backup_id": chosen["chain"][-1]["backup_id"], "newer_backups_not_used": newer,
            "window": {"start": {"time": mf.isoformat(window["start"]["time"]),
                                 "lsn": format_lsn(window["start"]["lsn"]),
                                 "backup_id": window["start"]["backup_id"]},
                       "end": {"time": mf.isoformat(window["end"]["time"]), "lsn": format_lsn(window["end"]["lsn"]),
                               "segment": window["end"]["segment"]}},
            "window_text": describe_window(window)}


# --------------------------------------------------------------------------- extraction

def _owner(os_user: str) -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(os_user)
    except KeyError:
        raise ConfigError("the OS user %s does not exist" % os_user, where="os_user",
                          fix="name the user PostgreSQL runs as (postgres)") from None
    return entry.pw_uid, entry.pw_gid


def _safe_path(root: str, rel: str) -> str:
    if rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
        raise VerificationError("unsafe path %r in the backup" % rel, fix="the backup was tampered with")
    return os.path.join(root, rel)


def _running_postmaster(pgdata: str) -> dict | None:
    """{pid, port} of a live server in ``pgdata`` (from postmaster.pid), else None."""
    try:
        with open(os.path.join(pgdata, "postmaster.pid"), "r", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale pid file: the server crashed or was killed
    except PermissionError:
        pass  # alive, owned by another user
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    return {"pid": pid, "port": port}


def _port_in_use(port: int) -> bool:
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                if probe.connect_ex((address, port)) == 0:
                    return True
        except OSError:
            continue
    return False


def tablespace_targets(pgdata: str, manifest: dict, tablespace_mapping: dict | None) -> dict:
    """oid -> the directory a restore of ``manifest`` puts that tablespace in."""
    mapping = dict(tablespace_mapping or {})
    result = {}
    for item in (manifest.get("physical") or {}).get("tablespaces") or []:
        oid, location = str(item["oid"]), item.get("location") or ""
        result[oid] = mapping.get(oid) or mapping.get(location) or "%s_tblspc/%s" % (pgdata.rstrip("/"), oid)
    return result


def check_destination(pgdata: str, port: int | None, force: bool, manifest: dict,
                      tablespace_mapping: dict | None = None) -> dict:
    """What is at the restore destination, and whether the restore may go there.

    Refused without ``force``: a non-empty directory, a server running in it. Refused even
    with ``force``: a non-empty directory that is not a PostgreSQL data directory (a typo
    must not delete /var/lib), a port another server listens on, a non-empty tablespace
    directory outside pgsafe's own ``<pgdata>_tblspc``."""
    if not pgdata or not os.path.isabs(pgdata):
        raise ConfigError("the restore directory must be an absolute path, not %r" % pgdata, where="pgdata",
                          fix="give a new directory such as /var/lib/postgresql/15/restore")
    if os.path.exists(pgdata) and not os.path.isdir(pgdata):
        raise RestoreError("%s exists and is not a directory" % pgdata, where="pgdata",
                           fix="give a new directory, or remove the file")
    entries = sorted(os.listdir(pgdata)) if os.path.isdir(pgdata) else []
    running = _running_postmaster(pgdata) if entries else None
    is_data_directory = "PG_VERSION" in entries
    state = {"pgdata": pgdata, "exists": os.path.isdir(pgdata), "empty": not entries,
             "is_data_directory": is_data_directory, "running_server": running, "force": bool(force),
             "replaces_existing": bool(entries), "would_stop_server": bool(running), "port": port,
             "tablespaces": tablespace_targets(pgdata, manifest, tablespace_mapping)}
    if running and not force:
        raise RestoreError("a PostgreSQL server (pid %d%s) is running in %s" % (
            running["pid"], ", port %s" % running["port"] if running["port"] else "", pgdata), where="pgdata",
            fix="stop it and restore into another directory, or give force=true to stop it (fast shutdown) and "
            "replace its data directory")
    if entries and not force:
        raise RestoreError("the target directory %s exists and is not empty (%d entries%s)" % (
            pgdata, len(entries), ", a PostgreSQL data directory" if is_data_directory else ""), where="pgdata",
            fix="restore into a new directory, or give force=true to replace it (its contents are deleted only "
            "after the backup, the target and the WAL were checked)")
    if entries and not is_data_directory:
        raise RestoreError("the target directory %s is not empty and is not a PostgreSQL data directory (no "
                           "PG_VERSION): pgsafe does not delete it, even with force" % pgdata, where="pgdata",
                           fix="check the path; restore into a new or empty directory")
    if port is not None:
        if not 0 < int(port) < 65536:
            raise ConfigError("port %s is out of range" % port, where="port", fix="use a free port, 1-65535")
        freed_by_stop = bool(running) and running.get("port") == int(port)
        if not freed_by_stop and _port_in_use(int(port)):
            raise RestoreError("port %d is in use on this host" % int(port), where="port",
                               fix="give the restored server a free port of its own (it never takes the production "
                               "server's port)")
    own_tablespaces = pgdata.rstrip("/") + "_tblspc"
    for oid, location in state["tablespaces"].items():
        if os.path.isdir(location) and os.listdir(location):
            ours = os.path.realpath(location).startswith(os.path.realpath(own_tablespaces) + os.sep)
            if not (force and ours):
                raise RestoreError("the directory %s for tablespace %s is not empty" % (location, oid),
                                   where="tablespace_mapping",
                                   fix="map the tablespace to a new directory with tablespace_mapping (or, for "
                                   "pgsafe's own %s, give force=true)" % own_tablespaces)
    return state


def stop_server(pgdata: str, os_user: str, bin_dir: str, mode: str = "fast") -> bool:
    """Stop the server running in ``pgdata`` (pg_ctl as ``os_user``); False when none ran.
    ``immediate`` (a scratch copy about to be deleted) falls back to SIGKILL of the postmaster."""
    running = _running_postmaster(pgdata)
    if not running:
        return False
    stopped = subprocess.run(_as_user([os.path.join(bin_dir, "pg_ctl"), "-D", pgdata, "-m", mode, "-w",
                                       "-t", "120", "stop"], os_user), capture_output=True, text=True, check=False)
    if mode == "immediate" and _running_postmaster(pgdata):
        try:
            os.kill(running["pid"], 9)
        except OSError:
            pass
        deadline = time.monotonic() + 30
        while _running_postmaster(pgdata) and time.monotonic() < deadline:
            time.sleep(0.1)
    if _running_postmaster(pgdata):
        raise RestoreError("could not stop the server running in %s: %s" % (
            pgdata, (stopped.stderr or stopped.stdout).strip()[-300:]), where="pgdata",
            fix="stop it yourself (pg_ctl -D %s stop), then run the restore again" % pgdata)
    return True


def _clear_destination(pgdata: str, os_user: str, bin_dir: str) -> None:
    """force: stop the server running in ``pgdata`` and delete what the restore replaces."""
    running = _running_postmaster(pgdata)
    if running:
        LOG.warning("force: stopping the PostgreSQL server (pid %d) running in %s", running["pid"], pgdata)
        stop_server(pgdata, os_user, bin_dir, mode="fast")
    # pgsafe's own tablespace directory of this pgdata goes with it; tablespaces mapped
    # elsewhere were checked empty (check_destination) and are never deleted.
    shutil.rmtree(pgdata.rstrip("/") + "_tblspc", ignore_errors=True)
    if os.path.isdir(pgdata):
        LOG.warning("force: replacing the contents of %s", pgdata)
        _wipe(pgdata, [])


def _prepare_directory(pgdata: str, owner) -> None:
    if os.path.exists(pgdata) and os.listdir(pgdata):
        raise RestoreError("the target directory %s exists and is not empty" % pgdata, where="pgdata",
                           fix="restore into a new directory; pgsafe never overwrites a data directory")
    os.makedirs(pgdata, mode=0o700, exist_ok=True)
    os.chmod(pgdata, 0o700)
    if owner:
        os.chown(pgdata, *owner)


def _wipe(pgdata: str, tablespace_dirs: list[str]) -> None:
    for entry in os.listdir(pgdata):
        path = os.path.join(pgdata, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    for folder in tablespace_dirs:
        shutil.rmtree(folder, ignore_errors=True)


def _extract_chain(context, chain: list[dict], pgdata: str, tablespace_mapping: dict, owner,
                   writeback: "Writeback | None" = None) -> dict:
    """Place every file of the newest list from the backup that holds it; verify each SHA-256."""
    newest = chain[-1]
    try:
        listing = read_file_list(context, newest)
    except (VerificationError, EncryptionError, NotFoundError, ValueError) as exc:
        raise ChainElementError(newest["backup_id"], "its file list is unreadable: %s" % (
            exc.message if isinstance(exc, PgsafeError) else exc)) from None
    files = listing["files"]
    for rel in listing["directories"]:
        path = _safe_path(pgdata, rel)
        parts = rel.split("/")
        if len(parts) == 2 and parts[0] == "pg_tblspc":
            location = tablespace_mapping.get(parts[1]) or tablespace_mapping.get(
                listing["tablespaces"].get(parts[1], "")) or "%s_tblspc/%s" % (pgdata.rstrip("/"), parts[1])
            os.makedirs(location, mode=0o700, exist_ok=True)
            if owner:
                os.chown(location, *owner)
            os.symlink(location, path)
            continue
        os.makedirs(path, mode=0o700, exist_ok=True)
    placed = 0
    holders = {}
    for rel, entry in files.items():
        holders.setdefault(entry["in"], set()).add(rel)
    by_id = {manifest["backup_id"]: manifest for manifest in chain}
    unknown = sorted(set(holders) - set(by_id))
    if unknown:
        raise VerificationError("the file list names backups outside the chain: %s" % ", ".join(unknown),
                                where=newest["backup_id"], fix="the chain is damaged; restore an older backup")
    labels: dict = {}
    for manifest in chain:
        wanted = holders.get(manifest["backup_id"], set())
        is_newest = manifest is newest
        if not wanted and not is_newest:
            continue
        try:
            placed += _extract_one(context, manifest, pgdata, files, wanted, is_newest, labels, writeback)
        except (VerificationError, EncryptionError, NotFoundError, tarfile.TarError, OSError) as exc:
            message = exc.message if isinstance(exc, PgsafeError) else "%s: %s" % (type(exc).__name__, exc)
            raise ChainElementError(manifest["backup_id"], message) from None
    label = labels.get("backup_label")
    if label is None:
        raise ChainElementError(newest["backup_id"], "backup %s has no backup_label" % newest["backup_id"])
    _write_text(os.path.join(pgdata, "backup_label"), label)
    # Our symlinks already point where the tablespaces now live, so no tablespace_map:
    # PostgreSQL would otherwise recreate the links to the ORIGINAL locations.
    return {"files": placed, "files_listed": len(files)}


class ChainElementError(RestoreError):
    """One backup of the chain could not be used; ``backup_id`` says which."""

    def __init__(self, backup_id: str, reason: str):
        self.backup_id = backup_id
        self.reason = reason
        super().__init__("backup %s is unusable: %s" % (backup_id, reason), where=backup_id,
                         fix="an older backup of the chain plus WAL is used instead")


# Plaintext decrypted ahead of the tar extraction, in chunks of CHUNK_SIZE (1 MiB): at most
# this many wait in each queue, so memory stays bounded whatever the backup's size.
PREFETCH_DEPTH = 8
_END = object()


class _ProducerFailure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class PrefetchingReader:
    """The plaintext of an ``ObjectReader``, read ahead by a producer thread.

    The producer reads, decrypts and decompresses (file reads, AES-GCM, zstd and SHA-256
    release the GIL) while the caller parses the tar, hashes and writes the files, so on
    two cores the two halves overlap instead of taking turns. At the end of the plaintext
    the producer also runs ``reader.finish()`` (stored size and SHA-256 against the manifest).

    * Memory: at most ``depth`` chunks queued, one being produced, one being consumed.
    * Errors: a failure of the producer is raised again, the same exception object (type
      and message unchanged), by the caller's next ``read``/``finish`` and every one after.
    * Stopping: ``close()`` (always call it) tells the producer to stop, empties the queue
      so it cannot stay blocked on a full queue, joins it, then closes the reader. A caller
      that fails half way therefore leaves no thread behind.
    """

    def __init__(self, reader, depth: int = PREFETCH_DEPTH, chunk_size: int = CHUNK_SIZE, name: str = ""):
        self._reader = reader
        self._chunk_size = chunk_size
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._chunk = b""
        self._offset = 0
        self._ended = False
        self._failure: BaseException | None = None
        self._where = name
        self._thread = threading.Thread(target=self._produce, name="pgsafe-prefetch", daemon=True)
        self._thread.start()

    # --- producer thread
    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self._reader.read(self._chunk_size)
                if not chunk:
                    self._reader.finish()
                    self._put(_END)
                    return
                self._put(chunk)
        except BaseException as exc:  # pylint: disable=broad-except  # handed to the consumer, unchanged
            self._put(_ProducerFailure(exc))

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # --- consumer side
    def _take(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._failure = RestoreError("the thread reading %s stopped without a result" % self._where,
                                                 where=self._where, fix="run the restore again; report a bug if "
                                                 "it happens again")
                    raise self._failure from None
        if item is _END:
            self._ended = True
            self._chunk, self._offset = b"", 0
        elif isinstance(item, _ProducerFailure):
            self._failure = item.error
            raise self._failure
        else:
            self._chunk, self._offset = item, 0

    def read(self, size: int = -1) -> bytes:
        if self._failure is not None:
            raise self._failure
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(self._chunk_size), b""))
        while self._offset >= len(self._chunk):
            if self._ended:
                return b""
            self._take()
        start = self._offset
        if start == 0 and size >= len(self._chunk):
            self._offset = len(self._chunk)
            return self._chunk  # the whole chunk, not copied
        self._offset = min(start + size, len(self._chunk))
        return self._chunk[start:self._offset]

    def readable(self) -> bool:
        return True

    def finish(self) -> None:
        """Skip the rest of the plaintext (the tar's end padding); raises what the producer's
        reading or its ``finish()`` (size and SHA-256 of the stored object) raised."""
        while self.read(self._chunk_size):
            pass

    def close(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + 120
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.1)
        if self._thread.is_alive():
            LOG.warning("the thread reading %s did not stop within 120 s; closing its source", self._where)
        self._reader.close()


class TarStream:
    """The members of a tar stream as physical backups write it (``DataDirectoryTar``: ustar
    headers, a pax extended header where a name or size needs one), read in one pass.

    ``members()`` yields (name, type, size); the data of the current member is read with
    ``data()`` (or skipped when the caller moves on). tarfile's stream mode reads its input
    10 KiB at a time and copies each piece twice: for a 1 GB backup that was some 100 000
    calls and a third of the restore's time. Here the data comes in the reader's own chunks.
    """

    def __init__(self, stream, where: str):
        self.stream = stream
        self.where = where
        self._remaining = 0  # data bytes of the current member not read yet
        self._padding = 0

    def _truncated(self) -> VerificationError:
        return VerificationError("the tar stream of %s ends in the middle of a member" % self.where,
                                 where=self.where, fix="the backup is damaged; an older one of the chain is used "
                                 "instead")

    def _read_exact(self, size: int) -> bytes:
        parts = []
        missing = size
        while missing > 0:
            part = self.stream.read(missing)
            if not part:
                raise self._truncated()
            parts.append(part)
            missing -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _skip(self, size: int) -> None:
        while size > 0:
            part = self.stream.read(min(size, CHUNK_SIZE))
            if not part:
                raise self._truncated()
            size -= len(part)

    def data(self):
        """The current member's bytes, chunk by chunk (each at most CHUNK_SIZE)."""
        while self._remaining > 0:
            part = self.stream.read(min(self._remaining, CHUNK_SIZE))
            if not part:
                raise self._truncated()
            self._remaining -= len(part)
            yield part

    def members(self):
        extended: dict = {}
        while True:
            self._skip(self._remaining + self._padding)
            self._remaining = self._padding = 0
            header = self._read_exact(tarfile.BLOCKSIZE)
            if not header.strip(b"\0"):
                return  # the end-of-archive block
            try:
                info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise VerificationError("invalid tar header in %s: %s" % (self.where, exc), where=self.where,
                                        fix="the backup is damaged; an older one of the chain is used instead") \
                    from None
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
                records = _pax_records(self._read_exact(info.size) if info.size else b"", self.where)
                self._padding = -info.size % tarfile.BLOCKSIZE
                if info.type != tarfile.XGLTYPE:
                    extended = records  # applies to the next member only
                continue
            size = int(extended.get("size", info.size))
            name = extended.get("path", info.name)
            extended = {}
            self._remaining, self._padding = size, -size % tarfile.BLOCKSIZE
            yield name, info.type, size


def _pax_records(data: bytes, where: str) -> dict:
    """``"%d %s=%s\n"`` records of a pax extended header."""
    records = {}
    position = 0
    try:
        while position < len(data):
            space = data.index(b" ", position)
            length = int(data[position:space])
            if length <= space - position + 1 or position + length > len(data):
                raise ValueError("bad record length")
            key, _equals, value = data[space + 1:position + length - 1].partition(b"=")
            records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
            position += length
        if "size" in records:
            records["size"] = int(records["size"])
    except ValueError as exc:
        raise VerificationError("invalid pax header in %s: %s" % (where, exc), where=where,
                                fix="the backup is damaged; an older one of the chain is used instead") from None
    return records


REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


class _Decompressed:
    """zstd over the decrypted stream, ``finish``/``close`` passed on to that stream."""

    def __init__(self, decrypted: PrefetchingReader, algorithm: str):
        from ansible_collections.pgsafe.backup.plugins.module_utils.compression import Compression

        self.decrypted = decrypted
        self.plain = Compression.decompressing_reader(decrypted, algorithm)

    def read(self, size: int) -> bytes:
        return self.plain.read(size)

    def finish(self) -> None:
        self.decrypted.finish()

    def close(self) -> None:
        self.decrypted.close()


def open_pgdata(context, manifest: dict) -> PrefetchingReader:
    """The plaintext of a backup's tar, produced by two threads: one reads the stored object,
    hashes it and decrypts it, the next decompresses; the caller's thread parses the tar and
    writes the files. Decompression is the largest single cost (about 2 CPU-s per GB here),
    so on two cores it gets a thread of its own rather than sharing one with decryption."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import find_object

    obj = find_object(manifest, "pgdata")
    where = "backup %s" % manifest["backup_id"]
    algorithm = manifest.get("compression", {}).get("algorithm", "none")
    stored = ObjectReader(context.repository, mf.object_key(manifest["cluster"], manifest["backup_id"], obj["name"]),
                          "none", context.envelope,
                          mf.encryption_context(manifest["cluster"], manifest["backup_id"], obj["name"]),
                          expected_sha256=obj.get("sha256"), expected_size=obj.get("size_stored"))
    decrypted = PrefetchingReader(stored, name=where)
    if algorithm == "none":
        return decrypted
    try:
        decompressed = _Decompressed(decrypted, algorithm)
    except BaseException:
        decrypted.close()
        raise
    return PrefetchingReader(decompressed, name=where)


def _extract_one(context, manifest: dict, pgdata: str, files: dict, wanted: set, is_newest: bool,
                 labels: dict, writeback: "Writeback | None" = None) -> int:
    placed = 0
    where = "backup %s" % manifest["backup_id"]
    reader = open_pgdata(context, manifest)
    try:
        archive = TarStream(reader, where)
        for name, kind, _size in archive.members():
            if kind not in REGULAR_TYPES:
                continue
            if is_newest and name in ("backup_label", "tablespace_map"):
                labels[name] = b"".join(archive.data()).decode("utf-8")
                continue
            if name not in wanted:
                continue
            path = _safe_path(pgdata, name)
            _write_member(archive, name, path, files[name])
            if writeback is not None:
                writeback.add(path)
            placed += 1
            wanted.discard(name)
        reader.finish()
    finally:
        reader.close()
    if wanted:
        raise VerificationError("backup %s lacks %d file(s) its list promises (e.g. %s)" % (
            manifest["backup_id"], len(wanted), sorted(wanted)[0]), where=manifest["backup_id"],
            fix="the backup is damaged; an older one of the chain is used instead")
    return placed


class Writeback:
    """Starts the kernel writing each restored file to disk as soon as it is complete
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait, as PostgreSQL does before
    its fsyncs), in a thread of its own so the extraction never waits for the disk.

    It only starts write-back: durability comes from ``sync_to_disk`` at the end, which then
    finds little left to write (measured: the restore of 1 GB finished in 3.7 s instead of 4.4 s).
    Without sync_file_range (not Linux) it does nothing. ``close()`` always joins the thread."""

    SYNC_FILE_RANGE_WRITE = 2

    def __init__(self):
        self._paths: queue.Queue = queue.Queue()  # file names only: small, whatever the backup's size
        self._sync_file_range = _libc_function("sync_file_range")
        if self._sync_file_range is not None:
            self._sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        self._thread = threading.Thread(target=self._run, name="pgsafe-writeback", daemon=True)
        self._thread.start()

    def add(self, path: str) -> None:
        if self._sync_file_range is not None:
            self._paths.put(path)

    def _run(self) -> None:
        while True:
            path = self._paths.get()
            if path is None:
                return
            try:
                descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # wiped by a chain fallback meanwhile: nothing to write back
            try:
                # Advisory: a write-back error surfaces at the closing syncfs, which fails the restore.
                self._sync_file_range(descriptor, 0, 0, self.SYNC_FILE_RANGE_WRITE)
            finally:
                os.close(descriptor)

    def close(self) -> None:
        self._paths.put(None)
        self._thread.join()


def _write_member(archive: TarStream, name: str, path: str, expected: dict) -> None:
    digest = hashlib.sha256()
    # No fsync per file: Writeback starts the writing, sync_to_disk waits for it once at the end.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for chunk in archive.data():
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    if digest.hexdigest() != expected.get("sha256"):
        raise VerificationError("restored file %s does not match its SHA-256 in the file list" % name,
                                where=expected.get("in"), fix="the backup is damaged; an older one of the chain is "
                                "used instead")


def sync_to_disk(paths: list[str]) -> None:
    """Make the restored files durable: one syncfs(2) per file system (the data directory and
    each tablespace). Files are written without a per-file fsync; this pass is what makes a
    prepared copy (not started) survive a crash of the host, as pgBackRest syncs what it
    restores before it reports success. A write-back error fails the restore."""
    syncfs = _syncfs()
    devices = set()
    for path in paths:
        device = os.stat(path).st_dev
        if device in devices:
            continue
        devices.add(device)
        if syncfs is None:
            os.sync()  # no syncfs(2) here (not Linux): every file system, which includes this one
            continue
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if syncfs(descriptor) != 0:
                error = ctypes.get_errno()
                raise RestoreError("writing the restored files to disk failed: %s" % os.strerror(error), where=path,
                                   fix="check the disk (dmesg, free space); the restored copy is not trustworthy: "
                                   "restore again into a healthy file system")
        finally:
            os.close(descriptor)


def _libc_function(name: str):
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


def _syncfs():
    return _libc_function("syncfs")


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _chown_tree(root: str, owner) -> None:
    if not owner:
        return
    for folder, dirs, files in os.walk(root):
        os.chown(folder, *owner)
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), *owner)


# --------------------------------------------------------------------------- recovery settings

def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def recovery_settings(target: dict, restore_command: str, port: int, action: str, extra: dict) -> dict:
    settings = {"archive_mode": "off", "port": str(port), "restore_command": restore_command,
                "recovery_target_timeline": "latest"}
    if target["type"] == "time":
        settings["recovery_target_time"] = target["value"].replace("T", " ").replace("Z", "+00")
    elif target["type"] == "xid":
        settings["recovery_target_xid"] = str(target["xid"])
    elif target["type"] == "lsn":
        settings["recovery_target_lsn"] = target["value"]
    elif target["type"] == "name":
        settings["recovery_target_name"] = target["value"]
    elif target["type"] == "immediate":
        settings["recovery_target"] = "immediate"
    if target["type"] != "latest":
        settings["recovery_target_action"] = action
    settings.update({key: str(value) for key, value in (extra or {}).items()})
    return settings


def _append_auto_conf(pgdata: str, settings: dict, backup_id: str) -> None:
    lines = ["", "# Added by pgsafe restore of %s at %s: this copy restores through `pgsafe wal-fetch` and never "
             "archives (archive_mode off) so it cannot write into the production archive." % (
                 backup_id, mf.isoformat(mf.utcnow()))]
    lines += ["%s = %s" % (key, _quote(value)) for key, value in settings.items()]
    with open(os.path.join(pgdata, "postgresql.auto.conf"), "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- server

def _as_user(argv: list[str], os_user: str) -> list[str]:
    return ["runuser", "-u", os_user, "--"] + argv if os.geteuid() == 0 else argv


def _server_log_facts(log_path: str) -> dict:
    try:
        with open(log_path, "r", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return {}
    facts = {}
    for key, pattern in LOG_PATTERNS.items():
        found = pattern.findall(text)
        if found:
            facts[key] = found[-1].strip() if isinstance(found[-1], str) else found[-1]
    return facts


def _wait_recovery(target_db: PostgresTarget, action: str, timeout: float, log_path: str, pg_ctl: list) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if action == "shutdown":
            status = subprocess.run(pg_ctl + ["status"], capture_output=True, check=False)
            if status.returncode == 3:
                return {"state": "shut down at the target"}
        else:
            try:
                with target_db.connect() as conn:
                    in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                    if not in_recovery:
                        lsn, timeline = conn.execute(
                            "SELECT pg_current_wal_lsn()::text, timeline_id FROM pg_control_checkpoint()").fetchone()
                        return {"state": "promoted", "current_lsn": lsn, "timeline": timeline}
                    if action == "pause" and conn.execute(
                            "SELECT pg_get_wal_replay_pause_state()").fetchone()[0] == "paused":
                        lsn = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0]
                        return {"state": "paused at the target (read-only; run SELECT pg_wal_replay_resume() to "
                                "promote)", "replay_lsn": lsn}
            except PostgresError:
                if subprocess.run(pg_ctl + ["status"], capture_output=True, check=False).returncode == 3:
                    facts = _server_log_facts(log_path)
                    raise RestoreError("the restored server stopped during recovery: %s" % facts.get(
                        "fatal", "see its log"), where=log_path,
                        fix="read the log; a target beyond the archived WAL ends like this") from None
        time.sleep(0.2)
    raise RestoreError("recovery did not finish within %.0f s" % timeout, where=log_path,
                       fix="the server keeps replaying; watch its log, or raise recovery_timeout_seconds")


def run_physical_restore(context, pgdata: str, port: int, target: dict | None = None, backup_id: str | None = None,
                         restore_command: str | None = None, action: str = "promote", start: bool = True,
                         os_user: str = "postgres", tablespace_mapping: dict | None = None,
                         server_settings: dict | None = None, recovery_timeout_seconds: float = 3600.0,
                         connect_host: str | None = None, force: bool = False, record_metrics: bool = True,
                         sync: bool = True) -> dict:
    """Restore into ``pgdata`` (new), start on ``port``, recover to ``target``; returns what was reached.

    ``force`` replaces a non-empty data directory (stopping a server running in it) once the
    backup, the target and the WAL were checked; without it such a directory is refused.
    ``record_metrics`` False leaves the restore metrics to the caller (verify's restore test
    publishes its own, as a test of the backup's type). ``sync`` False skips making the files
    durable (a scratch copy that is thrown away: verify's restore test)."""
    started = time.monotonic()
    if action not in ACTIONS:
        raise ConfigError("unknown recovery_target_action %r" % action, where="recovery_target_action",
                          fix="use promote (default), pause or shutdown")
    if not pgdata or not os.path.isabs(pgdata):
        raise ConfigError("the restore directory must be an absolute path, not %r" % pgdata, where="pgdata",
                          fix="give a new directory such as /var/lib/postgresql/15/restore")
    wal = wal_settings(context.settings)
    command = restore_command or (("%s wal-fetch %%f %%p" % wal["command"]) if wal["command"] else None)
    if not command:
        raise ConfigError("no restore_command given and wal.command is not set", where="restore_command",
                          fix="give restore_command, e.g. '/usr/local/bin/pgsafe -c /etc/pgsafe/pgsafe.yml "
                          "wal-fetch %f %p' (the pgsafe command the PostgreSQL user runs), or set wal.command")
    if "%f" not in command or "%p" not in command:
        raise ConfigError("restore_command must contain %f and %p", where="restore_command",
                          fix="e.g. 'pgsafe wal-fetch %f %p'")
    owner = _owner(os_user)
    plan = plan_physical_restore(context, target, backup_id, pgdata, port, force, tablespace_mapping, start)
    result = {"changed": True, "cluster": context.cluster, "pgdata": pgdata, "port": port,
              "target": {"type": plan["target"]["type"], "value": plan["target"]["value"]},
              "window": plan["window"], "skipped": list(plan["skipped"]), "repository": context.repository.describe(),
              "replaced_existing": plan["destination"]["replaces_existing"],
              "stopped_server": plan["destination"]["running_server"]}
    with RunLock(context.state_dir, context.cluster, "restore-physical-%d" % port):
        if plan["destination"]["replaces_existing"]:
            _clear_destination(pgdata, os_user, _bin_dir(context, plan["chain_manifests"][-1]))
        _prepare_directory(pgdata, owner)
        chain = list(plan["chain_manifests"])
        tablespace_dirs = []
        mapping = dict(tablespace_mapping or {})
        while True:
            writeback = Writeback() if sync else None
            try:
                extracted = _extract_chain(context, chain, pgdata, mapping, owner, writeback)
                break
            except ChainElementError as exc:
                ids = [manifest["backup_id"] for manifest in chain]
                position = ids.index(exc.backup_id) if exc.backup_id in ids else len(ids) - 1
                if position == 0:
                    raise RestoreError("the full backup %s is unusable: %s" % (ids[0], exc.reason), where=pgdata,
                                       fix="restore another backup (backup_id) or from a repository copy; the "
                                       "target directory was left for inspection") from None
                LOG.warning("backup %s of the chain is unusable (%s); restoring from %s plus WAL", exc.backup_id,
                            exc.reason, ids[position - 1])
                result["skipped"][0:0] = [{"backup_id": exc.backup_id, "reason": exc.reason}] + [
                    {"backup_id": later, "reason": "depends on %s, which is unusable" % exc.backup_id}
                    for later in ids[position + 1:]]
                chain = chain[:position]
                tablespace_dirs = [os.path.realpath(os.path.join(pgdata, "pg_tblspc", entry))
                                   for entry in os.listdir(os.path.join(pgdata, "pg_tblspc"))] \
                    if os.path.isdir(os.path.join(pgdata, "pg_tblspc")) else []
                _wipe(pgdata, tablespace_dirs)
            finally:
                if writeback is not None:
                    writeback.close()
        _check_wal_for(context, chain[-1])
        settings = recovery_settings(plan["target"], command, port, action, server_settings or {})
        _append_auto_conf(pgdata, settings, chain[-1]["backup_id"])
        _write_text(os.path.join(pgdata, "recovery.signal"), "")
        _chown_tree(pgdata, owner)
        tablespace_dirs = [os.path.realpath(os.path.join(pgdata, "pg_tblspc", oid))
                           for oid in os.listdir(os.path.join(pgdata, "pg_tblspc"))]
        for folder in tablespace_dirs:
            _chown_tree(folder, owner)
        if sync:
            synced_started = time.monotonic()
            sync_to_disk([pgdata] + tablespace_dirs)
            result["sync_seconds"] = round(time.monotonic() - synced_started, 3)
        result.update({"backup_id": chain[-1]["backup_id"], "chain": [m["backup_id"] for m in chain],
                       "base_wal": chain[-1]["wal"], "files_restored": extracted["files"],
                       "newer_backups_not_used": plan["newer_backups_not_used"],
                       "recovery_settings": dict(settings)})
        if result["skipped"]:
            result["chain_recovery"] = "restored from %s plus WAL; skipped: %s" % (
                chain[-1]["backup_id"], "; ".join("%s (%s)" % (item["backup_id"], item["reason"])
                                                  for item in result["skipped"]))
        if not start:
            result.update({"state": "prepared (not started)", "duration_seconds": round(
                time.monotonic() - started, 3)})
            return result
        log_path = pgdata.rstrip("/") + ".restore.log"
        with open(log_path, "a", encoding="utf-8"):
            pass
        if owner:
            os.chown(log_path, *owner)
        bin_dir = _bin_dir(context, chain[-1])
        pg_ctl = _as_user([os.path.join(bin_dir, "pg_ctl"), "-D", pgdata], os_user)
        started_server = subprocess.run(pg_ctl + ["-l", log_path, "-w", "-t", str(int(recovery_timeout_seconds)),
                                                  "start"], capture_output=True, text=True, check=False)
        if started_server.returncode != 0 and action != "shutdown":
            facts = _server_log_facts(log_path)
            reason = facts.get("fatal") or started_server.stderr.strip()[-500:]
            raise RestoreError("the restored server did not start: %s" % reason,
                               where=log_path, fix="read the server log; the data directory %s is left for "
                               "inspection (delete it before retrying)" % pgdata)
        target_db = PostgresTarget(host=connect_host or (context.postgres.host if context.postgres else None),
                                   port=port, user=context.postgres.user if context.postgres else "postgres",
                                   password=context.postgres.password if context.postgres else None,
                                   dbname="postgres", connect_timeout=5)
        state = _wait_recovery(target_db, action, recovery_timeout_seconds, log_path, pg_ctl)
        facts = _server_log_facts(log_path)
        shutil.rmtree(os.path.join(pgdata, "pg_wal", ".pgsafe-prefetch"), ignore_errors=True)
        result.update({"state": state["state"], "reached": {
            "stop": facts.get("stop"), "last_transaction_time": facts.get("last_transaction"),
            "redo_done_at": facts.get("redo_done"), "consistent_at": facts.get("consistent"),
            "new_timeline": int(facts["timeline"]) if facts.get("timeline") else None,
            "current_lsn": state.get("current_lsn") or state.get("replay_lsn")},
            "server_log": log_path, "duration_seconds": round(time.monotonic() - started, 3)})
    if context.metrics is not None and record_metrics:
        try:
            context.metrics.record_restore(context.cluster, "point_in_time", True, result["duration_seconds"])
        except Exception as exc:  # pylint: disable=broad-except
            LOG.warning("cannot publish metrics: %s", exc)
    return result


def _bin_dir(context, manifest: dict) -> str:
    """The server programs: postgres.bin_dir, else the packaged ones of the backup's major version."""
    if context.postgres is not None and context.postgres.bin_dir:
        return context.postgres.bin_dir
    return "/usr/lib/postgresql/%d/bin" % (int(manifest["postgres"]["version_num"]) // 10000)


def _check_wal_for(context, manifest: dict) -> None:
    """The chosen base's WAL from start to stop must be archived (the plan checked the newest)."""
    wal = manifest["wal"]
    names = archived_names(context.repository, context.cluster, "%08X" % int(wal["timeline"]))
    end = contiguous_end(names, wal["start_segment"], int(wal["segment_size"]), stop_at=wal["stop_segment"])
    if end != wal["stop_segment"]:
        missing = wal["start_segment"] if end is None else next_segment(end, int(wal["segment_size"]))
        raise RestoreError("backup %s cannot be made consistent: WAL segment %s is not archived" % (
            manifest["backup_id"], missing), where=context.repository.describe(),
            fix="restore a newer backup, or re-archive the segment from the server's pg_wal if it is still there")


def format_restore(result: dict) -> str:
    """One paragraph for the CLI."""
    lines = ["restored %s (chain %s) into %s on port %s: %s" % (
        result["backup_id"], " -> ".join(result["chain"]), result["pgdata"], result["port"], result.get("state"))]
    reached = result.get("reached") or {}
    if reached.get("stop"):
        lines.append("point reached: %s" % reached["stop"])
    if reached.get("last_transaction_time"):
        lines.append("last transaction replayed: %s" % reached["last_transaction_time"])
    if result.get("chain_recovery"):
        lines.append("chain recovery: %s" % result["chain_recovery"])
    lines.append("archive_mode is off on the restored copy; log: %s" % result.get("server_log"))
    return "\n".join(lines)


def restore_command_for(settings: dict, config_path: str | None) -> str | None:
    """``wal.command`` when set; else ``pgsafe -c CONFIG`` when a pgsafe program is on PATH."""
    wal = settings.get("wal") or {}
    if wal.get("command"):
        return "%s wal-fetch %%f %%p" % wal["command"]
    program = shutil.which("pgsafe")
    if program and config_path:
        return "%s -c %s wal-fetch %%f %%p" % (shlex.quote(program), shlex.quote(os.path.abspath(config_path)))
    return None
