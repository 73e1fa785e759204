# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role documents exactly the variables it defaults, and ships the pinned requirements.

prometheus.prometheus keeps ``meta/argument_specs.yml`` and ``defaults/main.yml`` in step
with a CI check; this is ours. A default without a spec is an undocumented knob; a spec
without a default is a variable the role reads but never sets.
"""

from __future__ import annotations

import os
import re

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES_DIR = os.path.join(ROOT, "roles")
# A directory becomes a role when it has tasks; one still being assembled (templates
# only) is checked from the moment its tasks land.
ROLES = sorted(name for name in os.listdir(ROLES_DIR)
               if os.path.isfile(os.path.join(ROLES_DIR, name, "tasks", "main.yml")))
VALID_TYPES = {"str", "list", "dict", "bool", "int", "float", "path", "raw", "jsonarg", "json", "bytes", "bits"}


def _load(role: str, *parts: str):
    with open(os.path.join(ROLES_DIR, role, *parts), "r", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _main_options(role: str) -> dict:
    specs = _load(role, "meta", "argument_specs.yml")
    return specs["argument_specs"]["main"]["options"]


def test_roles_exist():
    for role in ("install", "backup", "verify", "restore", "cleanup"):
        assert role in ROLES


@pytest.mark.parametrize("role", ROLES)
def test_role_has_specs_and_defaults(role):
    for parts in (("meta", "argument_specs.yml"), ("defaults", "main.yml"), ("meta", "main.yml")):
        assert os.path.isfile(os.path.join(ROLES_DIR, role, *parts)), "%s lacks %s" % (role, "/".join(parts))


@pytest.mark.parametrize("role", ROLES)
def test_spec_keys_match_defaults(role):
    defaults = _load(role, "defaults", "main.yml") or {}
    options = _main_options(role)
    assert sorted(set(defaults) - set(options)) == [], "defaults without a spec in %s" % role
    assert sorted(set(options) - set(defaults)) == [], "specs without a default in %s" % role


@pytest.mark.parametrize("role", ROLES)
def test_every_option_has_description_and_type(role):
    def check(options: dict, where: str) -> None:
        for name, spec in options.items():
            assert spec.get("description"), "%s.%s has no description" % (where, name)
            assert spec.get("type") in VALID_TYPES, "%s.%s has type %r" % (where, name, spec.get("type"))
            if spec.get("type") == "list":
                assert spec.get("elements") in VALID_TYPES, "%s.%s: list without elements" % (where, name)
            if spec.get("options"):
                check(spec["options"], "%s.%s" % (where, name))

    check(_main_options(role), role)


@pytest.mark.parametrize("role", ROLES)
def test_variables_are_prefixed_with_the_role_name(role):
    defaults = _load(role, "defaults", "main.yml") or {}
    wrong = [name for name in defaults if not name.startswith("pgsafe_%s_" % role)]
    assert wrong == []


@pytest.mark.parametrize("role", ROLES)
def test_choices_contain_the_literal_default(role):
    defaults = _load(role, "defaults", "main.yml") or {}
    for name, spec in _main_options(role).items():
        value = defaults.get(name)
        if "choices" in spec and not (isinstance(value, str) and "{{" in value):
            assert value in spec["choices"], "%s default %r not in %s" % (name, value, spec["choices"])


def _requirement_pins(path: str) -> list[str]:
    with open(path, "r", encoding="utf-8") as handle:
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in handle]
    return sorted(line for line in lines if line and not line.startswith("#"))


def test_install_role_ships_the_collection_requirements():
    shipped = _requirement_pins(os.path.join(ROLES_DIR, "install", "files", "requirements.txt"))
    collection = _requirement_pins(os.path.join(ROOT, "requirements.txt"))
    assert shipped == collection, "copy requirements.txt to roles/install/files/requirements.txt"
    assert all("==" in line for line in shipped), "every runtime requirement is pinned exactly"
