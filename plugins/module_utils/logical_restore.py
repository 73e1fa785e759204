# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Logical restore: a database from a logical backup, then proof by exact row counts.

The dump is restored into a fresh staging database first; only when pg_restore
succeeded and every table's row count equals the manifest's is it renamed to the
target name (replacing an existing database only with ``force``). A failed restore
therefore never destroys the database it was meant to replace.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import threading
import time

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import select_backup
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError, PgsafeError, PostgresError, RestoreError, VerificationError)
from ansible_collections.pgsafe.backup.plugins.module_utils.locking import RunLock
from ansible_collections.pgsafe.backup.plugins.module_utils.pipeline import CHUNK_SIZE, ObjectReader
from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import (
    create_database, database_exists, drop_database, server_info, table_row_counts)

LOG = logging.getLogger("pgsafe")


def find_object(manifest: dict, kind: str, database: str | None = None) -> dict:
    for obj in manifest["objects"]:
        if obj.get("kind") == kind and (database is None or obj.get("database") == database):
            return obj
    for_database = (" for database %s" % database) if database else ""
    raise RestoreError("backup %s has no %s object%s" % (manifest["backup_id"], kind, for_database),
                       where="backup %s" % manifest["backup_id"],
                       fix="choose a database the backup contains: %s" % ", ".join(manifest.get("databases", [])))


def open_object(context, manifest: dict, obj: dict) -> ObjectReader:
    return ObjectReader(context.repository, mf.object_key(manifest["cluster"], manifest["backup_id"], obj["name"]),
                        manifest.get("compression", {}).get("algorithm", "none"), context.envelope,
                        mf.encryption_context(manifest["cluster"], manifest["backup_id"], obj["name"]),
                        expected_sha256=obj.get("sha256"), expected_size=obj.get("size_stored"))


def choose_database(manifest: dict, database: str | None) -> str:
    databases = manifest.get("databases", [])
    if database:
        if database not in databases:
            raise ConfigError("backup %s does not contain database %s" % (manifest["backup_id"], database),
                              where="database", fix="choose one of: %s" % ", ".join(databases))
        return database
    if len(databases) == 1:
        return databases[0]
    raise ConfigError("backup %s holds several databases (%s)" % (manifest["backup_id"], ", ".join(databases)),
                      where="database", fix="say which one to restore with database")


def plan_logical_restore(context, backup_id="latest", database=None, target_database=None, force=False) -> dict:
    manifest = select_backup(context.repository, context.cluster, backup_id, "logical", database)
    database = choose_database(manifest, database)
    target = target_database or database
    exists = database_exists(context.postgres, target)
    if exists and not force:
        raise RestoreError("database %s already exists on %s; refusing to overwrite it" % (target, context.postgres.where),
                           where="target_database",
                           fix="set force: true (--force) to replace it after a verified restore, or restore into "
                           "another target_database")
    return {"changed": True, "backup_id": manifest["backup_id"], "database": database, "target_database": target,
            "replaces_existing": exists, "manifest": manifest}


def run_logical_restore(context, backup_id="latest", database=None, target_database=None, force=False, jobs=1,
                        restore_globals=False, no_owner=False, scratch_dir=None, verify_row_counts=True,
                        metrics_is_test=False) -> dict:
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import check_number

    check_number(jobs, "jobs", 1, 64, fix="use 1 (stream, the default) up to 64 parallel pg_restore jobs")
    started = time.monotonic()
    plan = plan_logical_restore(context, backup_id, database, target_database, force)
    manifest, database, target = plan.pop("manifest"), plan["database"], plan["target_database"]
    staging_prefix = "%s_pgsafe_" % target[:40]
    staging = staging_prefix + time.strftime("%Y%m%d%H%M%S")
    try:
        # Locked per staging prefix: a staging database with this prefix found now belongs to a
        # restore that was killed, never to one that is running.
        with RunLock(context.state_dir, context.cluster, "restore-%s" % mf.safe_name(target[:40])):
            info = server_info(context.postgres)
            plan["stale_staging_dropped"] = _drop_stale_staging(context, staging_prefix)
            if restore_globals:
                plan["globals_errors"] = _restore_globals(context, manifest, info)
            create_database(context.postgres, staging)
            try:
                _pg_restore(context, manifest, find_object(manifest, "database", database), staging, info, jobs,
                            no_owner, scratch_dir)
                plan["row_counts"] = table_row_counts(context.postgres, staging)
                expected = manifest.get("row_counts", {}).get(database, {})
                plan["row_count_mismatches"] = compare_counts(expected, plan["row_counts"])
                if verify_row_counts and plan["row_count_mismatches"]:
                    raise VerificationError(
                        "restored row counts differ from the backup's: %s" % "; ".join(
                            "%s expected %s got %s" % (m["table"], m["expected"], m["restored"])
                            for m in plan["row_count_mismatches"][:10]),
                        where="backup %s database %s" % (manifest["backup_id"], database),
                        fix="the backup is not trustworthy: restore an earlier backup and investigate")
                if plan["replaces_existing"] or database_exists(context.postgres, target):
                    drop_database(context.postgres, target)
                _rename_database(context, staging, target)
            except BaseException:
                drop_database(context.postgres, staging)
                raise
    except PgsafeError:
        if context.metrics is not None:
            context.metrics.record_restore(context.cluster, "logical", False, time.monotonic() - started,
                                           is_test=metrics_is_test)
        raise
    plan["duration_seconds"] = round(time.monotonic() - started, 3)
    plan["row_counts_match"] = not plan["row_count_mismatches"]
    if context.metrics is not None:
        context.metrics.record_restore(context.cluster, "logical", True, plan["duration_seconds"],
                                       is_test=metrics_is_test)
    LOG.info("completed restore of %s (%s) into %s in %.1f s", manifest["backup_id"], database, target,
             plan["duration_seconds"])
    return plan


