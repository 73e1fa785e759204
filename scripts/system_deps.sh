#!/usr/bin/env bash
# Install the Debian packages the test suite uses, only when missing.
# An already-provisioned machine does no apt work at all (no `apt-get update`).
set -euo pipefail

# "package:probe" -- a probe starting with / is a path, otherwise a command name.
checks=(
    "postgresql-15:/usr/lib/postgresql/15/bin/initdb"
    "prometheus:promtool"
    "prometheus-pushgateway:prometheus-pushgateway"
    "pgbackrest:pgbackrest"
    "shellcheck:shellcheck"
    "cron:/usr/sbin/cron"
    "systemd:systemd-analyze"
)

missing=()
for check in "${checks[@]}"; do
    package=${check%%:*}
    probe=${check#*:}
    if [[ $probe == /* ]]; then
        [[ -x $probe ]] && continue
    else
        command -v "$probe" >/dev/null 2>&1 && continue
    fi
    missing+=("$package")
done

if ((${#missing[@]} == 0)); then
    echo "system-deps: all present"
    exit 0
fi

echo "system-deps: installing ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        echo "system-deps: missing packages (${missing[*]}) and not root: install them as root" >&2
        exit 1
    fi
else
    SUDO=()
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
