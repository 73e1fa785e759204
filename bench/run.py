# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``make bench``: build (or reuse) the dataset, run every contender, write the results.

Usage: .venv/bin/python bench/run.py [--size-gb 1] [--rounds 3] [--memory-sizes 1,4] [--quick]
       [--wal-segments 32] [--skip logical,memory,physical,wal,ansible] [--profile] [--no-docs]

Results: bench/results/<timestamp>.json (gitignored), a Markdown table on stdout and in
docs/performance.md. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import report  # noqa: E402  pylint: disable=wrong-import-position
from bench.common import (ROOT, BenchError, log, machine_info,  # noqa: E402  pylint: disable=wrong-import-position
                          pgsafe_commands_available)

SECTIONS = ("logical", "memory", "physical", "wal", "ansible")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description="pgsafe benchmarks (make bench)")
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of the main dataset (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender, median taken (default 3)")
    parser.add_argument("--memory-sizes", default="1,4",
                        help="database sizes in GB for the peak-memory points (default 1,4)")
    parser.add_argument("--quick", action="store_true", help="skip the memory points larger than --size-gb")
    parser.add_argument("--wal-segments", type=int, default=32, help="WAL backlog per round (default 32 x 16 MiB)")
    parser.add_argument("--ansible-hosts", type=int, default=3, help="hosts in the generated inventory (default 3)")
    parser.add_argument("--small-gb", type=float, default=0.05, help="size of the Ansible-overhead database")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: %s" % ",".join(SECTIONS))
    parser.add_argument("--profile", action="store_true", help="also profile one pgsafe backup with cProfile")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    parser.add_argument("--keep-running", action="store_true", help="leave the bench cluster running at the end")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    unknown = args.skip - set(SECTIONS)
    if unknown:
        parser.error("unknown section(s) in --skip: %s" % ", ".join(sorted(unknown)))
    args.memory_sizes = sorted({float(size) for size in args.memory_sizes.split(",") if size.strip()})
    if args.quick:
        args.memory_sizes = [size for size in args.memory_sizes if size <= args.size_gb] or [args.size_gb]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    # Imported here so `--help` works without the heavier dependencies.
    from bench import dataset, logical  # pylint: disable=import-outside-toplevel

    results: dict = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command_line": " ".join(shlex.quote(arg) for arg in (argv if argv is not None else sys.argv[1:])),
        "arguments": {key: sorted(value) if isinstance(value, set) else value for key, value in vars(args).items()},
        "machine": machine_info(),
        "notes": [],
    }
    available = pgsafe_commands_available()
    results["pgsafe_commands"] = sorted(available)
    cluster = dataset.start_cluster()
    moto = None
    bench = None
    try:
        results["dataset"] = dataset.ensure_database(cluster, dataset.MAIN_DB, args.size_gb, measure_ratio=True)
        moto = logical.MotoServer().start()
        bench = logical.LogicalBench(cluster, moto, dataset.MAIN_DB)
        if "logical" not in args.skip:
            results["logical"] = logical.run_logical(bench, args.rounds)
        if "memory" not in args.skip:
            results["memory"] = run_memory_points(args, results, bench)
        if args.profile:
            log("profiling one pgsafe backup with cProfile")
            results["profile"] = logical.profile_backup(bench, os.path.join(ROOT, "bench", "results"))
        if "physical" not in args.skip or "wal" not in args.skip:
            results.update(run_physical_sections(cluster, args, available))
        if "ansible" not in args.skip:
            from bench import ansible_overhead  # pylint: disable=import-outside-toplevel

            small = dataset.ensure_database(cluster, "benchsmall", args.small_gb)
            results["ansible"] = ansible_overhead.run_ansible(cluster, "benchsmall", args.rounds, args.ansible_hosts,
                                                              bench.key_file)
            results["ansible"]["database_bytes"] = small["size_bytes"]
    except BenchError as exc:
        log("FAILED: %s" % exc)
        results["error"] = str(exc)
    finally:
        if bench is not None:
            bench.cleanup()
        if moto is not None:
            moto.stop()
        if not args.keep_running:
            cluster.stop()
    results["wall_seconds"] = time.monotonic() - started
    results["load_at_end"] = os.getloadavg()
    results["notes"].extend(results.pop("physical_notes", []))
    claims = report.build_claims(results)
    results["claims"] = [claim.to_json() for claim in claims]
    results["notes"].extend(method_notes(results))
    table = report.markdown(results, claims)
    out_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    out_path = os.path.join(out_dir, "%s.json" % results["started_at"].replace(":", ""))
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, sort_keys=True, default=str)
    print(table)
    if not args.no_docs and "error" not in results:
        report.update_document(os.path.join(ROOT, "docs", "performance.md"), table)
    log("results: %s (%.1f min)" % (out_path, results["wall_seconds"] / 60))
    return 1 if "error" in results else 0


