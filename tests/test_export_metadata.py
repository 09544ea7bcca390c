"""Bundle metadata: the packages the code imports, the per-model metadata phase 1 writes, the data license, and the
MedMNIST inference / evaluation / export path with a header in predictions.csv."""

from __future__ import annotations

import ast
import csv
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export

from alr_monai.data.medmnist import BLOODMNIST_CLASSES
from alr_monai.export import REQUIRED_PACKAGES, model_metadata, read_model_metadata

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "alr_classification"
CONFIGS = BUNDLE / "configs"
METADATA = CONFIGS / "metadata.json"
TINY_NET = {"network_factory#block_inplanes": [4, 8, 8, 8]}

# Import name -> distribution name, for the third-party modules alr_monai imports.
DISTRIBUTION = {"sklearn": "scikit-learn", "PIL": "pillow", "ignite": "pytorch-ignite"}
# Packages with their own metadata field, and the benchmark-only extra (pyproject: [benchmark]).
OWN_FIELD = {"torch": "pytorch_version", "monai": "monai_version", "numpy": "numpy_version"}
OPTIONAL = {"cleanlab"}


def _third_party_imports() -> set[str]:
    names = set()
    for path in (REPO / "alr_monai").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in {"alr_monai", "__future__"}}


def _toml_list(text: str, key: str) -> list[str]:
    """The strings of a ``key = [...]`` list in pyproject.toml (tomllib is Python 3.11+, the project supports 3.10)."""
    block = re.search(rf"^{re.escape(key)} = \[(.*?)\]", text, flags=re.MULTILINE | re.DOTALL)
    assert block is not None, key
    lines = [line.split("#", 1)[0] for line in block.group(1).splitlines()]
    return re.findall(r'"([^"]+)"', "\n".join(lines))


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower()


def test_required_packages_list_every_package_the_code_imports():
    meta = json.loads(METADATA.read_text())
    listed = set(meta["required_packages_version"])
    imported = _third_party_imports()
    assert imported - OPTIONAL, "the import scan found nothing"
    for name in sorted(imported - OPTIONAL):
        if name in OWN_FIELD:
            assert meta[OWN_FIELD[name]], name
        else:
            assert DISTRIBUTION.get(name, name) in listed, f"alr_monai imports {name} but metadata.json omits it"
    # torch.utils.tensorboard needs tensorboard; ignite's ProgressBar needs tqdm: both are declared and listed.
    pyproject = (REPO / "pyproject.toml").read_text()
    declared = {_requirement_name(r) for r in _toml_list(pyproject, "dependencies")} - set(OWN_FIELD)
    assert declared <= listed, declared - listed
    assert {_requirement_name(r) for r in _toml_list(pyproject, "benchmark")} == OPTIONAL
    assert set(REQUIRED_PACKAGES) == listed
    assert all(re.fullmatch(r"\d+(\.\d+)*", v) for v in meta["required_packages_version"].values())


def test_bundle_metadata_says_logits_and_points_to_the_data_license():
    meta = json.loads(METADATA.read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["type"] == "logits" and list(pred["channel_def"].values()) == BLOODMNIST_CLASSES
    assert "logits" in meta["pred_classes"] and "data_license.txt" in meta["data_source"]
    license_text = (BUNDLE / "docs" / "data_license.txt").read_text()
    for words in ("BloodMNIST", "MedMNIST v2", "CC BY 4.0", "Yang", "Scientific Data", "creativecommons.org"):
        assert words in license_text, words


def test_model_metadata_of_a_3d_manifest_model_describes_that_model():
    settings = {"spatial_size": [32, 32, 16], "in_channels": 1, "spatial_dims": 3, "intensity": {"window": [40, 400]}}
    meta = model_metadata(["normal", "nodule", "mass"], (1, 32, 32, 16), num_peers=1, preprocessing=settings)
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 1 and image["spatial_shape"] == [32, 32, 16]
    assert image["modality"] == "unknown" and image["channel_def"] == {"0": "gray"}
    assert "microscopy" not in json.dumps(meta["network_data_format"]) and "28 x 28" not in meta["image_classes"]
    assert meta["image_classes"].startswith("1-channel 3D image, 32 x 32 x 16") and "window" in meta["image_classes"]
    assert meta["label_classes"] == "3 classes: normal, nodule, mass"
    assert meta["pred_classes"].startswith("3 logits (sum of one network's logits)")
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "normal", "1": "nodule", "2": "mass"}
    assert meta["alr_monai"]["spatial_dims"] == 3 and meta["alr_monai"]["preprocessing"] == settings
    # The bundle's own description stays for the model it describes.
    blood = model_metadata(BLOODMNIST_CLASSES, (3, 28, 28))
    assert blood["network_data_format"]["inputs"]["image"]["modality"] == "microscopy"
    assert blood["image_classes"] == json.loads(METADATA.read_text())["image_classes"]
    with pytest.raises(ValueError, match="input_shape must be"):
        model_metadata(["a"], (3,))


def test_read_model_metadata_errors_name_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "metadata.json"))):
        read_model_metadata(tmp_path / "model.pt")
    (tmp_path / "metadata.json").write_text(json.dumps({"version": "1"}))
    with pytest.raises(ValueError, match="no complete 'alr_monai' section"):
        read_model_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_model_metadata(tmp_path / "metadata.json")


@pytest.fixture(scope="module")
def blood_run(tmp_path_factory: pytest.TempPathFactory, write_tiny_bloodmnist) -> tuple[Path, Path]:
    """A one-epoch phase 1 on a tiny BloodMNIST slice: (run folder, dataset folder)."""
    data = write_tiny_bloodmnist(tmp_path_factory.mktemp("blood_data"), {"train": 6, "val": 2, "test": 2})
    run = tmp_path_factory.mktemp("blood_run")
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        workflow_type="train",
        logging_file=False,
        output_dir=str(run),
        dataset_dir=str(data),
        max_epochs=1,
        batch_size=32,
        **TINY_NET,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return run, data


def test_medmnist_run_metadata_inference_evaluation_and_export(blood_run: tuple[Path, Path], tmp_path: Path):
    run, data = blood_run
    meta = json.loads((run / "models" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [28, 28]
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert meta["network_data_format"]["outputs"]["pred"]["type"] == "logits"
    assert meta["alr_monai"]["class_names"] == BLOODMNIST_CLASSES and meta["alr_monai"]["spatial_dims"] == 2

    files = [str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")]
    workflow = ConfigWorkflow(
        config_file=files,
        workflow_type="infer",
        logging_file=False,
        output_dir=str(run),
        dataset_dir=str(data),
        **TINY_NET,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    with open(run / "predictions.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames, list(reader)
    assert header == ["id", *(f"prob_{c}" for c in BLOODMNIST_CLASSES), "predicted_index", "predicted_label"]
    assert len(rows) == 16 and all(r["predicted_label"] == BLOODMNIST_CLASSES[int(r["predicted_index"])] for r in rows)
    report = json.loads((run / "evaluation_test.json").read_text())
    assert report["num_images"] == 16 and sum(map(sum, report["confusion_matrix"])) == 16
    assert list(report["per_class_recall"]) == BLOODMNIST_CLASSES

    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(run / "models" / "model.pt"),
        meta_file=str(run / "models" / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        key_in_ckpt="",
        dataset_dir=str(data),
        **TINY_NET,
    )
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(exported), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["metadata.json"])["alr_monai"]["spatial_shape"] == [28, 28]
    with torch.no_grad():
        assert scripted(torch.rand(2, 3, 28, 28)).shape == (2, 8)
