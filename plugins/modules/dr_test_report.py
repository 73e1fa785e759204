#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module dr_test_report: measure a DR test against its RTO/RPO targets, report it, export its metrics."""

from __future__ import annotations

DOCUMENTATION = r"""
module: dr_test_report
short_description: Measure a disaster-recovery test against its RTO and RPO, render its report, export its metrics
version_added: 0.1.0
description:
  - Turns the timeline a DR test recorded (the M(pgsafe.backup.dr_test) role records one) into the runbooks'
    measurements and publishes the seeds' DR metrics.
  - Recovery time (achieved RTO) runs from O(recovery_started_at) to O(healthy_at). A test that never became
    healthy has no recovery time (its series is removed rather than showing a number that understates the outage).
  - Data loss (achieved RPO) runs from O(restored_point), the newest point the restored data holds, to
    O(incident_time), or to O(started_at) when no incident time is given.
  - Publishes C(<prefix>_dr_test_recovery_time_seconds), C(<prefix>_dr_test_services_ok),
    C(<prefix>_dr_test_app_ok), C(<prefix>_dr_test_data_loss_seconds) and
    C(<prefix>_dr_test_last_run_timestamp_seconds), labelled with C(cluster) and C(type), to the node_exporter
    textfile directory and/or the Pushgateway of O(metrics).
  - Returns the report as data (RV(report)) and as Markdown (RV(markdown)); the role writes both files.
options:
  run_id:
    description: Identifier of this DR test run (the role uses the UTC start time and the type).
    type: str
    required: true
  type:
    description: What the test recovered - the label C(type) of the metrics.
    type: str
    choices: [database, application, system]
    required: true
  started_at:
    description: When the test started (ISO 8601, naive means UTC; or Unix seconds).
    type: str
    required: true
  recovery_started_at:
    description: When the restore started. Defaults to O(started_at).
    type: str
  healthy_at:
    description: When the last health check passed; unset when the test never became healthy.
    type: str
  restored_point:
    description: The newest point in time the restored data holds.
    type: str
  restored_point_source:
    description: Where O(restored_point) comes from, for the report (for example C(logical backup start (dump snapshot))).
    type: str
    default: ""
  incident_time:
    description: The simulated incident; data loss is measured up to it. Unset measures up to O(started_at).
    type: str
  steps:
    description: The timeline - each step a dict with C(name), C(started_at), C(finished_at), C(ok) and C(detail).
    type: list
    elements: dict
    default: []
  services:
    description: One dict per service checked, with C(name), C(ok) and C(detail).
    type: list
    elements: dict
    default: []
  app:
    description: The application health check - C(url), C(ok), C(status) and C(detail).
    type: dict
    default: {}
  probes:
    description: One dict per SQL probe, with C(sql), C(ok) and C(value).
    type: list
    elements: dict
    default: []
  backup:
    description: The backup restored (C(backup_id), C(type), C(started_at), C(finished_at)), for the report.
    type: dict
    default: {}
  target:
    description: The isolated target restored into (scratch database, scratch cluster port, directory), for the
      report.
    type: dict
    default: {}
  failure:
    description: Why the test failed (the failed step and its message); empty when it did not.
    type: str
    default: ""
  cleanup:
    description: Whether the isolated target was removed - C(ok) and what was done or left.
    type: dict
    default: {}
  rto_target_seconds:
    description: Recovery time objective; the seeds' is four hours. V(0) means none.
    type: float
    default: 14400
  rpo_target_seconds:
    description: Recovery point objective (maximum data loss). V(0) means none.
    type: float
    default: 0
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.attributes
attributes:
  check_mode:
    support: full
    details: Computes the report and publishes no metrics.
  diff_mode:
    support: none
    details: The metrics written are the result; there is no previous state worth showing.
  idempotent:
    support: none
    details: Every run publishes the measurements again (and moves the last-run timestamp), and reports changed
      when metrics were written to a textfile or a Pushgateway.
notes:
  - Only O(cluster), O(state_dir) and O(metrics) of the common options are used; no repository is opened.
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: Measure and export a database DR test
  pgsafe.backup.dr_test_report:
    run_id: 20261201T090000Z-database
    type: database
    started_at: "2026-12-01T09:00:00Z"
    recovery_started_at: "2026-12-01T09:00:01Z"
    healthy_at: "2026-12-01T09:12:31Z"
    restored_point: "2026-12-01T01:00:04Z"
    restored_point_source: logical backup start (dump snapshot)
    services: [{name: database, ok: true, detail: accepts connections}]
    probes: [{sql: "SELECT count(*) > 0 FROM users", ok: true, value: "t"}]
    rto_target_seconds: 14400
    rpo_target_seconds: 86400
    metrics:
      prefix: spendsync
      textfile_dir: /var/lib/prometheus/node-exporter
  register: dr

- name: Fail when an objective was missed
  ansible.builtin.assert:
    that: dr.report.targets_met
"""

