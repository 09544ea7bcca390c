"""MedMNIST loading and long-tailing, and label-noise injection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alr_monai.data.medmnist import BLOODMNIST_CLASSES, load_medmnist, long_tail_counts, long_tail_indices
from alr_monai.data.noise import NoisyLabels, inject_noise, noise_table

# ---------------------------------------------------------------------------------------------- long tail


@pytest.mark.parametrize(
    ("counts", "ratio"),
    [
        ([500, 400, 300, 200, 100], 10.0),
        ([120, 300, 80, 300, 50, 250, 90, 500], 20.0),
        ([1000, 1000], 4.0),
    ],
)
def test_long_tail_counts_follow_the_formula(counts, ratio):
    counts = np.array(counts)
    num_classes = len(counts)
    result = long_tail_counts(counts, ratio)
    n_max = counts.max()
    # Rank 0 = largest class; equal sizes are ranked by class index.
    order = sorted(range(num_classes), key=lambda c: (-counts[c], c))
    for rank, cls in enumerate(order):
        expected = min(int(n_max * (1.0 / ratio) ** (rank / (num_classes - 1))), counts[cls])
        assert result[cls] == expected
    assert result[order[0]] == n_max
    assert result.dtype == np.int64


def test_long_tail_counts_n_max_shrinks_and_never_exceeds_class_size():
    counts = np.array([1000, 50, 800, 600])
    result = long_tail_counts(counts, 10.0, n_max=400)
    # ranks: class 0 -> 0, class 2 -> 1, class 3 -> 2, class 1 -> 3
    assert result.tolist() == [400, min(int(400 * 0.1), 50), int(400 * 0.1 ** (1 / 3)), int(400 * 0.1 ** (2 / 3))]
    capped = long_tail_counts(np.array([100, 99, 2]), 2.0)
    assert capped.tolist() == [100, int(100 * 0.5**0.5), 2]
    assert long_tail_counts(np.array([30, 10, 20]), 1.0).tolist() == [30, 10, 20]
    with pytest.raises(ValueError):
        long_tail_counts(counts, 0.5)


def test_long_tail_indices_are_seeded_and_match_counts():
    labels = np.repeat(np.arange(4), [100, 80, 60, 40])
    first = long_tail_indices(labels, 10.0, seed=3)
    assert np.array_equal(first, long_tail_indices(labels, 10.0, seed=3))
    assert not np.array_equal(first, long_tail_indices(labels, 10.0, seed=4))
    assert np.all(np.diff(first) > 0)
    assert (
        np.bincount(labels[first], minlength=4).tolist() == long_tail_counts(np.array([100, 80, 60, 40]), 10).tolist()
    )


# ---------------------------------------------------------------------------------------------- load_medmnist


def _write_npz(
    path: Path, rgb: bool, flat_labels: bool, sizes=(60, 12, 9), num_classes: int = 4, seed: int = 0
) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        shape = (n, 8, 7, 3) if rgb else (n, 8, 7)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        labels = np.arange(n) % num_classes  # every class in every split
        arrays[f"{split}_labels"] = labels if flat_labels else labels.reshape(-1, 1)
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize(("rgb", "flat_labels"), [(False, False), (True, True), (False, True), (True, False)])
def test_load_medmnist_label_shapes_and_channels(tmp_path, rgb, flat_labels):
    arrays = _write_npz(tmp_path / "tiny.npz", rgb, flat_labels)
    data = load_medmnist(tmp_path / "tiny.npz")
    assert data.num_classes == 4
    assert data.in_channels == (3 if rgb else 1)
    assert data.class_names == ["0", "1", "2", "3"]
    for split in ("train", "val", "test"):
        part = data[split]
        assert np.array_equal(part.images, arrays[f"{split}_images"])
        assert part.labels.shape == (len(part),) and part.labels.dtype == np.int64
        assert np.array_equal(part.labels, arrays[f"{split}_labels"].reshape(-1))
        assert part.ids == [f"{split}_{i}" for i in range(len(part))]
    items = data["val"].items()
    assert items[5]["index"] == 5 and items[5]["id"] == "val_5" and items[5]["label"] == 1
    assert np.array_equal(items[5]["image"], arrays["val_images"][5])
    noisy = np.zeros(len(data["val"]), dtype=np.int64)
    assert {item["label"] for item in data["val"].items(labels=noisy)} == {0}
    with pytest.raises(ValueError):
        data["val"].items(labels=noisy[:-1])


def test_load_medmnist_long_tail_subsamples_train_only(tmp_path):
    arrays = _write_npz(tmp_path / "tiny.npz", rgb=True, flat_labels=False, sizes=(80, 12, 9))
    full = load_medmnist(tmp_path / "tiny.npz")
    tail = load_medmnist(tmp_path / "tiny.npz", imbalance_ratio=5.0, seed=1, class_names=["w", "x", "y", "z"])
    assert tail.class_names == ["w", "x", "y", "z"]
    expected = long_tail_counts(np.full(4, 20), 5.0)
    assert np.bincount(tail["train"].labels, minlength=4).tolist() == expected.tolist() == [20, 11, 6, 4]
    # Ids keep the original position, and each image is the original one under that id.
    for image, sample_id in zip(tail["train"].images, tail["train"].ids, strict=True):
        assert np.array_equal(image, arrays["train_images"][int(sample_id.split("_")[1])])
    for split in ("val", "test"):
        assert np.array_equal(tail[split].images, full[split].images)
        assert np.array_equal(tail[split].labels, full[split].labels)
        assert tail[split].ids == full[split].ids
    again = load_medmnist(tmp_path / "tiny.npz", imbalance_ratio=5.0, seed=1, class_names=["w", "x", "y", "z"])
    assert again["train"].ids == tail["train"].ids


def test_load_medmnist_rejects_bad_files(tmp_path):
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(KeyError):
        load_medmnist(tmp_path / "bad.npz")
    _write_npz(tmp_path / "ok.npz", rgb=False, flat_labels=True)
    with pytest.raises(ValueError):
        load_medmnist(tmp_path / "ok.npz", class_names=["only", "three", "names"])
    with pytest.raises(FileNotFoundError):
        load_medmnist(tmp_path / "missing.npz")


def test_embedded_bloodmnist_loads():
    data = load_medmnist()
    assert data.num_classes == 8
    assert data.in_channels == 3
    assert data.class_names == BLOODMNIST_CLASSES
    for split in ("train", "val", "test"):
        part = data[split]
        assert part.images.shape[1:] == (28, 28, 3) and part.images.dtype == np.uint8
        assert set(np.unique(part.labels).tolist()) == set(range(8))
    counts = np.bincount(data["train"].labels, minlength=8)
    assert counts.max() / counts.min() >= 10  # the embedded train split is long-tailed (IR 20)


# ---------------------------------------------------------------------------------------------- noise


def _clean_labels(n: int = 2000, num_classes: int = 5) -> np.ndarray:
    return np.random.default_rng(123).integers(0, num_classes, size=n)


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.6])
def test_inject_noise_rate_is_within_tolerance(kind, rate):
    labels = _clean_labels()
    noisy = inject_noise(labels, rate, 5, kind=kind, seed=7)
    assert abs(noisy.noise_rate - rate) <= 1 / len(labels)
    assert np.array_equal(noisy.true_labels, labels)
    assert noisy.noisy_labels.min() >= 0 and noisy.noisy_labels.max() < 5


def test_inject_noise_is_reproducible_per_seed_and_differs_across_seeds():
    labels = _clean_labels()
    first = inject_noise(labels, 0.4, 5, seed=11)
    assert np.array_equal(first.noisy_labels, inject_noise(labels, 0.4, 5, seed=11).noisy_labels)
    other = inject_noise(labels, 0.4, 5, seed=12)
    assert not np.array_equal(first.noisy_labels, other.noisy_labels)
    assert not np.array_equal(first.is_noisy, other.is_noisy)  # which samples are hit differs, not only where to


def test_symmetric_noise_reaches_every_other_class():
    labels = np.zeros(3000, dtype=np.int64)
    noisy = inject_noise(labels, 0.5, 4, kind="symmetric", seed=0)
    flipped = noisy.noisy_labels[noisy.is_noisy]
    assert set(flipped.tolist()) == {1, 2, 3}
    assert np.bincount(flipped, minlength=4)[1:].min() > 0.25 * len(flipped)  # roughly uniform


def test_pairflip_maps_each_class_to_the_next():
    labels = _clean_labels(num_classes=5)
    noisy = inject_noise(labels, 0.45, 5, kind="pairflip", seed=2)
    hit = noisy.is_noisy
    assert hit.any()
    assert np.array_equal(noisy.noisy_labels[hit], (labels[hit] + 1) % 5)
    assert (noisy.noisy_labels[labels == 4] != 4).any() and set(noisy.noisy_labels[labels == 4].tolist()) <= {4, 0}


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
def test_spared_classes_are_never_flipped(kind):
    labels = _clean_labels(num_classes=5)
    noisy = inject_noise(labels, 0.5, 5, kind=kind, seed=5, spared_classes=[0, 3])
    spared = np.isin(labels, [0, 3])
    assert not noisy.is_noisy[spared].any()
    # The rate applies to the eligible samples.
    assert abs(noisy.is_noisy[~spared].mean() - 0.5) <= 1 / (~spared).sum()


def test_noise_csv_round_trip(tmp_path):
    labels = _clean_labels(n=50)
    ids = [f"img_{i:03d}" for i in range(50)]
    noisy = inject_noise(labels, 0.3, 5, seed=1, ids=ids)
    path = noisy.save(tmp_path / "sub" / "noise.csv")
    assert path.read_text().splitlines()[0] == "id,true_label,noisy_label"
    loaded = NoisyLabels.load(path)
    assert loaded.ids == ids
    assert np.array_equal(loaded.true_labels, noisy.true_labels)
    assert np.array_equal(loaded.noisy_labels, noisy.noisy_labels)
    assert loaded.noise_rate == noisy.noise_rate
    (tmp_path / "broken.csv").write_text("id,true_label\na,1\n")
    with pytest.raises(ValueError):
        NoisyLabels.load(tmp_path / "broken.csv")


def test_inject_noise_validation_and_table():
    labels = _clean_labels(n=40, num_classes=3)
    for bad in [dict(rate=1.0), dict(rate=-0.1), dict(kind="asymmetric"), dict(num_classes=1)]:
        args = {"rate": 0.2, "num_classes": 3, "kind": "symmetric", **bad}
        with pytest.raises(ValueError):
            inject_noise(labels, **args)
    with pytest.raises(ValueError):
        inject_noise([0, 5], 0.2, 3)
    with pytest.raises(ValueError):
        inject_noise(labels, 0.2, 3, ids=["a"])
    noisy = inject_noise(labels, 0.25, 3, seed=0)
    table = noise_table(noisy, ["x", "y", "z"])
    assert table.splitlines()[-1].split()[1:] == [str(30), str(10), "0.250"]
