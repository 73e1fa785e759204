# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Claims (ratios against targets) and their Markdown table with the machine's facts."""

from __future__ import annotations

import dataclasses
import math

BEGIN_MARK = "<!-- bench/run.py writes from here -->"
END_MARK = "<!-- to here; the analysis below is kept -->"
REPRODUCE = "make bench   # = .venv/bin/python bench/run.py (defaults: --size-gb 1 --rounds 3 --memory-sizes 1,4)"


@dataclasses.dataclass
class Claim:
    """One row: a measured value next to its target."""

    name: str
    value: float | None
    target: str  # e.g. "<= 1.2"
    source: str  # where the target comes from
    detail: str = ""
    unit: str = "x"

    @property
    def status(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "not measured"
        if not self.target or self.target == "-":
            return "info"
        operator, bound = self.target.split()
        bound_value = float(bound)
        ok = self.value <= bound_value if operator == "<=" else self.value >= bound_value
        return "met" if ok else "NOT met"

    def shown(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "n/a"
        if self.unit == "x":
            return "%.2fx" % self.value
        return "%.1f %s" % (self.value, self.unit)

    def to_json(self) -> dict:
        return {"name": self.name, "value": self.value, "unit": self.unit, "target": self.target,
                "source": self.source, "status": self.status, "detail": self.detail}


def median_of(entries: list[dict], key: str) -> float:
    values = sorted(entry[key] for entry in entries)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def _ratio(numerator: float, denominator: float) -> float | None:
    if not numerator or not denominator or math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


def build_claims(results: dict) -> list[Claim]:
    claims: list[Claim] = []
    logical = results.get("logical")
    if logical:
        med = logical["medians"]
        raw_mb = logical["raw_bytes"] / 1e6
        stored_mb = logical["stored_bytes"] / 1e6
        claims.append(Claim("logical: pgsafe (fs) / pg_dump -Fc -Z0 > /dev/null", _ratio(med["pgsafe_fs"], med["ceiling"]),
                            "<= 1.2", "issue 7", "%.1f s vs %.1f s; %.0f MB raw dump" % (
                                med["pgsafe_fs"], med["ceiling"], raw_mb)))
        claims.append(Claim("logical: seed (pg_dump -Fc + upload_file to S3) / pgsafe (S3)",
                            _ratio(med["seed_s3"], med["pgsafe_s3"]), ">= 5", "issue 7",
                            "%.1f s (dump %.1f + upload %.1f) vs %.1f s" % (
                                med["seed_s3"], med["seed_dump"], med["seed_upload"], med["pgsafe_s3"])))
        claims.append(Claim("logical: seed (pg_dump -Fc + cp/sync) / pgsafe (fs)",
                            _ratio(med["seed_fs"], med["pgsafe_fs"]), ">= 5", "issue 7",
                            "%.1f s vs %.1f s" % (med["seed_fs"], med["pgsafe_fs"])))
        if med.get("pgsafe_fs_zstd1"):
            variant_stored = median_of(logical["details"]["pgsafe_fs_zstd1"], "stored_bytes")
            claims.append(Claim("logical variant: pgsafe (fs) with zstd level 1 / read ceiling",
                                _ratio(med["pgsafe_fs_zstd1"], med["ceiling"]), "<= 1.2",
                                "issue 7 (a proposed default, not today's)",
                                "%.1f s vs %.1f s; stores %.0f MB (x%.2f) instead of %.0f MB" % (
                                    med["pgsafe_fs_zstd1"], med["ceiling"], variant_stored / 1e6,
                                    logical["raw_bytes"] / max(variant_stored, 1), stored_mb)))
            claims.append(Claim("logical variant: seed (cp/sync) / pgsafe (fs) with zstd level 1",
                                _ratio(med["seed_fs"], med["pgsafe_fs_zstd1"]), ">= 5",
                                "issue 7 (a proposed default, not today's)",
                                "%.1f s vs %.1f s" % (med["seed_fs"], med["pgsafe_fs_zstd1"])))
        moto_mb_s = med["moto_raw_put_mb_s"]
        s3_floor = max(med["ceiling"], stored_mb / moto_mb_s if moto_mb_s else 0.0)
        claims.append(Claim("logical: pgsafe (S3) / max(read ceiling, moto raw put of the stored bytes)",
                            _ratio(med["pgsafe_s3"], s3_floor), "<= 1.2", "bench (issue 7's 1.2 applied to S3)",
                            "%.1f s vs %.1f s; moto raw put %.0f MB/s, %.0f MB stored" % (
                                med["pgsafe_s3"], s3_floor, moto_mb_s, stored_mb)))
        claims.append(Claim("logical: pgsafe restore -t (fs) / pg_restore of a local -Fc -Z0 file",
                            _ratio(med["restore_pgsafe"], med["restore_ceiling"]), "<= 1.2",
                            "bench (backup's bound applied to restore)",
                            "%.1f s vs %.1f s (pgsafe also re-counts every row)" % (
                                med["restore_pgsafe"], med["restore_ceiling"])))
        for where in ("fs", "s3"):
            seconds = med["verify_" + where]
            claims.append(Claim("verify --level decrypt (%s): stored MB/s" % where, stored_mb / seconds if seconds else None,
                                "-", "info", "raw (decompressed) %.0f MB/s; %.1f s per backup" % (
                                    raw_mb / seconds if seconds else 0, seconds), unit="MB/s"))
        claims.append(Claim("dataset: zstd -3 ratio of pgsafe's stored bytes", logical["pgsafe_ratio"], "-", "info",
                            "seed's gzip stored %.0f MB" % (logical["seed_stored_bytes"] / 1e6)))
    memory = results.get("memory")
    if memory:
        peaks = []
        for point in memory["points"]:
            peak = point["pgsafe_process_peak_mib"]
            peaks.append(peak)
            claims.append(Claim("memory: pgsafe peak RSS, %s GB database" % point["size_gb"], peak, "<= 256",
                                "issue 7", "process tree incl. pg_dump %.0f MiB; %.0f MB raw dump" % (
                                    point["tree_peak_sum_mib"], point["raw_bytes"] / 1e6), unit="MiB"))
        if len(peaks) > 1:
            claims.append(Claim("memory: growth, largest / smallest size", _ratio(peaks[-1], peaks[0]), "<= 1.1",
                                "issue 7 (not growing with size)",
                                "%s GB vs %s GB" % (memory["points"][-1]["size_gb"], memory["points"][0]["size_gb"])))
    physical = results.get("physical")
    if physical:
        med = physical["medians"]
        claims.append(Claim("physical: pgsafe full backup / pgBackRest",
                            _ratio(med["pgsafe_backup"], med["pgbackrest_backup"]),
                            "<= 0.8", "issue 7", "pgBackRest %.1f s" % med["pgbackrest_backup"]))
        claims.append(Claim("physical: pgsafe restore / pgBackRest",
                            _ratio(med["pgsafe_restore"], med["pgbackrest_restore"]),
                            "<= 1.0", "issue 7", "pgBackRest %.1f s" % med["pgbackrest_restore"]))
    wal = results.get("wal")
    if wal:
        summary = wal["summary"]
        ref = summary.get("pgbackrest", {})
        mine = summary.get("pgsafe", {})
        claims.append(Claim("WAL: pgsafe archive MB/s / pgBackRest archive-push", _ratio(mine.get("mb_s"), ref.get("mb_s")),
                            ">= 1.0", "issue 7 (against pgBackRest)",
                            "pgBackRest %.1f MB/s, ack p50 %.0f ms, p99 %.0f ms" % (
                                ref.get("mb_s", float("nan")), ref.get("p50_ms", float("nan")),
                                ref.get("p99_ms", float("nan")))))
        claims.append(Claim("WAL: pgsafe ack latency p99 / pgBackRest", _ratio(mine.get("p99_ms"), ref.get("p99_ms")),
                            "<= 1.0", "issue 7 (against pgBackRest)",
                            "pgsafe p50 %s ms" % ("%.0f" % mine["p50_ms"] if mine else "n/a")))
    ansible = results.get("ansible")
    if ansible:
        med = ansible["medians"]
        claims.append(Claim("ansible: playbook / CLI, 1 host, small database", _ratio(med["playbook_1"], med["cli_1"]),
                            "<= 2.0", "bench", "%.1f s vs %.1f s (overhead %.1f s)" % (
                                med["playbook_1"], med["cli_1"], med["playbook_1"] - med["cli_1"])))
        hosts = ansible["hosts"]
        claims.append(Claim("ansible: playbook over %d hosts / %d CLI runs in sequence" % (hosts, hosts),
                            _ratio(med["playbook_n"], med["cli_n"]), "<= 2.0", "bench",
                            "%.1f s vs %.1f s" % (med["playbook_n"], med["cli_n"])))
    return claims


def markdown(results: dict, claims: list[Claim]) -> str:
    machine = results["machine"]
    versions = machine["versions"]
    args = results["arguments"]
    dataset = results.get("dataset", {})
    lines = [
        "# Performance",
        "",
        "Generated by `make bench` (bench/run.py); the claims are ratios measured in one run, each the",
        "median of %d alternating rounds. Absolute seconds depend on the machine and its load; the" % args["rounds"],
        "ratios are what we defend. Reproduce with:",
        "",
        "```bash",
        REPRODUCE,
        ".venv/bin/python bench/run.py %s" % (results["command_line"] or "   # the same, run directly"),
        "```",
        "",
        "## Latest run: %s" % results["started_at"],
        "",
        "| claim | measured | target | status | source | detail |",
        "|---|---|---|---|---|---|",
    ]
    for claim in claims:
        lines.append("| %s | %s | %s | %s | %s | %s |" % (claim.name, claim.shown(), claim.target, claim.status,
                                                          claim.source, claim.detail))
    lines += cpu_section(results)
    lines += profile_section(results)
    lines += ["", "Notes:", ""]
    for note in results.get("notes", []):
        lines.append("- %s" % note)
    lines += [
        "",
        "## Dataset",
        "",
        "`%s`: %.2f GB on disk (%s tables), generated server-side with `generate_series` (timestamps, numerics, "
        "floats, repeated and random text, jsonb, bytea); its `pg_dump -Fc -Z0` is %.0f MB and compresses x%s with "
        "zstd -3 (pgbench's filler would compress 35-100x)." % (
            dataset.get("database", "?"), dataset.get("size_bytes", 0) / 1e9, dataset.get("tables", "?"),
            float(dataset.get("dump_raw_bytes", 0)) / 1e6, dataset.get("zstd3_ratio", "?")),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        "| CPU | %s, %s cores |" % (machine["cpu"], machine["cores"]),
        "| memory | %s GiB |" % machine["memory_gib"],
        "| OS / kernel | %s / %s |" % (machine["os"], machine["kernel"]),
        "| load average at start / end | %s / %s |" % (
            " ".join("%.2f" % value for value in machine["load_at_start"]),
            " ".join("%.2f" % value for value in results.get("load_at_end", []))),
    ]
    for name, version in versions.items():
        lines.append("| %s | %s |" % (name, version))
    lines += ["", "Total benchmark wall time: %.1f min." % (results.get("wall_seconds", 0) / 60), ""]
    return "\n".join(lines)


CPU_LABELS = {
    "ceiling": "pg_dump -Fc -Z0 > /dev/null",
    "pgsafe_fs": "pgsafe backup (fs, zstd 3)",
    "pgsafe_fs_zstd1": "pgsafe backup (fs, zstd 1)",
    "pgsafe_s3": "pgsafe backup (S3, zstd 3)",
    "seed_dump": "seed: pg_dump -Fc (gzip) to /tmp",
    "restore_ceiling": "pg_restore of a local -Z0 file",
    "restore_pgsafe": "pgsafe restore",
}


def cpu_section(results: dict) -> list[str]:
    """Where the time goes: CPU seconds per contender against its wall time."""
    logical = results.get("logical")
    if not logical or not logical.get("cpu_medians"):
        return []
    cores = results["machine"]["cores"] or 1
    lines = ["", "### Where the time goes (median CPU seconds; %d cores)" % cores, "",
             "| contender | wall s | client CPU s | server CPU s | total CPU s | floor on %d idle cores s |" % cores,
             "|---|---|---|---|---|---|"]
    walls = logical["medians"]
    for name, label in CPU_LABELS.items():
        spent = logical["cpu_medians"].get(name)
        if not spent:
            continue
        total = spent["client"] + spent["server"]
        lines.append("| %s | %.1f | %.1f | %.1f | %.1f | %.1f |" % (
            label, walls.get(name, float("nan")), spent["client"], spent["server"], total, total / cores))
    lines += ["", "Client CPU is the measured process and the children it reaped (pg_dump, pg_dumpall); server "
              "CPU is every process of the benchmark cluster. The floor is total CPU / cores: no schedule on "
              "this machine finishes sooner, whatever the overlap."]
    lines += thread_section(logical)
    return lines


def thread_section(logical: dict) -> list[str]:
    """pgsafe's CPU by thread (sampled from /proc every 50 ms), median over the rounds."""
    variants = [(name, label) for name, label in (("pgsafe_fs", "zstd 3"), ("pgsafe_fs_zstd1", "zstd 1"))
                if logical["details"].get(name) and logical["details"][name][0].get("cpu_by_role")]
    if not variants:
        return []
    roles: list[str] = []
    for name, _label in variants:
        for run in logical["details"][name]:
            roles.extend(role for role in run["cpu_by_role"] if role not in roles)
    lines = ["", "### pgsafe backup by thread (median CPU seconds)", "",
             "| where | " + " | ".join(label for _name, label in variants) + " |",
             "|---|" + "---|" * len(variants)]
    for role in roles + ["PostgreSQL server (COPY backend, row counts)"]:
        cells = []
        for name, _label in variants:
            runs = logical["details"][name]
            if role.startswith("PostgreSQL server"):
                values = sorted(run.get("server_cpu", 0.0) for run in runs)
            else:
                values = sorted(run["cpu_by_role"].get(role, 0.0) for run in runs)
            cells.append("%.2f" % values[len(values) // 2])
        lines.append("| %s | %s |" % (role, " | ".join(cells)))
    return lines


def profile_section(results: dict) -> list[str]:
    profile = results.get("profile")
    if not profile:
        return []
    lines = ["", "### cProfile of one pgsafe backup (main thread, own time)", "",
             "| function | calls | own s | share |", "|---|---|---|---|"]
    for row in profile["top_own_time"][:10]:
        lines.append("| `%s` | %d | %.2f | %.0f%% |" % (
            row["function"], row["calls"], row["own_seconds"], 100 * row["own_share"]))
    return lines


def update_document(path: str, generated: str) -> None:
    """Replace the generated part of docs/performance.md, keeping the hand-written analysis after it."""
    kept = ""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            current = handle.read()
        if END_MARK in current:
            kept = current.split(END_MARK, 1)[1]
    except FileNotFoundError:
        pass
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("%s\n%s\n%s%s" % (BEGIN_MARK, generated.rstrip("\n"), END_MARK, kept or "\n"))
