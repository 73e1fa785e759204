#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module backup_check: the system status check, with a cause and a fix per failure."""

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_check
short_description: Check that backups can work on this host, with a cause and a fix for every problem
version_added: 0.1.0
description:
  - Runs the same checks as C(pgsafe check) on the managed host and returns them, one entry per check with
    RV(checks[].ok), RV(checks[].severity), RV(checks[].detail) and, for a failing check, RV(checks[].cause) and
    RV(checks[].fix).
  - V(postgres) group - PostgreSQL answers (version, primary or standby); the role is a superuser, or a member of
    C(pg_read_all_data) for logical dumps and, when O(wal_archiving=true), may execute C(pg_backup_start) and
    C(pg_backup_stop) and read C(data_directory); C(pg_dump) and C(pg_restore) are at least the server's version.
  - V(repository) group - every repository (O(repository) and each of O(copies)) takes a small probe object under
    C(_preflight/) that is written, listed, read back and deleted; the clock of this host is compared with the
    store's (the S3 response's C(Date) header, or the probe file's modification time on a filesystem).
  - V(encryption) group - a small message is encrypted and decrypted through the configured keys (KMS data key
    and/or key files); with several keys, each one must decrypt on its own.
  - V(free_space) group - free space where pgsafe writes (O(state_dir), the WAL spool, the run log directory,
    filesystem repositories) against O(min_free_mb), and for a repository against the size of its largest backup.
  - V(permissions) group - key files 0600, private directories 0700, all owned by the user that runs pgsafe.
  - V(wal) group - with O(wal_archiving=true), C(archive_command) runs C(pgsafe wal-push %p), the WAL shipper runs,
    and C(pg_stat_archiver) shows no failure newer than the last success and no segment waiting longer than
    O(max_wal_archive_age_seconds).
  - V(runs) group, only when named in O(checks) - the run logs in O(log_dir) of the last O(runs_hours) hours, the
    runbooks' "check the logs for errors" - a run of the C(pgsafe) command that failed, was interrupted, exited
    non-zero, or was killed (its log stops without a closing line and its process is gone) fails the check and
    is returned in RV(problem_runs).
options:
  checks:
    description: The groups of checks to run. Unset runs all of them except V(runs).
    type: list
    elements: str
    choices: [postgres, repository, encryption, free_space, permissions, wal, runs]
  log_dir:
    description: Directory of the host's C(pgsafe) run logs (C(log_dir) of its settings) for the V(runs) group.
      Unset, C(<state_dir>/log), the command's own default.
    type: path
  runs_hours:
    description: How far back the V(runs) group reads the run logs, in hours.
    type: float
    default: 25
  copies:
    description:
      - Further repositories to probe besides O(repository) (the copies that C(pgsafe sync) keeps), with the same
        suboptions as O(repository). A copy's O(copies[].name) names its checks (V(cloud) gives V(repository:cloud)).
  wal_archiving:
    description:
      - Whether this cluster archives its WAL through pgsafe (physical backups and point-in-time recovery). When
        true, an C(archive_command) that is not pgsafe's, C(archive_mode=off), a stopped shipper or a failing
        archiver are reported.
    type: bool
    default: false
  min_free_mb:
    description: Free space, in MiB, needed on every filesystem pgsafe writes to.
    type: float
    default: 1024
  max_wal_archive_age_seconds:
    description: How long a WAL segment may wait for archiving before the archiver check fails (the RPO).
    type: float
    default: 300
  max_clock_skew_seconds:
    description: How far this host's clock may be from a repository's before the clock check fails.
    type: float
    default: 60
  fail_on_error:
    description:
      - Fail the task when a check of severity C(error) fails. Failing checks of severity C(warning) never fail
        the task; they are returned in RV(failed_checks) and make RV(ok) false.
      - With V(false) the task always succeeds and returns the report, for a play that collects and reports.
    type: bool
    default: true
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.postgres
  - pgsafe.backup.copies
  - pgsafe.backup.attributes
attributes:
  check_mode:
    support: full
    details: The checks change nothing, so check mode runs them all; the repository probe is written and deleted
      again in both modes (on an S3 bucket with Object Lock it stays until its retention ends).
  diff_mode:
    support: none
    details: Nothing is changed, so there is nothing to show.
  idempotent:
    support: full
    details: Always reports unchanged.
notes:
  - Run it on the database host, as the user that runs the backups (O(state_dir)'s owner when run as root), so
    file permissions and free space are those that matter.
  - Secret options (O(login_password), O(repository.secret_key), ...) are never returned.
seealso:
  - module: pgsafe.backup.backup_verify
  - name: Troubleshooting and alert runbooks
    description: Every error message and every alert, with its cause and fix.
    link: https://example.invalid/pgsafe/backup/docs/troubleshooting.md
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: Check a host with a local repository and a key file before its first backup
  pgsafe.backup.backup_check:
    repository:
      path: /var/backups/pgsafe
    encryption:
      key_files:
        - path: /etc/pgsafe/keys/backup.key

- name: Check WAL archiving and an S3 copy, and report without failing the play
  pgsafe.backup.backup_check:
    wal_archiving: true
    fail_on_error: false
    repository:
      path: /var/backups/pgsafe
    copies:
      - name: cloud
        type: s3
        bucket: acme-pg-backups
        prefix: prod
    encryption:
      kms_key_ids:
        - arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
  register: status

- name: Show cause and fix of each failing check
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.cause }} -- fix: {{ item.fix }}"
  loop: "{{ status.checks | rejectattr('ok') | list }}"
  loop_control:
    label: "{{ item.name }}"

