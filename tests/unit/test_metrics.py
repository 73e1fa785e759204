# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""MetricsSink textfile output, persisted state, configuration checks, and the consistency
between the names the code emits and the names the alert rules and dashboards query.

Textfile output is read back with prometheus_client's own parser, the way node_exporter and
Prometheus would read it, never by comparing strings with the code's renderer.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError
from ansible_collections.pgsafe.backup.plugins.module_utils.metrics import METRIC_NAMES, MetricsSink, render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T0 = 1795000000.0  # a fixed "now" for the sink's clock

# The seed (SpendSync "Monitoring and Alerts") names, exactly as its dashboards and alerts query them.
SEED_NAMES = [
    "spendsync_backup_duration_seconds",
    "spendsync_backup_success",
    "spendsync_backup_size_bytes",
    "spendsync_restore_duration_seconds",
    "spendsync_restore_success",
    "spendsync_dr_test_recovery_time_seconds",
    "spendsync_dr_test_services_ok",
    "spendsync_dr_test_app_ok",
    "spendsync_backup_storage_usage_percent",
    "spendsync_backup_encryption_failures_total",
]


def samples_of(path: str) -> dict:
    """{(sample name, frozenset(labels)): value} parsed from a textfile."""
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def sink(tmp_path, prefix: str = "spendsync", now: float = T0, **spec) -> MetricsSink:
    textfile_dir = tmp_path / "textfile"
    state_dir = tmp_path / "state"
    textfile_dir.mkdir(exist_ok=True)
    state_dir.mkdir(exist_ok=True)
    made = MetricsSink.from_spec(dict({"prefix": prefix, "textfile_dir": str(textfile_dir),
                                       "state_dir": str(state_dir)}, **spec))
    made._clock = lambda: now  # pylint: disable=protected-access
    return made


def labels(**items) -> frozenset:
    return frozenset(items.items())


def test_seed_names_are_reproduced_for_prefix_spendsync(tmp_path):
    metrics = sink(tmp_path)
    metrics.record_backup("main", "full", True, 1234.5, 987654321, T0 - 10)
    metrics.record_encryption_failure("main")
    metrics.record_restore("main", "point_in_time", True, 321.0)
    metrics.record_storage("main", "local", 850, 1000)
    metrics.record_dr_test("main", "database", 3600, True, False, 12)

    found = {}
    for group in ("backup", "restore", "storage", "dr_test"):
        found.update(samples_of(str(tmp_path / "textfile" / ("spendsync_main_%s.prom" % group))))
    names = {name for name, unused_labels in found}
    assert set(SEED_NAMES) <= names, set(SEED_NAMES) - names

    full = labels(cluster="main", type="full")
    assert found[("spendsync_backup_duration_seconds", full)] == 1234.5
    assert found[("spendsync_backup_success", full)] == 1.0
    assert found[("spendsync_backup_size_bytes", full)] == 987654321
    assert found[("spendsync_backup_last_success_timestamp_seconds", full)] == T0 - 10
    assert found[("spendsync_backup_encryption_failures_total", labels(cluster="main"))] == 1.0
    assert found[("spendsync_restore_success", labels(cluster="main", type="point_in_time"))] == 1.0
    assert found[("spendsync_backup_storage_usage_percent", labels(cluster="main", repository="local"))] == 85.0
    database = labels(cluster="main", type="database")
    assert found[("spendsync_dr_test_recovery_time_seconds", database)] == 3600
    assert found[("spendsync_dr_test_services_ok", database)] == 1.0
    assert found[("spendsync_dr_test_app_ok", database)] == 0.0
    assert found[("spendsync_dr_test_data_loss_seconds", database)] == 12
    assert found[("spendsync_dr_test_last_run_timestamp_seconds", database)] == T0


def test_default_prefix_is_pgsafe(tmp_path):
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    metrics = MetricsSink.from_spec({"textfile_dir": str(textfile_dir), "state_dir": str(tmp_path)})
    result = metrics.record_backup("main", "logical", True, 1, 2, T0)
    assert result["textfile"] == str(textfile_dir / "pgsafe_main_backup.prom")
    assert ("pgsafe_backup_success", labels(cluster="main", type="logical")) in samples_of(result["textfile"])


