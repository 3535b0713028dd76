#!/usr/bin/env bash
# Build a wheel from the checkout and check it installs and works without the source tree.
set -euo pipefail
root=$(pwd); tmp=$(mktemp -d)
python -m build --wheel --outdir "$tmp/dist" . >"$tmp/build.log" 2>&1 || { tail -30 "$tmp/build.log"; exit 1; }
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "torch==$(python3 tools/readme_commands.py torch)" 2>&1 | grep -v "^WARNING: Location" || true
"$tmp/venv/bin/pip" install -q "$tmp"/dist/*.whl 2>&1 | grep -v "^WARNING: Location" || true
cd "$tmp"
"$tmp/venv/bin/python" - <<'PY'
import kdkit, pathlib, importlib.resources as r
assert 'site-packages' in kdkit.__file__, kdkit.__file__
PY
"$tmp/venv/bin/kdkit" --help >/dev/null
# the packaged recipes and configs are found, and a tiny recipe runs from the installed package
"$tmp/venv/bin/kdkit" run distill --list-parameters | grep -q '^out_dir'
cat > "$tmp/tiny.yaml" <<'YAML'
n_train_blocks: 8
n_eval_blocks: 2
seq_len: 32
batch_size: 4
k: 8
eval_steps: 0
run_baseline: false
stages: [{name: one, max_steps: 2, learning_rate: 1.0e-3}]
YAML
HF_HUB_OFFLINE=1 MPLBACKEND=Agg "$tmp/venv/bin/kdkit" run distill -f "$tmp/tiny.yaml" --out "$tmp/run" >"$tmp/run.log" 2>&1 || { tail -30 "$tmp/run.log"; exit 1; }
test -f "$tmp/run/metrics.json" && test -f "$tmp/run/r01_distill.ipynb"
cd "$root"; rm -rf "$tmp"
echo "wheel ok"
