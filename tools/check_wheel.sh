#!/usr/bin/env bash
# Build a wheel from the checkout and check it installs and works without the source tree.
set -euo pipefail
root=$(pwd); tmp=$(mktemp -d)
python -m build --wheel --outdir "$tmp/dist" . >"$tmp/build.log" 2>&1 || { tail -30 "$tmp/build.log"; exit 1; }
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
"$tmp/venv/bin/pip" install -q "$tmp"/dist/*.whl 2>&1 | grep -v "^WARNING: Location" || true
cd "$tmp"
"$tmp/venv/bin/python" - <<'PY'
import kdkit, pathlib, importlib.resources as r
assert 'site-packages' in kdkit.__file__, kdkit.__file__
PY
"$tmp/venv/bin/kdkit" --help >/dev/null
cd "$root"; rm -rf "$tmp"
echo "wheel ok"
