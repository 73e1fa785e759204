# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every module run for real: a throwaway PostgreSQL cluster, filesystem and S3 (moto) repositories.

Most runs are in-process (ansible-core's ``patch_module_args``, the module's ``main()``,
its JSON from stdout): the module code, argument validation, check/diff flags and no_log
censoring are Ansible's own, without a controller start-up per run. One playbook run goes
through ``ansible-playbook`` end to end (AnsiballZ packaging, ``module_defaults`` for the
action group, no_log censoring in the callback output). After every run the real state is
queried: files on disk, objects in the bucket, databases in the cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import yaml

from ansible.module_utils.testing import patch_module_args

from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import generate_key_file, wrapping_key_ids

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
BIN = os.path.dirname(sys.executable)
MODULES = ("pg_backup", "kms_envelope", "s3_backup_sync", "backup_verify", "retention_prune", "backup_restore",
           "backup_info")
COMMON_OPTIONS = ("cluster", "state_dir", "repository", "encryption", "compression", "metrics")


# --- running modules ------------------------------------------------------------------------

def run_module(name: str, args: dict, check: bool = False, diff: bool = False) -> dict:
    """Run one module's main() in-process; return its JSON result (``failed`` set on fail_json)."""
    module = importlib.import_module("ansible_collections.pgsafe.backup.plugins.modules.%s" % name)
    module_args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    stdout = io.StringIO()
    with patch_module_args(module_args), contextlib.redirect_stdout(stdout):
        with pytest.raises(SystemExit) as exited:
            module.main()
    text = stdout.getvalue()
    result = json.loads(text)
    result["_stdout"] = text
    assert (exited.value.code != 0) == bool(result.get("failed")), text
    return result


def ok(result: dict) -> dict:
    assert not result.get("failed"), result.get("msg")
    return result


# --- state queried from the real world ------------------------------------------------------

def files_under(root: str) -> list:
    found = []
    for directory, _dirs, names in os.walk(root):
        found.extend(os.path.relpath(os.path.join(directory, name), root) for name in names)
    return sorted(found)


