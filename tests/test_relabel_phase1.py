"""The phase 1 -> phase 2 handoff: phase 2 reads phase 1's ids, labels and classes and refuses a mismatch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from alr_monai.evaluation import evaluate_checkpoint
from alr_monai.networks import load_weights
from alr_monai.relabel import Phase1Mismatch, load_phase1_model, read_phase1
from alr_monai.utils import atomic_write_csv, atomic_write_json

CLASSES = ["normal", "benign", "malignant"]
IDS = ["a", "b", "c", "d"]
GIVEN = [0, 2, 1, 1]
TRUE = [0, 1, 1, 2]
TRUSTED = [1, 0, 1, 0]


def _items(ids=IDS, labels=GIVEN):
    return [
        {"id": i, "label": label, "index": n, "image": f"{i}.png"}
        for n, (i, label) in enumerate(zip(ids, labels, strict=True))
    ]


@pytest.fixture
def phase1_dir(tmp_path: Path) -> Path:
    """The files phase 1 leaves in its run folder, for four samples."""
    atomic_write_json(tmp_path / "classes.json", {"class_names": CLASSES})
    rows = [
        {
            "id": i,
            "index": n,
            "given_label": g,
            "loss": 0.5,
            "vog": "",
            "kept_by_net1": t,
            "kept_by_net2": t,
            "trusted": t,
        }
        for n, (i, g, t) in enumerate(zip(IDS, GIVEN, TRUSTED, strict=True))
    ]
    header = ["id", "index", "given_label", "loss", "vog", "kept_by_net1", "kept_by_net2", "trusted"]
    atomic_write_csv(tmp_path / "selection.csv", rows, header)
    atomic_write_json(tmp_path / "metrics.json", {"epoch": 3, "last": {"train": {"forget_rate": 0.25}}})
    # noise.csv covers the whole split, in its own order (phase 2 may train on a slice of it)
    noise = [{"id": i, "true_label": t, "noisy_label": g} for i, t, g in zip(IDS, TRUE, GIVEN, strict=True)]
    noise.append({"id": "z", "true_label": 0, "noisy_label": 2})
    atomic_write_csv(tmp_path / "noise.csv", list(reversed(noise)), ["id", "true_label", "noisy_label"])
    return tmp_path


def test_same_data_reads_phase1_outputs(phase1_dir):
    outputs = read_phase1(phase1_dir, _items(), CLASSES, TRUE)
    assert outputs.ids == IDS and outputs.given_labels == GIVEN and outputs.class_names == CLASSES
    assert outputs.trusted == [True, False, True, False] and outputs.forget_rate == 0.25
    assert read_phase1(phase1_dir, _items(), CLASSES).ids == IDS  # real data: no noise record needed


def test_another_label_is_refused_naming_file_row_and_id(phase1_dir):
    labels = list(GIVEN)
    labels[2] = 0
    with pytest.raises(Phase1Mismatch) as info:
        read_phase1(phase1_dir, _items(labels=labels), CLASSES, TRUE)
    message = str(info.value)
    assert f"{phase1_dir / 'selection.csv'} row 4" in message and "'c'" in message
    assert "'benign' (1)" in message and "'normal' (0)" in message and "simulation#noise_rate" in message


def test_other_ids_or_counts_are_refused(phase1_dir):
    with pytest.raises(Phase1Mismatch, match=r"selection.csv row 3: id 'b', but sample 1 .* is 'x'"):
        read_phase1(phase1_dir, _items(ids=["a", "x", "c", "d"]), CLASSES)
    with pytest.raises(Phase1Mismatch, match="phase 1 trained on 4 samples, this run loaded 3"):
        read_phase1(phase1_dir, _items()[:3], CLASSES)


def test_other_class_names_are_refused_naming_the_first_class(phase1_dir):
    with pytest.raises(Phase1Mismatch, match=r"classes.json.*class 1: phase 1 'benign', now 'Benign'"):
        read_phase1(phase1_dir, _items(), ["normal", "Benign", "malignant"])
    with pytest.raises(Phase1Mismatch, match=r"class 3: phase 1 None, now 'other'"):
        read_phase1(phase1_dir, _items(), [*CLASSES, "other"])


def test_other_simulated_truth_is_refused(phase1_dir):
    truth = list(TRUE)
    truth[3] = 0
    with pytest.raises(Phase1Mismatch, match=r"noise.csv row 3: id 'd'.*true label 2.*simulates true label 0"):
        read_phase1(phase1_dir, _items(), CLASSES, truth)


def test_missing_or_broken_phase1_files(phase1_dir):
    (phase1_dir / "noise.csv").unlink()
    with pytest.raises(FileNotFoundError, match="noise.csv"):
        read_phase1(phase1_dir, _items(), CLASSES, TRUE)
    (phase1_dir / "selection.csv").write_text("id,trusted\na,1\n")
    with pytest.raises(Phase1Mismatch, match=r"selection.csv: missing column\(s\) \['index', 'given_label'\]"):
        read_phase1(phase1_dir, _items(), CLASSES)
    (phase1_dir / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match="classes.json not found: run phase 1"):
        read_phase1(phase1_dir, _items(), CLASSES)


# ------------------------------------------------------------------------------------- the one model loader
def _net(width: int = 3) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, width))


def test_one_loader_for_bare_and_wrapped_state_dicts(tmp_path):
    source = _net()
    torch.save(source.state_dict(), tmp_path / "bare.pt")
    torch.save({"model": source.state_dict()}, tmp_path / "wrapped.pt")
    for name in ("bare.pt", "wrapped.pt"):
        target = load_weights(_net(), tmp_path / name)
        assert all(
            torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
        )


def test_a_model_that_does_not_fit_or_cannot_be_read_names_the_file(tmp_path):
    torch.save(_net(5).state_dict(), tmp_path / "other.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"(?s)other.pt does not fit this network.*network_def#num_peers"):
        load_phase1_model(_net(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"empty.pt cannot be read"):
        load_phase1_model(_net(), tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt not found: run phase 1"):
        load_phase1_model(_net(), tmp_path / "missing.pt")
    loader = [{"image": torch.zeros(2, 4), "label": torch.tensor([0, 1]), "index": torch.tensor([0, 1])}]
    with pytest.raises(ValueError, match=r"other.pt does not fit this network"):
        evaluate_checkpoint(_net(), loader, CLASSES, "cpu", tmp_path / "other.pt")
    report = evaluate_checkpoint(_net(5), loader, list("abcde"), "cpu", tmp_path / "other.pt")
    assert report["checkpoint"] == str(tmp_path / "other.pt")
