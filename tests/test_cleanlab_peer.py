"""The cleanlab peer: the label-error ranking metric, stratified folds, the label_quality acquisition, noise
settings of several kinds, and a tiny benchmark with method cleanlab end to end (folds, final model, a relabel arm).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_benchmark import _tiny_npz
from torch import nn
from torch.utils.data import DataLoader

from alr_monai.algorithms.acquisition import ACQUISITION_NAMES, label_quality
from alr_monai.algorithms.metrics import label_error_ranking
from alr_monai.baselines.cleanlab_peer import stratified_folds, subset_items
from alr_monai.benchmark import RESULT_COLUMNS, load_preset, noise_settings, run_benchmark, summary_markdown
from alr_monai.keys import ACQUISITIONS
from alr_monai.relabel.acquire import acquire

# ---------------------------------------------------------------- label_error_ranking


def test_label_error_ranking_known_answer():
    # wrong given labels at positions 1 (score 0.9) and 3 (0.3); right ones score 0.1, 0.4, 0.2, 0.5
    given = [0, 0, 0, 0, 1, 1]
    true = [0, 1, 0, 1, 1, 1]
    scores = [0.1, 0.9, 0.4, 0.3, 0.2, 0.5]
    result = label_error_ranking(scores, given, true, ["a", "b"])
    assert result["label_error_auroc"] == pytest.approx(6 / 8)  # 0.9 beats all 4 right, 0.3 beats 2
    assert result["label_error_ap"] == pytest.approx((1 / 1 + 2 / 4) / 2)  # hits at ranks 1 and 4
    assert result["label_error_auroc/a"] == pytest.approx(3 / 4)
    assert math.isnan(result["label_error_auroc/b"])  # class b holds only right labels
    assert set(result) == {"label_error_auroc", "label_error_ap", "label_error_auroc/a", "label_error_auroc/b"}


def test_label_error_ranking_perfect_reversed_and_class_count():
    true = np.array([0, 1, 2, 0, 1, 2])
    given = np.array([1, 1, 2, 2, 1, 0])  # wrong at 0, 3, 5
    wrong = (given != true).astype(float)
    perfect = label_error_ranking(torch.tensor(wrong), given, true, 3)
    assert perfect["label_error_auroc"] == 1.0 and perfect["label_error_ap"] == 1.0
    assert set(perfect) >= {"label_error_auroc/0", "label_error_auroc/1", "label_error_auroc/2"}
    assert label_error_ranking(-wrong, given, true, 3)["label_error_auroc"] == 0.0
    clean = label_error_ranking([0.3, 0.2], [0, 1], [0, 1], 2)
    assert math.isnan(clean["label_error_auroc"]) and math.isnan(clean["label_error_ap"])
    with pytest.raises(ValueError, match="finite"):
        label_error_ranking([float("nan"), 0.0], [0, 1], [1, 1], 2)
    with pytest.raises(ValueError, match="one length"):
        label_error_ranking([0.0], [0, 1], [1, 1], 2)


# ---------------------------------------------------------------- folds and subsets


def test_stratified_folds_cover_every_sample_once_and_balance_labels():
    rng = np.random.default_rng(3)
    labels = rng.choice(5, size=203, p=[0.5, 0.3, 0.1, 0.07, 0.03])
    folds = stratified_folds(labels, 4, seed=7)
    assert folds.shape == labels.shape and set(folds.tolist()) == {0, 1, 2, 3}
    held_out = [np.flatnonzero(folds == k) for k in range(4)]
    assert np.array_equal(np.sort(np.concatenate(held_out)), np.arange(len(labels)))  # each sample exactly once
    sizes = [len(h) for h in held_out]
    assert max(sizes) - min(sizes) <= 1
    for label in range(5):
        counts = np.bincount(folds[labels == label], minlength=4)
        assert counts.max() - counts.min() <= 1, (label, counts)
    assert np.array_equal(folds, stratified_folds(labels, 4, seed=7))
    assert not np.array_equal(folds, stratified_folds(labels, 4, seed=8))
    with pytest.raises(ValueError, match="at least 2"):
        stratified_folds(labels, 1, 0)


def test_subset_items_keeps_full_set_indices():
    items = [{"index": i, "label": i % 2} for i in range(6)]
    chosen = subset_items(items, [4, 1])
    assert [item["index"] for item in chosen] == [4, 1] and chosen[0] is items[4]
    assert subset_items(items, None) == items
    with pytest.raises(IndexError, match="cleanlab#train_indices"):
        subset_items(items, [6])


# ---------------------------------------------------------------- label_quality acquisition


def test_label_quality_is_one_minus_cleanlab_self_confidence():
    from cleanlab.rank import get_label_quality_scores

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=40)
    labels = rng.integers(0, 5, size=40)
    ours = label_quality(torch.tensor(probs), torch.tensor(labels))
    theirs = get_label_quality_scores(labels, probs, method="self_confidence")
    np.testing.assert_allclose(ours.numpy(), 1.0 - theirs, atol=1e-12)
    with pytest.raises(ValueError, match="class indices"):
        label_quality(torch.tensor(probs), torch.full((40,), 5))
    assert "label_quality" in ACQUISITION_NAMES and "label_quality" in ACQUISITIONS


class LogitTable(nn.Module):
    """Returns a fixed logit row per sample (looked up by the integer image); records its mode."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.table[x.reshape(-1).long()]


