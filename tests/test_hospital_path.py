"""The hospital data path end to end through the `alr` command, 2D (CT DICOM slices with rescale) and 3D (NIfTI
volumes): build -> split -> check --decode -> train -> query -> answer -> inference -> export -> TorchScript load.

Tiny on purpose (16 images, a 4-8 channel ResNet, one epoch): what is checked is that every step takes the
previous one's output as a user would pass it, not what the model learns.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export

from alr_monai import cli
from alr_monai.networks import read_state_dict
from alr_monai.relabel import RoundState

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "alr_classification" / "configs"
SHAPES = {"2d": ["[16,16]", 2], "3d": ["[8,8,8]", 3]}


def _alr(argv: list[str], capsys) -> str:
    try:
        cli.main(argv)
    except SystemExit as stop:
        captured = capsys.readouterr()
        assert not stop.code, f"alr {' '.join(argv)} exited {stop.code}:\n{captured.err[-2000:]}"
        return captured.out
    return capsys.readouterr().out


def _tree(root: Path, kind: str, imagefile_dicom) -> None:
    """16 images in <class>/ folders: CT slices with a rescale (2D, patient ids in the DICOM) or NIfTI volumes."""
    import nibabel

    rng = np.random.default_rng(0)
    for i in range(16):
        label = ("abnormal", "normal")[i % 2]
        bright = 300 if label == "abnormal" else 0
        if kind == "2d":
            pixels = (rng.integers(0, 400, size=(20, 18)) + bright).astype(np.int16)
            imagefile_dicom(
                root / label / f"ct{i}.dcm", pixels, patient_id=f"P{i // 2}", rescale_intercept=-1024, rescale_slope=1
            )
        else:
            (root / label).mkdir(parents=True, exist_ok=True)
            voxels = (rng.random((9, 10, 7)) * 150 + bright / 2).astype(np.float32)
            nibabel.save(nibabel.Nifti1Image(voxels, np.eye(4)), root / label / f"vol{i}.nii.gz")


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_from_a_folder_of_images_to_a_torchscript_model(kind, tmp_path, capsys, imagefile_dicom):
    size, dims = SHAPES[kind]
    data, run = tmp_path / "data", tmp_path / "run"
    _tree(data, kind, imagefile_dicom)
    manifest = tmp_path / "m.csv"
    image_keys = ["--spatial_dims", str(dims), "--image_size", size]

    _alr(["manifest", "build", str(data), "--out", str(manifest)], capsys)
    _alr(["manifest", "split", str(manifest), "--val", "0.25", "--test", "0.25"], capsys)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    if kind == "2d":  # patient ids came from the DICOM headers, and no patient spans two splits
        assert len({(r["patient_id"], r["split"]) for r in rows}) == len({r["patient_id"] for r in rows}) == 8
    assert "cannot be used" not in _alr(["manifest", "check", str(manifest), "--decode", *image_keys], capsys)

    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"network_factory#block_inplanes": [4, 8, 8, 8], "batch_size": 4}))
    train = ["train", "--manifest", str(manifest), "--output_dir", str(run), "--preset", str(tiny)]
    _alr([*train, "--max_epochs", "1", *image_keys], capsys)
    metadata = json.loads((run / "models" / "metadata.json").read_text())
    assert json.dumps(metadata).count("28x28") == 0
    # channels_last's default: on for images (the saved average follows the trained peers), off for volumes
    # (a kernel over several channels and pixels: for one channel or a 1x1 kernel both formats coincide)
    weights = read_state_dict(run / "models" / "model.pt").values()
    conv = next(w for w in weights if w.ndim == dims + 2 and w.shape[1] > 1 and w.shape[2] > 1)
    channels_last = torch.channels_last if dims == 2 else torch.channels_last_3d
    assert conv.is_contiguous(memory_format=channels_last) is (dims == 2)
    assert conv.is_contiguous() is (dims == 3)
    assert json.loads((run / "metrics.json").read_text())["channels_last"] is (dims == 2)  # recorded per run

    budget = ["--relabel#round_budget", "3", "--relabel#recalibration_epochs", "1", "--relabel#num_rounds", "1"]
    printed = _alr(["query", "--run_dir", str(run), *budget], capsys)
    query = run / "relabel" / "queries" / "round_1.csv"
    assert str(query) in printed and query.with_suffix(".html").is_file()
    with open(query, newline="") as handle:
        reader = csv.DictReader(handle)
        header, asked = list(reader.fieldnames or []), list(reader)
    if kind == "2d":
        assert all(r["patient_id"] for r in asked)
    answers = tmp_path / "answers.csv"
    with open(answers, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows({**r, "expert_label": "abnormal", "comment": "read"} for r in asked)
    _alr(["answer", str(answers), "--run_dir", str(run), "--reader", "dr_a"], capsys)
    _alr(["query", "--run_dir", str(run)], capsys)  # recalibrates on the answers and ends the single round
    state = RoundState.load(run / "relabel" / "state.json")
    assert state.round == 1 and state.pending_round is None and state.budget_spent == 3

    predictions_run = ConfigWorkflow(
        config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "inference_manifest.json")],
        workflow_type="infer",
        logging_file=False,
        output_dir=str(run),
        manifest_path=str(manifest),
        device="cpu",
        **{"network_factory#block_inplanes": [4, 8, 8, 8]},
    )
    predictions_run.initialize()
    try:
        predictions_run.run()
    finally:
        predictions_run.finalize()
    with open(run / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 16 and {p["predicted_label"] for p in predictions} <= {"abnormal", "normal"}

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
    model = torch.jit.load(str(exported), _extra_files=extra)
    shape = json.loads(size)
    assert model(torch.rand(2, 1, *shape)).shape == (2, 2)
    assert json.loads(extra["metadata.json"])["network_data_format"]["inputs"]["image"]["spatial_shape"] == shape
