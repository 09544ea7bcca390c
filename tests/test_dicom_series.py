"""Hospital DICOM read right (issue 26, part A): series folders as volumes, MONOCHROME1, spacing and orientation,
patient ids from headers and folders, non-image and extensionless DICOMs."""

from __future__ import annotations

import csv
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_series_helpers import write_series, write_slice

from alr_monai import cli
from alr_monai.data.decode_check import DROPPED_FILE, BadImagesError, check_images, require_decodable
from alr_monai.data.dicom import has_dicom_preamble, read_series
from alr_monai.data.image_errors import ImageFileError, find_image_error
from alr_monai.data.manifest import build_manifest_from_folder, load_manifest
from alr_monai.data.splits import split_manifest
from alr_monai.data.transforms import build_image_transforms

# pydicom's bundled test files (get_testdata_file would try to download the ones not shipped).
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
UID = "1.2.826.0.1.3680043.8.498.7"
RNG = np.random.default_rng(26)
VOLUME = RNG.integers(0, 400, (6, 5, 4))  # rows, columns, slices


def _load(image: str | Path, size=(5, 6, 4), **kwargs) -> np.ndarray:
    chain = build_image_transforms(list(size), 1, spatial_dims=len(size), intensity="none", **kwargs)
    return chain({"image": str(image), "label": 0, "index": 0, "id": "x"})["image"][0].numpy()


def _error(image: str | Path, **kwargs) -> ImageFileError:
    with pytest.raises(Exception) as excinfo:
        _load(image, **kwargs)
    found = find_image_error(excinfo.value)
    assert found is not None, excinfo.value
    return found


# ------------------------------------------------------------------------------------------- series as one volume
def test_series_folder_is_one_volume_ordered_by_position_with_rescale_and_spacing(tmp_path):
    # File names are shuffled and instance numbers reversed: only the positions give the right order.
    write_series(tmp_path / "ser", VOLUME, spacing=2.5, slope=2.0, intercept=-1024, pixel_spacing=(0.5, 0.7))
    array, meta = read_series(tmp_path / "ser")
    expected = np.swapaxes(VOLUME * 2.0 - 1024, 0, 1)  # (columns, rows, slices), HU
    np.testing.assert_allclose(array, expected)
    np.testing.assert_allclose(meta["spacing"], [0.7, 0.5, 2.5])
    np.testing.assert_allclose(np.abs(np.diag(meta["affine"]))[:3], [0.7, 0.5, 2.5])
    # ... and through the training chain, which takes the folder as the manifest's image
    np.testing.assert_allclose(_load(tmp_path / "ser"), expected)


def test_series_is_sorted_along_the_slice_normal_not_z(tmp_path):
    # Coronal slices: the normal is the patient's y axis and every slice has the same z.
    coronal = (1, 0, 0, 0, 0, -1)
    for k in range(VOLUME.shape[-1]):
        write_slice(
            tmp_path / "cor" / f"IM{3 - k}",
            VOLUME[..., k],
            series_uid=UID,
            position=(0.0, 3.0 * k, 10.0),
            orientation=coronal,
            instance=7 - k,
        )
    array, meta = read_series(tmp_path / "cor")
    np.testing.assert_allclose(array, np.swapaxes(VOLUME, 0, 1))
    assert meta["spacing"][2] == pytest.approx(3.0)


def test_series_without_positions_falls_back_to_instance_number(tmp_path):
    for k in range(VOLUME.shape[-1]):
        write_slice(
            tmp_path / "s" / f"f{9 - k}.dcm",
            VOLUME[..., k],
            series_uid=UID,
            position=None,
            orientation=None,
            instance=k,
        )
    array, _ = read_series(tmp_path / "s")
    np.testing.assert_allclose(array, np.swapaxes(VOLUME, 0, 1))


