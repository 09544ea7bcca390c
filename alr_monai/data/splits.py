"""Train/val/test splits of a manifest: stratified by label, grouped by patient, seeded."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alr_monai.utils import atomic_write_text

SPLIT_NAMES = ("train", "val", "test")


def assign_splits(
    labels: Sequence[int], groups: Sequence[str | None], fractions: Sequence[float], seed: int = 0
) -> list[str]:
    """A split name per row: stratified by label, with every group (patient) in exactly one split.

    Groups are placed one at a time, largest first (ties in a seeded random order), each into the split whose
    per-class counts lie furthest below their targets (``fraction x class size``) for the classes the group
    holds. A row without a group is a group of its own.

    Args:
        labels: class index per row.
        groups: patient id per row (None or "" = the row alone).
        fractions: the train, val and test shares; they must sum to 1.
        seed: seed of the tie-breaking order.

    Returns:
        "train", "val" or "test" per row.
    """
    fractions = np.asarray(fractions, dtype=float)
    if len(fractions) != len(SPLIT_NAMES) or (fractions < 0).any() or abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {list(fractions)}")
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    members: dict[str, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(group if group else f"\0row{row}", []).append(row)
    keys = list(members)
    order = np.random.default_rng(seed).permutation(len(keys))
    order = sorted(order, key=lambda k: -len(members[keys[k]]))  # stable: the permutation breaks size ties
    targets = fractions[:, None] * np.bincount(labels, minlength=num_classes)[None, :]
    counts = np.zeros_like(targets)
    assigned = [""] * len(labels)
    for k in order:
        rows = members[keys[k]]
        composition = np.bincount(labels[rows], minlength=num_classes)
        # deficit of each split on this group's classes; a split with a zero share never receives anything
        need = ((targets - counts) * composition[None, :]).sum(1)
        need[fractions == 0] = -np.inf
        split = int(np.argmax(need))
        counts[split] += composition
        for row in rows:
            assigned[row] = SPLIT_NAMES[split]
    return assigned


def split_manifest(
    path: str | Path,
    out: str | Path | None = None,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[Path, list[list]]:
    """Write a copy of manifest ``path`` (or ``path`` itself) with a ``split`` column from :func:`assign_splits`.

    Every other column and the row order are kept. The file is written atomically.

    Args:
        path: the manifest CSV (validated first; images are not opened).
        out: where to write (default: ``path`` itself).
        val: validation share.
        test: test share.
        seed: seed of the assignment.
        overwrite: replace split values the manifest already has (refused otherwise).

    Returns:
        The written path and a table: one row per class (name, then counts in train, val, test), then a
        "patients" row (groups per split) when the manifest has patient ids.
    """
    from alr_monai.data.manifest import load_manifest

    manifest = load_manifest(path, check_images=False)
    if manifest.splits() and not overwrite:
        raise ValueError(f"{path} already has split values {manifest.splits()}; pass --overwrite to replace them")
    labels = [record["label"] for record in manifest.records]
    patients = [record["patient_id"] for record in manifest.records]
    splits = assign_splits(labels, patients, (1.0 - val - test, val, test), seed)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    column = header.index("split") if "split" in header else None
    if column is None:
        header = [*header, "split"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    by_row = {record["row"]: split for record, split in zip(manifest.records, splits, strict=True)}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        split = by_row.get(number, "")
        if column is None:
            writer.writerow([*row, split])
        else:
            writer.writerow([*row[:column], split, *row[column + 1 :]])
    target = Path(out) if out is not None else Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, buffer.getvalue(), private=True)
    pairs = list(zip(labels, splits, patients, strict=True))
    table: list[list] = [
        [name, *(sum(1 for label, split, _ in pairs if label == index and split == n) for n in SPLIT_NAMES)]
        for index, name in enumerate(manifest.class_names)
    ]
    if any(patients):
        table.append(["patients", *(len({p for _, split, p in pairs if p and split == n}) for n in SPLIT_NAMES)])
    return target, table
