"""DICOM as hospitals store it: files without an extension, series of one file per slice, MONOCHROME1.

* :func:`has_dicom_preamble` recognises a DICOM file by its ``DICM`` marker at byte 128 (a PACS export names its
  files ``IM0001``, with no ``.dcm``).
* A CT or MR series stored one file per slice is a *series reference*: a folder of slice files, or
  ``FOLDER#SERIES_UID`` for one series of a folder that holds several. :func:`read_series` reads it as one volume:
  slices ordered by ``ImagePositionPatient`` projected on the slice normal (``InstanceNumber`` when positions are
  missing), spacing from ``PixelSpacing`` and the slice positions, rescale slope/intercept applied per slice,
  MONOCHROME1 inverted; a series with a missing slice, several series, or slices of different size, orientation
  or spacing is refused with an :class:`~alr_monai.data.image_errors.ImageFileError` naming the folder.
* :func:`invert_monochrome1`: MONOCHROME1 stores white as 0 (many X-ray vendors do); the pipeline works in
  MONOCHROME2 (higher = brighter), so such pixels become ``min + max - value`` (the image's own range is kept).

The volume comes out like MONAI's readers give volumes: ``(columns, rows, slices)`` (x first) with a RAS affine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from alr_monai.data.image_errors import ImageFileError

__all__ = [
    "SERIES_SEPARATOR",
    "DICOMDIR_SOP_CLASS",
    "has_dicom_preamble",
    "is_series_ref",
    "split_series_ref",
    "series_files",
    "series_stamp_files",
    "read_series",
    "invert_monochrome1",
    "quiet_pydicom",
    "no_pixel_data_error",
]

SERIES_SEPARATOR = "#"
_quiet_lock = threading.Lock()
_quiet_depth = 0
_saved_level = logging.NOTSET
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_FIX_SERIES = "export the complete series again from the PACS"


def has_dicom_preamble(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a file with the DICOM ``DICM`` marker at byte 128 (DICOM Part 10)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def split_series_ref(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """``(folder, series UID or None)`` of a series reference ``FOLDER`` or ``FOLDER#UID``."""
    text = os.fspath(path)
    if SERIES_SEPARATOR in text and not os.path.isdir(text):
        folder, uid = text.rsplit(SERIES_SEPARATOR, 1)
        if os.path.isdir(folder) and uid.strip():
            return Path(folder), uid.strip()
    return Path(text), None


def is_series_ref(path: str | os.PathLike[str]) -> bool:
    """True for a folder, or ``FOLDER#UID`` whose folder exists: what the pipeline reads as a DICOM series."""
    folder, _ = split_series_ref(path)
    return folder.is_dir()