def test_last_success_timestamp_survives_a_failed_run_in_a_new_process(tmp_path):
    sink(tmp_path, now=T0).record_backup("main", "full", True, 60, 1000, None)
    # A new sink is a new run: only the state directory connects them.
    result = sink(tmp_path, now=T0 + 86400).record_backup("main", "full", False, 5, 0, None)
    found = samples_of(result["textfile"])
    full = labels(cluster="main", type="full")
    assert found[("spendsync_backup_success", full)] == 0.0
    assert found[("spendsync_backup_duration_seconds", full)] == 5
    assert found[("spendsync_backup_last_success_timestamp_seconds", full)] == T0
    # the size shown is still that of the newest successful backup
    assert found[("spendsync_backup_size_bytes", full)] == 1000


def test_types_and_databases_accumulate_in_one_group_file(tmp_path):
    sink(tmp_path).record_backup("main", "full", True, 1, 10, T0)
    result = sink(tmp_path).record_backup("main", "logical", True, 2, 20, T0, database="app")
    found = samples_of(result["textfile"])
    assert found[("spendsync_backup_size_bytes", labels(cluster="main", type="full"))] == 10
    assert found[("spendsync_backup_size_bytes", labels(cluster="main", type="logical", database="app"))] == 20


def test_encryption_counter_persists_and_increases_across_sinks(tmp_path):
    first = sink(tmp_path).record_backup("main", "full", True, 1, 1, T0)
    key = ("spendsync_backup_encryption_failures_total", labels(cluster="main"))
    # present at 0 from the first run, so rate() sees the first failure as an increase
    assert samples_of(first["textfile"])[key] == 0.0
    sink(tmp_path).record_encryption_failure("main")
    result = sink(tmp_path).record_encryption_failure("main", count=2)
    assert samples_of(result["textfile"])[key] == 3.0
    # a later successful backup does not reset it
    result = sink(tmp_path).record_backup("main", "full", True, 1, 1, T0)
    assert samples_of(result["textfile"])[key] == 3.0
    # the family is a counter, as rate() expects
    with open(result["textfile"], encoding="utf-8") as stream:
        text = stream.read()
    assert "# TYPE spendsync_backup_encryption_failures_total counter" in text


def test_textfile_is_written_atomically_with_mode_0644(tmp_path):
    old_umask = os.umask(0o077)  # a strict umask must not make the file unreadable to node_exporter
    try:
        result = sink(tmp_path).record_backup("main", "full", True, 1, 1, T0)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(result["textfile"]).st_mode) == 0o644
    # no temp file left behind, and only *.prom files for node_exporter to read
    assert sorted(os.listdir(tmp_path / "textfile")) == ["spendsync_main_backup.prom"]


def test_storage_percent_is_omitted_when_capacity_is_unknown(tmp_path):
    sink(tmp_path).record_storage("main", "s3", 100, 1000)
    result = sink(tmp_path).record_storage("main", "s3", 200, None)
    found = samples_of(result["textfile"])
    s3 = labels(cluster="main", repository="s3")
    assert found[("spendsync_backup_storage_used_bytes", s3)] == 200
    assert ("spendsync_backup_storage_usage_percent", s3) not in found
    assert ("spendsync_backup_storage_capacity_bytes", s3) not in found


def test_restore_test_timestamp_moves_only_on_successful_tests(tmp_path):
    key = ("spendsync_restore_test_last_success_timestamp_seconds", labels(cluster="main", type="logical"))
    result = sink(tmp_path, now=T0).record_restore("main", "logical", True, 10)
    assert key not in samples_of(result["textfile"])
    sink(tmp_path, now=T0 + 1).record_restore("main", "logical", True, 10, is_test=True)
    result = sink(tmp_path, now=T0 + 2).record_restore("main", "logical", False, 10, is_test=True)
    found = samples_of(result["textfile"])
    assert found[key] == T0 + 1
    assert found[("spendsync_restore_success", labels(cluster="main", type="logical"))] == 0.0


