#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module backup_trends: duration and size trends, failure patterns, storage and cost (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_trends
short_description: Backup duration and size trends, failure patterns, storage used and cost estimate
version_added: 0.1.0
description:
  - The runbooks' weekly review for one cluster, from the repository itself (manifests, verification records,
    listings), over the last O(weeks) weeks.
  - Per backup type, the duration and stored size of every complete backup with mean, median, last value, the
    least-squares slope per week, weekly means and the compression ratio; plain-language RV(observations) when
    a week's mean moved by 20% or more, or the newest backup is much smaller or slower than the recent ones.
  - Failure patterns - runs that left an incomplete backup (older than O(failure_grace_hours), so not a run in
    progress), damaged manifests and failed verifications, counted by type, check, weekday and hour (UTC), with
    the success rate and the longest streak of failed runs.
  - Storage used per repository (O(repository) and each of O(copies)) and per S3 storage class, and a monthly
    cost estimate from O(prices).
  - An SVG line chart of durations and sizes (RV(chart_svg)).
  - The same repository state gives the same result, byte for byte, so a report written from it changes only
    when the backups do.
options:
  weeks:
    description: How many weeks back to look.
    type: int
    default: 12
  prices:
    description:
      - USD per GB-month (GB = 2^30 bytes, as AWS bills) by S3 storage class (V(STANDARD), V(STANDARD_IA),
        V(GLACIER_IR), ...) or by repository name (which wins, for example an NFS copy named V(nfs)).
      - Merged over built-in us-east-1 list prices; filesystem repositories cost 0 unless priced (class
        V(filesystem) or their name).
    type: dict
    default: {}
  failure_grace_hours:
    description: An incomplete backup younger than this may be a run in progress and is not counted as failed.
    type: float
    default: 24
  chart:
    description: Return the SVG chart in RV(chart_svg).
    type: bool
    default: true
extends_documentation_fragment:
  - pgsafe.backup.common
  - pgsafe.backup.copies
  - pgsafe.backup.attributes.read_only
notes:
  - The encryption and compression options are accepted, so that C(module_defaults) for the group
    C(group/pgsafe.backup.pgsafe) apply unchanged, but they are not used.
author:
  - pgsafe maintainers (@pgsafe)
"""

EXAMPLES = r"""
- name: Weekly review of the last quarter, S3 copy priced as Standard-IA
  pgsafe.backup.backup_trends:
    cluster: db01
    repository:
      path: /var/backups/pgsafe
    copies:
      - type: s3
        bucket: acme-pg-backups
        prefix: prod
        storage_class: STANDARD_IA
    weeks: 12
    prices:
      STANDARD_IA: 0.0125
      local: 0.04
  register: review

- name: Save the chart
  ansible.builtin.copy:
    content: "{{ review.chart_svg }}"
    dest: /srv/reports/db01-trends.svg
    mode: "0644"
  delegate_to: localhost
"""

RETURN = r"""
cluster:
  description: The cluster reviewed.
  returned: success
  type: str
window:
  description: C(weeks), C(from_week), C(to_week) (ISO weeks) and C(data_through) (the newest backup's end).
  returned: success
  type: dict
trends:
  description:
    - Per backup type, C(backups), C(duration_seconds) and C(size_stored_bytes) statistics (C(mean), C(median),
      C(min), C(max), C(last), C(slope_per_week)), C(compression_ratio), C(weekly) means and the C(series).
  returned: success
  type: dict
observations:
  description: Sentences about notable changes in durations and sizes.
  returned: success
  type: list
  elements: str
failures:
  description:
    - C(failed_runs), C(damaged), C(verification_failures), per type C(by_type) (runs, success rate, longest
      failure streak), counts by weekday, hour and check, and C(patterns) (sentences).
  returned: success
  type: dict
storage:
  description: Per repository, bytes used, capacity where known, and per storage class the bytes, price and cost.
  returned: success
  type: list
  elements: dict
cost:
  description: C(per_month) and C(per_year) estimates in USD, and the prices used.
  returned: success
  type: dict
encryption:
  description: Manifests in the window, those not encrypted, and the keys in use.
  returned: success
  type: dict
ingest_bytes_per_week:
  description: Stored bytes added per week by the backups in the window.
  returned: success
  type: int
chart_svg:
  description: The SVG chart (null with O(chart=false)).
  returned: success
  type: str
error:
  description: What failed, where, and the fix.
  returned: failure
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgsafe.backup.plugins.module_utils.config import Context
from ansible_collections.pgsafe.backup.plugins.module_utils.errors import PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.module_args import (
    module_argument_spec, settings_from_params)
from ansible_collections.pgsafe.backup.plugins.module_utils.trends import collect


def main():
    argument_spec = module_argument_spec(
        with_copies=True,
        weeks={"type": "int", "default": 12},
        prices={"type": "dict", "default": {}},
        failure_grace_hours={"type": "float", "default": 24.0},
        chart={"type": "bool", "default": True},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        settings = settings_from_params(params)
        context = Context.from_settings(settings, need_postgres=False, need_encryption=False)
        result = collect(context, context.copies(), params["weeks"], params["prices"], params["failure_grace_hours"],
                         params["chart"])
    except PgsafeError as exc:
        module.fail_json(msg=exc.message, error=exc.to_dict())
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
