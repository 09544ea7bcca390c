"""The image- and data-dependent noise kinds: confusion, instance and given (issue 28, items 1 and 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alr_monai.data.noise import (
    NOISE_KINDS,
    confusion_transition,
    image_features,
    inject_noise,
    model_confusion,
    read_confusion,
)


def _images_by_class(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 12, 12) uint8 images: class c is a bright square whose position moves with c, so classes c and c + 1
    overlap (look alike) and classes far apart do not."""
    rng = np.random.default_rng(seed)
    # faint squares in strong noise, so a linear model confuses neighbouring classes
    images = rng.integers(0, 120, size=(len(labels), 12, 12)).astype(np.float64)
    for i, c in enumerate(labels):
        images[i, 2:6, c : c + 4] += 40
    return np.clip(images, 0, 255).astype(np.uint8)


def _labels(n: int = 3000, num_classes: int = 5, seed: int = 3) -> np.ndarray:
    # long-tailed, so per-class rates are checked on small classes too
    weights = 0.5 ** np.arange(num_classes)
    return np.random.default_rng(seed).choice(num_classes, size=n, p=weights / weights.sum())


def _rates(noisy, num_classes):
    return np.array([noisy.is_noisy[noisy.true_labels == c].mean() for c in range(num_classes)])


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6])
def test_confusion_noise_hits_every_class_at_the_rate(rate):
    labels = _labels()
    matrix = np.ones((5, 5))
    noisy = inject_noise(labels, rate, 5, "confusion", seed=1, confusion=matrix)
    assert abs(noisy.noise_rate - rate) <= 1 / len(labels)  # overall: exact up to rounding
    counts = np.bincount(labels, minlength=5)
    # per class: exact up to one sample (largest-remainder rounding)
    assert np.all(np.abs(_rates(noisy, 5) - rate) <= 1.0 / counts + 1e-12)


def test_confusion_noise_follows_the_matrix_rows():
    labels = np.repeat(np.arange(3), 2000)
    # true 0 is confused with 1 only; true 1 with 0 three times as often as with 2; the diagonal is ignored
    matrix = np.array([[90.0, 10.0, 0.0], [30.0, 50.0, 10.0], [0.0, 0.0, 7.0]])
    noisy = inject_noise(labels, 0.5, 3, "confusion", seed=4, confusion=matrix)
    hit = noisy.is_noisy
    to = noisy.noisy_labels
    assert set(to[hit & (labels == 0)].tolist()) == {1}
    from_one = to[hit & (labels == 1)]
    assert abs((from_one == 0).mean() - 0.75) < 0.05 and set(from_one.tolist()) == {0, 2}
    # a row without off-diagonal mass spreads uniformly over the other classes
    from_two = to[hit & (labels == 2)]
    assert abs((from_two == 0).mean() - 0.5) < 0.06
    np.testing.assert_allclose(confusion_transition(matrix, 3)[1], [0.75, 0.0, 0.25])


def test_confusion_noise_without_a_matrix_confuses_classes_that_look_alike():
    labels = _labels(2000, 5)
    images = _images_by_class(labels)
    counts = model_confusion(images, labels, 5, seed=0)
    assert counts.sum() == len(labels)
    noisy = inject_noise(labels, 0.4, 5, "confusion", seed=0, images=images)
    assert abs(noisy.noise_rate - 0.4) <= 1 / len(labels)
    hit = noisy.is_noisy
    distance = np.abs(noisy.noisy_labels[hit] - labels[hit])
    # the square of class c overlaps those of c - 1 and c + 1 most: most flips go to a neighbour, unlike
    # symmetric noise, where about 2 in 5 would
    assert (distance == 1).mean() > 0.7
    sym = inject_noise(labels, 0.4, 5, "symmetric", seed=0)
    assert (np.abs(sym.noisy_labels - labels)[sym.is_noisy] == 1).mean() < 0.55


