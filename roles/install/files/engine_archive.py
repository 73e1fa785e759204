#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pack the engine (plugins/module_utils/*.py) into one reproducible tar on the controller.

    engine_archive.py SOURCE_DIR OUTPUT_DIR   -> prints the archive's path

One archive lets the install role ship the engine with a single ``unarchive`` task
instead of one copy per file (two module runs each). The same sources always give
the same bytes (sorted names, root ownership, each file's own mtime), and the name
carries their digest, so an unchanged engine is neither rebuilt nor reported as
changed; file mtimes are kept because Python's bytecode cache is keyed on them.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import sys
import tarfile
import tempfile


def build(source_dir: str, output_dir: str) -> str:
    sources = sorted(glob.glob(os.path.join(source_dir, "*.py")))
    if not sources:
        raise SystemExit("no engine modules (*.py) in %s" % source_dir)
    digest = hashlib.sha256()
    members = []
    for path in sources:
        with open(path, "rb") as handle:
            content = handle.read()
        mtime = int(os.stat(path).st_mtime)
        name = os.path.basename(path)
        digest.update(name.encode() + b"\0" + str(mtime).encode() + b"\0" + content + b"\0")
        members.append((name, mtime, content))
    os.makedirs(output_dir, mode=0o755, exist_ok=True)
    target = os.path.join(output_dir, "pgsafe-engine-%s.tar" % digest.hexdigest()[:16])
    if os.path.exists(target):
        return target
    fd, partial = tempfile.mkstemp(dir=output_dir, prefix=".pgsafe-engine-")
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, mtime, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = mtime
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            archive.addfile(info, io.BytesIO(content))
    os.chmod(partial, 0o644)
    os.replace(partial, target)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: engine_archive.py SOURCE_DIR OUTPUT_DIR")
    print(build(sys.argv[1], sys.argv[2]))
