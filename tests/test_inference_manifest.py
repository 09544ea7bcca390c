"""Manifest-trained models through the bundle's inference, evaluation and export configs, 2D (PNG) and 3D (NIfTI).

Each model is trained once per module (one epoch, a 4-8 channel ResNet, 16 x 16 images or 8 x 8 x 8 volumes),
then predicted with ``inference.json`` + ``inference_manifest.json``, scored with ``evaluate.json``, exported with
``ckpt_export`` and loaded back with ``torch.jit.load``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export
from monai.bundle.workflows import BundleWorkflow
from monai.inferers import SimpleInferer

from alr_monai.data.manifest import ManifestError
from alr_monai.export import read_model_metadata
from alr_monai.inference import read_inference_items

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "alr_classification" / "configs"
TRAIN, TRAIN_MANIFEST = CONFIGS / "train.json", CONFIGS / "train_manifest.json"
INFERENCE, INFERENCE_MANIFEST, EVALUATE = (
    CONFIGS / "inference.json",
    CONFIGS / "inference_manifest.json",
    CONFIGS / "evaluate.json",
)
TINY_NET = {"network_factory#block_inplanes": [4, 8, 8, 8]}
CLASSES = ["abnormal", "normal"]
KINDS = {
    "2d": {"image_size": [16, 16], "spatial_dims": 2, "in_channels": 1},
    "3d": {"image_size": [8, 8, 8], "spatial_dims": 3, "in_channels": 1},
}


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _dataset(folder: Path, kind: str) -> Path:
    """20 images (2D PNG or 3D NIfTI), 5 patients of 4 images, train 12 / val 4 / test 4, two classes."""
    import nibabel
    from PIL import Image

    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    rows = []
    for i in range(20):
        label = CLASSES[i % 2]
        bright = 60 if label == "abnormal" else 0
        if kind == "2d":
            pixels = (rng.integers(0, 150, size=(12, 10)) + bright).astype(np.uint8)
            name = f"img{i}.png"
            Image.fromarray(pixels).save(folder / name)
        else:
            voxels = (rng.random((9, 10, 7)) * 150 + bright).astype(np.float32)
            name = f"vol{i}.nii.gz"
            nibabel.save(nibabel.Nifti1Image(voxels, np.eye(4)), folder / name)
        split = "train" if i < 12 else ("val" if i < 16 else "test")
        rows.append({"id": f"{kind}_{i}", "image": name, "label": label, "patient_id": f"P{i // 4}", "split": split})
    return _write_csv(folder / "manifest.csv", rows)


def _workflow(files: list[Path], output_dir: Path, workflow_type: str, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=[str(f) for f in files],
        workflow_type=workflow_type,
        logging_file=False,
        output_dir=str(output_dir),
        **overrides,
    )


def _run(workflow: ConfigWorkflow) -> ConfigWorkflow:
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return workflow


def _train_settings(manifest: Path, kind: str) -> dict:
    return {"manifest_path": str(manifest), "max_epochs": 1, "batch_size": 4, **KINDS[kind], **TINY_NET}


@pytest.fixture(scope="module", params=sorted(KINDS))
def trained(request, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A trained manifest run: ``kind``, ``manifest``, ``run`` (the output folder)."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"manifest_{kind}")
    manifest = _dataset(root / "data", kind)
    run = root / "run"
    _run(_workflow([TRAIN, TRAIN_MANIFEST], run, "train", **_train_settings(manifest, kind)))
    return {"kind": kind, "manifest": manifest, "run": run}


def _infer(trained: dict, manifest: Path, extra: tuple[Path, ...] = (), **overrides) -> ConfigWorkflow:
    files = [INFERENCE, INFERENCE_MANIFEST, *extra]
    return _run(
        _workflow(files, trained["run"], "infer", manifest_path=str(manifest), device="cpu", **TINY_NET, **overrides)
    )


def _eager_probabilities(workflow: ConfigWorkflow) -> torch.Tensor:
    """Softmax of the trained network over the inference items, computed by hand from the checkpoint."""
    network = workflow.parser.get_parsed_content("network_def", lazy=False)
    network.load_state_dict(torch.load(workflow.parser.get_parsed_content("ckpt_path"), weights_only=True))
    network.eval()
    preprocessing = workflow.parser.get_parsed_content("preprocessing")
    images = torch.stack([preprocessing(dict(item))["image"] for item in workflow.parser.get_parsed_content("items")])
    with torch.no_grad():
        return torch.softmax(network(images), 1)


def test_training_writes_the_model_metadata(trained: dict):
    kind, run = trained["kind"], trained["run"]
    spatial = KINDS[kind]["image_size"]
    meta = json.loads((run / "models" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 1 and image["spatial_shape"] == spatial
    assert pred["type"] == "logits" and pred["num_channels"] == 2
    assert pred["channel_def"] == {"0": "abnormal", "1": "normal"}
    assert "28 x 28" not in meta["image_classes"] and "microscopy" not in json.dumps(meta["network_data_format"])
    assert f"{len(spatial)}D" in meta["image_classes"] and meta["label_classes"] == "2 classes: abnormal, normal"
    section = read_model_metadata(run / "models" / "model.pt")
    assert section["spatial_dims"] == len(spatial) and section["spatial_shape"] == spatial
    assert section["in_channels"] == 1 and section["class_names"] == CLASSES and section["num_peers"] == 2
    # The network's constructor is recorded, so a user can see which size keys to pass for inference.
    assert section["network"]["_target_"] == "monai.networks.nets.resnet.ResNet"
    assert section["network"]["block_inplanes"] == [4, 8, 8, 8] and section["network"]["spatial_dims"] == len(spatial)
    assert section["preprocessing"] == {
        "spatial_size": spatial,
        "in_channels": 1,
        "spatial_dims": len(spatial),
        "intensity": "minmax",
        "channel_axis": None,
        "spacing": None,
        "orientation": None,
    }


def test_inference_manifest_writes_predictions_with_a_header(trained: dict, tmp_path: Path):
    # New images to predict: no label, no split column; paths relative to the CSV's folder.
    data = trained["manifest"].parent
    _, rows = _read_csv(trained["manifest"])
    new = _write_csv(data / "new.csv", [{"id": r["id"], "image": r["image"]} for r in rows[12:]])
    workflow = _infer(trained, new)

    header, predictions = _read_csv(trained["run"] / "predictions.csv")
    assert header == ["id", "image", "prob_abnormal", "prob_normal", "predicted_index", "predicted_label"]
    assert [p["id"] for p in predictions] == [r["id"] for r in rows[12:]]
    assert [p["image"] for p in predictions] == [str((data / r["image"]).resolve()) for r in rows[12:]]
    probs = torch.tensor([[float(p["prob_abnormal"]), float(p["prob_normal"])] for p in predictions])
    torch.testing.assert_close(probs.sum(1), torch.ones(len(predictions)), atol=1e-4, rtol=0)
    for p, row in zip(predictions, probs, strict=True):
        assert int(p["predicted_index"]) == int(row.argmax())
        assert p["predicted_label"] == CLASSES[int(row.argmax())]
    # The file holds the trained model's outputs, not a fresh network's.
    torch.testing.assert_close(probs, _eager_probabilities(workflow), atol=1e-5, rtol=1e-4)


def test_evaluate_writes_metrics_of_a_labelled_split(trained: dict):
    _infer(trained, trained["manifest"], extra=(EVALUATE,), split="test")
    run = trained["run"]
    report = json.loads((run / "evaluation_test.json").read_text())
    _, predictions = _read_csv(run / "predictions.csv")
    _, manifest_rows = _read_csv(trained["manifest"])
    truth = {r["id"]: CLASSES.index(r["label"]) for r in manifest_rows if r["split"] == "test"}
    assert [p["id"] for p in predictions] == list(truth)
    predicted = [int(p["predicted_index"]) for p in predictions]
    matrix = np.zeros((2, 2), dtype=int)
    for p, t in zip(predicted, truth.values(), strict=True):
        matrix[t, p] += 1
    assert report["confusion_matrix"] == matrix.tolist() and report["num_images"] == 4
    recall = [matrix[c, c] / matrix[c].sum() for c in range(2)]
    assert report["per_class_recall"] == pytest.approx(dict(zip(CLASSES, recall, strict=True)))
    assert report["balanced_accuracy"] == pytest.approx(float(np.mean(recall)))
    assert 0.0 <= report["macro_f1"] <= 1.0 and report["checkpoint"].endswith("model.pt")
    header, per_class = _read_csv(run / "evaluation_test_per_class.csv")
    assert header == ["class", "support", "predicted", "recall", "precision", "f1"]
    assert [r["class"] for r in per_class] == CLASSES and [int(r["support"]) for r in per_class] == [2, 2]
    header, confusion = _read_csv(run / "evaluation_test_confusion.csv")
    assert header == ["true \\ predicted", *CLASSES]
    assert [[int(r[c]) for c in CLASSES] for r in confusion] == matrix.tolist()


def test_ckpt_export_to_torchscript_carries_the_model_metadata(trained: dict, tmp_path: Path):
    kind, run = trained["kind"], trained["run"]
    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(run / "models" / "model.pt"),
        meta_file=str(run / "models" / "metadata.json"),
        config_file=[str(INFERENCE), str(INFERENCE_MANIFEST)],
        key_in_ckpt="",
        output_dir=str(run),
        **TINY_NET,
    )
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(exported), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    spatial = KINDS[kind]["image_size"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == spatial
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert meta["alr_monai"]["spatial_dims"] == len(spatial)
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == CLASSES

    eager = _trained_network(run)
    image = torch.rand(1, 1, *spatial, generator=torch.Generator().manual_seed(0))
    scripted.eval()
    with torch.no_grad():
        got, expected = scripted(image), eager(image)
    assert got.shape == (1, 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _trained_network(run: Path) -> torch.nn.Module:
    """The trained network, built from the inference configs (no data is read) with the training's network size."""
    workflow = _workflow([INFERENCE, INFERENCE_MANIFEST], run, "infer", **TINY_NET)
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network_def", lazy=False)
    network.load_state_dict(torch.load(run / "models" / "model.pt", weights_only=True))
    return network.eval()


