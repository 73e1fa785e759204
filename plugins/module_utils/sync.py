# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copy complete backups between repositories (a local copy and a cloud copy).

Idempotent by checksum: a backup whose manifest is byte-identical at the destination
and whose objects are all there with the manifest's sizes (and SHA-256 where the
destination records it) is left alone. Objects are streamed and hashed on the way;
a source object that does not match its manifest is never copied. The manifest is
copied last, so an interrupted sync leaves an incomplete (uncounted) backup, never a
complete-looking one. Sync never deletes: retention runs on each repository.
"""

from __future__ import annotations

import hashlib
import logging

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, NotFoundError, VerificationError
from ansible_collections.pgsafe.backup.plugins.module_utils.pipeline import CHUNK_SIZE

LOG = logging.getLogger("pgsafe")
MODES = ("push", "pull", "sync")


def sync_repositories(local, remote, cluster: str, mode: str = "push", backup_ids=None,
                      check_mode: bool = False) -> dict:
    """push: local -> remote; pull: remote -> local; sync: both ways."""
    if mode not in MODES:
        raise ConfigError("unknown sync mode %r" % mode, where="mode", fix="use push, pull or sync")
    result = {"changed": False, "mode": mode, "cluster": cluster, "copied": [], "unchanged": [],
              "skipped_incomplete": [], "bytes_copied": 0, "objects_copied": 0}
    directions = {"push": [(local, remote)], "pull": [(remote, local)], "sync": [(local, remote), (remote, local)]}
    for source, dest in directions[mode]:
        for entry in list_backups(source, cluster):
            backup_id = entry["backup_id"]
            if backup_ids and backup_id not in backup_ids:
                continue
            if entry["status"] != "complete":
                result["skipped_incomplete"].append({"backup_id": backup_id, "repository": source.name})
                continue
            copied = copy_backup(source, dest, cluster, backup_id, check_mode)
            target = result["copied"] if copied["objects"] else result["unchanged"]
            target.append({"backup_id": backup_id, "from": source.name, "to": dest.name,
                           "objects": copied["objects"]})
            result["bytes_copied"] += copied["bytes"]
            result["objects_copied"] += len(copied["objects"])
    result["changed"] = bool(result["copied"])
    return result


def copy_backup(source, dest, cluster: str, backup_id: str, check_mode: bool = False) -> dict:
    manifest_key = mf.manifest_key(cluster, backup_id)
    manifest_bytes = source.get_bytes(manifest_key)
    manifest = mf.loads(manifest_bytes, where="%s: %s" % (source.describe(), manifest_key))
    todo = []
    for obj in manifest["objects"]:
        key = mf.object_key(cluster, backup_id, obj["name"])
        info = dest.stat(key)
        if info is None or info.size != obj["size_stored"] or (info.sha256 and info.sha256 != obj["sha256"]):
            todo.append(obj)
    manifest_same = False
    try:
        manifest_same = dest.get_bytes(manifest_key) == manifest_bytes
    except NotFoundError:
        pass
    if not todo and manifest_same:
        return {"objects": [], "bytes": 0}
    names = [obj["name"] for obj in todo] + [mf.MANIFEST_NAME]
    if check_mode:
        return {"objects": names, "bytes": sum(obj["size_stored"] for obj in todo)}
    copied_bytes = 0
    for obj in todo:
        copied_bytes += copy_object(source, dest, mf.object_key(cluster, backup_id, obj["name"]), obj["sha256"],
                                    obj["size_stored"])
    dest.put_bytes(manifest_key, manifest_bytes)
    LOG.info("copied backup %s from %s to %s (%d objects, %d bytes)", backup_id, source.describe(), dest.describe(),
             len(todo), copied_bytes)
    return {"objects": names, "bytes": copied_bytes}


def copy_object(source, dest, key: str, sha256: str, size: int) -> int:
    """Stream one object, checking its SHA-256 before the destination commits it."""
    digest = hashlib.sha256()
    copied = 0
    reader = source.open_reader(key)
    try:
        with dest.open_writer(key, sha256=sha256) as writer:
            while True:
                chunk = reader.read(CHUNK_SIZE)
                if not chunk:
                    break
                digest.update(chunk)
                copied += len(chunk)
                writer.write(chunk)
            if copied != size or digest.hexdigest() != sha256:
                raise VerificationError("source object does not match its manifest (size %d vs %d or SHA-256 "
                                        "differs); it was not copied" % (copied, size),
                                        where="%s: %s" % (source.describe(), key),
                                        fix="the source copy is corrupt: repair it from the other repository with "
                                        "mode pull, or verify and prune it")
            writer.commit()
    finally:
        reader.close()
    return copied
