# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX examples stay true: every job template names a playbook that exists, every survey
question sets a variable that playbook (or a role it runs) reads, and the schedules fire on the
runbooks' calendar."""

from __future__ import annotations

import datetime
import json
import os
import re

import pytest
import yaml
from dateutil import rrule

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AWX = os.path.join(ROOT, "examples", "awx")
SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}


def load_config() -> dict:
    with open(os.path.join(AWX, "controller_config.yml"), "r", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def read(path: str) -> str:
    with open(path, "r", encoding="utf-8") as handle:
        return handle.read()


def variables_read_by(playbook: str) -> str:
    """The playbook's text and the defaults of the roles it runs."""
    text = read(os.path.join(ROOT, playbook))
    for role in re.findall(r"role: pgsafe\.backup\.(\w+)", text):
        text += read(os.path.join(ROOT, "roles", role, "defaults", "main.yml"))
        text += read(os.path.join(ROOT, "roles", role, "tasks", "main.yml"))
    return text


TEMPLATES = load_config()["controller_templates"]


@pytest.mark.parametrize("template", TEMPLATES, ids=[template["name"] for template in TEMPLATES])
def test_template_and_survey(template):
    assert os.path.isfile(os.path.join(ROOT, template["playbook"])), template["playbook"]
    config = load_config()
    sections = ("controller_credentials", "controller_projects", "controller_inventories",
                "controller_execution_environments")
    names = {item["name"] for section in sections for item in config[section]}
    for reference in [template["project"], template["inventory"], template["execution_environment"]] + \
            template["credentials"]:
        assert reference in names, reference
    if not template.get("survey_enabled"):
        assert "survey_spec" not in template
        return
    survey_file = re.search(r"'(surveys/[\w.]+\.json)'", template["survey_spec"]).group(1)
    survey = json.loads(read(os.path.join(AWX, survey_file)))
    assert survey["name"] and survey["spec"]
    readers = variables_read_by(template["playbook"])
    for question in survey["spec"]:
        assert question["type"] in SURVEY_TYPES
        assert question["question_name"] and question["question_description"]
        # A question must set something the playbook reads: no knob that does nothing.
        assert re.search(r"\b%s\b" % question["variable"], readers), question["variable"]
        if question["type"] == "multiplechoice":
            assert question["default"] in question["choices"]
        if question["type"] in ("integer", "float"):
            assert question["min"] <= question["default"] <= question["max"]


def test_every_survey_file_is_used():
    used = {re.search(r"'(surveys/[\w.]+\.json)'", template["survey_spec"]).group(1)
            for template in TEMPLATES if template.get("survey_spec")}
    assert used == {"surveys/" + name for name in os.listdir(os.path.join(AWX, "surveys"))}


def test_schedules_follow_the_runbooks():
    templates = {template["name"] for template in TEMPLATES}
    schedules = {item["unified_job_template"]: item["rrule"] for item in load_config()["controller_schedules"]}
    assert set(schedules) <= templates

    def next_runs(text: str, count: int) -> list:
        rule = rrule.rrulestr(text.replace(" RRULE:", "\nRRULE:"))
        return list(rule.xafter(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc), count=count))

    daily = next_runs(schedules["pgsafe: verify (daily)"], 3)
    assert [(run.hour, run.minute) for run in daily] == [(8, 0)] * 3
    assert all(later - earlier == datetime.timedelta(days=1) for earlier, later in zip(daily, daily[1:]))
    weekly = next_runs(schedules["pgsafe: weekly review"], 3)
    assert all(run.weekday() == 6 and run.hour == 10 for run in weekly)
    monthly = next_runs(schedules["pgsafe: restore test (monthly)"], 3)
    assert all(run.weekday() == 0 and run.day <= 7 and run.hour == 9 for run in monthly)
    quarterly = next_runs(schedules["pgsafe: quarterly audit"], 4)
    assert [run.month for run in quarterly] == [3, 6, 9, 12]
    assert all(run.weekday() == 4 and (run + datetime.timedelta(days=7)).month != run.month for run in quarterly)
