# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``aws-encryption-cli`` in its own virtualenv, for tests of the emergency decryption path.

The CLI (``aws-encryption-sdk-cli`` 4.3.0) pins ``aws-encryption-sdk`` 3.x while the
project uses 4.x, so it cannot live in the project's venv. It is built once under
``.build/esdk-cli-venv``; an flock serialises the build because pytest-xdist workers
(one per test file) may ask for it at the same moment.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI_VENV = os.path.join(ROOT, ".build", "esdk-cli-venv")
CLI = os.path.join(CLI_VENV, "bin", "aws-encryption-cli")
CLI_REQUIREMENT = "aws-encryption-sdk-cli==4.3.0"


class EncryptionCliUnavailable(Exception):
    """PyPI could not be reached to install the CLI (the caller decides to skip)."""


def _works(cli: str) -> bool:
    if not os.access(cli, os.X_OK):
        return False
    return subprocess.run([cli, "--version"], capture_output=True, timeout=120, check=False).returncode == 0


def ensure_encryption_cli() -> str:
    """Path of a working ``aws-encryption-cli``, installing it on first use."""
    os.makedirs(os.path.dirname(CLI_VENV), exist_ok=True)
    with open(CLI_VENV + ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _works(CLI):
            return CLI
        python = shutil.which("python3.11") or sys.executable
        if os.path.exists(CLI_VENV):
            shutil.rmtree(CLI_VENV)
        subprocess.run([python, "-m", "venv", CLI_VENV], check=True)
        result = subprocess.run([os.path.join(CLI_VENV, "bin", "pip"), "install", "-q", CLI_REQUIREMENT],
                                capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0:
            if "Could not find a version" in result.stderr or "connection" in result.stderr.lower():
                raise EncryptionCliUnavailable("pip cannot reach PyPI to install %s: %s"
                                               % (CLI_REQUIREMENT, result.stderr.strip()[-300:]))
            raise AssertionError("installing %s failed: %s" % (CLI_REQUIREMENT, result.stderr))
        if not _works(CLI):
            raise AssertionError("%s was installed but `aws-encryption-cli --version` fails" % CLI_REQUIREMENT)
        return CLI


def decrypt_command(cli: str, source: str, output: str, wrapping_key: str, context: dict) -> list[str]:
    """The argv an operator types to decrypt one pgsafe object with a KMS key (README, emergency)."""
    pairs = ["%s=%s" % (key, value) for key, value in sorted(context.items())]
    return [cli, "--decrypt", "--input", source, "--output", output, "--wrapping-keys", "key=%s" % wrapping_key,
            "--encryption-context"] + pairs + ["--commitment-policy", "require-encrypt-require-decrypt", "-S"]
