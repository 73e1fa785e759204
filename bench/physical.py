# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Physical full backup/restore and WAL archiving: pgsafe against pgBackRest, same run.

pgBackRest (Debian package) is set up the way its users run it: the postgres user,
a repository it owns, zstd level 3, aes-256-cbc repository encryption, process-max 2.
Its cipher passphrase lives in its 0600 configuration file, never on a command line.

WAL archiving is measured as a backlog drain under load: the archive_command
dispatcher holds the archiver while a write workload fills N segments, then the tool
under test is switched in while the workload keeps writing. Throughput is N x 16 MiB
over the time until PostgreSQL reports the last backlog segment archived (which is
when each tool has acknowledged it: durable in its repository); ack latency is each
archive_command's own duration, from the dispatcher's log. A tool that reads ahead
(pgsafe's shipper) benefits exactly as it would in production.

The pgsafe side runs when the installed CLI offers ``backup full`` / ``wal-push``;
until then its rows say "not available yet".
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import threading
import time

from bench.common import (BUILD, PG_BIN, ROOT, BenchError, as_postgres, chown_postgres, log, median, percentile,
                          postgres_dir, run_measured)

STANZA = "bench"
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
SEGMENT_BYTES = 16 * 1024 * 1024


class Dispatcher:
    """archive_command of the bench cluster: routes each segment to the tool being measured.

    Modes (a file the bench writes): ``discard`` acknowledges at once (only ever in this
    throwaway cluster, between measurements), ``hold`` blocks the archiver so a backlog
    builds, any other mode sources ``cmd.<mode>`` with $1=%p $2=%f.
    """

    DIR = os.path.join(BUILD, "archive")
    # pgBackRest's backup refuses an archive_command that does not contain "pgbackrest";
    # this one does call `pgbackrest archive-push` in that mode, so its name says so.
    SCRIPT = os.path.join(DIR, "archive-pgbackrest-or-pgsafe.sh")
    MODE = os.path.join(DIR, "mode")
    LOG = os.path.join(DIR, "archive.log")

    @classmethod
    def install(cls, cluster) -> None:  # pylint: disable=unused-argument
        postgres_dir(cls.DIR, 0o755)
        script = """#!/bin/bash
# archive_command of the pgsafe benchmark cluster (written by bench/physical.py).
dir=%(dir)s
while :; do
    mode=$(cat "$dir/mode" 2>/dev/null || echo discard)
    [[ $mode == hold ]] || break
    sleep 0.02
done
start=$(date +%%s%%N)
if [[ $mode == discard ]]; then
    rc=0
else
    # shellcheck disable=SC1090
    source "$dir/cmd.$mode"
    rc=$?
fi
end=$(date +%%s%%N)
echo "$mode $2 $start $end $rc" >> "$dir/archive.log"
exit $rc
""" % {"dir": cls.DIR}
        with open(cls.SCRIPT, "w", encoding="utf-8") as handle:
            handle.write(script)
        os.chmod(cls.SCRIPT, 0o755)
        cls.set_mode("discard")
        if not os.path.exists(cls.LOG):
            open(cls.LOG, "a", encoding="utf-8").close()
        chown_postgres(cls.LOG)

    @classmethod
    def command(cls) -> str:
        return "%s %%p %%f" % cls.SCRIPT

    @classmethod
    def set_mode(cls, mode: str) -> None:
        temporary = cls.MODE + ".new"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(mode + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, cls.MODE)

    @classmethod
    def set_command(cls, mode: str, shell_line: str) -> None:
        path = os.path.join(cls.DIR, "cmd." + mode)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(shell_line + "\n")
        os.chmod(path, 0o644)

    @classmethod
    def entries(cls, mode: str, since_ns: int) -> list[dict]:
        found = []
        with open(cls.LOG, "r", encoding="utf-8") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) == 5 and parts[0] == mode and int(parts[2]) >= since_ns:
                    found.append({"segment": parts[1], "start_ns": int(parts[2]), "end_ns": int(parts[3]),
                                  "rc": int(parts[4])})
        return found


