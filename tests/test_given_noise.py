"""Noise kind ``given``: real noisy labels from the data run through `alr train`, `alr relabel` (the simulated
oracle answers from the truth) and `alr benchmark` like injected noise (issue 28, item 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_monai import cli
from alr_monai.benchmark import run_benchmark

TINY = {
    "network_factory#block_inplanes": [4, 8, 8, 8],
    "max_epochs": 2,
    "batch_size": 32,
}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def noisy_npz(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """4 classes whose brightness encodes the class; a class-dependent share of the training labels is wrong in
    train_labels_noisy (class 0: none, class 3: half), as a second annotation pass might be."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 96), ("val", 32), ("test", 32)):
        labels = np.arange(n) % 4
        images = (labels[:, None, None] * 60 + rng.integers(0, 40, size=(n, 28, 28))).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.reshape(-1, 1).astype(np.uint8)
    truth = arrays["train_labels"].reshape(-1).astype(np.int64)
    wrong = rng.random(96) < truth / 6  # 0, 1/6, 1/3, 1/2 by class
    noisy = np.where(wrong, (truth + rng.integers(1, 4, size=96)) % 4, truth)
    arrays["train_labels_noisy"] = noisy.astype(np.uint8)
    path = tmp_path_factory.mktemp("given") / "real_noise.npz"
    np.savez(path, **arrays)
    return path, truth, noisy


