"""The prepared GPU check, rehearsed on the CPU (``--dry-run``), and the CPU-side speed scripts (input pipeline, val interval)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_LINE = "dry run: skipping the CUDA-only parts"


def test_gpu_check_dry_run_runs_every_step_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    dry_lines = [line for line in result.stdout.splitlines() if line.startswith("dry run")]
    assert len(dry_lines) == 1 and dry_lines[0].startswith(SKIP_LINE)  # one clear line says what a CPU cannot do
    assert "| size | network | setting | AMP |" in result.stdout
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    rows = report["rows"]
    assert {(r["network"], r["workers"], r["cache"]) for r in rows} == {
        (network, workers, cache)
        for network in ("default", "resnet18")
        for workers, cache in ((2, "none"), (0, "none"), (2, "memory"))
    }
    assert all(r["images_per_s"] > 0 and 0 <= r["data_wait_share"] <= 1 for r in rows)
    assert all(r["gpu_busy"] is None and r["peak_mem_mib"] is None and r["amp"] is False for r in rows)  # CPU
    assert report["amp"]["amp"] == report["amp"]["float32"]  # AMP is off on a CPU: both ran in float32
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]


def test_gpu_check_refuses_a_machine_without_cuda_unless_dry(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "PYTHONPATH": str(REPO)}
    env["CUDA_VISIBLE_DEVICES"] = ""  # a machine without CUDA, also when the suite runs on a GPU machine
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "--dry-run" in result.stderr


def test_wheels_folder_is_ignored_by_git():
    result = subprocess.run(["git", "check-ignore", ".whl/monai-1.6.1-py3-none-any.whl"], cwd=REPO, capture_output=True)
    assert result.returncode == 0


def test_pipeline_bench_measures_png_and_dicom_stages_and_loader_settings(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import pipeline_bench
    finally:
        sys.path.remove(str(REPO / "scripts"))
    code = pipeline_bench.main(
        ["--images", "8", "--size", "32", "--batch_size", "4", "--settings", "0,5", "--out", str(tmp_path)]
    )
    assert code == 0
    result = json.loads((tmp_path / "pipeline_bench.json").read_text())
    assert set(result["stages"]) == {"png", "dicom"}
    assert all(stage["decode_ms"] > 0 for stage in result["stages"].values())
    settings = {(r["format"], r["workers"], r["cache"]) for r in result["epochs"]}
    assert settings == {("png", 0, "none"), ("png", 2, "disk"), ("dicom", 0, "none"), ("dicom", 2, "disk")}
    assert all(r["images_per_s"] > 0 for r in result["epochs"])


def test_val_interval_study_finds_the_choice_an_even_interval_would_miss():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import val_interval_study
    finally:
        sys.path.remove(str(REPO / "scripts"))
    curve = [0.50, 0.70, 0.90, 0.80]  # best at epoch 3, which an interval of 2 never validates
    history = [{"epoch": e, "val": {"val_balanced_accuracy": v}} for e, v in enumerate(curve, 1)]
    changed, given_up = val_interval_study.choice_change(history, 2)
    assert changed and given_up == pytest.approx(0.10)
    assert val_interval_study.choice_change(history[:2], 2) == (False, 0.0)  # best at epoch 2: kept


def test_profile_epoch_times_validations_forward_pass_inside_its_row(tmp_path):
    # Two epochs of the real bundle: the evaluator's forward passes are timed (not the trainer's, which may be the
    # same network) and are part of the validation row; the overhead is printed with and without them.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "profile_epoch.py"), "--epochs", "2", "--output_dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    lines = result.stdout.splitlines()
    validation = next(line for line in lines if line.startswith("validation: "))
    words = validation.replace(",", "").split()
    whole, forward = float(words[1]), float(words[words.index("pass") + 1])
    assert 0.0 < forward <= whole
    overheads = [line for line in lines if line.startswith("overhead ")]
    shares = [float(line.split(": ")[1].split("%")[0]) for line in overheads]
    assert len(shares) == 2 and 0.0 < shares[0] < shares[1] < 100.0
