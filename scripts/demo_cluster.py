#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start or stop the demo's throwaway PostgreSQL 15 cluster (never the system one).

    demo_cluster.py start STATEFILE   -> prints `export PGHOST=... PGPORT=... PGUSER=...`
    demo_cluster.py stop STATEFILE
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.pgcluster import Cluster, load_sample  # noqa: E402


def main() -> int:
    action, state_file = sys.argv[1], sys.argv[2]
    if action == "start":
        cluster = Cluster().init().start()
        counts = load_sample(cluster, "app", users=20000, bookings=200000)
        with open(state_file, "w", encoding="utf-8") as handle:
            json.dump({"base_dir": cluster.base_dir, "port": cluster.port, "counts": counts}, handle)
        print("export PGHOST=%s PGPORT=%d PGUSER=postgres" % (cluster.host, cluster.port))
        return 0
    if action == "stop":
        if not os.path.exists(state_file):
            return 0
        with open(state_file, encoding="utf-8") as handle:
            state = json.load(handle)
        cluster = Cluster(base_dir=state["base_dir"], port=state["port"])
        cluster.running = True
        cluster.destroy()
        os.unlink(state_file)
        return 0
    print("usage: demo_cluster.py start|stop STATEFILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