def test_label_quality_acquisition_picks_the_least_believed_given_labels():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    given = [0, 0, 1, 0]  # p(given) = 0.9, 0.2, 0.4, 0.5: sample 1 first, then 2, then 3
    network = LogitTable(probs.log())
    network.train()
    items = [{"image": torch.tensor([i]), "label": given[i], "index": 10 + i} for i in range(4)]
    picked = acquire("label_quality", network, DataLoader(items, batch_size=3), 3, "cpu")
    assert picked.indices == [11, 12, 13]
    assert picked.scores == pytest.approx([0.8, 0.6, 0.5])
    assert network.modes and not any(network.modes) and network.training  # scored in eval mode, mode restored


# ---------------------------------------------------------------- noise settings and tables


def test_noise_settings_both_forms_and_errors(tmp_path):
    assert noise_settings({"noise_rates": [0.4, 0.6]}) == [("symmetric", 0.4), ("symmetric", 0.6)]
    assert noise_settings({"noise_kind": "pairflip", "noise_rates": [0.3]}) == [("pairflip", 0.3)]
    mixed = {"noise_settings": [["symmetric", 0.6], ["pairflip", 0.3]]}
    assert noise_settings(mixed) == [("symmetric", 0.6), ("pairflip", 0.3)]
    for bad, message in (
        ({"noise_settings": [["symmetric", 0.6]], "noise_rates": [0.4]}, "not both"),
        ({"noise_settings": [["uniform", 0.6]]}, "unknown noise kind"),
        ({"noise_settings": [[0.6]]}, r"\[kind, rate\]"),
        ({"noise_settings": [["symmetric", 0.6], ["symmetric", 0.6]]}, "twice"),
        ({"seeds": [0]}, "noise_rates"),
    ):
        with pytest.raises(ValueError, match=message):
            noise_settings(bad, "p.json")
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"methods": ["cleanlab"], "seeds": [0], "noise_settings": [["pair", 0.3]]}))
    with pytest.raises(ValueError, match=r"p\.json: unknown noise kind"):
        load_preset(preset)
    preset.write_text(json.dumps({"methods": ["cleanlab"], "noise_rates": [0.3], "cleanlab_folds": 1}))
    with pytest.raises(ValueError, match="cleanlab_folds"):
        load_preset(preset)