def sha256_of(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def backup_dir(repo: str, backup_id: str, cluster: str = "main") -> str:
    return os.path.join(repo, cluster, "backups", backup_id)


def database_exists(cluster, name: str) -> bool:
    return cluster.psql("SELECT count(*) FROM pg_database WHERE datname = '%s'" % name) == "1"


def row_counts(cluster, dbname: str, tables) -> dict:
    return {table: int(cluster.psql("SELECT count(*) FROM %s" % table, dbname)) for table in tables}


def bucket_objects(endpoint: str, bucket: str) -> dict:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing-secret")
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects[item["Key"]] = (item["ETag"], item["LastModified"], item["Size"])
    return objects


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("modules")


@pytest.fixture(scope="module")
def module_key(workdir):
    path = str(workdir / "keys" / "backup.key")
    generate_key_file(path)
    return path


@pytest.fixture(scope="module")
def postgres_args(pg_cluster):
    return {"login_host": pg_cluster.host, "port": pg_cluster.port, "login_user": "postgres",
            "pg_bin_dir": pg_cluster.bin_dir}


def repo_args(state_dir: str, repo: str, key: str, create: bool = False) -> dict:
    return {"state_dir": state_dir, "repository": {"type": "filesystem", "path": repo, "create": create},
            "encryption": {"key_files": [{"path": key}]}}


@pytest.fixture(scope="module")
def backup_repo(workdir, module_key, postgres_args):
    """A filesystem repository with two complete logical backups of ``app``, taken by pg_backup.

    Tests that change it work on a copy (``copy_repo``).
    """
    repo = str(workdir / "repo")
    args = dict(repo_args(str(workdir / "state"), repo, module_key, create=True), databases=["app"],
                **postgres_args)
    backup_ids = [ok(run_module("pg_backup", args))["backup_id"], ok(run_module("pg_backup", args))["backup_id"]]
    assert backup_ids[0] != backup_ids[1]
    return {"path": repo, "backup_ids": backup_ids, "key": module_key}


@pytest.fixture
def copy_repo(backup_repo, tmp_path):
    target = str(tmp_path / "repo-copy")
    shutil.copytree(backup_repo["path"], target)
    return target


# --- pg_backup --------------------------------------------------------------------------------

def test_pg_backup_check_mode_writes_nothing_and_run_writes_a_complete_backup(tmp_path, module_key, postgres_args,
                                                                              pg_cluster):
    repo = str(tmp_path / "repo")
    os.makedirs(repo)
    args = dict(repo_args(str(tmp_path / "state"), repo, module_key), databases=["app"], **postgres_args)

    planned = ok(run_module("pg_backup", args, check=True))
    assert planned["changed"] is True and planned["databases"] == ["app"]
    assert files_under(repo) == []

    done = ok(run_module("pg_backup", args))
    assert done["changed"] is True
    assert done["row_counts"]["app"] == pg_cluster.sample_counts
    stored = files_under(backup_dir(repo, done["backup_id"]))
    assert "manifest.json" in stored and set(done["objects"]) <= set(stored)
    manifest = json.load(open(os.path.join(backup_dir(repo, done["backup_id"]), "manifest.json")))
    assert manifest["backup_id"] == done["backup_id"]


# --- backup_info ------------------------------------------------------------------------------

def test_backup_info_lists_backups_latest_and_storage(backup_repo, workdir):
    args = {"state_dir": str(workdir / "state"), "repository": {"path": backup_repo["path"]}}
    info = ok(run_module("backup_info", args, check=True))
    assert info["changed"] is False
    assert [entry["backup_id"] for entry in info["backups"]] == backup_repo["backup_ids"]
    assert {entry["status"] for entry in info["backups"]} == {"complete"}
    assert info["latest"]["logical"]["backup_id"] == backup_repo["backup_ids"][-1]
    on_disk = sum(os.path.getsize(os.path.join(backup_repo["path"], name)) for name in files_under(
        backup_repo["path"]))
    assert info["storage"]["used_bytes"] == on_disk
    assert ok(run_module("backup_info", dict(args, type="physical")))["backups"] == []


# --- kms_envelope -----------------------------------------------------------------------------

@pytest.fixture
def envelope_keys(tmp_path):
    keys = {}
    for name in ("old", "new"):
        keys[name] = str(tmp_path / "keys" / ("%s.key" % name))
        generate_key_file(keys[name])
    return keys


def _key_names(path: str) -> list:
    with open(path, "rb") as handle:
        return [key["key_id"] for key in wrapping_key_ids(handle.read(65536))]


def test_kms_envelope_encrypt_four_steps_then_decrypt(tmp_path, envelope_keys):
    plain = tmp_path / "pg_hba.conf"
    plain.write_bytes(b"host all all 10.0.0.0/8 scram-sha-256\n" * 5000)
    dest = str(tmp_path / "pg_hba.conf.enc")
    args = {"src": str(plain), "dest": dest, "state": "encrypted", "context": {"purpose": "test"},
            "encryption": {"key_files": [{"path": envelope_keys["old"]}]}}

    first = ok(run_module("kms_envelope", args, check=True, diff=True))
    assert first["changed"] is True and not os.path.exists(dest)
    assert first["diff"]["before"]["exists"] is False and first["diff"]["after"]["keys"] == ["old"]

    second = ok(run_module("kms_envelope", args, diff=True))
    assert second["changed"] is True and os.path.isfile(dest)
    assert oct(os.stat(dest).st_mode & 0o777) == "0o600"
    assert _key_names(dest) == ["old"] and open(dest, "rb").read() != plain.read_bytes()
    assert second["diff"]["after"]["sha256"] == sha256_of(dest)
    written = (sha256_of(dest), os.stat(dest).st_mtime_ns)

    third = ok(run_module("kms_envelope", args, check=True))
    assert third["changed"] is False and (sha256_of(dest), os.stat(dest).st_mtime_ns) == written
    fourth = ok(run_module("kms_envelope", args, diff=True))
    assert fourth["changed"] is False and (sha256_of(dest), os.stat(dest).st_mtime_ns) == written
    assert fourth["diff"]["before"] == fourth["diff"]["after"]

    restored = str(tmp_path / "restored.conf")
    decrypt = dict(args, src=dest, dest=restored, state="decrypted")
    assert ok(run_module("kms_envelope", decrypt, check=True))["changed"] is True and not os.path.exists(restored)
    assert ok(run_module("kms_envelope", decrypt))["changed"] is True
    assert open(restored, "rb").read() == plain.read_bytes()
    assert ok(run_module("kms_envelope", decrypt))["changed"] is False

    wrong_context = run_module("kms_envelope", dict(decrypt, context={"purpose": "other"}))
    assert wrong_context["failed"] and wrong_context["error"]["category"] == "encryption"


def test_kms_envelope_reencrypt_rotates_keys(tmp_path, envelope_keys):
    plain = tmp_path / "secret.txt"
    plain.write_bytes(b"escrow material\n" * 100)
    sealed = str(tmp_path / "secret.txt.enc")
    old_only = {"key_files": [{"path": envelope_keys["old"]}]}
    ok(run_module("kms_envelope", {"src": str(plain), "dest": sealed, "encryption": old_only}))
    rotate = {"src": sealed, "state": "reencrypted", "previous_encryption": old_only,
              "encryption": {"key_files": [{"path": envelope_keys["new"]}]}}

    planned = ok(run_module("kms_envelope", rotate, check=True))
    assert planned["changed"] is True and _key_names(sealed) == ["old"]
    done = ok(run_module("kms_envelope", rotate, diff=True))
    assert done["changed"] is True and _key_names(sealed) == ["new"]
    assert done["diff"]["before"]["keys"] == ["old"] and done["diff"]["after"]["keys"] == ["new"]
    assert ok(run_module("kms_envelope", rotate))["changed"] is False

    # Only the new key opens it now.
    out = str(tmp_path / "out.txt")
    assert run_module("kms_envelope", {"src": sealed, "dest": out, "state": "decrypted",
                                       "encryption": old_only})["failed"]
    ok(run_module("kms_envelope", {"src": sealed, "dest": out, "state": "decrypted",
                                   "encryption": rotate["encryption"]}))
    assert open(out, "rb").read() == plain.read_bytes()


# --- s3_backup_sync ---------------------------------------------------------------------------

def test_s3_backup_sync_push_four_steps_skips_incomplete(copy_repo, backup_repo, workdir, moto_endpoint, s3_bucket,
                                                         tmp_path):
    older, newer = backup_repo["backup_ids"]
    # The older backup loses its manifest: incomplete, so it must never reach the bucket.
    os.unlink(os.path.join(backup_dir(copy_repo, older), "manifest.json"))
    remote = {"name": "cloud", "type": "s3", "bucket": s3_bucket, "endpoint_url": moto_endpoint,
              "path_style": True, "region": "us-east-1"}
    args = {"state_dir": str(workdir / "state"), "repository": {"name": "local", "path": copy_repo},
            "remote": remote, "mode": "push"}

    first = ok(run_module("s3_backup_sync", args, check=True, diff=True))
    assert first["changed"] is True and bucket_objects(moto_endpoint, s3_bucket) == {}
    assert [item["backup_id"] for item in first["copied"]] == [newer]
    assert first["skipped_incomplete"] == [{"backup_id": older, "repository": "local"}]
    assert list(first["diff"]["before"].values()) == [[]] and list(first["diff"]["after"].values()) == [[newer]]

    second = ok(run_module("s3_backup_sync", args))
    assert second["changed"] is True and second["objects_copied"] == len(files_under(backup_dir(copy_repo, newer)))
    objects = bucket_objects(moto_endpoint, s3_bucket)
    assert "main/backups/%s/manifest.json" % newer in objects
    assert not [key for key in objects if older in key]
    for name in files_under(backup_dir(copy_repo, newer)):
        assert objects["main/backups/%s/%s" % (newer, name)][2] == os.path.getsize(
            os.path.join(backup_dir(copy_repo, newer), name))

    third = ok(run_module("s3_backup_sync", args, check=True))
    assert third["changed"] is False and [item["backup_id"] for item in third["unchanged"]] == [newer]
    fourth = ok(run_module("s3_backup_sync", args, diff=True))
    assert fourth["changed"] is False and fourth["diff"]["before"] == fourth["diff"]["after"]
    assert bucket_objects(moto_endpoint, s3_bucket) == objects

    # Pull into an empty local repository: the backup arrives complete and byte-identical.
    pulled = str(tmp_path / "pulled")
    ok(run_module("s3_backup_sync", dict(args, mode="pull", repository={"path": pulled, "create": True})))
    assert files_under(backup_dir(pulled, newer)) == files_under(backup_dir(copy_repo, newer))
    for name in files_under(backup_dir(copy_repo, newer)):
        assert sha256_of(os.path.join(backup_dir(pulled, newer), name)) == sha256_of(
            os.path.join(backup_dir(copy_repo, newer), name))


# --- backup_verify ----------------------------------------------------------------------------

def test_backup_verify_passes_then_names_a_flipped_byte(copy_repo, backup_repo, workdir, postgres_args):
    newest = backup_repo["backup_ids"][-1]
    args = dict(repo_args(str(workdir / "state"), copy_repo, backup_repo["key"]), pg_bin_dir=postgres_args[
        "pg_bin_dir"])
    record = os.path.join(copy_repo, "main", "verify", newest + ".json")

    checked = ok(run_module("backup_verify", args, check=True))
    assert checked["ok"] is True and checked["changed"] is False and checked["failures"] == []
    assert [backup["backup_id"] for backup in checked["backups"]] == [newest]
    assert not os.path.exists(record)  # check mode records nothing

    verified = ok(run_module("backup_verify", args))
    assert verified["ok"] is True and verified["changed"] is False
    assert {check["check"] for check in verified["backups"][0]["checks"]} >= {"sha256", "decrypt", "structure"}
    assert json.load(open(record))["ok"] is True

    manifest = json.load(open(os.path.join(backup_dir(copy_repo, newest), "manifest.json")))
    dump = next(obj["name"] for obj in manifest["objects"] if obj.get("database") == "app")
    path = os.path.join(backup_dir(copy_repo, newest), dump)
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))

    failed = run_module("backup_verify", dict(args, level="integrity"))
    assert failed["failed"] is True and failed["ok"] is False
    assert [(f["backup_id"], f["object"], f["check"]) for f in failed["failures"]] == [(newest, dump, "sha256")]
    assert dump in failed["msg"] and "[sha256]" in failed["msg"]

    reported = ok(run_module("backup_verify", dict(args, fail_on_error=False)))
    assert reported["ok"] is False and reported["changed"] is False
    assert [(f["object"], f["check"]) for f in reported["failures"]] in ([(dump, "sha256")], [(dump, "decrypt")])
    assert json.load(open(record))["ok"] is False