class PgBackRest:
    """pgBackRest with its own configuration, repository, lock, log and spool paths."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.home = os.path.join(BUILD, "pgbackrest")
        if os.path.exists(self.home):
            shutil.rmtree(self.home)
        postgres_dir(self.home)
        for sub in ("repo", "log", "lock", "spool", "restore"):
            postgres_dir(os.path.join(self.home, sub))
        self.config = os.path.join(self.home, "pgbackrest.conf")
        self.passphrase = secrets.token_urlsafe(32)
        lines = [
            "[global]",
            "repo1-path=%s" % os.path.join(self.home, "repo"),
            "repo1-cipher-type=aes-256-cbc",
            "repo1-cipher-pass=%s" % self.passphrase,
            "compress-type=zst",
            "compress-level=3",
            "process-max=2",
            "start-fast=y",
            "repo1-retention-full=9999999",
            "archive-timeout=300",
            "log-path=%s" % os.path.join(self.home, "log"),
            "lock-path=%s" % os.path.join(self.home, "lock"),
            "spool-path=%s" % os.path.join(self.home, "spool"),
            "log-level-console=warn",
            "log-level-file=info",
            "",
            "[%s]" % STANZA,
            "pg1-path=%s" % cluster.datadir,
            "pg1-port=%d" % cluster.port,
            "pg1-socket-path=%s" % cluster.socket_dir,
            "pg1-user=postgres",
        ]
        descriptor = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        chown_postgres(self.config)
        Dispatcher.set_command("pgbackrest", 'pgbackrest --config=%s --stanza=%s archive-push "$1"'
                               % (self.config, STANZA))

    def run(self, args: list[str], what: str):
        return run_measured(as_postgres(["pgbackrest", "--config=" + self.config, "--stanza=" + STANZA] + args),
                            what=what)

    def stanza_create(self) -> None:
        self.run(["stanza-create"], "pgbackrest stanza-create")

    def backup(self):
        Dispatcher.set_mode("pgbackrest")
        try:
            return self.run(["--type=full", "backup"], "pgbackrest backup")
        finally:
            Dispatcher.set_mode("discard")

    def restore(self):
        target = postgres_dir(os.path.join(self.home, "restore", "data"))
        try:
            return self.run(["--pg1-path=" + target, "--type=immediate", "restore"], "pgbackrest restore")
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def last_backup(self) -> dict:
        """Size facts of the newest backup from `pgbackrest info` (its stable JSON)."""
        info = self.run(["--output=json", "info"], "pgbackrest info").json()
        backups = info[0].get("backup", []) if info else []
        if not backups:
            raise BenchError("pgbackrest info lists no backup after a successful backup")
        newest = backups[-1]["info"]
        return {"raw_bytes": newest["size"], "stored_bytes": newest["repository"]["delta"]}

    def cleanup(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def write_postgres_wrapper(path: str) -> str:
    """A `pgsafe` the postgres user can start (archive_command, the shipper, backups).

    This checkout's venv interpreter links into /root (mode 0700), which postgres cannot
    enter; the wrapper runs the system Python of the same minor version on the venv's
    packages, as tests/functional/test_wal.py does. In production pgsafe is installed
    where its OS user can run it.
    """
    purelib = sysconfig.get_paths()["purelib"]
    system_python = "/usr/bin/python3.%d" % sys.version_info.minor
    python = system_python if os.path.exists(system_python) else sys.executable
    boot = "import sys; from ansible_collections.pgsafe.backup.plugins.module_utils.cli import main; sys.exit(main())"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\nPYTHONPATH=%s:%s exec %s -c '%s' \"$@\"\n" % (COLLECTIONS, purelib, python, boot))
    os.chmod(path, 0o755)
    return path


class PgsafePhysical:
    """pgsafe's full backup, physical restore, WAL push and shipper, as the postgres user."""

    def __init__(self, cluster):
        import yaml  # pylint: disable=import-outside-toplevel

        self.cluster = cluster
        self.home = os.path.join(BUILD, "pgsafe-physical")
        if os.path.exists(self.home):
            shutil.rmtree(self.home)
        postgres_dir(self.home, 0o755)
        for sub in ("repo", "state", "keys", "restore", "log"):
            postgres_dir(os.path.join(self.home, sub))
        self.wrapper = write_postgres_wrapper(os.path.join(self.home, "pgsafe"))
        self.key_file = os.path.join(self.home, "keys", "backup.key")
        self.shipper: subprocess.Popen | None = None
        settings = {
            "cluster": "bench",
            "state_dir": os.path.join(self.home, "state"),
            "postgres": {"host": cluster.host, "port": cluster.port, "user": cluster.user, "bin_dir": PG_BIN},
            "repository": {"type": "filesystem", "path": os.path.join(self.home, "repo"), "create": True},
            "encryption": {"key_files": [{"path": self.key_file}]},
            # Matched to the pgBackRest side: zstd level 3, two workers (its process-max 2).
            "compression": {"algorithm": "zstd", "level": 3, "threads": 2},
            "wal": {"command": self.wrapper, "pgdata": cluster.datadir, "parallel": 2},
        }
        self.config = os.path.join(self.home, "pgsafe.yml")
        descriptor = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            yaml.safe_dump(settings, handle, sort_keys=False)
        chown_postgres(self.config)
        self.run(["key", "generate", self.key_file], "pgsafe key generate", with_config=False)
        Dispatcher.set_command("pgsafe", '%s -c %s wal-push "$1"' % (self.wrapper, self.config))

    def run(self, args: list[str], what: str, with_config: bool = True):
        argv = [self.wrapper] + (["-c", self.config] if with_config else []) + args
        return run_measured(as_postgres(argv), what=what, sample_memory=True, cwd=self.home)

    def start_shipper(self) -> None:
        """The long-running shipper that wal-push hands segments to (and that reads ahead)."""
        status = os.path.join(self.home, "state", "wal-status", "bench.json")
        if os.path.exists(status):
            os.unlink(status)
        with open(os.path.join(self.home, "log", "shipper.log"), "ab") as log_file:
            self.shipper = subprocess.Popen(as_postgres([self.wrapper, "-c", self.config, "wal-shipper"]),
                                            stdout=subprocess.DEVNULL, stderr=log_file, cwd=self.home)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(status):
                return
            if self.shipper.poll() is not None:
                raise BenchError("pgsafe wal-shipper exited (%d); see %s" % (
                    self.shipper.returncode, os.path.join(self.home, "log", "shipper.log")))
            time.sleep(0.05)
        raise BenchError("pgsafe wal-shipper did not report its status within 30 s")

    def stop_shipper(self) -> None:
        if self.shipper is not None and self.shipper.poll() is None:
            # runuser forwards SIGTERM to the shipper, which finishes in-flight uploads and exits.
            self.shipper.terminate()
            try:
                self.shipper.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.shipper.kill()
                self.shipper.wait()
        self.shipper = None

    def backup(self):
        Dispatcher.set_mode("pgsafe")
        try:
            return self.run(["backup", "full", "--json"], "pgsafe backup full")
        finally:
            Dispatcher.set_mode("discard")

    def restore(self, port: int):
        target = os.path.join(self.home, "restore", "data")
        shutil.rmtree(target, ignore_errors=True)
        try:
            return self.run(["restore-physical", "--pgdata", target, "--port", str(port), "--target-immediate",
                             "--no-start", "--json"], "pgsafe restore-physical")
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def cleanup(self) -> None:
        self.stop_shipper()
        shutil.rmtree(self.home, ignore_errors=True)


