# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The foundation's promises, each proven against real parts.

A real PostgreSQL 15 cluster, a real moto S3/KMS server over HTTP, real ``pg_dump``,
``pg_restore`` and ``aws-encryption-cli``: backup, list, verify and restore through the
engine (``Context.from_settings`` and the operation functions), on the filesystem and
the S3 repository, with a local key file and with KMS; then every failure the
foundation promises to handle: a ``pg_dump`` killed mid-stream, a wrong or missing key,
an unreachable S3, a flipped byte, swapped objects, a second run, a wrong password, a
restore over an existing database. Row counts are read back with ``psql`` by the test
itself, never only from the engine's own comparison.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid

import boto3
import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups
from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import generate_key_file
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError, EncryptionError, LockError, NotFoundError, PgsafeError, PostgresError, RepositoryError,
    RestoreError)
from ansible_collections.pgsafe.backup.plugins.module_utils.locking import RunLock
from ansible_collections.pgsafe.backup.plugins.module_utils.logical_backup import run_logical_backup
from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import run_logical_restore
from ansible_collections.pgsafe.backup.plugins.module_utils.sync import sync_repositories
from ansible_collections.pgsafe.backup.plugins.module_utils.verify import verify
from tests.support.esdk_cli import EncryptionCliUnavailable, decrypt_command, ensure_encryption_cli
from tests.support.pgcluster import free_port

CLUSTER = "main"
DUMP_OBJECT = "databases/app.dump.zst.enc"
GLOBALS_OBJECT = "globals.sql.zst.enc"
TABLES_SQL = ("SELECT table_schema || '.' || table_name FROM information_schema.tables "
              "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') "
              "ORDER BY 1")


# ---------------------------------------------------------------------------- helpers


def psql_counts(cluster, dbname: str) -> dict:
    """Exact row count of every user table of ``dbname``, read with psql (not the engine)."""
    tables = cluster.psql(TABLES_SQL, dbname).splitlines()
    assert tables, "database %s has no tables" % dbname
    union = " UNION ALL ".join("SELECT '%s', count(*) FROM %s" % (table, table) for table in tables)
    return {table: int(count) for table, count in
            (line.split("|") for line in cluster.psql(union, dbname).splitlines())}


def database_names(cluster) -> set:
    return set(cluster.psql("SELECT datname FROM pg_database").splitlines())


def drop_database(cluster, dbname: str) -> None:
    cluster.psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % dbname)


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def s3_spec(bucket: str, endpoint: str, **extra) -> dict:
    spec = {"type": "s3", "bucket": bucket, "endpoint_url": endpoint, "path_style": True, "region": "us-east-1"}
    spec.update(extra)
    return spec


def build_settings(request, tmp_path, cluster, repo_kind: str = "filesystem", key_kind: str = "key_file") -> dict:
    """The settings dict the CLI's YAML holds, for one repository kind and one key kind."""
    if repo_kind == "filesystem":
        repository = {"type": "filesystem", "path": str(tmp_path / "repo"), "create": True}
    else:
        repository = s3_spec(request.getfixturevalue("s3_bucket"), request.getfixturevalue("moto_endpoint"))
    if key_kind == "key_file":
        key_path = tmp_path / "keys" / "backup.key"
        if not key_path.exists():
            generate_key_file(str(key_path))
        encryption = {"key_files": [{"path": str(key_path)}]}
    else:
        encryption = {"kms_key_ids": [request.getfixturevalue("kms_key_arn")],
                      "kms_endpoint_url": request.getfixturevalue("moto_endpoint")}
    return {"cluster": CLUSTER, "state_dir": str(tmp_path / "state"), "postgres": cluster.conn_spec(),
            "repository": repository, "encryption": encryption}


def with_changes(settings: dict, **sections) -> dict:
    """A deep copy of settings with the given top-level sections replaced."""
    changed = json.loads(json.dumps(settings))
    for section, value in sections.items():
        changed[section] = value
    return changed


def backup_keys(repository) -> dict:
    """Every stored object under the cluster's backups, with its size."""
    return {info.key: info.size for info in repository.list(mf.backups_prefix(CLUSTER))}


def complete_ids(repository) -> list:
    return [entry["backup_id"] for entry in list_backups(repository, CLUSTER) if entry["status"] == "complete"]