# --- retention_prune --------------------------------------------------------------------------

def test_retention_prune_four_steps(copy_repo, backup_repo, workdir):
    older, newer = backup_repo["backup_ids"]
    args = {"state_dir": str(workdir / "state"), "repository": {"path": copy_repo}, "policy": {"keep_last": 1}}

    first = ok(run_module("retention_prune", args, check=True, diff=True))
    assert first["changed"] is True and first["would_delete"] == [older]
    assert os.path.isdir(backup_dir(copy_repo, older))
    decisions = {d["backup_id"]: d for d in first["plan"]["decisions"]}
    assert decisions[older]["keep"] is False and decisions[newer]["keep"] is True
    assert "last #1" in decisions[newer]["reasons"]
    assert first["diff"] == {"before": {"logical:app": [older, newer]}, "after": {"logical:app": [newer]}}

    second = ok(run_module("retention_prune", args))
    assert second["changed"] is True and second["deleted"] == [older]
    assert not os.path.exists(backup_dir(copy_repo, older))
    assert os.path.isfile(os.path.join(backup_dir(copy_repo, newer), "manifest.json"))
    remaining = files_under(copy_repo)

    third = ok(run_module("retention_prune", args, check=True))
    assert third["changed"] is False and third["would_delete"] == []
    fourth = ok(run_module("retention_prune", args))
    assert fourth["changed"] is False and fourth["deleted"] == []
    assert files_under(copy_repo) == remaining

    nothing_kept = run_module("retention_prune", dict(args, policy={"keep_last": 0}))
    assert nothing_kept["failed"] and nothing_kept["error"]["category"] == "config"


