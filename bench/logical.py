# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Logical backup contenders, verification, restore-test and peak memory.

Each round runs every contender once, in the same order (pgsafe to the filesystem,
the pg_dump read ceiling, the seed way, pgsafe to S3, moto's raw put, verify, restore
and its pg_restore ceiling), so a burst of load from elsewhere on the machine hits
all of them alike; the claims are medians over the rounds and ratios between them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from bench.common import (BUILD, MIB, PG_BIN, VENV_BIN, BenchError, Measurement, cluster_cpu_seconds, log, median,
                          pgsafe_command, run_measured)

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "pgsafe-bench"
CLUSTER_NAME = "bench"


class MotoServer:
    """moto's S3/KMS server as its own process on loopback (so it does not share our GIL)."""

    def __init__(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self.process = None

    def start(self) -> "MotoServer":
        server = os.path.join(VENV_BIN, "moto_server")
        self.process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=dict(os.environ, **AWS_ENV))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise BenchError("moto_server did not start on port %d" % self.port)
        self.client().create_bucket(Bucket=BUCKET)
        return self

    def client(self):
        import boto3  # pylint: disable=import-outside-toplevel
        from botocore.config import Config  # pylint: disable=import-outside-toplevel

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                            config=Config(s3={"addressing_style": "path"}))

    def delete_prefix(self, prefix: str) -> None:
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class LogicalBench:
    """Configuration files, repositories and the contenders of the logical rows."""

    def __init__(self, cluster, moto: MotoServer, dbname: str):
        self.cluster = cluster
        self.moto = moto
        self.dbname = dbname
        self.work = os.path.join(BUILD, "work")
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work, mode=0o700)
        # The seed scripts stage their dump in /tmp; so does the seed contender.
        self.seed_dir = tempfile.mkdtemp(prefix="pgsafe-bench-seed-")
        self.key_file = os.path.join(self.work, "keys", "backup.key")
        subprocess.run(pgsafe_command() + ["key", "generate", self.key_file], check=True, capture_output=True)
        self.fs_repo = os.path.join(self.work, "repo-fs")
        self.fs_config = self._config("fs.yml", {"type": "filesystem", "path": self.fs_repo, "create": True})
        self.s3_config = self._config("s3.yml", {
            "type": "s3", "bucket": BUCKET, "endpoint_url": moto.endpoint, "path_style": True,
            "region": "us-east-1", "access_key": AWS_ENV["AWS_ACCESS_KEY_ID"],
            "secret_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"]})
        # The same pgsafe with zstd level 1: the measured case for a cheaper default on few cores.
        self.fs_level1_config = self._config("fs-zstd1.yml", {"type": "filesystem", "path": self.fs_repo,
                                                              "create": True}, level=1)
        self.env = dict(cluster.env(), **AWS_ENV)
        self.ceiling_dump = os.path.join(self.work, "ceiling.dump")

    def config_for(self, cluster, name: str) -> str:
        """A filesystem-repository config like the main one, for another cluster (the memory points)."""
        saved, self.cluster = self.cluster, cluster
        try:
            return self._config(name, {"type": "filesystem", "path": self.fs_repo, "create": True})
        finally:
            self.cluster = saved

    def _config(self, name: str, repository: dict, level: int = 3) -> str:
        import yaml  # pylint: disable=import-outside-toplevel

        settings = {
            "cluster": CLUSTER_NAME,
            "state_dir": os.path.join(self.work, "state"),
            "postgres": {"host": self.cluster.host, "port": self.cluster.port, "user": self.cluster.user,
                         "bin_dir": PG_BIN},
            "repository": repository,
            "encryption": {"key_files": [{"path": self.key_file}]},
            "compression": {"algorithm": "zstd", "level": level, "threads": 2},
        }
        path = os.path.join(self.work, name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            yaml.safe_dump(settings, handle, sort_keys=False)
        return path

    # --- contenders ---------------------------------------------------------------------
    def pgsafe(self, config: str, args: list[str], sample_memory: bool = True, what: str = "pgsafe") -> Measurement:
        return run_measured(pgsafe_command() + ["-c", config] + args, env=self.env, sample_memory=sample_memory,
                            what=what)

    def pgsafe_backup(self, config: str, dbname: str | None = None) -> Measurement:
        return self.pgsafe(config, ["backup", "logical", "-d", dbname or self.dbname, "--json"],
                           what="pgsafe backup logical")

    def ceiling(self) -> Measurement:
        with open(os.devnull, "wb") as sink:
            return run_measured([os.path.join(PG_BIN, "pg_dump"), "-Fc", "-Z0", "-d", self.dbname], env=self.env,
                                stdout=sink, what="pg_dump -Fc -Z0")

    def seed(self, round_number: int) -> dict:
        """The seed way: pg_dump -Fc (its gzip) to a file in /tmp, then upload; and the cp variant."""
        dump_path = os.path.join(self.seed_dir, "%s.dump" % self.dbname)
        dump = run_measured([os.path.join(PG_BIN, "pg_dump"), "-Fc", "-d", self.dbname, "-f", dump_path],
                            env=self.env, what="pg_dump -Fc (seed)")
        size = os.path.getsize(dump_path)
        key = "seed/%d/%s.dump" % (round_number, self.dbname)
        # A process per upload, like `aws s3 cp` in the seed scripts (it pays boto3's import too).
        upload_code = ("import boto3,sys;from botocore.config import Config;"
                       "boto3.client('s3',endpoint_url=sys.argv[1],region_name='us-east-1',"
                       "config=Config(s3={'addressing_style':'path'})).upload_file(sys.argv[2],sys.argv[3],sys.argv[4])")
        upload = run_measured([os.path.join(VENV_BIN, "python"), "-c", upload_code, self.moto.endpoint, dump_path,
                               BUCKET, key], env=self.env, what="seed upload")
        copy_target = os.path.join(self.work, "seed-repo")
        os.makedirs(copy_target, exist_ok=True)
        copied = os.path.join(copy_target, os.path.basename(dump_path))
        copy = run_measured(["sh", "-c", 'cp "$1" "$2" && sync "$2"', "cp", dump_path, copied], what="seed cp")
        # Moto's own ceiling: a raw put of the same bytes from an already-running client.
        client = self.moto.client()
        started = time.monotonic()
        client.upload_file(dump_path, BUCKET, key + ".raw")
        raw_put_seconds = time.monotonic() - started
        self.moto.delete_prefix("seed/")
        os.unlink(copied)
        os.unlink(dump_path)
        return {"dump_seconds": dump.seconds, "upload_seconds": upload.seconds, "cp_seconds": copy.seconds,
                "dump_cpu_seconds": dump.cpu_seconds, "upload_cpu_seconds": upload.cpu_seconds,
                "seconds_s3": dump.seconds + upload.seconds, "seconds_fs": dump.seconds + copy.seconds,
                "stored_bytes": size, "moto_raw_put_seconds": raw_put_seconds,
                "moto_raw_put_mb_s": size / raw_put_seconds / 1e6}

    def make_ceiling_dump(self) -> None:
        with open(self.ceiling_dump, "wb") as sink:
            run_measured([os.path.join(PG_BIN, "pg_dump"), "-Fc", "-Z0", "-d", self.dbname], env=self.env,
                         stdout=sink, what="pg_dump -Fc -Z0 to a file")

    def drop_database(self, name: str) -> None:
        self.cluster.psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)

    def pg_restore_ceiling(self) -> Measurement:
        target = "%s_pgrestore" % self.dbname
        self.drop_database(target)
        started = time.monotonic()
        run_measured([os.path.join(PG_BIN, "createdb"), target], env=self.env, what="createdb")
        restore = run_measured([os.path.join(PG_BIN, "pg_restore"), "-d", target, self.ceiling_dump], env=self.env,
                               what="pg_restore (ceiling)")
        restore.seconds = time.monotonic() - started
        self.drop_database(target)
        return restore

    def pgsafe_restore(self, backup_id: str) -> Measurement:
        target = "%s_restored" % self.dbname
        self.drop_database(target)
        result = self.pgsafe(self.fs_config, ["restore", "--backup-id", backup_id, "-d", self.dbname, "-t", target,
                                              "--json"], what="pgsafe restore")
        if not result.json().get("row_counts_match"):
            raise BenchError("pgsafe restore of %s reported row counts that differ" % backup_id)
        self.drop_database(target)
        return result

    def forget_backup(self, backup_id: str, s3: bool) -> None:
        """Drop a measured backup so the repositories (and moto's memory) stay small."""
        if s3:
            self.moto.delete_prefix("%s/backups/%s/" % (CLUSTER_NAME, backup_id))
        else:
            shutil.rmtree(os.path.join(self.fs_repo, CLUSTER_NAME, "backups", backup_id), ignore_errors=True)

    def cleanup(self) -> None:
        shutil.rmtree(self.seed_dir, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)