@pytest.fixture(scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_given_through_alr_train_and_relabel(noisy_npz, one_thread, tmp_path):
    path, truth, noisy = noisy_npz
    run_dir = tmp_path / "run"
    tiny = tmp_path / "tiny.json"  # the network size is internal wiring: a preset file sets it
    tiny.write_text(json.dumps({"network_factory#block_inplanes": [4, 8, 8, 8], "noise_estimate#estimate_epoch": 1}))
    argv = ["train", "--output_dir", str(run_dir), "--preset", f"['smoke', '{tiny}']", "--dataset_path", str(path)]
    cli.main([*argv, "--simulation#noise_kind", "given", "--max_epochs", "2", "--batch_size", "32"])
    # noise.csv written as for injected noise: the data's noisy labels against its truth
    noise = _rows(run_dir / "noise.csv")
    assert [int(r["noisy_label"]) for r in noise] == noisy.tolist()
    assert [int(r["true_label"]) for r in noise] == truth.tolist()
    # training saw the noisy labels (selection.csv's given labels), and the truth only as a metric
    selection = {r["id"]: int(r["given_label"]) for r in _rows(run_dir / "selection.csv")}
    assert [selection[r["id"]] for r in noise] == noisy.tolist()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["last"]["train"]["noise_rate_true"] == pytest.approx((noisy != truth).mean())
    # the simulated oracle answers from the truth
    cli.main(["relabel", "--run_dir", str(run_dir), "--relabel#round_budget", "12", "--relabel#num_rounds", "1"])
    audit = _rows(run_dir / "relabel" / "audit.csv")
    assert len(audit) == 12
    by_id = {r["id"]: int(r["true_label"]) for r in noise}
    names = json.loads((run_dir / "classes.json").read_text())["class_names"]
    assert names == ["0", "1", "2", "3"]  # so an answer reads the same as a name or an index
    assert all(int(row["new_label"]) == by_id[row["id"]] for row in audit)
    assert any(row["action"] == "changed" for row in audit)


def test_given_through_alr_benchmark(noisy_npz, one_thread, tmp_path):
    path, truth, noisy = noisy_npz
    preset = tmp_path / "given.json"
    preset.write_text(
        json.dumps(
            {
                "noise_settings": [["given", 0.0]],
                "seeds": [0],
                "methods": ["ce", "ours"],
                "max_epochs": 2,
                "acquisitions": ["entropy"],
                "rounds": 1,
                "budget": 8,
                "recalibration_epochs": 1,
                "overrides": {
                    "coteaching#num_gradual": 1,
                    "noise_estimate#estimate_epoch": 1,
                    "vog#num_snapshots": 2,
                    **TINY,
                },
            }
        )
    )
    out = run_benchmark(preset, tmp_path / "out", data=str(path))
    rows = _rows(out / "results.csv")
    assert {(r["method"], r["noise_kind"], r["round"]) for r in rows} == {
        (m, "given", k) for m in ("ce", "ours") for k in "01"
    }
    for row in rows:
        assert float(row["noise_rate_true"]) == pytest.approx((noisy != truth).mean(), abs=1e-6)
    for method in ("ce", "ours"):
        noise = _rows(out / method / "given0" / "seed0" / "noise.csv")
        assert [int(r["noisy_label"]) for r in noise] == noisy.tolist()
    # round 1's errors found are the oracle's corrections of given labels that differ from the truth
    assert all(int(r["errors_found"]) <= 8 for r in rows if r["round"] == "1")


def test_given_without_noisy_labels_is_a_clear_error(one_thread, tmp_path, capsys):
    code = 0
    try:
        cli.main(
            ["train", "--output_dir", str(tmp_path / "run"), "--simulation#noise_kind", "given", "--max_epochs", "1"]
        )
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert "train_labels_noisy" in capsys.readouterr().err


def _png_manifest(root: Path, imagefile_png, noisy_value=None) -> tuple[Path, dict, dict]:
    """A manifest of 24 PNGs (16 train, 4 val, 4 test) with a label column (the truth) and label_noisy, where
    4 training labels are flipped; returns (manifest, truth by id, noisy label by id)."""
    rng = np.random.default_rng(0)
    rows, truth, noisy = [], {}, {}
    for i in range(24):
        label = ("abnormal", "normal")[i % 2]
        pixels = (rng.integers(0, 100, size=(20, 20)) + (150 if label == "abnormal" else 0)).astype(np.uint8)
        imagefile_png(root / f"img{i}.png", pixels)
        split = "train" if i < 16 else "val" if i < 20 else "test"
        given = ("normal" if label == "abnormal" else "abnormal") if split == "train" and i % 4 == 1 else label
        if noisy_value is not None and i == 3:
            given = noisy_value
        rows.append([f"s{i}", f"img{i}.png", label, given, split])
        if split == "train":
            truth[f"s{i}"], noisy[f"s{i}"] = label, given
    path = root / "m.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "label", "label_noisy", "split"])
        writer.writerows(rows)
    return path, truth, noisy


def test_given_through_a_manifest_column(one_thread, tmp_path, imagefile_png):
    manifest, truth, noisy = _png_manifest(tmp_path / "data", imagefile_png)
    run_dir = tmp_path / "run"
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"network_factory#block_inplanes": [4, 8, 8, 8], "batch_size": 4}))
    argv = ["train", "--manifest", str(manifest), "--output_dir", str(run_dir), "--preset", str(tiny)]
    cli.main([*argv, "--noisy_label_column", "label_noisy", "--max_epochs", "1", "--image_size", "[16,16]"])
    names = json.loads((run_dir / "classes.json").read_text())["class_names"]
    noise = {r["id"]: r for r in _rows(run_dir / "noise.csv")}
    assert set(noise) == set(truth)
    assert all(names[int(noise[i]["true_label"])] == truth[i] for i in truth)
    assert all(names[int(noise[i]["noisy_label"])] == noisy[i] for i in truth)
    # trained on the noisy column
    selection = {r["id"]: names[int(r["given_label"])] for r in _rows(run_dir / "selection.csv")}
    assert selection == noisy
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["last"]["train"]["noise_rate_true"] == pytest.approx(4 / 16)
    # the simulated oracle answers from the label column
    budget = ["--relabel#round_budget", "6", "--relabel#num_rounds", "1", "--relabel#recalibration_epochs", "1"]
    cli.main(["relabel", "--run_dir", str(run_dir), *budget])
    audit = _rows(run_dir / "relabel" / "audit.csv")
    assert len(audit) == 6
    assert all(row["new_label"] == truth[row["id"]] for row in audit)


def test_given_manifest_column_errors_name_the_row(one_thread, tmp_path, imagefile_png, capsys):
    manifest, _, _ = _png_manifest(tmp_path / "data", imagefile_png, noisy_value="unsure")
    argv = ["train", "--manifest", str(manifest), "--output_dir", str(tmp_path / "run"), "--max_epochs", "1"]
    for column, message in (
        ("label_noisy", "row 5: label_noisy 'unsure' is not a class"),
        ("second", "no column 'second'"),
    ):
        with pytest.raises(SystemExit) as stop:
            cli.main([*argv, "--noisy_label_column", column, "--image_size", "[16,16]"])
        assert stop.value.code == 2
        assert message in capsys.readouterr().err