# --- backup_restore ---------------------------------------------------------------------------

def test_backup_restore_check_run_refuse_force(backup_repo, workdir, postgres_args, pg_cluster):
    target = "app_restored_%s" % uuid.uuid4().hex[:6]
    args = dict(repo_args(str(workdir / "state"), backup_repo["path"], backup_repo["key"]), database="app",
                target_database=target, **postgres_args)

    planned = ok(run_module("backup_restore", args, check=True, diff=True))
    assert planned["changed"] is True and planned["backup_id"] == backup_repo["backup_ids"][-1]
    assert planned["diff"]["before"]["exists"] is False
    assert planned["diff"]["after"]["row_counts"] == pg_cluster.sample_counts
    assert not database_exists(pg_cluster, target)

    restored = ok(run_module("backup_restore", args, diff=True))
    assert restored["changed"] is True and restored["row_counts_match"] is True
    assert database_exists(pg_cluster, target)
    assert row_counts(pg_cluster, target, pg_cluster.sample_counts) == pg_cluster.sample_counts
    assert restored["diff"]["before"]["exists"] is False
    assert restored["diff"]["after"] == {"database": target, "exists": True, "row_counts": pg_cluster.sample_counts}

    pg_cluster.psql("DELETE FROM bookings WHERE id <= 10", target)
    refused = run_module("backup_restore", args)
    assert refused["failed"] is True and "force" in refused["msg"]
    assert refused["error"]["category"] == "restore"
    assert int(pg_cluster.psql("SELECT count(*) FROM bookings", target)) == pg_cluster.sample_counts[
        "public.bookings"] - 10

    forced = ok(run_module("backup_restore", dict(args, force=True), diff=True))
    assert forced["changed"] is True and forced["replaces_existing"] is True
    assert forced["diff"]["before"]["row_counts"]["public.bookings"] == pg_cluster.sample_counts[
        "public.bookings"] - 10
    assert row_counts(pg_cluster, target, pg_cluster.sample_counts) == pg_cluster.sample_counts


