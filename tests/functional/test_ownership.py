# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Root runs (playbooks with become, an operator's `pgsafe check`) leave the pgsafe user's directories usable.

The install role gives the state directory, the logs and a filesystem repository to PostgreSQL's account,
which timers and archive_command run as. Every writer of the engine that creates something below them is
run here as root; afterwards every entry must still belong to that account, or its next run (the next WAL
segment included) fails with "Permission denied". The three-host playbook test shows the same end to end:
root-run playbooks, then cron jobs and archive_command as postgres.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils.locking import RunLock
from ansible_collections.pgsafe.backup.plugins.module_utils.metrics import MetricsSink
from ansible_collections.pgsafe.backup.plugins.module_utils.ownership import inherited_owner, make_dirs
from ansible_collections.pgsafe.backup.plugins.module_utils.repository import open_repository
from ansible_collections.pgsafe.backup.plugins.module_utils.runlog import RunLog
from ansible_collections.pgsafe.backup.plugins.module_utils.wal_shipper import Spool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create files for another user")


def owners(top: str) -> dict:
    """Every path below ``top`` (itself included) -> owning user name."""
    found = {top: pwd.getpwuid(os.lstat(top).st_uid).pw_name}
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(directory, name)
            found[path] = pwd.getpwuid(os.lstat(path).st_uid).pw_name
    return found


@pytest.fixture
def installed(tmp_path):
    """state_dir, log_dir, textfile dir and a repository as the install role leaves them (postgres, 0700)."""
    entry = pwd.getpwnam("postgres")
    paths = {}
    for name in ("state", "log", "textfile", "repository"):
        path = tmp_path / name
        path.mkdir(mode=0o700)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        paths[name] = str(path)
    return paths


def test_every_writer_run_as_root_leaves_its_files_to_the_directory_owner(installed):
    with RunLock(installed["state"], "db1", "backup-logical"):
        pass
    sink = MetricsSink.from_spec({"prefix": "pgsafe", "textfile_dir": installed["textfile"],
                                  "state_dir": installed["state"]})
    result = sink.record_backup("db1", "logical", True, 1.5, 1024)
    assert result["warnings"] == [], result
    with RunLog("backup", {"state_dir": installed["state"], "log_dir": installed["log"] + "/runs"},
                logger=logging.getLogger("pgsafe.test-ownership")):
        pass
    Spool(installed["state"], "db1").ensure()
    repository = open_repository({"type": "filesystem", "path": installed["repository"]})
    repository.put_bytes("db1/backups/20260101T000000Z-logical/manifest.json", b"{}")
    assert repository.put_if_absent("db1/wal/00000001/000000010000000000000001.json", b"{}")
    with repository.open_writer("db1/backups/20260101T000000Z-logical/app.dump.zst.enc") as writer:
        writer.write(b"x" * 100)

    for top in installed.values():
        found = owners(top)
        assert set(found.values()) == {"postgres"}, {path: user for path, user in found.items() if user != "postgres"}
    # Each kind of file is really there (the walk above did not pass over empty directories).
    assert os.path.isfile(os.path.join(installed["state"], "locks", "db1.backup-logical.lock"))
    assert any(name.endswith(".json") for name in os.listdir(os.path.join(installed["state"], "metrics")))
    assert any(name.endswith(".prom") for name in os.listdir(installed["textfile"]))
    assert os.path.isdir(os.path.join(installed["state"], "wal-spool", "db1", "requests"))
    assert len(os.listdir(os.path.join(installed["log"], "runs"))) == 1
    # Modes are unchanged by the hand-over: private stays private.
    assert stat.S_IMODE(os.stat(os.path.join(installed["state"], "locks")).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(installed["repository"], "db1", "backups")).st_mode) == 0o700


def test_a_lock_an_older_root_run_left_is_given_back(installed):
    locks = os.path.join(installed["state"], "locks")
    os.mkdir(locks, 0o700)
    os.chown(locks, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
    stale = os.path.join(locks, "db1.prune.lock")
    open(stale, "w").close()  # root's, as a version without the hand-over left it
    with RunLock(installed["state"], "db1", "prune"):
        pass
    assert pwd.getpwuid(os.stat(stale).st_uid).pw_name == "postgres"


def test_nothing_changes_below_root_owned_directories(tmp_path):
    """Root's own directories (the default /var/lib/pgsafe made by hand) keep root's files."""
    assert inherited_owner(str(tmp_path)) is None
    make_dirs(str(tmp_path / "a" / "b"), 0o700)
    assert os.stat(tmp_path / "a" / "b").st_uid == 0
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o700
