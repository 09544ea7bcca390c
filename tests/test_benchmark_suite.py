"""The benchmark suite (issue 28): data cells, their checks, and suite_tiny end to end on the embedded subset."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_monai.benchmark import RESULT_COLUMNS, run_benchmark
from alr_monai.benchmark_suite import cell_presets
from alr_monai.workflow import benchmark_preset_file

TINY_METHODS = ("ce", "ours")
TINY_CELLS = ("embedded_symmetric", "embedded_binary", "embedded_instance_weak")


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """suite_tiny run as two shards, then once without a shard (which finds every job done and writes the tables)."""
    out = tmp_path_factory.mktemp("suite") / "out"
    preset = benchmark_preset_file("suite_tiny")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared 2-core machine
    try:
        run_benchmark(preset, out, shard="1/2")
        first_half = {p.parent.parent.parent.parent.name for p in out.glob("*/*/*/seed0/metrics.json")}
        assert first_half, "shard 1/2 ran nothing"
        run_benchmark(preset, out, shard="2/2")
        run_benchmark(preset, out)
    finally:
        torch.set_num_threads(previous)
    return out


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_suite_results_have_one_row_per_method_cell_seed_round(suite_run):
    header, rows = _rows(suite_run / "results.csv")
    assert header == ["cell", *RESULT_COLUMNS]
    # 2 methods x 3 cells x 1 seed x (round 0 + 1 round of entropy)
    assert len(rows) == 12
    assert {(r["cell"], r["method"], r["round"]) for r in rows} == {
        (c, m, k) for c in TINY_CELLS for m in TINY_METHODS for k in "01"
    }
    kinds = {r["cell"]: (r["noise_kind"], float(r["noise_rate"])) for r in rows}
    assert kinds == {
        "embedded_symmetric": ("symmetric", 0.4),
        "embedded_binary": ("confusion", 0.3),
        "embedded_instance_weak": ("instance", 0.4),
    }
    for row in rows:
        assert math.isfinite(float(row["phase1_test_balanced_accuracy"]))
        assert math.isfinite(float(row["test_balanced_accuracy"]))
    # the injected noise is at the requested rate in every cell (noise.csv, as the simulated oracle reads it)
    for row in rows:
        assert float(row["noise_rate_true"]) == pytest.approx(float(row["noise_rate"]), abs=0.02)


def test_suite_cells_are_the_data_they_say(suite_run):
    run = suite_run / "embedded_binary" / "ours" / "confusion0.3" / "seed0"
    assert json.loads((run / "classes.json").read_text())["class_names"] == ["other", "basophil"]
    # binary 9:1 from a cap of 72: 72 of the rest, 8 basophils; confusion noise: flips go to the other class
    _, noise = _rows(suite_run / "embedded_binary" / "ours" / "confusion0.3" / "seed0" / "noise.csv")
    true = np.array([int(r["true_label"]) for r in noise])
    assert np.bincount(true).tolist() == [72, 8]
    # capped at 40 (8 classes) and at 12 per class (the weak regime); the embedded set's smaller classes stay
    for cell, kind, cap in (("embedded_symmetric", "symmetric0.4", 40), ("embedded_instance_weak", "instance0.4", 12)):
        _, noise = _rows(suite_run / cell / "ce" / kind / "seed0" / "noise.csv")
        counts = np.bincount([int(r["true_label"]) for r in noise], minlength=8)
        assert counts.max() == cap and len(counts) == 8


def test_suite_markdown_and_plots(suite_run):
    text = (suite_run / "results.md").read_text()
    assert "## Mean over cells and worst cell" in text
    for cell in TINY_CELLS:
        assert f"| {cell} |" in text
        assert (suite_run / cell / "results.md").is_file()  # each cell's own matrix tables
    assert "| ours | phase-1 bal. acc. |" in text and "| ce | entropy: final bal. acc. |" in text
    assert "| ours | per-class noise MAE |" in text and "| ours | entropy: gain over phase 1 |" in text
    # gain = final - phase 1, per seed, as results.csv has them
    _, rows = _rows(suite_run / "results.csv")
    final = [r for r in rows if (r["cell"], r["method"], r["round"]) == ("embedded_binary", "ours", "1")][0]
    gain = float(final["test_balanced_accuracy"]) - float(final["phase1_test_balanced_accuracy"])
    line = [
        row
        for row in text.split("## entropy: gain over phase 1 per cell")[1].splitlines()
        if row.startswith("| ours |")
    ][0]
    assert f"{gain:.3f}" in line
    # the worst cell names a cell
    worst = [line for line in text.splitlines() if line.startswith("| ours | phase-1 bal. acc. |")][0]
    assert any(f"({cell})" in worst for cell in TINY_CELLS)
    for name in ("by_cell_phase1.png", "by_cell_final_entropy.png"):
        assert (suite_run / name).stat().st_size > 1000


def test_suite_resume_runs_nothing_again(suite_run, capsys):
    timings = {cell: (suite_run / cell / "timings.csv").read_text() for cell in TINY_CELLS}
    run_benchmark(benchmark_preset_file("suite_tiny"), suite_run)
    assert "phase 1 (" not in capsys.readouterr().out
    assert {cell: (suite_run / cell / "timings.csv").read_text() for cell in TINY_CELLS} == timings


def _write(path: Path, preset: dict) -> Path:
    path.write_text(json.dumps(preset))
    return path


def test_suite_presets_parse_and_name_their_data(tmp_path):
    # the full suite's files need not exist to be checked: stand-ins with the right names
    for name in ("bloodmnist.npz", "breastmnist.npz"):
        (tmp_path / name).write_bytes(b"")
    path = benchmark_preset_file("suite")
    suite = json.loads(path.read_text())
    cells = cell_presets(suite, path, tmp_path)
    assert 6 <= len(cells) <= 8
    kinds = {kind for _, cell in cells for kind, _ in cell["noise_settings"]}
    assert {"symmetric", "pairflip", "confusion", "instance"} <= kinds
    assert any(cell["data"] is None for _, cell in cells)  # the embedded set
    assert {Path(cell["data"]).name for _, cell in cells if cell["data"]} == {"bloodmnist.npz", "breastmnist.npz"}
    assert set(suite["methods"]) == {"ce", "coteaching", "cleanlab", "ours"} and len(suite["seeds"]) == 3
    with pytest.raises(ValueError, match=r"cell 'blood_ir50_confusion0.4': data file .*bloodmnist.npz not found"):
        cell_presets(suite, path, tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ({"noise": ["symmetric", 0.4]}, "every cell is an object with a non-empty 'name'"),
        ({"name": "a b", "noise": ["symmetric", 0.4]}, "cell name must be unique"),
        ({"name": "a", "noise": ["uniform", 0.4]}, "unknown noise kind 'uniform'"),
        ({"name": "a"}, "give either noise"),
        ({"name": "a", "noise": ["symmetric", 0.4], "epochs": 3}, r"unknown key\(s\) \['epochs'\]"),
    ],
)
def test_bad_cells_are_refused_with_the_cell_named(tmp_path, cell, message):
    preset = _write(tmp_path / "s.json", {"seeds": [0], "methods": ["ce"], "cells": [cell]})
    with pytest.raises(ValueError, match=message):
        run_benchmark(preset, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_suite_refuses_data_flags_and_matrix_refuses_data_dir(tmp_path):
    suite = _write(
        tmp_path / "s.json", {"seeds": [0], "methods": ["ce"], "cells": [{"name": "a", "noise": ["symmetric", 0.4]}]}
    )
    with pytest.raises(ValueError, match="pass --data_dir"):
        run_benchmark(suite, tmp_path / "out", data="x.npz")
    with pytest.raises(ValueError, match="data and noise per cell"):
        run_benchmark(
            _write(tmp_path / "t.json", {**json.loads(suite.read_text()), "noise_rates": [0.4]}), tmp_path / "o"
        )
    with pytest.raises(ValueError, match="--data_dir is for suite presets"):
        run_benchmark(benchmark_preset_file("small"), tmp_path / "out", data_dir=str(tmp_path))
