# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Secrets stay secret: not in output or logs, not in process arguments, not in loose files.

* playbooks/backup.yml and playbooks/restore.yml run with ``-vvv`` against a cluster whose
  backup role has a real (scram-sha-256) password, with S3 (moto) credentials given once as
  module options and once through the environment; the CLI runs every command with
  ``--debug``. No password, secret key, session token or key material (the key file's
  base64, the raw key in hex) appears in any output, log file or registered result.
* While a backup runs (held on a table lock so pg_dump waits), ``/proc/*/cmdline`` of every
  process is polled: the password and the AWS secrets never appear in any argument list.
* Key files are 0600 in 0700 directories; repository and state directories are 0700 and
  hold nothing readable by others.
* The plaintext data keys (unwrapped here from the objects' headers with the local key) are
  nowhere in the repository, the S3 copy, the state directory or the logs; nor is row data.
* A manifest edited in the repository (it is plaintext) cannot make a restore accept other data.
* TLS: an https endpoint with a self-signed certificate is refused by default, with a
  message that names TLS/certificate verification and repository.ca_bundle; with the CA
  bundle given it is trusted.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import io
import json
import os
import re
import ssl
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest
import yaml
from test_cli import describe, pgsafe, write_config

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
BIN = os.path.dirname(sys.executable)
ROLE = "pgsafe_secret_user"


# --- what must never appear ---------------------------------------------------------------------

def key_material(key_path: str) -> list[bytes]:
    """The forms a key could leak in: base64 text as in the file, raw bytes, hex (both cases)."""
    with open(key_path, "rb") as handle:
        text = handle.read().strip()
    raw = base64.b64decode(text)
    assert len(raw) == 32
    return forms(raw)


def forms(raw: bytes) -> list[bytes]:
    hexed = binascii.hexlify(raw)
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), hexed, hexed.upper()]


def assert_absent(needles: dict, haystacks: dict) -> None:
    """No needle (name -> bytes or str) in any haystack (name -> bytes or str)."""
    for where, text in haystacks.items():
        blob = text.encode("utf-8", "replace") if isinstance(text, str) else text
        for what, needle in needles.items():
            needle = needle.encode("utf-8") if isinstance(needle, str) else needle
            assert needle not in blob, "%s leaked into %s" % (what, where)


def files_in(*roots: str) -> dict:
    found = {}
    for root in roots:
        for folder, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as handle:
                        found[path] = handle.read()
    return found


def bucket_bytes(endpoint: str, bucket: str) -> dict:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing-secret")
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found["s3://%s/%s" % (bucket, item["Key"])] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def data_keys(objects: dict, key_paths: list) -> list[bytes]:
    """Unwrap the data key of every encrypted object with the local key files (as any holder of one could)."""
    from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
    from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
    from aws_encryption_sdk.key_providers.raw import RawMasterKey, RawMasterKeyConfig

    from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import KEY_NAMESPACE, read_header

    masters = []
    for key_path in key_paths:
        with open(key_path, "rb") as handle:
            wrapping = base64.b64decode(handle.read().strip())
        masters.append((wrapping, RawMasterKey(config=RawMasterKeyConfig(
            key_id=os.path.splitext(os.path.basename(key_path))[0], provider_id=KEY_NAMESPACE,
            wrapping_key=WrappingKey(wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                                     wrapping_key=wrapping, wrapping_key_type=EncryptionKeyType.SYMMETRIC)))))
    found = []
    for name, blob in objects.items():
        if not name.endswith(".enc"):
            continue
        header, _raw = read_header(io.BytesIO(blob), name)
        wrapped = [edk for edk in header.encrypted_data_keys if edk.key_provider.provider_id == KEY_NAMESPACE][0]
        unwrapped = []
        for wrapping, master in masters:
            try:
                data_key = master.decrypt_data_key(wrapped, header.algorithm, header.encryption_context).data_key
            except Exception:  # pylint: disable=broad-except  # wrapped by the other key file
                continue
            assert len(data_key) == 32 and data_key != wrapping
            unwrapped.append(data_key)
        assert len(unwrapped) == 1, "%s: unwrapped by %d of the key files" % (name, len(unwrapped))
        found.extend(unwrapped)
    return found


class ProcWatch(threading.Thread):
    """Polls /proc/*/cmdline of every process; records any argument list holding a secret."""

    def __init__(self, secrets: dict):
        super().__init__(daemon=True)
        self.secrets = {name: value.encode("utf-8") for name, value in secrets.items()}
        self.halt = threading.Event()
        self.hits: list[tuple[str, str]] = []
        self.programs: set[str] = set()
        self.polls = 0

    def run(self) -> None:
        while not self.halt.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open("/proc/%s/cmdline" % pid, "rb") as handle:
                        cmdline = handle.read()
                except OSError:
                    continue
                if cmdline:
                    self.programs.add(os.path.basename(cmdline.split(b"\0", 1)[0]).decode("utf-8", "replace"))
                for name, secret in self.secrets.items():
                    if secret in cmdline:
                        self.hits.append((name, cmdline.replace(secret, b"<SECRET>").decode("utf-8", "replace")))
            self.polls += 1
            time.sleep(0.01)

    def __enter__(self) -> "ProcWatch":
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.halt.set()
        self.join(timeout=10)


class TableLock:
    """Holds ACCESS EXCLUSIVE on a table for ``seconds``: pg_dump (and the backup) wait meanwhile."""

    def __init__(self, cluster, dbname: str, table: str, seconds: float):
        import psycopg

        self.conn = psycopg.connect(host=cluster.host, port=cluster.port, user="postgres", dbname=dbname)
        self.conn.execute("LOCK TABLE %s IN ACCESS EXCLUSIVE MODE" % table)
        self.timer = threading.Timer(seconds, self.release)
        self.timer.start()

    def release(self) -> None:
        try:
            self.conn.rollback()
            self.conn.close()
        except Exception:  # pylint: disable=broad-except  # released twice
            pass


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secrets():
    return {"postgres password": "pw-%s" % uuid.uuid4().hex, "AWS secret key": "sk-%s" % uuid.uuid4().hex,
            "AWS session token": "tok-%s" % uuid.uuid4().hex, "env AWS secret key": "envsk-%s" % uuid.uuid4().hex,
            "env AWS session token": "envtok-%s" % uuid.uuid4().hex}


@pytest.fixture(scope="module")
def secured(pg_cluster, secrets):
    """pg_cluster with a superuser role that must log in with its scram-sha-256 password."""
    pg_cluster.psql("CREATE ROLE %s LOGIN SUPERUSER PASSWORD '%s'" % (ROLE, secrets["postgres password"]))
    hba = os.path.join(pg_cluster.datadir, "pg_hba.conf")
    with open(hba, "r", encoding="utf-8") as handle:
        original = handle.read()
    with open(hba, "w", encoding="utf-8") as handle:
        handle.write("host all %s 127.0.0.1/32 scram-sha-256\n" % ROLE + original)
    pg_cluster.psql("SELECT pg_reload_conf()")
    # The password is really checked: a wrong one is refused.
    env = dict(pg_cluster.env(), PGUSER=ROLE, PGPASSWORD="wrong")
    refused = subprocess.run([os.path.join(pg_cluster.bin_dir, "psql"), "-X", "-c", "SELECT 1"], env=env,
                             capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "password authentication failed" in refused.stderr
    return pg_cluster


def ansible_env(tmp_path, **extra) -> dict:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOG_PATH=str(tmp_path / "ansible.log"),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"), ANSIBLE_HOME=str(tmp_path / "ansible-home"))
    env.update(extra)
    return env


def write_inventory(tmp_path, cluster, secrets: dict, moto_endpoint: str, bucket: str, name: str,
                    credentials: bool) -> str:
    repository = {"name": "cloud", "type": "s3", "bucket": bucket, "endpoint_url": moto_endpoint,
                  "path_style": True, "region": "us-east-1"}
    if credentials:
        repository.update({"access_key": "AKIAPGSAFESECRETTEST", "secret_key": secrets["AWS secret key"],
                           "session_token": secrets["AWS session token"]})
    home = tmp_path / name
    inventory = {"all": {"hosts": {"localhost": {"ansible_connection": "local",
                                                 "ansible_python_interpreter": sys.executable}},
                         "vars": {"pgsafe_cluster": "secrets",
                                  "pgsafe_state_dir": str(home / "state"),
                                  "pgsafe_key_file": str(home / "keys" / "backup.key"),
                                  "pgsafe_repository": repository,
                                  "pgsafe_encryption": {"key_files": [{"path": str(home / "keys" / "backup.key")}]},
                                  "pgsafe_compression": {"algorithm": "zstd", "level": 3, "threads": 2},
                                  "pgsafe_postgres": {"login_host": cluster.host, "port": cluster.port,
                                                      "login_user": ROLE,
                                                      "login_password": secrets["postgres password"]},
                                  "pgsafe_databases": ["app"]}}}
    path = tmp_path / ("%s-inventory.yml" % name)
    path.write_text(yaml.safe_dump(inventory))
    os.chmod(path, 0o600)
    return str(path)


def playbook(inventory: str, name: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", inventory, "-vvv",
                           os.path.join(ROOT, "playbooks", name)] + list(extra),
                          env=env, capture_output=True, text=True, cwd=ROOT, check=False, timeout=300)


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- tests -----------------------------------------------------------------------------------------

def test_playbooks_with_vvv_leak_no_secret(tmp_path, secured, secrets, moto_endpoint, s3_bucket):
    cluster = secured
    env = ansible_env(tmp_path)
    inventory = write_inventory(tmp_path, cluster, secrets, moto_endpoint, s3_bucket, "options", credentials=True)
    with ProcWatch({key: value for key, value in secrets.items() if not key.startswith("env")}) as watch:
        lock = TableLock(cluster, "app", "bookings", 2.0)
        try:
            backup = playbook(inventory, "backup.yml", env)
        finally:
            lock.release()
    assert backup.returncode == 0, backup.stdout[-4000:] + backup.stderr[-2000:]
    assert "pg_dump" in watch.programs and watch.polls > 20, (watch.polls, sorted(watch.programs)[:50])
    assert not watch.hits, watch.hits
    restore = playbook(inventory, "restore.yml", env, "-e", "pgsafe_restore_database=app",
                       "-e", "pgsafe_restore_target=app_secret_restored")
    assert restore.returncode == 0, restore.stdout[-4000:] + restore.stderr[-2000:]
    assert "row counts match the backup: True" in restore.stdout
    assert cluster.psql("SELECT count(*) FROM users", "app_secret_restored") == str(
        cluster.sample_counts["public.users"])
    # The secrets reached the module (censored in the invocation shown by -vvv) ...
    assert '"secret_key": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in backup.stdout
    assert '"session_token": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in backup.stdout
    assert '"login_password": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in restore.stdout

    # ... with credentials from the environment instead of options.
    env_inventory = write_inventory(tmp_path, cluster, secrets, moto_endpoint, s3_bucket, "environment",
                                    credentials=False)
    from_env = playbook(env_inventory, "backup.yml", ansible_env(
        tmp_path, AWS_ACCESS_KEY_ID="AKIAPGSAFEENVTEST", AWS_SECRET_ACCESS_KEY=secrets["env AWS secret key"],
        AWS_SESSION_TOKEN=secrets["env AWS session token"]))
    assert from_env.returncode == 0, from_env.stdout[-4000:] + from_env.stderr[-2000:]

    key_paths = [str(tmp_path / name / "keys" / "backup.key") for name in ("options", "environment")]
    for key_path in key_paths:  # generated by the playbook
        assert mode_of(key_path) == 0o600 and mode_of(os.path.dirname(key_path)) == 0o700
    objects = bucket_bytes(moto_endpoint, s3_bucket)
    needles = dict(secrets)
    for index, key_path in enumerate(key_paths):
        needles.update({"key file %d (form %d)" % (index, n): form for n, form in enumerate(key_material(key_path))})
    outputs = {"backup.yml output": backup.stdout + backup.stderr, "restore.yml output": restore.stdout +
               restore.stderr, "backup.yml (env) output": from_env.stdout + from_env.stderr}
    outputs.update(files_in(str(tmp_path / "ansible.log"), str(tmp_path / "options" / "state"),
                            str(tmp_path / "environment" / "state")))
    outputs.update(objects)
    assert_absent(needles, outputs)
    # The plaintext data keys of every object, unwrapped with the local key: nowhere either.
    unwrapped = data_keys({name: blob for name, blob in objects.items() if "/backups/" in name}, key_paths)
    assert len(unwrapped) >= 4  # two backups, each a dump and globals, each object with its own data key
    assert_absent({"data key %d form %d" % (i, n): form for i, key in enumerate(unwrapped)
                   for n, form in enumerate(forms(key))}, outputs)


@pytest.fixture
def cli_setup(tmp_path, secured, secrets, moto_endpoint, s3_bucket):
    root = tmp_path / "cli"
    key = str(root / "keys" / "backup.key")
    generated = pgsafe("key", "generate", key)
    assert generated.returncode == 0, describe(generated)
    settings = {"cluster": "secrets", "state_dir": str(root / "state"), "log_dir": str(root / "log"),
                "postgres": {"host": secured.host, "port": secured.port, "user": ROLE,
                             "password": secrets["postgres password"], "bin_dir": secured.bin_dir},
                "aws": {"access_key": "AKIAPGSAFECLITEST", "secret_key": secrets["AWS secret key"],
                        "session_token": secrets["AWS session token"], "region": "us-east-1"},
                "repository": {"name": "local", "type": "filesystem", "path": str(root / "repo"), "create": True},
                "copies": [{"name": "cloud", "type": "s3", "bucket": s3_bucket, "endpoint_url": moto_endpoint,
                            "path_style": True}],
                "encryption": {"key_files": [{"path": key}]}}
    config = write_config(root / "pgsafe.yml", settings, mode=0o640)
    return {"root": root, "key": key, "config": config, "settings": settings}


def test_cli_with_debug_leaks_no_secret_in_output_logs_argv_or_files(
        cli_setup, secured, secrets, moto_endpoint, s3_bucket):
    root, config = cli_setup["root"], cli_setup["config"]
    runs = {}
    with ProcWatch({key: value for key, value in secrets.items() if not key.startswith("env")}) as watch:
        lock = TableLock(secured, "app", "bookings", 2.0)
        try:
            runs["backup"] = pgsafe("--debug", "backup", "logical", "-d", "app", "--json", config=config)
        finally:
            lock.release()
    assert runs["backup"].returncode == 0, describe(runs["backup"])
    assert "pg_dump" in watch.programs and watch.polls > 20, (watch.polls, sorted(watch.programs)[:50])
    assert not watch.hits, watch.hits
    backup_id = json.loads(runs["backup"].stdout)["backup_id"]
    for name, args in (("sync", ["sync", "--json"]), ("list", ["list", "--json"]),
                       ("verify", ["verify", "--backup-id", backup_id]),
                       ("restore", ["restore", "--backup-id", backup_id, "-d", "app", "-t", "app_cli_secret"]),
                       ("failed restore", ["restore", "--backup-id", backup_id, "-d", "app", "-t", "app_cli_secret"])):
        runs[name] = pgsafe("--debug", *args, config=config)
        assert runs[name].returncode == (9 if name == "failed restore" else 0), describe(runs[name])
    assert backup_id in runs["list"].stdout and backup_id in runs["sync"].stdout
    assert os.listdir(str(root / "log")), "the CLI wrote no log file"

    # Modes: key 0600 in a 0700 directory; settings 0640; repository, state and log dirs 0700,
    # nothing in them readable by others.
    assert mode_of(cli_setup["key"]) == 0o600 and mode_of(os.path.dirname(cli_setup["key"])) == 0o700
    assert mode_of(config) == 0o640
    for top in ("repo", "state", "log"):
        assert mode_of(str(root / top)) == 0o700, top
        for folder, dirs, names in os.walk(str(root / top)):
            for name in dirs:
                assert mode_of(os.path.join(folder, name)) == 0o700, os.path.join(folder, name)
            for name in names:
                assert mode_of(os.path.join(folder, name)) & 0o007 == 0, os.path.join(folder, name)

    on_disk = files_in(str(root / "repo"), str(root / "state"), str(root / "log"))
    objects = bucket_bytes(moto_endpoint, s3_bucket)
    outputs = {"%s output" % name: run.stdout + run.stderr for name, run in runs.items()}
    outputs.update(on_disk)
    outputs.update(objects)
    needles = {key: value for key, value in secrets.items() if not key.startswith("env")}
    needles.update({"key file form %d" % n: form for n, form in enumerate(key_material(cli_setup["key"]))})
    assert_absent(needles, outputs)
    # Row data is stored encrypted only: a value from the users table is in no stored byte.
    assert secured.psql("SELECT count(*) FROM users WHERE email = 'user1999@example.com'", "app") == "1"
    assert_absent({"row data": "user1999@example.com"}, dict(on_disk, **objects))
    unwrapped = data_keys({name: blob for name, blob in on_disk.items() if "/backups/" in name}, [cli_setup["key"]])
    assert len(unwrapped) >= 2  # the dump and the globals, each with its own data key
    assert_absent({"data key %d form %d" % (i, n): form for i, key in enumerate(unwrapped)
                   for n, form in enumerate(forms(key))}, outputs)


# --- TLS -----------------------------------------------------------------------------------------

@pytest.fixture
def self_signed_https(tmp_path):
    """A TLS server on 127.0.0.1 with a certificate made by openssl (self-signed, CN/SAN 127.0.0.1)."""
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # an S3-shaped empty listing: TLS is what is tested
            body = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name><KeyCount>0</KeyCount>'
                    b'<IsTruncated>false</IsTruncated></ListBucketResult>')
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"url": "https://127.0.0.1:%d" % server.server_address[1], "cert": cert}
    server.shutdown()
    server.server_close()


def test_s3_tls_verification_is_on_by_default(tmp_path, key_file, self_signed_https):
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
    from ansible_collections.pgsafe.backup.plugins.module_utils.errors import RepositoryError

    repository = {"type": "s3", "bucket": "b", "endpoint_url": self_signed_https["url"], "path_style": True,
                  "region": "us-east-1", "access_key": "AKIATLSTEST", "secret_key": "tls-secret", "max_attempts": 1}
    settings = {"cluster": "tls", "state_dir": str(tmp_path / "state"), "repository": repository,
                "encryption": {"key_files": [{"path": key_file}]}}
    context = Context.from_settings(settings, need_postgres=False, need_encryption=False)
    assert context.repository.verify_tls is True
    with pytest.raises(RepositoryError) as refused:
        list(context.repository.list("tls/"))
    message = refused.value.message
    assert re.search(r"TLS|certificate", message), message
    assert "repository.ca_bundle" in message, message

    # The CLI says the same, with its repository exit code.
    config = write_config(tmp_path / "pgsafe.yml", settings)
    listing = pgsafe("list", config=config)
    assert listing.returncode == 3, describe(listing)
    assert re.search(r"TLS|certificate", listing.stderr) and "repository.ca_bundle" in listing.stderr

    # With the CA bundle, the same endpoint is trusted (and the listing succeeds).
    trusted = Context.from_settings(dict(settings, repository=dict(repository, ca_bundle=self_signed_https["cert"])),
                                    need_postgres=False, need_encryption=False)
    assert list(trusted.repository.list("tls/")) == []


# --- a manifest edited by someone with write access to the bucket ------------------------------

def test_an_edited_manifest_cannot_make_a_restore_accept_other_data(tmp_path, secured, key_file):
    """The manifest is plaintext and unsigned: an attacker may edit its row counts. The data is
    authenticated, so the restore then fails its proof, and the target is never created."""
    from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
    from ansible_collections.pgsafe.backup.plugins.module_utils.errors import VerificationError
    from ansible_collections.pgsafe.backup.plugins.module_utils.logical_backup import run_logical_backup
    from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import run_logical_restore

    repo = str(tmp_path / "repo")
    context = Context.from_settings({
        "cluster": "tamper", "state_dir": str(tmp_path / "state"),
        "repository": {"type": "filesystem", "path": repo, "create": True},
        "encryption": {"key_files": [{"path": key_file}]},
        "postgres": {"host": secured.host, "port": secured.port, "user": "postgres", "bin_dir": secured.bin_dir}})
    backup_id = run_logical_backup(context, ["app"], include_globals=False)["backup_id"]
    path = os.path.join(repo, mf.manifest_key("tamper", backup_id))
    with open(path, "r", encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest["row_counts"]["app"]["public.users"] -= 1  # "the backup holds one user fewer"
    with open(path, "wb") as handle:
        handle.write(mf.dumps(manifest))
    with pytest.raises(VerificationError) as refused:
        run_logical_restore(context, backup_id, "app", "app_tampered")
    assert "restored row counts differ from the backup's" in refused.value.what
    users = secured.sample_counts["public.users"]
    assert "public.users expected %d got %d" % (users - 1, users) in refused.value.what
    assert secured.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'app_tampered%'") == "0"
