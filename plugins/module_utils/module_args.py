# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument specs shared by every module, and their translation into engine settings.

Plain dicts only (no Ansible import): the modules pass these specs to AnsibleModule
and hand the translated settings to ``config.Context.from_settings``, exactly as the
CLI does with its YAML file. Documented once in the doc fragments of the same names.
"""

from __future__ import annotations

import copy

AWS_CREDENTIAL_OPTIONS = {
    "access_key": {"type": "str", "no_log": False, "aliases": ["aws_access_key_id"]},
    "secret_key": {"type": "str", "no_log": True, "aliases": ["aws_secret_access_key"]},
    "session_token": {"type": "str", "no_log": True, "aliases": ["aws_session_token"]},
    "profile": {"type": "str", "aliases": ["aws_profile"]},
    "region": {"type": "str", "aliases": ["aws_region"]},
}

REPOSITORY_OPTIONS = {
    "name": {"type": "str"},
    "type": {"type": "str", "choices": ["filesystem", "s3"], "default": "filesystem"},
    "path": {"type": "path"},
    "create": {"type": "bool", "default": False},
    "bucket": {"type": "str"},
    "prefix": {"type": "str"},
    "endpoint_url": {"type": "str"},
    "path_style": {"type": "bool", "default": False},
    "verify_tls": {"type": "bool", "default": True},
    "ca_bundle": {"type": "path"},
    "sse": {"type": "str", "choices": ["AES256", "aws:kms"]},
    "sse_kms_key_id": {"type": "str"},
    "storage_class": {"type": "str"},
    "object_lock_mode": {"type": "str", "choices": ["GOVERNANCE", "COMPLIANCE"]},
    "object_lock_days": {"type": "int"},
    "part_size_mb": {"type": "int", "default": 16},
    "max_concurrency": {"type": "int", "default": 4},
    "checksum_when_required": {"type": "bool", "default": False},
    "connect_timeout": {"type": "int", "default": 10},
    "read_timeout": {"type": "int", "default": 60},
    "max_attempts": {"type": "int", "default": 5},
}
REPOSITORY_OPTIONS.update(copy.deepcopy(AWS_CREDENTIAL_OPTIONS))

ENCRYPTION_OPTIONS = {
    "mode": {"type": "str", "choices": ["envelope", "none"], "default": "envelope"},
    "key_files": {"type": "list", "elements": "dict", "options": {
        "path": {"type": "path", "required": True, "no_log": False},
        "name": {"type": "str"},
    }, "no_log": False},
    "kms_key_ids": {"type": "list", "elements": "str", "no_log": False},
    "kms_endpoint_url": {"type": "str"},
    "kms_region": {"type": "str"},
    "frame_length": {"type": "int", "default": 1048576},
}
ENCRYPTION_OPTIONS.update(copy.deepcopy(AWS_CREDENTIAL_OPTIONS))

COMPRESSION_OPTIONS = {
    "algorithm": {"type": "str", "choices": ["zstd", "none"], "default": "zstd"},
    "level": {"type": "int", "default": 3},
    "threads": {"type": "int", "default": 2},
}

METRICS_OPTIONS = {
    "prefix": {"type": "str", "default": "pgsafe"},
    "textfile_dir": {"type": "path"},
    "pushgateway_url": {"type": "str"},
    "job": {"type": "str"},
    "instance": {"type": "str"},
    "timeout": {"type": "float", "default": 10.0},
}

# A retention policy: retention_prune's ``policy``, backup_audit's ``retention`` (doc fragment retention_policy).
RETENTION_POLICY_OPTIONS = {
    "keep_last": {"type": "int"},
    "keep_daily": {"type": "int"},
    "keep_weekly": {"type": "int"},
    "keep_monthly": {"type": "int"},
    "keep_yearly": {"type": "int"},
    "min_keep": {"type": "int", "default": 1},
    "max_age": {"type": "str"},
    "incomplete_grace": {"type": "str", "default": "24h"},
}


def common_argument_spec() -> dict:
    """Options every module accepts, so ``module_defaults: group/pgsafe.backup.pgsafe`` works."""
    return {
        "cluster": {"type": "str", "default": "main"},
        "state_dir": {"type": "path", "default": "/var/lib/pgsafe"},
        "repository": {"type": "dict", "options": copy.deepcopy(REPOSITORY_OPTIONS)},
        "encryption": {"type": "dict", "options": copy.deepcopy(ENCRYPTION_OPTIONS)},
        "compression": {"type": "dict", "options": copy.deepcopy(COMPRESSION_OPTIONS)},
        "metrics": {"type": "dict", "options": copy.deepcopy(METRICS_OPTIONS)},
    }


def postgres_argument_spec() -> dict:
    """Connection options, named as community.postgresql names them."""
    return {
        "login_host": {"type": "str", "aliases": ["host"]},
        "port": {"type": "int", "default": 5432, "aliases": ["login_port"]},
        "login_user": {"type": "str", "default": "postgres"},
        "login_password": {"type": "str", "no_log": True},
        "login_db": {"type": "str", "default": "postgres"},
        "ssl_mode": {"type": "str", "choices": ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]},
        "pg_bin_dir": {"type": "path"},
    }


def copies_argument_spec() -> dict:
    """Further repositories in the shape of ``repository`` (doc fragment pgsafe.backup.copies)."""
    return {"copies": {"type": "list", "elements": "dict", "default": [], "options": copy.deepcopy(REPOSITORY_OPTIONS)}}


def module_argument_spec(with_postgres: bool = False, with_copies: bool = False, **options) -> dict:
    """A module's whole argument spec: the common options, the connection options and ``copies`` for the
    modules that take them (each documented by the doc fragment of the same name), then its own ``options``."""
    argument_spec = common_argument_spec()
    if with_postgres:
        argument_spec.update(postgres_argument_spec())
    if with_copies:
        argument_spec.update(copies_argument_spec())
    argument_spec.update(options)
    return argument_spec


def _clean(section: dict | None) -> dict | None:
    """Drop unset (None) suboptions so engine defaults and environment fallbacks apply."""
    if section is None:
        return None
    return {key: value for key, value in section.items() if value is not None}


def _repository(spec: dict | None) -> dict | None:
    """A repository's settings: unset suboptions dropped, S3-only ones dropped for a filesystem."""
    repository = _clean(spec)
    if repository and repository.get("type") == "filesystem":
        for key in [key for key in repository if key not in ("name", "type", "path", "create")]:
            repository.pop(key)
    return repository


def settings_from_params(params: dict) -> dict:
    """Module parameters -> the engine's settings dict (the same shape as the CLI's YAML)."""
    settings = {"cluster": params.get("cluster") or "main", "state_dir": params.get("state_dir") or "/var/lib/pgsafe"}
    repository = _repository(params.get("repository"))
    if repository:
        settings["repository"] = repository
    if params.get("copies"):
        settings["copies"] = [_repository(copy) for copy in params["copies"]]
    encryption = _clean(params.get("encryption"))
    if encryption is not None:
        if encryption.get("key_files"):
            encryption["key_files"] = [_clean(item) for item in encryption["key_files"]]
        settings["encryption"] = encryption
    for section in ("compression", "metrics"):
        if params.get(section):
            settings[section] = _clean(params[section])
    if "login_user" in params:
        settings["postgres"] = _clean({
            "host": params.get("login_host"), "port": params.get("port"), "user": params.get("login_user"),
            "password": params.get("login_password"), "dbname": params.get("login_db"),
            "sslmode": params.get("ssl_mode"), "bin_dir": params.get("pg_bin_dir")})
    return settings
