# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""MetricsSink against a real Pushgateway (Debian's prometheus-pushgateway) over HTTP.

What Prometheus would scrape is read back from the gateway's /metrics and parsed with
prometheus_client's parser: names, labels (including the grouping key) and values.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.pgsafe.backup.plugins.module_utils.metrics import MetricsSink

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory):
    if not os.access(PUSHGATEWAY, os.X_OK):
        pytest.fail("prometheus-pushgateway is missing: apt-get install --no-install-recommends prometheus-pushgateway")
    workdir = tmp_path_factory.mktemp("pushgateway")
    port = _free_port()
    url = "http://127.0.0.1:%d" % port
    log = open(workdir / "pushgateway.log", "wb")
    process = subprocess.Popen([PUSHGATEWAY, "--web.listen-address=127.0.0.1:%d" % port,
                                "--persistence.file=%s" % (workdir / "persistence")],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pushgateway did not start: %s" % (workdir / "pushgateway.log").read_text())
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def scrape(url: str) -> dict:
    """{(name, frozenset(labels)): value} for every pgsafe-looking series on the gateway."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode("utf-8")
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("spendsync_", "pgsafe_")):
                found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def test_push_reaches_the_gateway_with_seed_names_and_grouping_labels(pushgateway, tmp_path):
    metrics = MetricsSink.from_spec({"prefix": "spendsync", "pushgateway_url": pushgateway,
                                     "state_dir": str(tmp_path), "instance": "db01"})
    results = [
        metrics.record_backup("main", "full", True, 1800, 123456789, 1795000000),
        metrics.record_encryption_failure("main"),
        metrics.record_restore("main", "point_in_time", True, 900, is_test=True),
        metrics.record_dr_test("main", "system", 20000, True, False, 30),
        metrics.record_storage("main", "local", 90, 100),
    ]
    assert all(result["pushed"] and not result["warnings"] for result in results), results

    found = scrape(pushgateway)

    def value(name: str, group: str, **labels):
        key = (name, frozenset(dict(labels, cluster="main", job="spendsync", instance="db01", group=group).items()))
        assert key in found, "%s not on the gateway; have %s" % (key, sorted(found))
        return found[key]

    assert value("spendsync_backup_duration_seconds", "backup", type="full") == 1800
    assert value("spendsync_backup_success", "backup", type="full") == 1
    assert value("spendsync_backup_size_bytes", "backup", type="full") == 123456789
    assert value("spendsync_backup_last_success_timestamp_seconds", "backup", type="full") == 1795000000
    assert value("spendsync_backup_encryption_failures_total", "backup") == 1
    assert value("spendsync_restore_success", "restore", type="point_in_time") == 1
    assert value("spendsync_restore_duration_seconds", "restore", type="point_in_time") == 900
    assert value("spendsync_dr_test_recovery_time_seconds", "dr_test", type="system") == 20000
    assert value("spendsync_dr_test_services_ok", "dr_test", type="system") == 1
    assert value("spendsync_dr_test_app_ok", "dr_test", type="system") == 0
    assert value("spendsync_backup_storage_usage_percent", "storage", repository="local") == 90


def test_a_second_run_replaces_values_and_keeps_other_types(pushgateway, tmp_path):
    spec = {"prefix": "pgsafe", "pushgateway_url": pushgateway, "state_dir": str(tmp_path), "instance": "db02"}
    MetricsSink.from_spec(spec).record_backup("other", "logical", True, 60, 10, 1795000000)
    MetricsSink.from_spec(spec).record_backup("other", "full", True, 600, 100, 1795000100)
    # a failed logical run in a third process: success drops, the last success time stays
    result = MetricsSink.from_spec(spec).record_backup("other", "logical", False, 5, 0, None)
    assert result["pushed"], result

    found = scrape(pushgateway)
    grouping = {"cluster": "other", "job": "pgsafe", "instance": "db02", "group": "backup"}

    def key(name: str, **labels):
        return (name, frozenset(dict(grouping, **labels).items()))

    assert found[key("pgsafe_backup_success", type="logical")] == 0
    assert found[key("pgsafe_backup_success", type="full")] == 1
    assert found[key("pgsafe_backup_last_success_timestamp_seconds", type="logical")] == 1795000000
    assert found[key("pgsafe_backup_duration_seconds", type="logical")] == 5


def test_unreachable_gateway_is_a_warning(tmp_path):
    metrics = MetricsSink.from_spec({"pushgateway_url": "http://127.0.0.1:%d" % _free_port(),
                                     "state_dir": str(tmp_path), "timeout": 2})
    result = metrics.record_backup("main", "full", True, 1, 1, None)
    assert result["pushed"] is False
    assert result["warnings"] and "could not push metrics" in result["warnings"][0]
