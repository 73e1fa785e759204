#!/usr/bin/env bash
# ansible-test sanity, offline-capable, from a real copy of the collection.
#
# ansible-test needs the collection at .../ansible_collections/NAMESPACE/NAME as a
# real directory (not a symlink), and it lists content through git. The copy holds
# every tracked or untracked-but-not-ignored file of the work tree (so files not
# committed yet are checked too), and gets its own `git init` so ansible-test
# treats it as the content root instead of walking up to this repository, where
# .build/ is ignored.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$root/.venv}
python=$venv/bin/python
dest=$root/.build/sanity/ansible_collections/pgsafe/backup

# --- pip bootstrap ------------------------------------------------------------------
# ansible-test fetches get-pip.py from ci-files.testing.ansible.com, which is not
# reachable here. A cached get_pip_<ver>.py that runs pip from the PyPI wheel of the
# same version is accepted in its place.
pip_ver=$("$python" -c "import re,inspect,ansible_test._internal.python_requirements as r; print(re.search(r\"pip='([0-9.]+)'\", inspect.getsource(r.get_venv_packages)).group(1))")
cache=$HOME/.ansible/test/cache
pip_src=$cache/pgsafe-pip-$pip_ver/src
get_pip=$cache/get_pip_${pip_ver//./_}.py
if [[ ! -f $pip_src/pip/__init__.py || ! -f $get_pip ]] || ! grep -qF "$pip_src" "$get_pip"; then
    echo "sanity: bootstrapping pip $pip_ver for ansible-test"
    tmp=$(mktemp -d)
    "$python" -m pip download -q --disable-pip-version-check --no-deps "pip==$pip_ver" -d "$tmp"
    rm -rf "$pip_src"
    mkdir -p "$pip_src"
    "$python" -m zipfile -e "$tmp/pip-$pip_ver-py3-none-any.whl" "$pip_src"
    rm -rf "$tmp"
    cat >"$get_pip" <<PY
import sys
sys.path.insert(0, "$pip_src")
from pip._internal.cli.main import main as pip_main
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(pip_main(["install", "--upgrade", "--force-reinstall"] + args))
PY
fi

# --- copy of the tree ---------------------------------------------------------------
rm -rf "$dest"
mkdir -p "$dest"
cd "$root"
git ls-files -z --cached --others --exclude-standard --deduplicate |
    while IFS= read -r -d '' path; do
        # tracked files deleted in the work tree are skipped
        if [[ -e $path || -L $path ]]; then printf '%s\0' "$path"; fi
    done |
    tar --null -T - -cf - | tar -xf - -C "$dest"
git -C "$dest" init -q

# --- run ----------------------------------------------------------------------------
cd "$dest"
export PATH=$venv/bin:$PATH
exec "$venv/bin/ansible-test" sanity --python 3.11 --color no "$@"
