#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module backup_restore: restore a logical backup (proven by row counts) or a physical backup to a
point in time (into a new data directory, started on its own port)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_restore
short_description: Restore a logical backup proven by row counts, or a physical backup to a point in time
version_added: 0.1.0
description:
  - O(kind=logical) restores one database of a logical backup (taken by M(pgsafe.backup.pg_backup)) into a
    PostgreSQL cluster. The dump is streamed from the repository, decrypted and decompressed into C(pg_restore),
    and restored into a fresh staging database first. Only when C(pg_restore) succeeded and every table's row
    count equals the count recorded in the backup is the staging database renamed to O(target_database). An
    existing O(target_database) is replaced only with O(force=true), and only after the staging restore was
    proven; a failed restore never destroys the database it was meant to replace.
  - O(kind=physical) restores a V(full) or V(incremental) backup (with its chain) into the new data directory
    O(pgdata), starts it on its own O(port) with C(archive_mode=off) and replays archived WAL up to the target
    (O(target_time), O(target_xid), O(target_lsn), O(target_name), or O(target=latest) / O(target=immediate)).
    The target is checked against the restorable window (from the end of the oldest usable backup to the end of
    the archived WAL) before anything is touched; a target outside it is refused with the window in the message.
    The base backup is chosen automatically (the newest one that ends before the target), or pinned with
    O(backup_id). A damaged incremental makes the restore fall back to the last good backup of its chain plus
    WAL, and the result says what was skipped.
  - When O(kind) is unset, a O(backup_id) decides by its type; otherwise the restore is physical when O(pgdata) or
    a target option is given, and logical if not.