def run_memory_points(args, results: dict, bench) -> dict:
    """pgsafe's peak memory at each size: the main dataset's rounds, larger sizes in a second cluster."""
    from bench import dataset, logical  # pylint: disable=import-outside-toplevel

    points = []
    larger = [size for size in args.memory_sizes if size != args.size_gb]
    if args.size_gb in args.memory_sizes:
        if results.get("logical"):
            # The main dataset's point: the largest peak over the measured rounds.
            runs = results["logical"]["details"]["pgsafe_fs"]
            worst = max(runs, key=lambda run: run["memory"]["pgsafe_process_peak_mib"])
            points.append(dict(worst["memory"], size_gb=args.size_gb, raw_bytes=worst["raw_bytes"],
                               stored_bytes=worst["stored_bytes"], database=dataset.MAIN_DB, seconds=worst["seconds"]))
        else:
            log("memory point: pgsafe backup of %s (%g GB)" % (dataset.MAIN_DB, args.size_gb))
            points.append(dict(logical.run_memory_point(bench, bench.fs_config, dataset.MAIN_DB), size_gb=args.size_gb))
    if larger:
        memory_cluster = dataset.start_cluster("cluster-memory", archive=False)
        try:
            config = bench.config_for(memory_cluster, "memory.yml")
            for size in larger:
                name = "benchmem_%sgb" % ("%g" % size).replace(".", "_")
                dataset.ensure_database(memory_cluster, name, size, unlogged=True)
                log("memory point: pgsafe backup of %s (%g GB)" % (name, size))
                points.append(dict(logical.run_memory_point(bench, config, name), size_gb=size))
        finally:
            memory_cluster.stop()
    return {"points": sorted(points, key=lambda point: point["size_gb"])}


def run_physical_sections(cluster, args, available: set[str]) -> dict:
    """Physical backup/restore and WAL archiving share pgBackRest's stanza and pgsafe's shipper set-up."""
    from bench import physical  # pylint: disable=import-outside-toplevel

    found: dict = {"notes": []}
    pgbackrest = pgsafe = None
    try:
        if "physical" not in args.skip:
            physical_results = physical.run_physical(cluster, args.rounds, available)
            pgbackrest = physical_results.pop("pgbackrest")
            pgsafe = physical_results.pop("pgsafe")
            found["notes"].extend(physical_results["notes"])
            found["physical"] = physical_results
        else:
            pgbackrest = physical.PgBackRest(cluster)
            pgbackrest.stanza_create()
            if {"wal-push", "wal-shipper"} <= available:
                pgsafe = physical.PgsafePhysical(cluster)
        if "wal" not in args.skip:
            found["wal"] = physical.run_wal(cluster, args.rounds, args.wal_segments, pgsafe)
            found["notes"].extend(found["wal"]["notes"])
    finally:
        if pgbackrest is not None:
            pgbackrest.cleanup()
        if pgsafe is not None:
            pgsafe.cleanup()
    notes = found.pop("notes")
    return dict(found, physical_notes=notes)


def method_notes(results: dict) -> list[str]:
    notes = []
    logical = results.get("logical")
    if logical:
        notes.append("pgsafe runs as `pgsafe -c CONFIG backup logical -d benchdb` (globals included), zstd level 3 "
                     "with 2 threads, AWS Encryption SDK envelope with a local AES-256 key, into a filesystem "
                     "repository on the local disk or an S3 bucket on a moto server (own process, loopback).")
        notes.append("The seed way is `pg_dump -Fc` (its default gzip) to a file in /tmp, then a new process that "
                     "uploads it with boto3's upload_file (like `aws s3 cp`), or `cp` + `sync` into a local "
                     "directory; each compared with pgsafe writing to the same kind of store.")
    if results.get("wal"):
        notes.append("WAL rows: a backlog of N segments (archiver held) is drained by the tool's archive_command "
                     "while a write workload keeps running; MB/s = N x 16 MiB / time until pg_stat_archiver reports "
                     "the last backlog segment; latency = each archive_command's duration; p99 over fewer than 100 "
                     "pushes is the maximum.")
    if results.get("physical"):
        notes.append("Physical rows: %s as the postgres user, `--type=full`, zstd level 3, "
                     "aes-256-cbc repository encryption, process-max 2, start-fast; restore into a new empty "
                     "directory (recovery not started)." % results["machine"]["versions"].get("pgbackrest", ""))
    notes.append("The cluster runs with fsync=off (test helper default) for all contenders alike; its data "
                 "directory is under .build/bench (same disk as /tmp here).")
    return notes


if __name__ == "__main__":
    sys.exit(main())
