# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """PostgreSQL connection options (module_utils/module_args.py: postgres_argument_spec)."""

    DOCUMENTATION = r"""
options:
  login_host:
    description: Host or socket directory of the PostgreSQL server. Unset uses the default local socket.
    type: str
    aliases: [host]
  port:
    description: Server port.
    type: int
    default: 5432
    aliases: [login_port]
  login_user:
    description: Role to connect as. A superuser (or a role with C(pg_read_all_data)) dumps everything.
    type: str
    default: postgres
  login_password:
    description:
      - Password. Passed to PostgreSQL programs only through E(PGPASSWORD) in their environment, never
        on a command line; never logged.
    type: str
  login_db:
    description: Maintenance database used to list, create and drop databases.
    type: str
    default: postgres
  ssl_mode:
    description: libpq C(sslmode).
    type: str
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  pg_bin_dir:
    description:
      - Directory of the PostgreSQL client programs. Unset picks C(/usr/lib/postgresql/<server major>/bin)
        when it exists, else the programs on E(PATH).
    type: path
requirements:
  - psycopg >= 3 (psycopg[binary])
  - PostgreSQL client programs (pg_dump, pg_dumpall, pg_restore, psql) matching the server version
"""