def _candidate_files(folder: Path) -> list[Path]:
    """The folder's files that are DICOM (``.dcm`` or the ``DICM`` marker), hidden files skipped; not recursive."""
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.name.lower().endswith(".dcm") or has_dicom_preamble(entry):
            files.append(entry)
    return files


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's own logger (it logs an ERROR with a traceback for some unreadable files): every failure
    is reported once, by us, naming the file."""
    global _quiet_depth, _saved_level
    logger = logging.getLogger("pydicom")
    # Decoding runs in threads: only the first to enter silences, only the last to leave restores.
    with _quiet_lock:
        if _quiet_depth == 0:
            _saved_level = logger.level
            logger.setLevel(logging.CRITICAL)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                logger.setLevel(_saved_level)


def _headers(files: list[Path], where: Path) -> list[tuple[Path, Any]]:
    import pydicom

    headers = []
    with quiet_pydicom():
        for file in files:
            try:
                # defer_size leaves the pixel bytes on disk but shows whether PixelData is there.
                headers.append((file, pydicom.dcmread(file, defer_size="1 KB")))
            except Exception as error:  # one unreadable slice makes the series unusable: say which
                raise ImageFileError(
                    where,
                    "broken series",
                    f"slice file {file.name} cannot be read ({type(error).__name__}: {' '.join(str(error).split())})",
                    _FIX_SERIES,
                ) from error
    return headers


def series_files(ref: str | os.PathLike[str]) -> list[tuple[Path, Any]]:
    """The slice files of a series reference with their headers (no pixels), unordered.

    Raises:
        ImageFileError: kind ``broken series``: the folder holds no DICOM files, a slice cannot be read, the folder
            holds several series and no UID is named (each UID is listed), or the named UID is not there.
    """
    folder, uid = split_series_ref(ref)
    where = Path(os.fspath(ref))
    files = _candidate_files(folder)
    if not files:
        raise ImageFileError(where, "broken series", "the folder holds no DICOM files (.dcm or 'DICM' marker)")
    headers = [(f, h) for f, h in _headers(files, where) if str(h.get("SOPClassUID", "")) != DICOMDIR_SOP_CLASS]
    by_uid: dict[str, list[tuple[Path, Any]]] = {}
    for file, header in headers:
        by_uid.setdefault(str(header.get("SeriesInstanceUID", "") or ""), []).append((file, header))
    if uid is not None:
        if uid not in by_uid:
            raise ImageFileError(
                where, "broken series", f"no slice of series {uid} in {folder} (series there: {sorted(by_uid)})"
            )
        return by_uid[uid]
    if len(by_uid) > 1:
        listing = ", ".join(f"{u or '<no UID>'} ({len(v)} files)" for u, v in sorted(by_uid.items()))
        raise ImageFileError(
            where,
            "broken series",
            f"mixed series: the folder holds {len(by_uid)} series ({listing})",
            f"name one series per row as {folder}{SERIES_SEPARATOR}<SeriesInstanceUID>, or move each series to its "
            "own folder (`alr manifest build` writes one row per series)",
        )
    return headers


def series_stamp_files(ref: str | os.PathLike[str]) -> list[Path]:
    """The files whose size and modification time say whether a series reference changed (its folder's files)."""
    folder, _ = split_series_ref(ref)
    return _candidate_files(folder) if folder.is_dir() else []


def _floats(header: Any, name: str, count: int) -> np.ndarray | None:
    value = header.get(name)
    try:
        array = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (count,) and np.isfinite(array).all() else None


def _order_and_spacing(headers: list[tuple[Path, Any]], where: Path) -> tuple[list[tuple[Path, Any]], float, Any]:
    """Slices in order along the normal, the slice spacing, and the slice step vector (LPS mm) or None."""
    orientations = [_floats(h, "ImageOrientationPatient", 6) for _, h in headers]
    positions = [_floats(h, "ImagePositionPatient", 3) for _, h in headers]
    if all(o is not None for o in orientations) and all(p is not None for p in positions):
        first = orientations[0]
        for (file, _), orientation in zip(headers, orientations, strict=True):
            if not np.allclose(orientation, first, atol=1e-4):
                raise ImageFileError(
                    where,
                    "broken series",
                    f"inconsistent orientation: slice {file.name} has ImageOrientationPatient "
                    f"{orientation.round(4).tolist()}, slice {headers[0][0].name} {first.round(4).tolist()}",
                    "a series must be one stack of parallel slices; export the series again or split it",
                )
        normal = np.cross(first[:3], first[3:])
        distances = np.asarray([float(np.dot(p, normal)) for p in positions])
        order = np.argsort(distances, kind="stable")
        ordered = [headers[i] for i in order]
        distances = distances[order]
        if len(ordered) == 1:
            thickness = _floats(ordered[0][1], "SliceThickness", 1)
            return ordered, float(thickness[0]) if thickness is not None else 1.0, None
        steps = np.diff(distances)
        if (steps < 1e-4).any():
            i = int(np.argmax(steps < 1e-4))
            raise ImageFileError(
                where,
                "broken series",
                f"slices {ordered[i][0].name} and {ordered[i + 1][0].name} lie at the same position "
                f"({distances[i]:.3f} mm along the slice normal): duplicated slices or two series in one folder",
                _FIX_SERIES,
            )
        # The most common step (ties: the smallest) is the spacing; a missing slice leaves one step twice as long.
        rounded, counts = np.unique(np.round(steps, 2), return_counts=True)
        spacing = float(np.median(steps[np.abs(steps - rounded[np.argmax(counts)]) <= 0.01]))
        off = np.abs(steps - spacing) > max(0.01, 0.01 * spacing)
        if off.any():
            i = int(np.argmax(off))
            gap = steps[i]
            ratio = gap / spacing
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
                missing = round(ratio) - 1
                raise ImageFileError(
                    where,
                    "broken series",
                    f"missing slice: {missing} slice{'s' if missing != 1 else ''} missing between "
                    f"{ordered[i][0].name} and {ordered[i + 1][0].name} (gap {gap:.3f} mm, slice spacing "
                    f"{spacing:.3f} mm)",
                    _FIX_SERIES,
                )
            raise ImageFileError(
                where,
                "broken series",
                f"inconsistent spacing: slices {ordered[i][0].name} and {ordered[i + 1][0].name} are {gap:.3f} mm "
                f"apart, the others {spacing:.3f} mm",
                "a volume needs evenly spaced slices; export the series again or resample it",
            )
        step = (positions[order[-1]] - positions[order[0]]) / (len(ordered) - 1)
        return ordered, spacing, step
    numbers = [h.get("InstanceNumber") for _, h in headers]
    if any(n is None or str(n).strip() == "" for n in numbers):
        raise ImageFileError(
            where,
            "broken series",
            "slices carry neither ImagePositionPatient/ImageOrientationPatient nor InstanceNumber, so their order "
            "is unknown",
            _FIX_SERIES,
        )
    numbers = [int(n) for n in numbers]
    if len(set(numbers)) != len(numbers):
        raise ImageFileError(where, "broken series", "two slices share an InstanceNumber and have no positions")
    ordered = [headers[i] for i in np.argsort(numbers, kind="stable")]
    between = _floats(ordered[0][1], "SpacingBetweenSlices", 1)
    thickness = _floats(ordered[0][1], "SliceThickness", 1)
    spacing = float(between[0]) if between is not None else float(thickness[0]) if thickness is not None else 1.0
    return ordered, spacing, None


def invert_monochrome1(array: np.ndarray, photometric: Any) -> np.ndarray:
    """``min + max - value`` for a MONOCHROME1 image (0 = white), so higher values are brighter as in MONOCHROME2.

    Args:
        array: the pixel values after rescale slope/intercept.
        photometric: the file's PhotometricInterpretation.

    Returns:
        The inverted array (float32) for MONOCHROME1, else ``array`` unchanged.
    """
    if str(photometric or "").strip().upper() != "MONOCHROME1" or array.size == 0:
        return array
    values = np.asarray(array, dtype=np.float32)
    return (values.min() + values.max()) - values


def no_pixel_data_error(path: str | os.PathLike[str], header: Any) -> ImageFileError:
    """The error for a DICOM file without pixel data: ``not an image`` for an object that never holds one (an RT
    plan, a structured report, a DICOMDIR: no Rows/Columns), else ``truncated``.

    A file cut short inside its compressed pixel data also reads without PixelData (pydicom drops the unfinished
    element), and one cut before it still has an image header: both are reported as truncated.
    """
    try:
        content = Path(path).read_bytes()
    except OSError:
        content = b""
    if b"\xe0\x7f\x10\x00" in content or b"\x7f\xe0\x00\x10" in content:
        return ImageFileError(
            path, "truncated", "file is truncated: it ends inside its pixel data", "copy the file again from its source"
        )
    if header.get("Rows") and header.get("Columns"):
        return ImageFileError(
            path,
            "truncated",
            f"an image header ({header.get('Rows')} x {header.get('Columns')}) without pixel data: the file was cut "
            "short or exported without its pixels",
            "copy the file again from its source",
        )
    modality = str(header.get("Modality", "") or "").strip() or "unknown modality"
    sop = header.get("SOPClassUID")
    name = getattr(sop, "name", "") if sop is not None else ""
    what = f"{modality}, {name}" if name and name != str(sop) else modality
    return ImageFileError(
        path,
        "not an image",
        f"a DICOM object without pixel data ({what}): it holds no image",
        "remove the row from the manifest (or pass --drop_bad_images true); RT plans, structured reports and "
        "DICOMDIR files are not images",
    )


def read_series(ref: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Reads a DICOM series (a folder of slice files, or ``FOLDER#UID``) as one volume.

    Args:
        ref: the series reference.

    Returns:
        ``(array, meta)``: float32 ``(columns, rows, slices)`` values after rescale slope/intercept (HU for CT),
        MONOCHROME1 inverted; ``meta`` holds ``affine`` and ``original_affine`` (RAS, as MONAI's readers),
        ``spacing`` (column, row, slice spacing in mm), ``spatial_shape``, ``original_channel_dim`` (no channel),
        ``space`` and ``alr_series_slices`` (the slice file names in order).

    Raises:
        ImageFileError: kind ``broken series`` (see :func:`series_files`; also a missing slice, inconsistent
            spacing, size or orientation, a slice without pixel data or one that cannot be decoded), naming the
            folder and the slice files concerned.
    """
    import pydicom

    where = Path(os.fspath(ref))
    headers = series_files(ref)
    for file, header in headers:
        if "PixelData" not in header and "FloatPixelData" not in header and "DoubleFloatPixelData" not in header:
            error = no_pixel_data_error(file, header)
            raise ImageFileError(where, "broken series", f"slice {file.name}: {error.reason}", _FIX_SERIES)
    shapes = {(int(h.get("Rows", 0) or 0), int(h.get("Columns", 0) or 0)) for _, h in headers}
    if len(shapes) > 1:
        sizes = ", ".join(f"{r}x{c}" for r, c in sorted(shapes))
        raise ImageFileError(
            where, "broken series", f"slices of different sizes ({sizes} rows x columns) in one series", _FIX_SERIES
        )
    ordered, slice_spacing, step = _order_and_spacing(headers, where)
    first = ordered[0][1]
    pixel_spacing = _floats(first, "PixelSpacing", 2)
    row_spacing, column_spacing = (
        (float(pixel_spacing[0]), float(pixel_spacing[1])) if pixel_spacing is not None else (1.0, 1.0)
    )

    slices = []
    with quiet_pydicom():
        for file, _ in ordered:
            try:
                dataset = pydicom.dcmread(file)
                values = np.asarray(dataset.pixel_array, dtype=np.float32)
            except Exception as error:  # one undecodable slice makes the volume unusable: name it
                from alr_monai.data.image_errors import classify_read_error

                inner = classify_read_error(file, error, dicom=True)
                raise ImageFileError(where, inner.kind, f"slice {file.name}: {inner.reason}", inner.fix) from error
            if values.ndim != 2:
                raise ImageFileError(
                    where,
                    "broken series",
                    f"slice {file.name} is not one 2D frame (shape {values.shape}): a series folder holds "
                    "single-frame slices",
                    "give a multi-frame or colour DICOM as a file of its own",
                )
            slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
            slices.append(values * slope + intercept)
    volume = np.stack(slices, axis=-1)  # (rows, columns, slices)
    volume = invert_monochrome1(volume, first.get("PhotometricInterpretation"))
    volume = np.ascontiguousarray(np.swapaxes(volume, 0, 1))  # (columns, rows, slices): x first, as MONAI's readers

    orientation = _floats(first, "ImageOrientationPatient", 6)
    origin = _floats(first, "ImagePositionPatient", 3)
    row_dir, column_dir = (
        (orientation[:3], orientation[3:]) if orientation is not None else (np.eye(3)[0], np.eye(3)[1])
    )
    if step is None:
        step = np.cross(row_dir, column_dir) * slice_spacing
    lps = np.eye(4)
    # Index i walks along a row (the row direction cosines, column spacing), j down the columns, k across slices.
    lps[:3, 0] = row_dir * column_spacing
    lps[:3, 1] = column_dir * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = origin if origin is not None else 0.0
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS, as MONAI's readers give affines
    meta = {
        "affine": affine,
        "original_affine": affine.copy(),
        "spacing": np.asarray([column_spacing, row_spacing, slice_spacing]),
        "spatial_shape": np.asarray(volume.shape),
        "original_channel_dim": float("nan"),
        "space": "RAS",
        "alr_series_slices": [file.name for file, _ in ordered],
    }
    return volume, meta
