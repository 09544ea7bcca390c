"""The benchmark harness end to end on a tiny MedMNIST-layout file: files, table columns, finite numbers, resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_monai.benchmark import RESULT_COLUMNS, _shard_cells, _versus_best_markdown, run_benchmark


def _tiny_npz(path: Path, seed: int = 0) -> Path:
    """4 classes of 28x28 gray images whose brightness encodes the class, so a tiny net can learn something."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 96), ("val", 32), ("test", 32)):
        labels = np.arange(n) % 4
        images = (labels[:, None, None] * 60 + rng.integers(0, 40, size=(n, 28, 28))).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


# settings that make a benchmark cell run in seconds on the tiny file
TINY_OVERRIDES = {
    "coteaching#num_gradual": 1,
    "noise_estimate#estimate_epoch": 1,
    # 2-epoch runs: estimate after epoch 1 rather than wait for the network to level off (by the last epoch)
    "noise_estimate#latest_epoch": None,
    "vog#num_snapshots": 2,
    "batch_size": 32,
    "network_factory#block_inplanes": [4, 8, 8, 8],
}


def _run_tiny(root: Path, preset: dict) -> tuple[Path, Path]:
    """``preset`` on the tiny file, one thread (tiny tensors: threads only add overhead on a shared 2-core machine);
    returns the output folder and the preset file."""
    data = _tiny_npz(root / "tiny.npz")
    path = root / "preset.json"
    path.write_text(json.dumps(preset))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = run_benchmark(path, root / "out", data=str(data))
    finally:
        torch.set_num_threads(previous)
    return out, path


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    preset = {
        "noise_kind": "symmetric",
        "noise_rates": [0.4, 0.6],
        "seeds": [0],
        "methods": ["ce", "coteaching", "ours"],
        "max_epochs": 2,
        "acquisitions": ["entropy", "random"],
        "rounds": 1,
        "budget": 8,
        "recalibration_epochs": 1,
        "overrides": TINY_OVERRIDES,
    }
    return _run_tiny(tmp_path_factory.mktemp("benchmark"), preset)


def test_results_csv_has_every_cell_round_and_finite_numbers(benchmark_run):
    out, _ = benchmark_run
    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == RESULT_COLUMNS
        rows = list(reader)
    # 3 methods x 2 noise rates x 1 seed x 2 acquisitions x (round 0 + 1 round); CE relabels too (its pool is
    # every sample, since one network selects nothing)
    assert len(rows) == 24
    assert {(r["method"], r["noise_rate"], r["acquisition"], r["round"]) for r in rows} == {
        (m, n, a, k)
        for m in ("ce", "coteaching", "ours")
        for n in ("0.4", "0.6")
        for a in ("entropy", "random")
        for k in "01"
    }
    for row in rows:
        for column in (
            "test_balanced_accuracy",
            "phase1_test_balanced_accuracy",
            "selection_precision",
            "pool_noise_rate",
        ):
            assert math.isfinite(float(row[column])), (column, row)
        if row["method"] != "ce":  # one network estimates no noise rate
            assert 0.0 <= float(row["noise_rate_estimate"]) <= 0.95
        assert float(row["noise_rate_true"]) == pytest.approx(float(row["noise_rate"]), abs=0.02)
        if row["round"] == "1":
            assert int(row["labels_spent"]) == 8 and 0.0 <= float(row["yield"]) <= 1.0


def _final_rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["round"] == "1"]