def test_confusion_matrix_files(tmp_path):
    matrix = np.array([[5, 1, 0], [2, 7, 3], [0, 4, 9]])
    names = ["a", "b", "c"]
    csv_path = tmp_path / "evaluation_test_confusion.csv"  # the layout alr's evaluation writes
    csv_path.write_text(
        "true \\ predicted,a,b,c\n"
        + "".join(f"{n},{','.join(map(str, r))}\n" for n, r in zip(names, matrix, strict=True))
    )
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(",".join(map(str, r)) for r in matrix) + "\n")
    as_json = tmp_path / "evaluation_test.json"
    as_json.write_text(json.dumps({"confusion_matrix": matrix.tolist()}))
    np.save(tmp_path / "m.npy", matrix)
    for path in (csv_path, plain, as_json, tmp_path / "m.npy"):
        np.testing.assert_array_equal(read_confusion(path), matrix)
    labels = np.repeat(np.arange(3), 100)
    by_file = inject_noise(labels, 0.3, 3, "confusion", seed=2, confusion=str(csv_path))
    assert np.array_equal(
        by_file.noisy_labels, inject_noise(labels, 0.3, 3, "confusion", seed=2, confusion=matrix).noisy_labels
    )
    with pytest.raises(ValueError, match="plain.csv: expected a 4 x 4 matrix"):
        inject_noise(np.repeat(np.arange(4), 10), 0.3, 4, "confusion", confusion=plain)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_confusion(tmp_path / "missing.csv")


@pytest.mark.parametrize("rate", [0.2, 0.45])
def test_instance_noise_rates(rate):
    labels = _labels(4000, 5)
    images = _images_by_class(labels)
    noisy = inject_noise(labels, rate, 5, "instance", seed=0, images=images)
    assert abs(noisy.noise_rate - rate) <= 1 / len(labels)
    # flip rates do not depend on the class, so each class's rate is near the overall one
    counts = np.bincount(labels, minlength=5)
    assert np.all(np.abs(_rates(noisy, 5) - rate) <= 3 * np.sqrt(rate * (1 - rate) / counts) + 0.02)
    assert noisy.noisy_labels.min() >= 0 and noisy.noisy_labels.max() < 5


def test_instance_noise_depends_on_the_image():
    # two groups of images within class 0, each group identical inside: identical images go the same way
    labels = np.zeros(2000, dtype=np.int64)
    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 255, size=(2, 12, 12)).astype(np.uint8)
    images = prototypes[np.arange(2000) % 2]
    noisy = inject_noise(labels, 0.5, 6, "instance", seed=5, images=images)
    hit = noisy.is_noisy
    for group in (0, 1):
        destinations = noisy.noisy_labels[hit & (np.arange(2000) % 2 == group)]
        share = np.bincount(destinations, minlength=6).max() / len(destinations)
        assert share > 0.9  # the projection scores are sharp: an image has one likely destination
    # symmetric noise on the same images spreads over all five other classes
    sym = inject_noise(labels, 0.5, 6, "symmetric", seed=5)
    assert np.bincount(sym.noisy_labels[sym.is_noisy], minlength=6).max() / sym.is_noisy.sum() < 0.3


@pytest.mark.parametrize("kind", ["confusion", "instance"])
def test_image_noise_is_reproducible_per_seed(kind):
    labels = _labels(1500, 4)
    images = _images_by_class(labels)
    first = inject_noise(labels, 0.4, 4, kind, seed=11, images=images)
    assert np.array_equal(first.noisy_labels, inject_noise(labels, 0.4, 4, kind, seed=11, images=images).noisy_labels)
    other = inject_noise(labels, 0.4, 4, kind, seed=12, images=images)
    assert not np.array_equal(first.is_noisy, other.is_noisy)


@pytest.mark.parametrize("kind", ["confusion", "instance"])
def test_image_noise_spares_classes_and_needs_images(kind):
    labels = _labels(1500, 4)
    images = _images_by_class(labels)
    noisy = inject_noise(labels, 0.5, 4, kind, seed=0, images=images, spared_classes=[0])
    assert not noisy.is_noisy[labels == 0].any()
    assert abs(noisy.is_noisy[labels != 0].mean() - 0.5) <= 1 / (labels != 0).sum()
    with pytest.raises(ValueError, match="reads the training images"):
        inject_noise(labels, 0.5, 4, kind, seed=0)


def test_given_noise_takes_the_data_labels():
    labels = np.array([0, 1, 2, 2, 1, 0])
    given = np.array([0, 2, 2, 1, 1, 1])
    noisy = inject_noise(labels, 0.6, 3, "given", seed=0, ids=list("abcdef"), given_labels=given)
    assert np.array_equal(noisy.noisy_labels, given) and np.array_equal(noisy.true_labels, labels)
    assert noisy.noise_rate == pytest.approx(0.5)  # the data's rate; the requested 0.6 is ignored
    with pytest.raises(ValueError, match="train_labels_noisy"):
        inject_noise(labels, 0.0, 3, "given")
    with pytest.raises(ValueError, match="5 noisy labels for 6"):
        inject_noise(labels, 0.0, 3, "given", given_labels=given[:5])
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        inject_noise(labels, 0.0, 3, "given", given_labels=given + 1)