def test_missing_slice_is_named(tmp_path):
    files = write_series(tmp_path / "ser", VOLUME, series_uid=UID, shuffle_names=False)
    files[1].unlink()
    error = _error(tmp_path / "ser", size=(5, 6, 3))
    assert error.kind == "broken series" and error.path == str(tmp_path / "ser")
    assert "missing slice: 1 slice missing between IM0001 and IM0003" in error.reason


def test_mixed_series_is_named_and_a_uid_picks_one(tmp_path):
    write_series(tmp_path / "study", VOLUME, series_uid=UID, names=["a1", "a2", "a3", "a4"])
    write_series(tmp_path / "study", VOLUME[..., :3] + 5, series_uid=UID + ".2", names=["b1", "b2", "b3"])
    error = _error(tmp_path / "study")
    assert error.kind == "broken series" and "mixed series: the folder holds 2 series" in error.reason
    assert f"{UID} (4 files)" in error.reason and "#<SeriesInstanceUID>" in error.fix
    np.testing.assert_allclose(
        _load(f"{tmp_path / 'study'}#{UID}.2", size=(5, 6, 3)), np.swapaxes(VOLUME[..., :3] + 5, 0, 1)
    )


def test_inconsistent_spacing_size_and_orientation_are_named(tmp_path):
    for k, z in enumerate((0.0, 2.0, 4.0, 7.0)):
        write_slice(tmp_path / "gap" / f"IM{k}", VOLUME[..., k], series_uid=UID, position=(0, 0, z), instance=k)
    assert (
        "inconsistent spacing: slices IM2 and IM3 are 3.000 mm apart, the others 2.000 mm"
        in _error(tmp_path / "gap").reason
    )

    write_series(tmp_path / "size", VOLUME[..., :2], series_uid=UID)
    write_slice(tmp_path / "size" / "IMX", np.zeros((4, 4)), series_uid=UID, position=(0, 0, 4.0))
    assert "slices of different sizes (4x4, 6x5 rows x columns)" in _error(tmp_path / "size").reason

    write_series(tmp_path / "tilt", VOLUME[..., :2], series_uid=UID)
    write_slice(
        tmp_path / "tilt" / "IMX", VOLUME[..., 0], series_uid=UID, position=(0, 0, 4.0), orientation=(0, 1, 0, 1, 0, 0)
    )
    assert "inconsistent orientation: slice IMX" in _error(tmp_path / "tilt").reason


def test_series_in_a_2d_pipeline_says_which_flag(tmp_path):
    write_series(tmp_path / "ser", VOLUME, series_uid=UID)
    error = _error(tmp_path / "ser", size=(5, 6))
    assert error.kind == "wrong shape" and "--spatial_dims 3" in error.fix


