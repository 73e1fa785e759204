#!/usr/bin/env bash
# make demo: the main job on the embedded default (inventories/local), end to end:
# a throwaway PostgreSQL 15 cluster with sample data -> backup -> verify -> restore into
# a new database -> row counts compared -> cluster stopped.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
export PGSAFE_HOME="$ROOT/.build/demo"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.build/collections"
export ANSIBLE_NOCOWS=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_LOCALHOST_WARNING=0 ANSIBLE_INVENTORY_UNPARSED_WARNING=0
rm -rf "$PGSAFE_HOME"
mkdir -p "$PGSAFE_HOME"
STATE="$PGSAFE_HOME/cluster.json"
trap '"$PY" scripts/demo_cluster.py stop "$STATE"' EXIT

echo "== starting a throwaway PostgreSQL 15 cluster with sample data (users, bookings, services)"
eval "$("$PY" scripts/demo_cluster.py start "$STATE")"
echo "   PGHOST=$PGHOST PGPORT=$PGPORT"

run() { "$ROOT/.venv/bin/ansible-playbook" -i inventories/local "$@"; }

echo "== backup (playbooks/backup.yml)"
run playbooks/backup.yml
echo "== verify (playbooks/verify.yml)"
run playbooks/verify.yml
echo "== restore into a new database app_restored (playbooks/restore.yml)"
run playbooks/restore.yml -e pgsafe_restore_database=app -e pgsafe_restore_target=app_restored

echo "== summary"
"$PY" scripts/demo_summary.py "$PGSAFE_HOME/repository" main app app_restored
