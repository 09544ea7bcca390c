"""MedMNIST ``.npz`` input: the official layout, held in memory, with long-tailed subsampling.

The official files hold ``{train,val,test}_images`` (N, H, W) or (N, H, W, 3) uint8 and ``*_labels`` (N, 1)
or (N,). MedMNIST-3D files hold (N, D, H, W) volumes with no channel axis (28 or 64 on a side): they are read as
single-channel 3D images (``spatial_dims`` 3), not as D channels. The embedded demo set ships as the 2D layout
compressed with xz (``.npz.xz``).

A file may also hold ``train_labels_noisy`` (N,) beside ``train_labels``: real noisy labels (a second annotation
pass, say) that noise kind ``given`` trains on, ``train_labels`` being the truth the simulated expert answers from.
"""

from __future__ import annotations

import io
import lzma
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
# the array of real noisy training labels that noise kind "given" trains on
NOISY_LABELS_ARRAY = "train_labels_noisy"

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
EMBEDDED_BLOODMNIST = EMBEDDED_DIR / "bloodmnist_lt20.npz.xz"

BLOODMNIST_CLASSES = [
    "basophil",
    "eosinophil",
    "erythroblast",
    "immature_granulocytes",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
]
# BreastMNIST's label 1 is "normal or benign"; one word each, as answers files take class names
BREASTMNIST_CLASSES = ["malignant", "benign"]


@dataclass
class MedMNISTSplit:
    """One split held in memory: images uint8 (N, H, W[, C]), labels int64 (N,), ids str; ``noisy_labels``
    (N,) the file's real noisy labels, where it has them (training split only)."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    noisy_labels: np.ndarray | None = None

    def subset(self, keep: np.ndarray) -> MedMNISTSplit:
        """The samples at positions ``keep``, with their ids and noisy labels."""
        noisy = None if self.noisy_labels is None else self.noisy_labels[keep]
        return MedMNISTSplit(self.images[keep], self.labels[keep], [self.ids[i] for i in keep], noisy)

    def __len__(self) -> int:
        return len(self.labels)

    def items(self, labels: np.ndarray | None = None) -> list[dict]:
        """Dicts for a MONAI Dataset: ``image`` (array), ``label``, ``index`` (position in this split), ``id``.

        Args:
            labels: labels to attach instead of the stored ones (for example the noisy labels of a study).
        """
        labels = self.labels if labels is None else np.asarray(labels)
        if len(labels) != len(self):
            raise ValueError(f"got {len(labels)} labels for a split of {len(self)} images")
        return [
            {"image": self.images[i], "label": int(labels[i]), "index": i, "id": self.ids[i]} for i in range(len(self))
        ]


def npz_reference(item: dict) -> str:
    """Where a MedMNIST item's image lives, for a person: ``npz:<split>_images[<position>]``, its position in
    the .npz file's ``<split>_images`` array (ids are ``<split>_<position>``, see :func:`load_medmnist`); "" for an
    item read from an image file (its path says where it is). No "/" in it, so a page showing a path's last part
    shows all of it."""
    if isinstance(item.get("image"), (str, Path)):
        return ""
    split, _, position = str(item.get("id", "")).rpartition("_")
    if split and position.isdigit():
        return f"npz:{split}_images[{position}]"
    return f"npz:[{item.get('index', '')}]"


@dataclass
class MedMNISTData:
    """The three splits of a MedMNIST-layout file plus what was read from it.

    ``spatial_dims`` is 2 for images (N, H, W[, C]) and 3 for volumes (N, D, H, W[, C]); ``in_channels`` is C
    (1 without a channel axis).
    """

    splits: dict[str, MedMNISTSplit]
    num_classes: int
    in_channels: int
    source: str
    class_names: list[str] = field(default_factory=list)
    spatial_dims: int = 2

    def __getitem__(self, split: str) -> MedMNISTSplit:
        return self.splits[split]


def read_npz_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of a ``.npz`` (or xz-compressed ``.npz.xz``) file into memory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MedMNIST file not found: {path}")
    if path.name.endswith(".xz"):
        with lzma.open(path, "rb") as handle:
            source: io.BytesIO | Path = io.BytesIO(handle.read())
    else:
        source = path
    with np.load(source, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def image_layout(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(spatial_dims, in_channels) of a MedMNIST ``*_images`` array of this shape, or None if it is none of them.

    (N, H, W) is 2D gray; (N, H, W, C) with C in 1, 3, 4 is 2D with channels, unless the three axes are equal
    (MedMNIST-3D volumes are cubes, 28 or 64 on a side), which, like any other (N, D, H, W), is a 3D gray volume;
    (N, D, H, W, C) with C in 1, 3, 4 is 3D with channels.
    """
    if len(shape) == 3:
        return 2, 1
    if len(shape) == 4:
        cube = shape[1] == shape[2] == shape[3]
        if shape[-1] in (1, 3, 4) and not cube:
            return 2, int(shape[-1])
        return 3, 1
    if len(shape) == 5 and shape[-1] in (1, 3, 4):
        return 3, int(shape[-1])
    return None


