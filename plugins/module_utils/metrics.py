# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus metrics about backups, restores, verification, WAL archiving and DR tests.

Every run is a new process, so nothing lives in a long-running exporter. Each ``record_*``
call updates a small JSON state file (``<state_dir>/metrics/<prefix>_<cluster>_<group>.json``)
and then publishes the whole group from that state:

* to the node_exporter textfile collector as ``<textfile_dir>/<prefix>_<cluster>_<group>.prom``
  (temp file in the same directory, fsync, rename, mode 0644: node_exporter never reads half a file);
* to a Pushgateway with ``pushadd_to_gateway`` under the grouping key
  ``{job: <job or prefix>, cluster, instance: <host>, group}``.

The state is what lets a counter keep counting across runs, lets the last-success timestamp
survive a failed run, and lets one group file hold every backup type (a ``full`` run must not
erase the ``logical`` series written by another run).

Metrics must never fail a backup: a transport problem (directory not writable, Pushgateway
down) is logged and returned as a warning. A bad configuration is refused early, by
``MetricsSink.from_spec``, with a ConfigError that names the ``metrics.*`` option.

Names are ``<prefix>_<suffix>`` for each suffix in ``METRIC_NAMES``; the prefix ``spendsync``
reproduces the SpendSync dashboards' names exactly (``spendsync_backup_success{type="full"}``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import socket
import tempfile
import time

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, missing_python_package
from ansible_collections.pgsafe.backup.plugins.module_utils.ownership import hand_over_fd, inherited_owner, make_dirs

try:
    import prometheus_client
    from prometheus_client.exposition import generate_latest, pushadd_to_gateway
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry
except ImportError as exc:  # the import sanity test runs without third-party packages
    prometheus_client = None
    PROMETHEUS_IMPORT_ERROR = str(exc)
else:
    PROMETHEUS_IMPORT_ERROR = None

try:
    import fcntl
except ImportError:  # not on POSIX: runs are then not serialised against each other
    fcntl = None

LOG = logging.getLogger("pgsafe")

PREFIX_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
DEFAULT_PREFIX = "pgsafe"
SPEC_KEYS = ("prefix", "textfile_dir", "pushgateway_url", "job", "state_dir", "instance", "timeout")
STATE_VERSION = 1

# suffix -> (Prometheus type, publishing group, help text). The order is the exposition order.
# Help texts are identical for every cluster: node_exporter merges families across .prom files
# and rejects a family whose help differs between files.
FAMILIES = {
    # backup group
    "backup_duration_seconds": ("gauge", "backup", "Duration of the last backup run of this type, in seconds."),
    "backup_success": ("gauge", "backup", "1 if the last backup run of this type succeeded, 0 if it failed."),
    "backup_size_bytes": ("gauge", "backup", "Stored size of the newest successful backup of this type, in bytes."),
    "backup_last_success_timestamp_seconds": (
        "gauge", "backup", "Unix time at which the newest successful backup of this type finished."),
    "backup_encryption_failures_total": ("counter", "backup", "Backups that failed because encryption failed."),
    # restore group
    "restore_duration_seconds": ("gauge", "restore", "Duration of the last restore of this type, in seconds."),
    "restore_success": ("gauge", "restore", "1 if the last restore of this type succeeded, 0 if it failed."),
    "restore_test_last_success_timestamp_seconds": (
        "gauge", "restore", "Unix time of the newest successful restore test of this type."),
    # storage group
    "backup_storage_usage_percent": ("gauge", "storage", "Used share of the repository's capacity, in percent."),
    "backup_storage_used_bytes": ("gauge", "storage", "Bytes the repository holds."),
    "backup_storage_capacity_bytes": ("gauge", "storage", "Capacity of the repository's storage, in bytes."),
    # verify group
    "verify_success": ("gauge", "verify", "1 if the last verification at this level passed, 0 if it failed."),
    "verify_last_run_timestamp_seconds": ("gauge", "verify", "Unix time of the last verification at this level."),
    "verify_failures": ("gauge", "verify", "Failed checks in the last verification at this level."),
    "newest_verified_backup_age_seconds": (
        "gauge", "verify", "Age of the newest verified backup of this type, at the time of verification."),
    "newest_backup_age_seconds": (
        "gauge", "verify", "Age of the newest complete backup of this type, at the time of verification."),
    # wal group
    "wal_archive_lag_seconds": ("gauge", "wal", "Age of the oldest WAL not yet durable in the repository."),
    "wal_archive_lag_bytes": ("gauge", "wal", "WAL bytes written but not yet durable in the repository."),
    "wal_archive_backlog_segments": ("gauge", "wal", "WAL segments waiting to be archived."),
    "wal_archive_last_success_timestamp_seconds": (
        "gauge", "wal", "Unix time at which the newest WAL segment was archived."),
    "wal_archive_failures_total": ("counter", "wal", "Failed WAL archive attempts."),
    # dr_test group
    "dr_test_recovery_time_seconds": ("gauge", "dr_test", "Recovery time measured by the last DR test, in seconds."),
    "dr_test_services_ok": ("gauge", "dr_test", "1 if every service was up after the last DR test."),
    "dr_test_app_ok": ("gauge", "dr_test", "1 if the application health checks passed after the last DR test."),
    "dr_test_data_loss_seconds": ("gauge", "dr_test", "Data loss measured by the last DR test (achieved RPO)."),
    "dr_test_last_run_timestamp_seconds": ("gauge", "dr_test", "Unix time of the last DR test of this type."),
}

