# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared helpers of the benchmark: paths, timed child processes, peak memory, machine facts.

Peak memory is taken two ways: the kernel's exact high-water mark of the measured
process (``wait4`` ru_maxrss, the same number as VmHWM), and a 50 ms sampler over the
whole process tree (/proc/<pid>/status of every descendant) that records each
process's own VmHWM and the largest sum of resident sets seen at one instant.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, ".build", "bench")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PG_BIN = os.environ.get("PGSAFE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin")
MIB = 1024 * 1024


class BenchError(Exception):
    """A benchmark step failed; the message says which and shows the tool's own words."""


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the result table."""
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), message))
    sys.stderr.flush()


def pgsafe_command() -> list[str]:
    """The host command as `make venv` installs it, else whatever `pgsafe` is on PATH."""
    launcher = os.path.join(VENV_BIN, "pgsafe")
    if os.access(launcher, os.X_OK):
        return [launcher]
    found = shutil.which("pgsafe")
    if found:
        return [found]
    raise BenchError("the pgsafe command is not installed: run `make venv` first")


def pgsafe_commands_available() -> set[str]:
    """Subcommands and backup types the installed CLI offers (read from its --help)."""
    offered: set[str] = set()
    top = subprocess.run(pgsafe_command() + ["--help"], capture_output=True, text=True, check=False)
    offered.update(re.findall(r"^\s{4}([a-z][a-z-]+)\s", top.stdout, re.M))
    backup = subprocess.run(pgsafe_command() + ["backup", "--help"], capture_output=True, text=True, check=False)
    choices = re.search(r"\{([a-z,_-]+)\}", backup.stdout)
    if choices:
        offered.update("backup " + kind for kind in choices.group(1).split(","))
    return offered


def as_postgres(argv: list[str]) -> list[str]:
    """Run as the postgres user when we are root (initdb, pgBackRest and the archiver are)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + list(argv)
    return list(argv)


def chown_postgres(path: str, recursive: bool = False) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam("postgres")
    os.chown(path, entry.pw_uid, entry.pw_gid)
    if recursive:
        for base, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(base, name), entry.pw_uid, entry.pw_gid)


def postgres_dir(path: str, mode: int = 0o700) -> str:
    """A directory owned by postgres (created when missing)."""
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    chown_postgres(path)
    return path


@dataclasses.dataclass
class Measurement:
    """One timed run of a child process."""

    seconds: float
    returncode: int
    stdout: str = ""
    stderr: str = ""
    peak_self_kib: int = 0  # exact high-water mark of the direct child (wait4 ru_maxrss)
    peak_tree_sum_kib: int = 0  # largest sum of RSS over the tree seen by the sampler
    peak_by_process: dict = dataclasses.field(default_factory=dict)  # "comm[pid]" -> VmHWM KiB
    cpu_seconds: float = 0.0  # user + system of the child and the descendants it reaped (wait4)
    cpu_by_role: dict = dataclasses.field(default_factory=dict)  # sampled per thread (TreeSampler)

    def json(self) -> dict:
        try:
            return json.loads(self.stdout)
        except ValueError as exc:
            raise BenchError("expected JSON on stdout, got: %s" % self.stdout[-500:]) from exc


