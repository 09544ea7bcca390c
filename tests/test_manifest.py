"""Tests for alr_monai.data.manifest: validation of hospital manifests and folder-tree import."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from alr_monai.data.manifest import (
    Manifest,
    ManifestError,
    build_manifest_from_folder,
    image_extension,
    load_class_map,
    load_manifest,
)

GRAY = (np.arange(48, dtype=np.uint8).reshape(6, 8) * 5).astype(np.uint8)


@pytest.fixture
def pngs(tmp_path, imagefile_png):
    """Three valid PNGs in tmp_path/img."""
    return [imagefile_png(tmp_path / "img" / f"p{i}.png", GRAY) for i in range(3)]


def _row(sample_id, image, label, **extra):
    return {"id": sample_id, "image": str(image), "label": label, **extra}


def test_valid_manifest_relative_absolute_extra_columns(tmp_path, pngs, manifest_write_csv):
    rows = [
        _row("a", "img/p0.png", "10", patient_id="P1", split="train", site="north"),
        _row("b", pngs[1], "9", patient_id="", split="Val", site="south"),  # absolute path, empty patient
        _row("c", "./img/../img/p2.png", "2", patient_id="P2", split="train", site=""),
    ]
    path = manifest_write_csv(tmp_path / "manifest.csv", rows)

    manifest = load_manifest(path)

    assert isinstance(manifest, Manifest)
    assert manifest.path == path.absolute()
    # Numeric labels sort as numbers: "10" after "9".
    assert manifest.class_names == ["2", "9", "10"]
    assert manifest.class_to_index() == {"2": 0, "9": 1, "10": 2}
    a, b, c = manifest.records
    assert a["image"] == str(pngs[0]) and Path(a["image"]).is_absolute()
    assert b["image"] == str(pngs[1])
    assert c["image"] == str(pngs[2])  # "./img/../img" normalised
    assert [r["label"] for r in manifest.records] == [2, 1, 0]
    assert [r["label_name"] for r in manifest.records] == ["10", "9", "2"]
    assert [r["row"] for r in manifest.records] == [2, 3, 4]
    assert a["patient_id"] == "P1" and b["patient_id"] is None
    assert a["split"] == "train" and b["split"] == "Val"
    assert a["extra"] == {"site": "north"} and c["extra"] == {"site": ""}


def test_class_names_from_config_fix_the_order(tmp_path, pngs, manifest_write_csv):
    rows = [_row("a", pngs[0], "normal"), _row("b", pngs[1], "pneumonia"), _row("c", pngs[2], "normal")]
    path = manifest_write_csv(tmp_path / "m.csv", rows)

    given = load_manifest(path, class_names=["pneumonia", "normal", "covid"])
    inferred = load_manifest(path)

    assert given.class_names == ["pneumonia", "normal", "covid"]  # unused classes are kept
    assert [r["label"] for r in given.records] == [1, 0, 1]
    assert inferred.class_names == ["normal", "pneumonia"]  # alphabetical when labels are not all integers
    assert [r["label"] for r in inferred.records] == [0, 1, 0]


def test_config_class_names_may_be_numbers(tmp_path, pngs, manifest_write_csv):
    path = manifest_write_csv(tmp_path / "m.csv", [_row("a", pngs[0], "1"), _row("b", pngs[1], "0")])
    manifest = load_manifest(path, class_names=[0, 1])
    assert [r["label"] for r in manifest.records] == [1, 0]


@pytest.mark.parametrize("bad", [[], ["a", "a"], ["a", " "], "ab"])
def test_invalid_class_names_argument(tmp_path, pngs, manifest_write_csv, bad):
    path = manifest_write_csv(tmp_path / "m.csv", [_row("a", pngs[0], "a")])
    with pytest.raises(ValueError, match="class_names"):
        load_manifest(path, class_names=bad)


def test_utf8_bom_and_whitespace_are_accepted(tmp_path, pngs, manifest_write_csv):
    path = manifest_write_csv(
        tmp_path / "m.csv",
        [["a", " img/p0.png ", " x "]],
        header=["id", " image", "label "],
        encoding="utf-8-sig",
    )
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    manifest = load_manifest(path)
    assert manifest.records[0]["id"] == "a"
    assert manifest.records[0]["label_name"] == "x"
    assert manifest.records[0]["image"] == str(pngs[0])


def _write_raw(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _assert_one_problem(path: Path, row: int, reason: str, **kwargs) -> ManifestError:
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(path, **kwargs)
    error = excinfo.value
    assert len(error.problems) == 1, error.problems
    assert error.problems[0].startswith(f"{path.absolute()} row {row}: "), error.problems[0]
    assert reason in error.problems[0]
    assert error.problems[0] in str(error)  # the message lists the problem too
    return error


@pytest.mark.parametrize(
    ("case", "row", "reason"),
    [
        ("missing_image", 3, "image file not found"),
        ("empty_image", 3, "image file is empty (0 bytes)"),
        ("corrupt_png", 3, "unreadable image"),
        ("corrupt_dicom", 3, "unreadable image"),
        ("dicom_without_pixels", 3, "without pixel data"),
        ("corrupt_nifti", 3, "unreadable image"),
        ("unknown_label", 3, "label 'cat' is not in the class list"),
        ("empty_id", 3, "empty id"),
        ("empty_label", 3, "empty label"),
        ("empty_image_path", 3, "empty image path"),
        ("unsupported_extension", 3, "unsupported file extension for 'scan.bmp'"),
        ("too_many_values", 3, "row has 4 values but the header has 3 columns"),
    ],
)
def test_each_row_problem_names_row_and_reason(tmp_path, pngs, imagefile_dicom, manifest_write_csv, case, row, reason):
    image_dir = tmp_path / "img"
    bad_row = {
        "missing_image": ["b", "img/nope.png", "x"],
        "empty_image": ["b", str(_write_raw(image_dir / "empty.png", b"")), "x"],
        "corrupt_png": ["b", str(_write_raw(image_dir / "bad.png", b"\x89PNG\r\n\x1a\nnot really")), "x"],
        "corrupt_dicom": ["b", str(_write_raw(image_dir / "bad.dcm", b"this is not DICOM at all")), "x"],
        "dicom_without_pixels": ["b", str(imagefile_dicom(image_dir / "nopix.dcm", GRAY, with_pixels=False)), "x"],
        "corrupt_nifti": ["b", str(_write_raw(image_dir / "bad.nii.gz", b"gzip? no")), "x"],
        "unknown_label": ["b", "img/p1.png", "cat"],
        "empty_id": ["", "img/p1.png", "x"],
        "empty_label": ["b", "img/p1.png", ""],
        "empty_image_path": ["b", "", "x"],
        "unsupported_extension": ["b", str(_write_raw(image_dir / "scan.bmp", b"BM....")), "x"],
        "too_many_values": ["b", "img/p1.png", "x", "surplus"],
    }[case]
    path = manifest_write_csv(tmp_path / "m.csv", [["a", "img/p0.png", "x"], bad_row], header=["id", "image", "label"])
    _assert_one_problem(path, row, reason, class_names=["x"])


def test_duplicate_id_names_both_rows(tmp_path, pngs, manifest_write_csv):
    rows = [_row("a", pngs[0], "x"), _row("b", pngs[1], "x"), _row("a", pngs[2], "x")]
    path = manifest_write_csv(tmp_path / "m.csv", rows)
    error = _assert_one_problem(path, 4, "duplicate id 'a'")
    assert "rows 2 and 4" in error.problems[0]


@pytest.mark.parametrize("missing", ["id", "image", "label"])
def test_missing_required_column_is_named(tmp_path, pngs, manifest_write_csv, missing):
    row = {k: v for k, v in _row("a", pngs[0], "x").items() if k != missing}
    path = manifest_write_csv(tmp_path / "m.csv", [row])
    _assert_one_problem(path, 1, f"missing required column '{missing}'")


def test_missing_column_hints_at_wrong_case(tmp_path, pngs, manifest_write_csv):
    path = manifest_write_csv(tmp_path / "m.csv", [["a", "img/p0.png", "x"]], header=["id", "image", "Label"])
    _assert_one_problem(path, 1, "found 'Label'")


def test_empty_file_header_only_and_missing_file(tmp_path, manifest_write_csv):
    _assert_one_problem(_write_raw(tmp_path / "empty.csv", b""), 1, "manifest is empty")
    _assert_one_problem(_write_raw(tmp_path / "header.csv", b"id,image,label\n\n,,\n"), 2, "no data rows")
    _assert_one_problem(tmp_path / "absent.csv", 1, "manifest file not found")


def test_root_escape_is_reported(tmp_path, imagefile_png, manifest_write_csv):
    root = tmp_path / "dataset"
    inside = imagefile_png(root / "in.png", GRAY)
    outside = imagefile_png(tmp_path / "outside.png", GRAY)
    rows = [_row("in", inside, "x"), _row("up", "../outside.png", "x"), _row("abs", outside, "x")]
    path = manifest_write_csv(root / "m.csv", rows)

    with pytest.raises(ManifestError) as excinfo:
        load_manifest(path, root=root)
    problems = excinfo.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path} row 3", f"{path} row 4"]
    assert all("escapes the dataset root" in p for p in problems)
    # Without root the same manifest is fine.
    assert len(load_manifest(path)) == 3


def test_symlink_out_of_root_escapes(tmp_path, imagefile_png, manifest_write_csv):
    root = tmp_path / "dataset"
    target = imagefile_png(tmp_path / "elsewhere" / "x.png", GRAY)
    root.mkdir()
    (root / "link.png").symlink_to(target)
    path = manifest_write_csv(root / "m.csv", [_row("a", "link.png", "x")])
    _assert_one_problem(path, 2, "escapes the dataset root", root=root)


def test_all_bad_rows_reported_in_one_error(tmp_path, pngs, manifest_write_csv):
    _write_raw(tmp_path / "img" / "zero.png", b"")
    rows = [
        ["ok1", "img/p0.png", "x"],  # row 2
        ["", "img/p1.png", "x"],  # row 3: empty id
        ["m", "img/missing.png", "x"],  # row 4: missing file
        ["ok2", "img/p2.png", "x"],  # row 5
        ["z", "img/zero.png", "y"],  # row 6: empty file AND unknown label
        ["ok1", "img/p1.png", ""],  # row 7: duplicate id AND empty label
    ]
    path = manifest_write_csv(tmp_path / "m.csv", rows, header=["id", "image", "label"])

    with pytest.raises(ManifestError) as excinfo:
        load_manifest(path, class_names=["x"])
    problems = excinfo.value.problems
    bad_rows = sorted({int(p.split(" row ")[1].split(":")[0]) for p in problems})
    assert bad_rows == [3, 4, 6, 7]
    assert len(problems) == 6
    message = str(excinfo.value)
    for reason in ("empty id", "image file not found", "0 bytes", "label 'y'", "duplicate id 'ok1'", "empty label"):
        assert reason in message


def test_check_images_false_skips_decoding_only(tmp_path, pngs, manifest_write_csv):
    corrupt = _write_raw(tmp_path / "img" / "bad.png", b"not a png")
    path = manifest_write_csv(tmp_path / "m.csv", [_row("a", pngs[0], "x"), _row("b", corrupt, "x")])

    with pytest.raises(ManifestError, match="unreadable image"):
        load_manifest(path)
    assert len(load_manifest(path, check_images=False)) == 2

    _write_raw(tmp_path / "img" / "zero.png", b"")
    path = manifest_write_csv(tmp_path / "m2.csv", [_row("a", "img/zero.png", "x"), _row("b", "img/gone.png", "x")])
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(path, check_images=False)
    assert len(excinfo.value.problems) == 2


def test_loading_writes_nothing(tmp_path, manifest_mixed_dataset):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    load_manifest(manifest_mixed_dataset)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_mixed_dataset_select_and_items(manifest_mixed_dataset):
    manifest = load_manifest(manifest_mixed_dataset)
    assert manifest.class_names == ["abnormal", "normal"]
    assert manifest.splits() == ["train", "val"]
    assert [r["id"] for r in manifest.select("TRAIN")] == ["img0", "img1", "img2", "img3"]
    assert len(manifest.select(None)) == 6

    items = manifest.items("val")
    patients = [r["patient_id"] or "" for r in manifest.records]  # "" where the manifest has none
    assert items == [
        {"image": manifest.records[4]["image"], "label": 1, "index": 0, "id": "img4", "patient_id": patients[4]},
        {"image": manifest.records[5]["image"], "label": 0, "index": 1, "id": "img5", "patient_id": patients[5]},
    ]
    assert [it["index"] for it in manifest.items()] == list(range(6))
    assert manifest.items("test") == []


def test_select_split_without_split_column_raises(tmp_path, pngs, manifest_write_csv):
    manifest = load_manifest(manifest_write_csv(tmp_path / "m.csv", [_row("a", pngs[0], "x")]))
    assert len(manifest.items()) == 1
    with pytest.raises(ValueError, match="no 'split' values"):
        manifest.items("train")


def test_save_class_map_round_trip_and_atomic(tmp_path, pngs, manifest_write_csv):
    manifest = load_manifest(manifest_write_csv(tmp_path / "m.csv", [_row("a", pngs[0], "b"), _row("b", pngs[1], "a")]))
    target = tmp_path / "out" / "classes.json"
    target.parent.mkdir()
    target.write_text("old contents")
    os.chmod(target, 0o640)

    manifest.save_class_map(target)

    assert json.loads(target.read_text()) == {"class_names": ["a", "b"]}
    assert load_class_map(target) == ["a", "b"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["classes.json"]  # no temp file left behind
    assert target.stat().st_mode & 0o777 == 0o640  # an existing file keeps its permissions


def test_image_extension_helper():
    assert image_extension("a/B.NII.GZ") == ".nii.gz"
    assert image_extension("x.dcm") == ".dcm"
    assert image_extension("x.gz") is None
    assert image_extension(".png") is None  # a bare extension is not a file name
    assert image_extension("x.tif", [".tif"]) == ".tif"


def _build_tree(root: Path, imagefile_png, imagefile_nifti, imagefile_dicom) -> None:
    imagefile_png(root / "normal" / "b.png", GRAY)
    imagefile_png(root / "normal" / "a.PNG", GRAY)  # extension match is case-insensitive
    imagefile_nifti(root / "normal" / "sub" / "vol.nii.gz", GRAY.T.astype(np.float32))
    imagefile_dicom(root / "pneumonia" / "s1" / "im1.dcm", GRAY.astype(np.int16), patient_id="PAT-7")
    imagefile_dicom(root / "pneumonia" / "s1" / "im2.dcm", GRAY.astype(np.int16))  # no PatientID
    (root / "pneumonia" / "notes.txt").write_text("not an image")
    imagefile_png(root / "pneumonia" / "._b.png", GRAY)  # macOS resource fork: skipped
    (root / ".cache").mkdir()
    imagefile_png(root / ".cache" / "c.png", GRAY)  # hidden folder: not a class


def test_build_manifest_from_folder(tmp_path, imagefile_png, imagefile_nifti, imagefile_dicom):
    root = tmp_path / "data"
    _build_tree(root, imagefile_png, imagefile_nifti, imagefile_dicom)

    out = build_manifest_from_folder(root, root / "manifest.csv")

    assert out == (root / "manifest.csv").absolute()
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0].keys()) == ["id", "image", "label", "patient_id"]
    assert [(r["id"], r["image"], r["label"], r["patient_id"]) for r in rows] == [
        ("normal/a", "normal/a.PNG", "normal", ""),
        ("normal/b", "normal/b.png", "normal", ""),
        ("normal/sub/vol", "normal/sub/vol.nii.gz", "normal", ""),
        ("pneumonia/s1/im1", "pneumonia/s1/im1.dcm", "pneumonia", "PAT-7"),
        ("pneumonia/s1/im2", "pneumonia/s1/im2.dcm", "pneumonia", ""),
    ]
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["manifest.csv"]  # no temp file left

    manifest = load_manifest(out, root=root)
    assert manifest.class_names == ["normal", "pneumonia"]
    assert [r["label"] for r in manifest.records] == [0, 0, 0, 1, 1]
    assert manifest.records[3]["patient_id"] == "PAT-7"


def test_build_manifest_out_elsewhere_uses_relative_paths(tmp_path, imagefile_png, imagefile_nifti, imagefile_dicom):
    root = tmp_path / "data"
    _build_tree(root, imagefile_png, imagefile_nifti, imagefile_dicom)
    out = build_manifest_from_folder(root, tmp_path / "manifests" / "all.csv", extensions=["png"])

    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == ["../data/normal/a.PNG", "../data/normal/b.png"]
    assert [r["image"] for r in load_manifest(out).records] == [str(root / "normal/a.PNG"), str(root / "normal/b.png")]


def test_build_manifest_errors(tmp_path, imagefile_png):
    with pytest.raises(ValueError, match="not a folder"):
        build_manifest_from_folder(tmp_path / "absent", tmp_path / "m.csv")

    (tmp_path / "flat").mkdir()
    imagefile_png(tmp_path / "flat" / "x.png", GRAY)
    with pytest.raises(ValueError, match="no class folders"):
        build_manifest_from_folder(tmp_path / "flat", tmp_path / "m.csv")

    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        build_manifest_from_folder(tmp_path / "noimg", tmp_path / "m.csv")

    imagefile_png(tmp_path / "dup" / "cls" / "x.png", GRAY)
    imagefile_png(tmp_path / "dup" / "cls" / "x.jpg", GRAY)
    with pytest.raises(ValueError, match="would both get id 'cls/x'"):
        build_manifest_from_folder(tmp_path / "dup", tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()  # failed imports write nothing
