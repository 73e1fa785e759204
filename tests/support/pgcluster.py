# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Throwaway PostgreSQL clusters for tests and the demo.

initdb refuses root, so the cluster is initialised and run as the ``postgres``
user, in a directory it owns, with a private socket directory and a free port on
127.0.0.1: the system cluster (port 5432) is never touched.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

PG_BIN = os.environ.get("PGSAFE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(argv, **kwargs):
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--"] + list(argv)
    result = subprocess.run(argv, check=False, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError("%s failed (%d): %s%s" % (" ".join(argv), result.returncode, result.stdout, result.stderr))
    return result


class Cluster:
    """A PostgreSQL cluster in its own directory, on its own port."""

    def __init__(self, base_dir: str | None = None, port: int | None = None, settings: dict | None = None):
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="pgsafe-pg-")
        self.datadir = os.path.join(self.base_dir, "data")
        self.socket_dir = os.path.join(self.base_dir, "sock")
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.bin_dir = PG_BIN
        self.settings = dict(settings or {})
        self.running = False

    # --- lifecycle -----------------------------------------------------------------
    def _chown(self, path: str) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def init(self) -> "Cluster":
        os.makedirs(self.socket_dir, exist_ok=True)  # also creates base_dir when it was given
        os.chmod(self.base_dir, 0o755)
        self._chown(self.base_dir)
        self._chown(self.socket_dir)
        _as_postgres([os.path.join(PG_BIN, "initdb"), "-D", self.datadir, "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        return self

    def start(self) -> "Cluster":
        options = ["-p %d" % self.port, "-c listen_addresses=127.0.0.1",
                   "-c unix_socket_directories=%s" % self.socket_dir, "-c fsync=off"]
        options += ["-c %s=%s" % (key, value) for key, value in self.settings.items()]
        _as_postgres([os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-w", "-t", "60",
                      "-l", os.path.join(self.base_dir, "server.log"), "-o", " ".join(options), "start"])
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir,
                            "-m", mode, "-w", "stop"] if os.geteuid() == 0 else
                           [os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "stop"],
                           capture_output=True, check=False)  # a cluster that is already down is fine
            self.running = False

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # --- access --------------------------------------------------------------------
    def conn_spec(self) -> dict:
        """The engine's postgres settings for this cluster."""
        return {"host": self.host, "port": self.port, "user": self.user, "bin_dir": self.bin_dir}

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user})
        env.pop("PGPASSWORD", None)
        return env

    def psql(self, sql: str, dbname: str = "postgres", check: bool = True) -> str:
        """Run SQL, return unaligned tuples-only output stripped."""
        result = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                 "-d", dbname, "-c", sql], env=self.env(), capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise RuntimeError("psql failed: %s" % result.stderr)
        return result.stdout.strip()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if subprocess.run([os.path.join(PG_BIN, "pg_isready"), "-h", self.host, "-p", str(self.port)],
                              capture_output=True, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("cluster on port %d not ready" % self.port)


SAMPLE_SQL = """
CREATE TABLE services (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL);
CREATE TABLE users (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL, created_at timestamptz NOT NULL,
                    bio text);
CREATE TABLE bookings (id bigserial PRIMARY KEY, user_id bigint REFERENCES users(id), service_id int
                       REFERENCES services(id), starts_at timestamptz NOT NULL, amount numeric(12,2), note text);
CREATE SCHEMA audit;
CREATE TABLE audit.events (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), payload jsonb);
INSERT INTO services (name, price) SELECT 'service ' || g, (g * 7.5)::numeric(10,2) FROM generate_series(1, 25) g;
INSERT INTO users (email, created_at, bio)
  SELECT 'user' || g || '@example.com', timestamptz '2024-01-01' + g * interval '37 minutes',
         md5(g::text) || ' ' || repeat(chr(97 + g % 26), g % 40)
  FROM generate_series(1, %(users)d) g;
INSERT INTO bookings (user_id, service_id, starts_at, amount, note)
  SELECT 1 + (g * 7919) %% %(users)d, 1 + g %% 25, timestamptz '2025-01-01' + g * interval '11 minutes',
         (g %% 1000) / 3.0, CASE WHEN g %% 3 = 0 THEN 'repeat customer' ELSE md5(g::text) END
  FROM generate_series(1, %(bookings)d) g;
INSERT INTO audit.events (payload) SELECT jsonb_build_object('n', g, 'kind', 'login') FROM generate_series(1, 500) g;
"""


def load_sample(cluster: Cluster, dbname: str = "app", users: int = 2000, bookings: int = 10000) -> dict:
    """Create a database with the seeds' key tables (users, bookings, services); return row counts."""
    cluster.psql('CREATE DATABASE "%s"' % dbname)
    cluster.psql(SAMPLE_SQL.replace("%%", "%").replace("%(users)d", str(users)).replace("%(bookings)d", str(bookings)),
                 dbname=dbname)
    return {"public.services": 25, "public.users": users, "public.bookings": bookings, "audit.events": 500}