def test_verify_and_wal_series(tmp_path):
    metrics = sink(tmp_path)
    verify = metrics.record_verify("main", "logical", "decrypt", False, [{"check": "sha256"}], None, 3600)
    found = samples_of(verify["textfile"])
    level = labels(cluster="main", type="logical", level="decrypt")
    assert found[("spendsync_verify_success", level)] == 0.0
    assert found[("spendsync_verify_failures", level)] == 1.0
    assert found[("spendsync_verify_last_run_timestamp_seconds", level)] == T0
    assert found[("spendsync_newest_backup_age_seconds", labels(cluster="main", type="logical"))] == 3600
    assert ("spendsync_newest_verified_backup_age_seconds", labels(cluster="main", type="logical")) not in found

    metrics.record_wal("main", 12.5, 16777216, 1, T0 - 12, 4)
    wal = metrics.record_wal("main", 0, 0, 0, None, None)  # unknown: keep timestamp and counter
    found = samples_of(wal["textfile"])
    main = labels(cluster="main")
    assert found[("spendsync_wal_archive_lag_seconds", main)] == 0
    assert found[("spendsync_wal_archive_last_success_timestamp_seconds", main)] == T0 - 12
    assert found[("spendsync_wal_archive_failures_total", main)] == 4


def test_every_family_is_emitted_by_some_record_call(tmp_path):
    metrics = sink(tmp_path)
    metrics.record_backup("main", "full", True, 1, 1, T0)
    metrics.record_restore("main", "full", True, 1, is_test=True)
    metrics.record_storage("main", "local", 1, 2)
    metrics.record_verify("main", "full", "integrity", True, 0, 5, 5)
    metrics.record_wal("main", 1, 1, 1, T0, 0)
    metrics.record_dr_test("main", "system", 1, True, True, 0)
    emitted = set()
    for name in os.listdir(tmp_path / "textfile"):
        emitted.update(sample for sample, unused_labels in samples_of(str(tmp_path / "textfile" / name)))
    assert emitted == {"spendsync_" + suffix for suffix in METRIC_NAMES}


def test_transport_failure_is_a_warning_not_an_exception(tmp_path):
    metrics = sink(tmp_path, pushgateway_url="http://127.0.0.1:9", timeout=2)
    os.chmod(tmp_path / "textfile", 0o755)
    # the textfile directory disappears after the configuration was checked
    os.rename(tmp_path / "textfile", tmp_path / "gone")
    result = metrics.record_backup("main", "full", True, 1, 1, T0)
    assert result["textfile"] is None and result["pushed"] is False
    assert len(result["warnings"]) == 2
    assert any("could not push metrics" in warning for warning in result["warnings"])


