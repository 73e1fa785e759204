# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Settings shared by the CLI (a YAML file) and the modules (their arguments).

Both front ends produce the same plain dict and hand it to ``Context.from_settings``;
validation with messages that name the option lives here, once.

    cluster: main                      # name of this PostgreSQL cluster in the repository
    state_dir: /var/lib/pgsafe         # locks, WAL spool, counters
    log_dir: /var/log/pgsafe
    postgres: {host, port, user, password, dbname, sslmode, bin_dir}
    aws: {access_key, secret_key, session_token, profile, region}   # shared by S3 and KMS
    repository: {type: filesystem, path: /srv/pgsafe}               # the primary copy
    copies: [{name: cloud, type: s3, bucket: ..., endpoint_url: ...}]  # synced copies
    encryption: {key_files: [{path: /etc/pgsafe/keys/backup.key}], kms_key_ids: [...]}
    compression: {algorithm: zstd, level: 3, threads: 2}
    metrics: {prefix: pgsafe, textfile_dir: ..., pushgateway_url: ...}
    retention: {keep_daily: 30, keep_weekly: 12, keep_monthly: 12}
    files: {paths: [/etc/spendsync], exclude: ["*.swp"]}           # `pgsafe files backup`
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, missing_python_package
from ansible_collections.pgsafe.backup.plugins.module_utils.manifest import check_cluster_name

TOP_LEVEL_KEYS = ("cluster", "state_dir", "log_dir", "postgres", "aws", "repository", "copies", "encryption",
                  "compression", "metrics", "retention", "verify", "wal", "files", "debug")
AWS_KEYS = ("access_key", "secret_key", "session_token", "profile", "region")
DEFAULT_STATE_DIR = "/var/lib/pgsafe"
DEFAULT_CONFIG_PATH = "/etc/pgsafe/pgsafe.yml"


def load_config_file(path: str) -> dict:
    """Read the CLI's YAML settings, refusing a secret-bearing file others can read."""
    try:
        import yaml
    except ImportError:
        raise missing_python_package("PyYAML") from None
    try:
        info = os.stat(path)
        with open(path, "r", encoding="utf-8") as handle:
            settings = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ConfigError("configuration file %s does not exist" % path, where="--config",
                          fix="pass --config PATH or create %s (the pgsafe.backup.install role writes it)"
                          % DEFAULT_CONFIG_PATH) from None
    except PermissionError:
        raise ConfigError("cannot read configuration file %s" % path, where="--config",
                          fix="run as the pgsafe/postgres user or root, which the install role grants") from None
    except yaml.YAMLError as exc:
        raise ConfigError("configuration file %s is not valid YAML: %s" % (path, exc), where="--config",
                          fix="correct the YAML syntax") from None
    if not isinstance(settings, dict):
        raise ConfigError("configuration file %s must hold a mapping" % path, where="--config",
                          fix="see README: cluster, postgres, repository, encryption, ...")
    if info.st_mode & stat.S_IROTH and _holds_secret(settings):
        raise ConfigError("configuration file %s holds secrets and is readable by others (mode %o)"
                          % (path, stat.S_IMODE(info.st_mode)), where="--config",
                          fix="chmod 640 %s (or 600)" % path)
    return settings


SECRET_KEYS = ("password", "secret_key", "session_token")


def _holds_secret(settings) -> bool:
    """A password, secret key or session token anywhere (postgres, aws, repository, copies, encryption)."""
    if isinstance(settings, dict):
        return any((key in SECRET_KEYS and value) or _holds_secret(value) for key, value in settings.items())
    if isinstance(settings, list):
        return any(_holds_secret(item) for item in settings)
    return False


