#!/usr/bin/env bash
# Wheels of every package the install role pins (roles/install/files/requirements.txt), for
# database hosts without PyPI access: point pgsafe_install_wheelhouse at the directory and the
# role copies it to the host and installs with `pip --no-index`.
#   scripts/wheelhouse.sh OUT_DIR [PYTHON_VERSION] [PLATFORM]
# PYTHON_VERSION is the hosts' Python (default 3.11, Debian 12); PLATFORM a wheel platform tag
# (default manylinux_2_28_x86_64: glibc 2.28 or later, i.e. RHEL 8+, Debian 10+, Ubuntu 20.04+).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: scripts/wheelhouse.sh OUT_DIR [PYTHON_VERSION] [PLATFORM]}"
python_version="${2:-3.11}"
platform="${3:-manylinux_2_28_x86_64}"
pip=("${PIP_PYTHON:-${here}/.venv/bin/python}" -m pip)
# pip does not widen a --platform tag to the older manylinux tags the same hosts accept.
platforms=(--platform "$platform")
if [[ "$platform" =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
    for (( minor = BASH_REMATCH[1] - 1; minor >= 17; minor-- )); do
        platforms+=(--platform "manylinux_2_${minor}_${BASH_REMATCH[2]}")
    done
    platforms+=(--platform "manylinux2014_${BASH_REMATCH[2]}")
fi
mkdir -p "$out"
check_dir="$(mktemp -d)"
trap 'rm -rf "$check_dir"' EXIT
# Binary wheels only: a host without a compiler must not be asked to build anything.
"${pip[@]}" download --quiet --disable-pip-version-check --only-binary=:all: \
    --implementation cp --python-version "$python_version" "${platforms[@]}" \
    --requirement "${here}/roles/install/files/requirements.txt" --dest "$out"
# The packages and their dependencies resolve from this directory alone: prove it now, on
# the controller, rather than on a host in the middle of an install.
"${pip[@]}" download --quiet --disable-pip-version-check --only-binary=:all: --no-index --find-links "$out" \
    --implementation cp --python-version "$python_version" "${platforms[@]}" \
    --requirement "${here}/roles/install/files/requirements.txt" --dest "$check_dir"
printf 'wheelhouse %s: %d wheels for CPython %s on %s\n' "$out" "$(find "$out" -maxdepth 1 -name "*.whl" | wc -l)" "$python_version" "$platform"