options:
  kind:
    description:
      - What to restore. Unset, the type of O(backup_id) decides; with O(backup_id=latest) it is V(physical) when
        a physical option (O(pgdata), a target, O(tablespace_mapping), O(server_settings), O(restore_command)) is
        given, else V(logical).
    type: str
    choices: [logical, physical]
  backup_id:
    description:
      - Backup to restore. V(latest) picks the newest complete logical backup that holds O(database), or, for
        O(kind=physical), the physical backup that reaches the target.
      - For O(kind=physical) a named backup pins the chain (full or incremental) to restore.
    type: str
    default: latest
  force:
    description:
      - O(kind=logical), replace O(target_database) when it exists (after the restore into staging was proven).
      - O(kind=physical), replace a non-empty O(pgdata) holding a PostgreSQL data directory, stopping (fast
        shutdown) a server running in it. Its contents are deleted only after the backup, the target and the WAL
        were checked. A non-empty directory that is not a data directory (no C(PG_VERSION)) is refused even with
        O(force).
    type: bool
    default: false
  port:
    description:
      - O(kind=logical), the port of the server to restore into (V(5432) when unset).
      - O(kind=physical), the port the restored server is started on and connected to while it recovers.
        Required; it must be free (the copy never takes the production server's port).
    type: int
    default: null
    aliases: [login_port]
  database:
    description: Database of the backup to restore. May be omitted when the backup holds only one. O(kind=logical)
      only.
    type: str
  target_database:
    description: Name of the restored database. Defaults to O(database). O(kind=logical) only.
    type: str
  jobs:
    description:
      - Parallel C(pg_restore) jobs. Above 1 the decrypted dump is staged in a private (0700) directory under
        O(scratch_dir) and removed afterwards (C(pg_restore --jobs) needs a seekable file). O(kind=logical) only.
    type: int
    default: 1
  restore_globals:
    description:
      - Restore roles and tablespaces from the backup first (C(psql) of the globals dump). Roles that already
        exist are reported in RV(globals_errors), not fatal. O(kind=logical) only.
    type: bool
    default: false
  no_owner:
    description: Restore without ownership and privileges (C(--no-owner --no-privileges)), for a cluster that
      lacks the backup's roles. O(kind=logical) only.
    type: bool
    default: false
  verify_row_counts:
    description:
      - Fail (and drop the staging database, leaving the target untouched) when a restored table's row count
        differs from the backup's. Turn off only to inspect a suspect backup. O(kind=logical) only.
    type: bool
    default: true
  scratch_dir:
    description: Parent directory of the private staging directory used when O(jobs) is above 1. Defaults to the
      system temporary directory. O(kind=logical) only.
    type: path
  pgdata:
    description:
      - O(kind=physical), the new data directory to create (mode 0700, owned by O(os_user)). It must not exist or
        be empty, unless O(force=true).
    type: path
  target:
    description:
      - O(kind=physical), V(latest) replays all archived WAL (the default when no target option is given);
        V(immediate) stops as soon as the backup is consistent.
      - Mutually exclusive with O(target_time), O(target_xid), O(target_lsn) and O(target_name).
    type: str
    choices: [latest, immediate]
  target_time:
    description:
      - O(kind=physical), recover up to this moment (ISO 8601 with a zone, for example V(2026-11-22T05:30:00Z);
        without a zone it means UTC). Recovery stops before the first commit after it.
    type: str
  target_xid:
    description: O(kind=physical), recover up to and including this transaction id.
    type: str
  target_lsn:
    description: O(kind=physical), recover up to this WAL location (for example V(0/3000060)).
    type: str
  target_name:
    description: O(kind=physical), recover up to this restore point (C(pg_create_restore_point)).
    type: str
  recovery_target_action:
    description:
      - O(kind=physical), what the server does at the target. V(promote) ends recovery and opens it read-write;
        V(pause) leaves it read-only at the target (C(SELECT pg_wal_replay_resume()) promotes it); V(shutdown)
        stops it there. Not used with O(target=latest).
    type: str
    choices: [promote, pause, shutdown]
    default: promote
  os_user:
    description: O(kind=physical), the OS user that owns the restored files and runs the server.
    type: str
    default: postgres
  tablespace_mapping:
    description:
      - O(kind=physical), where each tablespace goes, keyed by its OID or its original location. Unmapped
        tablespaces go to C(<pgdata>_tblspc/<oid>).
    type: dict
  server_settings:
    description:
      - O(kind=physical), extra settings appended to the copy's C(postgresql.auto.conf) (for example
        C(unix_socket_directories), C(shared_buffers)). C(archive_mode) stays C(off) unless set here.
    type: dict
  restore_command:
    description:
      - O(kind=physical), the C(restore_command) of the copy; must contain C(%f) and C(%p). It is run by
        O(os_user), so it must name a pgsafe that user can execute with a configuration it can read, for example
        V(/usr/local/bin/pgsafe -c /etc/pgsafe/pgsafe.yml wal-fetch %f %p).
    type: str
  recovery_timeout_seconds:
    description: O(kind=physical), how long to wait for recovery to reach the target before failing.
    type: float
    default: 3600
  start:
    description:
      - O(kind=physical), start the server and wait for the target. V(false) only prepares the directory (files,
        C(recovery.signal), settings) for a start by hand.
    type: bool
    default: true
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.postgres
  - pgsafe.backup.attributes
attributes:
  check_mode:
    support: full
    details:
      - O(kind=logical), finds the backup, checks it holds the database, and checks whether the target exists
        (failing, as a real run would, when it does and O(force) is off); restores nothing.
      - O(kind=physical), returns the plan (which backup and chain, the restorable WAL window, the target) and
        the state of O(pgdata); a target outside the window, a non-empty O(pgdata) or a running server without
        O(force), or a busy O(port) fail as a real run would. Creates nothing.
  diff_mode:
    support: full
    details:
      - O(kind=logical), whether the target database exists and its tables' row counts, before and after (in
        check mode, the counts the backup recorded).
      - O(kind=physical), the state of O(pgdata) before, and the chain and target restored into it after.
  idempotent:
    support: none
    details: Every run restores. A second run without O(force) fails because the target now exists; with
      O(force) it restores again and reports changed.
notes:
  - Restoring needs the keys of O(encryption) (any one of the keys that wrap the backup).
  - O(kind=physical) runs on the host that will run the restored server, as root (or as O(os_user)), with the
    server programs of the backup's major version (O(pg_bin_dir), or C(/usr/lib/postgresql/<major>/bin)).
    O(login_host), O(login_user) and O(login_password) are used to connect to the restored server.
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: Restore the newest backup of app beside the live database, to inspect it
  pgsafe.backup.backup_restore:
    database: app
    target_database: app_restored
    login_host: /var/run/postgresql
    repository:
      path: /var/backups/pgsafe
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key

