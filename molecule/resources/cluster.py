#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start or stop the throwaway PostgreSQL cluster of a Molecule scenario.

    cluster.py start ROOT   # init + start on a free port, load the sample db, write ROOT/cluster.json
    cluster.py stop ROOT    # stop the cluster (if any) and remove ROOT

The cluster lives in ROOT/pg, runs as the postgres user on 127.0.0.1 and never
touches the system cluster; the scenario's inventory reads its port from
ROOT/cluster.json. Reuses tests/support/pgcluster.py, so Molecule and pytest build
clusters the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from tests.support.pgcluster import PG_BIN, Cluster, load_sample  # noqa: E402


def start(root: str) -> dict:
    state_path = os.path.join(root, "cluster.json")
    if os.path.exists(state_path):
        stop(root)
    os.makedirs(root, exist_ok=True)
    # The postgres user must traverse ROOT to reach ROOT/pg.
    os.chmod(root, 0o755)
    cluster = Cluster(base_dir=os.path.join(root, "pg")).init().start()
    counts = load_sample(cluster, "app", users=200, bookings=1000)
    state = {"port": cluster.port, "host": cluster.host, "datadir": cluster.datadir, "bin_dir": PG_BIN,
             "sample_counts": counts}
    with open(state_path, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
    return state


def stop(root: str) -> None:
    state_path = os.path.join(root, "cluster.json")
    if os.path.exists(state_path):
        with open(state_path, "r", encoding="utf-8") as handle:
            state = json.load(handle)
        cluster = Cluster(base_dir=os.path.dirname(state["datadir"]), port=state["port"])
        cluster.running = True
        cluster.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop") or not argv[2].startswith("/tmp/pgsafe-molecule-"):
        print("usage: cluster.py start|stop /tmp/pgsafe-molecule-NAME", file=sys.stderr)
        return 2
    if argv[1] == "start":
        print(json.dumps(start(argv[2]), sort_keys=True))
    else:
        stop(argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
