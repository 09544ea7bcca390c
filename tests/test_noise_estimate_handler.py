"""NoiseRateEstimateHandler with a validation-calibrated method: unit checks and an end-to-end bundle run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from torch import nn

from alr_monai.data.medmnist import BLOODMNIST_CLASSES
from alr_monai.engines import CoTeachingTrainer
from alr_monai.handlers import NoiseRateEstimateHandler, SmallLossSelectionHandler
from alr_monai.handlers.noise_rate import _eval_pass, separable_balanced_accuracy
from alr_monai.networks import PeerEnsemble

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundles" / "alr_classification" / "configs" / "train.json"
PRESETS = REPO / "configs" / "presets"
NUM_CLASSES = 3
NUM_SAMPLES = 48


def _batches(labels: torch.Tensor, images: torch.Tensor, batch_size: int = 16) -> list[dict]:
    return [
        {
            "image": images[s : s + batch_size],
            "label": labels[s : s + batch_size],
            "index": torch.arange(s, min(s + batch_size, len(labels))),
        }
        for s in range(0, len(labels), batch_size)
    ]


def _setup(flipped: int = 6):
    """Three separable classes; the first ``flipped`` given labels are moved to the next class."""
    generator = torch.Generator().manual_seed(0)
    true = torch.arange(NUM_SAMPLES) % NUM_CLASSES
    images = torch.nn.functional.one_hot(true, 4).float() * 3 + 0.3 * torch.randn(NUM_SAMPLES, 4, generator=generator)
    given = true.clone()
    given[:flipped] = (true[:flipped] + 1) % NUM_CLASSES
    val_true = torch.arange(24) % NUM_CLASSES
    val_images = torch.nn.functional.one_hot(val_true, 4).float() * 3 + 0.3 * torch.randn(24, 4, generator=generator)
    return true, given, images, val_true, val_images


@pytest.mark.parametrize("method", ["prototype_matching", "confusion_inversion", "confident_joint_val"])
def test_validation_method_sets_forget_rate_and_logs_per_class(method):
    true, given, images, val_true, val_images = _setup()
    torch.manual_seed(0)
    network = PeerEnsemble(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, NUM_CLASSES)), num_peers=2)
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, ["a", "b", "c"])
    estimator = NoiseRateEstimateHandler(
        selection,
        NUM_CLASSES,
        estimate_epoch=2,
        method=method,
        network=network,
        train_loader=_batches(given, images, batch_size=32),  # an unshuffled, un-augmented pass
        val_loader=_batches(val_true, val_images, batch_size=24),
        true_labels=true,
        class_names=["a", "b", "c"],
        true_rate=6 / NUM_SAMPLES,
    )
    trainer = CoTeachingTrainer(
        device="cpu",
        max_epochs=3,
        train_data_loader=_batches(given, images),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=0.05),
        forget_rate=None,
        train_handlers=[selection, estimator],
    )
    trainer.run()
    assert estimator.class_estimates is not None and len(estimator.class_estimates) == NUM_CLASSES
    counts = torch.bincount(given, minlength=NUM_CLASSES).double()
    weighted = float((torch.tensor(estimator.class_estimates) * counts).sum() / counts.sum())
    assert estimator.estimate == pytest.approx(weighted)
    assert trainer.forget_rate == pytest.approx(min(estimator.estimate, 0.9))
    metrics = trainer.state.metrics
    assert metrics["noise_rate_estimate/a"] == pytest.approx(estimator.class_estimates[0])
    truth = [float((true[given == c] != c).double().mean()) for c in range(NUM_CLASSES)]
    assert [metrics[f"noise_rate_true/{n}"] for n in "abc"] == pytest.approx(truth)
    assert network.training  # the eval pass restored train mode

    # The per-class estimate survives a checkpoint, and an old checkpoint (global estimate only) still loads.
    restored = NoiseRateEstimateHandler(selection, NUM_CLASSES)
    restored.load_state_dict(estimator.state_dict())
    assert restored.class_estimates == pytest.approx(estimator.class_estimates)
    restored.load_state_dict({"estimate": 0.2})
    assert restored.estimate == 0.2 and restored.class_estimates is None


def test_validation_method_without_its_inputs_is_a_clear_error():
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, ["a", "b", "c"])
    with pytest.raises(ValueError, match="needs network, train_loader, val_loader"):
        NoiseRateEstimateHandler(selection, NUM_CLASSES, method="prototype_matching")
    with pytest.raises(ValueError, match="unknown noise estimation method"):
        NoiseRateEstimateHandler(selection, NUM_CLASSES, method="oracle")


def test_untrained_model_triggers_a_warning(caplog):
    true, given, images, val_true, val_images = _setup()
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, ["a", "b", "c"])
    # A network that outputs the same logits for every image: nothing separates the classes.
    network = PeerEnsemble(lambda: nn.Sequential(nn.Linear(4, 8), nn.Linear(8, NUM_CLASSES)), num_peers=2)
    for peer in network.peers:
        nn.init.zeros_(peer[0].weight)
    estimator = NoiseRateEstimateHandler(
        selection,
        NUM_CLASSES,
        estimate_epoch=1,
        method="confusion_inversion",
        network=network,
        train_loader=_batches(given, images),
        val_loader=_batches(val_true, val_images),
    )
    with caplog.at_level("WARNING", logger="alr_monai.handlers.noise_rate"):
        estimator._estimate_from_validation(_eval_pass(network, _batches(val_true, val_images), False), epoch=4)
    assert "does not yet separate the classes" in caplog.text
    assert "validation balanced accuracy at epoch 4 is" in caplog.text  # the epoch it was tried at


def test_separability_bar_is_a_seventh_of_the_way_from_chance_to_perfect():
    assert separable_balanced_accuracy(8) == pytest.approx(0.25)  # twice chance, as it always was for 8 classes
    assert separable_balanced_accuracy(2) == pytest.approx(4 / 7)  # twice chance would demand a perfect model
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, ["a", "b"])
    binary = NoiseRateEstimateHandler(selection, 2)
    labels = torch.tensor([0] * 10 + [1] * 10)
    # recall 0.7 on each class: balanced accuracy 0.70, which "twice chance" (1.0) used to refuse
    predicted = torch.cat([torch.tensor([0] * 7 + [1] * 3), torch.tensor([1] * 7 + [0] * 3)])
    assert binary._classes_separable(nn.functional.one_hot(predicted, 2).float(), labels, 2)
    predicted = torch.cat([torch.tensor([0] * 5 + [1] * 5), torch.tensor([1] * 6 + [0] * 4)])  # 0.55: not yet
    assert not binary._classes_separable(nn.functional.one_hot(predicted, 2).float(), labels, 2)


def test_default_method_logs_no_per_class_keys():
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, ["a", "b", "c"])
    estimator = NoiseRateEstimateHandler(selection, NUM_CLASSES)
    assert estimator.method == "gmm" and estimator.class_estimates is None
    assert "class_estimates" not in estimator.state_dict()


@pytest.fixture(scope="module")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory, write_tiny_bloodmnist) -> Path:
    """A class-balanced slice of the embedded set in the MedMNIST layout (96 / 32 / 32 images)."""
    folder = tmp_path_factory.mktemp("tiny_bloodmnist_noise")
    return write_tiny_bloodmnist(folder, {"train": 12, "val": 4, "test": 4})


def test_bundle_preset_runs_end_to_end_and_logs_estimate_next_to_truth(tiny_dataset_dir, tmp_path):
    workflow = ConfigWorkflow(
        config_file=[str(TRAIN), str(PRESETS / "smoke.json"), str(PRESETS / "noise_estimate_val.json")],
        workflow_type="train",
        logging_file=False,
        output_dir=str(tmp_path),
        dataset_dir=str(tiny_dataset_dir),
        max_epochs=2,
        batch_size=32,
        **{"network_factory#block_inplanes": [4, 8, 8, 8]},
    )
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    estimator = workflow.parser.get_parsed_content("noise_rate_estimator")
    assert estimator.method == "prototype_matching" and estimator.class_estimates is not None
    last = json.loads((tmp_path / "metrics.json").read_text())["last"]["train"]
    for name in BLOODMNIST_CLASSES:
        assert 0.0 <= last[f"noise_rate_estimate/{name}"] <= 1.0
        assert math.isfinite(last[f"noise_rate_true/{name}"])
    assert last["noise_rate_estimate"] == pytest.approx(estimator.estimate)
    # The estimate (after epoch 1 in the smoke preset) became the trainer's forget rate.
    assert workflow.parser.get_parsed_content("train#trainer").forget_rate == pytest.approx(
        min(estimator.estimate, 0.9)
    )
