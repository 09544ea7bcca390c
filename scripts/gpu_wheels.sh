#!/usr/bin/env bash
# Run on the CPU machine BEFORE a GPU session: gathers into .whl/ (git-ignored) the wheels that the lent GPU machine
# (Python 3.12, torch 2.11, no internet) lacks, pinned to the versions this checkout's venv has, as the device tool's
# README describes. scripts/gpu_check.sh installs them there with --no-index --no-deps into a --target folder.
#   bash scripts/gpu_wheels.sh            # PYTHON=path/to/venv/python to read the versions from another venv
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    for candidate in "$ROOT/.venv/bin/python" "$ROOT/../main/.venv/bin/python" python3; do
        if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
    done
fi
# What the device lacks: the project's own dependencies the image does not hold, and what those need beyond it
# (fire needs termcolor; monai, ignite and nibabel need numpy / packaging / typing-extensions, which it holds).
PACKAGES=(monai pytorch-ignite fire termcolor pydicom nibabel)
PINS=()
for name in "${PACKAGES[@]}"; do
    version="$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"
    PINS+=("$name==$version")
done
echo "wheels for Python 3.12 from the versions in $PYTHON: ${PINS[*]}"
rm -rf .whl
mkdir -p .whl
for pin in "${PINS[@]}"; do
    # --platform any-wheel fallback: pure-Python wheels (all of these) match every platform tag pip is given.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$pin"
done
ls -1 .whl
du -sh .whl
