# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File-system backups (type ``files``) for real: a tree of application configuration with modes,
owners, a symlink and an excluded file, backed up through zstd and envelope encryption into a
filesystem repository; restored selectively to the original place and under a target directory;
refused over a file that differs; verified at every level (a file manifest that lies is caught);
retention per type; the module, and the ``pgsafe files`` command. After every run the real state
is read back: files, modes and owners on disk, bytes in the repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import pwd
import subprocess
import sys

import pytest
import yaml

from ansible.module_utils.testing import patch_module_args

from ansible_collections.pgsafe.backup.plugins.module_utils import files_backup as fb
from ansible_collections.pgsafe.backup.plugins.module_utils import manifest as mf
from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups
from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, RestoreError
from ansible_collections.pgsafe.backup.plugins.module_utils.pipeline import store_stream
from ansible_collections.pgsafe.backup.plugins.module_utils.retention import prune
from ansible_collections.pgsafe.backup.plugins.module_utils.verify import verify

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
BIN = os.path.dirname(sys.executable)
CLI = "from ansible_collections.pgsafe.backup.plugins.module_utils.cli import main; import sys; sys.exit(main())"
CLUSTER = "files"
CONFIG_TEXT = b"database: spendsync\nlisten: 127.0.0.1:3000\n"
KEY_TEXT = b"spendsync-api-key-0123456789\n"
POSTGRES = pwd.getpwnam("postgres")


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def app(tmp_path):
    """/etc/spendsync in small: config 0640 root:postgres, keys/ 0700 with a 0600 key, a file owned
    by postgres, an empty directory, a symlink, and an editor swap file to exclude."""
    root = tmp_path / "etc" / "spendsync"
    (root / "keys").mkdir(parents=True)
    (root / "empty").mkdir()
    os.chmod(root / "keys", 0o700)
    (root / "config.yml").write_bytes(CONFIG_TEXT)
    os.chmod(root / "config.yml", 0o640)
    os.chown(root / "config.yml", 0, POSTGRES.pw_gid)
    (root / "keys" / "api.key").write_bytes(KEY_TEXT)
    os.chmod(root / "keys" / "api.key", 0o600)
    (root / "README").write_bytes(b"maintained by the DBA\n")
    os.chown(root / "README", POSTGRES.pw_uid, POSTGRES.pw_gid)
    os.symlink("config.yml", root / "current.yml")
    (root / ".config.yml.swp").write_bytes(b"swap")
    os.utime(root / "config.yml", (1700000000.25, 1700000000.25))
    return str(root)


@pytest.fixture
def settings(tmp_path, key_file):
    return {"cluster": CLUSTER, "state_dir": str(tmp_path / "state"),
            "repository": {"type": "filesystem", "path": str(tmp_path / "repo"), "create": True},
            "encryption": {"key_files": [{"path": key_file}]},
            "metrics": {"prefix": "spendsync", "textfile_dir": str(_mkdir(tmp_path / "textfile"))}}


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def context_of(settings: dict) -> Context:
    return Context.from_settings(settings, need_postgres=False)


