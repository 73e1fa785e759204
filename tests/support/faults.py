# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared checks for the fault matrix (tests/functional/test_faults_*.py, docs/faults.md).

Every fault test asserts the same five things, so they live here once:

1. a clear error (asserted in the test itself: what failed, where, the fix);
2. nothing valid before is lost: the previous complete backup still verifies at decrypt level;
3. no partial backup counts: the catalog's complete backups are exactly the ones before;
4. the metrics show it: ``backup_success`` 0, last-success timestamp unchanged;
5. the next run succeeds once the fault is removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.support.cli import ROOT, cli_argv, cli_env

CLUSTER = "main"
PREFIX = "pgsafe"


# ---------------------------------------------------------------------------- settings and the CLI


def base_settings(tmp_path, pg_cluster, repository: dict, encryption: dict, **extra) -> dict:
    """Settings with a metrics textfile directory and state of their own under ``tmp_path``."""
    metrics_dir = os.path.join(str(tmp_path), "metrics")
    os.makedirs(metrics_dir, exist_ok=True)
    settings = {"cluster": CLUSTER, "state_dir": os.path.join(str(tmp_path), "state"),
                "postgres": pg_cluster.conn_spec() if pg_cluster is not None else {},
                "repository": repository, "encryption": encryption,
                "compression": {"algorithm": "zstd", "level": 1, "threads": 0},
                "metrics": {"prefix": PREFIX, "textfile_dir": metrics_dir}}
    settings.update(extra)
    return settings


def context_for(settings: dict, **kwargs):
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context

    return Context.from_settings(settings, **kwargs)


def pgsafe(config: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``pgsafe --config FILE ARGS`` to completion, as a timer or an operator would."""
    return subprocess.run(cli_argv(*args, config=config), capture_output=True, text=True, env=cli_env(),
                          timeout=timeout, cwd=ROOT, check=False)


def start_pgsafe(config: str, *args: str, log_path: str) -> subprocess.Popen:
    """Start ``pgsafe`` in the background (for SIGKILL); stdout goes to ``log_path``, stderr beside it."""
    with open(log_path, "wb") as out, open(log_path + ".stderr", "wb") as err:
        return subprocess.Popen(cli_argv(*args, config=config), stdout=out, stderr=err, env=cli_env(), cwd=ROOT)


def read_text(path) -> str:
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        return handle.read()


def sigkill(process: subprocess.Popen) -> int:
    """SIGKILL exactly this process (not its children: an OOM kill takes one process)."""
    os.kill(process.pid, signal.SIGKILL)
    return process.wait(timeout=30)


def wait_for(predicate, timeout: float, what: str, pause: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


def create_big_database(cluster, name: str = "big", rows: int = 400000, unlogged: bool = True) -> dict:
    """~45 MB of rows: dumping or restoring it takes long enough to be interrupted mid-way.
    Unlogged is quicker to create, but crash recovery (an immediate stop) empties it.
    Returns its exact row counts."""
    cluster.psql('CREATE DATABASE "%s"' % name)
    cluster.psql("CREATE %s TABLE filler AS SELECT g AS id, repeat(md5(g::text), 3) AS payload "
                 "FROM generate_series(1, %d) g" % ("UNLOGGED" if unlogged else "", rows), name)
    return {"public.filler": rows}


def backup_objects(repository_path: str, cluster: str = CLUSTER) -> list[str]:
    """Every file under the backups of a filesystem repository, temporary ones included."""
    found = []
    for directory, _subdirs, files in os.walk(os.path.join(repository_path, cluster, "backups")):
        found.extend(os.path.join(directory, name) for name in files)
    return found


def half_written(repository_path: str, object_stem: str, size: int = 256 * 1024):
    """A predicate: the object is being streamed (its temporary file holds ``size`` bytes or more)."""
    def check():
        return [path for path in backup_objects(repository_path) if ".tmp-%s" % object_stem in path
                and _size(path) >= size]
    return check


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # renamed or removed meanwhile


# ---------------------------------------------------------------------------- catalog and verification


def complete_ids(context) -> list[str]:
    from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups

    return [entry["backup_id"] for entry in list_backups(context.repository, context.cluster)
            if entry["status"] == "complete"]


def statuses(context) -> dict:
    from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups

    return {entry["backup_id"]: entry["status"] for entry in list_backups(context.repository, context.cluster)}


def verify_ids(context, backup_ids, level: str = "decrypt", record: bool = False) -> dict:
    from ansible_collections.pgsafe.backup.plugins.module_utils.verify import verify

    return verify(context, level, list(backup_ids), ("logical",), 25.0, record=record)


def assert_still_verifies(context, backup_id: str) -> None:
    """Nothing valid is lost: the earlier backup decrypts, decompresses and lists as a dump."""
    report = verify_ids(context, [backup_id])
    assert report["ok"], report["summary"]
    assert [backup["backup_id"] for backup in report["backups"]] == [backup_id]


# ---------------------------------------------------------------------------- metrics (textfile collector)


def read_metrics(settings: dict, group: str) -> dict:
    """``{(name, frozenset(labels.items())): value}`` from the group's .prom file, as node_exporter reads it."""
    from prometheus_client.parser import text_string_to_metric_families

    path = os.path.join(settings["metrics"]["textfile_dir"], "%s_%s_%s.prom" % (
        PREFIX, settings.get("cluster") or CLUSTER, group))
    if not os.path.exists(path):
        return {}
    with open(path, "r", encoding="utf-8") as handle:
        text = handle.read()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(settings: dict, group: str, suffix: str, **labels) -> float | None:
    key = ("%s_%s" % (PREFIX, suffix), frozenset(dict({"cluster": settings.get("cluster") or CLUSTER},
                                                      **labels).items()))
    return read_metrics(settings, group).get(key)


def backup_metrics(settings: dict, backup_type: str = "logical") -> dict:
    return {"success": metric(settings, "backup", "backup_success", type=backup_type),
            "last_success": metric(settings, "backup", "backup_last_success_timestamp_seconds", type=backup_type),
            "encryption_failures": metric(settings, "backup", "backup_encryption_failures_total")}


def assert_failure_recorded(settings: dict, before: dict, backup_type: str = "logical") -> dict:
    """The failed run set backup_success to 0 and left the last-success time where it was."""
    after = backup_metrics(settings, backup_type)
    assert after["success"] == 0.0, after
    assert before["last_success"] is not None and after["last_success"] == before["last_success"], (before, after)
    return after


def assert_recovered(settings: dict, before: dict, result: dict, backup_type: str = "logical") -> None:
    """The next run succeeded, and the metrics moved on."""
    after = backup_metrics(settings, backup_type)
    assert result["backup_id"] and after["success"] == 1.0, after
    assert after["last_success"] > before["last_success"], (before, after)