def test_summary_table_and_plots(benchmark_run):
    out, _ = benchmark_run
    table = (out / "results.md").read_text()
    for column in (
        "phase-1 bal. acc.",
        "selection precision",
        "min clean recall",
        "noise estimate (truth)",
        "per-class noise MAE",
        "label-error AUROC (AP)",
    ):
        assert column in table
    for acquisition in ("entropy", "random"):
        assert f"{acquisition}: final bal. acc." in table and f"{acquisition}: yield (pool noise)" in table
    summary, comparisons = table.split("Paired comparisons")
    body = [line for line in summary.splitlines() if line.startswith(("| ce", "| coteaching", "| ours"))]
    assert len(body) == 6
    label_error = summary.splitlines()[2].split(" | ").index("label-error AUROC (AP)")
    for line in body:  # CE has no noise-rate estimate (nor its per-class error); every other cell holds a number
        cells = line.split(" | ")
        cells.pop(label_error)  # a method's label-error ranking is there only if its handlers record one
        assert " | ".join(cells).count("n/a") == (2 if line.startswith("| ce") else 0), line
    header = (
        "| method | noise | phase-1 bal. acc. minus co-teaching's (same seeds) | minus cleanlab's "
        "| label-error AUROC minus cleanlab's | entropy gain / random gain |"
    )
    assert header in comparisons
    assert "| coteaching | symmetric 0.4 | 0.000 |" in comparisons  # co-teaching against itself
    assert len([line for line in comparisons.splitlines() if line.startswith(("| ce", "| ours"))]) == 4
    versus = comparisons.split("minus the other methods' (ce, coteaching, any acquisition)")[1]
    assert "| noise | best other configuration (mean) | ours (entropy) minus it | ours (random) minus it |" in versus
    rows = {r["method"] + r["acquisition"] + r["noise_rate"]: r for r in _final_rows(out)}
    best = max(
        float(rows[m + a + "0.4"]["test_balanced_accuracy"])
        for m in ("ce", "coteaching")
        for a in ("entropy", "random")
    )
    expected = float(rows["oursentropy0.4"]["test_balanced_accuracy"]) - best
    # one seed: the best configuration is that seed's best run, so both columns agree
    assert f"| {expected:.3f} | " in versus.split("| symmetric 0.4 |")[1].splitlines()[0]
    assert f"| {expected:.3f} (n = 1) |" in versus.split("| symmetric 0.4 |")[1].splitlines()[0]
    for name in (
        "clean_recall_noise0.6.png",
        "test_balanced_accuracy_vs_labels_noise0.6.png",
        "yield_vs_labels_noise0.4.png",
    ):
        assert (out / name).stat().st_size > 1000


def test_versus_best_pairs_by_seed_against_the_best_configuration_and_each_seeds_best_run():
    def row(method: str, acquisition: str, seed: int, accuracy: float) -> dict:
        return {
            "method": method,
            "noise_kind": "pairflip",
            "noise_rate": "0.3",
            "seed": str(seed),
            "acquisition": acquisition,
            "round": "5",
            "test_balanced_accuracy": str(accuracy),
        }

    # co-teaching + entropy is the best configuration on average (0.80); CE + random wins seed 1 alone (0.90)
    rows = [
        *(row("coteaching", "entropy", s, a) for s, a in enumerate((0.80, 0.75, 0.85))),
        *(row("ce", "random", s, a) for s, a in enumerate((0.70, 0.90, 0.70))),
        *(row("ours", "entropy", s, a) for s, a in enumerate((0.82, 0.78, 0.86))),
        {**row("ours", "entropy", 0, 0.10), "round": "4"},  # an earlier round is ignored
    ]
    line = _versus_best_markdown(rows, rounds=5).split("| pairflip 0.3 |")[1].splitlines()[0]
    cells = [cell.strip() for cell in line.strip(" |").split("|")]
    assert cells[0] == "coteaching + entropy (0.800)"
    assert cells[1] == "0.020 ± 0.010"  # 0.02, 0.03, 0.01
    assert cells[2] == "-0.030 ± 0.078 (n = 3)"  # 0.02, -0.12, 0.01
    assert _versus_best_markdown([r for r in rows if r["method"] == "ours"], rounds=5) == ""


def test_rerun_resumes_without_retraining(benchmark_run):
    out, preset = benchmark_run
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint_epoch=*.pt")}
    run_benchmark(preset, out, data=str(out.parent / "tiny.npz"))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint_epoch=*.pt")} == stamps


def test_timings_log_every_step(benchmark_run):
    out, _ = benchmark_run
    with open(out / "timings.csv", newline="") as handle:
        steps = {(r["method"], r["noise_rate"], r["step"]): float(r["seconds"]) for r in csv.DictReader(handle)}
    assert len(steps) == 3 * 2 * 3 and all(seconds > 0 for seconds in steps.values())