def run_physical(cluster, rounds: int, available: set[str]) -> dict:
    """Full backup and restore, pgBackRest and (when it exists) pgsafe, alternating."""
    pgbackrest = PgBackRest(cluster)
    pgbackrest.stanza_create()
    has_pgsafe = {"backup full", "wal-push", "wal-shipper", "restore-physical"} <= available
    pgsafe = PgsafePhysical(cluster) if has_pgsafe else None
    samples: dict[str, list] = {"pgbackrest_backup": [], "pgbackrest_restore": [], "pgsafe_backup": [],
                                "pgsafe_restore": []}
    notes: list[str] = []
    sizes: dict[str, dict] = {}
    memory: dict[str, float] = {}
    try:
        for number in range(1, rounds + 1):
            log("physical round %d/%d: pgBackRest full backup" % (number, rounds))
            samples["pgbackrest_backup"].append(pgbackrest.backup().seconds)
            sizes["pgbackrest"] = pgbackrest.last_backup()
            if pgsafe is not None:
                log("physical round %d/%d: pgsafe backup full (shipper running, as in production)" % (number, rounds))
                pgsafe.start_shipper()
                try:
                    run = pgsafe.backup()
                finally:
                    pgsafe.stop_shipper()
                samples["pgsafe_backup"].append(run.seconds)
                result = run.json()
                sizes["pgsafe"] = {"raw_bytes": result.get("size_raw_bytes"),
                                   "stored_bytes": result.get("size_stored_bytes")}
                memory["pgsafe_backup_peak_mib"] = max(memory.get("pgsafe_backup_peak_mib", 0),
                                                       run.peak_tree_sum_kib / 1024)
            log("physical round %d/%d: pgBackRest restore into a new directory" % (number, rounds))
            samples["pgbackrest_restore"].append(pgbackrest.restore().seconds)
            if pgsafe is not None:
                log("physical round %d/%d: pgsafe restore-physical into a new directory" % (number, rounds))
                run = pgsafe.restore(cluster.port + 1)
                samples["pgsafe_restore"].append(run.seconds)
                memory["pgsafe_restore_peak_mib"] = max(memory.get("pgsafe_restore_peak_mib", 0),
                                                        run.peak_tree_sum_kib / 1024)
    except BaseException:
        pgbackrest.cleanup()
        if pgsafe is not None:
            pgsafe.cleanup()
        raise
    if not has_pgsafe:
        notes.append("pgsafe physical backup: not available yet (the installed CLI lacks one of `backup full`, "
                     "`wal-push`, `wal-shipper`, `restore-physical`)")
    else:
        notes.append("pgsafe physical: `backup full` with `wal-shipper` running and archive_command = "
                     "`pgsafe wal-push %p`; `restore-physical --target-immediate --no-start` into a new directory "
                     "(like pgBackRest's restore, recovery not started). Both run as the postgres user.")
    return {"samples": samples, "medians": {name: median(values) for name, values in samples.items()},
            "sizes": sizes, "memory": memory, "notes": notes, "pgbackrest": pgbackrest, "pgsafe": pgsafe}


