"""``alr manifest check --decode`` and the training-side refusal of undecodable images (issue 12, item 2).

Every file is a real DICOM / NIfTI / PNG written into ``tmp_path`` (pydicom's own offline test files are copied for
the compressed syntaxes); each bad-file kind is a test with its expected message.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import new_dicom_dataset
from monai.bundle import ConfigWorkflow
from monai.data import CacheDataset
from PIL import features

from alr_monai import cli
from alr_monai.data.decode_check import DROPPED_FILE, BadImagesError, check_images, require_decodable
from alr_monai.data.image_errors import ImageFileError, classify_read_error, find_image_error
from alr_monai.data.manifest import load_manifest
from alr_monai.data.transforms import build_image_transforms
from alr_monai.workflow import bundle_file

# pydicom's bundled test files; get_testdata_file would try to download the ones not shipped.
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def _pydicom_file(name: str, to: Path) -> Path:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PYDICOM_FILES / name, to)
    return to


def write_multiframe_dicom(path: Path, frames: np.ndarray) -> Path:
    """A multi-frame 16-bit MONOCHROME2 DICOM of ``frames`` shaped (frames, rows, columns)."""
    from pydicom.uid import MRImageStorage

    ds = new_dicom_dataset(MRImageStorage)
    ds.Modality = "MR"
    ds.NumberOfFrames = frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = frames.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _truncate(path: Path, cut: int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    return path


def _manifest(tmp_path: Path, manifest_write_csv, files: dict[str, Path], split: bool = False) -> Path:
    rows = []
    for i, (sample_id, path) in enumerate(files.items()):
        row = {"id": sample_id, "image": str(path), "label": "a" if i % 2 else "b"}
        if split:
            row["split"] = "train" if i < len(files) - 2 else "val"
        rows.append(row)
    return manifest_write_csv(tmp_path / "manifest.csv", rows)


def _chain(spatial_dims: int = 2, **kwargs):
    return build_image_transforms([16] * spatial_dims, 1, spatial_dims=spatial_dims, **kwargs)


def _one(path: Path, spatial_dims: int = 2) -> ImageFileError:
    with pytest.raises(Exception) as excinfo:
        _chain(spatial_dims)({"image": str(path)})
    found = find_image_error(excinfo.value)
    assert found is not None, excinfo.value
    assert str(path) in str(found)
    return found


# ------------------------------------------------------------------------------------------ each bad-file kind
def test_good_files_decode(tmp_path, imagefile_dicom, imagefile_nifti, imagefile_png, manifest_write_csv):
    rng = np.random.default_rng(0)
    files = {
        "ct": imagefile_dicom(tmp_path / "ct.dcm", rng.integers(-500, 500, (12, 10)), "P0", -1024.0, 2.0),
        "mr": _pydicom_file("MR_small.dcm", tmp_path / "mr.dcm"),
        "mr_rle": _pydicom_file("MR_small_RLE.dcm", tmp_path / "mr_rle.dcm"),
        "nii": imagefile_nifti(tmp_path / "slice.nii.gz", rng.normal(size=(10, 12)).astype(np.float32)),
        "png": imagefile_png(tmp_path / "x.png", rng.integers(0, 255, (12, 10))),
    }
    manifest = load_manifest(_manifest(tmp_path, manifest_write_csv, files))
    assert check_images(manifest, _chain(), workers=2, progress=False) == []


def test_truncated_dicom_is_named_with_its_reason(tmp_path, imagefile_dicom):
    path = _truncate(imagefile_dicom(tmp_path / "cut.dcm", np.arange(400).reshape(20, 20)), 100)
    error = _one(path)
    assert error.kind == "truncated"
    assert "less than expected" in error.reason
    assert str(error).startswith(f"{path}: file is truncated")


@pytest.mark.parametrize(("name", "cut"), [("vol.nii", 200), ("vol.nii.gz", 200)])
def test_truncated_nifti_is_named(tmp_path, imagefile_nifti, name, cut):
    path = _truncate(imagefile_nifti(tmp_path / name, np.random.default_rng(0).normal(size=(16, 16))), cut)
    error = _one(path)
    assert error.kind == "truncated"


def test_multiframe_dicom_in_2d_says_spatial_dims_3(tmp_path):
    frames = np.arange(3 * 8 * 6).reshape(3, 8, 6)
    path = write_multiframe_dicom(tmp_path / "cine.dcm", frames)
    error = _one(path)
    assert error.kind == "multi-frame"
    assert "a multi-frame DICOM with 3 frames" in str(error) and "--spatial_dims 3" in str(error)

    # As a volume it reads frames as the third axis, x (columns) first like every other reader.
    volume = build_image_transforms([6, 8, 3], 1, spatial_dims=3, intensity="none")({"image": str(path)})["image"]
    assert volume.shape == (1, 6, 8, 3)
    for k in range(3):
        assert np.array_equal(volume[0, :, :, k].numpy(), frames[k].T.astype(np.float32))


def test_volume_in_2d_pipeline_says_which_flag(tmp_path, imagefile_nifti):
    path = imagefile_nifti(tmp_path / "ct.nii.gz", np.zeros((33, 41, 25), dtype=np.float32))
    error = _one(path)
    assert error.kind == "wrong shape"
    assert f"{path}: expected a 2D image (channel + 2 spatial axes), got shape (1, 33, 41, 25)" in str(error)
    assert "--spatial_dims 3" in str(error)


def test_image_in_3d_pipeline_says_which_flag(tmp_path, imagefile_png):
    path = imagefile_png(tmp_path / "flat.png", np.zeros((12, 10), dtype=np.uint8))
    error = _one(path, spatial_dims=3)
    assert error.kind == "wrong shape" and "--spatial_dims 2" in str(error)


def test_jpeg_ls_needs_a_decoder_package(tmp_path):
    path = _pydicom_file("MR_small_jpeg_ls_lossless.dcm", tmp_path / "jls.dcm")
    installed = any(importlib.util.find_spec(m) for m in ("libjpeg", "gdcm", "jpeg_ls"))
    if installed:  # a machine with the plugin decodes it; the check must then pass it
        assert _chain()({"image": str(path)})["image"].shape == (1, 16, 16)
        return
    error = _one(path)
    assert error.kind == "missing decoder"
    assert "JPEG-LS" in error.reason and "pylibjpeg-libjpeg" in error.fix and "python-gdcm" in error.fix


def test_jpeg_2000_decodes_or_names_the_package(tmp_path):
    path = _pydicom_file("JPEG2000.dcm", tmp_path / "j2k.dcm")
    if features.check("jpg_2000") or importlib.util.find_spec("openjpeg"):
        assert _chain()({"image": str(path)})["image"].shape == (1, 16, 16)
    else:
        error = _one(path)
        assert error.kind == "missing decoder" and "pylibjpeg-openjpeg" in error.fix


def test_12_bit_jpeg_names_the_package():
    error = classify_read_error(
        PYDICOM_FILES / "JPGExtended.dcm",
        RuntimeError("Unable to decode as exceptions were raised by all available plugins: pillow: not supported"),
        dicom=True,
    )
    assert error.kind == "missing decoder" and "12-bit" in error.reason and "pylibjpeg-libjpeg" in error.fix


def test_garbage_file_is_undecodable(tmp_path):
    path = tmp_path / "junk.nii"
    path.write_bytes(b"this is not a NIfTI file at all" * 20)
    error = _one(path)
    assert error.kind == "undecodable" and "cannot decode" in error.reason


def test_image_error_pickles_for_worker_processes(tmp_path):
    error = ImageFileError(tmp_path / "x.dcm", "truncated", "file is truncated", "copy it again")
    again = pickle.loads(pickle.dumps(error))
    assert (again.path, again.kind, again.reason, again.fix, str(again)) == (
        error.path,
        error.kind,
        error.reason,
        error.fix,
        str(error),
    )


# ------------------------------------------------------------------------------------- the whole manifest at once
@pytest.fixture
def bad_manifest(tmp_path, imagefile_dicom, imagefile_nifti, manifest_write_csv) -> Path:
    rng = np.random.default_rng(1)
    files = {
        "good0": imagefile_dicom(tmp_path / "good0.dcm", rng.integers(0, 200, (12, 10))),
        "cut": _truncate(imagefile_dicom(tmp_path / "cut.dcm", rng.integers(0, 200, (20, 20))), 100),
        "good1": imagefile_dicom(tmp_path / "good1.dcm", rng.integers(0, 200, (12, 10))),
        "cine": write_multiframe_dicom(tmp_path / "cine.dcm", rng.integers(0, 200, (4, 8, 8))),
        "good2": imagefile_nifti(tmp_path / "good2.nii", rng.normal(size=(10, 12)).astype(np.float32)),
        "vol": imagefile_nifti(tmp_path / "vol.nii.gz", rng.normal(size=(8, 8, 6)).astype(np.float32)),
        "good3": imagefile_dicom(tmp_path / "good3.dcm", rng.integers(0, 200, (12, 10))),
        "good4": imagefile_dicom(tmp_path / "good4.dcm", rng.integers(0, 200, (12, 10))),
    }
    return _manifest(tmp_path, manifest_write_csv, files, split=True)


def test_check_reports_every_bad_file_in_row_order(bad_manifest):
    bad = check_images(load_manifest(bad_manifest), _chain(), workers=2, progress=False)
    assert [(b.row, b.id, b.kind) for b in bad] == [
        (3, "cut", "truncated"),
        (5, "cine", "multi-frame"),
        (7, "vol", "wrong shape"),
    ]
    assert all(Path(b.image).name in b.line(bad_manifest) for b in bad)
    assert bad[0].line(bad_manifest).startswith(f"{bad_manifest} row 3 (id cut): {bad[0].image}: [truncated]")


def test_require_decodable_refuses_unless_told_to_drop(bad_manifest, tmp_path, caplog):
    manifest = load_manifest(bad_manifest)
    with pytest.raises(BadImagesError) as excinfo:
        require_decodable(manifest, _chain(), output_dir=tmp_path / "run")
    message = str(excinfo.value)
    assert "3 problems" in message and "cut.dcm" in message and "cine.dcm" in message and "vol.nii.gz" in message
    assert "--drop_bad_images true" in message

    with caplog.at_level(logging.WARNING, logger="alr_monai"):
        kept = require_decodable(manifest, _chain(), drop_bad_images=True, output_dir=tmp_path / "run")
    assert [r["id"] for r in kept.records] == ["good0", "good1", "good2", "good3", "good4"]
    assert kept.class_names == manifest.class_names
    assert "dropped 3 of 8 manifest rows" in caplog.text and "cine.dcm" in caplog.text
    with open(tmp_path / "run" / DROPPED_FILE, newline="") as handle:
        dropped = list(csv.DictReader(handle))
    assert [(d["id"], d["kind"]) for d in dropped] == [
        ("cut", "truncated"),
        ("cine", "multi-frame"),
        ("vol", "wrong shape"),
    ]


def test_cli_check_decode_lists_bad_files_and_exits_2(bad_manifest, capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["manifest", "check", str(bad_manifest), "--decode", "--workers", "2"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    for name, kind in (("cut.dcm", "[truncated]"), ("cine.dcm", "[multi-frame]"), ("vol.nii.gz", "[wrong shape]")):
        assert any(name in line and kind in line for line in err.splitlines()), err
    assert "3 of 8 images cannot be used" in err

    # As a volume pipeline the multi-frame file is fine and the 2D ones are the wrong shape.
    with pytest.raises(SystemExit):
        cli.main(["manifest", "check", str(bad_manifest), "--decode", "--spatial_dims", "3"])
    err = capsys.readouterr().err
    assert "cine.dcm" not in err and "good0.dcm" in err and "--spatial_dims 2" in err


def test_cli_check_decode_passes_a_good_manifest(tmp_path, imagefile_dicom, manifest_write_csv, capsys):
    files = {f"g{i}": imagefile_dicom(tmp_path / f"g{i}.dcm", np.full((8, 8), i)) for i in range(3)}
    path = _manifest(tmp_path, manifest_write_csv, files)
    cli.main(["manifest", "check", str(path), "--decode"])
    assert "3 rows OK, every image decoded" in capsys.readouterr().out


def test_cli_check_decode_refuses_unknown_keys(bad_manifest):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["manifest", "check", str(bad_manifest), "--decode", "--spatial_dim", "3"])
    assert excinfo.value.code == 2


def test_dataset_read_errors_name_the_file(bad_manifest):
    items = load_manifest(bad_manifest).items()
    with pytest.raises(Exception) as excinfo:
        CacheDataset(items, _chain(), cache_rate=1.0, num_workers=0, progress=False)
    cause = cli.unwrap(excinfo.value)
    assert isinstance(cause, ImageFileError) and "cut.dcm: file is truncated" in cli.error_message(cause)


def _manifest_workflow(manifest: Path, output_dir: Path, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=[str(bundle_file("train.json")), str(bundle_file("train_manifest.json"))],
        workflow_type="train",
        logging_file=False,
        output_dir=str(output_dir),
        manifest_path=str(manifest),
        image_size=[16, 16],
        **overrides,
    )


def test_training_refuses_bad_rows_unless_dropping(bad_manifest, tmp_path):
    workflow = _manifest_workflow(bad_manifest, tmp_path / "refuse")
    workflow.parser.parse()
    with pytest.raises(Exception) as excinfo:
        workflow.parser.get_parsed_content("train#items")
    cause = cli.unwrap(excinfo.value)
    assert isinstance(cause, BadImagesError) and "cut.dcm" in str(cause) and "--drop_bad_images" in str(cause)

    workflow = _manifest_workflow(bad_manifest, tmp_path / "drop", drop_bad_images=True)
    workflow.parser.parse()
    assert [item["id"] for item in workflow.parser.get_parsed_content("train#items")] == ["good0", "good1", "good2"]
    assert [item["id"] for item in workflow.parser.get_parsed_content("validate#items")] == ["good3", "good4"]
    assert (tmp_path / "drop" / DROPPED_FILE).is_file()


def test_decoded_files_are_remembered_until_they_change(tmp_path, imagefile_dicom, manifest_write_csv, monkeypatch):
    import alr_monai.data.decode_check as decode_check

    files = {f"g{i}": imagefile_dicom(tmp_path / f"g{i}.dcm", np.full((8, 8), i)) for i in range(3)}
    manifest = load_manifest(_manifest(tmp_path, manifest_write_csv, files))
    run = tmp_path / "run"
    decoded: list[int] = []
    real = decode_check.check_images

    def counting(manifest, *args, **kwargs):
        decoded.append(len(manifest.records))
        return real(manifest, *args, **kwargs)

    monkeypatch.setattr(decode_check, "check_images", counting)
    key = [2, 1, None]
    require_decodable(manifest, _chain(), output_dir=run, cache_key=key)
    require_decodable(manifest, _chain(), output_dir=run, cache_key=key)  # a resume: nothing changed
    assert decoded == [3]
    assert (run / decode_check.CHECK_CACHE_FILE).is_file()

    _truncate(files["g1"], 40)  # a changed file is decoded again, and refused
    with pytest.raises(BadImagesError, match="g1.dcm"):
        require_decodable(manifest, _chain(), output_dir=run, cache_key=key)
    assert decoded == [3, 1]
    require_decodable(manifest, _chain(spatial_dims=2), output_dir=run, cache_key=[2, 3, None], drop_bad_images=True)
    assert decoded == [3, 1, 3]  # other chain settings: everything again
