# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX execution environment definition: ansible-builder (offline) accepts it and writes a
build context with exactly our pins, system packages and the collection from its own tarball;
a broken definition is refused, so the acceptance means something."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
META = os.path.join(ROOT, "meta")
EE_FILE = os.path.join(META, "execution-environment.yml")


def read(*parts: str) -> str:
    with open(os.path.join(*parts), "r", encoding="utf-8") as handle:
        return handle.read()


def builder_create(ee_file: str, context: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ansible_builder", "create", "-f", ee_file, "-c", context,
                           "--output-filename", "Containerfile"], capture_output=True, text=True, check=False,
                          timeout=120)


def pins(text: str) -> list[str]:
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines()]
    return sorted(line for line in lines if line and not line.startswith("#"))


def test_requirement_copies_equal_the_collection_root():
    # meta/ copies serve builds from this file; the root files serve introspection of the installed collection.
    assert pins(read(META, "requirements.txt")) == pins(read(ROOT, "requirements.txt"))
    assert pins(read(META, "bindep.txt")) == pins(read(ROOT, "bindep.txt"))
    assert all("==" in line for line in pins(read(ROOT, "requirements.txt")))


def test_collection_tarball_name_matches_galaxy_yml():
    galaxy = yaml.safe_load(read(ROOT, "galaxy.yml"))
    wanted = "collections/%s-%s-%s.tar.gz" % (galaxy["namespace"], galaxy["name"], galaxy["version"])
    assert [item["name"] for item in yaml.safe_load(read(META, "ee-collections.yml"))["collections"]] == [wanted]
    definition = yaml.safe_load(read(EE_FILE))
    assert definition["additional_build_files"][0]["dest"] == os.path.dirname(wanted)


def test_ansible_builder_creates_the_context(tmp_path):
    context = str(tmp_path / "context")
    result = builder_create(EE_FILE, context)
    assert result.returncode == 0, result.stdout + result.stderr
    containerfile = read(context, "Containerfile")
    definition = yaml.safe_load(read(EE_FILE))
    core = definition["dependencies"]["ansible_core"]["package_pip"]
    runner = definition["dependencies"]["ansible_runner"]["package_pip"]
    assert core == "ansible-core==%s" % re.search(r"^ansible-core==(\S+)", read(ROOT, "requirements-dev.txt"),
                                                  re.M).group(1)
    assert 'ARG ANSIBLE_INSTALL_REFS="%s %s"' % (core, runner) in containerfile
    assert "ansible-galaxy collection install" in containerfile and "-r requirements.yml" in containerfile
    assert "--user-pip=requirements.txt --user-bindep=bindep.txt" in containerfile
    assert pins(read(context, "_build", "requirements.txt")) == pins(read(ROOT, "requirements.txt"))
    assert pins(read(context, "_build", "bindep.txt")) == pins(read(ROOT, "bindep.txt"))
    assert yaml.safe_load(read(context, "_build", "requirements.yml")) == yaml.safe_load(read(META,
                                                                                              "ee-collections.yml"))


def test_ansible_builder_refuses_a_broken_definition(tmp_path):
    for name in ("requirements.txt", "bindep.txt", "ee-collections.yml"):
        shutil.copy(os.path.join(META, name), tmp_path / name)
    definition = yaml.safe_load(read(EE_FILE))
    definition["dependencies"]["pyhton"] = definition["dependencies"].pop("python")  # a typo
    broken = tmp_path / "execution-environment.yml"
    broken.write_text(yaml.safe_dump(definition))
    result = builder_create(str(broken), str(tmp_path / "context"))
    assert result.returncode != 0
    assert "pyhton" in result.stdout + result.stderr