class WriteLoad(threading.Thread):
    """A write workload (realistic rows, logged table) until stopped: the "under load" part."""

    def __init__(self, cluster, dbname: str, table: str):
        super().__init__(daemon=True, name="write-load")
        self.cluster = cluster
        self.dbname = dbname
        self.table = table
        self.stop_event = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        from bench.dataset import connect  # pylint: disable=import-outside-toplevel

        try:
            with connect(self.cluster, self.dbname) as conn:
                while not self.stop_event.is_set():
                    conn.execute(fill_statement(self.table, 20000))
        except Exception as exc:  # pylint: disable=broad-except
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


def fill_statement(table: str, rows: int) -> str:
    from bench.dataset import TABLES  # pylint: disable=import-outside-toplevel

    body = TABLES["orders"].select
    return "INSERT INTO %s %s" % (table, body.format(lo=1, hi=rows, n=100000))


def prepare_wal_database(cluster, dbname: str = "benchwal") -> str:
    from bench.dataset import TABLES  # pylint: disable=import-outside-toplevel

    cluster.psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % dbname)
    cluster.psql('CREATE DATABASE "%s"' % dbname)
    columns = TABLES["orders"].columns
    cluster.psql("CREATE TABLE backlog (%s); CREATE TABLE background (%s)" % (columns, columns), dbname)
    return dbname