def test_image_features_downsample_any_layout():
    rgb = np.random.default_rng(0).integers(0, 255, size=(10, 28, 28, 3)).astype(np.uint8)
    assert image_features(rgb).shape == (10, 8 * 8 * 3)
    volume = np.random.default_rng(0).integers(0, 255, size=(10, 28, 28, 28)).astype(np.uint8)
    assert image_features(volume).shape == (10, 8 * 8 * 8)
    assert np.allclose(image_features(rgb).mean(axis=0), 0.0)


def test_noise_kinds_listed():
    assert {"symmetric", "pairflip", "confusion", "instance", "given"} == set(NOISE_KINDS)


# ------------------------------------------------------------------------------------- data cells (MedMNIST)


def _write_npz(path, n_train=(40, 30, 20, 10), noisy=True):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, counts in (("train", n_train), ("val", (5, 5, 5, 5)), ("test", (6, 6, 6, 6))):
        labels = np.repeat(np.arange(len(counts)), counts)
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(len(labels), 8, 8)).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    if noisy:
        train = arrays["train_labels"].reshape(-1)
        arrays["train_labels_noisy"] = np.where(np.arange(len(train)) % 4 == 0, (train + 1) % 4, train)
    np.savez(path, **arrays)
    return path


def test_medmnist_class_map_cap_and_noisy_labels(tmp_path):
    from alr_monai.data.medmnist import load_medmnist

    path = _write_npz(tmp_path / "four.npz")
    data = load_medmnist(path)
    train = data["train"]
    assert np.array_equal(train.noisy_labels, np.where(np.arange(100) % 4 == 0, (train.labels + 1) % 4, train.labels))
    # binary: class 3 against the rest; class names joined
    binary = load_medmnist(path, class_map=[0, 0, 0, 1])
    assert binary.num_classes == 2 and binary.class_names == ["other", "3"]
    assert np.bincount(binary["train"].labels).tolist() == [90, 10]
    assert np.bincount(binary["test"].labels).tolist() == [18, 6]
    assert set(binary["train"].noisy_labels.tolist()) == {0, 1}
    # drop a class, long-tail from a cap: n_max 20, IR 4 over three classes -> 20, 10, 5
    dropped = load_medmnist(path, imbalance_ratio=4, seed=0, class_map=[0, 1, 2, None], max_per_class=20)
    dropped["train"].noisy_labels[dropped["train"].noisy_labels < 0] = 3  # compare with the unmapped file
    assert np.bincount(dropped["train"].labels).tolist() == [20, 10, 5]
    assert len(dropped["val"]) == 15 and dropped["train"].ids[0].startswith("train_")
    kept = np.array([int(i.split("_")[1]) for i in dropped["train"].ids])
    assert np.array_equal(dropped["train"].noisy_labels, data["train"].noisy_labels[kept])
    # a cap alone caps every class
    capped = load_medmnist(path, max_per_class=15)
    assert np.bincount(capped["train"].labels).tolist() == [15, 15, 15, 10]
    with pytest.raises(ValueError, match="class_map has 3 entries"):
        load_medmnist(path, class_map=[0, 1, 1])
    # a dropped class named by noisy labels: fine for injected noise, refused by noise kind "given"
    noisy = load_medmnist(path, class_map=[0, 1, 2, None])["train"].noisy_labels
    assert (noisy == -1).sum() == 5
    with pytest.raises(ValueError, match="5 noisy labels are negative"):
        inject_noise(np.zeros(len(noisy), dtype=np.int64), 0.0, 3, "given", given_labels=noisy)


def test_class_map_names(tmp_path):
    from alr_monai.data.medmnist import load_medmnist

    path = _write_npz(tmp_path / "four.npz", noisy=False)
    assert load_medmnist(path, class_map=[0, 0, 1, 1]).class_names == ["0+1", "2+3"]
    assert load_medmnist(path, class_map=[0, 0, 0, 1]).class_names == ["other", "3"]
    assert load_medmnist(path, class_map=[1, 0, None, 2]).class_names == ["1", "0", "3"]
