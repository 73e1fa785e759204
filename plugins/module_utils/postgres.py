# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL operations: connections, client programs, snapshots and exact row counts.

The password reaches PostgreSQL and its client programs only through the
environment (``PGPASSWORD``) or the driver's keyword argument, never a command
line or a connection string that could be logged.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import (
    ConfigError, PostgresError, missing_python_package)

try:
    import psycopg
    from psycopg import sql as pgsql
except ImportError:  # pragma: no cover - exercised by ansible-test's import sanity test
    psycopg = None
    pgsql = None

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

# Ordinary tables whose data pg_dump writes: not system schemas, not temporary, not
# extension members (their data is not dumped unless the extension asks for it).
USER_TABLES_SQL = """
SELECT n.nspname, c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%'
   AND n.nspname NOT LIKE 'pg\\_temp%%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                   AND d.deptype = 'e')
 ORDER BY 1, 2
"""


@dataclasses.dataclass
class PostgresTarget:
    """Where and as whom to connect. Built from the ``postgres`` settings dict."""

    host: str | None = None
    port: int = 5432
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    dbname: str = "postgres"
    sslmode: str | None = None
    bin_dir: str | None = None
    connect_timeout: int = 10

    @classmethod
    def from_spec(cls, spec: dict | None) -> "PostgresTarget":
        spec = dict(spec or {})
        unknown = set(spec) - {"host", "port", "user", "password", "dbname", "sslmode", "bin_dir", "connect_timeout"}
        if unknown:
            raise ConfigError("unknown postgres option(s): %s" % ", ".join(sorted(unknown)), where="postgres",
                              fix="use host, port, user, password, dbname, sslmode, bin_dir, connect_timeout")
        try:
            port = int(spec.get("port") or 5432)
        except (TypeError, ValueError) as exc:
            raise ConfigError("port %r is not a number" % spec.get("port"), where="postgres.port",
                              fix="use the server's TCP port, e.g. 5432") from exc
        if not 0 < port < 65536:
            raise ConfigError("port %d is out of range" % port, where="postgres.port", fix="use 1-65535")
        sslmode = spec.get("sslmode")
        if sslmode and sslmode not in SSL_MODES:
            raise ConfigError("sslmode %r is not valid" % sslmode, where="postgres.sslmode",
                              fix="use one of: %s" % ", ".join(SSL_MODES))
        bin_dir = spec.get("bin_dir")
        if bin_dir and not os.path.isdir(bin_dir):
            raise ConfigError("bin_dir %s does not exist" % bin_dir, where="postgres.bin_dir",
                              fix="point it at the PostgreSQL client programs, e.g. /usr/lib/postgresql/15/bin, "
                              "or leave it unset to pick the ones matching the server version")
        return cls(host=spec.get("host"), port=port, user=spec.get("user"), password=spec.get("password"),
                   dbname=spec.get("dbname") or "postgres", sslmode=sslmode, bin_dir=bin_dir,
                   connect_timeout=int(spec.get("connect_timeout") or 10))

    @property
    def where(self) -> str:
        return "postgresql://%s@%s:%s" % (self.user or "", self.host or "local socket", self.port)

    # --- client programs -------------------------------------------------------------
    def env(self, dbname: str | None = None) -> dict:
        """Environment for pg_dump/pg_restore/psql: connection by libpq variables, password included."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update({"PGPORT": str(self.port), "PGAPPNAME": "pgsafe", "PGCONNECT_TIMEOUT": str(self.connect_timeout),
                    "PGDATABASE": dbname or self.dbname})
        if self.host:
            env["PGHOST"] = self.host
        if self.user:
            env["PGUSER"] = self.user
        if self.password:
            env["PGPASSWORD"] = self.password
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        return env

    def program(self, name: str, server_major: int | None = None) -> str:
        """Path of a client program, preferring the version that matches the server."""
        candidates = []
        if self.bin_dir:
            candidates.append(os.path.join(self.bin_dir, name))
        if server_major:
            candidates.append("/usr/lib/postgresql/%d/bin/%s" % (server_major, name))
        for path in candidates:
            if os.access(path, os.X_OK):
                return path
        found = shutil.which(name)
        if found:
            return found
        raise ConfigError("the PostgreSQL program %s was not found" % name, where="postgres.bin_dir",
                          fix="install the PostgreSQL client package matching the server (e.g. postgresql-client-%s) "
                          "or set postgres.bin_dir" % (server_major or "15"))

    # --- connections -------------------------------------------------------------------
    def connect(self, dbname: str | None = None, autocommit: bool = True):
        if psycopg is None:
            raise missing_python_package("psycopg[binary]")
        kwargs = {"dbname": dbname or self.dbname, "port": self.port, "connect_timeout": self.connect_timeout,
                  "application_name": "pgsafe", "autocommit": autocommit}
        for key, value in (("host", self.host), ("user", self.user), ("password", self.password),
                           ("sslmode", self.sslmode)):
            if value:
                kwargs[key] = value
        try:
            return psycopg.connect(**kwargs)
        except psycopg.Error as exc:
            raise connection_error(exc, self, dbname or self.dbname) from None


def connection_error(exc: Exception, target: PostgresTarget, dbname: str) -> PostgresError:
    """Turn a libpq failure into a message with a fix (never echoing the password)."""
    text = str(exc).strip().replace(target.password or "\0", "***")
    where = "%s/%s" % (target.where, dbname)
    if "password authentication failed" in text or "no password supplied" in text:
        fix = "check login_user/login_password (postgres.user/password) or the server's pg_hba.conf"
    elif re.search(r'database ".*" does not exist', text):
        fix = "create the database or correct the database name"
    elif "Connection refused" in text or "could not connect" in text or "timeout expired" in text:
        fix = "start PostgreSQL or correct postgres.host/port; check with `pg_isready -h HOST -p PORT`"
    elif "role" in text and "does not exist" in text:
        fix = "create the role or set postgres.user to an existing one"
    else:
        fix = "read the server's message above"
    return PostgresError("cannot connect to PostgreSQL: %s" % text.splitlines()[0] if text else "cannot connect",
                         where=where, fix=fix)


def server_info(target: PostgresTarget) -> dict:
    """Version, system identifier and role of the server (for the manifest and preflight)."""
    with target.connect() as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
            "(SELECT system_identifier::text FROM pg_control_system()), pg_is_in_recovery(), "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)").fetchone()
    return {"version": row[0], "version_num": row[1], "major": row[1] // 10000, "system_identifier": row[2],
            "in_recovery": row[3], "superuser": row[4]}


def list_databases(target: PostgresTarget) -> list[str]:
    """Every database a dump of 'all' covers: connectable, not a template."""
    with target.connect() as conn:
        return [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname")]


def database_exists(target: PostgresTarget, dbname: str) -> bool:
    with target.connect() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None


def create_database(target: PostgresTarget, dbname: str, owner: str | None = None) -> None:
    query = pgsql.SQL("CREATE DATABASE {} TEMPLATE template0").format(pgsql.Identifier(dbname))
    if owner:
        query = query + pgsql.SQL(" OWNER {}").format(pgsql.Identifier(owner))
    _execute(target, query, "create database %s" % dbname)


def drop_database(target: PostgresTarget, dbname: str) -> None:
    """Drop a database, disconnecting its sessions (PostgreSQL 13+ ``WITH (FORCE)``)."""
    _execute(target, pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(dbname)),
             "drop database %s" % dbname)


def _execute(target: PostgresTarget, query, action: str) -> None:
    with target.connect() as conn:
        try:
            conn.execute(query)
        except psycopg.Error as exc:
            raise PostgresError("cannot %s: %s" % (action, str(exc).strip()), where=target.where,
                                fix="check the role's privileges (CREATEDB or ownership)") from None


def count_rows(conn) -> dict[str, int]:
    """Exact row count of every user table visible to ``conn``'s current snapshot."""
    counts = {}
    for schema, table in conn.execute(USER_TABLES_SQL).fetchall():
        query = pgsql.SQL("SELECT count(*) FROM {}.{}").format(pgsql.Identifier(schema), pgsql.Identifier(table))
        counts["%s.%s" % (schema, table)] = conn.execute(query).fetchone()[0]
    return counts


