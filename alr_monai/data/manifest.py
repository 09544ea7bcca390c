"""The hospital-facing input: a manifest CSV with one row per image.

A manifest has the required columns ``id``, ``image`` and ``label``, the optional columns ``patient_id`` and
``split``, and any number of extra columns, which are kept and passed through untouched. ``image`` is a path to a
DICOM (``.dcm``, or no extension with the ``DICM`` marker), NIfTI (``.nii``, ``.nii.gz``), PNG or JPEG file, or to a
DICOM series folder read as one volume (``FOLDER#SERIES_UID`` for one series of several; see
:mod:`alr_monai.data.dicom`), either absolute or relative to the folder that holds the manifest. Multi-sequence data stored one file per sequence (T1, T2, FLAIR, ...) names the columns that
hold the sequences' paths (``sequences``); their files are stacked as channels in that order.

:func:`load_manifest` validates the whole file before anything is trained and reports every problem at once, so a
data manager can fix a spreadsheet in one pass instead of one error per run. :func:`build_manifest_from_folder`
writes a manifest for the common ``ROOT/<class>/<files>`` layout.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alr_monai.csvcells import escape_row, unescape_row
from alr_monai.data.classes import check_class_names, class_name_problems
from alr_monai.data.dicom import SERIES_SEPARATOR
from alr_monai.data.text import text_problem
from alr_monai.utils import atomic_write_json, atomic_write_text

__all__ = [
    "IMAGE_EXTENSIONS",
    "ManifestError",
    "Manifest",
    "load_manifest",
    "build_manifest_from_folder",
    "load_class_map",
    "image_extension",
    "image_kind",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "image", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("patient_id", "split")
SPLIT_VALUES: tuple[str, ...] = ("train", "val", "test")
"""The values a ``split`` cell may hold (any case), or blank."""

ImageKind = Literal["dicom", "nifti", "pil"]

# Lower-case extension -> the library that reads it. ".nii.gz" must be matched before any shorter suffix.
IMAGE_EXTENSIONS: dict[str, ImageKind] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".dcm": "dicom",
    ".png": "pil",
    ".jpg": "pil",
    ".jpeg": "pil",
}


class ManifestError(ValueError):
    """Raised when a manifest is invalid.

    The message lists every problem found, one per line; ``problems`` holds the same lines as a list. Each problem
    names the manifest file and the row (``<manifest path> row <n>: <reason>``, the header being row 1).

    Attributes:
        problems: all problems found in the manifest, in file order.
    """

    problems: list[str]

    def __init__(self, problems: Sequence[str], path: str | Path | None = None):
        self.problems = list(problems)
        where = f" in manifest {path}" if path is not None else ""
        count = len(self.problems)
        header = f"{count} problem{'s' if count != 1 else ''}{where}:"
        super().__init__("\n".join([header, *(f"  - {p}" for p in self.problems)]))


@dataclass
class Manifest:
    """A validated manifest.

    Attributes:
        path: the manifest CSV file.
        class_names: class names in index order; ``records[i]["label"]`` indexes into this list.
        records: one dict per data row, in file order, with keys ``id`` (str), ``image`` (absolute path str),
            ``label`` (int class index), ``label_name`` (str), ``patient_id`` (str or None), ``split`` (str or
            None), ``row`` (row number in the file, header = row 1) and ``extra`` (dict of pass-through columns);
            with ``sequences``, also ``images`` (the absolute paths of the row's sequences, in channel order).
    """

    path: Path
    class_names: list[str]
    records: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def class_to_index(self) -> dict[str, int]:
        """Returns the mapping from class name to class index."""
        return {name: index for index, name in enumerate(self.class_names)}

    def splits(self) -> list[str]:
        """Returns the distinct non-empty split values, sorted."""
        return sorted({r["split"] for r in self.records if r["split"] is not None})

    def select(self, split: str | None) -> list[dict[str, Any]]:
        """Returns the records of one split.

        Args:
            split: split name, compared case-insensitively (``"Train"`` matches ``"train"``); None returns all records.

        Returns:
            The matching records, in file order.

        Raises:
            ValueError: a split was asked for but no row of the manifest has a split value, which would otherwise
                silently give an empty dataset.
        """
        if split is None:
            return list(self.records)
        if not any(r["split"] is not None for r in self.records):
            raise ValueError(
                f"{self.path}: split {split!r} requested but the manifest has no 'split' values; "
                f"`alr manifest split {self.path}` adds a stratified, patient-grouped train/val/test split"
            )
        wanted = split.strip().casefold()
        return [r for r in self.records if r["split"] is not None and r["split"].casefold() == wanted]

    def items(self, split: str | None = None) -> list[dict[str, Any]]:
        """Returns the data dicts for a MONAI ``Dataset``.

        Args:
            split: as in :meth:`select`.

        Returns:
            One dict per selected record: ``{"image": path str, "label": int, "index": position within this
            selection (0..n-1), "id": str, "patient_id": str}``. ``index`` is what per-sample trackers key on;
            ``patient_id`` is "" when the manifest has none (not None, which a DataLoader cannot batch). With
            ``sequences``, ``image`` is the list of the row's sequence files, which MONAI's loader stacks as channels.
        """
        return [
            {
                "image": image_input(r),
                "label": r["label"],
                "index": i,
                "id": r["id"],
                "patient_id": r["patient_id"] or "",
            }
            for i, r in enumerate(self.select(split))
        ]

    def save_class_map(self, path: str | Path) -> None:
        """Writes ``{"class_names": [...]}`` as JSON, atomically (temporary file then ``os.replace``).

        Args:
            path: destination JSON file; its parent folder is created if needed.
        """
        _keeping_mode(path, lambda: atomic_write_json(path, {"class_names": list(self.class_names)}))


def image_input(record: dict[str, Any]) -> str | list[str]:
    """What a record gives the image loader: its sequence files (stacked as channels) if any, else its image."""
    images = record.get("images")
    return list(images) if images else record["image"]


def load_class_map(path: str | Path) -> list[str]:
    """Reads class names written by :meth:`Manifest.save_class_map`.

    Args:
        path: the JSON file.

    Returns:
        The class names in index order.

    Raises:
        ValueError: the file does not hold a list of valid class names; the message names the file.
    """
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    names = data.get("class_names") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: expected a JSON object with a list of strings under 'class_names'")
    return check_class_names(names, where=str(path))


def image_extension(path: str | os.PathLike[str], extensions: Iterable[str] | None = None) -> str | None:
    """Returns the lower-case image extension of ``path`` (``".nii.gz"`` counts as one), or None if unsupported.

    Args:
        path: file path or name.
        extensions: accepted extensions (with leading dot, any case); defaults to :data:`IMAGE_EXTENSIONS`.
    """
    name = os.path.basename(os.fspath(path)).lower()
    candidates = IMAGE_EXTENSIONS if extensions is None else _normalise_extensions(extensions)
    # Longest first so ".nii.gz" wins over a hypothetical ".gz".
    for ext in sorted(candidates, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    return None


def image_kind(path: str | os.PathLike[str]) -> ImageKind | None:
    """Returns which library reads ``path`` (``"dicom"``, ``"nifti"`` or ``"pil"``), or None if unsupported.

    The extension decides; a path without a known extension is ``"dicom"`` when it is a DICOM series reference (a
    folder of slices, or ``FOLDER#SERIES_UID``) or a file with the DICOM ``DICM`` marker (``IM0001`` from a PACS).
    """
    ext = image_extension(path)
    if ext is not None:
        return IMAGE_EXTENSIONS[ext]
    from alr_monai.data.dicom import has_dicom_preamble, is_series_ref

    return "dicom" if is_series_ref(path) or has_dicom_preamble(path) else None


def read_manifest_table(manifest_path: Path) -> list[list[str]]:
    """The rows of a manifest CSV (header first) as cells, or a :class:`ManifestError` naming the file: missing,
    not UTF-8, not CSV, or without a header row."""

    def problem(reason: str) -> ManifestError:
        return ManifestError([f"{manifest_path} row 1: {reason}"], manifest_path)

    if not manifest_path.is_file():
        raise problem("manifest file not found")
    try:
        with open(manifest_path, encoding="utf-8-sig", newline="") as handle:
            table = [unescape_row(cells) for cells in csv.reader(handle)]
    except UnicodeDecodeError as err:
        raise problem(f"manifest is not UTF-8 text ({err.reason})") from err
    except csv.Error as err:
        raise problem(f"manifest is not valid CSV ({err})") from err
    if not table or not any(cell.strip() for cell in table[0]):
        raise problem("manifest is empty (no header row)")
    return table


def load_manifest(
    path: str | Path,
    class_names: Sequence[str] | None = None,
    root: str | Path | None = None,
    check_images: bool = True,
    sequences: Sequence[str] | None = None,
    allow_patient_overlap: bool | None = False,
) -> Manifest:
    """Reads and validates a manifest CSV.

    Every problem in the file is collected and reported in one :class:`ManifestError`. Nothing is written.

    Args:
        path: the manifest CSV (UTF-8, with or without BOM).
        class_names: class names in index order. If None, they are inferred as the sorted set of labels, sorted
            numerically when every label is an integer (so ``"10"`` comes after ``"9"``).
        root: if given, every image must resolve (following symlinks) to a location inside this folder. Relative
            image paths are still relative to the manifest's folder.
        check_images: open each image to make sure it can be decoded (PIL verify for PNG/JPEG, pydicom for DICOM
            including a PixelData check, nibabel header for NIfTI). Existence and size are checked regardless.
        sequences: columns holding one image path per sequence (``image`` may be one of them), stacked as channels
            in this order, e.g. ``["image", "t2", "flair"]``; every listed cell is checked like ``image``, and a
            row's files must be of one kind (all NIfTI, say). None: ``image`` alone.
        allow_patient_overlap: accept a patient whose rows lie in more than one split (a leak between training
            and evaluation), logging a warning with the counts; by default such a manifest is refused, naming the
            patients and their rows; None skips the check (for a caller about to replace the splits).

    Ids, patient ids and labels may not hold control characters (line breaks, tabs, NUL), bidirectional controls
    or zero-width characters (:func:`alr_monai.data.text.text_problem`); labels are read in Unicode NFC form.
    ``split`` must be blank or one of :data:`SPLIT_VALUES` (any case).

    Returns:
        The validated :class:`Manifest`.

    Raises:
        ManifestError: the file is missing, empty or invalid; ``problems`` lists every problem.
        ManifestError: also when a label inferred as a class name breaks the class-name rules of
            :func:`alr_monai.data.classes.check_class_names` (reserved, clashing in case, ...), naming its first row.
        ValueError: ``class_names`` itself is invalid (see :func:`alr_monai.data.classes.check_class_names`).
    """
    manifest_path = Path(path).expanduser().absolute()
    given_classes = (
        check_class_names(class_names, where=f"class_names given for manifest {manifest_path}")
        if class_names is not None
        else None
    )
    root_resolved = Path(root).expanduser().resolve() if root is not None else None

    def problem_at(row: int, reason: str) -> str:
        return f"{manifest_path} row {row}: {reason}"

    table = read_manifest_table(manifest_path)

    problems: list[str] = []
    header = [cell.strip() for cell in table[0]]
    column_index: dict[str, int] = {}
    for position, name in enumerate(header):
        if name in column_index:
            problems.append(problem_at(1, f"duplicate column name {name!r}"))
        elif name:
            column_index[name] = position
    for required in REQUIRED_COLUMNS:
        if required not in column_index:
            near = [name for name in column_index if name.casefold() == required]
            hint = f" (found {near[0]!r}; column names are lower case)" if near else ""
            problems.append(problem_at(1, f"missing required column {required!r}{hint}"))
    extra_columns = [name for name in column_index if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    sequence_columns = _sequence_columns(sequences, column_index, problems, problem_at)

    # Row numbers follow the spreadsheet convention: header = 1, blank lines still count.
    data_rows = [(number, cells) for number, cells in enumerate(table[1:], start=2) if any(c.strip() for c in cells)]
    if not data_rows:
        problems.append(problem_at(2, "manifest has no data rows"))
        raise ManifestError(problems, manifest_path)

    drafts: list[dict[str, Any]] = []
    first_row_of_id: dict[str, int] = {}
    for number, cells in data_rows:
        if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
            problems.append(problem_at(number, f"row has {len(cells)} values but the header has {len(header)} columns"))
        # Spreadsheet exports may drop trailing empty cells, so short rows are padded rather than rejected.
        values = [c.strip() for c in cells] + [""] * max(0, len(header) - len(cells))

        def cell(column: str, values: list[str] = values) -> str | None:
            return values[column_index[column]] if column in column_index else None

        sample_id, image, label = cell("id"), cell("image"), cell("label")
        if label:
            label = unicodedata.normalize("NFC", label)  # "café" with a combining accent is the class "café"
        row_ok = True
        for column in ("id", "patient_id", "label"):
            reason = text_problem(cell(column) or "")
            if reason is not None:
                problems.append(problem_at(number, f"column {column!r}: {cell(column)!r} {reason}"))
                row_ok = False
        split_value = cell("split")
        if split_value and split_value.casefold() not in SPLIT_VALUES:
            problems.append(
                problem_at(
                    number,
                    f"column 'split': unknown value {split_value!r} (accepted: {', '.join(SPLIT_VALUES)}, any case, "
                    "or blank)",
                )
            )
            row_ok = False
        if sample_id == "":
            problems.append(problem_at(number, "empty id"))
            row_ok = False
        elif sample_id is not None:
            if sample_id in first_row_of_id:
                problems.append(
                    problem_at(number, f"duplicate id {sample_id!r} (rows {first_row_of_id[sample_id]} and {number})")
                )
                row_ok = False
            else:
                first_row_of_id[sample_id] = number
        if label == "":
            problems.append(problem_at(number, "empty label"))
            row_ok = False
        elif label is not None and given_classes is not None and label not in given_classes:
            problems.append(problem_at(number, f"label {label!r} is not in the class list {given_classes}"))
            row_ok = False

        image_path: Path | None = None
        if image == "":
            problems.append(problem_at(number, "empty image path"))
            row_ok = False
        elif image is not None:
            image_path = _absolute_image_path(image, manifest_path.parent)
            reason = _image_problem(image_path, root_resolved, check_images)
            if reason is not None:
                problems.append(problem_at(number, reason))
                row_ok = False

        sequence_paths: list[str] = []
        for column in sequence_columns:
            if column == "image":
                sequence_paths.append(str(image_path) if image_path is not None else "")
                continue
            value = cell(column) or ""
            if not value:
                problems.append(problem_at(number, f"empty {column!r} path (a column of sequences)"))
                row_ok = False
                continue
            sequence_path = _absolute_image_path(value, manifest_path.parent)
            reason = _image_problem(sequence_path, root_resolved, check_images)
            if reason is not None:
                problems.append(problem_at(number, f"column {column!r}: {reason}"))
                row_ok = False
            sequence_paths.append(str(sequence_path))
        kinds = {image_kind(p) for p in sequence_paths if p}
        if row_ok and len(kinds) > 1:
            problems.append(problem_at(number, f"the sequences {sequence_columns} mix file types ({sorted(kinds)})"))
            row_ok = False

        if row_ok and sample_id is not None and label is not None and image_path is not None:
            draft = {
                "id": sample_id,
                "image": str(image_path),
                "label_name": label,
                "patient_id": cell("patient_id") or None,
                "split": cell("split") or None,
                "row": number,
                "extra": {name: values[column_index[name]] for name in extra_columns},
            }
            if sequence_columns:
                draft["images"] = sequence_paths
            drafts.append(draft)

    if allow_patient_overlap is not None:
        problems += _patient_overlap(drafts, bool(allow_patient_overlap), problem_at, manifest_path)
    if problems:
        raise ManifestError(problems, manifest_path)

    if given_classes is not None:
        names = given_classes
    else:
        names = _infer_class_names(d["label_name"] for d in drafts)
        # Phase 2 writes these names into query files and reads them back from the expert: a name it would
        # reject (reserved, clashing in case, ...) is refused here, at the first row that uses it.
        first_row = {}
        for d in drafts:
            first_row.setdefault(d["label_name"], d["row"])
        bad = class_name_problems(names)
        if bad:
            raise ManifestError(
                [problem_at(first_row[names[i]], f"label: {reason}") for i, reason in bad], manifest_path
            )
    lookup = {name: index for index, name in enumerate(names)}
    records = [{**d, "label": lookup[d["label_name"]]} for d in drafts]
    return Manifest(path=manifest_path, class_names=names, records=records)


def _patient_overlap(
    drafts: list[dict[str, Any]],
    allow: bool,
    problem_at: Callable[[int, str], str],
    manifest_path: Path,
) -> list[str]:
    """Problems for patients whose rows lie in more than one split (none, with a warning, when ``allow``)."""
    splits: dict[str, dict[str, list[int]]] = {}
    for draft in drafts:
        if draft["patient_id"] and draft["split"]:
            rows = splits.setdefault(draft["patient_id"], {}).setdefault(draft["split"].casefold(), [])
            rows.append(draft["row"])
    spanning = {patient: by_split for patient, by_split in splits.items() if len(by_split) > 1}
    if not spanning:
        return []
    rows = sum(len(rows) for by_split in spanning.values() for rows in by_split.values())
    if allow:
        logging.getLogger("alr_monai").warning(
            f"manifest {manifest_path}: {len(spanning)} of {len(splits)} patients ({rows} rows) lie in more than one "
            "split; accepted because allow_patient_overlap is set, but their images leak between training and "
            "evaluation"
        )
        return []
    problems = []
    for patient, by_split in spanning.items():
        where = "; ".join(f"{split}: rows {', '.join(map(str, rows[:5]))}" for split, rows in sorted(by_split.items()))
        first = min(row for rows in by_split.values() for row in rows)
        problems.append(
            problem_at(
                first,
                f"patient {patient!r} lies in {len(by_split)} splits ({where}): a patient's images must all be in one "
                "split, or training leaks into evaluation; `alr manifest split --overwrite` reassigns them, or pass "
                "--allow_patient_overlap true to accept it",
            )
        )
    return problems


def _sequence_columns(
    sequences: Sequence[str] | None,
    column_index: dict[str, int],
    problems: list[str],
    problem_at: Callable[[int, str], str],
) -> list[str]:
    """The validated ``sequences`` columns (empty for None); unknown or repeated columns are added to ``problems``."""
    if sequences is None:
        return []
    if isinstance(sequences, str) or not all(isinstance(c, str) for c in sequences) or not sequences:
        raise ValueError(f"sequences must be a non-empty list of manifest column names, got {sequences!r}")
    columns: list[str] = []
    for column in sequences:
        if column in columns:
            problems.append(problem_at(1, f"sequences names column {column!r} twice"))
        elif column not in column_index:
            problems.append(
                problem_at(
                    1, f"sequences names column {column!r}, which the manifest lacks (columns: {list(column_index)})"
                )
            )
        else:
            columns.append(column)
    return columns


def build_manifest_from_folder(
    root: str | Path,
    out: str | Path,
    extensions: Sequence[str] = (".dcm", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg"),
    patient_level: int | None = None,
    series: bool = True,
    skipped: dict[str, list[str]] | None = None,
) -> Path:
    """Writes a manifest CSV for a ``ROOT/<class>/<files>`` folder tree.

    Each immediate sub-folder of ``root`` is a class; image files are searched recursively inside it (extension
    match is case-insensitive, hidden files and folders are skipped). With ``.dcm`` among the extensions, files
    without an extension that carry the DICOM ``DICM`` marker (``IM0001`` from a PACS export) are DICOM too, and
    DICOM objects without pixel data (structured reports, RT plans, DICOMDIR) are skipped. With ``series``, the
    single-frame slices of one series (same ``SeriesInstanceUID``, each with a patient position and orientation,
    at least two) become one row whose ``image`` is their folder (``FOLDER#SERIES_UID`` when the folder holds
    several series): one volume per series, as CT and MR arrive.

    Columns are ``id,image,label,patient_id``: ``id`` is the path relative to ``root`` without extension (a series:
    its folder, plus ``#<UID>`` when the folder holds several), with ``/`` separators; ``image`` is relative to the
    output CSV's folder when possible, else absolute; ``patient_id`` is the name of the folder ``patient_level``
    levels below the class folder when given (``<class>/<SUBJECT>/{baseline,followup}.nii.gz`` with level 1 ->
    ``SUBJECT``), else the DICOM ``PatientID`` tag when present, else empty. Rows are sorted by class then path,
    and the file is written atomically.

    Args:
        root: the dataset folder.
        out: the manifest CSV to write; its parent folder is created if needed.
        extensions: image extensions to include (``".nii.gz"`` counts as one extension).
        patient_level: take patient ids from this folder level below each class folder (1 = the class folder's
            sub-folders); None: from the DICOM headers.
        series: group the slices of a DICOM series into one row (False: one row per file).
        skipped: if given, filled with why files were left out -> the files (relative to ``root``).

    Returns:
        The path of the written manifest.

    Raises:
        ValueError: ``root`` is not a folder, has no class folders, holds no matching images, two files would get
            the same id (e.g. ``a/x.png`` and ``a/x.dcm``), a file lies above ``patient_level``, or a class folder
            or image is a symbolic link to a place outside ``root`` (links are not followed out of the dataset;
            links inside it are fine).
    """
    root_path = Path(root).expanduser().absolute()
    out_path = Path(out).expanduser().absolute()
    if not root_path.is_dir():
        raise ValueError(f"dataset root {root_path} is not a folder")
    if patient_level is not None and (isinstance(patient_level, bool) or int(patient_level) < 1):
        raise ValueError(
            f"patient_level must be 1 or more (1 = the folders inside each class folder), got {patient_level!r}"
        )
    wanted = _normalise_extensions(extensions)
    class_dirs = sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"no class folders under {root_path}: expected ROOT/<class>/<image files>")
    left_out: dict[str, list[str]] = {} if skipped is None else skipped

    real_root = root_path.resolve()
    outside = [p for p in class_dirs if not p.resolve().is_relative_to(real_root)]
    rows: list[dict[str, str]] = []
    id_source: dict[str, Path] = {}
    for class_dir in class_dirs:
        if class_dir in outside:
            continue
        for entry in _scan_class_folder(class_dir, wanted, series, left_out, root_path):
            sample_id, path = entry["id"], entry["path"]
            if not Path(path).resolve().is_relative_to(real_root):
                outside.append(Path(path))
                continue
            if sample_id in id_source:
                raise ValueError(f"files {id_source[sample_id]} and {path} would both get id {sample_id!r}")
            id_source[sample_id] = path
            if patient_level is not None:
                folder_parts = entry["folder"].relative_to(class_dir).parts
                if len(folder_parts) < int(patient_level):
                    raise ValueError(
                        f"{path} lies {len(folder_parts)} folder level(s) below its class folder {class_dir.name!r}, "
                        f"so --patient_level {patient_level} names no patient folder for it"
                    )
                patient = folder_parts[int(patient_level) - 1]
            else:
                patient = entry["patient_id"]
            image = _path_for_csv(path, out_path.parent) + (f"{SERIES_SEPARATOR}{entry['uid']}" if entry["uid"] else "")
            rows.append({"id": sample_id, "image": image, "label": class_dir.name, "patient_id": patient})
    if outside:
        shown = "; ".join(f"{p} -> {p.resolve()}" for p in outside[:5]) + ("; ..." if len(outside) > 5 else "")
        raise ValueError(
            f"{len(outside)} symbolic link(s) under {root_path} point outside it ({shown}); manifest build does not "
            "follow links out of the dataset root: copy those files into it, or build from a folder that holds them"
        )
    if not rows:
        raise ValueError(f"no image files with extensions {sorted(wanted)} in the class folders under {root_path}")

    # The whole CSV is built in memory so it is written atomically in one go.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "image", "label", "patient_id"])
    writer.writerows(escape_row([r["id"], r["image"], r["label"], r["patient_id"]]) for r in rows)
    _keeping_mode(out_path, lambda: atomic_write_text(out_path, buffer.getvalue(), private=True))
    return out_path


def _scan_class_folder(
    class_dir: Path, wanted: set[str], series: bool, left_out: dict[str, list[str]], root: Path
) -> list[dict[str, Any]]:
    """The rows of one class folder: ``{"id", "path", "uid", "folder", "patient_id"}`` sorted by id; files left
    out are added to ``left_out`` by reason."""
    dicom_wanted = ".dcm" in wanted
    entries: list[dict[str, Any]] = []

    def skip(reason: str, path: Path) -> None:
        left_out.setdefault(reason, []).append(path.relative_to(root).as_posix())

    for dirpath, dirnames, filenames in os.walk(class_dir):
        folder = Path(dirpath)
        # Hidden folders and files (".git", macOS "._x.png") are never images of the dataset.
        for name in dirnames:
            if name.startswith("."):
                skip("hidden folder", folder / name)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        dicoms: list[Path] = []
        for name in sorted(filenames):
            path = folder / name
            if name.startswith("."):
                skip("hidden file", path)
                continue
            ext = image_extension(name, wanted)
            if ext is not None and IMAGE_EXTENSIONS.get(ext) != "dicom":
                entries.append(_entry(path, path.relative_to(root).as_posix()[: -len(ext)], folder))
            elif ext is not None or (dicom_wanted and image_extension(name) is None and _is_dicom(path)):
                dicoms.append(path)
            elif image_extension(name) is not None:
                skip(f"extension not asked for ({sorted(wanted)})", path)
            else:
                skip("not an image (unknown extension and no DICOM 'DICM' marker)", path)
        entries.extend(_dicom_entries(folder, dicoms, series, skip, root))
    return sorted(entries, key=lambda e: e["id"])


def _is_dicom(path: Path) -> bool:
    from alr_monai.data.dicom import has_dicom_preamble

    return has_dicom_preamble(path)


def _entry(path: Path, sample_id: str, folder: Path, uid: str = "", patient_id: str = "") -> dict[str, Any]:
    return {"id": sample_id, "path": path, "uid": uid, "folder": folder, "patient_id": patient_id}


def _dicom_entries(
    folder: Path, files: list[Path], series: bool, skip: Callable[[str, Path], None], root: Path
) -> list[dict[str, Any]]:
    """Rows for a folder's DICOM files: a series of slices is one row (its folder), every other file its own."""
    import pydicom

    from alr_monai.data.dicom import DICOMDIR_SOP_CLASS, quiet_pydicom

    def file_id(path: Path) -> str:
        ext = image_extension(path.name)
        relative = path.relative_to(root).as_posix()
        return relative[: -len(ext)] if ext else relative

    singles: list[dict[str, Any]] = []
    by_uid: dict[str, list[tuple[Path, str]]] = {}
    for path in files:
        try:
            with quiet_pydicom():
                header = pydicom.dcmread(path, defer_size="1 KB")
        except Exception:  # an unreadable file keeps its row: `alr manifest check` names it with the reason
            singles.append(_entry(path, file_id(path), folder))
            continue
        patient = str(header.get("PatientID", "") or "").strip()
        # No pixels and no image header: an SR, RT plan or DICOMDIR. A CT header without pixels keeps its row, for
        # `alr manifest check` to name as truncated.
        if str(header.get("SOPClassUID", "")) == DICOMDIR_SOP_CLASS or (
            "PixelData" not in header and not header.get("Rows")
        ):
            modality = str(header.get("Modality", "") or "").strip() or "no modality"
            skip(f"DICOM without pixel data ({modality}): not an image", path)
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "").strip()
        slice_like = (
            int(header.get("NumberOfFrames", 1) or 1) == 1
            and "ImagePositionPatient" in header
            and "ImageOrientationPatient" in header
        )
        if series and uid and slice_like:
            by_uid.setdefault(uid, []).append((path, patient))
        else:
            singles.append(_entry(path, file_id(path), folder, patient_id=patient))
    several = sum(len(members) > 1 for members in by_uid.values()) > 1 or len(singles) > 0
    for uid, members in sorted(by_uid.items()):
        if len(members) == 1:
            path, patient = members[0]
            singles.append(_entry(path, file_id(path), folder, patient_id=patient))
            continue
        whole_folder = not several and len(by_uid) == 1
        sample_id = folder.relative_to(root).as_posix() + ("" if whole_folder else f"{SERIES_SEPARATOR}{uid}")
        patient = next((p for _, p in members if p), "")
        singles.append(_entry(folder, sample_id, folder, uid="" if whole_folder else uid, patient_id=patient))
    return singles


def _keeping_mode(path: str | Path, write: Callable[[], object]) -> None:
    """Run an atomic ``write`` of ``path``; a file that existed keeps its permissions (a data manager may have
    restricted who can read a manifest or class map)."""
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else None
    write()
    if mode is not None:
        os.chmod(path, mode)


def _infer_class_names(labels: Iterable[str]) -> list[str]:
    unique = set(labels)
    try:
        # Ties such as "1" and "01" are broken by the string so the order stays deterministic.
        return sorted(unique, key=lambda name: (int(name), name))
    except ValueError:
        return sorted(unique)


def _absolute_image_path(image: str, base: Path) -> Path:
    candidate = Path(image).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    # normpath collapses "a/../b" without following symlinks, so the stored path is what the user wrote.
    return Path(os.path.normpath(candidate))


def _image_problem(image_path: Path, root: Path | None, check_images: bool) -> str | None:
    """Returns why an image row is unusable, or None if it is fine."""
    if root is not None:
        resolved = image_path.resolve()
        if resolved != root and root not in resolved.parents:
            return f"image path {image_path} escapes the dataset root {root}"
    kind = image_kind(image_path)
    if kind is None:
        supported = ", ".join(IMAGE_EXTENSIONS)
        if image_extension(image_path) is None and not image_path.exists():
            return f"image file or DICOM series folder not found: {image_path}"
        return (
            f"unsupported file extension for {image_path.name!r} (supported: {supported}, a DICOM series folder, "
            "or a DICOM file without extension)"
        )
    from alr_monai.data.dicom import is_series_ref, series_stamp_files, split_series_ref

    if is_series_ref(image_path):
        # A series folder must hold DICOM files; whether they make one volume is for the decode (`check --decode`,
        # training), which reports a broken series like any other bad image, droppable.
        if not series_stamp_files(image_path):
            return f"DICOM series folder {split_series_ref(image_path)[0]} holds no DICOM files (.dcm or 'DICM' marker)"
        return None
    if not image_path.exists():
        return f"image file not found: {image_path}"
    if not image_path.is_file():
        return f"image path is not a file: {image_path}"
    if image_path.stat().st_size == 0:
        return f"image file is empty (0 bytes): {image_path}"
    if check_images:
        error = _read_error(image_path, kind)
        if error is not None:
            return f"unreadable image {image_path}: {error}"
    return None


def _read_error(image_path: Path, kind: ImageKind) -> str | None:
    """Opens the image with the library that will later load it; returns the error text, or None if readable."""
    try:
        if kind == "pil":
            from PIL import Image

            with Image.open(image_path) as img:
                img.verify()
        elif kind == "dicom":
            import pydicom

            from alr_monai.data.dicom import no_pixel_data_error, quiet_pydicom

            # defer_size keeps the pixel bytes on disk: we only need to know PixelData is there.
            with quiet_pydicom(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a file pydicom warns about is reported below, once
                dataset = pydicom.dcmread(image_path, defer_size="1 KB")
            if "PixelData" not in dataset:
                error = no_pixel_data_error(image_path, dataset)
                return f"{error.reason}; fix: {error.fix}"
        else:
            import nibabel

            nibabel.load(image_path)
    except Exception as err:  # any decoder failure means the row is unusable; report it, do not crash
        return f"{type(err).__name__}: {err}"
    return None


def _normalise_extensions(extensions: Iterable[str]) -> set[str]:
    if isinstance(extensions, str):
        extensions = [extensions]
    normalised = {ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions}
    if not normalised:
        raise ValueError("no image extensions given")
    return normalised


def _path_for_csv(file_path: Path, csv_dir: Path) -> str:
    try:
        return Path(os.path.relpath(file_path, csv_dir)).as_posix()
    except ValueError:  # e.g. another drive on Windows: no relative path exists
        return str(file_path)


def noisy_column_labels(manifest: Manifest, column: str, split: str = "train") -> list[int]:
    """The class indices of a second label column of ``split``'s rows: real noisy labels (noise kind ``given``).

    Its values are class names as in ``label`` (the truth, which sets the classes). Every bad row is reported.

    Raises:
        ManifestError: the column is missing, or a row's value is empty or not a class, naming the file and row.
    """
    records = manifest.select(split)
    if records and column not in records[0]["extra"]:
        columns = sorted(records[0]["extra"])
        raise ManifestError(
            [
                f"{manifest.path} row 1: no column {column!r} (noisy_label_column) of noisy labels; extra columns: {columns}"
            ],
            manifest.path,
        )
    lookup = manifest.class_to_index()
    problems, labels = [], []
    for record in records:
        value = record["extra"][column].strip()
        if value not in lookup:
            problems.append(
                f"{manifest.path} row {record['row']}: {column} {value!r} is not a class of the label column "
                f"({', '.join(manifest.class_names)})"
            )
        labels.append(lookup.get(value, -1))
    if problems:
        raise ManifestError(problems, manifest.path)
    return labels