- name: Only the repositories and keys (a host without PostgreSQL)
  pgsafe.backup.backup_check:
    checks: [repository, encryption]
    repository:
      type: s3
      bucket: acme-pg-backups
"""

RETURN = r"""
ok:
  description: True when every check passed (warnings included).
  returned: always
  type: bool
summary:
  description: One line naming the failed checks, or saying that all passed.
  returned: when the checks ran
  type: str
  sample: "2 of 11 checks failed (1 error(s), 1 warning(s)): wal_archiver, wal_shipper"
checks:
  description: Every check that ran, in order.
  returned: when the checks ran
  type: list
  elements: dict
  contains:
    name:
      description: The check, for example V(postgres), V(repository:primary), V(clock:cloud), V(encryption),
        V(free_space:/var), V(permissions), V(wal_archiver).
      type: str
    ok:
      description: Whether it passed.
      type: bool
    severity:
      description: V(error) when a failure stops backups, WAL archiving or restores; V(warning) otherwise.
      type: str
    detail:
      description: What was found (versions, timings, free space, paths).
      type: str
    cause:
      description: Why it failed (null when it passed).
      type: str
    fix:
      description: What to do about it (null when it passed).
      type: str
  sample: [{"name": "wal_archiver", "ok": false, "severity": "error",
            "detail": "12 archived, 3 failed since 2026-11-20 ...",
            "cause": "archive_command is failing: 3 failed attempt(s); ...",
            "fix": "read the PostgreSQL server log near ..."}]
failed_checks:
  description: Names of the checks that failed.
  returned: when the checks ran
  type: list
  elements: str
error_count:
  description: How many checks of severity V(error) failed.
  returned: when the checks ran
  type: int
warning_count:
  description: How many checks of severity V(warning) failed (C(warnings) is Ansible's own key).
  returned: when the checks ran
  type: int
problem_runs:
  description: With the V(runs) group, the runs that need a look, oldest first.
  returned: when the runs group ran
  type: list
  elements: dict
  contains:
    path:
      description: The run's log file.
      type: str
    command:
      description: The pgsafe command (V(backup), V(verify), V(restore), ...).
      type: str
    started_at:
      description: When the run started (UTC, from the log's name).
      type: str
    outcome:
      description: V(failed), V(interrupted), V(exited non-zero) or V(killed).
      type: str
    exit_code:
      description: The exit code when the log says it.
      type: int
    message:
      description: The error the log ends with, or why the run counts as killed.
      type: str
  sample: [{"path": "/var/log/pgsafe/backup-20261202T010003.118271Z-4242.log", "command": "backup",
            "started_at": "2026-12-02T01:00:03Z", "outcome": "killed", "exit_code": null,
            "message": "the log stops without a closing line and process 4242 is gone ..."}]
duration_seconds:
  description: Wall time of the checks.
  returned: when the checks ran
  type: float
error:
  description: What failed, where, and the fix, when the checks could not run at all (for example an unknown group).
  returned: failure
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    module_argument_spec, settings_from_params)
from ansible_collections.pgsafe.backup.plugins.module_utils.preflight import (
    CHECK_GROUPS, OPTIONAL_GROUPS, run_checks)


def main():
    argument_spec = module_argument_spec(
        with_postgres=True, with_copies=True,
        checks={"type": "list", "elements": "str", "choices": list(CHECK_GROUPS + OPTIONAL_GROUPS)},
        log_dir={"type": "path"},
        runs_hours={"type": "float", "default": 25.0},
        wal_archiving={"type": "bool", "default": False},
        min_free_mb={"type": "float", "default": 1024.0},
        max_wal_archive_age_seconds={"type": "float", "default": 300.0},
        max_clock_skew_seconds={"type": "float", "default": 60.0},
        fail_on_error={"type": "bool", "default": True},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    settings = settings_from_params(params)
    if params["log_dir"]:
        settings["log_dir"] = params["log_dir"]
    try:
        report = run_checks(settings, only=params["checks"], wal_archiving=params["wal_archiving"],
                            min_free_mb=params["min_free_mb"],
                            max_wal_archive_age_seconds=params["max_wal_archive_age_seconds"],
                            max_clock_skew_seconds=params["max_clock_skew_seconds"], runs_hours=params["runs_hours"])
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict(), ok=False)
    result = {"changed": False, "ok": report["ok"], "summary": report["summary"], "checks": report["checks"],
              "failed_checks": report["failed"], "error_count": report["errors"],
              "warning_count": report["warnings"],
              "duration_seconds": report["duration_seconds"]}
    if "problem_runs" in report:
        result["problem_runs"] = report["problem_runs"]
    if params["fail_on_error"] and report["errors"]:
        module.fail_json(msg=report["summary"], **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
