# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every alert's runbook link resolves to a heading of docs/troubleshooting.md.

The rules are rendered from roles/monitoring/templates/ exactly as the monitoring role and
scripts/render_monitoring.py render them (for the default prefix and the seeds' ``spendsync``),
then each rule's runbook annotation (``runbook_url``, or ``runbook`` as the template names it)
must point at docs/troubleshooting.md and its anchor must be the GitHub anchor of a heading there.
"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "troubleshooting.md")
RUNBOOK_KEYS = ("runbook_url", "runbook")
# The seeds' alerts and ours: each must have a runbook section.
EXPECTED_ANCHORS = {"backupfailure", "rtobreach", "backupstoragecapacity", "longbackupduration", "encryptionfailure",
                    "backuptooold", "walarchivelag", "walarchivefailing", "restoretestoverdue", "verifyfailed"}


def _render_module():
    spec = importlib.util.spec_from_file_location("render_monitoring", os.path.join(ROOT, "scripts",
                                                                                    "render_monitoring.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation dropped (not '-' or '_'), spaces to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def doc_anchors() -> set[str]:
    anchors: dict[str, int] = {}
    result = set()
    in_fence = False
    with open(DOC, "r", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("```"):
                in_fence = not in_fence
                continue
            match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
            if in_fence or not match:
                continue
            anchor = github_anchor(match.group(2))
            count = anchors.get(anchor, 0)
            anchors[anchor] = count + 1
            result.add(anchor if count == 0 else "%s-%d" % (anchor, count))
    return result


def rendered_rules(prefix: str, outdir) -> list[dict]:
    _render_module().render(prefix, str(outdir))
    with open(os.path.join(str(outdir), "alerts.rules.yml"), "r", encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.mark.parametrize("heading, anchor", [
    ("BackupFailure", "backupfailure"),
    ("WALArchiveLag", "walarchivelag"),
    ("The system status check: `pgsafe check`", "the-system-status-check-pgsafe-check"),
    ("Run logs", "run-logs"),
])
def test_github_anchor(heading, anchor):
    assert github_anchor(heading) == anchor


@pytest.mark.parametrize("prefix", ["pgsafe", "spendsync"])
def test_every_alert_runbook_resolves_to_a_heading(tmp_path, prefix):
    rules = rendered_rules(prefix, tmp_path)
    headings = doc_anchors()
    seen = set()
    for rule in rules:
        annotations = rule.get("annotations") or {}
        links = [annotations[key] for key in RUNBOOK_KEYS if key in annotations]
        assert links, "alert %s has no runbook annotation" % rule["alert"]
        for link in links:
            path, _hash, anchor = link.partition("#")
            assert path.endswith("docs/troubleshooting.md"), (rule["alert"], link)
            assert anchor, (rule["alert"], link)
            assert anchor in headings, "alert %s: #%s is not a heading of docs/troubleshooting.md" % (
                rule["alert"], anchor)
            # docs/metrics.md promises the anchor is the alert's name in lower case.
            assert anchor == rule["alert"].lower(), (rule["alert"], anchor)
            seen.add(anchor)
    assert EXPECTED_ANCHORS <= seen


def test_runbook_sections_exist_for_the_seed_alerts():
    assert EXPECTED_ANCHORS <= doc_anchors()


def test_links_inside_the_troubleshooting_doc_resolve():
    with open(DOC, "r", encoding="utf-8") as handle:
        text = handle.read()
    targets = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert targets, "the doc links between its sections"
    assert targets <= doc_anchors(), sorted(targets - doc_anchors())