def _status_kib(pid: int) -> tuple[str, int, int]:
    """(name, VmRSS KiB, VmHWM KiB) of a process; zeros when it is gone."""
    name, rss, hwm = "?", 0, 0
    try:
        with open("/proc/%d/status" % pid, "r", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Name:"):
                    name = line.split()[1]
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return name, rss, hwm


def _descendants(root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as handle:
                stat = handle.read()
            # comm may hold spaces and parentheses: the ppid is the second field after the last ')'.
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class TreeSampler(threading.Thread):
    """Samples the memory of a process and all its descendants until stopped."""

    def __init__(self, root_pid: int, interval: float = 0.05):
        super().__init__(daemon=True, name="memory-sampler")
        self.root_pid = root_pid
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak_tree_sum_kib = 0
        self.peak_by_process: dict[str, int] = {}
        # (pid, tid) -> (process name, is the main thread, CPU seconds so far): the last reading
        # before a thread ends is its total, short of at most one interval.
        self.thread_cpu: dict[tuple[int, int], tuple[str, bool, float]] = {}
        self.ticks = os.sysconf("SC_CLK_TCK")

    def _read_threads(self, pid: int, name: str) -> None:
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            return
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/stat" % (pid, tid), "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            self.thread_cpu[(pid, int(tid))] = (name, int(tid) == pid,
                                                (int(fields[11]) + int(fields[12])) / self.ticks)

    def run(self) -> None:
        while not self.stop_event.is_set():
            total = 0
            for pid in _descendants(self.root_pid):
                name, rss, hwm = _status_kib(pid)
                total += rss
                label = "%s[%d]" % (name, pid)
                if hwm > self.peak_by_process.get(label, 0):
                    self.peak_by_process[label] = hwm
                self._read_threads(pid, name)
            self.peak_tree_sum_kib = max(self.peak_tree_sum_kib, total)
            self.stop_event.wait(self.interval)

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds per role: the root's main thread, its other threads, each child program."""
        roles: dict[str, float] = {}
        for (pid, _tid), (name, is_main, seconds) in self.thread_cpu.items():
            if pid == self.root_pid:
                role = "main thread" if is_main else "other threads (zstd workers, helpers)"
            else:
                role = name
            roles[role] = roles.get(role, 0.0) + seconds
        return {role: round(seconds, 2) for role, seconds in roles.items()}

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


def run_measured(argv: list[str], env: dict | None = None, stdout=None, sample_memory: bool = False,
                 check: bool = True, what: str | None = None, cwd: str | None = None) -> Measurement:
    """Run a child to completion; wall time, exit status and (optionally) peak memory."""
    capture = stdout is None
    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE if capture else stdout, stderr=subprocess.PIPE)
    sampler = TreeSampler(process.pid) if sample_memory else None
    if sampler is not None:
        sampler.start()
    output: list[bytes] = []
    errors: list[bytes] = []
    readers = []
    for stream, sink in ((process.stdout, output), (process.stderr, errors)):
        if stream is None:
            continue
        reader = threading.Thread(target=lambda s=stream, k=sink: k.append(s.read()), daemon=True)
        reader.start()
        readers.append(reader)
    # wait4 gives the child's exact peak RSS; Popen.wait would discard it.
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    if sampler is not None:
        sampler.stop()
    result = Measurement(seconds=seconds, returncode=process.returncode,
                         stdout=b"".join(output).decode("utf-8", "replace"),
                         stderr=b"".join(errors).decode("utf-8", "replace"),
                         peak_self_kib=int(usage.ru_maxrss), cpu_seconds=usage.ru_utime + usage.ru_stime,
                         peak_tree_sum_kib=sampler.peak_tree_sum_kib if sampler else 0,
                         peak_by_process=dict(sampler.peak_by_process) if sampler else {},
                         cpu_by_role=sampler.cpu_by_role() if sampler else {})
    if check and result.returncode != 0:
        raise BenchError("%s failed (exit %d): %s" % (what or " ".join(argv[:3]), result.returncode,
                                                      (result.stderr or result.stdout)[-1500:].strip()))
    return result


def cluster_cpu_seconds(datadir: str) -> float:
    """CPU used so far by a PostgreSQL cluster: the postmaster, its reaped children, its live ones.

    A backend that exits between two readings moves from "live" into the postmaster's
    cutime/cstime, so differences between readings stay right.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        with open(os.path.join(datadir, "postmaster.pid"), "r", encoding="utf-8") as handle:
            postmaster = int(handle.readline())
    except (OSError, ValueError):
        return 0.0
    total = 0
    for pid in _descendants(postmaster):
        try:
            with open("/proc/%d/stat" % pid, "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[11:15] are utime, stime, cutime, cstime (stat fields 14-17).
        total += int(fields[11]) + int(fields[12])
        if pid == postmaster:
            total += int(fields[13]) + int(fields[14])
    return total / ticks


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 samples is the maximum)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return ((result.stdout or result.stderr).strip().splitlines() or ["unavailable"])[0]


def machine_info() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", "r", encoding="utf-8") as handle:
            mem_kib = int(handle.readline().split()[1])
    except (OSError, ValueError):
        mem_kib = 0
    versions = {"python": platform.python_version()}
    for module in ("zstandard", "aws_encryption_sdk", "boto3", "moto", "psycopg"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            versions[module] = "unavailable"
    versions["ansible-core"] = _first_line([os.path.join(VENV_BIN, "ansible"), "--version"])
    versions["postgresql"] = _first_line([os.path.join(PG_BIN, "postgres"), "--version"])
    versions["pgbackrest"] = _first_line(["pgbackrest", "version"])
    versions["pgsafe"] = _first_line(pgsafe_command() + ["--version"])
    distro = "unknown"
    try:
        with open("/etc/os-release", "r", encoding="utf-8") as handle:
            distro = dict(line.rstrip("\n").split("=", 1) for line in handle if "=" in line).get(
                "PRETTY_NAME", "unknown").strip('"')
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "kernel": platform.release(), "os": distro, "versions": versions, "load_at_start": os.getloadavg()}