def read_stored(settings: dict, key: str, endpoint: str | None = None) -> bytes:
    repository = settings["repository"]
    if repository["type"] == "filesystem":
        with open(os.path.join(repository["path"], key), "rb") as handle:
            return handle.read()
    return s3_client(endpoint or repository["endpoint_url"]).get_object(Bucket=repository["bucket"],
                                                                        Key=key)["Body"].read()


def write_stored(settings: dict, key: str, data: bytes) -> None:
    """Overwrite a stored object behind pgsafe's back (what disk rot or an operator does)."""
    repository = settings["repository"]
    if repository["type"] == "filesystem":
        path = os.path.join(repository["path"], key)
        with open(path, "r+b") as handle:
            handle.write(data)
            handle.truncate()
        return
    s3_client(repository["endpoint_url"]).put_object(Bucket=repository["bucket"], Key=key, Body=data)


def flip_byte(settings: dict, key: str) -> None:
    data = bytearray(read_stored(settings, key))
    data[len(data) // 2] ^= 0x01
    write_stored(settings, key, bytes(data))


def write_program(directory, name: str, body: str) -> str:
    """A shell program standing in for a PostgreSQL client program in postgres.bin_dir."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(str(directory), name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("#!/bin/bash\n" + body)
    os.chmod(path, 0o755)
    return path


def wait_for(path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError("%s did not appear within %.0f s" % (path, timeout))
        time.sleep(0.02)


def pause_program(real: str, flag: str, ack: str) -> str:
    """Body of a wrapper that announces itself, waits for the test's go-ahead, then runs ``real``."""
    return ('touch "%s"\nfor _ in $(seq 600); do [ -e "%s" ] && break; sleep 0.05; done\nexec "%s" "$@"\n'
            % (flag, ack, real))


class TcpProxy:
    """A TCP relay to the moto server that can be cut at any moment: S3 "goes away"."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.sockets: list = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _address = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for source, dest in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, dest), daemon=True).start()

    @staticmethod
    def _pump(source, dest) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                dest.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, dest):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        self.stopped.set()
        self.thread.join(timeout=5)
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


# ---------------------------------------------------------------------------- the flow itself


@pytest.mark.parametrize("key_kind", ["key_file", "kms"])
@pytest.mark.parametrize("repo_kind", ["filesystem", "s3"])
def test_backup_list_verify_restore(request, tmp_path, pg_cluster, repo_kind, key_kind):
    settings = build_settings(request, tmp_path, pg_cluster, repo_kind, key_kind)
    context = Context.from_settings(settings)
    source_counts = psql_counts(pg_cluster, "app")
    assert source_counts == pg_cluster.sample_counts

    result = run_logical_backup(context, ["app"])
    backup_id = result["backup_id"]
    assert result["objects"] == [DUMP_OBJECT, GLOBALS_OBJECT]

    entries = list_backups(context.repository, CLUSTER)
    assert [(entry["backup_id"], entry["status"], entry["databases"]) for entry in entries] == \
        [(backup_id, "complete", ["app"])]

    manifest = mf.read_manifest(context.repository, CLUSTER, backup_id)
    assert manifest["row_counts"]["app"] == source_counts
    keys = manifest["encryption"]["keys"]
    if key_kind == "kms":
        assert keys == [{"type": "aws-kms", "key_id": request.getfixturevalue("kms_key_arn")}]
    else:
        assert keys == [{"type": "raw-aes", "namespace": "pgsafe", "name": "backup"}]
    # The stored bytes are ciphertext: no table name from the dump appears in them.
    stored = read_stored(settings, mf.object_key(CLUSTER, backup_id, DUMP_OBJECT))
    assert hashlib.sha256(stored).hexdigest() == manifest["objects"][0]["sha256"]
    assert b"bookings" not in stored and b"example.com" not in stored

    report = verify(context, "decrypt")
    assert report["ok"], report["summary"]
    checked = {(check["object"], check["check"]) for check in report["backups"][0]["checks"]}
    assert {(DUMP_OBJECT, "decrypt"), (DUMP_OBJECT, "structure"), (GLOBALS_OBJECT, "sha256")} <= checked

    target = "restored_%s_%s" % (repo_kind, key_kind)
    try:
        restored = run_logical_restore(context, backup_id, "app", target)
        assert restored["row_counts_match"] and restored["target_database"] == target
        assert psql_counts(pg_cluster, target) == source_counts == manifest["row_counts"]["app"]
        # Not only counts: the content itself came back.
        query = "SELECT md5(string_agg(email || coalesce(bio, ''), ',' ORDER BY id)) FROM users"
        assert pg_cluster.psql(query, target) == pg_cluster.psql(query, "app")
    finally:
        drop_database(pg_cluster, target)


def test_emergency_decrypt_with_aws_encryption_cli(tmp_path, pg_cluster, moto_endpoint, s3_bucket, kms_key_arn):
    """README "Emergency restore by hand": boto3 + aws-encryption-cli + zstd + pg_restore, no pgsafe code."""
    try:
        cli = ensure_encryption_cli()
    except EncryptionCliUnavailable as exc:
        pytest.skip(str(exc))
    settings = {"cluster": CLUSTER, "state_dir": str(tmp_path / "state"), "postgres": pg_cluster.conn_spec(),
                "repository": s3_spec(s3_bucket, moto_endpoint, prefix="prod"),
                "encryption": {"kms_key_ids": [kms_key_arn], "kms_endpoint_url": moto_endpoint}}
    backup_id = run_logical_backup(Context.from_settings(settings), ["app"])["backup_id"]

    # From here on only the documented layout and public tools: what an operator types.
    s3 = s3_client(moto_endpoint)
    backup_dir = "prod/%s/backups/%s" % (CLUSTER, backup_id)
    manifest = json.loads(s3.get_object(Bucket=s3_bucket, Key=backup_dir + "/manifest.json")["Body"].read())
    entry = [obj for obj in manifest["objects"] if obj["name"] == DUMP_OBJECT][0]
    encrypted = tmp_path / "app.dump.zst.enc"
    s3.download_file(s3_bucket, "%s/%s" % (backup_dir, DUMP_OBJECT), str(encrypted))
    assert hashlib.sha256(encrypted.read_bytes()).hexdigest() == entry["sha256"]

    compressed = tmp_path / "app.dump.zst"
    context = {"pgsafe:cluster": CLUSTER, "pgsafe:backup_id": backup_id, "pgsafe:object": DUMP_OBJECT}
    assert entry["encryption_context"] == context
    env = dict(os.environ, AWS_ENDPOINT_URL=moto_endpoint)
    decrypted = subprocess.run(decrypt_command(cli, str(encrypted), str(compressed), kms_key_arn, context),
                               env=env, capture_output=True, text=True, timeout=120, check=False)
    # aws-encryption-cli reports some failures on stderr with exit code 0: check both.
    assert decrypted.returncode == 0 and "Operation failed" not in decrypted.stderr, decrypted.stderr
    assert compressed.stat().st_size > 0

    dump = tmp_path / "app.dump"
    zstd = shutil.which("zstd")
    if zstd:
        subprocess.run([zstd, "-q", "-d", str(compressed), "-o", str(dump)], check=True, timeout=60)
    else:
        import zstandard

        with open(compressed, "rb") as source, open(dump, "wb") as sink:
            zstandard.ZstdDecompressor().copy_stream(source, sink)
    assert dump.stat().st_size == entry["size_raw"]

    listing = subprocess.run([os.path.join(pg_cluster.bin_dir, "pg_restore"), "--list", str(dump)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert listing.returncode == 0, listing.stderr
    for table in ("TABLE public users", "TABLE public bookings", "TABLE public services", "TABLE audit events",
                  "TABLE DATA public bookings"):
        assert table in listing.stdout, listing.stdout

    # The same command with another backup's context is refused (and leaves no output).
    compressed.unlink()
    refused = subprocess.run(decrypt_command(cli, str(encrypted), str(compressed), kms_key_arn,
                                             dict(context, **{"pgsafe:backup_id": "20200101T000000Z-logical"})),
                             env=env, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode != 0 or "Operation failed" in refused.stderr
    assert not compressed.exists()


# ---------------------------------------------------------------------------- pg_dump dies


@pytest.mark.parametrize("repo_kind", ["filesystem", "s3"])
def test_pg_dump_killed_mid_stream_leaves_no_backup(request, tmp_path, pg_cluster, repo_kind):
    settings = build_settings(request, tmp_path, pg_cluster, repo_kind)
    real_pg_dump = os.path.join(pg_cluster.bin_dir, "pg_dump")
    # The real pg_dump streams into the pipeline; after 200 kB (of ~1 MB) it is cut off
    # and the program dies by SIGKILL, as an OOM-killed pg_dump does.
    wrapper_dir = tmp_path / "killing-bin"
    write_program(wrapper_dir, "pg_dump", '"%s" "$@" | head -c 200000\nkill -9 $$\n' % real_pg_dump)
    killing = with_changes(settings, postgres=dict(settings["postgres"], bin_dir=str(wrapper_dir)))
    context = Context.from_settings(killing)

    with pytest.raises(PostgresError) as info:
        run_logical_backup(context, ["app"])
    assert "pg_dump of app failed" in info.value.what and "signal 9" in info.value.what
    assert "re-run" in info.value.fix
    assert info.value.exit_code == 5

    stored = backup_keys(context.repository)
    assert not [key for key in stored if key.endswith("/" + mf.MANIFEST_NAME)], stored
    assert not [key for key in stored if key.endswith(DUMP_OBJECT)], stored
    assert complete_ids(context.repository) == []
    with pytest.raises(NotFoundError):
        run_logical_restore(context, "latest", "app", "never_restored")
    assert "never_restored" not in database_names(pg_cluster)

    # The next normal run is not blocked by anything the killed one left.
    context = Context.from_settings(settings)
    backup_id = run_logical_backup(context, ["app"])["backup_id"]
    assert complete_ids(context.repository) == [backup_id]
    assert verify(context, "decrypt")["ok"]


# ---------------------------------------------------------------------------- keys


def test_wrong_key_file_with_the_same_name(request, tmp_path, pg_cluster):
    settings = build_settings(request, tmp_path, pg_cluster)
    context = Context.from_settings(settings)
    backup_id = run_logical_backup(context, ["app"])["backup_id"]
    before = backup_keys(context.repository)

    other_key = str(tmp_path / "other-host" / "backup.key")  # same name "backup", other key material
    generate_key_file(other_key)
    wrong = Context.from_settings(with_changes(settings, encryption={"key_files": [{"path": other_key}]}))

    report = verify(wrong, "decrypt", [backup_id])
    assert not report["ok"]
    failed = {(failure["backup_id"], failure["object"], failure["check"]) for failure in report["failures"]}
    assert failed == {(backup_id, DUMP_OBJECT, "decrypt"), (backup_id, GLOBALS_OBJECT, "decrypt")}
    message = report["failures"][0]["message"]
    assert other_key in message and "same name, different key material" in message
    assert "configure one of the keys it is wrapped for" in message

    with pytest.raises(EncryptionError) as info:
        run_logical_restore(wrong, backup_id, "app", "wrong_key_target")
    assert other_key in info.value.what and "encryption.key_files" in info.value.fix
    assert not {name for name in database_names(pg_cluster) if name.startswith("wrong_key_target")}

    # Nothing was deleted, and the right key still reads everything.
    after = backup_keys(context.repository)
    assert {key: size for key, size in after.items() if key in before} == before
    assert complete_ids(context.repository) == [backup_id]
    assert verify(context, "decrypt", [backup_id])["ok"]


def test_missing_key_file_is_refused_before_anything_runs(request, tmp_path, pg_cluster):
    settings = build_settings(request, tmp_path, pg_cluster)
    context = Context.from_settings(settings)
    backup_id = run_logical_backup(context, ["app"])["backup_id"]
    before = backup_keys(context.repository)

    missing = str(tmp_path / "keys" / "gone.key")
    for need_postgres in (True, False):  # backup/restore, and verify
        with pytest.raises((EncryptionError, ConfigError)) as info:
            Context.from_settings(with_changes(settings, encryption={"key_files": [{"path": missing}]}),
                                  need_postgres=need_postgres)
        assert info.value.where == missing and "does not exist" in info.value.what
        assert "pgsafe key generate %s" % missing in info.value.fix

    # A key that group/others can read is refused too, with the chmod that fixes it.
    loose = str(tmp_path / "keys" / "backup.key")
    os.chmod(loose, 0o644)
    with pytest.raises(EncryptionError) as info:
        Context.from_settings(settings)
    assert info.value.where == loose and info.value.fix == "chmod 600 %s" % loose
    os.chmod(loose, 0o600)

    assert backup_keys(context.repository) == before
    assert complete_ids(context.repository) == [backup_id]


# ---------------------------------------------------------------------------- S3 unreachable


def test_s3_unreachable_fails_fast_and_names_the_endpoint(tmp_path, pg_cluster, s3_bucket, key_file):
    closed = "http://127.0.0.1:%d" % free_port()  # nothing listens there
    settings = {"cluster": CLUSTER, "state_dir": str(tmp_path / "state"), "postgres": pg_cluster.conn_spec(),
                "repository": s3_spec(s3_bucket, closed, connect_timeout=1, read_timeout=1, max_attempts=1),
                "encryption": {"key_files": [{"path": key_file}]}}
    context = Context.from_settings(settings)
    started = time.monotonic()
    with pytest.raises(RepositoryError) as info:
        run_logical_backup(context, ["app"])
    assert time.monotonic() - started < 10
    assert closed in info.value.what and "could not reach" in info.value.what
    assert "endpoint_url" in info.value.fix and info.value.exit_code == 3
    # The lock was released: the failed run does not block the next one.
    RunLock(settings["state_dir"], CLUSTER, "backup-logical").acquire().release()


def test_s3_lost_mid_backup_counts_nothing_complete(tmp_path, pg_cluster, moto_endpoint, s3_bucket, key_file):
    """S3 answers while the database is dumped, then vanishes before the backup can finish."""
    proxy = TcpProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    through_proxy = "http://127.0.0.1:%d" % proxy.port
    flag, ack = str(tmp_path / "globals-started"), str(tmp_path / "s3-gone")
    # pg_dumpall runs after the app dump is committed: cut S3 exactly then.
    write_program(tmp_path / "bin", "pg_dumpall",
                  pause_program(os.path.join(pg_cluster.bin_dir, "pg_dumpall"), flag, ack))
    settings = {"cluster": CLUSTER, "state_dir": str(tmp_path / "state"),
                "postgres": dict(pg_cluster.conn_spec(), bin_dir=str(tmp_path / "bin")),
                "repository": s3_spec(s3_bucket, through_proxy, connect_timeout=1, read_timeout=2, max_attempts=1),
                "encryption": {"key_files": [{"path": key_file}]}}

    def cut_when_globals_start() -> None:
        wait_for(flag)
        proxy.stop()
        open(ack, "w", encoding="utf-8").close()

    cutter = threading.Thread(target=cut_when_globals_start, daemon=True)
    cutter.start()
    started = time.monotonic()
    try:
        with pytest.raises(RepositoryError) as info:
            run_logical_backup(Context.from_settings(settings), ["app"])
    finally:
        if not os.path.exists(ack):
            open(ack, "w", encoding="utf-8").close()
        proxy.stop()
    cutter.join(timeout=5)
    assert time.monotonic() - started < 20
    assert through_proxy in info.value.message

    # Seen through the real endpoint: the dump object got there, the manifest never did.
    direct = Context.from_settings(dict(settings, repository=s3_spec(s3_bucket, moto_endpoint)))
    stored = backup_keys(direct.repository)
    assert [key for key in stored if key.endswith(DUMP_OBJECT)], stored
    assert not [key for key in stored if key.endswith(mf.MANIFEST_NAME)], stored
    assert [entry["status"] for entry in list_backups(direct.repository, CLUSTER)] == ["incomplete"]
    assert not verify(direct, "decrypt")["ok"]
    with pytest.raises(NotFoundError):
        run_logical_restore(direct, "latest", "app", "never_restored")


# ---------------------------------------------------------------------------- corrupted objects


@pytest.mark.parametrize("repo_kind", ["filesystem", "s3"])
def test_flipped_byte_is_caught_by_verify(request, tmp_path, pg_cluster, repo_kind):
    settings = build_settings(request, tmp_path, pg_cluster, repo_kind)
    context = Context.from_settings(settings)
    backup_id = run_logical_backup(context, ["app"])["backup_id"]
    assert verify(context, "integrity", [backup_id])["ok"]
    flip_byte(settings, mf.object_key(CLUSTER, backup_id, DUMP_OBJECT))

    integrity = verify(context, "integrity", [backup_id])
    assert not integrity["ok"]
    assert [(f["backup_id"], f["object"], f["check"]) for f in integrity["failures"]] == \
        [(backup_id, DUMP_OBJECT, "sha256")]
    assert "SHA-256" in integrity["failures"][0]["message"]
    assert "%s %s [sha256]" % (backup_id, DUMP_OBJECT) in integrity["summary"]

    decrypt = verify(context, "decrypt", [backup_id])
    assert [(f["backup_id"], f["object"], f["check"]) for f in decrypt["failures"]] == \
        [(backup_id, DUMP_OBJECT, "decrypt")]
    assert "failed authentication" in decrypt["failures"][0]["message"]

    # The failure is recorded beside the backup, so `list` shows it.
    entry = list_backups(context.repository, CLUSTER)[0]
    assert entry["verification"]["ok"] is False and entry["verification"]["level"] == "decrypt"


def test_swapped_object_is_caught_by_the_encryption_context(request, tmp_path, pg_cluster):
    settings = build_settings(request, tmp_path, pg_cluster)
    context = Context.from_settings(settings)
    first = run_logical_backup(context, ["app"])["backup_id"]
    second = run_logical_backup(context, ["app"])["backup_id"]
    assert first != second

    # Put the first backup's dump under the second's name and make the second's manifest
    # agree on size and SHA-256: only the encryption context can still tell.
    first_dump = read_stored(settings, mf.object_key(CLUSTER, first, DUMP_OBJECT))
    write_stored(settings, mf.object_key(CLUSTER, second, DUMP_OBJECT), first_dump)
    manifest = mf.read_manifest(context.repository, CLUSTER, second)
    for obj in manifest["objects"]:
        if obj["name"] == DUMP_OBJECT:
            obj["sha256"] = hashlib.sha256(first_dump).hexdigest()
            obj["size_stored"] = len(first_dump)
    context.repository.put_bytes(mf.manifest_key(CLUSTER, second), mf.dumps(manifest))

    assert verify(context, "integrity", [second])["ok"]
    report = verify(context, "decrypt", [second])
    assert [(f["backup_id"], f["object"], f["check"]) for f in report["failures"]] == \
        [(second, DUMP_OBJECT, "decrypt")]
    message = report["failures"][0]["message"]
    assert "encryption context mismatch" in message and first in message and second in message

    with pytest.raises(EncryptionError, match="encryption context mismatch"):
        run_logical_restore(context, second, "app", "swapped_target")
    assert not {name for name in database_names(pg_cluster) if name.startswith("swapped_target")}
    assert verify(context, "decrypt", [first])["ok"]


# ---------------------------------------------------------------------------- runs and connections


def test_second_run_is_refused_while_the_lock_is_held(request, tmp_path, pg_cluster):
    settings = build_settings(request, tmp_path, pg_cluster)
    context = Context.from_settings(settings)
    lock = RunLock(settings["state_dir"], CLUSTER, "backup-logical").acquire()
    try:
        with pytest.raises(LockError) as info:
            run_logical_backup(context, ["app"])
    finally:
        lock.release()
    assert "pid %d " % os.getpid() in info.value.what and info.value.exit_code == 6
    assert "wait for it to finish" in info.value.fix
    assert backup_keys(context.repository) == {}
    # Released: the next run goes through.
    backup_id = run_logical_backup(context, ["app"])["backup_id"]
    assert complete_ids(context.repository) == [backup_id]


def test_database_that_does_not_exist(request, tmp_path, pg_cluster):
    settings = build_settings(request, tmp_path, pg_cluster)
    context = Context.from_settings(settings)
    with pytest.raises(ConfigError) as info:
        run_logical_backup(context, ["app", "no_such_db"])
    assert "no_such_db" in info.value.what and "app" in info.value.fix

    # The maintenance database itself missing: a connection error with the fix.
    wrong_db = Context.from_settings(with_changes(settings, postgres=dict(settings["postgres"], dbname="nowhere")))
    with pytest.raises(PostgresError) as info:
        run_logical_backup(wrong_db, ["app"])
    assert '"nowhere" does not exist' in info.value.what and "create the database" in info.value.fix
    assert backup_keys(context.repository) == {}


def _all_cmdlines() -> list:
    lines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    lines.append(handle.read().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                pass
    return lines


def test_password_authentication(tmp_path, fresh_cluster, caplog):
    cluster = fresh_cluster
    password = "pw-%s" % uuid.uuid4().hex
    cluster.psql("CREATE ROLE backup_op LOGIN SUPERUSER PASSWORD '%s'" % password)
    cluster.psql("CREATE DATABASE shop")
    cluster.psql("CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 321) g", "shop")
    # The test's own psql keeps trust as postgres; every other role must give a password.
    with open(os.path.join(cluster.datadir, "pg_hba.conf"), "w", encoding="utf-8") as hba:
        hba.write("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                  "host all all 127.0.0.1/32 scram-sha-256\n")
    cluster.psql("SELECT pg_reload_conf()")

    key_path = str(tmp_path / "keys" / "backup.key")
    generate_key_file(key_path)
    flag, ack = str(tmp_path / "dump-started"), str(tmp_path / "go")
    write_program(tmp_path / "bin", "pg_dump", pause_program(os.path.join(cluster.bin_dir, "pg_dump"), flag, ack))
    postgres = {"host": cluster.host, "port": cluster.port, "user": "backup_op", "bin_dir": str(tmp_path / "bin")}
    settings = {"cluster": CLUSTER, "state_dir": str(tmp_path / "state"),
                "repository": {"type": "filesystem", "path": str(tmp_path / "repo"), "create": True},
                "encryption": {"key_files": [{"path": key_path}]}}
    caplog.set_level(logging.DEBUG, logger="pgsafe")

    wrong_password = "wrong-%s" % uuid.uuid4().hex
    wrong = Context.from_settings(dict(settings, postgres=dict(postgres, password=wrong_password)))
    with pytest.raises(PostgresError) as info:
        run_logical_backup(wrong, ["shop"])
    assert "password authentication failed" in info.value.what
    assert "password" in info.value.fix and "pg_hba.conf" in info.value.fix
    assert wrong_password not in info.value.message

    # The right password: while pg_dump runs, no process's argv holds it.
    seen: list = []

    def watch() -> None:
        wait_for(flag)
        seen.extend(_all_cmdlines())
        open(ack, "w", encoding="utf-8").close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    right = Context.from_settings(dict(settings, postgres=dict(postgres, password=password)))
    try:
        result = run_logical_backup(right, ["shop"])
    finally:
        if not os.path.exists(ack):
            open(ack, "w", encoding="utf-8").close()
    watcher.join(timeout=5)
    dumps = [line for line in seen if "pg_dump" in line and "--snapshot=" in line]
    assert dumps, "pg_dump was not seen running"
    assert not [line for line in seen if password in line]
    assert result["row_counts"] == {"shop": {"public.orders": 321}}

    manifest_bytes = right.repository.get_bytes(mf.manifest_key(CLUSTER, result["backup_id"]))
    assert password.encode() not in manifest_bytes
    assert password not in caplog.text and wrong_password not in caplog.text
    assert password not in repr(right.postgres)


# ---------------------------------------------------------------------------- sync


def test_sync_push_copies_complete_backups_and_pull_restores(request, tmp_path, pg_cluster, moto_endpoint, s3_bucket):
    settings = build_settings(request, tmp_path, pg_cluster)
    settings["copies"] = [dict(s3_spec(s3_bucket, moto_endpoint), name="cloud")]
    context = Context.from_settings(settings)
    (cloud,) = context.copies()
    backup_id = run_logical_backup(context, ["app"])["backup_id"]
    # A run that died before its manifest: an object, no manifest.
    incomplete = "20200101T000000Z-logical"
    context.repository.put_bytes(mf.object_key(CLUSTER, incomplete, DUMP_OBJECT), b"half a dump")

    pushed = sync_repositories(context.repository, cloud, CLUSTER, "push")
    assert pushed["changed"] is True
    assert [item["backup_id"] for item in pushed["copied"]] == [backup_id]
    assert [item["backup_id"] for item in pushed["skipped_incomplete"]] == [incomplete]
    assert sorted(pushed["copied"][0]["objects"]) == sorted([DUMP_OBJECT, GLOBALS_OBJECT, mf.MANIFEST_NAME])
    remote_keys = backup_keys(cloud)
    assert not [key for key in remote_keys if incomplete in key]
    assert remote_keys == {key: size for key, size in backup_keys(context.repository).items() if incomplete not in key}
    assert complete_ids(cloud) == [backup_id]

    again = sync_repositories(context.repository, cloud, CLUSTER, "push")
    assert again["changed"] is False and again["copied"] == [] and again["objects_copied"] == 0
    assert [item["backup_id"] for item in again["unchanged"]] == [backup_id]

    # A new host with an empty repository pulls the copy and restores from it.
    pulled_settings = with_changes(settings, repository={"type": "filesystem", "path": str(tmp_path / "pulled"),
                                                         "create": True})
    pulled = Context.from_settings(pulled_settings)
    result = sync_repositories(pulled.repository, cloud, CLUSTER, "pull")
    assert [item["backup_id"] for item in result["copied"]] == [backup_id]
    assert complete_ids(pulled.repository) == [backup_id]
    try:
        run_logical_restore(pulled, backup_id, "app", "app_from_pull")
        assert psql_counts(pg_cluster, "app_from_pull") == psql_counts(pg_cluster, "app")
    finally:
        drop_database(pg_cluster, "app_from_pull")


# ---------------------------------------------------------------------------- restore over a database


def test_restore_over_an_existing_database(request, tmp_path, pg_cluster):
    settings = build_settings(request, tmp_path, pg_cluster)
    context = Context.from_settings(settings)
    backup_id = run_logical_backup(context, ["app"])["backup_id"]
    source_counts = psql_counts(pg_cluster, "app")
    target = "app_overwrite"
    try:
        run_logical_restore(context, backup_id, "app", target)
        assert psql_counts(pg_cluster, target) == source_counts

        # Someone's work in the target since: it must not be overwritten without force.
        pg_cluster.psql("DELETE FROM bookings WHERE id > 100; INSERT INTO services (name, price) "
                        "VALUES ('marker', 1)", target)
        changed_counts = psql_counts(pg_cluster, target)
        with pytest.raises(RestoreError) as info:
            run_logical_restore(context, backup_id, "app", target)
        assert "already exists" in info.value.what and "force" in info.value.fix
        assert psql_counts(pg_cluster, target) == changed_counts

        run_logical_restore(context, backup_id, "app", target, force=True)
        assert psql_counts(pg_cluster, target) == source_counts
        assert pg_cluster.psql("SELECT count(*) FROM services WHERE name = 'marker'", target) == "0"

        # A restore that fails (corrupt object) leaves the existing database as it was.
        pg_cluster.psql("INSERT INTO services (name, price) VALUES ('kept', 2)", target)
        kept_counts = psql_counts(pg_cluster, target)
        flip_byte(settings, mf.object_key(CLUSTER, backup_id, DUMP_OBJECT))
        with pytest.raises(PgsafeError) as info:
            run_logical_restore(context, backup_id, "app", target, force=True)
        assert info.value.category in ("encryption", "verification")
        assert psql_counts(pg_cluster, target) == kept_counts
        assert pg_cluster.psql("SELECT count(*) FROM services WHERE name = 'kept'", target) == "1"
        assert not {name for name in database_names(pg_cluster) if name.startswith(target + "_pgsafe_")}
    finally:
        drop_database(pg_cluster, target)


def test_failed_restore_names_the_backup_and_the_object(request, tmp_path, pg_cluster):
    settings = build_settings(request, tmp_path, pg_cluster)
    context = Context.from_settings(settings)
    backup_id = run_logical_backup(context, ["app"])["backup_id"]
    key = mf.object_key(CLUSTER, backup_id, DUMP_OBJECT)
    flip_byte(settings, key)
    with pytest.raises(EncryptionError) as info:
        run_logical_restore(context, backup_id, "app", "corrupt_target")
    assert "failed authentication" in info.value.what
    # What an operator reads on stderr must say which object of which backup is bad.
    assert key in info.value.message
