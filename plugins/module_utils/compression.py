# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stream compression: zstd (default) or none.

zstd frames carry their own content checksum (``write_checksum``), so a corrupted
object also fails at decompression, independently of the encryption tags.
"""

from __future__ import annotations

from typing import BinaryIO

from ansible_collections.pgsafe.backup.plugins.module_utils.errors import ConfigError, missing_python_package

try:
    import zstandard
except ImportError:  # pragma: no cover - exercised by ansible-test's import sanity test
    zstandard = None

ALGORITHMS = ("zstd", "none")


def _whole(value, option: str, fix: str) -> int:
    try:
        number = int(value)
        if isinstance(value, bool) or number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError("%s %r is not a whole number" % (option, value), where=option, fix=fix) from None
    return number


class Compression:
    """How stored objects are compressed; built from ``{"algorithm", "level", "threads"}``."""

    def __init__(self, algorithm: str = "zstd", level: int = 3, threads: int = 2):
        if algorithm not in ALGORITHMS:
            raise ConfigError("unknown compression algorithm %r" % algorithm, where="compression.algorithm",
                              fix="use one of: %s" % ", ".join(ALGORITHMS))
        level = _whole(level, "compression.level", "use a level from 1 (fastest) to 22 (smallest); 3 is the default")
        threads = _whole(threads, "compression.threads", "use 0 (compress in the calling thread) or a positive number")
        if algorithm == "zstd" and not 1 <= level <= 22:
            raise ConfigError("compression.level %r is out of range" % level, where="compression.level",
                              fix="use a level from 1 (fastest) to 22 (smallest); 3 is the default")
        if threads < 0:
            raise ConfigError("compression threads %r is negative" % threads, where="compression.threads",
                              fix="use 0 (compress in the calling thread) or a positive number of threads")
        self.algorithm = algorithm
        self.level = int(level)
        self.threads = int(threads)

    @classmethod
    def from_spec(cls, spec: dict | None) -> "Compression":
        spec = dict(spec or {})
        # Only an unset level means the default: 0 is out of range, not "default".
        return cls(spec.get("algorithm") or "zstd", spec.get("level") if spec.get("level") is not None else 3,
                   spec.get("threads") if spec.get("threads") is not None else 2)

    @property
    def extension(self) -> str:
        return ".zst" if self.algorithm == "zstd" else ""

    def describe(self) -> dict:
        if self.algorithm == "none":
            return {"algorithm": "none"}
        return {"algorithm": "zstd", "level": self.level, "threads": self.threads, "checksum": True}

    def _require(self) -> None:
        if zstandard is None:
            raise missing_python_package("zstandard")

    def compressing_reader(self, source: BinaryIO) -> BinaryIO:
        """Pull-stream: read() returns compressed bytes of what source yields."""
        if self.algorithm == "none":
            return source
        self._require()
        compressor = zstandard.ZstdCompressor(level=self.level, threads=self.threads, write_checksum=True)
        return compressor.stream_reader(source, read_size=1 << 20)

    @staticmethod
    def decompressing_reader(source: BinaryIO, algorithm: str) -> BinaryIO:
        """Pull-stream for an object compressed with ``algorithm`` (from its manifest)."""
        if algorithm == "none":
            return source
        if algorithm != "zstd":
            raise ConfigError("object compressed with unknown algorithm %r" % algorithm,
                              fix="upgrade pgsafe: this backup was written by a newer version")
        if zstandard is None:
            raise missing_python_package("zstandard")
        return zstandard.ZstdDecompressor().stream_reader(source, read_size=1 << 20, read_across_frames=True)
