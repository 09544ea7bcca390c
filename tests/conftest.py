"""Shared test fixtures.

Fixture name prefixes mark their owner area: ``manifest_*`` (manifest CSVs and small datasets) and ``imagefile_*``
(writers for DICOM / NIfTI / PNG files). Every fixture writes only under pytest's ``tmp_path``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``alr argv`` in this process; returns (exit code, stdout, stderr)."""
    from alr_monai import cli

    code = 0
    try:
        cli.main(argv)
    except SystemExit as exit_:
        code = 0 if exit_.code is None else exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def hold_run_lock(run_dir: Path, command: str = "answer"):
    """Another process that takes ``run_dir``'s run lock as ``command`` and holds it until :func:`release_run_lock`."""
    import os
    import subprocess
    import sys

    holder = (
        "import sys, alr_monai.runlock as r; r.acquire(sys.argv[1], sys.argv[2]); print('held', flush=True); "
        "sys.stdin.read()"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-c", holder, str(run_dir), command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout.readline().strip() == "held"
    return process


def release_run_lock(process) -> None:
    """Let a :func:`hold_run_lock` process release the lock and exit."""
    process.stdin.close()
    process.wait(timeout=60)


def new_dicom_dataset(sop_class_uid: str):
    """An empty DICOM dataset of ``sop_class_uid`` with its file meta (explicit VR little endian) and new UIDs."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    return ds


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    patient_id: str | None = None,
    rescale_intercept: float = 0.0,
    rescale_slope: float = 1.0,
    with_pixels: bool = True,
) -> Path:
    from pydicom.uid import CTImageStorage

    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError("the test DICOM writer makes single 2D slices")
    signed = bool(np.issubdtype(pixels.dtype, np.signedinteger))
    stored = pixels.astype(np.int16 if signed else np.uint16)

    ds = new_dicom_dataset(CTImageStorage)
    ds.Modality = "CT"
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.Rows, ds.Columns = stored.shape
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing = [1, 1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = rescale_intercept
    ds.RescaleSlope = rescale_slope
    if with_pixels:
        ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def imagefile_dicom() -> Callable[..., Path]:
    """Returns ``write(path, pixels, patient_id=None, rescale_intercept=0, rescale_slope=1, with_pixels=True)``.

    Writes a single-frame 2D CT DICOM (16 bit, MONOCHROME2, explicit VR little endian) of ``pixels`` shaped
    (rows, columns); ``with_pixels=False`` omits PixelData.
    """
    return _write_dicom


@pytest.fixture
def imagefile_nifti() -> Callable[..., Path]:
    """Returns ``write(path, array, affine=None)``: saves ``array`` as NIfTI (.nii or .nii.gz) with nibabel."""
    import nibabel

    def write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        nibabel.save(nibabel.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), path)
        return path

    return write


@pytest.fixture
def imagefile_png() -> Callable[..., Path]:
    """Returns ``write(path, array, mode=None)``: saves a uint8 array (H, W), (H, W, 3) or (H, W, 4) with PIL.

    The format follows the suffix (.png, .jpg, ...).
    """
    from PIL import Image

    def write(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.asarray(array, dtype=np.uint8))
        if mode is not None:
            image = image.convert(mode)
        image.save(path)
        return path

    return write


@pytest.fixture
def manifest_write_csv() -> Callable[..., Path]:
    """Returns ``write(path, rows, header=None, encoding="utf-8")`` for manifest CSVs.

    ``rows`` are dicts (header = keys of the first row unless given) or sequences (``header`` required).
    """

    def write(
        path: Path,
        rows: Sequence[Mapping[str, object] | Sequence[object]],
        header: Sequence[str] | None = None,
        encoding: str = "utf-8",
    ) -> Path:
        if header is None:
            if not rows or not isinstance(rows[0], Mapping):
                raise ValueError("header is required unless rows are dicts")
            header = list(rows[0].keys())
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding=encoding, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for row in rows:
                writer.writerow([row.get(column, "") for column in header] if isinstance(row, Mapping) else row)
        return path

    return write


@pytest.fixture
def manifest_mixed_dataset(tmp_path: Path, imagefile_dicom, imagefile_nifti, imagefile_png, manifest_write_csv) -> Path:
    """A small valid dataset of 2D images in all supported formats, with its manifest; returns the manifest path.

    Six 12x10 images (DICOM, NIfTI, .nii.gz, gray PNG, RGB PNG, JPEG), classes ``normal`` / ``abnormal``, split
    ``train`` (4) / ``val`` (2), two patients per split (none in both); an extra column ``site`` is passed through.
    """
    rng = np.random.default_rng(0)
    data = tmp_path / "mixed"
    gray = rng.integers(0, 256, size=(12, 10), dtype=np.uint8)
    files = [
        imagefile_dicom(data / "img0.dcm", gray.astype(np.int16), patient_id="P0"),
        imagefile_nifti(data / "img1.nii", gray.T.astype(np.float32)),
        imagefile_nifti(data / "img2.nii.gz", gray.T[:, :, None].astype(np.float32)),
        imagefile_png(data / "img3.png", gray),
        imagefile_png(data / "img4.png", np.stack([gray, 255 - gray, gray // 2], axis=-1)),
        imagefile_png(data / "img5.jpg", np.stack([gray] * 3, axis=-1)),
    ]
    rows = [
        {
            "id": f"img{i}",
            "image": f.name,
            "label": "abnormal" if i % 2 else "normal",
            "patient_id": f"P{i % 2 + (0 if i < 4 else 2)}",
            "split": "train" if i < 4 else "val",
            "site": "A" if i < 3 else "B",
        }
        for i, f in enumerate(files)
    ]
    return manifest_write_csv(data / "manifest.csv", rows)


@pytest.fixture(scope="session")
def write_tiny_bloodmnist() -> Callable[[Path, Mapping[str, int]], Path]:
    """Returns ``write(folder, per_class)``: writes ``folder/bloodmnist.npz``, a class-balanced slice of the
    embedded set in the MedMNIST layout with ``per_class[split]`` images of each class per split; returns folder."""

    def write(folder: Path, per_class: Mapping[str, int]) -> Path:
        from alr_monai.data.medmnist import load_medmnist

        data = load_medmnist()
        arrays = {}
        for split, count in per_class.items():
            part = data[split]
            keep = np.concatenate([np.flatnonzero(part.labels == c)[:count] for c in range(data.num_classes)])
            arrays[f"{split}_images"] = part.images[keep]
            arrays[f"{split}_labels"] = part.labels[keep].reshape(-1, 1)
        np.savez(folder / "bloodmnist.npz", **arrays)
        return folder

    return write


# the classes of the ``pending_run`` fixture (test_cli.py and test_readers.py answer its round)
PENDING_RUN_CLASSES = ["normal", "abnormal", "unclear"]


@pytest.fixture
def pending_run(tmp_path) -> Path:
    """A run folder after phase 1 with round 1 queried (ids s3, s4, s5, s6) and nothing answered."""
    import json

    from alr_monai.relabel import RoundState, start_round

    run_dir = tmp_path / "run"
    relabel_dir = run_dir / "relabel"
    relabel_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"epoch": 2, "last": {"train": {}}}))
    ids = [f"s{i}" for i in range(10)]
    given = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    trusted = [True, True, True, False, False, False, False, False, False, False]
    RoundState.initial(ids, given, trusted, PENDING_RUN_CLASSES).save(relabel_dir / "state.json")
    rows = [
        {
            "id": f"s{i}",
            "given_label": given[i],
            "predicted_label": 1,
            "predicted_probability": 0.5,
            "score": 1 - i / 10,
        }
        for i in (3, 4, 5, 6)
    ]
    start_round(relabel_dir / "state.json", relabel_dir / "queries" / "round_1.csv", 1, rows)
    return run_dir
