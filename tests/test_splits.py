"""``alr manifest split``: stratified by label, grouped by patient, seeded; the manifest keeps its other columns."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from alr_monai import cli
from alr_monai.data.manifest import load_manifest
from alr_monai.data.splits import assign_splits


def test_no_patient_spans_two_splits_and_every_class_is_split_near_its_shares():
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=600, p=[0.7, 0.25, 0.05])
    groups = [f"p{i // 4}" for i in range(600)]  # four images per patient, labels mixed within a patient
    splits = assign_splits(labels, groups, (0.7, 0.15, 0.15), seed=3)
    for patient in set(groups):
        assert len({s for s, g in zip(splits, groups, strict=True) if g == patient}) == 1
    for c in range(3):
        counts = Counter(s for s, label in zip(splits, labels, strict=True) if label == c)
        total = sum(counts.values())
        for name, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
            assert abs(counts[name] - share * total) <= max(4, 0.05 * total), (c, counts)
    assert splits == assign_splits(labels, groups, (0.7, 0.15, 0.15), seed=3)  # seeded
    assert splits != assign_splits(labels, groups, (0.7, 0.15, 0.15), seed=4)


def test_rows_without_a_patient_are_placed_alone_and_a_zero_share_gets_nothing():
    labels = [0, 1] * 20
    splits = assign_splits(labels, [None] * 40, (0.8, 0.2, 0.0))
    assert Counter(splits) == {"train": 32, "val": 8}


@pytest.mark.parametrize("fractions", [(0.5, 0.3, 0.3), (1.2, -0.1, -0.1), (0.5, 0.5)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError, match="split fractions"):
        assign_splits([0, 1], ["a", "b"], fractions)


def test_cli_split_keeps_columns_and_rows_and_refuses_to_replace_a_split(tmp_path, imagefile_png, capsys):
    images = [imagefile_png(tmp_path / f"img{i}.png", np.full((8, 8), i, dtype=np.uint8)) for i in range(30)]
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "label", "patient_id", "site"])
        for i, image in enumerate(images):
            writer.writerow([f"s{i}", image.name, "ab"[i % 2], f"p{i // 2}", "north"])
    out = tmp_path / "split.csv"
    cli.main(["manifest", "split", str(manifest), "--out", str(out), "--val", "0.2", "--test", "0.2"])
    printed = capsys.readouterr().out
    assert "| patients |" in printed and "| a |" in printed
    loaded = load_manifest(out)
    assert loaded.splits() == ["test", "train", "val"]
    assert [r["id"] for r in loaded.records] == [f"s{i}" for i in range(30)]
    assert all(r["extra"].get("site") == "north" for r in loaded.records)
    by_patient: dict[str, set] = {}
    for record in loaded.records:
        by_patient.setdefault(record["patient_id"], set()).add(record["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    with pytest.raises(SystemExit) as exit_:
        cli.main(["manifest", "split", str(out)])
    assert exit_.value.code == 2 and "--overwrite" in capsys.readouterr().err
    before = out.read_text()
    cli.main(["manifest", "split", str(out), "--overwrite", "--seed", "5"])
    assert out.read_text() != before and load_manifest(out).splits() == ["test", "train", "val"]
