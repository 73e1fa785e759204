# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared setup of the WAL, physical-backup, PITR and module tests.

``ArchivingCluster``: a cluster with 1 MiB WAL segments (initdb --wal-segsize=1, so tests
switch many segments in little time), archive_mode on with archive_command = `pgsafe wal-push
%p` (through a wrapper script, as the postgres user), and a pgsafe settings file the postgres
user can read. ``restore_into`` runs a physical restore into a fresh directory on a free port;
``table_checksums`` fingerprints every user table for the PITR comparisons.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time

import yaml

from tests.support.pgcluster import PG_BIN, Cluster, _as_postgres

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
BOOT = ("import sys; from ansible_collections.pgsafe.backup.plugins.module_utils.cli import main; "
        "sys.exit(main())")
# The venv's interpreter lives under /root (mode 0700 here), which the postgres user cannot
# execute: the wrapper runs the system Python of the same minor version on the venv's packages.
SYSTEM_PYTHON = "/usr/bin/python3.%d" % sys.version_info.minor
WRAPPER_PYTHON = os.environ.get("PGSAFE_TEST_PYTHON") or (SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON)
                                                          else sys.executable)


def _postgres_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def chown_postgres(*paths: str) -> None:
    uid, gid = _postgres_ids()
    for path in paths:
        os.chown(path, uid, gid)