def compare_counts(expected: dict, restored: dict) -> list[dict]:
    mismatches = []
    for table in sorted(set(expected) | set(restored)):
        if expected.get(table) != restored.get(table):
            mismatches.append({"table": table, "expected": expected.get(table), "restored": restored.get(table)})
    return mismatches


def _drop_stale_staging(context, prefix: str) -> list[str]:
    """Drop staging copies left by killed restores of this target; they never replaced anything."""
    with context.postgres.connect() as conn:
        names = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE left(datname, %s) = %s", (len(prefix), prefix))]
    stale = sorted(name for name in names if re.match(r"^%s\d{14}$" % re.escape(prefix), name))
    for name in stale:
        LOG.warning("dropping %s, the staging database of an earlier restore that did not finish", name)
        drop_database(context.postgres, name)
    return stale


def _rename_database(context, old: str, new: str) -> None:
    from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import pgsql

    with context.postgres.connect() as conn:
        conn.execute(pgsql.SQL("ALTER DATABASE {} RENAME TO {}").format(pgsql.Identifier(old), pgsql.Identifier(new)))


def _pg_restore(context, manifest, obj, dbname, info, jobs, no_owner, scratch_dir) -> None:
    argv = [context.postgres.program("pg_restore", info["major"]), "--dbname", dbname, "--exit-on-error",
            "--no-password"]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    reader = open_object(context, manifest, obj)
    try:
        if jobs and int(jobs) > 1:
            # Parallel pg_restore needs a seekable file: the decrypted dump is staged in a
            # private (0700) scratch directory and removed afterwards.
            workdir = tempfile.mkdtemp(prefix="pgsafe-restore-", dir=scratch_dir)
            path = os.path.join(workdir, "dump")
            try:
                with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                    while True:
                        chunk = reader.read(CHUNK_SIZE)
                        if not chunk:
                            break
                        handle.write(chunk)
                reader.finish()
                _run(argv + ["--jobs", str(int(jobs)), path], context.postgres.env(dbname), None)
            finally:
                if os.path.exists(path):
                    os.unlink(path)
                os.rmdir(workdir)
        else:
            _run(argv, context.postgres.env(dbname), reader)
    finally:
        reader.close()


def _run(argv, env, reader) -> None:
    """Run pg_restore, feeding it the plaintext when a reader is given.

    stderr is drained by a thread: a pg_restore that reports many errors must never
    block on a full stderr pipe while we block writing its stdin.
    """
    process = subprocess.Popen(argv, stdin=subprocess.PIPE if reader else subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    stderr_chunks: list[bytes] = []
    drainer = threading.Thread(target=lambda: stderr_chunks.append(process.stderr.read()), daemon=True)
    drainer.start()
    if reader is not None:
        try:
            while True:
                chunk = reader.read(CHUNK_SIZE)
                if not chunk:
                    break
                process.stdin.write(chunk)
            reader.finish()
        except BrokenPipeError:
            pass  # pg_restore stopped reading: its exit status below says why
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass
    returncode = process.wait()
    drainer.join()
    stderr = b"".join(stderr_chunks).decode("utf-8", "replace")
    if returncode != 0:
        raise PostgresError("pg_restore failed: %s" % stderr.strip()[-2000:], where=argv[0],
                            fix="read the message; missing roles can be restored with restore_globals or skipped "
                            "with no_owner; the target database was left unchanged")


def _restore_globals(context, manifest, info) -> list[str]:
    """Roles and tablespaces via psql. 'already exists' errors are expected and reported, not fatal."""
    obj = find_object(manifest, "globals")
    reader = open_object(context, manifest, obj)
    argv = [context.postgres.program("psql", info["major"]), "-X", "-q", "--no-password", "-f", "-"]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=context.postgres.env())
    try:
        while True:
            chunk = reader.read(CHUNK_SIZE)
            if not chunk:
                break
            process.stdin.write(chunk)
        reader.finish()
    finally:
        process.stdin.close()
        reader.close()
    errors = [line for line in process.stderr.read().decode("utf-8", "replace").splitlines() if "ERROR" in line]
    process.wait()
    return errors
