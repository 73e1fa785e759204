# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors the engine raises: each one says what failed, where, and what to do.

The engine never calls fail_json or sys.exit; modules and the CLI turn these
into their own failure shapes. Every class has its own exit code so timers and
scripts can tell a configuration mistake from an unreachable repository.
"""

from __future__ import annotations


class PgsafeError(Exception):
    """Base error: ``what`` failed, ``where`` (object, host, option), ``fix`` for a person."""

    exit_code = 1
    category = "error"

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = self.what
        if self.where:
            text += " [%s]" % self.where
        if self.fix:
            text += ". Fix: %s" % self.fix
        return text

    def to_dict(self) -> dict:
        return {
            "category": self.category,
            "what": self.what,
            "where": self.where,
            "fix": self.fix,
            "message": self.message,
        }


class ConfigError(PgsafeError):
    """An option has a value we cannot use. ``where`` names the option."""

    exit_code = 2
    category = "config"


class RepositoryError(PgsafeError):
    """The repository (filesystem or S3) refused, failed or is unreachable."""

    exit_code = 3
    category = "repository"


class EncryptionError(PgsafeError):
    """A key is missing, wrong, or the KMS refused; or ciphertext failed authentication."""

    exit_code = 4
    category = "encryption"


class PostgresError(PgsafeError):
    """PostgreSQL or one of its client programs failed."""

    exit_code = 5
    category = "postgres"


class LockError(PgsafeError):
    """Another run holds the lock for this cluster and operation."""

    exit_code = 6
    category = "lock"


class VerificationError(PgsafeError):
    """A backup failed a verification check."""

    exit_code = 7
    category = "verification"


class NotFoundError(PgsafeError):
    """The backup, object or segment asked for does not exist."""

    exit_code = 8
    category = "not_found"


class RestoreError(PgsafeError):
    """A restore was refused or failed."""

    exit_code = 9
    category = "restore"


class WalConflictError(PgsafeError):
    """A different file already sits in the WAL archive under the same name; it is never replaced."""

    exit_code = 11
    category = "wal_conflict"


class DependencyError(PgsafeError):
    """A Python package or program the engine needs is missing on this host."""

    exit_code = 10
    category = "dependency"


def missing_python_package(package: str, import_error: str | None = None) -> DependencyError:
    """The error for a missing third-party package, naming the pip requirement."""
    return DependencyError(
        "the Python package '%s' is not installed for %s" % (package, _interpreter()),
        where=import_error,
        fix="install it in the interpreter that runs pgsafe (the pgsafe.backup.install role "
        "creates a virtualenv with pinned packages), or `pip install %s`" % package,
    )


def _interpreter() -> str:
    import sys

    return sys.executable or "this Python"
