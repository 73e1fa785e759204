# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One log file per run of the ``pgsafe`` command, and the stderr handler.

    <log_dir>/<command>-<UTC stamp>-<pid>.log      (file 0600, directory 0700 when we create it)

``log_dir`` comes from the settings; unset, it is ``<state_dir>/log``. A file holds the start
(version, command, user, host), every step the engine logs on the ``pgsafe`` logger, and the
end: ``<command> completed in N s (exit C)`` or ``<command> failed after N s: <message>``.
``--debug`` / ``debug: true`` adds the engine's DEBUG records and the settings with every
secret replaced by ``***``.

Secrets never reach a log: the engine's messages do not carry them, and as a second line of
defence every formatted record (tracebacks included) passes through a redactor that replaces
the secret values found in the settings and in the process environment. Only the ``pgsafe``
logger is written: botocore's debug output (request headers with session tokens) never is.

Per-segment commands (``wal-push``, ``wal-fetch``, ``wal-prefetch``) and quick read-only
queries (``list``, ``wal-status``) write no file: PostgreSQL runs the first ones once per
WAL segment, and a file per segment would bury the runs that matter. Nor does the
long-running ``wal-shipper``: one file open for weeks would defeat logrotate; it logs to
stderr (the journal under systemd) and publishes its state through ``wal-status``.
"""

from __future__ import annotations

import datetime
import getpass
import logging
import os
import socket
import sys
import time

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, PgsafeError
from ansible_collections.pgsafe.backup.plugins.module_utils.ownership import hand_over_fd, inherited_owner, make_dirs

FILE_LOGGED_COMMANDS = frozenset(("backup", "verify", "restore", "restore-physical", "prune", "sync", "check",
                                  "files"))
LOG_DIR_MODE = 0o700
LOG_FILE_MODE = 0o600
REDACTED = "***"
# Settings keys whose values are secrets wherever they appear (postgres, aws, repository, copies).
SECRET_KEYS = frozenset(("password", "login_password", "secret_key", "session_token", "aws_secret_access_key",
                         "aws_session_token"))
SECRET_ENVIRONMENT = ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
# Shorter strings are not redacted: replacing every "a" in a log protects nothing and ruins it.
MIN_SECRET_LENGTH = 4
_FILE_ONLY = "pgsafe_file_only"
# ``logger.info(..., extra=FILE_ONLY)``: for the run log, not stderr (the command prints it itself).
FILE_ONLY = {_FILE_ONLY: True}


def secret_values(settings: dict | None) -> list[str]:
    """Every secret string in the settings (any depth) and in this process's environment."""
    found: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in SECRET_KEYS and isinstance(value, str):
                    found.add(value)
                else:
                    visit(value)
        elif isinstance(node, (list, tuple)):
            for item in node:
                visit(item)

    visit(settings or {})
    found.update(os.environ.get(name) or "" for name in SECRET_ENVIRONMENT)
    # Longest first, so a secret that contains another is replaced whole.
    return sorted((value for value in found if len(value) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def redacted_settings(settings: dict | None):
    """A copy of the settings with every secret value replaced (for the debug log)."""
    def copy(node):
        if isinstance(node, dict):
            return {key: (REDACTED if key in SECRET_KEYS and value else copy(value)) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            return [copy(item) for item in node]
        return node

    return copy(settings or {})


class RedactingFormatter(logging.Formatter):
    """Formats a record, then replaces every known secret in the whole text (traceback included)."""

    def __init__(self, fmt: str, secrets: list[str] | None = None):
        super().__init__(fmt)
        self.secrets = list(secrets or [])

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


class _NotFileOnly(logging.Filter):
    """Keeps the run log's own closing lines off stderr (the CLI prints the error there itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, _FILE_ONLY, False)


def configure_stderr(logger: logging.Logger, debug: bool, settings: dict | None = None) -> logging.Handler:
    """Replace the logger's handlers by one stderr handler: warnings, or everything with debug."""
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(RedactingFormatter("pgsafe: %(levelname)s %(message)s", secret_values(settings)))
    stream.setLevel(logging.DEBUG if debug else logging.WARNING)
    stream.addFilter(_NotFileOnly())
    logger.addHandler(stream)
    return stream


def log_dir_for(settings: dict) -> str:
    """``log_dir`` from the settings, else ``<state_dir>/log``."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.config import DEFAULT_STATE_DIR

    directory = str(settings.get("log_dir") or os.path.join(settings.get("state_dir") or DEFAULT_STATE_DIR, "log"))
    if not os.path.isabs(directory):
        raise ConfigError("log_dir %r is not an absolute path" % directory, where="log_dir",
                          fix="use an absolute directory such as /var/log/pgsafe, or remove log_dir to log under "
                          "<state_dir>/log")
    return directory


def _make_log_dir(path: str) -> None:
    """Create missing directories 0700 (exactly, whatever the umask); an existing one is left as it is
    (the install role makes /var/log/pgsafe 0750 for a log reader group).

    Run as root, new directories take the owner of the directory they are made in (ownership.py): an
    operator's ``pgsafe check`` must not leave ``<state_dir>/log`` to root, where the backup user's timers
    could no longer write their logs.
    """
    make_dirs(path, LOG_DIR_MODE)


class RunLog:
    """The log of one run. Use as a context manager around the command's work::

        with RunLog("backup", settings, debug, LOG) as run_log:
            code = dispatch(...)
            run_log.exit_code = code

    Leaving normally writes ``completed in``; an exception writes ``failed after`` with the
    error's message (its traceback only for unexpected errors) and propagates.
    """

    def __init__(self, command: str, settings: dict, debug: bool = False, logger: logging.Logger | None = None,
                 to_file: bool | None = None, config_path: str | None = None):
        self.command = command
        self.settings = settings or {}
        self.debug = debug
        self.logger = logger or logging.getLogger("pgsafe")
        self.to_file = command in FILE_LOGGED_COMMANDS if to_file is None else to_file
        self.config_path = config_path
        self.path: str | None = None
        self.exit_code = 0
        self._handler: logging.Handler | None = None
        self._started = 0.0

    # --- opening ---------------------------------------------------------------------------
    def open(self) -> "RunLog":
        secrets = secret_values(self.settings)
        configure_stderr(self.logger, self.debug, self.settings)
        self._started = time.monotonic()
        if self.to_file:
            self._open_file(secrets)
        self.logger.info("pgsafe %s %s started (pid %d, user %s, host %s, settings %s, log %s)",
                         _version(), self.command, os.getpid(), _user(), socket.gethostname(),
                         self.config_path or "-", self.path or "-")
        if self.debug:
            self.logger.debug("settings (secrets replaced by %s): %s", REDACTED, redacted_settings(self.settings))
        return self

    def _open_file(self, secrets: list[str]) -> None:
        directory = log_dir_for(self.settings)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = os.path.join(directory, "%s-%s-%d.log" % (self.command, stamp, os.getpid()))
        try:
            _make_log_dir(directory)
            # O_EXCL + explicit mode: the file never exists with wider permissions, even briefly.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), LOG_FILE_MODE)
            os.fchmod(fd, LOG_FILE_MODE)
            hand_over_fd(fd, inherited_owner(directory))
            stream = os.fdopen(fd, "a", encoding="utf-8")
        except OSError as exc:
            # A backup must not fail because its log cannot be written; say so loudly instead.
            self.logger.warning("cannot write the run log in %s: %s; continuing without it. Fix: create the "
                                "directory writable by uid %d (mode 0700) or set log_dir", directory,
                                exc.strerror or exc, os.geteuid())
            return
        handler = logging.StreamHandler(stream)
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(message)s", secrets))
        handler.setLevel(logging.DEBUG if self.debug else logging.INFO)
        self.logger.addHandler(handler)
        self._handler = handler
        self.path = path

    # --- closing ---------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def close(self, error: BaseException | None = None) -> None:
        extra = FILE_ONLY
        if error is None:
            self.logger.info("%s completed in %.1f s (exit %d)", self.command, self.elapsed, self.exit_code,
                             extra=extra)
        elif isinstance(error, PgsafeError):
            self.logger.error("%s failed after %.1f s: %s (exit %d)", self.command, self.elapsed, error.message,
                              error.exit_code, extra=extra)
        elif isinstance(error, KeyboardInterrupt):
            self.logger.error("%s interrupted after %.1f s", self.command, self.elapsed, extra=extra)
        else:
            self.logger.error("%s failed after %.1f s: unexpected %s: %s", self.command, self.elapsed,
                              type(error).__name__, error, exc_info=error, extra=extra)
        if self._handler is not None:
            self.logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def __enter__(self) -> "RunLog":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)


def _version() -> str:
    from ansible_collections.pgsafe.backup.plugins.module_utils.version import TOOL_VERSION

    return TOOL_VERSION


def _user() -> str:
    try:
        return "%s (uid %d)" % (getpass.getuser(), os.geteuid())
    except (KeyError, OSError):
        return "uid %d" % os.geteuid()
