#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render the monitoring templates (alert rules, Grafana dashboards) for one metric prefix.

    scripts/render_monitoring.py PREFIX OUTDIR [--set NAME=VALUE ...]

writes OUTDIR/alerts.rules.yml and OUTDIR/dashboards/<name>.json from
roles/monitoring/templates/. The Ansible role renders the same templates; this script lets
tests run promtool on the result and lets a site without Ansible install them. Values given
with --set override the templates' defaults (rto_seconds=7200, max_backup_age_hours=30, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import jinja2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, "roles", "monitoring", "templates")
RULES_TEMPLATE = "pgsafe_alerts.rules.yml.j2"
PREFIX_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _value(text: str):
    """--set values: numbers stay numbers so the templates' int filters behave as in Ansible."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def render(prefix: str, outdir: str, overrides: dict | None = None) -> list[str]:
    """Render every template for ``prefix`` into ``outdir``; return the written paths."""
    if not PREFIX_RE.match(prefix):
        raise SystemExit("render_monitoring: prefix %r is not a valid Prometheus name" % prefix)
    # StrictUndefined: a typo in a variable name fails here instead of rendering an empty threshold.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    variables = {"metric_prefix": prefix}
    variables.update(overrides or {})
    written = []
    os.makedirs(os.path.join(outdir, "dashboards"), exist_ok=True)

    rules_path = os.path.join(outdir, "alerts.rules.yml")
    with open(rules_path, "w", encoding="utf-8") as stream:
        stream.write(env.get_template(RULES_TEMPLATE).render(**variables))
    written.append(rules_path)

    for name in sorted(os.listdir(os.path.join(TEMPLATES, "dashboards"))):
        if not name.endswith(".json.j2"):
            continue
        text = env.get_template("dashboards/" + name).render(**variables)
        try:
            json.loads(text)
        except ValueError as exc:
            raise SystemExit("render_monitoring: dashboards/%s renders invalid JSON: %s" % (name, exc)) from None
        path = os.path.join(outdir, "dashboards", name[:-len(".j2")])
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="metric prefix, e.g. pgsafe or spendsync")
    parser.add_argument("outdir", help="directory to write alerts.rules.yml and dashboards/ into")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="template variable, e.g. rto_seconds=7200 (repeatable)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error("--set wants NAME=VALUE, got %r" % item)
        overrides[name] = _value(value)
    for path in render(args.prefix, args.outdir, overrides):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
