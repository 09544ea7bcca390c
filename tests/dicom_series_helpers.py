"""Writers of synthetic DICOM series for the tests: one file per slice, positions, patients, MONOCHROME1."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from conftest import new_dicom_dataset


def write_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str | None = "P0",
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    position: Sequence[float] | None = (0.0, 0.0, 0.0),
    orientation: Sequence[float] | None = (1, 0, 0, 0, 1, 0),
    instance: int | None = 1,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    pixel_spacing: Sequence[float] = (0.5, 0.7),
    modality: str = "CT",
    with_pixels: bool = True,
) -> Path:
    """Writes one single-frame 16-bit DICOM slice (rows x columns = ``pixels.shape``)."""
    from pydicom.uid import CTImageStorage

    ds = new_dicom_dataset(CTImageStorage)
    ds.Modality = modality
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.SeriesInstanceUID = series_uid
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    stored = np.asarray(pixels).astype(np.uint16)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if with_pixels:
        ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    volume: np.ndarray,
    *,
    spacing: float = 2.0,
    names: Sequence[str] | None = None,
    shuffle_names: bool = True,
    **kwargs,
) -> list[Path]:
    """Writes ``volume`` (rows, columns, slices) as one file per slice at z = k * spacing.

    File names are given in a shuffled order (``IM0003`` may hold slice 0) so a reader that sorts by name fails,
    and instance numbers are reversed so one that sorts by InstanceNumber fails too.
    """
    count = volume.shape[-1]
    order = np.random.default_rng(0).permutation(count) if shuffle_names else np.arange(count)
    names = list(names) if names is not None else [f"IM{int(order[k]) + 1:04d}" for k in range(count)]
    return [
        write_slice(
            folder / names[k],
            volume[..., k],
            position=(0.0, 0.0, k * spacing),
            instance=count - k,
            **kwargs,
        )
        for k in range(count)
    ]
