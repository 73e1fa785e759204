# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the run logs say about recent runs: which failed, were interrupted, exited non-zero or were killed.

Every run of the ``pgsafe`` command writes ``<log_dir>/<command>-<UTC stamp>-<pid>.log`` and ends it
with a closing line (runlog.py): ``<command> completed in N s (exit C)``, ``<command> failed after N s:
<message>`` or ``<command> interrupted after N s``. A run killed by SIGKILL, the OOM killer or a reboot
writes none: its file just stops. The seeds' morning checklist ("check the logs for errors") reads
them here: ``pgsafe check --only runs``, the ``backup_check`` module and the verify role.
"""

from __future__ import annotations

import datetime
import os
import re
import time

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError

RUN_LOG_NAME_RE = re.compile(r"^(?P<command>[a-z][a-z-]*)-(?P<stamp>\d{8}T\d{6}\.\d{6}Z)-(?P<pid>\d+)\.log$")
CLOSING_RE = re.compile(
    r" (?P<command>[a-z][a-z-]*) (?:completed in [0-9.]+ s \(exit (?P<exit>\d+)\)"
    r"|(?P<how>failed|interrupted) after [0-9.]+ s(?:: (?P<message>.*?))?(?: \(exit (?P<failed_exit>\d+)\))?)\s*$")
# The closing line is near the end; an unexpected error's traceback follows it.
TAIL_BYTES = 64 * 1024
# Outcomes that need a person to look. A `check` that found problems reported them when it ran:
# counting it again would repeat one finding for a whole day.
PROBLEMS = ("failed", "interrupted", "exited non-zero", "killed")
NOT_COUNTED = frozenset(("check",))


def _process_alive(pid: int) -> bool:
    """True when ``pid`` exists and (where /proc says) is a pgsafe or Python process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            command = handle.read()
    except OSError:
        return True
    return b"pgsafe" in command or b"python" in command


def _outcome(tail: str, pid: int) -> dict:
    closing = None
    for line in tail.splitlines():
        match = CLOSING_RE.search(line)
        if match:
            closing = match
    if closing is None:
        if _process_alive(pid):
            return {"outcome": "running", "exit_code": None, "message": None}
        return {"outcome": "killed", "exit_code": None,
                "message": "the log stops without a closing line and process %d is gone (killed by a signal, the "
                           "OOM killer or a reboot)" % pid}
    if closing.group("how"):
        code = closing.group("failed_exit")
        return {"outcome": closing.group("how"), "exit_code": int(code) if code else None,
                "message": closing.group("message")}
    code = int(closing.group("exit"))
    return {"outcome": "completed" if code == 0 else "exited non-zero", "exit_code": code, "message": None}


def recent_runs(log_dir: str, hours: float, now: float | None = None) -> list[dict]:
    """Every run whose log was written in the last ``hours``, oldest first, with its outcome: completed,
    failed, interrupted, exited non-zero, killed or running. A missing directory means no runs yet."""
    if hours <= 0:
        raise ConfigError("the run window must be positive (got %r hours)" % hours, where="runs_hours",
                          fix="give a number of hours such as 25 (a day and the time a nightly run takes)")
    cutoff = (time.time() if now is None else now) - hours * 3600.0
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError("cannot list the run logs in %s: %s" % (log_dir, exc.strerror), where="log_dir",
                          fix="run as root or as the user that runs pgsafe (it owns the logs), or set log_dir") \
            from None
    runs = []
    for name in names:
        match = RUN_LOG_NAME_RE.match(name)
        if not match:
            continue  # rotated (.gz) or foreign files
        path = os.path.join(log_dir, name)
        try:
            with open(path, "rb") as handle:
                status = os.fstat(handle.fileno())
                if status.st_mtime < cutoff:
                    continue
                handle.seek(max(0, status.st_size - TAIL_BYTES))
                tail = handle.read().decode("utf-8", "replace")
        except OSError as exc:
            runs.append({"path": path, "command": match.group("command"), "pid": int(match.group("pid")),
                         "started_at": _stamp(match.group("stamp")), "outcome": "unreadable", "exit_code": None,
                         "message": "cannot read the log: %s" % exc.strerror})
            continue
        run = {"path": path, "command": match.group("command"), "pid": int(match.group("pid")),
               "started_at": _stamp(match.group("stamp"))}
        run.update(_outcome(tail, run["pid"]))
        runs.append(run)
    runs.sort(key=lambda run: (run["started_at"], run["path"]))
    return runs


def problem_runs(runs: list[dict]) -> list[dict]:
    """The runs that need a person to look (see PROBLEMS), ``check`` runs left out."""
    return [run for run in runs if run["outcome"] in PROBLEMS and run["command"] not in NOT_COUNTED]


def describe(run: dict) -> str:
    """``backup failed: <message> (backup-20261202T010003.118271Z-4242.log)``."""
    text = "%s %s" % (run["command"], run["outcome"])
    if run["outcome"] == "exited non-zero":
        text = "%s exited %s" % (run["command"], run["exit_code"])
    if run.get("message"):
        text += ": %s" % run["message"]
    return "%s (%s)" % (text, os.path.basename(run["path"]))


def _stamp(stamp: str) -> str:
    moment = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
