# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File-system backups (type ``files``): configured paths through the same pipeline as the database.

The runbooks back up application configuration (``/etc/spendsync``, keys, service files)
beside the database, because a restored database without its application's settings is
not a recovered service. A ``files`` backup is:

* ONE tar stream built on the fly from the configured paths (directories, regular files
  and symbolic links, with mode, owner, group and mtime), pulled through zstd and the
  AWS Encryption SDK into the repository: the tar helpers and the streaming pipeline of
  physical backups, nothing staged on disk;
* a file manifest (``filelist.json``, encrypted like the data): every entry's path, type,
  size, mode, owner and group (names and ids), mtime, SHA-256 and link target. It is an
  object of the backup, not part of ``manifest.json``, because ``manifest.json`` is
  stored in clear text and the SHA-256 of a short secret (a password file) would let
  anyone with read access to the bucket test guesses against it;
* ``manifest.json``, written last as for every backup type, with a summary: the
  configured paths, the number of entries, the bytes.

Restore is selective: any subset of the paths, to their original location or under a
target directory, each file written to a temporary name beside its destination, checked
against its SHA-256, given its mode, owner and mtime, and renamed into place. Anything
that exists and differs is refused unless ``force``: a restore never overwrites
silently. A file that already has the backup's content and metadata is left alone, so a
second restore changes nothing.
"""

from __future__ import annotations

import errno
import fnmatch
import grp
import hashlib
import io
import json
import logging
import os
import pwd
import shutil
import stat
import tarfile
import tempfile
import time

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups, select_backup
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError, EncryptionError, PgsafeError, RestoreError, VerificationError)
from ansible_collections.pgsafe.backup.plugins.module_utils.locking import RunLock
from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import (
    GeneratorReader, discard_partial, read_file_list, tar_header, tar_padding, write_tar_manifest)
from ansible_collections.pgsafe.backup.plugins.module_utils.pipeline import CHUNK_SIZE, store_stream

LOG = logging.getLogger("pgsafe")
BACKUP_TYPE = "files"
LISTING_FORMAT = "pgsafe-files-listing"
# Compared to decide whether a restore would change a destination, and whether a backup
# with skip_unchanged finds anything new. mtime is left out: touching a file changes nothing.
COMPARED_FIELDS = ("type", "size", "mode", "uid", "gid", "sha256", "target")


def data_object_name(compression, envelope) -> str:
    return "files.tar%s%s" % (compression.extension, ".enc" if envelope.enabled else "")


def listing_object_name(compression, envelope) -> str:
    return "filelist.json%s%s" % (compression.extension, ".enc" if envelope.enabled else "")


def member_name(path: str) -> str:
    """The tar member of an absolute path: the path without its leading slash, as GNU tar does."""
    return path.lstrip("/")


# --------------------------------------------------------------------------- options

def check_paths(paths, option: str = "paths") -> list[str]:
    """Absolute, normalised, without duplicates; a relative path is a mistake, not the cwd."""
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ConfigError("no paths to back up", where=option,
                          fix="list the files and directories to back up, e.g. [/etc/spendsync]")
    result = []
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError("path %r is not absolute" % (path,), where=option,
                              fix="give absolute paths such as /etc/spendsync")
        normal = os.path.normpath(path)
        normal = "/" + normal.lstrip("/")  # normpath keeps a leading '//'
        if normal == "/":
            raise ConfigError("refusing to back up the whole file system '/'", where=option,
                              fix="list the application's own directories (configuration, keys, unit files)")
        if normal not in result:
            result.append(normal)
    return result


def _excluded(path: str, patterns) -> bool:
    name = os.path.basename(path)
    return any(fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _names(uid: int, gid: int) -> tuple[str, str]:
    try:
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:
        owner = ""
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = ""
    return owner, group


def _entry(path: str, info: os.stat_result) -> dict | None:
    mode = stat.S_IMODE(info.st_mode)
    owner, group = _names(info.st_uid, info.st_gid)
    entry = {"path": path, "mode": "%04o" % mode, "uid": info.st_uid, "gid": info.st_gid, "owner": owner,
             "group": group, "mtime": round(info.st_mtime, 6), "size": 0, "sha256": None, "target": None}
    if stat.S_ISDIR(info.st_mode):
        entry["type"] = "directory"
    elif stat.S_ISREG(info.st_mode):
        entry.update({"type": "file", "size": info.st_size})
    elif stat.S_ISLNK(info.st_mode):
        entry.update({"type": "symlink", "target": os.readlink(path)})
    else:
        return None
    return entry


def collect(paths, exclude=()) -> dict:
    """Walk the configured paths: entries in tar order (a directory before its contents).

    Unreadable files are refused here, before anything is written: a backup that silently
    left out a key file would look complete and restore a broken service.
    """
    paths = check_paths(paths)
    exclude = list(exclude or [])
    entries: dict[str, dict] = {}
    skipped: list[dict] = []
    warnings: list[str] = []

    def add(path: str) -> None:
        if path in entries:
            return  # overlapping configured paths
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return  # removed while we walked
        entry = _entry(path, info)
        if entry is None:
            skipped.append({"path": path, "reason": "not a file, directory or symbolic link (socket, fifo or device)"})
            return
        if entry["type"] == "file" and not os.access(path, os.R_OK):
            raise ConfigError("cannot read %s" % path, where="paths",
                              fix="run the backup as root (or a user that can read every listed path), or exclude "
                              "the file with exclude")
        entries[path] = entry

    for root in paths:
        if not os.path.lexists(root):
            raise ConfigError("path %s does not exist" % root, where="paths",
                              fix="correct the path, or remove it from the list")
        if _excluded(root, exclude):
            continue
        if os.path.islink(root):
            warnings.append("%s is a symbolic link to %s: only the link is backed up; list %s to back up what it "
                            "points to" % (root, os.readlink(root), os.path.realpath(root)))
        add(root)
        if entries.get(root, {}).get("type") != "directory":
            continue
        for folder, dirs, files in os.walk(root, followlinks=False, onerror=_raise_walk_error):
            dirs.sort()
            kept = []
            for name in dirs:
                path = os.path.join(folder, name)
                if _excluded(path, exclude):
                    continue
                add(path)
                # os.walk lists a symbolic link to a directory among dirs; it is an entry, not a tree.
                if entries.get(path, {}).get("type") == "directory":
                    kept.append(name)
            dirs[:] = kept
            for name in sorted(files):
                path = os.path.join(folder, name)
                if not _excluded(path, exclude):
                    add(path)
    if not entries:
        raise ConfigError("nothing to back up: every path is excluded", where="exclude",
                          fix="narrow the exclude patterns or list other paths")
    ordered = sorted(entries.values(), key=lambda item: _sort_key(item["path"]))
    return {"paths": paths, "exclude": exclude, "entries": ordered, "skipped": skipped, "warnings": warnings}


def _sort_key(path: str) -> list[str]:
    # By components: '/etc/a/b' sorts right after '/etc/a', before '/etc/a-b'.
    return path.split("/")


def _raise_walk_error(error: OSError) -> None:
    raise ConfigError("cannot list %s: %s" % (error.filename, error.strerror), where="paths",
                      fix="run the backup as root (or a user that can read every listed path), or exclude it")


def hash_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- tar stream

class FilesTar:
    """The tar of the collected entries; file entries get their SHA-256 and final size as they stream."""

    def __init__(self, entries: list[dict]):
        self.entries = entries
        self.changed_during_backup: list[str] = []
        self.bytes_total = 0

    def chunks(self):
        for entry in self.entries:
            name = member_name(entry["path"])
            mode = int(entry["mode"], 8)
            owner = {"uid": entry["uid"], "gid": entry["gid"], "uname": entry["owner"], "gname": entry["group"]}
            if entry["type"] == "directory":
                yield tar_header(name, tarfile.DIRTYPE, mode=mode, mtime=entry["mtime"], **owner)
            elif entry["type"] == "symlink":
                yield tar_header(name, tarfile.SYMTYPE, mode=mode, mtime=entry["mtime"], linkname=entry["target"],
                                 **owner)
            else:
                yield from self._file_chunks(entry, name, mode, owner)
        yield b"\0" * (tarfile.BLOCKSIZE * 2)

    def _file_chunks(self, entry: dict, name: str, mode: int, owner: dict):
        try:
            # O_NOFOLLOW: a file replaced by a link since the walk is not followed elsewhere.
            handle = os.fdopen(os.open(entry["path"], os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb")
        except FileNotFoundError:
            entry["type"] = "missing"  # removed since the walk: left out of the listing
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                entry["type"] = "missing"
                self.changed_during_backup.append(entry["path"])
                return
            raise ConfigError("cannot read %s: %s" % (entry["path"], exc.strerror), where="paths",
                              fix="run the backup as a user that can read it, or exclude it") from None
        with handle:
            before = os.fstat(handle.fileno())
            size = before.st_size
            entry["size"] = size
            yield tar_header(name, tarfile.REGTYPE, size, mode, entry["mtime"], **owner)
            digest = hashlib.sha256()
            remaining = size
            short = False
            while remaining > 0:
                chunk = handle.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    # Truncated while we read: the tar needs the announced size; the entry says so.
                    chunk = b"\0" * min(CHUNK_SIZE, remaining)
                    short = True
                digest.update(chunk)
                remaining -= len(chunk)
                yield chunk
            yield tar_padding(size)
            after = os.fstat(handle.fileno())
        entry["sha256"] = digest.hexdigest()
        self.bytes_total += size
        if short or after.st_size != size or after.st_mtime_ns != before.st_mtime_ns:
            entry["changed_during_backup"] = True
            self.changed_during_backup.append(entry["path"])


# --------------------------------------------------------------------------- backup

def plan_files_backup(context, paths, exclude=()) -> dict:
    """What a backup would store (check mode): the walk without reading any file."""
    found = collect(paths, exclude)
    files = [entry for entry in found["entries"] if entry["type"] == "file"]
    return {"changed": True, "type": BACKUP_TYPE, "cluster": context.cluster, "paths": found["paths"],
            "entries": len(found["entries"]), "files": len(files), "bytes": sum(entry["size"] for entry in files),
            "skipped": found["skipped"], "warnings": found["warnings"], "repository": context.repository.describe()}


def run_files_backup(context, paths, exclude=(), labels: dict | None = None, skip_unchanged: bool = False) -> dict:
    """Take one ``files`` backup; the manifest is written last.

    ``skip_unchanged``: when the newest files backup of the same paths already holds exactly
    the current content and metadata (mtime aside), take none and report unchanged.
    """
    started = time.monotonic()
    try:
        with RunLock(context.state_dir, context.cluster, "backup-files"):
            found = collect(paths, exclude)
            if skip_unchanged:
                same = _unchanged_since(context, found)
                if same is not None:
                    return same
            result = _backup(context, found, labels or {})
    except PgsafeError as exc:
        _record_backup_metrics(context, False, time.monotonic() - started, 0, exc)
        raise
    _record_backup_metrics(context, True, result["duration_seconds"], result["size_stored_bytes"])
    return result


def _unchanged_since(context, found: dict) -> dict | None:
    candidates = [entry for entry in list_backups(context.repository, context.cluster, BACKUP_TYPE, with_manifests=True)
                  if entry["status"] == "complete"
                  and (entry["manifest"].get("files") or {}).get("paths") == found["paths"]
                  and (entry["manifest"].get("files") or {}).get("exclude", []) == found["exclude"]]
    if not candidates:
        return None
    newest = candidates[-1]["manifest"]
    listing = read_file_list(context, newest)
    stored = {entry["path"]: _comparable(entry) for entry in listing["entries"]}
    current = {}
    for entry in found["entries"]:
        if entry["type"] == "file":
            try:
                entry["sha256"] = hash_file(entry["path"])
            except OSError:
                return None  # let the real backup report it
        current[entry["path"]] = _comparable(entry)
    if current != stored:
        return None
    LOG.info("files backup skipped: %s already holds the current content of %s", newest["backup_id"],
             ", ".join(found["paths"]))
    return {"changed": False, "backup_id": newest["backup_id"], "type": BACKUP_TYPE, "cluster": context.cluster,
            "paths": found["paths"], "entries": len(found["entries"]), "repository": context.repository.describe(),
            "unchanged_since": newest["finished_at"], "warnings": found["warnings"], "skipped": found["skipped"]}


def _comparable(entry: dict) -> dict:
    return {field: entry.get(field) for field in COMPARED_FIELDS}


def _backup(context, found: dict, labels: dict) -> dict:
    backup_id = mf.new_backup_id(context, BACKUP_TYPE)
    started_at = mf.utcnow()
    manifest = mf.new_manifest(backup_id, BACKUP_TYPE, context.cluster, started_at)
    LOG.info("files backup %s of %s started (%d entries)", backup_id, ", ".join(found["paths"]),
             len(found["entries"]))
    tar = FilesTar(found["entries"])
    try:
        data_name = data_object_name(context.compression, context.envelope)
        stored = store_stream(GeneratorReader(tar.chunks()), context.repository,
                              mf.object_key(context.cluster, backup_id, data_name), data_name,
                              context.compression, context.envelope,
                              mf.encryption_context(context.cluster, backup_id, data_name))
        entries = [entry for entry in found["entries"] if entry["type"] != "missing"]
        listing = {"format": LISTING_FORMAT, "backup_id": backup_id, "paths": found["paths"],
                   "exclude": found["exclude"], "entries": entries, "skipped": found["skipped"]}
        list_name = listing_object_name(context.compression, context.envelope)
        stored_list = store_stream(io.BytesIO(json.dumps(listing, sort_keys=True).encode("utf-8")),
                                   context.repository, mf.object_key(context.cluster, backup_id, list_name),
                                   list_name, context.compression, context.envelope,
                                   mf.encryption_context(context.cluster, backup_id, list_name))
        counts = {kind: sum(1 for entry in entries if entry["type"] == kind)
                  for kind in ("file", "directory", "symlink")}
        manifest.update({
            "compression": context.compression.describe(),
            "encryption": context.envelope.describe(),
            "labels": labels,
            "files": {"paths": found["paths"], "exclude": found["exclude"], "entries": len(entries),
                      "counts": counts, "bytes": tar.bytes_total, "skipped": len(found["skipped"]),
                      "changed_during_backup": list(tar.changed_during_backup),
                      "listing": "the file manifest (paths, sizes, modes, owners, SHA-256) is the encrypted "
                                 "object of kind filelist"},
        })
        write_tar_manifest(context, manifest, stored, stored_list, "files")
    except BaseException:
        discard_partial(context, backup_id)
        raise
    warnings = list(found["warnings"]) + ["%s changed while it was read: the stored copy may be inconsistent; "
                                          "back it up again" % path for path in tar.changed_during_backup]
    for warning in warnings:
        LOG.warning("files backup %s: %s", backup_id, warning)
    LOG.info("completed files backup %s in %.1f s (%d entries, %d bytes stored)", backup_id,
             manifest["duration_seconds"], len(entries), manifest["size_stored_bytes"])
    return {"changed": True, "backup_id": backup_id, "type": BACKUP_TYPE, "cluster": context.cluster,
            "repository": context.repository.describe(), "paths": found["paths"], "entries": len(entries),
            "counts": manifest["files"]["counts"], "bytes": tar.bytes_total,
            "duration_seconds": manifest["duration_seconds"], "size_raw_bytes": manifest["size_raw_bytes"],
            "size_stored_bytes": manifest["size_stored_bytes"], "skipped": found["skipped"],
            "changed_during_backup": list(tar.changed_during_backup), "warnings": warnings}


def _record_backup_metrics(context, ok: bool, seconds: float, size: int, exc=None) -> None:
    if context.metrics is None:
        return
    try:
        if isinstance(exc, EncryptionError):
            context.metrics.record_encryption_failure(context.cluster)
        context.metrics.record_backup(context.cluster, BACKUP_TYPE, ok, seconds, size, time.time() if ok else None)
    except Exception as error:  # pylint: disable=broad-except  # metrics never fail a backup
        LOG.warning("cannot publish metrics: %s", error)


# --------------------------------------------------------------------------- listing

def read_listing(context, manifest: dict) -> dict:
    if manifest.get("type") != BACKUP_TYPE:
        raise ConfigError("backup %s is a %s backup, not a files backup" % (manifest["backup_id"], manifest["type"]),
                          where="backup_id", fix="choose a files backup (`pgsafe list files`)")
    listing = read_file_list(context, manifest)
    if listing.get("format") != LISTING_FORMAT:
        raise VerificationError("the file list of %s is not a files listing" % manifest["backup_id"],
                                where=manifest["backup_id"], fix="the backup is damaged; use another one")
    return listing


def list_files(context, backup_id: str = "latest", paths=None) -> dict:
    """The file manifest of one files backup (decrypted), optionally only under ``paths``."""
    manifest = select_backup(context.repository, context.cluster, backup_id, BACKUP_TYPE)
    listing = read_listing(context, manifest)
    entries = _select(listing["entries"], paths, manifest["backup_id"]) if paths else listing["entries"]
    return {"changed": False, "backup_id": manifest["backup_id"], "cluster": context.cluster,
            "finished_at": manifest["finished_at"], "paths": listing["paths"], "entries": entries,
            "skipped": listing.get("skipped", []), "repository": context.repository.describe()}


def _select(entries: list[dict], paths, backup_id: str) -> list[dict]:
    wanted = check_paths(paths)
    selected = [entry for entry in entries
                if any(entry["path"] == path or entry["path"].startswith(path.rstrip("/") + "/") for path in wanted)]
    missing = [path for path in wanted
               if not any(entry["path"] == path or entry["path"].startswith(path + "/") for entry in entries)]
    if missing:
        roots = sorted({entry["path"] for entry in entries if entry["path"].count("/") <= 3})[:10]
        raise ConfigError("backup %s holds nothing at %s" % (backup_id, ", ".join(missing)), where="paths",
                          fix="choose paths the backup holds (`pgsafe files list`), e.g. %s" % ", ".join(roots))
    return selected


# --------------------------------------------------------------------------- restore

def destination(path: str, target_dir: str | None) -> str:
    if not target_dir:
        return path
    return os.path.join(target_dir, member_name(path))


def _check_target_dir(target_dir: str | None) -> str | None:
    if not target_dir:
        return None
    if not os.path.isabs(target_dir):
        raise ConfigError("target_dir %r is not an absolute path" % target_dir, where="target_dir",
                          fix="give an absolute directory, e.g. /var/tmp/restore")
    return os.path.normpath(target_dir)


def _local_ids(entry: dict) -> tuple[int, int]:
    """The owner by name where this host knows the name (ids differ between hosts), else by id."""
    uid, gid = entry["uid"], entry["gid"]
    if entry.get("owner"):
        try:
            uid = pwd.getpwnam(entry["owner"]).pw_uid
        except KeyError:
            pass
    if entry.get("group"):
        try:
            gid = grp.getgrnam(entry["group"]).gr_gid
        except KeyError:
            pass
    return uid, gid


def _state_of(entry: dict, dest: str, compare_owner: bool) -> str:
    """create, unchanged, or differs (exists with other content, type or metadata)."""
    try:
        info = os.lstat(dest)
    except FileNotFoundError:
        return "create"
    uid, gid = _local_ids(entry)
    same_meta = stat.S_IMODE(info.st_mode) == int(entry["mode"], 8) or entry["type"] == "symlink"
    if compare_owner:
        same_meta = same_meta and (info.st_uid, info.st_gid) == (uid, gid)
    if entry["type"] == "directory":
        if not stat.S_ISDIR(info.st_mode):
            return "differs"
        return "unchanged" if same_meta else "differs"
    if entry["type"] == "symlink":
        if not stat.S_ISLNK(info.st_mode):
            return "differs"
        return "unchanged" if os.readlink(dest) == entry["target"] and same_meta else "differs"
    if not stat.S_ISREG(info.st_mode) or info.st_size != entry["size"] or not same_meta:
        return "differs"
    try:
        return "unchanged" if hash_file(dest) == entry["sha256"] else "differs"
    except OSError:
        return "differs"


def _with_ancestors(selected: list[dict], all_entries: list[dict]) -> list[dict]:
    """Directories of the backup above the selection: created with their own metadata when missing."""
    by_path = {entry["path"]: entry for entry in all_entries}
    chosen = {entry["path"]: entry for entry in selected}
    for entry in selected:
        parent = os.path.dirname(entry["path"])
        while parent != "/" and parent in by_path and parent not in chosen:
            chosen[parent] = dict(by_path[parent], ancestor=True)
            parent = os.path.dirname(parent)
    return sorted(chosen.values(), key=lambda item: _sort_key(item["path"]))


def plan_files_restore(context, backup_id: str = "latest", paths=None, target_dir: str | None = None,
                       force: bool = False) -> dict:
    """What a restore would do, reading only the file manifest; refuses before touching anything."""
    target_dir = _check_target_dir(target_dir)
    manifest = select_backup(context.repository, context.cluster, backup_id, BACKUP_TYPE)
    listing = read_listing(context, manifest)
    selected = _select(listing["entries"], paths, manifest["backup_id"]) if paths else list(listing["entries"])
    entries = _with_ancestors(selected, listing["entries"])
    compare_owner = os.geteuid() == 0
    actions = []
    for entry in entries:
        dest = destination(entry["path"], target_dir)
        state = _state_of(entry, dest, compare_owner)
        if state == "differs" and entry.get("ancestor"):
            # A directory above the selection that exists is used as it is: restoring one
            # file must not change the mode of /etc.
            state = "unchanged" if os.path.isdir(dest) and not os.path.islink(dest) else "differs"
        actions.append({"path": entry["path"], "destination": dest, "type": entry["type"], "state": state})
    conflicts = [action for action in actions if action["state"] == "differs"]
    if conflicts and not force:
        shown = ", ".join(action["destination"] for action in conflicts[:10])
        raise RestoreError("%d destination(s) exist and differ from backup %s: %s%s" % (
            len(conflicts), manifest["backup_id"], shown, " ..." if len(conflicts) > 10 else ""),
            where="target_dir" if target_dir else "paths",
            fix="set force: true (--force) to replace them with the backup's version, or restore beside them "
            "with target_dir (--target-dir)")
    to_write = [action for action in actions if action["state"] != "unchanged"]
    return {"changed": bool(to_write), "backup_id": manifest["backup_id"], "cluster": context.cluster,
            "target_dir": target_dir, "force": force, "entries": len(entries),
            "restored": [action["destination"] for action in to_write],
            "replaced": [action["destination"] for action in conflicts],
            "unchanged": [action["destination"] for action in actions if action["state"] == "unchanged"],
            "_manifest": manifest, "_entries": entries, "_actions": actions}


def run_files_restore(context, backup_id: str = "latest", paths=None, target_dir: str | None = None,
                      force: bool = False) -> dict:
    """Restore the selected paths; each file verified by SHA-256 before it is renamed into place."""
    started = time.monotonic()
    try:
        with RunLock(context.state_dir, context.cluster, "restore-files"):
            plan = plan_files_restore(context, backup_id, paths, target_dir, force)
            result = _restore(context, plan)
    except PgsafeError:
        _record_restore_metrics(context, False, time.monotonic() - started)
        raise
    result["duration_seconds"] = round(time.monotonic() - started, 3)
    _record_restore_metrics(context, True, result["duration_seconds"])
    LOG.info("restored %d path(s) of files backup %s in %.1f s", len(result["restored"]), result["backup_id"],
             result["duration_seconds"])
    return result


def _restore(context, plan: dict) -> dict:
    from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import find_object, open_object

    manifest = plan.pop("_manifest")
    entries = plan.pop("_entries")
    actions = {action["path"]: action for action in plan.pop("_actions")}
    is_root = os.geteuid() == 0
    plan["ownership_not_restored"] = []
    if not plan["restored"]:
        return plan
    writes = {entry["path"]: entry for entry in entries
              if entry["type"] == "file" and actions[entry["path"]]["state"] != "unchanged"}
    directories = [entry for entry in entries
                   if entry["type"] == "directory" and actions[entry["path"]]["state"] != "unchanged"]
    for entry in directories:
        dest = actions[entry["path"]]["destination"]
        if os.path.lexists(dest) and not os.path.isdir(dest):
            os.unlink(dest)  # force: a file or link where the backup has a directory
        os.makedirs(dest, mode=0o700, exist_ok=True)
    for entry in entries:
        if entry["type"] in ("file", "symlink") and actions[entry["path"]]["state"] != "unchanged":
            os.makedirs(os.path.dirname(actions[entry["path"]]["destination"]), mode=0o755, exist_ok=True)
    for entry in entries:
        if entry["type"] == "symlink" and actions[entry["path"]]["state"] != "unchanged":
            _place_symlink(entry, actions[entry["path"]]["destination"], is_root, plan)
    if writes:
        reader = open_object(context, manifest, find_object(manifest, "files"))
        try:
            with tarfile.open(fileobj=reader, mode="r|") as archive:
                for member in archive:
                    path = "/" + member.name
                    if not member.isfile() or path not in writes:
                        continue
                    _place_file(archive, member, writes.pop(path), actions[path]["destination"], is_root, plan)
            reader.finish()
        finally:
            reader.close()
        if writes:
            raise VerificationError("backup %s lacks %d file(s) its file manifest lists (e.g. %s)" % (
                manifest["backup_id"], len(writes), sorted(writes)[0]), where=manifest["backup_id"],
                fix="the backup is damaged; restore from another copy or an earlier backup")
    # Directories last, deepest first: a read-only directory must not block the files
    # placed in it, and writing into it would move its mtime again.
    for entry in sorted(directories, key=lambda item: _sort_key(item["path"]), reverse=True):
        _apply_metadata(entry, actions[entry["path"]]["destination"], is_root, plan)
    return plan


def _place_file(archive, member, entry: dict, dest: str, is_root: bool, plan: dict) -> None:
    source = archive.extractfile(member)
    folder = os.path.dirname(dest)
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=".%s." % os.path.basename(dest), suffix=".pgsafe")
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as stream:
            for chunk in iter(lambda: source.read(CHUNK_SIZE), b""):
                digest.update(chunk)
                stream.write(chunk)
            stream.flush()
            os.fsync(stream.fileno())
        if digest.hexdigest() != entry["sha256"]:
            raise VerificationError("restored %s does not match its SHA-256 in the file manifest" % entry["path"],
                                    where=plan["backup_id"], fix="the backup is damaged; restore from another copy "
                                    "or an earlier backup")
        _apply_metadata(entry, temp_path, is_root, plan)
        if os.path.isdir(dest) and not os.path.islink(dest):
            shutil.rmtree(dest)  # force: a directory where the backup has a file
        os.replace(temp_path, dest)
    except BaseException:
        try:
            os.unlink(temp_path)
        except OSError:
            pass
        raise


def _place_symlink(entry: dict, dest: str, is_root: bool, plan: dict) -> None:
    temp_path = os.path.join(os.path.dirname(dest), ".%s.%d.pgsafe" % (os.path.basename(dest), os.getpid()))
    if os.path.lexists(temp_path):
        os.unlink(temp_path)
    os.symlink(entry["target"], temp_path)
    if is_root:
        os.lchown(temp_path, *_local_ids(entry))
    if os.path.isdir(dest) and not os.path.islink(dest):
        shutil.rmtree(dest)
    os.replace(temp_path, dest)


def _apply_metadata(entry: dict, path: str, is_root: bool, plan: dict) -> None:
    uid, gid = _local_ids(entry)
    if is_root:
        os.chown(path, uid, gid)
    elif (os.stat(path).st_uid, os.stat(path).st_gid) != (uid, gid):
        plan["ownership_not_restored"].append(entry["path"])
    os.chmod(path, int(entry["mode"], 8))
    os.utime(path, (entry["mtime"], entry["mtime"]))


def _record_restore_metrics(context, ok: bool, seconds: float) -> None:
    if context.metrics is None:
        return
    try:
        context.metrics.record_restore(context.cluster, BACKUP_TYPE, ok, seconds)
    except Exception as error:  # pylint: disable=broad-except
        LOG.warning("cannot publish metrics: %s", error)


# --------------------------------------------------------------------------- verification

def check_archive(context, manifest: dict, reader) -> int:
    """Every file of the tar against the file manifest's SHA-256 (verify, level decrypt).

    Returns the number of files checked; raises VerificationError naming the first file that
    differs, is missing or is not listed.
    """
    listing = read_listing(context, manifest)
    expected = {entry["path"]: entry for entry in listing["entries"] if entry["type"] == "file"}
    seen = 0
    with tarfile.open(fileobj=reader, mode="r|") as archive:
        for member in archive:
            if not member.isfile():
                continue
            path = "/" + member.name
            entry = expected.pop(path, None)
            if entry is None:
                raise VerificationError("the tar holds %s, which the file manifest does not list" % path,
                                        where=manifest["backup_id"], fix="the backup is damaged; use another one")
            digest = hashlib.sha256()
            source = archive.extractfile(member)
            for chunk in iter(lambda: source.read(CHUNK_SIZE), b""):
                digest.update(chunk)
            if digest.hexdigest() != entry["sha256"]:
                raise VerificationError("%s in the tar does not match its SHA-256 in the file manifest" % path,
                                        where=manifest["backup_id"], fix="the backup is damaged; use another one")
            seen += 1
    if expected:
        raise VerificationError("the tar lacks %d file(s) the file manifest lists (e.g. %s)" % (
            len(expected), sorted(expected)[0]), where=manifest["backup_id"],
            fix="the backup is damaged; use another one")
    return seen


def restore_test(context, manifest: dict) -> dict:
    """Restore every path into a private scratch directory, then remove it (verify, level restore)."""
    scratch = tempfile.mkdtemp(prefix="pgsafe-files-restore-test-")
    started = time.monotonic()
    try:
        result = run_files_restore(context, manifest["backup_id"], None, scratch, force=False)
        return {"backup_id": manifest["backup_id"], "entries": len(result["restored"]),
                "seconds": round(time.monotonic() - started, 3)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
