# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading outcomes from run logs written in runlog.py's format (real files, real processes for pids)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError
from ansible_collections.pgsafe.backup.plugins.module_utils.run_history import describe, problem_runs, recent_runs

START = "2026-12-02 01:00:03,118 INFO pgsafe 1.0.0 %s started (pid %d, user postgres, host db1, settings -, log -)\n"


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_log(directory, command: str, pid: int, *lines: str, stamp: str = "20261202T010003.118271Z",
              age_hours: float = 1.0) -> str:
    path = os.path.join(str(directory), "%s-%s-%d.log" % (command, stamp, pid))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(START % (command, pid))
        for line in lines:
            handle.write("2026-12-02 01:02:03,456 %s\n" % line)
    moment = time.time() - age_hours * 3600
    os.utime(path, (moment, moment))
    return path


def test_each_outcome_is_read_from_the_closing_line_or_its_absence(tmp_path):
    gone = dead_pid()
    write_log(tmp_path, "backup", gone, "INFO backup completed in 12.3 s (exit 0)", stamp="20261202T010001.000001Z")
    write_log(tmp_path, "restore", gone, "ERROR restore failed after 0.4 s: no backup 20000101T000000Z-logical "
              "for cluster db1 (exit 8)", stamp="20261202T010002.000001Z")
    write_log(tmp_path, "verify", gone, "INFO verify completed in 3.0 s (exit 1)", stamp="20261202T010003.000001Z")
    write_log(tmp_path, "prune", gone, "ERROR prune interrupted after 7.5 s", stamp="20261202T010004.000001Z")
    write_log(tmp_path, "backup", gone, "INFO dumping app", stamp="20261202T010005.000001Z")  # SIGKILLed
    write_log(tmp_path, "sync", os.getpid(), "INFO pushing", stamp="20261202T010006.000001Z")  # still running
    # An unexpected error: the traceback follows the closing line.
    write_log(tmp_path, "files", gone, "ERROR files failed after 0.1 s: unexpected OSError: [Errno 5] I/O error",
              "Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "OSError: [Errno 5]",
              stamp="20261202T010007.000001Z")
    write_log(tmp_path, "check", gone, "INFO check completed in 1.0 s (exit 1)", stamp="20261202T010008.000001Z")
    write_log(tmp_path, "backup", gone, "ERROR backup failed after 1 s: old", stamp="20261130T010001.000001Z",
              age_hours=49)
    with open(tmp_path / "backup-20261101T010001.000001Z-1.log.gz", "wb") as handle:
        handle.write(b"\x1f\x8b")  # rotated: not read

    runs = recent_runs(str(tmp_path), 25)
    assert [(run["command"], run["outcome"], run["exit_code"]) for run in runs] == [
        ("backup", "completed", 0), ("restore", "failed", 8), ("verify", "exited non-zero", 1),
        ("prune", "interrupted", None), ("backup", "killed", None), ("sync", "running", None),
        ("files", "failed", None), ("check", "exited non-zero", 1)]
    assert runs[1]["message"] == "no backup 20000101T000000Z-logical for cluster db1"
    assert runs[1]["started_at"] == "2026-12-02T01:00:02Z"
    assert "process %d is gone" % gone in runs[4]["message"]
    assert runs[6]["message"] == "unexpected OSError: [Errno 5] I/O error"
    # What needs a look: not the completed, running or `check` runs.
    assert [(run["command"], run["outcome"]) for run in problem_runs(runs)] == [
        ("restore", "failed"), ("verify", "exited non-zero"), ("prune", "interrupted"), ("backup", "killed"),
        ("files", "failed")]
    assert describe(runs[2]) == "verify exited 1 (verify-20261202T010003.000001Z-%d.log)" % gone
    # A wider window reaches the older failure too.
    assert len(recent_runs(str(tmp_path), 72)) == 9


def test_no_directory_is_no_runs_and_a_bad_window_is_refused(tmp_path):
    assert recent_runs(str(tmp_path / "never-written"), 25) == []
    with pytest.raises(ConfigError) as refused:
        recent_runs(str(tmp_path), 0)
    assert refused.value.where == "runs_hours" and "25" in refused.value.fix