# The suffixes the code emits; the consistency test checks every name in the rules and
# dashboards against this list.
METRIC_NAMES = list(FAMILIES)
GROUPS = ("backup", "restore", "storage", "verify", "wal", "dr_test")


def check_prefix(prefix) -> str:
    if not isinstance(prefix, str) or not PREFIX_RE.match(prefix):
        raise ConfigError("metric prefix %r is not a valid Prometheus name" % (prefix,), where="metrics.prefix",
                          fix="use letters, digits and '_', not starting with a digit (e.g. 'pgsafe' or 'spendsync')")
    return prefix


def metric_names(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The full names emitted for ``prefix``."""
    return ["%s_%s" % (check_prefix(prefix), suffix) for suffix in METRIC_NAMES]


def _require_prometheus_client() -> None:
    if prometheus_client is None:
        raise missing_python_package("prometheus-client", PROMETHEUS_IMPORT_ERROR)


class _StaticCollector:
    """Yields ready-made families: the registry then renders them with the library's escaping."""

    def __init__(self, metrics: list):
        self._metrics = metrics

    def collect(self):
        return iter(self._metrics)


def _registry(families) -> "CollectorRegistry":
    _require_prometheus_client()
    metrics = []
    for family in families:
        name = family["name"]
        # A counter family is named without its _total suffix; its sample keeps the full name.
        family_name = name[:-len("_total")] if family["type"] == "counter" and name.endswith("_total") else name
        metric = Metric(family_name, family.get("help") or name, family["type"])
        for labels, value in family["samples"]:
            metric.add_sample(name, {str(key): str(val) for key, val in labels.items()}, float(value))
        if metric.samples:
            metrics.append(metric)
    # A fresh registry per write: the process-global default registry would leak series
    # (and the library's own process metrics) from one call into the next.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StaticCollector(metrics))
    return registry


def render(families) -> str:
    """Text exposition of ``families``: an iterable of dicts with ``name``, ``type`` (gauge or
    counter), ``help`` and ``samples`` (a list of ``(labels dict, value)``). Pure: no I/O."""
    return generate_latest(_registry(families)).decode("utf-8")


def _epoch(value) -> float | None:
    """Unix seconds from a number, a datetime (naive means UTC) or an ISO 8601 string."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a timestamp cannot be a boolean: %r" % (value,))
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    raise ValueError("cannot read a timestamp from %r" % (value,))


def _number(value, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError("metric value %s must be a number, got %r" % (what, value)) from None


def _series_key(labels: dict) -> str:
    return json.dumps(sorted((str(key), str(val)) for key, val in labels.items() if val is not None))


def _safe_file_part(text: str) -> str:
    # Cluster names are already restricted, but a file name must never escape its directory.
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(text)) or "_"


def _write_atomically(path: str, data: bytes, mode: int = 0o644) -> None:
    directory = os.path.dirname(path) or "."
    # The temp name does not end in .prom: node_exporter reads only *.prom, so it never
    # sees a half-written file even before the rename.
    handle, temp_path = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        hand_over_fd(handle, inherited_owner(directory))  # run as root: still the pgsafe user's to replace
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates 0600; node_exporter usually runs as another user.
        os.chmod(temp_path, mode)
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class MetricsSink:
    """Publishes pgsafe metrics to a textfile directory and/or a Pushgateway.

    Every ``record_*`` method returns ``{"group", "textfile", "pushed", "warnings"}`` and never
    raises on a transport failure. Values that are not numbers are caller bugs and raise
    ValueError.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, textfile_dir: str | None = None,
                 pushgateway_url: str | None = None, job: str | None = None, state_dir: str | None = None,
                 instance: str | None = None, timeout: float = 10.0, clock=time.time):
        self.prefix = check_prefix(prefix)
        self.textfile_dir = textfile_dir
        self.pushgateway_url = pushgateway_url
        self.job = job or self.prefix
        self.state_dir = state_dir
        self.instance = instance or socket.gethostname()
        self.timeout = timeout
        self._clock = clock
        # Used only when state_dir is unset or unusable: then series live for this process only.
        self._memory_state: dict = {}

    @classmethod
    def from_spec(cls, spec: dict | None) -> "MetricsSink":
        """Build from the ``metrics`` settings; a configuration mistake raises ConfigError here."""
        spec = dict(spec or {})
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ConfigError("unknown metrics option(s): %s" % ", ".join(unknown), where="metrics.%s" % unknown[0],
                              fix="use only: %s" % ", ".join(SPEC_KEYS))
        prefix = check_prefix(spec.get("prefix") or DEFAULT_PREFIX)
        textfile_dir = spec.get("textfile_dir") or None
        if textfile_dir is not None:
            textfile_dir = str(textfile_dir)
            if not os.path.isabs(textfile_dir):
                raise ConfigError("textfile_dir %r is not an absolute path" % textfile_dir,
                                  where="metrics.textfile_dir",
                                  fix="use node_exporter's --collector.textfile.directory, e.g. "
                                      "/var/lib/prometheus/node-exporter")
            if not os.path.isdir(textfile_dir):
                raise ConfigError("textfile_dir %r does not exist or is not a directory" % textfile_dir,
                                  where="metrics.textfile_dir",
                                  fix="create it (the pgsafe.backup.monitoring role does) or correct the path")
        pushgateway_url = spec.get("pushgateway_url") or None
        if pushgateway_url is not None:
            pushgateway_url = _check_pushgateway_url(str(pushgateway_url))
        job = spec.get("job") or prefix
        if not isinstance(job, str) or "/" in job:
            raise ConfigError("metrics job %r cannot be used in a Pushgateway grouping key" % (job,),
                              where="metrics.job", fix="use a plain name without '/'")
        state_dir = spec.get("state_dir") or None
        if state_dir is not None and not os.path.isabs(str(state_dir)):
            raise ConfigError("state_dir %r is not an absolute path" % state_dir, where="metrics.state_dir",
                              fix="use an absolute path such as /var/lib/pgsafe")
        timeout = spec.get("timeout")
        try:
            timeout = 10.0 if timeout is None else float(timeout)
        except (TypeError, ValueError):
            timeout = -1.0
        if timeout <= 0:
            raise ConfigError("metrics timeout %r is not a positive number of seconds" % (spec.get("timeout"),),
                              where="metrics.timeout", fix="use e.g. 10")
        if textfile_dir or pushgateway_url:
            # Refuse before the backup starts, not after an hour of work.
            _require_prometheus_client()
        else:
            LOG.info("metrics: neither metrics.textfile_dir nor metrics.pushgateway_url is set; "
                     "metrics are kept in the state only")
        return cls(prefix=prefix, textfile_dir=textfile_dir, pushgateway_url=pushgateway_url, job=job,
                   state_dir=str(state_dir) if state_dir else None, instance=spec.get("instance") or None,
                   timeout=timeout)

    # ------------------------------------------------------------------ record_*

    def record_backup(self, cluster: str, type: str, success: bool, duration_seconds: float,  # noqa: A002
                      size_bytes: float | None, finished_at=None, database: str | None = None) -> dict:
        """One backup run. On failure the last-success timestamp (and size) of the previous
        successful run are kept, so ``BackupTooOld`` keeps measuring from the right moment."""
        labels = {"cluster": cluster, "type": type, "database": database}
        duration = _number(duration_seconds, "duration_seconds")
        size = _number(size_bytes, "size_bytes")
        finished = _epoch(finished_at)
        now = self._clock()

        def update(state: dict) -> None:
            _set(state, "backup_duration_seconds", labels, duration)
            _set(state, "backup_success", labels, 1.0 if success else 0.0)
            if success:
                if size is not None:
                    _set(state, "backup_size_bytes", labels, size)
                _set(state, "backup_last_success_timestamp_seconds", labels, finished if finished else now)
            # Exposed from the first run at 0, so rate() sees the first failure as an increase.
            _ensure(state, "backup_encryption_failures_total", {"cluster": cluster}, 0.0)

        return self._publish(cluster, "backup", update)

    def record_encryption_failure(self, cluster: str, count: int = 1) -> dict:
        """Add ``count`` to the persisted encryption-failure counter."""
        increment = _number(count, "count")
        if increment is None or increment < 0:
            raise ValueError("an encryption failure count must be >= 0, got %r" % (count,))

        def update(state: dict) -> None:
            labels = {"cluster": cluster}
            _set(state, "backup_encryption_failures_total", labels,
                 (_get(state, "backup_encryption_failures_total", labels) or 0.0) + increment)

        return self._publish(cluster, "backup", update)

    def record_restore(self, cluster: str, type: str, success: bool, duration_seconds: float,  # noqa: A002
                       is_test: bool = False) -> dict:
        """One restore; a successful restore test also moves the restore-test timestamp."""
        labels = {"cluster": cluster, "type": type}
        duration = _number(duration_seconds, "duration_seconds")
        now = self._clock()

        def update(state: dict) -> None:
            _set(state, "restore_duration_seconds", labels, duration)
            _set(state, "restore_success", labels, 1.0 if success else 0.0)
            if is_test and success:
                _set(state, "restore_test_last_success_timestamp_seconds", labels, now)

        return self._publish(cluster, "restore", update)

    def record_storage(self, cluster: str, repository: str, used_bytes: float,
                       capacity_bytes: float | None) -> dict:
        """Repository usage; the percentage is left out when the capacity is unknown (S3)."""
        labels = {"cluster": cluster, "repository": repository}
        used = _number(used_bytes, "used_bytes")
        capacity = _number(capacity_bytes, "capacity_bytes")
        if capacity is not None and capacity <= 0:
            capacity = None

        def update(state: dict) -> None:
            _set(state, "backup_storage_used_bytes", labels, used)
            _set(state, "backup_storage_capacity_bytes", labels, capacity)
            percent = None if capacity is None or used is None else round(100.0 * used / capacity, 3)
            _set(state, "backup_storage_usage_percent", labels, percent)

        return self._publish(cluster, "storage", update)

    def record_verify(self, cluster: str, type: str, level: str, success: bool, failures,  # noqa: A002
                      newest_verified_age_seconds: float | None, newest_backup_age_seconds: float | None) -> dict:
        """One verification run; ``failures`` is a count or the list of failures."""
        level_labels = {"cluster": cluster, "type": type, "level": level}
        type_labels = {"cluster": cluster, "type": type}
        failure_count = len(failures) if isinstance(failures, (list, tuple)) else _number(failures or 0, "failures")
        verified_age = _number(newest_verified_age_seconds, "newest_verified_age_seconds")
        backup_age = _number(newest_backup_age_seconds, "newest_backup_age_seconds")
        now = self._clock()

        def update(state: dict) -> None:
            _set(state, "verify_success", level_labels, 1.0 if success else 0.0)
            _set(state, "verify_last_run_timestamp_seconds", level_labels, now)
            _set(state, "verify_failures", level_labels, failure_count)
            # An unknown age removes the old one: a stale age would look fresher than it is.
            _set(state, "newest_verified_backup_age_seconds", type_labels, verified_age)
            _set(state, "newest_backup_age_seconds", type_labels, backup_age)

        return self._publish(cluster, "verify", update)

    def record_wal(self, cluster: str, lag_seconds: float | None, lag_bytes: float | None,
                   backlog_segments: float | None, last_success=None, failures_total: float | None = None) -> dict:
        """WAL archiving state. ``last_success`` None keeps the previous timestamp;
        ``failures_total`` None keeps the previous counter value."""
        labels = {"cluster": cluster}
        lag = _number(lag_seconds, "lag_seconds")
        lag_b = _number(lag_bytes, "lag_bytes")
        backlog = _number(backlog_segments, "backlog_segments")
        last = _epoch(last_success)
        failures = _number(failures_total, "failures_total")

        def update(state: dict) -> None:
            _set(state, "wal_archive_lag_seconds", labels, lag)
            _set(state, "wal_archive_lag_bytes", labels, lag_b)
            _set(state, "wal_archive_backlog_segments", labels, backlog)
            if last is not None:
                _set(state, "wal_archive_last_success_timestamp_seconds", labels, last)
            if failures is not None:
                _set(state, "wal_archive_failures_total", labels, failures)
            else:
                _ensure(state, "wal_archive_failures_total", labels, 0.0)

        return self._publish(cluster, "wal", update)

    def record_dr_test(self, cluster: str, type: str, recovery_time_seconds: float, services_ok: bool,  # noqa: A002
                       app_ok: bool, data_loss_seconds: float | None = None) -> dict:
        """One DR test (type database, application or system)."""
        labels = {"cluster": cluster, "type": type}
        recovery = _number(recovery_time_seconds, "recovery_time_seconds")
        data_loss = _number(data_loss_seconds, "data_loss_seconds")
        now = self._clock()

        def update(state: dict) -> None:
            _set(state, "dr_test_recovery_time_seconds", labels, recovery)
            _set(state, "dr_test_services_ok", labels, 1.0 if services_ok else 0.0)
            _set(state, "dr_test_app_ok", labels, 1.0 if app_ok else 0.0)
            _set(state, "dr_test_data_loss_seconds", labels, data_loss)
            _set(state, "dr_test_last_run_timestamp_seconds", labels, now)

        return self._publish(cluster, "dr_test", update)

    # ------------------------------------------------------------------ plumbing

    def textfile_path(self, cluster: str, group: str) -> str | None:
        if not self.textfile_dir:
            return None
        return os.path.join(self.textfile_dir, self._file_stem(cluster, group) + ".prom")

    def state_path(self, cluster: str, group: str) -> str | None:
        if not self.state_dir:
            return None
        return os.path.join(self.state_dir, "metrics", self._file_stem(cluster, group) + ".json")

    def families(self, state: dict, group: str) -> list[dict]:
        """The group's families from a state dict, in METRIC_NAMES order."""
        result = []
        for suffix in METRIC_NAMES:
            kind, family_group, help_text = FAMILIES[suffix]
            if family_group != group:
                continue
            series = state.get("series", {}).get(suffix) or {}
            samples = [(dict(json.loads(key)), value) for key, value in sorted(series.items())]
            if samples:
                result.append({"name": "%s_%s" % (self.prefix, suffix), "type": kind, "help": help_text,
                               "samples": samples})
        return result

    def _file_stem(self, cluster: str, group: str) -> str:
        return "%s_%s_%s" % (self.prefix, _safe_file_part(cluster), group)

    def _publish(self, cluster: str, group: str, update) -> dict:
        result = {"group": group, "textfile": None, "pushed": False, "warnings": []}
        with self._state(cluster, group, result["warnings"]) as state:
            update(state)
            families = self.families(state, group)
            # Written while the state is locked: two runs cannot publish in the wrong order.
            if self.textfile_dir or self.pushgateway_url:
                try:
                    registry = _registry(families)
                except Exception as exc:  # noqa: BLE001 -- metrics never fail a backup
                    self._warn(result, "could not render metrics for %s/%s: %s" % (cluster, group, exc))
                    return result
                if self.textfile_dir:
                    self._write_textfile(cluster, group, registry, result)
                if self.pushgateway_url:
                    self._push(cluster, group, registry, result)
        return result

    def _write_textfile(self, cluster: str, group: str, registry, result: dict) -> None:
        path = self.textfile_path(cluster, group)
        try:
            _write_atomically(path, generate_latest(registry))
            result["textfile"] = path
        except Exception as exc:  # noqa: BLE001 -- metrics never fail a backup
            self._warn(result, "could not write metrics file %s: %s" % (path, exc))

    def _push(self, cluster: str, group: str, registry, result: dict) -> None:
        grouping_key = {"cluster": cluster, "instance": self.instance, "group": group}
        try:
            # pushadd (POST) replaces only the families we send within this group, and we send
            # the whole group from the state, so nothing another run pushed is lost.
            pushadd_to_gateway(self.pushgateway_url, job=self.job, registry=registry, grouping_key=grouping_key,
                               timeout=self.timeout)
            result["pushed"] = True
        except Exception as exc:  # noqa: BLE001 -- metrics never fail a backup
            self._warn(result, "could not push metrics to %s: %s" % (self.pushgateway_url, exc))

    @staticmethod
    def _warn(result: dict, message: str) -> None:
        LOG.warning("metrics: %s", message)
        result["warnings"].append(message)

    @contextlib.contextmanager
    def _state(self, cluster: str, group: str, warnings: list):
        """Yield the group's state, locked and loaded; saved atomically afterwards."""
        path = self.state_path(cluster, group)
        if path is None:
            yield self._memory_state.setdefault((cluster, group), _empty_state())
            return
        lock_stream = None
        unusable = None
        try:
            make_dirs(os.path.dirname(path), 0o750)
            lock_stream = open(path + ".lock", "a")
            hand_over_fd(lock_stream.fileno(), inherited_owner(os.path.dirname(path)))
            if fcntl is not None:
                fcntl.flock(lock_stream.fileno(), fcntl.LOCK_EX)
        except OSError as exc:
            if lock_stream is not None:
                lock_stream.close()
            unusable = exc
        if unusable is not None:
            message = "state directory %s is not usable (%s): counters and last-success times are kept " \
                      "for this process only" % (os.path.dirname(path), unusable)
            LOG.warning("metrics: %s", message)
            warnings.append(message)
            yield self._memory_state.setdefault((cluster, group), _empty_state())
            return
        try:
            state = _load_state(path, warnings)
            yield state
            try:
                _write_atomically(path, json.dumps(state, sort_keys=True, indent=1).encode("utf-8"), mode=0o640)
            except OSError as exc:
                message = "could not save metrics state %s: %s" % (path, exc)
                LOG.warning("metrics: %s", message)
                warnings.append(message)
        finally:
            lock_stream.close()


