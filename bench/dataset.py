# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The benchmark cluster and its realistic dataset, generated server-side and cached.

Five tables of different shapes (customers, orders, events with jsonb, a narrow
time series, documents of generated words with a binary digest) mix timestamps,
numerics, floats, repeated and random text. A ``pg_dump -Fc -Z0`` of it compresses
about x2.9 with zstd -3 (checked at generation and reported), unlike pgbench's
blank-padded filler which shrinks 35-100 times and flatters every compressor.

The cluster lives in .build/bench/cluster (same disk as /tmp on these machines) and
is reused while the generator version and the requested size match, so only the
first run pays for generation. Databases other than the main one (the larger memory
point, in a second cluster) use UNLOGGED tables: pg_dump dumps their rows all the same,
and they write no WAL while loading, which keeps generation short.
"""

from __future__ import annotations

import concurrent.futures
import os
import typing
import subprocess
import sys
import time

from bench.common import BUILD, PG_BIN, ROOT, BenchError, log, postgres_dir

sys.path.insert(0, ROOT)
from tests.support.pgcluster import Cluster  # noqa: E402  pylint: disable=wrong-import-position

try:
    import psycopg
except ImportError:  # pragma: no cover - the venv has it
    psycopg = None

try:
    import zstandard
except ImportError:  # pragma: no cover - the venv has it
    zstandard = None

# Bump when the generator changes: cached databases of another version are rebuilt.
GENERATOR_VERSION = "3"
# Bytes of database (tables + primary keys) per unit of N, measured with this generator.
BYTES_PER_UNIT = 3350
# Work items of about this many units of N (~80 MB over all tables) keep both cores busy.
CHUNK_UNITS = 25000
MAIN_DB = "benchdb"

CLUSTER_SETTINGS = {
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "maintenance_work_mem": "256MB",
    # archive_command is set with ALTER SYSTEM to the dispatcher (physical.py); until a
    # measurement selects a tool it discards segments: nothing here needs old WAL.
    "archive_mode": "on",
    "wal_level": "replica",
    "max_wal_senders": "10",
}

FIRST_NAMES = "ARRAY['Anna','Ben','Carla','Dmitri','Eve','Farid','Gina','Hugo','Ines','Jon','Kemal','Lea','Marco','Nora','Omar','Paula']"
LAST_NAMES = "ARRAY['Smith','Garcia','Mueller','Rossi','Dubois','Novak','Silva','Kim','Tanaka','Ivanova','Jensen','Kowalski']"
SYLLABLES = ("ARRAY['ba','ke','lo','mi','nu','ra','se','ti','vo','za','an','el','in','or','us','ch','st','tr','pl','gr',"
             "'ma','ne','po','qu','ri','sa','te','ul','ve','wo','xe','yo','de','fi','gu','ha','je','ko','lu','pe']")


def _pick(array: str, count: int) -> str:
    return "(%s)[1 + floor(random() * %d)::int]" % (array, count)


class TableSpec(typing.NamedTuple):
    """One generated table: its columns, primary key, rows per unit of N, SELECT over g in [lo, hi]."""

    columns: str
    primary_key: str | None
    rows_per_unit: float
    select: str


TABLES = {
    "customers": TableSpec(
        "id bigint NOT NULL, email text NOT NULL, full_name text NOT NULL, country char(2) NOT NULL, "
        "signup_at timestamptz NOT NULL, last_login timestamptz, score double precision, api_token text",
        "id", 1.0,
        "SELECT g, lower(%(first)s) || '.' || lower(%(last)s) || g || '@' || %(domain)s, %(first)s || ' ' || %(last)s, "
        "%(country)s, timestamptz '2019-01-01' + random() * interval '5 years', "
        "CASE WHEN random() < 0.9 THEN timestamptz '2024-01-01' + random() * interval '300 days' END, "
        "round((random() * 1000)::numeric, 4)::float8, md5(random()::text) "
        "FROM generate_series({lo}, {hi}) g" % {
            "first": _pick(FIRST_NAMES, 16), "last": _pick(LAST_NAMES, 12),
            "domain": _pick("ARRAY['example.com','mail.test','corp.example','shop.test']", 4),
            "country": _pick("ARRAY['DE','FR','US','GB','IT','ES','PL','NL','SE','JP','BR','IN']", 12)}),
    "orders": TableSpec(
        "id bigint NOT NULL, customer_id bigint NOT NULL, created_at timestamptz NOT NULL, status text NOT NULL, "
        "currency char(3) NOT NULL, amount numeric(12,2) NOT NULL, tax numeric(10,2) NOT NULL, items int NOT NULL, "
        "shipping_address text, note text",
        "id", 5.0,
        "SELECT g, 1 + floor(random() * {n})::bigint, timestamptz '2022-01-01' + g * interval '13 seconds', "
        "%(status)s, %(currency)s, round((random() * 500)::numeric, 2), round((random() * 80)::numeric, 2), "
        "1 + floor(random() * 9)::int, (100 + floor(random() * 9900)::int)::text || ' ' || %(street)s || ' ' || "
        "%(kind)s || ', ' || %(city)s, 'PAY-' || upper(substr(md5(random()::text), 1, 14)) || "
        "CASE WHEN random() < 0.3 THEN ' ' || %(note)s ELSE '' END "
        "FROM generate_series({lo}, {hi}) g" % {
            "status": _pick("ARRAY['new','paid','shipped','delivered','cancelled','refunded']", 6),
            "currency": _pick("ARRAY['EUR','USD','GBP','JPY']", 4),
            "street": _pick("ARRAY['Main','Oak','Pine','Maple','Cedar','Elm','Lake','Hill','Park','River']", 10),
            "kind": _pick("ARRAY['Street','Avenue','Road','Lane','Way']", 5),
            "city": _pick("ARRAY['Berlin','Paris','Austin','Leeds','Milan','Madrid','Krakow','Utrecht','Malmo','Osaka']",
                          10),
            "note": _pick("ARRAY['leave at the door','gift wrap please','call before delivery','fragile',"
                          "'second attempt']", 5)}),
    "events": TableSpec(
        "id bigint NOT NULL, occurred_at timestamptz NOT NULL, customer_id bigint, kind text NOT NULL, "
        "payload jsonb NOT NULL",
        "id", 3.0,
        "SELECT g, timestamptz '2024-01-01' + g * interval '2 seconds', 1 + floor(random() * {n})::bigint, %(kind)s, "
        "jsonb_build_object('ip', (10 + floor(random() * 200)::int)::text || '.' || floor(random() * 256)::int || '.' "
        "|| floor(random() * 256)::int || '.' || floor(random() * 256)::int, 'ua', %(agent)s, "
        "'session', md5(random()::text), 'trace', substr(md5(random()::text), 1, 24), "
        "'path', '/api/v1/' || %(path)s || '/' || floor(random() * 100000)::int, "
        "'latency_ms', round((random() * random() * 900)::numeric, 1), 'status', %(http)s) "
        "FROM generate_series({lo}, {hi}) g" % {
            "kind": _pick("ARRAY['login','logout','view','search','add_to_cart','checkout','error']", 7),
            "agent": _pick("ARRAY['Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0',"
                           "'Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0',"
                           "'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5) Safari/604.1','curl/8.5.0']", 4),
            "path": _pick("ARRAY['orders','customers','search','cart','items']", 5),
            "http": _pick("ARRAY[200,200,200,201,204,304,400,404,500]", 9)}),
    "metrics": TableSpec(
        "sensor_id int NOT NULL, ts timestamptz NOT NULL, value double precision NOT NULL, quality smallint NOT NULL",
        None, 10.0,
        "SELECT 1 + g % 500, timestamptz '2024-06-01' + (g / 500) * interval '10 seconds' "
        "+ random() * interval '1 second', 20 + 5 * sin(g / 5000.0) + random(), (random() * 3)::int "
        "FROM generate_series({lo}, {hi}) g"),
    "documents": TableSpec(
        "id bigint NOT NULL, title text NOT NULL, body text NOT NULL, digest bytea NOT NULL, updated_at timestamptz NOT NULL",
        "id", 1.0,
        "SELECT g, %(title)s || ' ' || %(kind)s || ' #' || g, "
        "(SELECT string_agg(%(syl)s || %(syl)s || CASE WHEN random() < 0.5 THEN %(syl)s ELSE '' END, ' ') "
        " FROM generate_series(1, 40 + (g %% 120)) k WHERE g > 0), "
        "decode(md5(g::text || random()::text), 'hex'), timestamptz '2024-01-01' + random() * interval '365 days' "
        "FROM generate_series({lo}, {hi}) g" % {
            "title": _pick("ARRAY['Quarterly','Incident','Release','Design','Meeting','Customer']", 6),
            "kind": _pick("ARRAY['report','notes','review','summary','plan']", 5),
            "syl": _pick(SYLLABLES, 40)}),
}


def start_cluster(name: str = "cluster", archive: bool = True) -> Cluster:
    """Start a cached benchmark cluster (initialising it the first time).

    The main cluster archives through the dispatcher (physical rows); the memory
    cluster holds the larger memory-point databases apart, so the physical backups of
    the main cluster are the same ~1 GB for pgsafe and pgBackRest.
    """
    base = os.path.join(BUILD, name)
    os.makedirs(BUILD, exist_ok=True)
    os.chmod(BUILD, 0o755)
    settings = dict(CLUSTER_SETTINGS) if archive else {
        key: value for key, value in CLUSTER_SETTINGS.items() if key not in ("archive_mode", "max_wal_senders")}
    cluster = Cluster(base_dir=base, settings=settings)
    if os.path.exists(os.path.join(cluster.datadir, "PG_VERSION")):
        if os.path.exists(os.path.join(cluster.datadir, "postmaster.pid")):
            # A previous bench run was interrupted and left its own cluster running.
            subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(PG_BIN, "pg_ctl"), "-D", cluster.datadir,
                            "-m", "immediate", "-w", "stop"] if os.geteuid() == 0 else
                           [os.path.join(PG_BIN, "pg_ctl"), "-D", cluster.datadir, "-m", "immediate", "-w", "stop"],
                           capture_output=True, check=False)
        postgres_dir(cluster.socket_dir, 0o755)
        log("reusing the benchmark cluster in %s" % base)
    else:
        log("initialising the benchmark cluster in %s" % base)
        cluster.init()
    if not archive:
        return cluster.start()
    # The archiver starts with the dispatcher in "discard" mode (see physical.Dispatcher).
    from bench.physical import Dispatcher  # pylint: disable=import-outside-toplevel

    Dispatcher.install(cluster)
    cluster.start()
    cluster.psql("ALTER SYSTEM SET archive_command = %s" % quote_literal(Dispatcher.command()))
    cluster.psql("SELECT pg_reload_conf()")
    return cluster


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(cluster: Cluster, dbname: str):
    if psycopg is None:
        raise BenchError("psycopg is not installed in the venv: run `make venv`")
    return psycopg.connect(host=cluster.host, port=cluster.port, user=cluster.user, dbname=dbname, autocommit=True)


def read_meta(cluster: Cluster, dbname: str) -> dict:
    exists = cluster.psql("SELECT 1 FROM pg_database WHERE datname = %s" % quote_literal(dbname))
    if not exists:
        return {}
    has_table = cluster.psql("SELECT to_regclass('public.bench_meta') IS NOT NULL", dbname)
    if has_table != "t":
        return {}
    rows = cluster.psql("SELECT key || '=' || value FROM bench_meta", dbname)
    return dict(line.split("=", 1) for line in rows.splitlines() if "=" in line)


def write_meta(cluster: Cluster, dbname: str, values: dict) -> None:
    with connect(cluster, dbname) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (key text PRIMARY KEY, value text NOT NULL)")
        for key, value in values.items():
            conn.execute("INSERT INTO bench_meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         (key, str(value)))


def ensure_database(cluster: Cluster, dbname: str, size_gb: float, unlogged: bool = False,
                    measure_ratio: bool = False) -> dict:
    """The database ``dbname`` at about ``size_gb`` GB (reused when cached); returns its facts."""
    wanted = {"generator_version": GENERATOR_VERSION, "size_gb": "%g" % size_gb, "unlogged": str(unlogged)}
    meta = read_meta(cluster, dbname)
    if all(meta.get(key) == value for key, value in wanted.items()) and (not measure_ratio or "zstd3_ratio" in meta):
        log("reusing %s (%s GB, generated %s)" % (dbname, meta["size_gb"], meta.get("generated_at", "?")))
        return _facts(cluster, dbname, meta)
    started = time.monotonic()
    units = max(1000, int(size_gb * 1e9 / BYTES_PER_UNIT))
    log("generating %s: about %g GB (N=%d), server-side with generate_series" % (dbname, size_gb, units))
    cluster.psql('DROP DATABASE IF EXISTS "%s"' % dbname)
    cluster.psql('CREATE DATABASE "%s"' % dbname)
    kind = "UNLOGGED TABLE" if unlogged else "TABLE"
    with connect(cluster, dbname) as conn:
        for table, spec in TABLES.items():
            conn.execute("CREATE %s %s (%s)" % (kind, table, spec.columns))
    work = []
    for table, spec in TABLES.items():
        rows = int(units * spec.rows_per_unit)
        step = max(1, int(CHUNK_UNITS * spec.rows_per_unit))
        for low in range(1, rows + 1, step):
            high = min(rows, low + step - 1)
            work.append("INSERT INTO %s %s" % (table, spec.select.format(lo=low, hi=high, n=units)))
    _run_parallel(cluster, dbname, work)
    keys = ["ALTER TABLE %s ADD PRIMARY KEY (%s)" % (table, spec.primary_key) for table, spec in TABLES.items()
            if spec.primary_key]
    _run_parallel(cluster, dbname, keys)
    # Hint bits and visibility map now, so the first measured dump does not pay for them.
    _run_parallel(cluster, dbname, ["VACUUM ANALYZE %s" % table for table in TABLES])
    cluster.psql("CHECKPOINT")
    values = dict(wanted, units=units, generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  generation_seconds=round(time.monotonic() - started, 1))
    if measure_ratio:
        values.update(measure_zstd_ratio(cluster, dbname))
    write_meta(cluster, dbname, values)
    log("generated %s in %.0f s" % (dbname, time.monotonic() - started))
    return _facts(cluster, dbname, read_meta(cluster, dbname))


def _run_parallel(cluster: Cluster, dbname: str, statements: list[str], workers: int = 2) -> None:
    def execute(statement: str) -> None:
        with connect(cluster, dbname) as conn:
            conn.execute(statement)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(execute, statement) for statement in statements]:
            future.result()


def measure_zstd_ratio(cluster: Cluster, dbname: str) -> dict:
    """Size of ``pg_dump -Fc -Z0`` and of its zstd level 3 compression (the dataset's honesty check)."""
    if zstandard is None:
        raise BenchError("zstandard is not installed in the venv: run `make venv`")
    log("measuring the zstd -3 ratio of %s's dump" % dbname)
    dump = subprocess.Popen([os.path.join(PG_BIN, "pg_dump"), "-Fc", "-Z0", "-d", dbname], env=cluster.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    compressor = zstandard.ZstdCompressor(level=3, threads=2)
    raw = stored = 0
    chunker = compressor.chunker(chunk_size=1 << 20)
    for block in iter(lambda: dump.stdout.read(1 << 20), b""):
        raw += len(block)
        stored += sum(len(piece) for piece in chunker.compress(block))
    stored += sum(len(piece) for piece in chunker.finish())
    _output, errors = dump.communicate()
    if dump.returncode != 0:
        raise BenchError("pg_dump of %s failed: %s" % (dbname, errors.decode("utf-8", "replace")[-500:]))
    return {"dump_raw_bytes": raw, "zstd3_bytes": stored, "zstd3_ratio": round(raw / max(stored, 1), 2)}


def _facts(cluster: Cluster, dbname: str, meta: dict) -> dict:
    size = int(cluster.psql("SELECT pg_database_size(%s)" % quote_literal(dbname)))
    tables = cluster.psql("SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace",
                          dbname)
    facts = {"database": dbname, "size_bytes": size, "tables": int(tables)}
    for key in ("generator_version", "size_gb", "units", "generated_at", "generation_seconds", "dump_raw_bytes",
                "zstd3_bytes", "zstd3_ratio", "unlogged"):
        if key in meta:
            facts[key] = meta[key]
    return facts
