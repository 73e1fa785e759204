# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Options every pgsafe.backup module accepts (module_utils/module_args.py: common_argument_spec)."""

    DOCUMENTATION = r"""
options:
  cluster:
    description:
      - Name of the PostgreSQL cluster inside the repository; backups live under C(<cluster>/backups/).
      - Letters, digits, C(.), C(_) and C(-), up to 63 characters.
    type: str
    default: main
  state_dir:
    description:
      - Directory on the managed host for locks and counters (created 0700).
    type: path
    default: /var/lib/pgsafe
  repository:
    description:
      - Where backups are stored. A filesystem path (local or NFS) or an S3 bucket (AWS or any S3-compatible
        store through O(repository.endpoint_url)).
      - Credentials for S3 fall back to the standard AWS environment variables (E(AWS_ACCESS_KEY_ID),
        E(AWS_SECRET_ACCESS_KEY), E(AWS_SESSION_TOKEN), E(AWS_PROFILE), E(AWS_REGION)), the shared config
        files and an instance role, so AWX credentials work unchanged.
    type: dict
    suboptions:
      name:
        description: A label for messages and metrics (for example V(local) or V(cloud)).
        type: str
      type:
        description: Repository kind.
        type: str
        choices: [filesystem, s3]
        default: filesystem
      path:
        description: Root directory of a filesystem repository. Must exist unless O(repository.create=true).
        type: path
      create:
        description:
          - Create a missing filesystem repository root (0700). Off by default so that an unmounted NFS
            share is reported instead of silently filling the local disk.
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
        description: Verify the endpoint's TLS certificate. Leave on outside tests.
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
        description: KMS key for O(repository.sse=aws:kms).
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
        description: Multipart upload part size (memory per part in flight).
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
  encryption:
    description:
      - Envelope encryption in the AWS Encryption SDK message format (committing suite, 1 MiB frames). Every
        object's data key is wrapped by every configured key, so any one of them decrypts it, and
        C(aws-encryption-cli) can decrypt objects without pgsafe.
    type: dict
    suboptions:
      mode:
        description: V(envelope) encrypts; V(none) stores plaintext (the audit flags it).
        type: str
        choices: [envelope, none]
        default: envelope
      key_files:
        description: Local raw AES-256 key files (the embedded default, or an escrow key). Mode must be 0600 or 0400.
        type: list
        elements: dict
        suboptions:
          path:
            description: Key file path (create one with C(pgsafe key generate PATH)).
            type: path
            required: true
          name:
            description: Key name recorded in each message; defaults to the file name without extension.
            type: str
      kms_key_ids:
        description: AWS KMS key ARNs, ids or aliases (for example one per region).
        type: list
        elements: str
      kms_endpoint_url:
        description: KMS endpoint URL for a KMS-compatible service or a test server.
        type: str
      kms_region:
        description: Region for KMS keys given without an ARN.
        type: str
      frame_length:
        description: Encryption frame length in bytes.
        type: int
        default: 1048576
      access_key:
        description: AWS access key id for KMS.
        type: str
        aliases: [aws_access_key_id]
      secret_key:
        description: AWS secret access key for KMS. Never logged.
        type: str
        aliases: [aws_secret_access_key]
      session_token:
        description: AWS session token for KMS. Never logged.
        type: str
        aliases: [aws_session_token]
      profile:
        description: AWS profile for KMS.
        type: str
        aliases: [aws_profile]
      region:
        description: AWS region for KMS.
        type: str
        aliases: [aws_region]
  compression:
    description: How objects are compressed before encryption.
    type: dict
    suboptions:
      algorithm:
        description: V(zstd) or V(none).
        type: str
        choices: [zstd, none]
        default: zstd
      level:
        description: zstd level, 1 to 22.
        type: int
        default: 3
      threads:
        description: zstd worker threads (0 compresses in the calling thread).
        type: int
        default: 2
  metrics:
    description: Prometheus metrics about this operation.
    type: dict
    suboptions:
      prefix:
        description: Metric name prefix; V(spendsync) reproduces the SpendSync dashboards' names.
        type: str
        default: pgsafe
      textfile_dir:
        description: node_exporter textfile collector directory.
        type: path
      pushgateway_url:
        description: Pushgateway URL.
        type: str
      job:
        description: Pushgateway job label; defaults to the prefix.
        type: str
      instance:
        description: Pushgateway instance label; defaults to the host name.
        type: str
      timeout:
        description: Seconds to wait for the Pushgateway. A failed push warns and never fails the operation.
        type: float
        default: 10.0
"""