def _check_pushgateway_url(url: str) -> str:
    from urllib.parse import urlsplit

    # prometheus_client itself accepts "host:port" and adds http://; check the same shape.
    candidate = url if "://" in url else "http://" + url
    parts = urlsplit(candidate)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or any(c.isspace() for c in url):
        raise ConfigError("metrics.pushgateway_url %r is not an http(s) URL" % url, where="metrics.pushgateway_url",
                          fix="use e.g. http://pushgateway.example.com:9091")
    return url


def _empty_state() -> dict:
    return {"version": STATE_VERSION, "series": {}}


def _load_state(path: str, warnings: list) -> dict:
    try:
        with open(path, encoding="utf-8") as stream:
            state = json.load(stream)
    except FileNotFoundError:
        return _empty_state()
    except (OSError, ValueError) as exc:
        # A corrupt state file must not stop metrics; it costs only the persisted counters.
        message = "metrics state %s is unreadable (%s); starting it afresh" % (path, exc)
        LOG.warning("metrics: %s", message)
        warnings.append(message)
        return _empty_state()
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or \
            not isinstance(state.get("series"), dict):
        return _empty_state()
    return state


def _get(state: dict, suffix: str, labels: dict) -> float | None:
    return state["series"].get(suffix, {}).get(_series_key(labels))


def _set(state: dict, suffix: str, labels: dict, value: float | None) -> None:
    """Set a series; None removes it (an unknown value is not shown as a stale one)."""
    series = state["series"].setdefault(suffix, {})
    key = _series_key(labels)
    if value is None:
        series.pop(key, None)
    else:
        series[key] = float(value)
    if not series:
        state["series"].pop(suffix, None)


def _ensure(state: dict, suffix: str, labels: dict, value: float) -> None:
    if _get(state, suffix, labels) is None:
        _set(state, suffix, labels, value)
