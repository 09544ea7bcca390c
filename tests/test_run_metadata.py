"""A run's models/metadata.json (and the copy ckpt_export embeds) describes the data it was trained on: the modality
from the DICOM Modality tags (else a manifest 'modality' column, else "unknown"), the classes, the input shape; not
the bundle's default "Active Label Refinement on BloodMNIST / blood-cell microscopy"."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ckpt_export
from PIL import Image

from alr_monai import cli
from alr_monai.export import data_description, model_metadata

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "alr_classification" / "configs"
TINY = {"network_factory#block_inplanes": [4, 8, 8, 8], "batch_size": 4}


def _manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_modality_from_dicom_tags_else_the_manifest_else_unknown(tmp_path: Path, imagefile_dicom):
    ct = [{"image": str(imagefile_dicom(tmp_path / f"ct{i}.dcm", np.zeros((4, 4), np.int16)))} for i in range(3)]
    assert data_description(ct) == {"modality": "CT", "data_type": "DICOM files listed in a manifest CSV"}
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    manifest = _manifest(tmp_path / "m.csv", [{"id": "a", "image": str(png), "modality": "DX"}])
    assert data_description([{"image": str(png)}], manifest) == {
        "modality": "DX",
        "data_type": "PNG/JPEG files listed in a manifest CSV",
    }
    plain = _manifest(tmp_path / "plain.csv", [{"id": "a", "image": str(png)}])
    assert data_description([{"image": str(png)}], plain)["modality"] is None
    meta = model_metadata(["a", "b"], (1, 8, 8), modality=None)
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "unknown"
    assert "BloodMNIST" not in meta["name"] and "blood" not in meta["task"]


def test_a_ct_run_metadata_and_its_exported_copy_describe_the_ct_model(tmp_path: Path, imagefile_dicom, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = ("effusion", "normal", "nodule")[i % 3]
        path = imagefile_dicom(tmp_path / "data" / f"ct{i}.dcm", rng.integers(0, 400, (20, 18)).astype(np.int16))
        rows.append(
            {"id": f"ct{i}", "image": str(path), "label": label, "split": ("train", "train", "val")[i // 4 % 3]}
        )
    manifest = _manifest(tmp_path / "m.csv", rows)
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    cli.main(
        ["train", "--manifest", str(manifest), "--output_dir", str(run), "--preset", str(preset)]
        + ["--max_epochs", "1", "--image_size", "[16,16]", "--device", "cpu"]
    )
    capsys.readouterr()
    meta = json.loads((run / "models" / "metadata.json").read_text())
    text = json.dumps(meta)
    assert "BloodMNIST" not in meta["name"] and "microscopy" not in text and "blood" not in meta["task"]
    assert meta["name"] == "Active Label Refinement classifier: CT 2D images, 3 classes"
    assert "effusion, normal, nodule" in meta["task"] or "effusion, nodule, normal" in meta["task"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["modality"] == "CT" and image["spatial_shape"] == [16, 16] and image["num_channels"] == 1
    assert meta["data_source"] == f"manifest {manifest.resolve()}"
    assert meta["data_type"] == "DICOM files listed in a manifest CSV"

    exported = run / "models" / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(run / "models" / "model.pt"),
        meta_file=str(run / "models" / "metadata.json"),
        config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "inference_manifest.json")],
        output_dir=str(run),
        **{"network_factory#block_inplanes": [4, 8, 8, 8]},
    )
    extra = {"metadata.json": ""}
    torch.jit.load(str(exported), _extra_files=extra)
    embedded = json.loads(extra["metadata.json"])
    assert embedded["name"] == meta["name"] and embedded["network_data_format"]["inputs"]["image"]["modality"] == "CT"
