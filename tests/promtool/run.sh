#!/usr/bin/env bash
# Render the alert rules and dashboards for two prefixes, check the rules with promtool, and
# run the promtool unit tests (tests/promtool/alerts_test.yml) against the spendsync rendering.
# Usage: tests/promtool/run.sh   (from anywhere; `make promtool` runs it)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT="$ROOT/.build/promtool"
PROMTOOL=${PROMTOOL:-$(command -v promtool || echo /usr/bin/promtool)}
if [[ -z ${PYTHON:-} ]]; then
    # jinja2 lives in the project venv; fall back to whatever python has it.
    if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

if [[ ! -x $PROMTOOL ]]; then
    echo "promtool not found: apt-get install --no-install-recommends prometheus (or set PROMTOOL)" >&2
    exit 1
fi

# A stale rendering must never be tested: start from an empty directory.
rm -rf "$OUT"
for prefix in spendsync pgsafe; do
    "$PYTHON" "$ROOT/scripts/render_monitoring.py" "$prefix" "$OUT/$prefix" >/dev/null
    "$PROMTOOL" check rules "$OUT/$prefix/alerts.rules.yml"
done

"$PROMTOOL" test rules "$ROOT/tests/promtool/alerts_test.yml"