- name: Replace app with a given backup, with roles, four jobs
  pgsafe.backup.backup_restore:
    backup_id: 20261122T050102Z-logical
    database: app
    force: true
    restore_globals: true
    jobs: 4
    scratch_dir: /srv/restore-scratch
    repository:
      type: s3
      bucket: acme-pg-backups
      prefix: prod
    encryption:
      kms_key_ids:
        - arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab

- name: Show what a point-in-time restore would use (check mode only)
  pgsafe.backup.backup_restore:
    kind: physical
    pgdata: /var/lib/postgresql/15/pitr
    port: 5499
    target_time: "2026-11-22T05:30:00Z"
    repository:
      path: /var/backups/pgsafe
  check_mode: true
  register: pitr_plan

- name: Restore the cluster as it was at 05:30 UTC into a new directory, on port 5499
  pgsafe.backup.backup_restore:
    kind: physical
    pgdata: /var/lib/postgresql/15/pitr
    port: 5499
    login_host: 127.0.0.1
    target_time: "2026-11-22T05:30:00Z"
    restore_command: /usr/local/bin/pgsafe -c /etc/pgsafe/pgsafe.yml wal-fetch %f %p
    server_settings:
      unix_socket_directories: /var/run/postgresql
    repository:
      path: /var/backups/pgsafe
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key
  register: pitr
"""

RETURN = r"""
kind:
  description: What was (or would be) restored, V(logical) or V(physical).
  returned: success
  type: str
backup_id:
  description: The backup restored (for O(kind=physical), the newest backup of the chain used).
  returned: success
  type: str
  sample: 20261122T050102Z-logical
database:
  description: The database of the backup restored.
  returned: success, O(kind=logical)
  type: str
target_database:
  description: The database written.
  returned: success, O(kind=logical)
  type: str
replaces_existing:
  description: Whether an existing target database was (or would be) replaced.
  returned: success, O(kind=logical)
  type: bool
row_counts:
  description: Exact rows per table of the restored database.
  returned: success, O(kind=logical), not in check mode
  type: dict
  sample: {"public.users": 2000, "public.bookings": 10000}
row_count_mismatches:
  description: Tables whose restored count differs from the backup's (empty when proven).
  returned: success, O(kind=logical), not in check mode
  type: list
  elements: dict
row_counts_match:
  description: True when every table's restored row count equals the backup's.
  returned: success, O(kind=logical), not in check mode
  type: bool
globals_errors:
  description: Errors psql reported while restoring roles and tablespaces (usually roles that already exist).
  returned: when O(restore_globals=true), not in check mode
  type: list
  elements: str
stale_staging_dropped:
  description:
    - Staging databases (C(<target>_pgsafe_<timestamp>)) left by earlier restores of this target that were
      killed before they finished, dropped before this restore started. They never replaced the target.
  returned: success, O(kind=logical), not in check mode
  type: list
  elements: str
chain:
  description: The backups restored, from the full to the newest incremental used.
  returned: success, O(kind=physical)
  type: list
  elements: str
  sample: ["20261122T050000Z-full", "20261123T050000Z-incremental"]
base_backup_id:
  description: The newest backup of the chain the plan uses.
  returned: check mode, O(kind=physical)
  type: str
target:
  description: The recovery target (C(type) and C(value)).
  returned: success, O(kind=physical)
  type: dict
  sample: {"type": "time", "value": "2026-11-22T05:30:00.000000Z"}
target_reachable:
  description: True when the target lies in the restorable window (an unreachable target fails instead).
  returned: check mode, O(kind=physical)
  type: bool
window:
  description: The restorable window, C(start) (end of the oldest usable backup) and C(end) (end of the archived
    WAL), each with C(time) and C(lsn).
  returned: success, O(kind=physical)
  type: dict
window_text:
  description: The window as one sentence.
  returned: check mode, O(kind=physical)
  type: str
skipped:
  description: Backups of the chain that were unusable, each with C(backup_id) and C(reason) (backup chain
    recovery).
  returned: success, O(kind=physical)
  type: list
  elements: dict
chain_recovery:
  description: What the restore fell back to when a backup of the chain was unusable.
  returned: when a backup of the chain was skipped, O(kind=physical), not in check mode
  type: str