# --- through ansible-playbook: module_defaults for the group, no_log -------------------------

def test_playbook_module_defaults_and_no_log(tmp_path, module_key, pg_cluster, moto_endpoint, s3_bucket):
    secret_key = "s3-secret-%s" % uuid.uuid4().hex
    password = "pg-password-%s" % uuid.uuid4().hex
    results = str(tmp_path / "results.json")
    postgres = {"login_host": pg_cluster.host, "port": pg_cluster.port, "login_password": password,
                "pg_bin_dir": pg_cluster.bin_dir}
    playbook = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "module_defaults": {"group/pgsafe.backup.pgsafe": {
            "cluster": "nolog", "state_dir": str(tmp_path / "state"),
            "repository": {"type": "s3", "bucket": s3_bucket, "endpoint_url": moto_endpoint, "path_style": True,
                           "region": "us-east-1", "access_key": "AKIDNOLOGTEST", "secret_key": secret_key},
            "encryption": {"key_files": [{"path": module_key}]}}},
        "tasks": [
            {"pgsafe.backup.pg_backup": dict(postgres, databases=["app"]), "register": "backup"},
            {"pgsafe.backup.backup_info": {}, "register": "info"},
            {"pgsafe.backup.backup_verify": {"pg_bin_dir": pg_cluster.bin_dir}, "register": "verified"},
            {"ansible.builtin.copy": {"dest": results, "mode": "0600", "content":
                                      "{{ {'backup': backup, 'info': info, 'verified': verified} | to_json }}"}},
        ],
    }]
    playbook_path = tmp_path / "play.yml"
    playbook_path.write_text(yaml.safe_dump(playbook))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1")
    run = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "-vvv", str(playbook_path)],
                         env=env, capture_output=True, text=True, cwd=str(tmp_path), check=False, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    registered = json.load(open(results))
    backup_id = registered["backup"]["backup_id"]
    assert registered["backup"]["changed"] is True
    assert registered["info"]["latest"]["logical"]["backup_id"] == backup_id
    assert registered["verified"]["ok"] is True
    assert "nolog/backups/%s/manifest.json" % backup_id in bucket_objects(moto_endpoint, s3_bucket)
    # -vvv prints each task's invocation (its module arguments): the secrets are there, censored.
    assert '"login_password": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in output
    assert '"secret_key": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in output
    # And absent everywhere: the callback output (module results, exec commands) and the registered results.
    for text in (output, open(results).read()):
        assert password not in text and secret_key not in text