def test_unusable_state_directory_degrades_to_process_memory(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    metrics = sink(tmp_path, state_dir=str(blocker / "state"))
    result = metrics.record_encryption_failure("main")
    metrics.record_encryption_failure("main")
    assert any("state directory" in warning for warning in result["warnings"])
    found = samples_of(str(tmp_path / "textfile" / "spendsync_main_backup.prom"))
    assert found[("spendsync_backup_encryption_failures_total", labels(cluster="main"))] == 2.0


def test_corrupt_state_file_is_replaced(tmp_path):
    metrics = sink(tmp_path)
    metrics.record_encryption_failure("main")
    path = metrics.state_path("main", "backup")
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("{not json")
    result = metrics.record_encryption_failure("main")
    assert any("unreadable" in warning for warning in result["warnings"])
    with open(path, encoding="utf-8") as stream:
        assert json.load(stream)["version"] == 1


@pytest.mark.parametrize("spec, where", [
    ({"prefix": "9lives"}, "metrics.prefix"),
    ({"prefix": "spend-sync"}, "metrics.prefix"),
    ({"prefix": "spendsync total"}, "metrics.prefix"),
    ({"textfile_dir": "relative/dir"}, "metrics.textfile_dir"),
    ({"textfile_dir": "/nonexistent/pgsafe/textfile"}, "metrics.textfile_dir"),
    ({"pushgateway_url": "ftp://gateway:9091"}, "metrics.pushgateway_url"),
    ({"pushgateway_url": "http://gateway:99999"}, "metrics.pushgateway_url"),
    ({"state_dir": "var/lib/pgsafe"}, "metrics.state_dir"),
    ({"timeout": 0}, "metrics.timeout"),
    ({"job": "a/b"}, "metrics.job"),
    ({"prefx": "pgsafe"}, "metrics.prefx"),
])
def test_bad_configuration_raises_config_error_naming_the_option(spec, where):
    with pytest.raises(ConfigError) as caught:
        MetricsSink.from_spec(spec)
    assert caught.value.where == where


@pytest.mark.parametrize("url", ["http://127.0.0.1:9091", "https://gw.example.com", "gw.example.com:9091"])
def test_good_pushgateway_urls_are_accepted(url):
    assert MetricsSink.from_spec({"pushgateway_url": url}).pushgateway_url == url


def test_render_is_pure_and_parseable():
    text = render([
        {"name": "x_ok", "type": "gauge", "help": "h", "samples": [({"cluster": 'a"b\\c'}, 1)]},
        {"name": "x_errors_total", "type": "counter", "help": "h", "samples": [({"cluster": "a"}, 2)]},
        {"name": "x_empty", "type": "gauge", "help": "h", "samples": []},
    ])
    parsed = {sample.name: sample for family in text_string_to_metric_families(text) for sample in family.samples}
    assert parsed["x_ok"].labels == {"cluster": 'a"b\\c'}
    assert parsed["x_errors_total"].value == 2
    assert "x_empty" not in text


def _render(prefix: str, tmp_path) -> str:
    outdir = tmp_path / prefix
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "render_monitoring.py"), prefix, str(outdir)],
                   check=True, capture_output=True)
    return str(outdir)


def _expressions(outdir: str) -> list[str]:
    """Every PromQL expression in the rendered rules and dashboards (targets and variables)."""
    with open(os.path.join(outdir, "alerts.rules.yml"), encoding="utf-8") as stream:
        rules = yaml.safe_load(stream)
    found = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    for name in os.listdir(os.path.join(outdir, "dashboards")):
        with open(os.path.join(outdir, "dashboards", name), encoding="utf-8") as stream:
            dashboard = json.load(stream)
        found += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
        found += [item["definition"] for item in dashboard["templating"]["list"] if item.get("definition")]
    return found


@pytest.mark.parametrize("prefix", ["spendsync", "pgsafe"])
def test_rules_and_dashboards_use_only_emitted_metric_names(prefix, tmp_path):
    outdir = _render(prefix, tmp_path)
    used = set()
    for expr in _expressions(outdir):
        used.update(re.findall(r"\b%s_([a-z_]+)" % prefix, expr))
    assert len(used) >= 15, "too few metric names found: the regex or the rendering is broken: %s" % used
    assert used <= set(METRIC_NAMES), sorted(used - set(METRIC_NAMES))
    with open(os.path.join(outdir, "alerts.rules.yml"), encoding="utf-8") as stream:
        alerts = {rule["alert"] for group in yaml.safe_load(stream)["groups"] for rule in group["rules"]}
    assert alerts == {"BackupFailure", "RTOBreach", "BackupStorageCapacity", "LongBackupDuration", "EncryptionFailure",
                      "BackupTooOld", "WALArchiveLag", "WALArchiveFailing", "RestoreTestOverdue", "VerifyFailed"}


def test_dashboards_are_grafana_json_with_a_prometheus_datasource_variable(tmp_path):
    _render("spendsync", tmp_path)
    names = sorted(os.listdir(tmp_path / "spendsync" / "dashboards"))
    assert names == ["backup-overview.json", "dr-testing.json", "restore-operations.json"]
    for name in names:
        with open(tmp_path / "spendsync" / "dashboards" / name, encoding="utf-8") as stream:
            dashboard = json.load(stream)
        variables = {item["name"]: item for item in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dashboard["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and all(target["expr"] for target in panel["targets"])
            # Grafana's legend templates must survive Jinja unrendered
            for target in panel["targets"]:
                assert "{% raw %}" not in target["legendFormat"]