def table_row_counts(target: PostgresTarget, dbname: str) -> dict[str, int]:
    with target.connect(dbname) as conn:
        return count_rows(conn)


class ExportedSnapshot:
    """A REPEATABLE READ transaction whose snapshot pg_dump imports (``--snapshot``).

    Row counts taken here see exactly the rows the dump writes. The transaction stays
    open until ``close()``, which must come after pg_dump has started (it imports the
    snapshot at its own start).
    """

    def __init__(self, target: PostgresTarget, dbname: str):
        self.dbname = dbname
        self.conn = target.connect(dbname, autocommit=False)
        try:
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            self.snapshot_id = self.conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        except psycopg.Error as exc:
            self.conn.close()
            raise PostgresError("cannot export a snapshot of %s: %s" % (dbname, str(exc).strip()),
                                where=target.where, fix="read the server's message") from None

    def row_counts(self) -> dict[str, int]:
        try:
            return count_rows(self.conn)
        except psycopg.Error as exc:
            raise PostgresError("cannot count rows in %s: %s" % (self.dbname, str(exc).strip()),
                                fix="the role needs SELECT on every table it backs up (or use a superuser)") from None

    def close(self) -> None:
        try:
            self.conn.rollback()
        except psycopg.Error:
            pass  # the server went away mid-dump: nothing is left to roll back, and pg_dump's error says why
        finally:
            self.conn.close()