class ArchivingCluster(Cluster):
    """A cluster that archives through pgsafe into its own filesystem (or S3) repository."""

    def __init__(self, cluster_name: str = "main", repository: dict | None = None, extra_conf: dict | None = None):
        base = tempfile.mkdtemp(prefix="pgsafe-wal-")
        os.chmod(base, 0o755)
        super().__init__(base_dir=os.path.join(base, "pg"))
        self.root = base
        self.cluster_name = cluster_name
        self.state_dir = os.path.join(base, "state")
        self.config_path = os.path.join(base, "pgsafe.yml")
        self.wrapper = os.path.join(base, "pgsafe")
        self.key_path = os.path.join(base, "keys", "wal.key")
        self.extra_conf = dict(extra_conf or {})
        self.shipper: subprocess.Popen | None = None
        if repository is None:
            repo_path = os.path.join(base, "repo")
            repository = {"type": "filesystem", "path": repo_path}
            # The postgres user writes wal/, root (this test process) writes backups/.
            os.makedirs(os.path.join(repo_path, cluster_name, "wal"), mode=0o700)
            chown_postgres(repo_path, os.path.join(repo_path, cluster_name),
                           os.path.join(repo_path, cluster_name, "wal"))
        self.repository = repository
        os.makedirs(os.path.join(self.state_dir, "locks"), mode=0o700)
        chown_postgres(self.state_dir, os.path.join(self.state_dir, "locks"))
        from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import generate_key_file

        generate_key_file(self.key_path)
        chown_postgres(os.path.dirname(self.key_path), self.key_path)

    # --- settings ------------------------------------------------------------------------
    def pgsafe_settings(self) -> dict:
        return {
            "cluster": self.cluster_name,
            "state_dir": self.state_dir,
            "repository": dict(self.repository),
            "encryption": {"key_files": [{"path": self.key_path}]},
            "compression": {"algorithm": "zstd", "level": 1, "threads": 0},
            "postgres": {"host": self.host, "port": self.port, "user": "postgres", "bin_dir": PG_BIN},
            "wal": {"command": self.wrapper, "pgdata": self.datadir, "parallel": 4, "archive_wait_seconds": 60,
                    "push_timeout_seconds": 60, "prefetch": 8},
        }

    def context(self, **overrides):
        from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context

        settings = self.pgsafe_settings()
        settings.update(overrides)
        return Context.from_settings(settings)

    def init(self) -> "ArchivingCluster":
        os.makedirs(self.socket_dir, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        chown_postgres(self.base_dir, self.socket_dir)
        _as_postgres([os.path.join(PG_BIN, "initdb"), "-D", self.datadir, "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--wal-segsize=1"])
        with open(self.config_path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(self.pgsafe_settings(), handle)
        os.chmod(self.config_path, 0o600)
        with open(self.wrapper, "w", encoding="utf-8") as handle:
            handle.write("#!/bin/sh\nPYTHONPATH=%s:%s exec %s -c '%s' -c %s \"$@\"\n" % (
                COLLECTIONS, sysconfig.get_paths()["purelib"], WRAPPER_PYTHON, BOOT, self.config_path))
        os.chmod(self.wrapper, 0o755)
        chown_postgres(self.config_path)
        conf = {"archive_mode": "on", "archive_command": "%s wal-push %%p" % self.wrapper, "wal_level": "replica",
                "archive_timeout": "60", "max_wal_size": "64MB", "min_wal_size": "8MB", "wal_keep_size": "0",
                "unix_socket_directories": self.socket_dir, "listen_addresses": "127.0.0.1",
                "port": str(self.port)}
        conf.update(self.extra_conf)
        with open(os.path.join(self.datadir, "postgresql.conf"), "a", encoding="utf-8") as handle:
            handle.write("\n".join("%s = '%s'" % (key, value) for key, value in conf.items()) + "\n")
        return self

    # --- processes ------------------------------------------------------------------------
    def pgsafe(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the CLI as the postgres user, exactly as PostgreSQL would."""
        uid, gid = _postgres_ids()
        result = subprocess.run([self.wrapper] + list(args), capture_output=True, text=True, timeout=timeout,
                                user=uid, group=gid, extra_groups=[], cwd=self.datadir, check=False)
        if check and result.returncode != 0:
            raise AssertionError("pgsafe %s failed (%d): %s" % (" ".join(args), result.returncode, result.stderr))
        return result

    def start_shipper(self) -> subprocess.Popen:
        uid, gid = _postgres_ids()
        status_path = os.path.join(self.state_dir, "wal-status", "%s.json" % self.cluster_name)
        if os.path.exists(status_path):
            os.unlink(status_path)  # wait for THIS shipper's first status below
        self.shipper = subprocess.Popen([self.wrapper, "wal-shipper"], user=uid, group=gid, extra_groups=[],
                                        stdout=subprocess.DEVNULL, stderr=open(os.path.join(  # noqa: SIM115
                                            self.root, "shipper.log"), "ab"), cwd=self.root)
        deadline = time.time() + 20
        while time.time() < deadline:
            if os.path.exists(os.path.join(self.state_dir, "wal-status", "%s.json" % self.cluster_name)):
                return self.shipper
            if self.shipper.poll() is not None:
                raise AssertionError("the shipper exited: %s" % self.shipper_log())
            time.sleep(0.05)
        raise AssertionError("the shipper did not start: %s" % self.shipper_log())

    def shipper_log(self) -> str:
        try:
            with open(os.path.join(self.root, "shipper.log"), "r", encoding="utf-8", errors="replace") as handle:
                return handle.read()[-3000:]
        except OSError:
            return ""

    def stop_shipper(self, sig: int = signal.SIGTERM) -> None:
        if self.shipper is not None and self.shipper.poll() is None:
            self.shipper.send_signal(sig)
            self.shipper.wait(timeout=30)
        self.shipper = None

    def wait_archived(self, timeout: float = 60, stall_seconds: float | None = None) -> None:
        """Until PostgreSQL has no .ready file left (every finished file acknowledged).

        With ``stall_seconds``, ``timeout`` is only an overall bound: the wait fails early when
        no .ready file was acknowledged for ``stall_seconds`` (a stuck archiver), and a backlog
        that keeps draining, at whatever speed a loaded machine allows, is waited for.
        """
        status_dir = os.path.join(self.datadir, "pg_wal", "archive_status")
        started = last_progress = time.time()
        previous: set = set()
        why = "after %.0f s" % timeout
        while time.time() < started + timeout:
            ready = {name for name in os.listdir(status_dir) if name.endswith(".ready")}
            if not ready:
                return
            if previous - ready:  # some finished file was acknowledged since the last look
                last_progress = time.time()
            previous = ready
            if stall_seconds is not None and time.time() - last_progress > stall_seconds:
                why = "with no progress for %.0f s (stalled)" % stall_seconds
                break
            time.sleep(0.1)
        raise AssertionError("PostgreSQL still has .ready files %s: %s; shipper log: %s; pg_stat_archiver: %s; "
                             "server log: %s" % (
                                 why, sorted(name for name in os.listdir(status_dir) if name.endswith(".ready")),
                                 self.shipper_log(), self.psql("SELECT * FROM pg_stat_archiver", check=False),
                                 self.server_log()))

    def server_log(self) -> str:
        try:
            with open(os.path.join(self.base_dir, "server.log"), "r", encoding="utf-8", errors="replace") as handle:
                return handle.read()[-3000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        self.stop_shipper(signal.SIGKILL)
        super().destroy()
        shutil.rmtree(self.root, ignore_errors=True)


def settle(cluster: Cluster) -> None:
    """Make the cluster's files older than the incremental backup's mtime margin, as on a server whose
    data were loaded before its first base backup: a CHECKPOINT writes the pages the load dirtied (else
    pg_backup_start's checkpoint writes them during the full backup, whose incremental must then store
    them again), then wait out the margin. Without it, a full taken right after a load re-stores
    everything the load touched in the next incremental, correctly, and a test meant to measure what
    an incremental saves measures the load instead."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_backup import STABLE_MARGIN_NS

    cluster.psql("CHECKPOINT")
    time.sleep(STABLE_MARGIN_NS / 1e9 + 0.2)


def restore_into(source: ArchivingCluster, **options) -> tuple[dict, Cluster]:
    """Run a physical restore as the engine does for the CLI; returns (result, restored cluster)."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.physical_restore import run_physical_restore

    base = tempfile.mkdtemp(prefix="restore-", dir=source.root)
    os.chmod(base, 0o755)
    sock = os.path.join(base, "sock")
    os.makedirs(sock)
    chown_postgres(sock)
    restored = Cluster(base_dir=base)
    restored.datadir = os.path.join(base, "data")
    restored.socket_dir = sock
    settings = dict(options.pop("server_settings", {}))
    settings.setdefault("unix_socket_directories", sock)
    result = run_physical_restore(source.context(), restored.datadir, restored.port, server_settings=settings,
                                  **options)
    restored.running = True
    return result, restored


def table_checksums(cluster: Cluster, dbname: str) -> dict:
    """md5 of every user table's rows in id order (the PITR comparisons)."""
    tables = cluster.psql("SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
                          "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1", dbname)
    result = {}
    for table in tables.splitlines():
        order = "id" if cluster.psql("SELECT count(*) FROM information_schema.columns WHERE column_name = 'id' AND "
                                     "quote_ident(table_schema) || '.' || quote_ident(table_name) = '%s'" % table,
                                     dbname) == "1" else "t::text"
        result[table] = cluster.psql("SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY %s)), "
                                     "'') FROM %s t" % (order, table), dbname)
    return result


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s" % what)