def test_check_properties_pass_for_train_and_inference(trained: dict, tmp_path: Path):
    settings = _train_settings(trained["manifest"], trained["kind"])
    train = _workflow([TRAIN, TRAIN_MANIFEST], tmp_path / "train", "train", **settings)
    train.initialize()
    # Every required training property (bundle_root, device, dataset_dir, trainer, max_epochs, train_dataset,
    # train_inferer) resolves, and so do the optional ids MONAI checks (evaluator, val_interval, key metric).
    assert BundleWorkflow.check_properties(train) == []
    assert train.check_properties() == []
    assert isinstance(train.train_inferer, SimpleInferer)
    assert train.max_epochs == 1 and len(train.train_dataset) == 12
    infer = _workflow([INFERENCE, INFERENCE_MANIFEST], trained["run"], "infer", manifest_path=str(trained["manifest"]))
    infer.initialize()
    assert infer.check_properties() == []
    assert isinstance(infer.inferer, SimpleInferer) and len(infer.dataset) == 20


def test_inference_errors_name_the_file_row_and_key(trained: dict, tmp_path: Path):
    with pytest.raises(Exception) as info:
        _infer(trained, tmp_path / "nothing.csv")
    assert f"{tmp_path / 'nothing.csv'} row 1: manifest file not found" in _chain(info.value)

    workflow = _workflow([INFERENCE, INFERENCE_MANIFEST], trained["run"], "infer", **TINY_NET)
    with pytest.raises(Exception) as info:
        _run(workflow)
    assert "manifest_path is not set: pass --manifest_path" in _chain(info.value)

    data = trained["manifest"].parent
    bad = _write_csv(
        tmp_path / "bad.csv",
        [
            {"id": "a", "image": str(data / "missing.png"), "label": "normal"},
            {"id": "a", "image": str(trained["manifest"]), "label": "tumour"},
        ],
    )
    with pytest.raises(ManifestError) as error:
        read_inference_items(bad, class_names=CLASSES, require_labels=True)
    problems = error.value.problems
    assert any(f"row 2: image file {data / 'missing.png'} not found" in p for p in problems), problems
    assert any("row 3: duplicate id 'a' (first in row 2)" in p for p in problems), problems
    assert any("row 3: image 'manifest.csv'" in p or "is not a supported type" in p for p in problems), problems
    assert any("row 3: label 'tumour' is not a class of the model (abnormal, normal)" in p for p in problems)

    # A file that exists but does not decode is named with its row before anything is predicted.
    first = sorted(data.glob("img*.png")) or sorted(data.glob("vol*.nii.gz"))
    truncated = tmp_path / ("cut.png" if first[0].suffix == ".png" else "cut.nii.gz")
    truncated.write_bytes(first[0].read_bytes()[:60])
    cut = _write_csv(
        tmp_path / "cut.csv", [{"id": "ok", "image": str(first[0])}, {"id": "cut", "image": str(truncated)}]
    )
    with pytest.raises(Exception) as info:
        _infer(trained, cut)
    message = _chain(info.value)
    assert f"{cut} row 3 (id cut): {truncated}" in message, message
    assert "--check_images false" in message

    elsewhere = tmp_path / "untrained"
    with pytest.raises(Exception) as info:
        _run(_workflow([INFERENCE, INFERENCE_MANIFEST], elsewhere, "infer", manifest_path=str(trained["manifest"])))
    assert f"model metadata {elsewhere / 'models' / 'metadata.json'} not found" in _chain(info.value)