newer_backups_not_used:
  description: Physical backups newer than the chosen base (they end after the target).
  returned: success, O(kind=physical)
  type: list
  elements: str
destination:
  description:
    - The state of O(pgdata) found by the checks, C(exists), C(empty), C(is_data_directory), C(running_server)
      (pid and port, or null), C(replaces_existing), C(would_stop_server), and C(tablespaces) (oid to the
      directory each goes to).
  returned: check mode, O(kind=physical)
  type: dict
replaced_existing:
  description: True when a non-empty O(pgdata) was replaced (O(force=true)).
  returned: success, O(kind=physical), not in check mode
  type: bool
stopped_server:
  description: The server stopped in O(pgdata) before it was replaced (pid and port), or null.
  returned: success, O(kind=physical), not in check mode
  type: dict
pgdata:
  description: The data directory restored into.
  returned: success, O(kind=physical), not in check mode
  type: str
port:
  description: The port the restored server runs on.
  returned: success, O(kind=physical), not in check mode
  type: int
state:
  description: Where the server is, V(promoted), V(paused at the target ...), V(shut down at the target), or
    V(prepared (not started)).
  returned: success, O(kind=physical), not in check mode
  type: str
reached:
  description:
    - The point reached, from the server's own log, C(stop) (the C(recovery stopping ...) line),
      C(last_transaction_time), C(redo_done_at), C(consistent_at), C(new_timeline) and C(current_lsn).
  returned: success, O(kind=physical), not in check mode, O(start=true)
  type: dict
recovery_settings:
  description: The settings appended to the copy's C(postgresql.auto.conf).
  returned: success, O(kind=physical), not in check mode
  type: dict
server_log:
  description: The restored server's log file (C(<pgdata>.restore.log)).
  returned: success, O(kind=physical), not in check mode, O(start=true)
  type: str
files_restored:
  description: Files written into O(pgdata) and its tablespaces.
  returned: success, O(kind=physical), not in check mode
  type: int
duration_seconds:
  description: Wall time of the restore.
  returned: success, not in check mode
  type: float
diff:
  description: Before and after of the target database (logical) or of O(pgdata) (physical).
  returned: diff mode
  type: dict
error:
  description: What failed, where, and the fix.
  returned: failure
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.logical_restore import (
    plan_logical_restore, run_logical_restore)
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    module_argument_spec, settings_from_params)
from ansible_collections.pgsafe.backup.plugins.module_utils.physical_restore import (
    infer_restore_kind, plan_physical_restore, run_physical_restore)
from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import database_exists, table_row_counts

LOGICAL_ONLY = ("database", "target_database", "scratch_dir")
PHYSICAL_ONLY = ("pgdata", "target", "target_time", "target_xid", "target_lsn", "target_name", "tablespace_mapping",
                 "server_settings", "restore_command")
TARGET_OPTIONS = ("time", "xid", "lsn", "name")


def database_state(context, name: str) -> dict:
    """What diff mode shows of the target: does it exist, and how many rows each table holds."""
    if not database_exists(context.postgres, name):
        return {"database": name, "exists": False, "row_counts": {}}
    return {"database": name, "exists": True, "row_counts": table_row_counts(context.postgres, name)}


def recovery_target(params: dict) -> dict:
    """The engine's target from the (mutually exclusive) target options; latest when none is given."""
    for kind in TARGET_OPTIONS:
        if params["target_" + kind] is not None:
            return {"type": kind, "value": params["target_" + kind]}
    return {"type": params["target"] or "latest"}


def restore_logical(module, context) -> dict:
    params = module.params
    selection = (params["backup_id"], params["database"], params["target_database"], params["force"])
    before = None
    if module.check_mode or module._diff:
        # Check mode's whole answer; in diff mode also the target's name before anything changes.
        plan = plan_logical_restore(context, *selection)
        manifest = plan.pop("manifest")
        before = database_state(context, plan["target_database"]) if module._diff else None
    if module.check_mode:
        result = plan
        after = {"database": plan["target_database"], "exists": True,
                 "row_counts": manifest.get("row_counts", {}).get(plan["database"], {})}
    else:
        result = run_logical_restore(context, *selection, jobs=params["jobs"],
                                     restore_globals=params["restore_globals"], no_owner=params["no_owner"],
                                     scratch_dir=params["scratch_dir"], verify_row_counts=params["verify_row_counts"])
        after = {"database": result["target_database"], "exists": True, "row_counts": result["row_counts"]}
    if module._diff:
        result["diff"] = {"before": before, "after": after}
    return result


