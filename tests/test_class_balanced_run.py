"""Phase 1 with the class-balanced sampler, then a relabel round, through `alr` (issue 28, item 5).

Class-balanced draws with replacement leave part of a large class out of any one epoch, and some of it out of
every epoch of a short run; selection.csv must still name every sample, or phase 2 refuses the run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from alr_monai import cli


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_class_balanced_phase1_names_every_sample_and_phase2_runs(tmp_path):
    rng = np.random.default_rng(0)
    counts = {"train": [80, 8, 8, 8], "val": [8, 8, 8, 8], "test": [8, 8, 8, 8]}
    arrays = {}
    for split, per_class in counts.items():
        labels = np.repeat(np.arange(4), per_class)
        images = (labels[:, None, None] * 60 + rng.integers(0, 40, size=(len(labels), 28, 28))).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.reshape(-1, 1).astype(np.uint8)
    data = tmp_path / "long_tail.npz"
    np.savez(data, **arrays)
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"network_factory#block_inplanes": [4, 8, 8, 8], "noise_estimate#estimate_epoch": 1}))
    run_dir = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli.main(
            ["train", "--output_dir", str(run_dir), "--preset", f"['smoke', 'class_balanced', '{tiny}']"]
            + ["--dataset_path", str(data), "--max_epochs", "2", "--batch_size", "16", "--simulation#noise_rate", "0.2"]
        )
        selection = _rows(run_dir / "selection.csv")
        noise = _rows(run_dir / "noise.csv")
        # every sample named with its given label, drawn or not; those never drawn have no loss and are not trusted
        assert [r["id"] for r in selection] == [r["id"] for r in noise]
        assert [int(r["given_label"]) for r in selection] == [int(r["noisy_label"]) for r in noise]
        never_drawn = [r for r in selection if r["loss"] == ""]
        assert never_drawn, "2 epochs of 104 class-balanced draws leave some of the 80 in class 0 undrawn"
        assert {r["trusted"] for r in never_drawn} == {"0"}
        cli.main(["relabel", "--run_dir", str(run_dir), "--relabel#round_budget", "8", "--relabel#num_rounds", "1"])
    finally:
        torch.set_num_threads(threads)
    assert len(_rows(run_dir / "relabel" / "audit.csv")) == 8
