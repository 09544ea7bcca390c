"""Inference that survives bad files: ``alr predict FOLDER_OR_MANIFEST --run_dir R`` and the bundle's
``drop_bad_images`` (inference_manifest.json): unreadable files are skipped and listed, the rest predicted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from monai.bundle import ConfigWorkflow
from PIL import Image

from alr_monai import cli
from alr_monai.data.manifest import ManifestError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "alr_classification" / "configs"
CLASSES = ["effusion", "nodule", "normal"]


def _png(path: Path, value: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 60, (24, 24)) + value
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest run (3 classes of grey PNGs, 1 epoch, a tiny network) trained through ``alr train``."""
    root = tmp_path_factory.mktemp("predict")
    rows = []
    for c, name in enumerate(CLASSES):
        for i, split in enumerate(["train"] * 6 + ["val"] * 2 + ["test"] * 2):
            path = _png(root / "images" / name / f"{name}_{i}.png", 60 * c, seed=10 * c + i)
            rows.append({"id": f"{name}_{i}", "image": str(path), "label": name, "split": split})
    manifest = root / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["id", "image", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    preset = root / "tiny.json"
    preset.write_text(json.dumps({"network_factory#block_inplanes": [4, 8, 8, 8], "batch_size": 16}))
    cli.main(
        ["train", "--manifest", str(manifest), "--output_dir", str(root / "run"), "--preset", str(preset)]
        + ["--max_epochs", "1", "--image_size", "[24,24]", "--device", "cpu"]
    )
    return root / "run"


def test_predict_a_folder_skips_and_lists_unreadable_files(trained_run: Path, tmp_path: Path, capsys, imagefile_dicom):
    folder = tmp_path / "incoming"
    _png(folder / "a.png", 0, 1)
    _png(folder / "sub" / "b.png", 120, 2)
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "sub" / "short.png").write_bytes(_png(tmp_path / "x.png", 5, 3).read_bytes()[:60])
    (folder / "notes.txt").write_text("not an image")
    imagefile_dicom(folder / "IM0001", np.zeros((8, 8), np.int16))  # an extensionless DICOM from a PACS export
    code, out, err = run_cli(["predict", str(folder), "--run_dir", str(trained_run), "--device", "cpu"], capsys)
    assert code == 0, err
    out_dir = trained_run / "predict" / "incoming"
    predictions = _rows(out_dir / "predictions.csv")
    # the extensionless DICOM is found by its preamble and predicted like any other image
    assert [r["id"] for r in predictions] == ["IM0001", "a.png", "sub/b.png"]
    assert list(predictions[0]) == [
        "id",
        "image",
        *(f"prob_{c}" for c in CLASSES),
        "predicted_index",
        "predicted_label",
    ]
    for row in predictions:
        assert abs(sum(float(row[f"prob_{c}"]) for c in CLASSES) - 1) < 1e-4
        assert row["predicted_label"] in CLASSES and Path(row["image"]).is_file()
    skipped = {r["id"]: r for r in _rows(out_dir / "skipped_images.csv")}
    assert set(skipped) == {"broken.png", "sub/short.png"}  # listed, not silently lost
    assert skipped["broken.png"]["kind"] == "undecodable" and skipped["sub/short.png"]["kind"] == "truncated"
    assert f"predicted 3 images with {trained_run / 'models' / 'model.pt'}" in out
    assert "skipped 2 unreadable files" in out and "not images, left out: 1 .txt" in out


def test_predict_a_manifest_with_a_missing_file_and_a_split(trained_run: Path, tmp_path: Path, capsys):
    good = _png(tmp_path / "good.png", 60, 4)
    manifest = tmp_path / "new.csv"
    manifest.write_text(
        f"id,image,split\ng1,{good},test\ngone,{tmp_path / 'gone.png'},test\nother,{good},train\n", encoding="utf-8"
    )
    out = tmp_path / "out"
    argv = ["predict", str(manifest), "--run_dir", str(trained_run), "--out", str(out), "--split", "test"]
    code, stdout, err = run_cli([*argv, "--model", "phase1", "--device", "cpu"], capsys)
    assert code == 0, err
    assert [r["id"] for r in _rows(out / "predictions.csv")] == ["g1"]
    (gone,) = _rows(out / "skipped_images.csv")
    assert (
        gone["id"] == "gone" and gone["row"] == "3" and gone["kind"] == "missing file" and "not found" in gone["reason"]
    )


def test_predict_errors_are_one_line(trained_run: Path, tmp_path: Path, capsys):
    empty = tmp_path / "empty"
    (empty / "x").mkdir(parents=True)
    (empty / "x" / "a.txt").write_text("x")
    code, _, err = run_cli(["predict", str(empty), "--run_dir", str(trained_run)], capsys)
    assert code == 2 and "no image files" in err and "found 1 .txt" in err
    code, _, err = run_cli(["predict", str(tmp_path / "nothing"), "--run_dir", str(trained_run)], capsys)
    assert code == 2 and "nothing not found: pass a manifest CSV or a folder" in err
    broken = tmp_path / "only_bad"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"no")
    code, _, err = run_cli(["predict", str(broken), "--run_dir", str(trained_run), "--device", "cpu"], capsys)
    assert code == 2 and "every image was skipped as unreadable (1)" in err, err


def _inference(run: Path, manifest: Path, **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "inference_manifest.json")],
        workflow_type="inference",
        logging_file=False,
        output_dir=str(run),
        manifest_path=str(manifest),
        device="cpu",
        network_factory={
            **json.loads((run / "models" / "metadata.json").read_text())["alr_monai"]["network"],
            "_mode_": "callable",
        },
        **overrides,
    )
    workflow.initialize()
    return workflow


def test_bundle_inference_drop_bad_images(trained_run: Path, tmp_path: Path):
    good = _png(tmp_path / "good.png", 60, 5)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,image\ng,{good}\nb,{bad}\n", encoding="utf-8")
    # default: one bad file refuses the whole manifest, naming it
    with pytest.raises(Exception) as info:
        _inference(trained_run, manifest).run()
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, ManifestError) and f"{bad}" in str(e) for e in chain)
    # drop_bad_images: the rest is predicted, the bad file listed
    workflow = _inference(
        trained_run, manifest, drop_bad_images=True, skipped_images_path=str(tmp_path / "skipped.csv")
    )
    workflow.run()
    workflow.finalize()
    assert [r["id"] for r in _rows(trained_run / "predictions.csv")] == ["g"]
    assert [r["id"] for r in _rows(tmp_path / "skipped.csv")] == ["b"]
