# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""docs/troubleshooting.md lists every error message the code raises, each with a fix.

The list is generated from the source (scripts/error_catalog.py); when this test fails after a
change to an error message, run ``scripts/error_catalog.py --write`` and commit the doc.
"""

from __future__ import annotations

import ast
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def catalog():
    spec = importlib.util.spec_from_file_location("error_catalog", os.path.join(ROOT, "scripts", "error_catalog.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows(catalog):
    return catalog.collect()


def test_the_doc_is_up_to_date(catalog, rows):
    with open(catalog.DOC, "r", encoding="utf-8") as handle:
        section = catalog.current_section(handle.read())
    assert section is not None, "docs/troubleshooting.md lost its error catalog markers"
    assert section == catalog.render(rows), "run scripts/error_catalog.py --write and commit docs/troubleshooting.md"


def test_every_message_has_a_fix_and_a_known_category(catalog, rows):
    assert len(rows) > 150
    for row in rows:
        assert row["fix"].strip(), row
        assert row["category"] in catalog.CATEGORIES, row
        assert row["places"], row


def test_known_messages_are_listed(rows):
    messages = {row["message"]: row for row in rows}
    assert messages["the key file does not exist"]["category"] == "encryption"
    assert "pgsafe key generate" in messages["the key file does not exist"]["fix"]
    assert messages["unknown check group(s) …"]["places"] == ["preflight.run_checks"]
    # a fix held in a local variable is resolved to its literal values
    connect = next(row for message, row in messages.items() if message.startswith("cannot connect to PostgreSQL"))
    assert "pg_hba.conf" in connect["fix"]


@pytest.mark.parametrize("source, expected", [
    ('"plain"', "plain"),
    ('"port %d is out of range: %r" % (a, b)', "port … is out of range: … "[:-1]),
    ('"100%% sure %s" % x', "100% sure …"),
    ('"a " + name + " b"', "a … b"),
    ('f"key {name} missing"', "key … missing"),
    ('"x" if flag else "y"', "x / y"),
    ('"{} is {}".format(a, b)', "… is …"),
    ("exc.message", None),
])
def test_template(catalog, source, expected):
    assert catalog._template(ast.parse(source, mode="eval").body) == expected