def _memory(measurement: Measurement) -> dict:
    pgsafe_peaks = {label: kib for label, kib in measurement.peak_by_process.items()
                    if label.startswith(("pgsafe", "python"))}
    return {"pgsafe_process_peak_mib": round(measurement.peak_self_kib / 1024, 1),
            "tree_peak_sum_mib": round(measurement.peak_tree_sum_kib / 1024, 1),
            "by_process_mib": {label: round(kib / 1024, 1) for label, kib in measurement.peak_by_process.items()},
            "pgsafe_processes_peak_mib": round(max(list(pgsafe_peaks.values()) + [measurement.peak_self_kib]) / 1024,
                                               1)}


def run_logical(bench: LogicalBench, rounds: int) -> dict:
    """All logical contenders, ``rounds`` times, in a fixed alternating order."""
    samples: dict[str, list] = {name: [] for name in (
        "pgsafe_fs", "ceiling", "seed_s3", "seed_fs", "seed_dump", "seed_upload", "pgsafe_s3", "moto_raw_put_mb_s",
        "verify_fs", "verify_s3", "restore_pgsafe", "restore_ceiling", "pgsafe_fs_zstd1")}
    # CPU seconds per contender: the client side (the process and the children it reaped) and
    # the PostgreSQL server side (COPY backends and friends), to say what bounds the wall time.
    cpu: dict[str, list] = {name: [] for name in ("pgsafe_fs", "ceiling", "seed_dump", "pgsafe_s3",
                                                  "restore_pgsafe", "restore_ceiling", "pgsafe_fs_zstd1")}
    details: dict[str, list] = {"pgsafe_fs": [], "pgsafe_s3": [], "verify_fs": [], "verify_s3": [], "seed": [],
                                "restore_pgsafe": [], "pgsafe_fs_zstd1": []}

    def server_cpu() -> float:
        return cluster_cpu_seconds(bench.cluster.datadir)

    def account(name: str, client: float, server_before: float) -> None:
        cpu[name].append({"client": client, "server": server_cpu() - server_before})

    log("making the -Fc -Z0 file for the pg_restore ceiling")
    bench.make_ceiling_dump()
    for number in range(1, rounds + 1):
        log("logical round %d/%d: pgsafe -> filesystem" % (number, rounds))
        before = server_cpu()
        fs_run = bench.pgsafe_backup(bench.fs_config)
        account("pgsafe_fs", fs_run.cpu_seconds, before)
        fs_result = fs_run.json()
        samples["pgsafe_fs"].append(fs_run.seconds)
        details["pgsafe_fs"].append(dict(seconds=fs_run.seconds, engine_seconds=fs_result["duration_seconds"],
                                         raw_bytes=fs_result["size_raw_bytes"],
                                         stored_bytes=fs_result["size_stored_bytes"], memory=_memory(fs_run),
                                         load=os.getloadavg()[0], cpu_by_role=fs_run.cpu_by_role,
                                         server_cpu=cpu["pgsafe_fs"][-1]["server"]))

        log("logical round %d/%d: pg_dump -Fc -Z0 > /dev/null (read ceiling)" % (number, rounds))
        before = server_cpu()
        ceiling = bench.ceiling()
        account("ceiling", ceiling.cpu_seconds, before)
        samples["ceiling"].append(ceiling.seconds)

        log("logical round %d/%d: seed way (pg_dump -Fc to /tmp, then upload)" % (number, rounds))
        before = server_cpu()
        seed = bench.seed(number)
        account("seed_dump", seed["dump_cpu_seconds"], before)
        for key in ("seed_s3", "seed_fs"):
            samples[key].append(seed["seconds_" + key[5:]])
        samples["seed_dump"].append(seed["dump_seconds"])
        samples["seed_upload"].append(seed["upload_seconds"])
        samples["moto_raw_put_mb_s"].append(seed["moto_raw_put_mb_s"])
        details["seed"].append(seed)

        log("logical round %d/%d: pgsafe -> S3 (moto)" % (number, rounds))
        before = server_cpu()
        s3_run = bench.pgsafe_backup(bench.s3_config)
        account("pgsafe_s3", s3_run.cpu_seconds, before)
        s3_result = s3_run.json()
        samples["pgsafe_s3"].append(s3_run.seconds)
        details["pgsafe_s3"].append(dict(seconds=s3_run.seconds, engine_seconds=s3_result["duration_seconds"],
                                         raw_bytes=s3_result["size_raw_bytes"],
                                         stored_bytes=s3_result["size_stored_bytes"], memory=_memory(s3_run)))

        for where, config, backup_id in (("fs", bench.fs_config, fs_result["backup_id"]),
                                         ("s3", bench.s3_config, s3_result["backup_id"])):
            log("logical round %d/%d: pgsafe verify --level decrypt (%s)" % (number, rounds, where))
            verify_run = bench.pgsafe(config, ["verify", "--level", "decrypt", "--backup-id", backup_id,
                                               "--max-age-hours", "1", "--json"], what="pgsafe verify")
            if not verify_run.json().get("ok"):
                raise BenchError("pgsafe verify failed: %s" % verify_run.stdout[-1000:])
            samples["verify_" + where].append(verify_run.seconds)
            details["verify_" + where].append({"seconds": verify_run.seconds, "cpu_seconds": verify_run.cpu_seconds,
                                               "memory": _memory(verify_run)})

        log("logical round %d/%d: pgsafe restore -t %s_restored" % (number, rounds, bench.dbname))
        before = server_cpu()
        restore_run = bench.pgsafe_restore(fs_result["backup_id"])
        account("restore_pgsafe", restore_run.cpu_seconds, before)
        samples["restore_pgsafe"].append(restore_run.seconds)
        details["restore_pgsafe"].append({"seconds": restore_run.seconds, "memory": _memory(restore_run)})

        log("logical round %d/%d: pg_restore of the -Fc -Z0 file (restore ceiling)" % (number, rounds))
        before = server_cpu()
        restore_ceiling = bench.pg_restore_ceiling()
        account("restore_ceiling", restore_ceiling.cpu_seconds, before)
        samples["restore_ceiling"].append(restore_ceiling.seconds)

        log("logical round %d/%d: pgsafe -> filesystem with zstd level 1 (variant)" % (number, rounds))
        before = server_cpu()
        variant_run = bench.pgsafe_backup(bench.fs_level1_config)
        account("pgsafe_fs_zstd1", variant_run.cpu_seconds, before)
        variant_result = variant_run.json()
        samples["pgsafe_fs_zstd1"].append(variant_run.seconds)
        details["pgsafe_fs_zstd1"].append(dict(seconds=variant_run.seconds, raw_bytes=variant_result["size_raw_bytes"],
                                               stored_bytes=variant_result["size_stored_bytes"],
                                               cpu_by_role=variant_run.cpu_by_role,
                                               server_cpu=cpu["pgsafe_fs_zstd1"][-1]["server"]))

        bench.forget_backup(fs_result["backup_id"], s3=False)
        bench.forget_backup(s3_result["backup_id"], s3=True)
        bench.forget_backup(variant_result["backup_id"], s3=False)

    raw = median([item["raw_bytes"] for item in details["pgsafe_fs"]])
    stored = median([item["stored_bytes"] for item in details["pgsafe_fs"]])
    cpu_medians = {name: {side: median([entry[side] for entry in entries]) for side in ("client", "server")}
                   for name, entries in cpu.items() if entries}
    return {"samples": samples, "details": details, "cpu": cpu, "cpu_medians": cpu_medians,
            "medians": {name: median(values) for name, values in samples.items()},
            "raw_bytes": raw, "stored_bytes": stored, "pgsafe_ratio": round(raw / max(stored, 1), 2),
            "seed_stored_bytes": median([item["stored_bytes"] for item in details["seed"]])}


