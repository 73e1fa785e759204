# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The ``copies`` option: further repositories, in the shape of ``repository`` (module_args.REPOSITORY_OPTIONS)."""

    DOCUMENTATION = r"""
options:
  copies:
    description:
      - Further repositories that hold copies of the backups (usually S3 beside a local or NFS primary), each with
        the suboptions of O(repository). The shared variable C(pgsafe_copies) has this shape.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: A label for messages and metrics (for example V(cloud)). Defaults to the type.
        type: str
      type:
        description: Repository kind.
        type: str
        choices: [filesystem, s3]
        default: filesystem
      path:
        description: Root directory of a filesystem repository.
        type: path
      create:
        description: Create a missing filesystem repository root (0700).
        type: bool
        default: false
      bucket:
        description: S3 bucket name.
        type: str
      prefix:
        description: Key prefix inside the bucket.
        type: str
      endpoint_url:
        description: URL of an S3-compatible endpoint (MinIO, Ceph, a local test server). Unset for AWS.
        type: str
      path_style:
        description: Use path-style addressing (MinIO and Ceph usually need it).
        type: bool
        default: false
      verify_tls:
        description: Verify the endpoint's TLS certificate.
        type: bool
        default: true
      ca_bundle:
        description: CA bundle file for a private endpoint certificate.
        type: path
      sse:
        description: Server-side encryption requested from S3, in addition to pgsafe's own envelope encryption.
        type: str
        choices: [AES256, "aws:kms"]
      sse_kms_key_id:
        description: KMS key for O(copies[].sse=aws:kms).
        type: str
      storage_class:
        description: S3 storage class for new objects (for example V(STANDARD_IA)).
        type: str
      object_lock_mode:
        description: Object Lock retention mode for new objects (the bucket must have Object Lock enabled).
        type: str
        choices: [GOVERNANCE, COMPLIANCE]
      object_lock_days:
        description: Days of Object Lock retention for new objects.
        type: int
      part_size_mb:
        description: Multipart upload part size.
        type: int
        default: 16
      max_concurrency:
        description: Parts uploaded in parallel.
        type: int
        default: 4
      checksum_when_required:
        description: Send and check payload checksums only when required, for older S3-compatible servers.
        type: bool
        default: false
      connect_timeout:
        description: Seconds to wait for a connection.
        type: int
        default: 10
      read_timeout:
        description: Seconds to wait on a stalled transfer before retrying.
        type: int
        default: 60
      max_attempts:
        description: Attempts per request (jittered backoff; only safe calls are retried).
        type: int
        default: 5
      access_key:
        description: AWS access key id. Falls back to the environment.
        type: str
        aliases: [aws_access_key_id]
      secret_key:
        description: AWS secret access key. Never logged.
        type: str
        aliases: [aws_secret_access_key]
      session_token:
        description: AWS session token. Never logged.
        type: str
        aliases: [aws_session_token]
      profile:
        description: AWS profile name.
        type: str
        aliases: [aws_profile]
      region:
        description: AWS region.
        type: str
        aliases: [aws_region]
"""