def test_pg_backup_in_process_result_has_no_secrets(tmp_path, module_key, postgres_args, moto_endpoint, s3_bucket):
    secret_key = "s3-secret-%s" % uuid.uuid4().hex
    password = "pg-password-%s" % uuid.uuid4().hex
    args = dict(postgres_args, login_password=password, databases=["app"], state_dir=str(tmp_path / "state"),
                repository={"type": "s3", "bucket": s3_bucket, "endpoint_url": moto_endpoint, "path_style": True,
                            "region": "us-east-1", "access_key": "AKIDNOLOGTEST", "secret_key": secret_key},
                encryption={"key_files": [{"path": module_key}]})
    result = ok(run_module("pg_backup", args))
    assert password not in result["_stdout"] and secret_key not in result["_stdout"]
    failed = run_module("pg_backup", dict(args, databases=["no_such_db"]))
    assert failed["failed"] and password not in failed["_stdout"] and secret_key not in failed["_stdout"]


# --- documentation ----------------------------------------------------------------------------

DOC_CASES = list(MODULES)


@pytest.fixture(scope="module")
def rendered_docs():
    """Every module's documentation as Ansible shows it: doc fragments (common options, attribute
    descriptions, copies, ...) merged in."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS)
    run = subprocess.run([os.path.join(BIN, "ansible-doc"), "--json"] + ["pgsafe.backup.%s" % name for name in MODULES],
                         env=env, capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 0, run.stderr
    return {name.rsplit(".", 1)[-1]: entry["doc"] for name, entry in json.loads(run.stdout).items()}


@pytest.mark.parametrize("name", DOC_CASES)
def test_documentation_blocks_are_yaml(name, rendered_docs):
    module = importlib.import_module("ansible_collections.pgsafe.backup.plugins.modules.%s" % name)
    documentation = yaml.safe_load(module.DOCUMENTATION)
    assert documentation["module"] == name
    rendered = rendered_docs[name]
    assert set(rendered["attributes"]) == {"check_mode", "diff_mode", "idempotent"}
    for attribute in rendered["attributes"].values():
        assert attribute["description"] and attribute["support"] in ("full", "partial", "none", "N/A")
        if attribute["support"] != "full":
            assert attribute.get("details"), name
    assert "pgsafe.backup.common" in documentation["extends_documentation_fragment"]
    assert isinstance(yaml.safe_load(module.EXAMPLES), list)
    assert isinstance(yaml.safe_load(module.RETURN), dict)


def test_ansible_doc_renders_every_module_with_the_common_options():
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS)
    names = ["pgsafe.backup.%s" % name for name in MODULES]
    run = subprocess.run([os.path.join(BIN, "ansible-doc"), "--json"] + names, env=env, capture_output=True,
                         text=True, check=False, timeout=120)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr
    docs = json.loads(run.stdout)
    assert sorted(docs) == sorted(names)
    for name, doc in docs.items():
        options = doc["doc"]["options"]
        assert set(COMMON_OPTIONS) <= set(options), name
    text = subprocess.run([os.path.join(BIN, "ansible-doc")] + names, env=env, capture_output=True, text=True,
                          check=False, timeout=120)
    assert text.returncode == 0 and not text.stderr.strip(), text.stderr
