"""What a MONAI user expects of a model-zoo bundle: evaluate.json overlaying train.json evaluates (and still
overlays inference.json), large_files.yml, eval_metrics as numbers, a loss key the trainer uses, the zoo sections
of the docs, and train.json's check_properties."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, download_large_files

from alr_monai.engines import CoTeachingTrainer
from alr_monai.networks import PeerEnsemble

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "alr_classification"
CONFIGS = BUNDLE / "configs"
TINY = {"batch_size": 32, "network_factory#block_inplanes": [4, 8, 8, 8]}


@pytest.fixture(scope="module")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory, write_tiny_bloodmnist) -> Path:
    return write_tiny_bloodmnist(tmp_path_factory.mktemp("tiny_bloodmnist"), {"train": 8, "val": 2, "test": 3})


def _run(files: list[Path], output_dir: Path, workflow_type: str = "train", **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type=workflow_type,
        logging_file=False,
        output_dir=str(output_dir),
        **overrides,
    )
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return workflow


@pytest.fixture(scope="module")
def trained(tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("zoo_run")
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
        logging_file=False,
        output_dir=str(run),
        dataset_dir=str(tiny_dataset_dir),
        max_epochs=1,
        **TINY,
    )
    workflow.initialize()
    assert workflow.check_properties() == []  # the docs used to say this raised TypeError
    workflow.run()
    workflow.finalize()
    return run


def test_train_plus_evaluate_evaluates_and_matches_the_inference_overlay(
    trained: Path, tiny_dataset_dir: Path, tmp_path: Path
):
    before = {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file()}
    _run([CONFIGS / "train.json", CONFIGS / "evaluate.json"], trained, dataset_dir=str(tiny_dataset_dir), **TINY)
    report = json.loads((trained / "evaluation_test.json").read_text())
    assert report["split"] == "test" and report["num_images"] == 24
    assert report["checkpoint"] == str(trained / "models" / "model.pt")
    # nothing was trained or rewritten: no new checkpoint, model or metadata
    after = {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file() and p in before}
    assert after == before
    assert not (trained / "predictions.csv").exists()

    # the inference overlay (unchanged use) scores the same model on the same images alike
    other = tmp_path / "inference_eval"
    other.mkdir()
    (other / "models").mkdir()
    for name in ("model.pt", "metadata.json"):
        (other / "models" / name).write_bytes((trained / "models" / name).read_bytes())
    _run(
        [CONFIGS / "inference.json", CONFIGS / "evaluate.json"],
        other,
        workflow_type="infer",
        dataset_dir=str(tiny_dataset_dir),
        **{"network_factory#block_inplanes": [4, 8, 8, 8]},
    )
    inferred = json.loads((other / "evaluation_test.json").read_text())
    assert (other / "predictions.csv").is_file()
    assert inferred["confusion_matrix"] == report["confusion_matrix"]
    for key in ("balanced_accuracy", "accuracy", "macro_f1"):
        assert inferred[key] == pytest.approx(report[key]), key
    assert inferred["auroc"] == pytest.approx(report["auroc"], abs=1e-6)


def test_large_files_yml_lists_nothing_to_download(tmp_path: Path):
    assert (BUNDLE / "large_files.yml").is_file()
    download_large_files(bundle_path=str(BUNDLE))  # an empty list: nothing fetched, no error
    assert ConfigParser.load_config_file(str(BUNDLE / "large_files.yml")) == {"large_files": []}


def test_metadata_eval_metrics_are_numbers_and_monai_keeps_the_required_packages():
    meta = json.loads((CONFIGS / "metadata.json").read_text())

    def leaves(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from leaves(value)
        else:
            yield node

    values = list(leaves(meta["eval_metrics"]))
    assert values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    # MONAI 1.6 renames a deprecated optional_packages_version to required_packages_version (replacing it), so the
    # bundle keeps only the required list
    parser = ConfigParser()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parser.read_meta(str(CONFIGS / "metadata.json"))
    assert parser["_meta_"]["required_packages_version"]["pydicom"] == meta["required_packages_version"]["pydicom"]


def test_docs_have_the_model_zoo_sections():
    text = (BUNDLE / "docs" / "README.md").read_text()
    headings = [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]
    zoo = [
        "Model Overview",
        "Data",
        "Training configuration",
        "Input/Output",
        "Performance",
        "MONAI Bundle Commands",
        "References",
    ]
    assert [h for h in headings if h in zoo] == zoo
    assert "raises TypeError" not in text


def test_the_loss_key_is_the_trainers_per_sample_loss():
    train = ConfigParser.load_config_file(str(CONFIGS / "train.json"))
    assert train["loss"]["_target_"] == "torch.nn.CrossEntropyLoss" and train["loss"]["reduction"] == "none"
    assert train["train"]["trainer"]["loss_function"] == "@loss"
    relabel = ConfigParser.load_config_file(str(CONFIGS / "relabel.json"))
    assert relabel["relabel"]["trainer"]["loss_function"] == "@loss"

    network = PeerEnsemble(lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), num_peers=2)
    calls = []

    def smoothed(logits, labels):
        calls.append(logits.shape)
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none", label_smoothing=0.1)

    batch = {"image": torch.rand(6, 4), "label": torch.tensor([0, 1, 2, 0, 1, 2]), "index": torch.arange(6)}
    trainer = CoTeachingTrainer("cpu", 1, [batch], network, torch.optim.SGD(network.parameters(), 0.1), 0.0,
                                loss_function=smoothed)  # fmt: skip
    trainer.run()
    assert calls == [(6, 3), (6, 3)]  # one call per peer
    reducing = CoTeachingTrainer("cpu", 1, [batch], network, torch.optim.SGD(network.parameters(), 0.1), 0.0,
                                 loss_function=torch.nn.CrossEntropyLoss())  # fmt: skip
    with pytest.raises(ValueError, match="one value per sample .* set reduction='none'"):
        reducing.run()