def sha256_of(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def mode_of(path: str) -> int:
    return os.lstat(path).st_mode & 0o7777


def repository_bytes(settings: dict) -> bytes:
    found = b""
    for folder, _dirs, names in os.walk(settings["repository"]["path"]):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                found += handle.read()
    return found


# --- backup -----------------------------------------------------------------------------------

def test_backup_stores_an_encrypted_tar_and_an_encrypted_file_manifest(app, settings):
    context = context_of(settings)
    result = fb.run_files_backup(context, [app], exclude=["*.swp"])
    assert result["changed"] and result["type"] == "files"
    assert result["counts"] == {"file": 3, "directory": 3, "symlink": 1}
    assert result["bytes"] == len(CONFIG_TEXT) + len(KEY_TEXT) + len(b"maintained by the DBA\n")

    manifest = mf.read_manifest(context.repository, CLUSTER, result["backup_id"])
    assert manifest["type"] == "files" and manifest["files"]["paths"] == [app]
    assert manifest["files"]["entries"] == 7 and manifest["files"]["exclude"] == ["*.swp"]
    assert sorted(obj["kind"] for obj in manifest["objects"]) == ["filelist", "files"]
    assert all(obj["name"].endswith(".zst.enc") for obj in manifest["objects"])
    # The clear-text manifest holds no per-file hash or secret; neither does any stored byte.
    stored = repository_bytes(settings)
    assert hashlib.sha256(KEY_TEXT).hexdigest().encode() not in stored
    assert KEY_TEXT.strip() not in stored and b"spendsync-api-key" not in stored

    listing = {entry["path"]: entry for entry in fb.list_files(context)["entries"]}
    assert app + "/.config.yml.swp" not in listing
    config = listing[app + "/config.yml"]
    assert (config["type"], config["mode"], config["owner"], config["group"]) == ("file", "0640", "root", "postgres")
    assert config["sha256"] == hashlib.sha256(CONFIG_TEXT).hexdigest() and config["size"] == len(CONFIG_TEXT)
    assert config["mtime"] == 1700000000.25
    assert listing[app + "/keys"]["mode"] == "0700" and listing[app + "/keys"]["type"] == "directory"
    assert listing[app + "/README"]["owner"] == "postgres" and listing[app + "/README"]["uid"] == POSTGRES.pw_uid
    assert listing[app + "/current.yml"]["type"] == "symlink"
    assert listing[app + "/current.yml"]["target"] == "config.yml"
    assert listing[app + "/empty"]["type"] == "directory"

    with open(os.path.join(settings["metrics"]["textfile_dir"], "spendsync_files_backup.prom"), encoding="utf-8") as f:
        assert 'spendsync_backup_success{cluster="files",type="files"} 1.0' in f.read()
    entries = list_backups(context.repository, CLUSTER)
    assert [(entry["type"], entry["status"]) for entry in entries] == [("files", "complete")]


@pytest.mark.parametrize("paths, where, text", [
    (["etc/spendsync"], "paths", "is not absolute"),
    (["/nonexistent/pgsafe-test"], "paths", "does not exist"),
    (["/"], "paths", "whole file system"),
    ([], "paths", "no paths"),
])
def test_bad_paths_are_refused_naming_the_option(settings, paths, where, text):
    with pytest.raises(ConfigError) as refused:
        fb.run_files_backup(context_of(settings), paths)
    assert refused.value.where == where and text in refused.value.message and refused.value.fix
    assert not os.path.exists(os.path.join(settings["repository"]["path"], CLUSTER, "backups"))


def test_skip_unchanged_takes_no_backup_until_something_changes(app, settings):
    context = context_of(settings)
    first = fb.run_files_backup(context, [app], skip_unchanged=True)
    os.utime(os.path.join(app, "README"), None)  # a touch is not a change
    same = fb.run_files_backup(context, [app], skip_unchanged=True)
    assert not same["changed"] and same["backup_id"] == first["backup_id"]
    assert same["unchanged_since"]
    os.chmod(os.path.join(app, "config.yml"), 0o600)
    changed = fb.run_files_backup(context, [app], skip_unchanged=True)
    assert changed["changed"] and changed["backup_id"] != first["backup_id"]
    assert [entry["backup_id"] for entry in list_backups(context.repository, CLUSTER)] == [
        first["backup_id"], changed["backup_id"]]


# --- restore ----------------------------------------------------------------------------------

def test_selective_restore_to_the_original_place_then_nothing_to_do(app, settings):
    context = context_of(settings)
    backup = fb.run_files_backup(context, [app])
    key = os.path.join(app, "keys", "api.key")
    os.unlink(key)
    os.rmdir(os.path.join(app, "empty"))

    plan = fb.plan_files_restore(context, paths=[key])
    assert plan["restored"] == [key] and not os.path.exists(key)  # the plan writes nothing

    result = fb.run_files_restore(context, paths=[key])
    assert result["restored"] == [key] and result["backup_id"] == backup["backup_id"]
    with open(key, "rb") as handle:
        assert handle.read() == KEY_TEXT
    assert mode_of(key) == 0o600 and os.stat(key).st_uid == 0
    assert not os.path.exists(os.path.join(app, "empty")), "only the selected path is restored"
    assert not [name for name in os.listdir(os.path.join(app, "keys")) if name.endswith(".pgsafe")]

    again = fb.run_files_restore(context, paths=[key])
    assert not again["changed"] and again["restored"] == [] and key in again["unchanged"]


def test_restore_refuses_to_overwrite_a_file_that_differs_until_forced(app, settings):
    context = context_of(settings)
    fb.run_files_backup(context, [app])
    readme = os.path.join(app, "README")
    config = os.path.join(app, "config.yml")
    with open(readme, "wb") as handle:
        handle.write(b"edited by mistake\n")
    os.chmod(config, 0o666)  # same content, other mode: also a difference
    os.unlink(os.path.join(app, "keys", "api.key"))

    with pytest.raises(RestoreError) as refused:
        fb.run_files_restore(context, paths=[app])
    assert readme in refused.value.message and config in refused.value.message
    assert "force" in refused.value.fix
    # Refused before anything was written: the missing key was not restored either.
    assert not os.path.exists(os.path.join(app, "keys", "api.key"))
    with open(readme, "rb") as handle:
        assert handle.read() == b"edited by mistake\n"

    result = fb.run_files_restore(context, paths=[readme, config], force=True)
    assert sorted(result["replaced"]) == sorted([readme, config])
    assert sha256_of(readme) == hashlib.sha256(b"maintained by the DBA\n").hexdigest()
    assert os.stat(readme).st_uid == POSTGRES.pw_uid and mode_of(config) == 0o640
    assert os.stat(config).st_mtime == 1700000000.25


def test_restore_under_a_target_directory_keeps_modes_owners_and_links(app, settings, tmp_path):
    context = context_of(settings)
    fb.run_files_backup(context, [app], exclude=["*.swp"])
    target = str(tmp_path / "restored")
    result = fb.run_files_restore(context, target_dir=target)
    restored = target + app
    assert len(result["restored"]) == 7
    assert sha256_of(restored + "/config.yml") == sha256_of(app + "/config.yml")
    assert mode_of(restored + "/config.yml") == 0o640 and os.stat(restored + "/config.yml").st_gid == POSTGRES.pw_gid
    assert mode_of(restored + "/keys") == 0o700 and mode_of(restored + "/keys/api.key") == 0o600
    assert os.stat(restored + "/README").st_uid == POSTGRES.pw_uid
    assert os.readlink(restored + "/current.yml") == "config.yml"
    assert os.path.isdir(restored + "/empty")
    assert not os.path.exists(restored + "/.config.yml.swp")
    # The live tree was not touched.
    assert os.readlink(app + "/current.yml") == "config.yml"


def test_restore_of_a_path_the_backup_does_not_hold_names_it(app, settings):
    context = context_of(settings)
    fb.run_files_backup(context, [app])
    with pytest.raises(ConfigError) as refused:
        fb.run_files_restore(context, paths=[app + "/nope.yml"])
    assert refused.value.where == "paths" and app + "/nope.yml" in refused.value.message


# --- verification and retention ---------------------------------------------------------------

def test_verify_checks_every_file_against_the_file_manifest(app, settings):
    context = context_of(settings)
    backup = fb.run_files_backup(context, [app])
    for level in ("presence", "integrity", "decrypt", "restore"):
        report = verify(context, level, types=("files",))
        assert report["ok"], report["summary"]
    restores = report["backups"][0]["restores"]
    assert restores[0]["ok"] and restores[0]["entries"] == 8

    # A file manifest that lies about one file (re-encrypted, with a manifest that matches it,
    # so every stored checksum is right) is caught only by checking the tar against it.
    manifest = mf.read_manifest(context.repository, CLUSTER, backup["backup_id"])
    listing = fb.read_listing(context, manifest)
    for entry in listing["entries"]:
        if entry["path"].endswith("/README"):
            entry["sha256"] = "0" * 64
    listing_obj = next(obj for obj in manifest["objects"] if obj["kind"] == "filelist")
    stored = store_stream(io.BytesIO(json.dumps(listing).encode()), context.repository,
                          mf.object_key(CLUSTER, backup["backup_id"], listing_obj["name"]), listing_obj["name"],
                          context.compression, context.envelope,
                          mf.encryption_context(CLUSTER, backup["backup_id"], listing_obj["name"]))
    listing_obj.update(stored.to_manifest())
    mf.write_manifest(context.repository, manifest)
    assert verify(context, "integrity", types=("files",), full_recheck=True)["ok"]
    report = verify(context, "decrypt", types=("files",))
    assert not report["ok"]
    assert any("README" in failure["message"] and failure["check"] == "sha256" for failure in report["failures"])


def test_retention_keeps_files_backups_per_type(app, settings, pg_cluster):
    from ansible_collections.pgsafe.backup.plugins.module_utils.logical_backup import run_logical_backup

    settings = dict(settings, postgres=pg_cluster.conn_spec())
    context = Context.from_settings(settings)
    logical = run_logical_backup(context, ["app"], include_globals=False)
    old_files = fb.run_files_backup(context, [app])
    new_files = fb.run_files_backup(context, [app])
    result = prune(context, {"keep_last": 1, "min_keep": 1})
    assert result["deleted"] == [old_files["backup_id"]]
    kept = [entry["backup_id"] for entry in list_backups(context.repository, CLUSTER)]
    assert sorted(kept) == sorted([logical["backup_id"], new_files["backup_id"]])


# --- modules and command -----------------------------------------------------------------------

def run_module(args: dict, check: bool = False, diff: bool = False, name: str = "files_backup") -> dict:
    module = importlib.import_module("ansible_collections.pgsafe.backup.plugins.modules.%s" % name)
    stdout = io.StringIO()
    with patch_module_args(dict(args, _ansible_check_mode=check, _ansible_diff=diff)), \
            contextlib.redirect_stdout(stdout):
        with pytest.raises(SystemExit) as exited:
            module.main()
    result = json.loads(stdout.getvalue())
    assert (exited.value.code != 0) == bool(result.get("failed")), result
    return result


def test_module_backup_list_restore_check_and_diff(app, settings):
    common = {key: settings[key] for key in ("cluster", "state_dir", "repository", "encryption")}
    planned = run_module(dict(common, paths=[app]), check=True)
    assert planned["changed"] and planned["entries"] == 8 and "backup_id" not in planned
    assert not os.path.exists(os.path.join(settings["repository"]["path"], CLUSTER))  # nothing stored

    taken = run_module(dict(common, paths=[app], exclude=["*.swp"]))
    assert taken["changed"] and taken["counts"]["file"] == 3
    listing = run_module(dict(common, paths=[app + "/keys"]), check=True, name="files_backup_info")
    assert not listing["changed"] and [entry["path"] for entry in listing["entries"]] == [
        app + "/keys", app + "/keys/api.key"]

    key = app + "/keys/api.key"
    os.unlink(key)
    would = run_module(dict(common, state="restore", paths=[key]), check=True, diff=True)
    assert would["changed"] and would["restored"] == [key] and not os.path.exists(key)
    assert would["diff"] == {"before": {key: "absent"}, "after": {key: "as in backup %s" % taken["backup_id"]}}
    done = run_module(dict(common, state="restore", paths=[key]))
    assert done["changed"] and os.path.exists(key)
    assert not run_module(dict(common, state="restore", paths=[key]))["changed"]

    with open(app + "/README", "wb") as handle:
        handle.write(b"edited\n")
    refused = run_module(dict(common, state="restore", paths=[app + "/README"]))
    assert refused["failed"] and "exist and differ" in refused["msg"] and refused["error"]["category"] == "restore"
    missing = run_module(dict(common, state="backup"))
    assert missing["failed"] and "paths" in missing["msg"]


def test_module_documentation_renders():
    for name in ("files_backup", "files_backup_info", "dr_test_report"):
        module = importlib.import_module("ansible_collections.pgsafe.backup.plugins.modules.%s" % name)
        documentation = yaml.safe_load(module.DOCUMENTATION)
        assert documentation["module"] == name
        assert isinstance(yaml.safe_load(module.EXAMPLES), list) and isinstance(yaml.safe_load(module.RETURN), dict)
    run = subprocess.run([os.path.join(BIN, "ansible-doc"), "--json", "pgsafe.backup.files_backup",
                          "pgsafe.backup.files_backup_info", "pgsafe.backup.dr_test_report"], env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS),
                         capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr
    docs = json.loads(run.stdout)
    for name in docs:
        assert {"cluster", "repository", "encryption", "metrics"} <= set(docs[name]["doc"]["options"]), name
        # Attributes as Ansible shows them, with the descriptions of the attributes doc fragment merged in.
        attributes = docs[name]["doc"]["attributes"]
        assert set(attributes) == {"check_mode", "diff_mode", "idempotent"}, name
        assert all(item["description"] and (item["support"] == "full" or item.get("details"))
                   for item in attributes.values()), name
    assert len(docs) == 3


def pgsafe(config: str, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PGSAFE_", "PG"))}
    env["PYTHONPATH"] = COLLECTIONS
    return subprocess.run([sys.executable, "-c", CLI, "--config", config] + list(args), capture_output=True,
                          text=True, env=env, timeout=120, check=False)


def test_pgsafe_files_command(app, settings, tmp_path):
    config = str(tmp_path / "pgsafe.yml")
    with open(config, "w", encoding="utf-8") as handle:
        yaml.safe_dump(dict(settings, files={"paths": [app], "exclude": ["*.swp"]}), handle)
    os.chmod(config, 0o600)

    backup = pgsafe(config, "files", "backup", "--json")
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["backup_id"]
    listing = pgsafe(config, "files", "list")
    assert listing.returncode == 0 and backup_id in listing.stdout
    assert "l  0777" in listing.stdout and "current.yml -> config.yml" in listing.stdout
    assert ".config.yml.swp" not in listing.stdout

    os.unlink(app + "/keys/api.key")
    with open(app + "/README", "wb") as handle:
        handle.write(b"edited\n")
    dry = pgsafe(config, "files", "restore", app + "/keys", "--dry-run")
    assert dry.returncode == 0 and "would write 1 path(s)" in dry.stdout and not os.path.exists(app + "/keys/api.key")
    refused = pgsafe(config, "files", "restore")
    assert refused.returncode == 9 and "exist and differ" in refused.stderr and app + "/README" in refused.stderr
    restored = pgsafe(config, "files", "restore", app + "/keys/api.key")
    assert restored.returncode == 0 and "wrote 1 path(s)" in restored.stdout
    assert sha256_of(app + "/keys/api.key") == hashlib.sha256(KEY_TEXT).hexdigest()
    forced = pgsafe(config, "files", "restore", app + "/README", "--force")
    assert forced.returncode == 0 and "(replaced)" in forced.stdout
    under = pgsafe(config, "files", "restore", "--target-dir", str(tmp_path / "under"), "--json")
    assert under.returncode == 0 and os.path.isfile(str(tmp_path / "under") + app + "/config.yml")
    assert json.loads(under.stdout)["target_dir"] == str(tmp_path / "under")
