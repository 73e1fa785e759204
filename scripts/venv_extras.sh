#!/usr/bin/env bash
# Post-install wiring of .venv (cheap and idempotent, run by every `make venv`):
#  - the import farm .build/collections/ansible_collections/pgsafe/backup -> repo root,
#    because the engine imports itself as ansible_collections.pgsafe.backup...;
#  - a .pth file so .venv/bin/python finds that farm without PYTHONPATH;
#  - the `pgsafe` launcher in .venv/bin.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/.venv}
farm=$root/.build/collections
link=$farm/ansible_collections/pgsafe/backup

mkdir -p "$(dirname "$link")"
if [[ ! -L $link || $(readlink "$link") != "$root" ]]; then
    rm -rf "$link"
    ln -s "$root" "$link"
fi

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pth=$site/pgsafe-collections.pth
if [[ ! -f $pth || $(cat "$pth") != "$farm" ]]; then
    printf '%s\n' "$farm" >"$pth"
fi

launcher=$venv/bin/pgsafe
new=$(cat <<PY
#!$venv/bin/python
# pgsafe host command (installed by \`make venv\`).
import sys

from ansible_collections.pgsafe.backup.plugins.module_utils.cli import main

if __name__ == "__main__":
    sys.exit(main())
PY
)
if [[ ! -f $launcher || $(cat "$launcher") != "$new" ]]; then
    printf '%s\n' "$new" >"$launcher"
    chmod 0755 "$launcher"
fi
