# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared fixtures: real PostgreSQL clusters, a real S3/KMS server over HTTP, local keys."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COLLECTIONS = os.path.join(ROOT, ".build", "collections")

# The engine imports itself as ansible_collections.pgsafe.backup...; make that path exist.
_link = os.path.join(COLLECTIONS, "ansible_collections", "pgsafe", "backup")
if not os.path.exists(_link):
    os.makedirs(os.path.dirname(_link), exist_ok=True)
    os.symlink(ROOT, _link)
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.support.pgcluster import Cluster, load_sample  # noqa: E402


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real moto server (S3 + KMS) on a free loopback port, with fake credentials set."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server._server.server_port  # pylint: disable=protected-access
    saved = {key: os.environ.get(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                                  "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    yield "http://127.0.0.1:%d" % port
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _client(service: str, endpoint: str):
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing-secret")


@pytest.fixture
def s3_bucket(moto_endpoint):
    """A fresh bucket on the moto server."""
    name = "pgsafe-test-%s" % uuid.uuid4().hex[:12]
    _client("s3", moto_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def kms_key_arn(moto_endpoint):
    """A fresh symmetric KMS key on the moto server."""
    return _client("kms", moto_endpoint).create_key(Description="pgsafe test")["KeyMetadata"]["Arn"]


@pytest.fixture
def key_file(tmp_path):
    """A freshly generated local AES-256 key file (0600)."""
    from ansible_collections.pgsafe.backup.plugins.module_utils.encryption import generate_key_file

    path = str(tmp_path / "keys" / "backup.key")
    generate_key_file(path)
    return path


@pytest.fixture(scope="module")
def pg_cluster():
    """A running throwaway PostgreSQL 15 cluster with the sample database ``app``."""
    cluster = Cluster().init().start()
    cluster.sample_counts = load_sample(cluster, "app")
    yield cluster
    cluster.destroy()


@pytest.fixture
def fresh_cluster():
    """A running empty cluster for tests that break or restart it."""
    cluster = Cluster().init().start()
    yield cluster
    cluster.destroy()