def test_check_decode_reports_broken_series_like_files(tmp_path, manifest_write_csv, capsys):
    write_series(tmp_path / "good", VOLUME, series_uid=UID)
    files = write_series(tmp_path / "holey", VOLUME, series_uid=UID + ".1", shuffle_names=False)
    files[2].unlink()
    write_series(tmp_path / "mixed", VOLUME, series_uid=UID + ".2", names=["a1", "a2", "a3", "a4"])
    write_series(tmp_path / "mixed", VOLUME, series_uid=UID + ".3", names=["b1", "b2", "b3", "b4"])
    path = manifest_write_csv(
        tmp_path / "m.csv",
        [
            {"id": "good", "image": "good", "label": "a"},
            {"id": "holey", "image": "holey", "label": "b"},
            {"id": "mixed", "image": "mixed", "label": "a"},
        ],
    )
    cli.main(["manifest", "check", str(path)])  # without --decode: the folders exist and hold DICOM files
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["manifest", "check", str(path), "--decode", "--spatial_dims", "3", "--image_size", "[5,6,4]"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert f"row 3 (id holey): {tmp_path / 'holey'}: [broken series] missing slice" in err
    assert f"row 4 (id mixed): {tmp_path / 'mixed'}: [broken series] mixed series" in err
    assert "(id good)" not in err and "2 of 3 images cannot be used (2 broken series)" in err


def test_a_changed_slice_is_decoded_again(tmp_path, manifest_write_csv):
    files = write_series(tmp_path / "ser", VOLUME, series_uid=UID, shuffle_names=False)
    path = manifest_write_csv(tmp_path / "m.csv", [{"id": "s", "image": "ser", "label": "a"}])
    chain = build_image_transforms([5, 6, 4], 1, spatial_dims=3)
    require_decodable(load_manifest(path), chain, output_dir=tmp_path / "run", cache_key=[3])
    # Rewritten in place, a slice leaves its folder's timestamp as it was: the slices' own stamps must count.
    write_slice(files[1], np.zeros((4, 4)), series_uid=UID, position=(0, 0, 2.0))
    with pytest.raises(BadImagesError, match="slices of different sizes"):
        require_decodable(load_manifest(path), chain, output_dir=tmp_path / "run", cache_key=[3])


# ------------------------------------------------------------------------------------------------- MONOCHROME1
def test_monochrome1_is_inverted_in_2d_and_3d(tmp_path):
    pixels = VOLUME[..., 0]
    plain = _load(write_slice(tmp_path / "m2.dcm", pixels, photometric="MONOCHROME2", intercept=-10), size=(5, 6))
    inverted = _load(write_slice(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1", intercept=-10), size=(5, 6))
    np.testing.assert_allclose(plain, pixels.T - 10)
    np.testing.assert_allclose(inverted, plain.min() + plain.max() - plain)  # after rescale, same range

    write_series(tmp_path / "s2", VOLUME, series_uid=UID, photometric="MONOCHROME2")
    write_series(tmp_path / "s1", VOLUME, series_uid=UID + ".1", photometric="MONOCHROME1")
    volume2, volume1 = _load(tmp_path / "s2"), _load(tmp_path / "s1")
    # inverted over the whole volume, not slice by slice
    np.testing.assert_allclose(volume1, volume2.min() + volume2.max() - volume2)
    # with min-max scaling (the default) MONOCHROME1 reads as 1 - MONOCHROME2
    chain = build_image_transforms([5, 6], 1)
    a = chain({"image": str(tmp_path / "m1.dcm"), "label": 0, "index": 0, "id": "a"})["image"].numpy()
    b = chain({"image": str(tmp_path / "m2.dcm"), "label": 0, "index": 0, "id": "b"})["image"].numpy()
    np.testing.assert_allclose(a, 1.0 - b, atol=1e-6)


def test_monochrome1_multiframe_volume_is_inverted(tmp_path):
    from test_decode_check import write_multiframe_dicom

    frames = np.moveaxis(VOLUME, -1, 0)  # (frames, rows, columns)
    plain = _load(write_multiframe_dicom(tmp_path / "m2.dcm", frames))
    path = write_multiframe_dicom(tmp_path / "m1.dcm", frames)
    dataset = pydicom.dcmread(path)
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(path)
    np.testing.assert_allclose(_load(path), plain.min() + plain.max() - plain)


# --------------------------------------------------------------------------------------- spacing and orientation
def test_spacing_resamples_volumes_before_the_resize(tmp_path, imagefile_nifti):
    from monai.transforms import Compose, Spacingd

    volume = RNG.normal(size=(8, 6, 4)).astype(np.float32)
    path = imagefile_nifti(tmp_path / "v.nii.gz", volume, affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    chain = build_image_transforms([8, 8, 8], 1, spatial_dims=3, spacing=[1.0, 1.0, 1.5])
    steps = list(chain.transforms)
    until = next(i for i, t in enumerate(steps) if isinstance(t, Spacingd))
    resampled = Compose(steps[: until + 1])({"image": str(path)})["image"]
    assert tuple(resampled.shape[1:]) == (15, 11, 7)  # 2 mm -> 1 mm doubles the grid, less the last half voxel
    assert tuple(chain({"image": str(path), "label": 0, "index": 0, "id": "v"})["image"].shape) == (1, 8, 8, 8)

    # the DICOM series' spacing (0.7, 0.5, 2.0 mm) is read too
    write_series(tmp_path / "ser", VOLUME, series_uid=UID, spacing=2.0, pixel_spacing=(0.5, 0.7))
    chain = build_image_transforms([5, 6, 4], 1, spatial_dims=3, spacing=[1.4, 1.0, 2.0])
    steps = list(chain.transforms)
    resampled = Compose(steps[: next(i for i, t in enumerate(steps) if isinstance(t, Spacingd)) + 1])(
        {"image": str(tmp_path / "ser")}
    )["image"]
    assert tuple(resampled.shape[1:]) == (3, 4, 4)  # 5 x 0.7 mm -> 3 x 1.4 mm, 6 x 0.5 mm -> 4 x 1 mm


def test_orientation_makes_flipped_volumes_agree(tmp_path, imagefile_nifti):
    volume = RNG.normal(size=(5, 6, 4)).astype(np.float32)
    ras = imagefile_nifti(tmp_path / "ras.nii.gz", volume, affine=np.eye(4))
    las = imagefile_nifti(tmp_path / "las.nii.gz", volume[::-1].copy(), affine=np.diag([-1.0, 1, 1, 1]))
    assert not np.allclose(_load(ras), _load(las))
    np.testing.assert_allclose(_load(ras, orientation="RAS"), _load(las, orientation="RAS"))


def test_spacing_and_orientation_are_for_volumes_only():
    with pytest.raises(ValueError, match="volumes only"):
        build_image_transforms([8, 8], 1, spacing=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="volumes only"):
        build_image_transforms([8, 8], 1, orientation="RAS")
    with pytest.raises(ValueError, match="not 3 axis codes"):
        build_image_transforms([8, 8, 8], 1, spatial_dims=3, orientation="RRS")
    with pytest.raises(ValueError, match="3 positive numbers"):
        build_image_transforms([8, 8, 8], 1, spatial_dims=3, spacing=[1.0, 0.0, 1.0])


# ----------------------------------------------------------------------------------------------- manifest build
def _pacs_tree(root: Path) -> None:
    """Two classes, patient folders, series folders of extensionless slices, an SR and a text file."""
    for p in range(4):
        label = ("normal", "nodule")[p % 2]
        write_series(root / label / f"PAT{p}" / "CT1", VOLUME + p, patient_id=f"PAT{p}", series_uid=f"{UID}.{p}")
    # one folder holding two series -> one row per series, FOLDER#UID
    write_series(
        root / "normal" / "PAT9" / "mixed",
        VOLUME,
        patient_id="PAT9",
        series_uid=f"{UID}.91",
        names=["a1", "a2", "a3", "a4"],
    )
    write_series(
        root / "normal" / "PAT9" / "mixed",
        VOLUME,
        patient_id="PAT9",
        series_uid=f"{UID}.92",
        names=["b1", "b2", "b3", "b4"],
    )
    # a 2D X-ray exported without an extension, no position: one file, one row
    write_slice(root / "nodule" / "PAT7" / "IM0001", VOLUME[..., 0], patient_id="PAT7", position=None, orientation=None)
    shutil.copy(PYDICOM_FILES / "test-SR.dcm", root / "normal" / "PAT0" / "SR0001")
    (root / "normal" / "PAT0" / "README.txt").write_text("export notes")


def test_build_finds_series_extensionless_files_and_counts_what_it_skipped(tmp_path, capsys):
    root = tmp_path / "pacs"
    _pacs_tree(root)
    assert has_dicom_preamble(root / "nodule" / "PAT7" / "IM0001")
    cli.main(["manifest", "build", str(root), "--out", str(tmp_path / "m.csv")])
    out = capsys.readouterr().out
    assert "7 images (6 DICOM series read as volumes)" in out and "6 patients" in out
    assert "skipped 1 file: DICOM without pixel data (SR): not an image (normal/PAT0/SR0001)" in out
    assert "skipped 1 file: not an image (unknown extension and no DICOM 'DICM' marker)" in out
    with open(tmp_path / "m.csv", newline="") as handle:
        rows = {r["id"]: r for r in csv.DictReader(handle)}
    assert (
        rows["nodule/PAT1/CT1"]["image"] == "pacs/nodule/PAT1/CT1" and rows["nodule/PAT1/CT1"]["patient_id"] == "PAT1"
    )
    assert rows[f"normal/PAT9/mixed#{UID}.92"]["image"] == f"pacs/normal/PAT9/mixed#{UID}.92"
    assert rows["nodule/PAT7/IM0001"]["image"] == "pacs/nodule/PAT7/IM0001"
    manifest = load_manifest(tmp_path / "m.csv")
    bad = check_images(manifest, build_image_transforms([5, 6, 4], 1, spatial_dims=3), progress=False)
    # every series decodes as a volume; only the 2D X-ray is the wrong shape for a 3D pipeline
    assert [(b.id, b.kind) for b in bad] == [("nodule/PAT7/IM0001", "wrong shape")]


def test_inference_manifest_takes_series_folders(tmp_path, manifest_write_csv):
    from alr_monai.inference import read_inference_items

    write_series(tmp_path / "ser", VOLUME, series_uid=UID)
    write_slice(tmp_path / "IM0001", VOLUME[..., 0])
    path = manifest_write_csv(tmp_path / "new.csv", [{"id": "s", "image": "ser"}, {"id": "x", "image": "IM0001"}])
    items = read_inference_items(path, None, ["a", "b"], False, None)
    assert [Path(item["image"]).name for item in items] == ["ser", "IM0001"]


def test_build_one_row_per_file_when_series_is_off(tmp_path):
    write_series(tmp_path / "r" / "a" / "P1" / "CT", VOLUME, series_uid=UID)
    build_manifest_from_folder(tmp_path / "r", tmp_path / "m.csv", series=False)
    assert len(load_manifest(tmp_path / "m.csv", check_images=False)) == VOLUME.shape[-1]


# -------------------------------------------------------------------------------------------------- patient ids
def test_patient_level_takes_ids_from_the_folder_tree(tmp_path, imagefile_nifti):
    for subject in ("S1", "S2", "S3"):
        for visit in ("baseline", "followup"):
            imagefile_nifti(tmp_path / "r" / "ad" / subject / f"{visit}.nii.gz", np.zeros((4, 4, 4), np.float32))
    build_manifest_from_folder(tmp_path / "r", tmp_path / "m.csv", patient_level=1)
    manifest = load_manifest(tmp_path / "m.csv")
    assert [r["patient_id"] for r in manifest.records] == ["S1", "S1", "S2", "S2", "S3", "S3"]

    imagefile_nifti(tmp_path / "r" / "ad" / "loose.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="--patient_level 1 names no patient folder"):
        build_manifest_from_folder(tmp_path / "r", tmp_path / "m.csv", patient_level=1)


def test_split_reads_patient_ids_from_dicom_headers(tmp_path, manifest_write_csv, caplog):
    rows = []
    for p in range(10):
        for k in range(3):  # three images per patient, no patient_id column in the manifest
            name = f"P{p}_{k}.dcm"
            write_slice(tmp_path / name, VOLUME[..., k], patient_id=f"PAT{p}", series_uid=f"{UID}.{p}.{k}")
            rows.append({"id": f"{p}_{k}", "image": name, "label": ("a", "b")[p % 2]})
    path = manifest_write_csv(tmp_path / "m.csv", rows)
    with caplog.at_level(logging.WARNING, logger="alr_monai"):
        split_manifest(path, val=0.2, test=0.2)
    assert "patient ids of 30 rows read from their DICOM headers" in caplog.text
    assert "no patient ids" not in caplog.text
    manifest = load_manifest(path)
    splits_of: dict[str, set] = {}
    for record in manifest.records:
        splits_of.setdefault(record["patient_id"], set()).add(record["split"])
    assert len(splits_of) == 10 and all(len(s) == 1 for s in splits_of.values())  # no patient in two splits


def test_split_warns_loudly_without_patient_ids(tmp_path, imagefile_png, manifest_write_csv, caplog):
    rows = []
    for i in range(8):
        imagefile_png(tmp_path / f"i{i}.png", np.full((4, 4), i, np.uint8))
        rows.append({"id": str(i), "image": f"i{i}.png", "label": ("a", "b")[i % 2]})
    path = manifest_write_csv(tmp_path / "m.csv", rows)
    with caplog.at_level(logging.WARNING, logger="alr_monai"):
        cli.main(["manifest", "split", str(path)])
    err = caplog.text
    assert "WARNING: no patient ids" in err and "each of the 8 rows is split as its own patient" in err
    assert "--patient_level" in err


# ------------------------------------------------------------------------------- non-image DICOMs with drop_bad_images
def test_non_image_dicoms_are_dropped_with_a_fix_line(tmp_path, manifest_write_csv):
    from test_decode_check import _manifest_workflow

    rows = []
    for i in range(6):
        write_slice(tmp_path / f"g{i}.dcm", VOLUME[..., i % 4], series_uid=f"{UID}.{i}")
        rows.append(
            {"id": f"g{i}", "image": f"g{i}.dcm", "label": ("a", "b")[i % 2], "split": ("train", "val")[i // 4]}
        )
    shutil.copy(PYDICOM_FILES / "test-SR.dcm", tmp_path / "report.dcm")
    (tmp_path / "notes.dcm").write_text("not DICOM at all" * 20)
    rows += [
        {"id": "sr", "image": "report.dcm", "label": "a", "split": "train"},
        {"id": "txt", "image": "notes.dcm", "label": "b", "split": "train"},
    ]
    path = manifest_write_csv(tmp_path / "m.csv", rows)

    workflow = _manifest_workflow(path, tmp_path / "run", drop_bad_images=True)
    workflow.parser.parse()
    assert [item["id"] for item in workflow.parser.get_parsed_content("train#items")] == ["g0", "g1", "g2", "g3"]
    with open(tmp_path / "run" / DROPPED_FILE, newline="") as handle:
        dropped = {d["id"]: d for d in csv.DictReader(handle)}
    assert dropped["sr"]["kind"] == "not an image" and "without pixel data (SR" in dropped["sr"]["reason"]
    assert dropped["txt"]["kind"] == "not an image" and "not a DICOM file" in dropped["txt"]["reason"]
    assert all(d["fix"] for d in dropped.values())


def test_one_message_per_bad_file_no_pydicom_log(tmp_path, manifest_write_csv, caplog):
    data = (PYDICOM_FILES / "JPEG-lossy.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: -len(data) // 4])
    write_slice(tmp_path / "ok.dcm", VOLUME[..., 0])
    path = manifest_write_csv(
        tmp_path / "m.csv",
        [{"id": "cut", "image": "cut.dcm", "label": "a"}, {"id": "ok", "image": "ok.dcm", "label": "a"}],
    )
    level = logging.getLogger("pydicom").level
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        bad = check_images(load_manifest(path, check_images=False), build_image_transforms([5, 6], 1), progress=False)
    assert not [w for w in shown if "pydicom" in w.filename], [str(w.message) for w in shown]
    assert [(b.id, b.kind) for b in bad] == [("cut", "truncated")]
    assert not [r for r in caplog.records if r.name.startswith("pydicom")], [r.getMessage() for r in caplog.records]
    assert logging.getLogger("pydicom").level == level  # restored after the check
