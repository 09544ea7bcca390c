#!/usr/bin/env bash
# One prepared command for a lent GPU machine (one H100/H200, 16 cores, Python 3.12 + torch, without monai, ignite,
# fire, pydicom, nibabel; nothing outside reachable). Under 8 minutes in all:
#   1. installs the wheels in .whl/ (made beforehand on the CPU machine by scripts/gpu_wheels.sh) into /tmp/alr_site;
#   2. runs the tests marked `cuda` (tests/test_cuda.py): AMP against float32, selection and VoG on CUDA against the
#      CPU, a checkpoint moved between CUDA and CPU;
#   3. runs scripts/gpu_check.py: phase-1 throughput at 28x28 and 224x224 (default network and ResNet-18; AMP,
#      channels_last, 0/4/8 workers, VoG off), printed as ONE table, and AMP against float32 on the embedded set.
# Everything it writes goes under $OUT (a new temporary folder when OUT is unset).
#   bash scripts/gpu_check.sh             # on the GPU machine (the device tool: carry [".whl"])
#   bash scripts/gpu_check.sh --dry-run   # on a CPU: the same steps at tiny sizes, CUDA-only parts skipped
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: bash scripts/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/alr_gpu_check.XXXXXX")}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
TOTAL_S="${GPU_CHECK_SECONDS:-450}"  # the device call's limit is 10 minutes; the issue asks for under 8
START=$SECONDS
tests_rc=0
if [ "$DRY" = 1 ]; then
    echo "dry run: skipping the CUDA-only parts (wheel install, pytest -m cuda, GPU busy share, peak GPU memory, AMP); tiny images, 1 epoch per setting"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device here; on a CPU run: bash scripts/gpu_check.sh --dry-run" >&2
        exit 2
    fi
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/alr_site \
            .whl/*.whl || { echo "gpu_check: installing .whl/ failed" >&2; exit 3; }
        export PYTHONPATH="$ROOT:/tmp/alr_site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check: no .whl/ here (run bash scripts/gpu_wheels.sh on the CPU machine and carry .whl); using what is installed"
        export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/nvidia_smi.txt"
    timeout 150 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/pytest_cuda.log"
    tests_rc=${PIPESTATUS[0]}
fi
remaining=$((TOTAL_S - (SECONDS - START)))
args=(--out "$OUT" --budget_s "$remaining")
[ "$DRY" = 1 ] && args+=(--dry-run)
timeout $((remaining + 60)) "$PYTHON" scripts/gpu_check.py "${args[@]}" 2>&1 | tee "$OUT/gpu_check.log"
check_rc=${PIPESTATUS[0]}
echo "gpu_check: cuda tests rc=$tests_rc, training check rc=$check_rc, $((SECONDS - START)) s; outputs in $OUT"
[ "$tests_rc" = 0 ] && [ "$check_rc" = 0 ]