RETURN = r"""
report:
  description:
    - The whole report - C(passed) (the recovery worked), C(targets_met), C(ok) (both, and the cleanup),
      C(recovery_time_seconds), C(data_loss_seconds), C(rto) and C(rpo) (target, measured, met, note),
      C(services_ok), C(app_ok), the checks, the backup, the target, the cleanup and the C(timeline) (each
      step's start, offset, duration and outcome).
  returned: success
  type: dict
markdown:
  description: The report for people (verdict, objectives, timeline, checks).
  returned: success
  type: str
metrics:
  description: Where the metrics went - C(textfile) (the file written), C(pushed) and C(warnings).
  returned: success, when O(metrics) is set and not in check mode
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils import dr_test
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.manifest import check_cluster_name
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import module_argument_spec


def main():
    argument_spec = module_argument_spec(
        run_id={"type": "str", "required": True},
        type={"type": "str", "choices": list(dr_test.TYPES), "required": True},
        started_at={"type": "str", "required": True},
        recovery_started_at={"type": "str"},
        healthy_at={"type": "str"},
        restored_point={"type": "str"},
        restored_point_source={"type": "str", "default": ""},
        incident_time={"type": "str"},
        steps={"type": "list", "elements": "dict", "default": []},
        services={"type": "list", "elements": "dict", "default": []},
        app={"type": "dict", "default": {}},
        probes={"type": "list", "elements": "dict", "default": []},
        backup={"type": "dict", "default": {}},
        target={"type": "dict", "default": {}},
        failure={"type": "str", "default": ""},
        cleanup={"type": "dict", "default": {}},
        rto_target_seconds={"type": "float", "default": 14400.0},
        rpo_target_seconds={"type": "float", "default": 0.0},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        cluster = check_cluster_name(params["cluster"])
        report = dr_test.build_report(
            params["run_id"], params["type"], cluster, os.uname()[1], params["started_at"], params["steps"],
            params["recovery_started_at"] or params["started_at"], params["healthy_at"], params["restored_point"],
            params["restored_point_source"], params["incident_time"], params["services"], params["app"],
            params["probes"], params["backup"], params["failure"], params["cleanup"], params["rto_target_seconds"],
            params["rpo_target_seconds"], params["target"])
    except ValueError as exc:
        module.fail_json(msg="cannot measure the DR test: %s" % exc)
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    result = {"changed": False, "report": report, "markdown": dr_test.render_markdown(report)}
    metrics_spec = {key: value for key, value in (params["metrics"] or {}).items() if value is not None}
    if metrics_spec and not module.check_mode:
        from ansible_collections.pgsafe.backup.plugins.module_utils.metrics import MetricsSink

        try:
            metrics_spec.setdefault("state_dir", params["state_dir"])
            sink = MetricsSink.from_spec(metrics_spec)
        except PgsafeError as exc:
            module.fail_json(msg=exc.message, error=exc.to_dict(), report=report)
        published = dr_test.publish(sink, report)
        result["metrics"] = published
        result["changed"] = bool(published and (published.get("textfile") or published.get("pushed")))
        for warning in (published or {}).get("warnings", []):
            module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
