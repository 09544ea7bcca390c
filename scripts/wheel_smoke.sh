#!/usr/bin/env bash
# Packaging smoke test: build a wheel (not an editable install), install it into a fresh venv, and run `alr`
# from a temporary folder outside the repository, so the bundle and presets must come from the package data.
# Usage: scripts/wheel_smoke.sh [PYTHON]   (PYTHON builds the wheel: default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
build_python="${1:-.venv/bin/python}"
base_python="${BASE_PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp" build alr_monai.egg-info' EXIT
started=$SECONDS

"$build_python" -m pip wheel . --no-deps -q -w "$tmp/dist"  # isolated: setuptools as pyproject.toml asks
rm -rf build alr_monai.egg-info
wheel="$(ls "$tmp"/dist/alr_monai-*.whl)"

"$base_python" -m venv "$tmp/venv"
# torch first, pinned, so pip takes the local CPU wheel and never a CUDA build.
"$tmp/venv/bin/pip" install -q "$torch_spec"
"$tmp/venv/bin/pip" install -q "$wheel"
echo "wheel-smoke: installed $(basename "$wheel") into a fresh venv in $((SECONDS - started)) s"

cd "$tmp" # no repository here: configs can only come from the installed package
alr="$tmp/venv/bin/alr"
"$alr" train --help > help.txt
grep -q -- "--max_epochs (default 30)" help.txt
grep -q -- "--relabel#acquisition" <("$alr" relabel --help)
OMP_NUM_THREADS=1 "$alr" train --preset smoke --max_epochs 1 --device cpu --output_dir run > train.log 2>&1 || {
    tail -30 train.log
    exit 1
}
test -s run/models/model.pt
test -s run/selection.csv
python_of_venv="$tmp/venv/bin/python"
"$python_of_venv" - <<'PY'
import json
from pathlib import Path

saved = json.loads(Path("run/run_config.json").read_text())
packaged = [f for f in saved["config_files"] if "site-packages" in f]
assert packaged == saved["config_files"], f"config files not from the installed package: {saved['config_files']}"
assert json.loads(Path("run/metrics.json").read_text())["epoch"] == 1
PY
OMP_NUM_THREADS=1 "$alr" relabel --run_dir run --relabel#num_rounds 1 --relabel#round_budget 10 \
    --relabel#recalibration_epochs 1 > relabel.log 2>&1 || {
    tail -30 relabel.log
    exit 1
}
test -s run/relabel/labels_cleaned.csv
echo "wheel-smoke: alr train and alr relabel from a wheel in a fresh venv passed in $((SECONDS - started)) s"