def restore_physical(module, context) -> dict:
    params = module.params
    target = recovery_target(params)
    backup_id = None if params["backup_id"] == "latest" else params["backup_id"]
    if module.check_mode:
        plan = plan_physical_restore(context, target, backup_id, params["pgdata"], params["port"], params["force"],
                                     params["tablespace_mapping"], params["start"])
        plan.pop("chain_manifests")
        result = dict(plan, changed=True, target_reachable=True, backup_id=plan["base_backup_id"],
                      target={"type": plan["target"]["type"], "value": plan["target"]["value"]})
        before = plan["destination"]
    else:
        result = run_physical_restore(context, params["pgdata"], params["port"], target, backup_id,
                                      params["restore_command"], params["recovery_target_action"], params["start"],
                                      params["os_user"], params["tablespace_mapping"], params["server_settings"],
                                      params["recovery_timeout_seconds"], params["login_host"], params["force"])
        before = {"pgdata": params["pgdata"], "replaces_existing": result["replaced_existing"],
                  "running_server": result["stopped_server"]}
    if module._diff:
        result["diff"] = {"before": before, "after": {"pgdata": params["pgdata"], "chain": result["chain"],
                                                      "target": result["target"]}}
    return result


def main():
    argument_spec = module_argument_spec(
        with_postgres=True,
        # Logical: the server restored into (5432 when unset). Physical: the restored copy's own port.
        port={"type": "int", "aliases": ["login_port"]},
        kind={"type": "str", "choices": ["logical", "physical"]},
        backup_id={"type": "str", "default": "latest"},
        force={"type": "bool", "default": False},
        database={"type": "str"},
        target_database={"type": "str"},
        jobs={"type": "int", "default": 1},
        restore_globals={"type": "bool", "default": False},
        no_owner={"type": "bool", "default": False},
        verify_row_counts={"type": "bool", "default": True},
        scratch_dir={"type": "path"},
        pgdata={"type": "path"},
        target={"type": "str", "choices": ["latest", "immediate"]},
        target_time={"type": "str"},
        target_xid={"type": "str"},
        target_lsn={"type": "str"},
        target_name={"type": "str"},
        recovery_target_action={"type": "str", "choices": ["promote", "pause", "shutdown"], "default": "promote"},
        os_user={"type": "str", "default": "postgres"},
        tablespace_mapping={"type": "dict"},
        server_settings={"type": "dict"},
        restore_command={"type": "str"},
        recovery_timeout_seconds={"type": "float", "default": 3600.0},
        start={"type": "bool", "default": True},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, mutually_exclusive=[
        ["target", "target_time", "target_xid", "target_lsn", "target_name"]])
    params = module.params
    try:
        context = Context.from_settings(settings_from_params(params))
        physical_given = [name for name in PHYSICAL_ONLY if params[name] is not None]
        kind = infer_restore_kind(context, params["kind"], params["backup_id"], bool(physical_given))
        if kind == "physical":
            logical_given = [name for name in LOGICAL_ONLY if params[name] is not None]
            missing = [name for name in ("pgdata", "port") if params[name] is None]
            if logical_given or missing:
                module.fail_json(msg="a physical restore %s" % "; ".join(filter(None, [
                    "needs %s (the new data directory and the restored server's own port)" % " and ".join(missing)
                    if missing else "",
                    "does not take %s (logical-restore options)" % ", ".join(logical_given) if logical_given
                    else ""])), kind=kind)
            result = restore_physical(module, context)
        else:
            if physical_given:
                module.fail_json(msg="a logical restore does not take %s (physical-restore options); set "
                                 "kind=physical for a point-in-time restore" % ", ".join(physical_given), kind=kind)
            result = restore_logical(module, context)
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    result["kind"] = kind
    module.exit_json(**result)


if __name__ == "__main__":
    main()
