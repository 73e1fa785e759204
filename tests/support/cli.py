# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running the ``pgsafe`` command in tests: the interpreter, its environment, a 0600 settings file."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
PYTHON = VENV_PYTHON if os.access(VENV_PYTHON, os.X_OK) else sys.executable
ENTRY = "from ansible_collections.pgsafe.backup.plugins.module_utils.cli import main; import sys; sys.exit(main())"


def cli_env() -> dict:
    """This process's environment without PGSAFE_* and PG* (so nothing leaks in), with the collection on the path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PGSAFE_", "PG"))}
    env["PYTHONPATH"] = COLLECTIONS
    return env


def cli_argv(*args: str, config: str | None = None) -> list[str]:
    """``pgsafe [--config FILE] ARGS`` as an argv for this interpreter."""
    return [PYTHON, "-c", ENTRY] + (["--config", config] if config else []) + list(args)


def write_config(path, settings: dict, mode: int = 0o600) -> str:
    """Write the settings as YAML, created with ``mode`` (never briefly wider)."""
    path = str(path)
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yaml.safe_dump(settings, handle, default_flow_style=False)
    return path


def describe(result: subprocess.CompletedProcess) -> str:
    return "exit %d\nstdout:\n%s\nstderr:\n%s" % (result.returncode, result.stdout, result.stderr)