def test_summary_keeps_noise_kinds_apart():
    def row(kind, auroc, acc):
        return {
            **dict.fromkeys(RESULT_COLUMNS, ""),
            "method": "cleanlab",
            "noise_kind": kind,
            "noise_rate": 0.3,
            "seed": 0,
            "acquisition": "random",
            "round": 0,
            "test_balanced_accuracy": acc,
            "phase1_test_balanced_accuracy": acc,
            "label_error_auroc": auroc,
            "label_error_ap": 0.5,
        }

    table = summary_markdown([row("symmetric", 0.9, 0.7), row("pairflip", 0.6, 0.5)], rounds=0, budget=10)
    assert "label-error AUROC (AP)" in table
    assert "| cleanlab | pairflip 0.3 |" in table and "| cleanlab | symmetric 0.3 |" in table
    assert "0.900 (0.500)" in table and "0.600 (0.500)" in table


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cleanlab_benchmark(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    root = tmp_path_factory.mktemp("cleanlab")
    data = _tiny_npz(root / "tiny.npz")
    preset = root / "preset.json"
    preset.write_text(
        json.dumps(
            {
                "noise_settings": [["symmetric", 0.4]],
                "seeds": [0],
                "methods": ["cleanlab"],
                "max_epochs": 1,
                "cleanlab_folds": 2,
                "cleanlab_fold_epochs": 1,
                "acquisitions": ["label_quality"],
                "rounds": 1,
                "budget": 8,
                "recalibration_epochs": 1,
                "overrides": {"batch_size": 32, "network_factory#block_inplanes": [4, 8, 8, 8]},
            }
        )
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared 2-core machine
    try:
        started = time.perf_counter()
        out = run_benchmark(preset, root / "out", data=str(data))
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)
    return out, preset, seconds


def test_cleanlab_cell_and_its_relabel_arm(cleanlab_benchmark):
    out, _, seconds = cleanlab_benchmark
    print(f"tiny cleanlab benchmark: {seconds:.1f} s")
    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == RESULT_COLUMNS
        rows = list(reader)
    assert {(r["method"], r["noise_kind"], r["acquisition"], r["round"]) for r in rows} == {
        ("cleanlab", "symmetric", "label_quality", "0"),
        ("cleanlab", "symmetric", "label_quality", "1"),
    }
    for row in rows:
        for column in ("label_error_auroc", "label_error_ap", "selection_precision", "min_clean_recall"):
            assert math.isfinite(float(row[column])), (column, row)
        assert 0.0 < float(row["noise_rate_estimate"]) < 1.0
    assert int(rows[-1]["labels_spent"]) == 8  # the relabel arm ran on the cleanlab folder
    table = (out / "results.md").read_text()
    assert "| cleanlab | symmetric 0.4 |" in table and "label-error AUROC (AP)" in table

    run = out / "cleanlab" / "symmetric0.4" / "seed0"
    assert {p.name for p in (run / "cleanlab").glob("*.npz")} == {"oof_fold0.npz", "oof_fold1.npz", "label_issues.npz"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test" in metrics and metrics["cleanlab"]["folds"] == 2
    train = metrics["last"]["train"]
    issues = np.load(run / "cleanlab" / "label_issues.npz")["issues"]
    with open(run / "selection.csv", newline="") as handle:
        selection = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in selection] == list(range(96)) and all(r["id"] for r in selection)
    assert [r["trusted"] == "0" for r in selection] == issues.tolist()  # the pool = what cleanlab flagged
    assert train["noise_rate_estimate"] == pytest.approx(issues.mean())
    assert train["kept_fraction"] == pytest.approx(1 - issues.mean())
    assert {"clean_recall/0", "kept_fraction/3", "label_error_auroc/0"} <= set(train)


def test_rerun_and_an_interrupted_finish_do_not_retrain(cleanlab_benchmark):
    out, preset, _ = cleanlab_benchmark
    run = out / "cleanlab" / "symmetric0.4" / "seed0"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint_epoch=*.pt")}
    assert len(stamps) >= 3  # two folds and the final model (and the relabel arm)
    # a crash between the final model's test evaluation and the peer's own outputs
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["cleanlab"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "selection.csv").unlink()
    run_benchmark(preset, out, data=str(out.parent / "tiny.npz"))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint_epoch=*.pt")} == stamps
    assert "cleanlab" in json.loads((run / "metrics.json").read_text())
    assert (run / "selection.csv").is_file()