def _wait_archived(cluster, segment: str, timeout: float, mode: str, since_ns: int) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        if last and last[:24] >= segment:
            return
        failed = [entry for entry in Dispatcher.entries(mode, since_ns) if entry["rc"] != 0]
        if failed:
            raise BenchError("archive_command (%s) failed for %s (exit %d); see %s and the server log"
                             % (mode, failed[0]["segment"], failed[0]["rc"], Dispatcher.LOG))
        time.sleep(0.05)
    raise BenchError("segment %s was not archived by %s within %.0f s" % (segment, mode, timeout))


def wal_round(cluster, dbname: str, mode: str, segments: int, pgsafe: PgsafePhysical | None = None) -> dict:
    """Build a backlog of ``segments`` segments, then let ``mode`` drain it under write load.

    For pgsafe the clock starts before its shipper is started, so the shipper's own
    start-up is charged to pgsafe; it then reads ahead from archive_status as designed.
    """
    cluster.psql("TRUNCATE backlog, background", dbname)
    Dispatcher.set_mode("hold")
    cluster.psql("SELECT pg_switch_wal()")
    start_lsn = cluster.psql("SELECT pg_current_wal_lsn()")
    target_bytes = segments * SEGMENT_BYTES
    while int(cluster.psql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '%s')" % start_lsn)) < target_bytes:
        cluster.psql(fill_statement("backlog", 100000), dbname)
    last_segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    backlog = len([name for name in os.listdir(os.path.join(cluster.datadir, "pg_wal", "archive_status"))
                   if name.endswith(".ready")])
    load = WriteLoad(cluster, dbname, "background")
    load.start()
    since_ns = time.time_ns()
    started = time.monotonic()
    try:
        if pgsafe is not None:
            pgsafe.start_shipper()
        Dispatcher.set_mode(mode)
        _wait_archived(cluster, last_segment, 600, mode, since_ns)
        seconds = time.monotonic() - started
    finally:
        load.stop()
        Dispatcher.set_mode("discard")
        if pgsafe is not None:
            pgsafe.stop_shipper()
    # Let the archiver catch up (discarding) so the next round starts from an empty backlog.
    current = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    _wait_archived(cluster, current, 300, "discard", since_ns)
    pushed = [entry for entry in Dispatcher.entries(mode, since_ns) if entry["segment"] <= last_segment]
    latencies = [(entry["end_ns"] - entry["start_ns"]) / 1e6 for entry in pushed]
    return {"mode": mode, "backlog_segments": backlog, "seconds": seconds,
            "mb_s": backlog * SEGMENT_BYTES / seconds / 1e6, "latencies_ms": latencies,
            "load_error": str(load.error) if load.error else None}


def run_wal(cluster, rounds: int, segments: int, pgsafe: PgsafePhysical | None) -> dict:
    """WAL archive throughput and ack latency, pgBackRest archive-push vs pgsafe wal-push."""
    dbname = prepare_wal_database(cluster)
    modes = ["pgbackrest"] + (["pgsafe"] if pgsafe is not None else [])
    results: dict[str, list] = {mode: [] for mode in modes}
    for number in range(1, rounds + 1):
        for mode in modes:
            log("WAL round %d/%d: %s drains a backlog of %d segments under write load" % (number, rounds, mode,
                                                                                          segments))
            results[mode].append(wal_round(cluster, dbname, mode, segments, pgsafe if mode == "pgsafe" else None))
    cluster.psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % dbname)
    summary = {}
    for mode, runs in results.items():
        latencies = [value for run in runs for value in run["latencies_ms"]]
        summary[mode] = {"mb_s": median([run["mb_s"] for run in runs]), "p50_ms": percentile(latencies, 0.5),
                         "p99_ms": percentile(latencies, 0.99), "pushes": len(latencies),
                         "rounds": [{key: value for key, value in run.items() if key != "latencies_ms"}
                                    for run in runs]}
    notes = [] if pgsafe is not None else [
        "pgsafe WAL archiving: not available yet (the installed CLI lacks `wal-push` or `wal-shipper`)"]
    return {"summary": summary, "notes": notes}
