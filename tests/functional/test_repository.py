# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Both repository kinds against real storage: a directory, and a moto S3 server over HTTP."""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import stat
import subprocess
import time
import uuid

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError,
    NotFoundError,
    RepositoryError,
)
from ansible_collections.pgsafe.backup.plugins.module_utils.repository import open_repository
from ansible_collections.pgsafe.backup.plugins.module_utils.repository_fs import FilesystemRepository
from ansible_collections.pgsafe.backup.plugins.module_utils.repository_s3 import S3Repository

MIB = 1024 * 1024


def _s3_client(endpoint: str):
    import boto3
    import botocore.config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )


def _payload(size: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible-looking bytes (repeats every MiB)."""
    block = hashlib.sha256(b"seed-%d" % seed).digest() * (MIB // 32)
    return (block * (size // MIB + 1))[:size]


def _s3_spec(endpoint: str, bucket: str, **extra) -> dict:
    spec = {
        "type": "s3",
        "bucket": bucket,
        "prefix": "pfx/main",
        "endpoint_url": endpoint,
        "path_style": True,
        "part_size_mb": 5,
        "max_concurrency": 2,
    }
    spec.update(extra)
    return spec


@pytest.fixture(params=["filesystem", "s3"])
def repo(request, tmp_path):
    if request.param == "filesystem":
        return open_repository({"type": "filesystem", "path": str(tmp_path / "repo"), "create": True})
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return open_repository(_s3_spec(endpoint, bucket))


def _temp_files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _dirs, files in os.walk(root) for f in files if f.startswith(".tmp-")]


def _assert_no_leftovers(repo, key: str) -> None:
    assert repo.stat(key) is None
    assert not list(repo.list())
    assert repo.abandoned_uploads(0) == []
    if isinstance(repo, FilesystemRepository):
        assert _temp_files(repo.root) == []


# --- both kinds -------------------------------------------------------------------------


def test_round_trip_small(repo):
    data = b"manifest body\n"
    info = repo.put_bytes("c1/backups/b1/manifest.json", data)
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert repo.get_bytes("c1/backups/b1/manifest.json") == data
    stat_info = repo.stat("c1/backups/b1/manifest.json")
    assert stat_info.size == len(data)
    assert abs(stat_info.modified - time.time()) < 120
    if repo.kind == "s3":
        assert stat_info.sha256 == hashlib.sha256(data).hexdigest()


def test_round_trip_multipart_with_sha256(repo):
    data = _payload(12 * MIB + 123)
    digest = hashlib.sha256(data).hexdigest()
    writer = repo.open_writer("c1/backups/b1/base.tar.zst", sha256=digest)
    with writer:
        for offset in range(0, len(data), MIB):
            writer.write(data[offset : offset + MIB])
        info = writer.commit()
    assert info.size == len(data) and info.sha256 == digest
    if repo.kind == "s3":
        assert writer.upload_id is not None  # it really went multipart
        assert repo.stat("c1/backups/b1/base.tar.zst").sha256 == digest
    reader = repo.open_reader("c1/backups/b1/base.tar.zst")
    try:
        first = reader.read(1000)
        rest = reader.read()
    finally:
        reader.close()
    assert first + rest == data
    assert repo.abandoned_uploads(0) == []


@pytest.mark.parametrize("size", [100, 7 * MIB], ids=["small", "multipart"])
def test_writer_raising_mid_stream_leaves_nothing(repo, size):
    with pytest.raises(RuntimeError, match="producer died"):
        with repo.open_writer("c1/backups/b1/data") as writer:
            writer.write(_payload(size))
            raise RuntimeError("producer died")
    _assert_no_leftovers(repo, "c1/backups/b1/data")
    writer.abort()  # twice is fine


@pytest.mark.parametrize("size", [100, 7 * MIB], ids=["small", "multipart"])
def test_writer_without_commit_leaves_nothing(repo, size):
    with repo.open_writer("c1/backups/b1/data") as writer:
        writer.write(_payload(size))
    _assert_no_leftovers(repo, "c1/backups/b1/data")


@pytest.mark.parametrize("size", [100, 11 * MIB], ids=["small", "multipart"])
def test_sha256_mismatch_refused(repo, size):
    writer = repo.open_writer("c1/x", sha256="0" * 64)
    with pytest.raises(RepositoryError, match="sha256"):
        with writer:
            writer.write(_payload(size))
            writer.commit()
    _assert_no_leftovers(repo, "c1/x")


def test_put_if_absent_twice(repo):
    assert repo.put_if_absent("c1/wal/1/000000010000000000000001", b"first") is True
    assert repo.put_if_absent("c1/wal/1/000000010000000000000001", b"second") is False
    assert repo.get_bytes("c1/wal/1/000000010000000000000001") == b"first"
    if repo.kind == "filesystem":
        assert _temp_files(repo.root) == []


def test_list_order_and_prefix(repo):
    keys = ["b", "a/c/d", "a-b", "a/b", "aa/z", "a/b2"]
    for key in keys:
        repo.put_bytes(key, key.encode())
    assert [info.key for info in repo.list()] == sorted(keys)
    assert [info.key for info in repo.list("a/")] == ["a/b", "a/b2", "a/c/d"]
    assert [info.key for info in repo.list("a/b")] == ["a/b", "a/b2"]
    assert [info.key for info in repo.list("a")] == ["a-b", "a/b", "a/b2", "a/c/d", "aa/z"]
    assert list(repo.list("nothing/")) == []
    assert repo.list_dirs("a/") == ["c"]
    sizes = {info.key: info.size for info in repo.list()}
    assert sizes["a/c/d"] == 5
    assert repo.usage_bytes("a/") == 3 + 4 + 5


def test_delete(repo):
    repo.put_bytes("c1/backups/b1/one", b"1")
    repo.put_bytes("c1/backups/b1/two", b"2")
    repo.put_bytes("c1/keep", b"k")
    repo.delete("c1/backups/b1/one")
    repo.delete("c1/backups/b1/one")  # absent: not an error
    repo.delete("never/was")
    assert repo.stat("c1/backups/b1/one") is None
    assert repo.delete_prefix("c1/backups/") == ["c1/backups/b1/two"]
    assert [info.key for info in repo.list()] == ["c1/keep"]
    if repo.kind == "filesystem":
        assert not os.path.exists(os.path.join(repo.root, "c1", "backups"))
        assert os.path.isdir(repo.root)


def test_missing_object(repo):
    assert repo.stat("c1/none") is None
    assert not repo.exists("c1/none")
    with pytest.raises(NotFoundError) as caught:
        repo.open_reader("c1/none")
    assert "c1/none" in str(caught.value)
    if repo.kind == "s3":
        assert repo.bucket in str(caught.value)


def test_keys_cannot_escape(repo):
    with pytest.raises(ConfigError):
        repo.put_bytes("../outside", b"x")


# --- filesystem only ----------------------------------------------------------------------


def test_fs_modes_and_no_temp_files(tmp_path):
    root = tmp_path / "repo"
    repo = FilesystemRepository.from_spec("local", {"path": str(root), "create": True})
    old_umask = os.umask(0)
    try:
        repo.put_bytes("c1/backups/b1/manifest.json", b"{}")
        with repo.open_writer("c1/backups/b1/big") as writer:
            writer.write(_payload(2 * MIB))
            writer.commit()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    for directory in ("c1", "c1/backups", "c1/backups/b1"):
        assert stat.S_IMODE(os.stat(root / directory).st_mode) == 0o700, directory
    for name in ("manifest.json", "big"):
        assert stat.S_IMODE(os.stat(root / "c1/backups/b1" / name).st_mode) == 0o600, name
    assert _temp_files(str(root)) == []
    assert repo.capacity_bytes() > 0


def test_fs_listing_skips_temp_files_and_abandoned_cleanup(tmp_path):
    repo = FilesystemRepository.from_spec("local", {"path": str(tmp_path), "create": True})
    writer = repo.open_writer("c1/wal/1/seg")
    writer.write(b"half")
    assert list(repo.list()) == []  # an unfinished write is invisible
    assert repo.abandoned_uploads(3600) == []
    temp_file = _temp_files(str(tmp_path))[0]
    old = time.time() - 7200
    os.utime(temp_file, (old, old))
    abandoned = repo.abandoned_uploads(3600)
    assert len(abandoned) == 1 and abandoned[0].startswith("c1/wal/1/.tmp-seg")
    assert repo.remove_abandoned_uploads(3600) == abandoned
    assert _temp_files(str(tmp_path)) == []
    writer.abort()


@pytest.mark.parametrize(
    "spec, where",
    [
        ({"type": "filesystem"}, "repository.path"),
        ({"type": "filesystem", "path": "relative/dir"}, "repository.path"),
    ],
)
def test_fs_config_errors(spec, where):
    with pytest.raises(ConfigError) as caught:
        open_repository(spec)
    assert caught.value.where == where


def test_fs_missing_root_without_create(tmp_path):
    with pytest.raises(RepositoryError, match="does not exist"):
        open_repository({"type": "filesystem", "path": str(tmp_path / "absent")})


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)], capture_output=True, text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % result.stderr.strip())
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_fs_full_volume(small_tmpfs):
    repo = FilesystemRepository.from_spec("small", {"path": str(small_tmpfs)})
    with pytest.raises(RepositoryError) as caught:
        with repo.open_writer("c1/backups/b1/big") as writer:
            for _part in range(4):
                writer.write(_payload(MIB))
            writer.commit()
    message = str(caught.value)
    assert "full" in message and str(small_tmpfs) in message
    assert "bytes" in message and "prune" in message
    assert repo.stat("c1/backups/b1/big") is None
    assert _temp_files(str(small_tmpfs)) == []
    # put_if_absent on a full volume fails loudly and leaves nothing either.
    with pytest.raises(RepositoryError, match="full"):
        repo.put_if_absent("c1/wal/seg", _payload(3 * MIB))
    assert repo.stat("c1/wal/seg") is None
    assert _temp_files(str(small_tmpfs)) == []


def test_fs_read_only_volume(tmp_path):
    # Root ignores directory modes, so refusal comes from a read-only mount instead.
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount_point)], capture_output=True, text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % result.stderr.strip())
    try:
        repo = FilesystemRepository.from_spec("ro", {"path": str(mount_point)})
        with pytest.raises(RepositoryError) as caught:
            repo.put_bytes("c1/x", b"x")
        assert "permission denied" in str(caught.value) and "read-only" in str(caught.value)
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_s3_without_boto3_names_the_package():
    """module_utils must import without boto3 (ansible-test sanity) and say what to install."""
    import sys

    code = (
        "import sys; sys.modules['boto3'] = None; sys.modules['botocore'] = None\n"
        "from ansible_collections.pgsafe.backup.plugins.module_utils import repository_s3 as s3\n"
        "from ansible_collections.pgsafe.backup.plugins.module_utils.errors import DependencyError\n"
        "repo = s3.S3Repository.from_spec('x', {'bucket': 'b'})\n"
        "try:\n    repo.stat('k')\nexcept DependencyError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "'boto3' is not installed" in result.stdout


# --- S3 only ------------------------------------------------------------------------------


def test_s3_prefix_isolation(moto_endpoint, s3_bucket):
    repo = open_repository(_s3_spec(moto_endpoint, s3_bucket, prefix="/team/main/"))
    other = open_repository(_s3_spec(moto_endpoint, s3_bucket, prefix="team/mainline"))
    repo.put_bytes("c1/a", b"a")
    other.put_bytes("c1/b", b"b")
    assert [info.key for info in repo.list()] == ["c1/a"]
    raw_keys = [entry["Key"] for entry in _s3_client(moto_endpoint).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert sorted(raw_keys) == ["team/main/c1/a", "team/mainline/c1/b"]
    assert repo.describe() == "s3://%s/team/main (endpoint %s)" % (s3_bucket, moto_endpoint)


def test_s3_bounded_memory(moto_endpoint, s3_bucket):
    repo = open_repository(_s3_spec(moto_endpoint, s3_bucket, part_size_mb=5, max_concurrency=2))
    data = _payload(31 * MIB)
    with repo.open_writer("c1/big") as writer:
        # One huge write as well as small ones: neither may buffer more than the window.
        writer.write(data[: 20 * MIB])
        for offset in range(20 * MIB, len(data), 256 * 1024):
            writer.write(data[offset : offset + 256 * 1024])
        writer.commit()
    part_size = 5 * MIB
    print("peak buffered bytes: %d (bound %d)" % (writer.peak_buffered_bytes, 3 * part_size))
    assert part_size <= writer.peak_buffered_bytes <= (2 + 1) * part_size
    assert writer.buffered_bytes == 0
    assert len(writer.completed_parts) == 7
    assert hashlib.sha256(repo.get_bytes("c1/big")).digest() == hashlib.sha256(data).digest()


def test_s3_unreachable_endpoint_fails_fast():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    endpoint = "http://127.0.0.1:%d" % closed_port
    repo = open_repository(
        {
            "type": "s3",
            "bucket": "nowhere",
            "endpoint_url": endpoint,
            "path_style": True,
            "access_key": "AKIAEXAMPLE",
            "secret_key": "very-secret-value-123",
            "session_token": "token-secret-456",
            "connect_timeout": 1,
            "read_timeout": 1,
            "max_attempts": 2,
        }
    )
    assert "very-secret-value-123" not in repr(vars(repo))  # before the client exists
    started = time.monotonic()
    with pytest.raises(RepositoryError) as caught:
        repo.put_bytes("c1/x", b"x")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert endpoint in message and "endpoint_url" in message
    for secret in ("very-secret-value-123", "token-secret-456"):
        assert secret not in message
        assert secret not in repr(repo) and secret not in repo.describe()
        assert secret not in repr(vars(repo))


def test_s3_no_such_bucket(moto_endpoint):
    repo = open_repository(_s3_spec(moto_endpoint, "pgsafe-missing-%s" % uuid.uuid4().hex[:8]))
    with pytest.raises(RepositoryError) as caught:
        repo.put_bytes("c1/x", b"x")
    assert repo.bucket in str(caught.value)
    assert "does not exist" in str(caught.value) and "repository.bucket" in str(caught.value)
    with pytest.raises(RepositoryError, match="does not exist"):
        list(repo.list())


def test_s3_object_lock_refuses_delete(moto_endpoint):
    bucket = "pgsafe-lock-%s" % uuid.uuid4().hex[:8]
    _s3_client(moto_endpoint).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    repo = open_repository(_s3_spec(moto_endpoint, bucket, object_lock_mode="COMPLIANCE", object_lock_days=2))
    committed = repo.put_bytes("c1/backups/b1/manifest.json", b"{}")
    info = repo.stat("c1/backups/b1/manifest.json")
    assert info.locked_until is not None and info.locked_until > time.time() + 86400
    assert abs(committed.locked_until - info.locked_until) < 60
    # Multipart objects send the same lock headers with CreateMultipartUpload, but
    # moto 5.2 drops them at CompleteMultipartUpload, so only the small object is checked.
    with pytest.raises(RepositoryError) as caught:
        repo.delete("c1/backups/b1/manifest.json")
    expected_day = datetime.datetime.fromtimestamp(info.locked_until, datetime.timezone.utc).strftime("%Y-%m-%d")
    assert "retention until %s" % expected_day in str(caught.value)
    assert repo.exists("c1/backups/b1/manifest.json")


def test_s3_abandoned_uploads(moto_endpoint, s3_bucket):
    repo = open_repository(_s3_spec(moto_endpoint, s3_bucket))
    client = _s3_client(moto_endpoint)
    client.create_multipart_upload(Bucket=s3_bucket, Key="pfx/main/c1/backups/b1/crashed")
    client.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/not-ours")
    # moto stamps every upload's Initiated with a fixed date in 2010, so age 0 and a
    # one-hour threshold both find it; the age filter itself is the same code as on AWS.
    assert repo.abandoned_uploads(3600) == ["c1/backups/b1/crashed"]
    assert repo.remove_abandoned_uploads(3600) == ["c1/backups/b1/crashed"]
    assert repo.abandoned_uploads(0) == []
    remaining = [upload["Key"] for upload in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])]
    assert remaining == ["elsewhere/not-ours"]


def test_s3_error_messages_name_the_fix():
    import botocore.exceptions

    repo = S3Repository.from_spec(
        "cloud", {"bucket": "backups", "prefix": "p", "secret_key": "sekrit-value", "access_key": "AKIAEXAMPLE"}
    )

    def client_error(code: str, status: int) -> Exception:
        return botocore.exceptions.ClientError(
            {"Error": {"Code": code, "Message": "nope"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
        )

    denied = str(repo._error(client_error("AccessDenied", 403), "put_object", "c1/x"))
    assert "s3:PutObject" in denied and "arn:aws:s3:::backups/p/c1/x" in denied and "IAM policy" in denied
    listing = str(repo._error(client_error("AccessDenied", 403), "list_objects_v2", None))
    assert "s3:ListBucket on arn:aws:s3:::backups " in listing
    credentials = str(repo._error(client_error("SignatureDoesNotMatch", 403), "put_object", "c1/x"))
    assert "check the access key and secret key" in credentials
    server = str(repo._error(client_error("InternalError", 500), "put_object", "c1/x"))
    assert "after 5 attempts" in server
    for message in (denied, listing, credentials, server):
        assert "sekrit-value" not in message


@pytest.mark.parametrize(
    "spec, where",
    [
        ({"type": "s3"}, "repository.bucket"),
        ({"bucket": "s3://b"}, "repository.bucket"),
        ({"bucket": "b", "endpoint_url": "127.0.0.1:9000"}, "repository.endpoint_url"),
        ({"bucket": "b", "endpoint_url": "ftp://host"}, "repository.endpoint_url"),
        ({"bucket": "b", "endpoint_url": "http://host:notaport"}, "repository.endpoint_url"),
        ({"bucket": "b", "endpoint_url": "http://host:9000/bucket"}, "repository.endpoint_url"),
        ({"bucket": "b", "part_size_mb": 4}, "repository.part_size_mb"),
        ({"bucket": "b", "max_concurrency": 0}, "repository.max_concurrency"),
        ({"bucket": "b", "sse": "rot13"}, "repository.sse"),
        ({"bucket": "b", "object_lock_mode": "FOREVER", "object_lock_days": 1}, "repository.object_lock_mode"),
        ({"bucket": "b", "object_lock_mode": "COMPLIANCE"}, "repository.object_lock_days"),
        ({"bucket": "b", "access_key": "AKIA"}, "repository.secret_key"),
    ],
)
def test_s3_config_errors(spec, where):
    with pytest.raises(ConfigError) as caught:
        open_repository(spec)
    assert caught.value.where == where


def test_s3_endpoint_with_credentials_is_not_echoed():
    with pytest.raises(ConfigError) as caught:
        open_repository({"bucket": "b", "endpoint_url": "http://user:hunter2@host:9000/x"})
    assert "hunter2" not in str(caught.value)
