#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the demo's proof: source, manifest and restored row counts side by side.

    demo_summary.py REPOSITORY_PATH CLUSTER SOURCE_DB RESTORED_DB
Exits 1 if any table differs.
"""

from __future__ import annotations

import os
import sys

from ansible_collections.pgsafe.backup.plugins.module_utils.catalog import list_backups, select_backup
from ansible_collections.pgsafe.backup.plugins.module_utils.postgres import PostgresTarget, table_row_counts
from ansible_collections.pgsafe.backup.plugins.module_utils.repository import open_repository


def main() -> int:
    repository_path, cluster, source_db, restored_db = sys.argv[1:5]
    repository = open_repository({"type": "filesystem", "path": repository_path})
    manifest = select_backup(repository, cluster, "latest", "logical", source_db)
    target = PostgresTarget(host=os.environ.get("PGHOST"), port=int(os.environ.get("PGPORT", "5432")),
                            user=os.environ.get("PGUSER", "postgres"))
    source = table_row_counts(target, source_db)
    restored = table_row_counts(target, restored_db)
    recorded = manifest["row_counts"][source_db]
    print()
    print("backup %s (%s): %d bytes raw, %d bytes stored (zstd + AES-256-GCM envelope)" % (
        manifest["backup_id"], ", ".join(manifest["databases"]), manifest["size_raw_bytes"],
        manifest["size_stored_bytes"]))
    print()
    print("%-20s %12s %12s %12s  %s" % ("TABLE", "SOURCE", "MANIFEST", "RESTORED", "MATCH"))
    mismatches = 0
    for table in sorted(set(source) | set(recorded) | set(restored)):
        same = source.get(table) == recorded.get(table) == restored.get(table)
        mismatches += 0 if same else 1
        print("%-20s %12s %12s %12s  %s" % (table, source.get(table), recorded.get(table), restored.get(table),
                                            "yes" if same else "NO"))
    print()
    entries = list_backups(repository, cluster)
    print("%d backup(s) in %s; restored database: %s" % (len(entries), repository.describe(), restored_db))
    if mismatches:
        print("FAILED: %d table(s) differ" % mismatches)
        return 1
    print("OK: restored row counts equal the source's for every table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
