# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup manifest: one JSON document per backup, written last.

A backup exists only when ``<cluster>/backups/<backup_id>/manifest.json`` exists
(DESIGN.md, completion rule). It records everything needed to verify and restore
the backup without any other state: objects with sizes and SHA-256 of the stored
bytes, compression and encryption parameters (key ids and context, never key
material), PostgreSQL identity, and exact row counts taken in the dump's snapshot.
"""

from __future__ import annotations

import datetime
import json
import re
import socket
import time
import urllib.parse

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, VerificationError
from ansible_collections.pgsafe.backup.plugins.module_utils.repository import join_key
from ansible_collections.pgsafe.backup.plugins.module_utils.version import TOOL_VERSION

MANIFEST_NAME = "manifest.json"
FORMAT = "pgsafe-manifest"
FORMAT_VERSION = 1
BACKUP_TYPES = ("logical", "full", "incremental", "transaction_logs", "files")
BACKUP_ID_RE = re.compile(r"^(\d{8}T\d{6}Z)-(%s)$" % "|".join(BACKUP_TYPES))
CLUSTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
REQUIRED_FIELDS = ("format", "format_version", "backup_id", "type", "cluster", "started_at", "finished_at", "objects")


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def isoformat(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)


def format_backup_id(backup_type: str, moment: datetime.datetime | None = None) -> str:
    """Sortable id: UTC timestamp to the second, then the type (``20261122T050102Z-logical``)."""
    if backup_type not in BACKUP_TYPES:
        raise ConfigError("unknown backup type %r" % backup_type, where="type",
                          fix="use one of: %s" % ", ".join(BACKUP_TYPES))
    moment = moment or utcnow()
    return moment.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + backup_type


def new_backup_id(context, backup_type: str) -> str:
    """A fresh id for a new backup of ``context.cluster``: never one that already has any
    object in the repository (two runs of the same type within one second wait a second)."""
    while True:
        backup_id = format_backup_id(backup_type)
        if next(iter(context.repository.list(backup_prefix(context.cluster, backup_id))), None) is None:
            return backup_id
        time.sleep(1.0)


def parse_backup_id(backup_id: str) -> tuple[datetime.datetime, str]:
    match = BACKUP_ID_RE.match(backup_id or "")
    if not match:
        raise ConfigError("%r is not a backup id" % backup_id, where="backup_id",
                          fix="use an id as shown by `pgsafe list` (e.g. 20261122T050102Z-logical) or 'latest'")
    moment = datetime.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    return moment, match.group(2)


def check_cluster_name(cluster: str) -> str:
    if not CLUSTER_RE.match(cluster or ""):
        raise ConfigError("cluster name %r is not usable in repository keys" % cluster, where="cluster",
                          fix="use letters, digits, '.', '_' or '-' (up to 63 characters), e.g. 'main' or "
                          "'db01-main'")
    return cluster


def backups_prefix(cluster: str) -> str:
    return join_key(cluster, "backups") + "/"


def backup_prefix(cluster: str, backup_id: str) -> str:
    return join_key(cluster, "backups", backup_id) + "/"


def manifest_key(cluster: str, backup_id: str) -> str:
    return join_key(cluster, "backups", backup_id, MANIFEST_NAME)


def object_key(cluster: str, backup_id: str, name: str) -> str:
    return join_key(cluster, "backups", backup_id, name)


def safe_name(text: str) -> str:
    """A database or path name made safe for one key segment (reversible percent-encoding)."""
    return urllib.parse.quote(text, safe="").replace(".", "%2E") if text in (".", "..") else \
        urllib.parse.quote(text, safe="-_.")


def encryption_context(cluster: str, backup_id: str, name: str) -> dict:
    """Binds an object to its cluster, backup and name: a swapped or renamed object fails to decrypt."""
    return {"pgsafe:cluster": cluster, "pgsafe:backup_id": backup_id, "pgsafe:object": name}


def new_manifest(backup_id: str, backup_type: str, cluster: str, started_at: datetime.datetime) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backup_id": backup_id,
        "type": backup_type,
        "cluster": cluster,
        "host": socket.getfqdn(),
        "started_at": isoformat(started_at),
        "finished_at": None,
        "duration_seconds": None,
        "databases": [],
        "postgres": {},
        "size_raw_bytes": 0,
        "size_stored_bytes": 0,
        "compression": {},
        "encryption": {},
        "objects": [],
        "row_counts": {},
        "parent_backup_id": None,
        "labels": {},
        "tool": {"name": "pgsafe", "version": TOOL_VERSION},
    }


def finalize(manifest: dict, finished_at: datetime.datetime) -> dict:
    manifest["finished_at"] = isoformat(finished_at)
    manifest["duration_seconds"] = round((finished_at - parse_time(manifest["started_at"])).total_seconds(), 3)
    manifest["size_raw_bytes"] = sum(obj.get("size_raw", 0) for obj in manifest["objects"])
    manifest["size_stored_bytes"] = sum(obj.get("size_stored", 0) for obj in manifest["objects"])
    return manifest


def dumps(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def loads(data: bytes, where: str) -> dict:
    """Parse and check a manifest; a damaged one raises VerificationError naming it."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerificationError("manifest is not valid JSON (%s)" % exc, where=where,
                                fix="the manifest is damaged: restore it from another repository copy, or treat this "
                                "backup as lost and use another one") from exc
    missing = [field for field in REQUIRED_FIELDS if field not in manifest]
    if missing or manifest.get("format") != FORMAT:
        raise VerificationError("manifest lacks required fields %s" % ", ".join(missing or ["format"]), where=where,
                                fix="the manifest is damaged or not a pgsafe manifest; restore it from another copy")
    if int(manifest["format_version"]) > FORMAT_VERSION:
        raise VerificationError("manifest format %s is newer than this pgsafe understands (%d)"
                                % (manifest["format_version"], FORMAT_VERSION), where=where,
                                fix="upgrade pgsafe to read this backup")
    return manifest


def write_manifest(repository, manifest: dict) -> None:
    """Write the manifest: the single atomic act that makes the backup exist."""
    repository.put_bytes(manifest_key(manifest["cluster"], manifest["backup_id"]), dumps(manifest))


def read_manifest(repository, cluster: str, backup_id: str) -> dict:
    key = manifest_key(cluster, backup_id)
    return loads(repository.get_bytes(key), where="%s: %s" % (repository.describe(), key))