def long_tail_counts(class_counts: np.ndarray, imbalance_ratio: float, n_max: int | None = None) -> np.ndarray:
    """Per-class counts after long-tailing: n_c = n_max * (1/IR)^(rank_c / (C-1)), rank 0 = largest class.

    Ties in size are ranked by class index so the result is deterministic. A class never gets more images
    than it has. ``n_max`` defaults to the largest class's size (a smaller value shrinks the whole set).
    """
    class_counts = np.asarray(class_counts, dtype=np.int64)
    num_classes = len(class_counts)
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    order = np.argsort(-class_counts, kind="stable")
    n_max = int(class_counts.max()) if n_max is None else int(n_max)
    targets = np.zeros(num_classes, dtype=np.int64)
    for rank, cls in enumerate(order):
        exponent = rank / (num_classes - 1) if num_classes > 1 else 0.0
        targets[cls] = min(int(n_max * (1.0 / imbalance_ratio) ** exponent), int(class_counts[cls]))
    return targets


def long_tail_indices(
    labels: np.ndarray, imbalance_ratio: float, seed: int, num_classes: int | None = None, n_max: int | None = None
) -> np.ndarray:
    """Indices (sorted) of a long-tailed subset of ``labels``, drawn without replacement with ``seed``."""
    labels = np.asarray(labels).reshape(-1)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    targets = long_tail_counts(np.bincount(labels, minlength=num_classes), imbalance_ratio, n_max)
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=targets[c], replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(chosen))