def test_shards_split_the_matrix_and_mix_methods():
    methods = ["ce", "coteaching", "paper_recipe", "ours"]
    cells = [(m, rate, seed) for rate in (0.4, 0.6, 0.8) for seed in (0, 1, 2) for m in methods]
    shards = [_shard_cells(cells, f"{k}/2", len(methods)) for k in (1, 2)]
    assert sorted(number for shard in shards for number, _ in shard) == list(range(1, 37))
    for shard in shards:
        assert len(shard) == 18
        assert all(4 <= sum(c[0] == m for _, c in shard) <= 5 for m in methods)
    assert _shard_cells(cells, None, 4) == list(enumerate(cells, 1))
    for bad in ("3/2", "0/2", "half"):
        with pytest.raises(ValueError, match="shard"):
            _shard_cells(cells, bad, 4)


def test_shards_of_a_one_method_matrix_share_the_cells():
    cells = [("ours", rate, seed) for rate in (0.4, 0.6) for seed in (0, 1, 2)]
    shards = [[number for number, _ in _shard_cells(cells, f"{k}/2", 1)] for k in (1, 2)]
    assert shards == [[1, 3, 5], [2, 4, 6]]


def test_cells_whose_folders_are_gone_keep_their_results_rows_and_are_not_rerun(benchmark_run, tmp_path, capsys):
    out, preset = benchmark_run
    copy = tmp_path / "out"
    copy.mkdir()
    # only the matrix's record survives (as when a finished matrix is kept in docs/ without its run folders)
    (copy / "results.csv").write_bytes((out / "results.csv").read_bytes())
    capsys.readouterr()
    run_benchmark(preset, copy, data="unused: every cell is recorded")
    assert "phase 1 (" not in capsys.readouterr().out
    with open(out / "results.csv", newline="") as a, open(copy / "results.csv", newline="") as b:
        assert list(csv.DictReader(a)) == list(csv.DictReader(b))
    assert (copy / "results.md").read_text() == (out / "results.md").read_text()


# ------------------------------------------------------------------ issue 28 item 5: ours_refit
@pytest.fixture(scope="module")
def refit_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    preset = {
        "noise_settings": [["symmetric", 0.4]],
        "seeds": [0],
        "methods": ["ours_refit"],
        "max_epochs": 2,
        "acquisitions": ["entropy"],
        "rounds": 1,
        "budget": 8,
        "recalibration_epochs": 1,
        "overrides": {**TINY_OVERRIDES, "imbalance#logit_adjustment": 1.0},
    }
    return _run_tiny(tmp_path_factory.mktemp("refit"), preset)[0]


def test_refit_trains_on_the_selections_trusted_set_and_rounds_run_on_it(refit_benchmark):
    run_dir = refit_benchmark / "ours_refit" / "symmetric0.4" / "seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    selection = json.loads((run_dir / "selection" / "metrics.json").read_text())
    with open(run_dir / "selection.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(run_dir / "selection" / "selection.csv", newline="") as handle:
        assert rows == list(csv.DictReader(handle))  # the pool of the rounds is what our selection suspected
    trusted = sum(row["trusted"] == "1" for row in rows)
    assert metrics["refit"]["num_trusted"] == trusted and metrics["refit"]["num_samples"] == len(rows) == 96
    assert 0 < trusted < 96
    assert metrics["last"]["train"]["selection_precision"] == selection["last"]["train"]["selection_precision"]
    assert "balanced_accuracy" in metrics["test"]
    # the refitted model is one network (the CE recipe), from scratch: not the selection's two peers
    state = torch.load(run_dir / "models" / "model.pt", weights_only=True)
    assert not any(key.startswith("peers.1.") for key in state)
    with open(refit_benchmark / "results.csv", newline="") as handle:
        results = [row for row in csv.DictReader(handle) if row["method"] == "ours_refit"]
    assert {row["round"] for row in results} == {"0", "1"}


def test_every_benchmark_method_names_presets_that_exist():
    # a method whose preset was renamed would otherwise fail only hours into a suite run
    from alr_monai.benchmark import METHOD_PRESETS
    from alr_monai.workflow import preset_files

    for method, presets in METHOD_PRESETS.items():
        files = preset_files(presets)
        assert len(files) == len(presets), method
        assert all(Path(f).is_file() for f in files), method
    assert METHOD_PRESETS["ours_prototype_estimate"] == ["prototype_estimate"]
