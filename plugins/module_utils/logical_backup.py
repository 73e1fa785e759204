# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Logical backup: ``pg_dump`` of each database (custom format) plus globals, streamed.

For each database a REPEATABLE READ transaction exports a snapshot; ``pg_dump
--snapshot`` dumps exactly that snapshot while the same transaction counts every
table's rows, so the manifest's row counts are those of the dump, exactly. The dump
is written uncompressed (``-Z0``) because the pipeline compresses with zstd in
parallel threads, which is several times faster than pg_dump's own gzip.
"""

from __future__ import annotations

import logging
import threading
import time

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError, EncryptionError, PgsafeError, PostgresError)
from ansible_collections.pgsafe.backup.plugins.module_utils.locking import RunLock
from ansible_collections.pgsafe.backup.plugins.module_utils.pipeline import ProcessSource, store_stream
from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import (
    ExportedSnapshot, list_databases, server_info)

LOG = logging.getLogger("pgsafe")


def dump_object_name(dbname: str, compression, envelope) -> str:
    return "databases/%s.dump%s%s" % (mf.safe_name(dbname), compression.extension, ".enc" if envelope.enabled else "")


def globals_object_name(compression, envelope) -> str:
    return "globals.sql%s%s" % (compression.extension, ".enc" if envelope.enabled else "")


def resolve_databases(context, requested) -> list[str]:
    """'all' (or nothing) means every connectable non-template database; names are checked."""
    available = list_databases(context.postgres)
    if not requested or requested == ["all"] or requested == "all":
        return available
    missing = [name for name in requested if name not in available]
    if missing:
        raise ConfigError("database(s) %s do not exist on %s" % (", ".join(missing), context.postgres.where),
                          where="databases", fix="use existing names (%s) or 'all'" % ", ".join(available))
    return list(dict.fromkeys(requested))


def plan_logical_backup(context, databases=None, include_globals: bool = True) -> dict:
    """What a run would do, without doing it (check mode)."""
    names = resolve_databases(context, databases)
    return {"changed": True, "type": "logical", "cluster": context.cluster, "databases": names,
            "globals": include_globals, "repository": context.repository.describe()}


def run_logical_backup(context, databases=None, include_globals: bool = True, role_passwords: bool = True,
                       labels: dict | None = None, extra_dump_args: list | None = None) -> dict:
    """Take one logical backup; returns a summary. The manifest is written last."""
    started = time.monotonic()
    try:
        with RunLock(context.state_dir, context.cluster, "backup-logical"):
            result = _backup(context, databases, include_globals, role_passwords, labels or {},
                             extra_dump_args or [])
    except PgsafeError as exc:
        if context.metrics is not None:
            if isinstance(exc, EncryptionError):
                context.metrics.record_encryption_failure(context.cluster)
            context.metrics.record_backup(context.cluster, "logical", False, time.monotonic() - started, 0, None)
        raise
    if context.metrics is not None:
        context.metrics.record_backup(context.cluster, "logical", True, result["duration_seconds"],
                                      result["size_stored_bytes"], time.time())
    return result


def _backup(context, databases, include_globals, role_passwords, labels, extra_dump_args) -> dict:
    info = server_info(context.postgres)
    names = resolve_databases(context, databases)
    backup_id = mf.new_backup_id(context, "logical")
    started_at = mf.utcnow()
    manifest = mf.new_manifest(backup_id, "logical", context.cluster, started_at)
    manifest.update({
        "databases": names,
        "postgres": {"version": info["version"], "version_num": info["version_num"],
                     "system_identifier": info["system_identifier"], "in_recovery": info["in_recovery"],
                     "host": context.postgres.host, "port": context.postgres.port},
        "compression": context.compression.describe(),
        "encryption": context.envelope.describe(),
        "labels": labels,
        "globals": include_globals,
    })
    LOG.info("backup %s of cluster %s started: databases %s", backup_id, context.cluster, ", ".join(names))
    try:
        for dbname in names:
            manifest["objects"].append(_dump_database(context, info, backup_id, dbname, manifest, extra_dump_args))
        if include_globals:
            manifest["objects"].append(_dump_globals(context, info, backup_id, role_passwords))
        mf.finalize(manifest, mf.utcnow())
        mf.write_manifest(context.repository, manifest)
    except BaseException:
        _discard_partial(context, backup_id)
        raise
    LOG.info("completed logical backup %s in %.1f s (%d bytes stored)", backup_id, manifest["duration_seconds"],
             manifest["size_stored_bytes"])
    seconds = max(manifest["duration_seconds"], 1e-6)
    return {
        "changed": True,
        "backup_id": backup_id,
        "type": "logical",
        "cluster": context.cluster,
        "databases": names,
        "repository": context.repository.describe(),
        "duration_seconds": manifest["duration_seconds"],
        "size_raw_bytes": manifest["size_raw_bytes"],
        "size_stored_bytes": manifest["size_stored_bytes"],
        "throughput_mb_s": round(manifest["size_raw_bytes"] / seconds / 1e6, 2),
        "row_counts": manifest["row_counts"],
        "objects": [obj["name"] for obj in manifest["objects"]],
    }


def _dump_database(context, info, backup_id, dbname, manifest, extra_dump_args) -> dict:
    name = dump_object_name(dbname, context.compression, context.envelope)
    snapshot = ExportedSnapshot(context.postgres, dbname)
    counts: dict = {}
    errors: list = []

    def count() -> None:
        try:
            counts.update(snapshot.row_counts())
        except PgsafeError as exc:
            errors.append(exc)

    counter = threading.Thread(target=count, name="row-counts-%s" % dbname, daemon=True)
    try:
        argv = [context.postgres.program("pg_dump", info["major"]), "--format=custom", "--compress=0",
                "--snapshot=" + snapshot.snapshot_id, "--no-password"] + list(extra_dump_args) + \
               ["--dbname", dbname]
        source = ProcessSource(argv, env=context.postgres.env(dbname), error_class=PostgresError,
                               what="pg_dump of %s" % dbname)
        counter.start()
        try:
            stored = store_stream(source, context.repository, mf.object_key(context.cluster, backup_id, name), name,
                                  context.compression, context.envelope,
                                  mf.encryption_context(context.cluster, backup_id, name), finish=source.finish)
        except BaseException:
            source.kill()
            raise
        counter.join()
    finally:
        snapshot.close()
    if errors:
        raise errors[0]
    manifest["row_counts"][dbname] = counts
    entry = stored.to_manifest()
    entry.update({"kind": "database", "database": dbname, "format": "pg_dump-custom"})
    LOG.info("dumped %s: %d bytes raw, %d stored, %d tables", dbname, stored.size_raw, stored.size_stored, len(counts))
    return entry


def _dump_globals(context, info, backup_id, role_passwords) -> dict:
    name = globals_object_name(context.compression, context.envelope)
    argv = [context.postgres.program("pg_dumpall", info["major"]), "--globals-only", "--no-password"]
    if not role_passwords or not info["superuser"]:
        # pg_authid (password hashes) is readable by superusers only.
        argv.append("--no-role-passwords")
    source = ProcessSource(argv, env=context.postgres.env(), error_class=PostgresError, what="pg_dumpall --globals-only")
    try:
        stored = store_stream(source, context.repository, mf.object_key(context.cluster, backup_id, name), name,
                              context.compression, context.envelope,
                              mf.encryption_context(context.cluster, backup_id, name), finish=source.finish)
    except BaseException:
        source.kill()
        raise
    entry = stored.to_manifest()
    entry.update({"kind": "globals", "format": "sql", "role_passwords": "--no-role-passwords" not in argv})
    return entry


def _discard_partial(context, backup_id) -> None:
    """Best effort: remove what a failed run wrote. It has no manifest, so it never counts
    anyway; prune removes leftovers of runs killed before they could clean up."""
    try:
        context.repository.delete_prefix(mf.backup_prefix(context.cluster, backup_id))
    except Exception:  # pylint: disable=broad-except
        LOG.warning("could not remove the partial backup %s; prune removes it after the grace period", backup_id)