def load_medmnist(
    path: str | Path | None = None,
    imbalance_ratio: float | None = None,
    seed: int = 0,
    class_names: list[str] | None = None,
    class_map: list[int | None] | None = None,
    max_per_class: int | None = None,
) -> MedMNISTData:
    """Load a MedMNIST-layout file into memory.

    Args:
        path: ``.npz`` or ``.npz.xz``; None means the embedded long-tailed BloodMNIST demo subset.
        imbalance_ratio: if given, long-tail the TRAINING split to this ratio (val and test stay as released).
        seed: seed of the long-tail draw.
        class_names: names by index (after ``class_map``); defaults to BloodMNIST's (or BreastMNIST's) names, else
            "0", "1", ...; with a ``class_map``, the source names of each new class joined by "+", or "other" for
            a class merged from more than two ("other_<k>" if several are).
        class_map: the new class of each source class (by source index), None to drop the class's samples from
            every split: ``[0, 0, 0, 1, 0, 0, 0, 0]`` makes BloodMNIST binary (class 3 against the rest), ``[0, 1,
            None]`` keeps two of three classes. Applied before long-tailing.
        max_per_class: cap on the training images of the largest class after the mapping; with
            ``imbalance_ratio`` the long tail runs from this cap (n_max), without it every class is capped. Val and
            test are not capped. For the few-images regime of the benchmark suite.

    Returns:
        The splits with ids ``<split>_<original position>`` so they stay stable under subsampling.
    """
    path = EMBEDDED_BLOODMNIST if path is None else Path(path)
    arrays = read_npz_arrays(path)
    missing = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels") if f"{s}_{kind}" not in arrays]
    if missing:
        raise KeyError(f"{path}: not a MedMNIST-layout file, missing arrays {missing} (has {sorted(arrays)})")
    splits: dict[str, MedMNISTSplit] = {}
    layouts = set()
    for split in SPLITS:
        images = arrays[f"{split}_images"]
        labels = arrays[f"{split}_labels"].reshape(-1).astype(np.int64)
        layout = image_layout(images.shape)
        if images.dtype != np.uint8 or layout is None or len(images) != len(labels):
            raise ValueError(
                f"{path}: {split}_images must be uint8 (N,H,W), (N,H,W,C), (N,D,H,W) or (N,D,H,W,C) matching "
                f"{split}_labels; got {images.dtype} {images.shape} vs {labels.shape}"
            )
        layouts.add(layout)
        splits[split] = MedMNISTSplit(images, labels, [f"{split}_{i}" for i in range(len(labels))])
    if NOISY_LABELS_ARRAY in arrays:
        noisy = arrays[NOISY_LABELS_ARRAY].reshape(-1).astype(np.int64)
        if len(noisy) != len(splits["train"]):
            raise ValueError(
                f"{path}: {NOISY_LABELS_ARRAY} holds {len(noisy)} labels for {len(splits['train'])} training images"
            )
        splits["train"].noisy_labels = noisy
    if len(layouts) != 1:
        shapes = {split: splits[split].images.shape for split in SPLITS}
        raise ValueError(f"{path}: the splits' images differ in layout (2D/3D, channels): {shapes}")
    num_classes = int(max(int(s.labels.max()) for s in splits.values())) + 1
    is_blood = path == EMBEDDED_BLOODMNIST or (path.name.startswith("bloodmnist") and num_classes == 8)
    is_breast = path.name.startswith("breastmnist") and num_classes == 2
    source_names = (
        list(BLOODMNIST_CLASSES)
        if is_blood
        else list(BREASTMNIST_CLASSES)
        if is_breast
        else [str(c) for c in range(num_classes)]
    )
    if class_map is not None:
        splits, num_classes, source_names = _map_classes(splits, class_map, num_classes, source_names, path)
    if imbalance_ratio is not None or max_per_class is not None:
        train = splits["train"]
        keep = long_tail_indices(train.labels, imbalance_ratio or 1.0, seed, num_classes, n_max=max_per_class)
        splits["train"] = train.subset(keep)
    spatial_dims, in_channels = layouts.pop()
    if class_names is None:
        class_names = source_names
    if len(class_names) != num_classes:
        raise ValueError(f"{path}: {num_classes} classes in the labels but {len(class_names)} class names given")
    return MedMNISTData(splits, num_classes, in_channels, str(path), list(class_names), spatial_dims)


def _map_classes(
    splits: dict[str, MedMNISTSplit],
    class_map: list[int | None],
    num_classes: int,
    source_names: list[str],
    path: Path,
) -> tuple[dict[str, MedMNISTSplit], int, list[str]]:
    """Every split with its classes mapped by ``class_map`` (see :func:`load_medmnist`), the new class count and
    the new classes' names."""
    if len(class_map) != num_classes:
        raise ValueError(f"{path}: class_map has {len(class_map)} entries for the file's {num_classes} classes")
    targets = sorted({int(t) for t in class_map if t is not None})
    if len(targets) < 2 or targets != list(range(len(targets))):
        raise ValueError(f"{path}: class_map {class_map} must map onto classes 0..K-1 with K >= 2 (None drops one)")
    lookup = np.array([-1 if t is None else int(t) for t in class_map], dtype=np.int64)
    groups = [[source_names[c] for c in range(num_classes) if lookup[c] == k] for k in targets]
    # a class merged from more than two is "other" (numbered if several are), so names stay short in query sheets
    merged = [k for k, group in enumerate(groups) if len(group) > 2]
    names = [
        "+".join(group) if len(group) <= 2 else "other" if len(merged) == 1 else f"other_{k}"
        for k, group in enumerate(groups)
    ]
    mapped = {}
    for split, data in splits.items():
        labels = lookup[data.labels]
        keep = np.flatnonzero(labels >= 0)
        part = data.subset(keep)
        part.labels = labels[keep]
        if part.noisy_labels is not None:
            # -1 where the noisy label's class is dropped; noise kind "given" refuses those, the others ignore them
            part.noisy_labels = lookup[part.noisy_labels]
        mapped[split] = part
    return mapped, len(targets), names
