"""Train/val/test splits of a manifest: stratified by label, grouped by patient, seeded."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alr_monai.csvcells import escape_row, unescape_row
from alr_monai.utils import atomic_write_text

logger = logging.getLogger("alr_monai")

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


def dicom_patient_id(image: str) -> str:
    """The PatientID tag of a DICOM image (a file, or the first slice of a series), or "" for anything else."""
    from alr_monai.data.dicom import is_series_ref, quiet_pydicom, series_files
    from alr_monai.data.manifest import image_kind

    try:
        if image_kind(image) != "dicom":
            return ""
        if is_series_ref(image):
            headers = [header for _, header in series_files(image)]
        else:
            import pydicom

            with quiet_pydicom():
                headers = [pydicom.dcmread(image, stop_before_pixels=True)]
    except Exception:  # an unreadable file has no patient to give; `alr manifest check` names it
        return ""
    return next((str(h.get("PatientID", "") or "").strip() for h in headers if h.get("PatientID")), "")


def _warn_about_patients(path: Path, patients: Sequence[str | None], from_headers: int) -> None:
    """Say loudly when rows have no patient id: each is split as its own patient, so a patient may be in two splits."""
    missing = sum(1 for p in patients if not p)
    if from_headers:
        logger.warning("%s: patient ids of %d rows read from their DICOM headers (PatientID)", path, from_headers)
    if missing == len(patients):
        logger.warning(
            "WARNING: no patient ids in %s: each of the %d rows is split as its own patient, so images of one patient "
            "can land in train and test. Add a patient_id column, or rebuild with `alr manifest build ROOT "
            "--patient_level N` (N = the folder level that names the patient below each class folder)",
            path,
            len(patients),
        )
    elif missing:
        logger.warning(
            "WARNING: %d of %d rows of %s have no patient id; each of them is split as its own patient",
            missing,
            len(patients),
            path,
        )


def split_manifest(
    path: str | Path,
    out: str | Path | None = None,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[Path, list[list]]:
    """Write a copy of manifest ``path`` (or ``path`` itself) with a ``split`` column from :func:`assign_splits`.

    Every other column and the row order are kept. Rows without a patient id whose image is DICOM take the
    header's PatientID (written into the ``patient_id`` column, added if missing); rows still without one are
    each their own patient, with a warning (with counts) since a patient may then be in two splits. The file is
    written atomically.

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

    manifest = load_manifest(path, check_images=False, allow_patient_overlap=None if overwrite else False)
    if manifest.splits() and not overwrite:
        raise ValueError(f"{path} already has split values {manifest.splits()}; pass --overwrite to replace them")
    labels = [record["label"] for record in manifest.records]
    patients = [record["patient_id"] for record in manifest.records]
    from_headers = {}
    for record in manifest.records:
        if not record["patient_id"]:
            found = dicom_patient_id(record["image"])
            if found:
                from_headers[record["row"]] = found
    patients = [from_headers.get(record["row"], record["patient_id"]) for record in manifest.records]
    _warn_about_patients(Path(path), patients, len(from_headers))
    splits = assign_splits(labels, patients, (1.0 - val - test, val, test), seed)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    column = header.index("split") if "split" in header else None
    if column is None:
        header = [*header, "split"]
    # Patient ids read from DICOM headers are written into the patient_id column, so the query page and a later
    # re-split see the same patients.
    patient_column = header.index("patient_id") if "patient_id" in header else None
    if from_headers and patient_column is None:
        header = [*header, "patient_id"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    by_row = {record["row"]: split for record, split in zip(manifest.records, splits, strict=True)}
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        split = by_row.get(number, "")
        row = unescape_row(row)  # rewritten with the spreadsheet-safe rule, whatever the file had
        row = [*row, *[""] * (width - len(row))]
        if column is None:
            row = [*row, split]
        else:
            row = [*row[:column], split, *row[column + 1 :]]
        if from_headers:
            if patient_column is None:
                row = [*row, from_headers.get(number, "")]
            elif number in from_headers:
                row[patient_column] = from_headers[number]
        writer.writerow(escape_row(row))
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
