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
"""

from __future__ import annotations

import dataclasses
import os
import stat

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, missing_python_package
from ansible_collections.pgsafe.backup.plugins.module_utils.manifest import check_cluster_name

TOP_LEVEL_KEYS = ("cluster", "state_dir", "log_dir", "postgres", "aws", "repository", "copies", "encryption",
                  "compression", "metrics", "retention", "verify", "wal", "debug")
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


def _holds_secret(settings: dict) -> bool:
    postgres = settings.get("postgres") or {}
    aws = settings.get("aws") or {}
    repository = settings.get("repository") or {}
    return bool(postgres.get("password") or aws.get("secret_key") or aws.get("session_token")
                or repository.get("secret_key"))


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
        cluster = check_cluster_name(str(settings.get("cluster") or "main"))
        state_dir = settings.get("state_dir") or DEFAULT_STATE_DIR
        if not os.path.isabs(state_dir):
            raise ConfigError("state_dir %r is not an absolute path" % state_dir, where="state_dir",
                              fix="use an absolute path such as /var/lib/pgsafe")
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


def repository_from(settings: dict, spec: dict | None, where: str):
    from ansible_collections.pgsafe.backup.plugins.module_utils.repository import open_repository

    if not spec:
        raise ConfigError("no repository configured", where=where,
                          fix="set repository: {type: filesystem, path: /srv/pgsafe} or {type: s3, bucket: NAME}")
    if not isinstance(spec, dict):
        raise ConfigError("%s must be a mapping" % where, where=where, fix="e.g. {type: filesystem, path: /srv/pgsafe}")
    spec = dict(spec)
    if (spec.get("type") or ("s3" if spec.get("bucket") else "filesystem")) == "s3":
        for key, value in merged_aws(settings, spec).items():
            spec.setdefault(key, value)
    return open_repository(spec)


def envelope_from(settings: dict):
    from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import Envelope

    spec = dict(settings.get("encryption") or {})
    aws = merged_aws(settings, spec)
    for key in AWS_KEYS:
        spec.pop(key, None)
    return Envelope.from_spec(spec, aws=aws or None)