def check_keys(section: dict, allowed, where: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError("unknown option(s) %s" % ", ".join(unknown), where=where,
                          fix="use only: %s" % ", ".join(sorted(allowed)))


def merged_aws(settings: dict, section: dict) -> dict:
    """Credentials for one AWS client: the section's own, else the shared ``aws`` ones."""
    shared = {key: value for key, value in (settings.get("aws") or {}).items() if value not in (None, "")}
    own = {key: value for key, value in (section or {}).items() if key in AWS_KEYS and value not in (None, "")}
    shared.update(own)
    return shared


@dataclasses.dataclass
class Context:
    """Everything an operation needs, built once from settings."""

    settings: dict
    cluster: str
    state_dir: str
    postgres: object = None
    repository: object = None
    envelope: object = None
    compression: object = None
    metrics: object = None

    @classmethod
    def from_settings(cls, settings: dict, need_postgres: bool = True, need_encryption: bool = True) -> "Context":
        from ansible_collections.pgsafe.backup.plugins.module_utils.compression import Compression
        from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import PostgresTarget

        settings = dict(settings or {})
        check_keys(settings, TOP_LEVEL_KEYS, "settings")
        validate_sections(settings)
        cluster = check_cluster_name(str(settings.get("cluster") or "main"))
        state_dir = settings.get("state_dir") or DEFAULT_STATE_DIR
        if not os.path.isabs(state_dir):
            raise ConfigError("state_dir %r is not an absolute path" % state_dir, where="state_dir",
                              fix="use an absolute path such as /var/lib/pgsafe")
        private_directory(state_dir)
        context = cls(settings=settings, cluster=cluster, state_dir=state_dir)
        context.repository = repository_from(settings, settings.get("repository"), "repository")
        context.compression = Compression.from_spec(settings.get("compression"))
        if need_postgres:
            context.postgres = PostgresTarget.from_spec(settings.get("postgres"))
        if need_encryption:
            context.envelope = envelope_from(settings)
        if settings.get("metrics"):
            from ansible_collections.pgsafe.backup.plugins.module_utils.metrics import MetricsSink

            metrics_spec = dict(settings["metrics"])
            metrics_spec.setdefault("state_dir", state_dir)
            context.metrics = MetricsSink.from_spec(metrics_spec)
        return context

    def copies(self) -> list:
        return [repository_from(self.settings, spec, "copies[%d]" % index)
                for index, spec in enumerate(self.settings.get("copies") or [])]


def private_directory(path: str) -> None:
    """Create ``path`` 0700 when it is missing: locks, spool, WAL status and metrics state go below it,
    and each writer's own makedirs would otherwise leave it 0755 (os.makedirs sets only the leaf's mode).
    An existing directory is left as the operator (or the install role) made it. Best effort: a user
    who cannot create it gets the error of the first write below it, which names the path."""
    if os.path.isdir(path):
        return
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        pass


def repository_from(settings: dict, spec: dict | None, where: str):
    from ansible_collections.pgsafe.backup.plugins.module_utils.repository import open_repository

    if not spec:
        raise ConfigError("no repository configured", where=where,
                          fix="set repository: {type: filesystem, path: /srv/pgsafe} or {type: s3, bucket: NAME}")
    if not isinstance(spec, dict):
        raise ConfigError("%s must be a mapping" % where, where=where, fix="e.g. {type: filesystem, path: /srv/pgsafe}")
    spec = dict(spec)
    validate_repository_spec(spec, where)
    if (spec.get("type") or ("s3" if spec.get("bucket") else "filesystem")) == "s3":
        for key, value in merged_aws(settings, spec).items():
            spec.setdefault(key, value)
    return open_repository(spec)


def envelope_from(settings: dict):
    from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import Envelope

    spec = dict(settings.get("encryption") or {})
    validate_encryption_spec(spec)
    aws = merged_aws(settings, spec)
    for key in AWS_KEYS:
        spec.pop(key, None)
    return Envelope.from_spec(spec, aws=aws or None)


# --------------------------------------------------------------------------- up-front validation
# Checks that need no network and no PostgreSQL, run before any work starts, so a typo fails
# at once with the option's name and the accepted values instead of halfway through a backup.

# KMS accepts a key ARN, an alias ARN, an alias name, a key id (UUID) or a multi-Region key id.
KMS_KEY_ID_RE = re.compile(
    r"^(?:arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(?:key/(?:mrk-[0-9a-f]{32}|[0-9a-f-]{36})|alias/[A-Za-z0-9/_-]+)"
    r"|alias/[A-Za-z0-9/_-]+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$")
KMS_KEY_ID_FORMS = ("arn:aws:kms:REGION:ACCOUNT:key/KEY-ID, arn:aws:kms:REGION:ACCOUNT:alias/NAME, alias/NAME, "
                    "a key id (1234abcd-12ab-34cd-56ef-1234567890ab) or a multi-Region key id (mrk-...)")
REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$", re.IGNORECASE)
REPOSITORY_KEYS = ("name", "type", "path", "create", "bucket", "prefix", "endpoint_url", "path_style", "verify_tls",
                   "ca_bundle", "sse", "sse_kms_key_id", "storage_class", "object_lock_mode", "object_lock_days",
                   "part_size_mb", "max_concurrency", "checksum_when_required", "connect_timeout", "read_timeout",
                   "max_attempts") + AWS_KEYS


def check_kms_key_id(value, option: str) -> str:
    if not isinstance(value, str) or not KMS_KEY_ID_RE.match(value.strip()):
        raise ConfigError("%s %r is not a KMS key ARN, alias or key id" % (option, value), where=option,
                          fix="accepted forms: %s" % KMS_KEY_ID_FORMS)
    return value.strip()


def check_url(value, option: str, example: str) -> str:
    """An http(s)://host[:port] URL (an optional path is allowed: some gateways sit behind one)."""
    import urllib.parse

    problem = None
    text = str(value)
    try:
        parsed = urllib.parse.urlsplit(text)
        port = parsed.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        parsed, port, problem = None, None, str(exc)
    if parsed is not None:
        if port == 0:
            problem = "port 0 is not a port"
        elif parsed.scheme not in ("http", "https"):
            problem = "the scheme must be http or https"
        elif not parsed.hostname or re.search(r"\s", text):
            problem = "there is no valid host name"
        elif parsed.username or parsed.password:
            problem = "it contains credentials"
    if problem:
        shown = "(redacted)" if parsed is not None and (parsed.username or parsed.password) else repr(text)
        raise ConfigError("%s %s is not a URL: %s" % (option, shown, problem), where=option,
                          fix="write it as http(s)://host[:port], e.g. %s" % example)
    return text


def check_absolute_path(value, option: str, must_exist: str | None = None) -> str:
    """An absolute path; ``must_exist`` 'file' or 'dir' also requires it to exist as that."""
    text = str(value)
    if not os.path.isabs(text):
        raise ConfigError("%s %r is a relative path" % (option, text), where=option,
                          fix="give an absolute path (modules and timers run from an unpredictable directory)")
    if must_exist == "file" and not os.path.isfile(text):
        raise ConfigError("%s %s does not exist or is not a file" % (option, text), where=option,
                          fix="point it at an existing file")
    if must_exist == "dir" and not os.path.isdir(text):
        raise ConfigError("%s %s does not exist or is not a directory" % (option, text), where=option,
                          fix="create it, or point it at an existing directory")
    return text


def check_number(value, option: str, minimum: float = 1, maximum: float | None = None, integer: bool = True,
                 fix: str | None = None):
    """A number within [minimum, maximum]; booleans and text are refused."""
    try:
        number = float(value)
        if isinstance(value, bool) or (integer and number != int(number)):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError("%s %r is not a %s" % (option, value, "whole number" if integer else "number"),
                          where=option, fix=fix or _range_text(minimum, maximum)) from None
    if number < minimum or (maximum is not None and number > maximum):
        raise ConfigError("%s %s is out of range" % (option, value), where=option,
                          fix=fix or _range_text(minimum, maximum))
    return int(number) if integer else number


def _range_text(minimum: float, maximum: float | None) -> str:
    if maximum is None:
        return "use a number of at least %g" % minimum
    return "use a number from %g to %g" % (minimum, maximum)


def check_backup_type(value, option: str = "type", allowed=None):
    """One of the backup types (None passes: 'any type')."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.manifest import BACKUP_TYPES

    allowed = tuple(allowed or BACKUP_TYPES)
    if value is not None and value not in allowed:
        raise ConfigError("%s %r is not a backup type" % (option, value), where=option,
                          fix="use one of: %s" % ", ".join(allowed))
    return value


def _check_region(value, option: str) -> None:
    if value and not REGION_RE.match(str(value)):
        raise ConfigError("%s %r is not a region name" % (option, value), where=option,
                          fix="use a region such as eu-west-1 (letters, digits and '-')")


def validate_repository_spec(spec: dict, where: str) -> None:
    """Unknown keys, and the S3 options that name files and keys."""
    check_keys(spec, REPOSITORY_KEYS, where)
    if spec.get("endpoint_url"):
        check_url(spec["endpoint_url"], "%s.endpoint_url" % where, "http://127.0.0.1:9000")
    if spec.get("path") not in (None, ""):
        check_absolute_path(spec["path"], "%s.path" % where)
    if spec.get("ca_bundle"):
        check_absolute_path(spec["ca_bundle"], "%s.ca_bundle" % where, must_exist="file")
    if spec.get("sse_kms_key_id"):
        check_kms_key_id(spec["sse_kms_key_id"], "%s.sse_kms_key_id" % where)
    _check_region(spec.get("region"), "%s.region" % where)


def validate_encryption_spec(spec: dict) -> None:
    key_ids = spec.get("kms_key_ids") or []
    for index, key_id in enumerate([key_ids] if isinstance(key_ids, str) else key_ids
                                   if isinstance(key_ids, list) else []):
        check_kms_key_id(key_id, "encryption.kms_key_ids[%d]" % index)
    for index, entry in enumerate(spec.get("key_files") or [] if isinstance(spec.get("key_files"), list) else []):
        path = entry.get("path") if isinstance(entry, dict) else entry
        if path:
            check_absolute_path(path, "encryption.key_files[%d].path" % index)
    if spec.get("kms_endpoint_url"):
        check_url(spec["kms_endpoint_url"], "encryption.kms_endpoint_url", "https://kms.eu-west-1.amazonaws.com")
    _check_region(spec.get("kms_region"), "encryption.kms_region")
    _check_region(spec.get("region"), "encryption.region")


def validate_sections(settings: dict) -> None:
    """The sections an operation may not use itself, checked anyway so the file is right as a whole."""
    _check_region((settings.get("aws") or {}).get("region"), "aws.region")
    if settings.get("retention") is not None:
        from ansible_collections.pgsafe.backup.plugins.module_utils.retention_policy import RetentionPolicy

        RetentionPolicy.from_spec(settings["retention"])
    if settings.get("wal") is not None:
        from ansible_collections.pgsafe.backup.plugins.module_utils.wal_archive import wal_settings

        wal_settings(settings)
    copies = settings.get("copies")
    if copies is not None and not isinstance(copies, list):
        raise ConfigError("copies must be a list of repositories", where="copies",
                          fix="e.g. copies: [{name: cloud, type: s3, bucket: NAME}]")