def _chain(error: BaseException | None) -> str:
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def test_a_multi_sequence_model_predicts_from_the_same_columns(tmp_path: Path):
    """A model trained with ``sequences`` (two NIfTI files per row stacked as channels) reads the same columns."""
    import nibabel

    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(12):
        label = CLASSES[i % 2]
        for sequence in ("t1", "t2"):
            voxels = (rng.random((7, 6, 5)) * 100 + (50 if label == "abnormal" else 0)).astype(np.float32)
            nibabel.save(nibabel.Nifti1Image(voxels, np.eye(4)), data / f"{sequence}_{i}.nii.gz")
        split = "train" if i < 8 else ("val" if i < 10 else "test")
        rows.append({"id": f"s{i}", "image": f"t1_{i}.nii.gz", "t2": f"t2_{i}.nii.gz", "label": label, "split": split})
    manifest = _write_csv(data / "manifest.csv", rows)
    run = tmp_path / "run"
    settings = {
        **_train_settings(manifest, "3d"),
        "image_size": [6, 6, 6],
        "in_channels": 2,
        "sequences": ["image", "t2"],
    }
    _run(_workflow([TRAIN, TRAIN_MANIFEST], run, "train", **settings))
    section = read_model_metadata(run / "models")
    assert (
        section["sequences"] == ["image", "t2"]
        and section["in_channels"] == 2
        and section["spatial_shape"] == [6, 6, 6]
    )

    new = _write_csv(data / "new.csv", [{"id": r["id"], "image": r["image"], "t2": r["t2"]} for r in rows[8:]])
    workflow = _infer({"run": run}, new)
    header, predictions = _read_csv(run / "predictions.csv")
    assert header == ["id", "image", "prob_abnormal", "prob_normal", "predicted_index", "predicted_label"]
    assert [p["image"] for p in predictions] == [
        f"{(data / r['image']).resolve()};{(data / r['t2']).resolve()}" for r in rows[8:]
    ]
    probs = torch.tensor([[float(p["prob_abnormal"]), float(p["prob_normal"])] for p in predictions])
    torch.testing.assert_close(probs, _eager_probabilities(workflow), atol=1e-5, rtol=1e-4)

    missing = _write_csv(data / "missing.csv", [{"id": "x", "image": "t1_0.nii.gz"}])
    with pytest.raises(ManifestError, match="missing column 't2'"):
        read_inference_items(missing, sequences=["image", "t2"])