def run_memory_point(bench: LogicalBench, config: str, dbname: str) -> dict:
    """One pgsafe backup of ``dbname`` to the filesystem with the process tree's memory sampled."""
    run = bench.pgsafe_backup(config, dbname)
    result = run.json()
    bench.forget_backup(result["backup_id"], s3=False)
    return dict(_memory(run), seconds=run.seconds, raw_bytes=result["size_raw_bytes"],
                stored_bytes=result["size_stored_bytes"], database=dbname)


def profile_backup(bench: LogicalBench, out_dir: str) -> dict:
    """One pgsafe backup under cProfile (main thread, where the pipeline runs); top functions by own time."""
    import pstats  # pylint: disable=import-outside-toplevel

    stats_file = os.path.join(out_dir, "pgsafe-backup.prof")
    run = run_measured([os.path.join(VENV_BIN, "python"), "-m", "cProfile", "-o", stats_file] + pgsafe_command() +
                       ["-c", bench.fs_config, "backup", "logical", "-d", bench.dbname, "--json"], env=bench.env,
                       what="pgsafe backup under cProfile")
    result = run.json()
    bench.forget_backup(result["backup_id"], s3=False)
    stats = pstats.Stats(stats_file)
    total = stats.total_tt  # pylint: disable=no-member
    rows = []
    for (filename, line, function), (_primitive, calls, own, cumulative, _callers) in sorted(
            stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:15]:  # pylint: disable=no-member
        rows.append({"function": "%s:%d(%s)" % (os.path.basename(filename), line, function), "calls": calls,
                     "own_seconds": round(own, 2), "cumulative_seconds": round(cumulative, 2),
                     "own_share": round(own / total, 3) if total else 0})
    return {"wall_seconds": run.seconds, "profiled_seconds": round(total, 2), "top_own_time": rows,
            "stats_file": stats_file, "note": "cProfile sees the main thread: zstd worker threads and the "
            "pg_dump process run beside it; time in read() is the main thread waiting for pg_dump"}


def mib(value: float) -> float:
    return round(value / MIB, 1)
