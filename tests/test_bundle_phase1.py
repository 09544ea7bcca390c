"""End-to-end runs of the phase-1 bundle through ``monai.bundle`` on tiny data.

Every run uses a tiny slice of the embedded BloodMNIST set (written as ``bloodmnist.npz`` and passed as
``dataset_dir``), batch size 32 and a ResNet with 4-8 channels, so a training epoch takes well under a second.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import alr_monai.data.medmnist
from alr_monai.data.medmnist import BLOODMNIST_CLASSES, load_medmnist
from alr_monai.data.noise import NoisyLabels
from alr_monai.handlers import RunCheckpointer, SelectionMetricsHandler
from alr_monai.handlers.outputs import SELECTION_COLUMNS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "alr_classification" / "configs"
TRAIN = CONFIGS / "train.json"
TRAIN_MANIFEST = CONFIGS / "train_manifest.json"
INFERENCE = CONFIGS / "inference.json"
METADATA = CONFIGS / "metadata.json"
PRESETS = REPO / "configs" / "presets"

TINY_NET = {"network_factory#block_inplanes": [4, 8, 8, 8]}
TINY = {"batch_size": 32, **TINY_NET}
PER_CLASS = {"train": 12, "val": 4, "test": 4}


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory, write_tiny_bloodmnist) -> Path:
    """A class-balanced slice of the embedded set in the official MedMNIST layout (96 / 32 / 32 images)."""
    folder = tmp_path_factory.mktemp("tiny_bloodmnist")
    return write_tiny_bloodmnist(folder, PER_CLASS)


def _workflow(config_files: list[Path], output_dir: Path, **overrides) -> ConfigWorkflow:
    # logging_file=False: the bundle's logging.conf would reconfigure logging for the whole test session.
    return ConfigWorkflow(
        config_file=[str(f) for f in config_files],
        workflow_type="train",
        logging_file=False,
        output_dir=str(output_dir),
        **overrides,
    )


def _run(workflow: ConfigWorkflow, before_run: Callable[[ConfigWorkflow], None] | None = None) -> ConfigWorkflow:
    workflow.initialize()
    try:
        if before_run is not None:
            before_run(workflow)  # parsed objects are cached after initialize(), so run() uses the same ones
        workflow.run()
    finally:
        workflow.finalize()
    return workflow


def _train(output_dir: Path, dataset_dir: Path, extra_files: tuple[Path, ...] = (), **overrides) -> ConfigWorkflow:
    return _run(_workflow([TRAIN, *extra_files], output_dir, dataset_dir=str(dataset_dir), **{**TINY, **overrides}))


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _error_chain(error: BaseException) -> str:
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def _epoch_recorder(workflow: ConfigWorkflow) -> list[int]:
    started: list[int] = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: started.append(engine.state.epoch))
    workflow.started_epochs = started  # type: ignore[attr-defined]
    return started


# ---------------------------------------------------------------------------------------------- a 2-epoch run


@pytest.fixture(scope="module")
def phase1_run(tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output_dir = tmp_path_factory.mktemp("phase1")
    _train(output_dir, tiny_dataset_dir, max_epochs=2)
    return output_dir


def test_two_epoch_run_writes_selection_csv(phase1_run: Path):
    header, rows = _read_csv(phase1_run / "selection.csv")
    assert header == SELECTION_COLUMNS
    assert len(rows) == PER_CLASS["train"] * 8
    assert [int(r["index"]) for r in rows] == list(range(len(rows)))
    # given_label is the label training saw: the injected noisy label, never the truth.
    noise = NoisyLabels.load(phase1_run / "noise.csv")
    assert [r["id"] for r in rows] == noise.ids
    assert [int(r["given_label"]) for r in rows] == noise.noisy_labels.tolist()
    assert 0.5 < noise.noise_rate < 0.7 and noise.is_noisy.any()
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) >= 0 for r in rows)
    assert all(math.isfinite(float(r["vog"])) for r in rows)  # two snapshots after two epochs
    for column in ("kept_by_net1", "kept_by_net2", "trusted"):
        assert {r[column] for r in rows} <= {"0", "1"}
    assert json.loads((phase1_run / "classes.json").read_text())["class_names"] == BLOODMNIST_CLASSES
    assert (phase1_run / "checkpoints" / "checkpoint_epoch=2.pt").is_file()
    assert (phase1_run / "models" / "model.pt").is_file()


def test_two_epoch_run_writes_metrics_json(phase1_run: Path):
    summary = json.loads((phase1_run / "metrics.json").read_text())
    assert summary["epoch"] == 2
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    for entry in summary["history"]:
        value = entry["val"]["val_balanced_accuracy"]
        assert math.isfinite(value) and 0.0 <= value <= 1.0
        assert set(entry["train"]) >= {"kept_fraction", *(f"kept_fraction/{c}" for c in BLOODMNIST_CLASSES)}
    assert summary["best_val_epoch"] in (1, 2)
    assert summary["best_val_metric"] == max(h["val"]["val_balanced_accuracy"] for h in summary["history"])
    assert summary["last"]["train"]["noise_rate_true"] == pytest.approx(0.6, abs=0.01)
    assert math.isfinite(summary["last"]["train"]["noise_rate_estimate"])  # estimated after epoch 2
    test = summary["test"]
    assert math.isfinite(test["balanced_accuracy"]) and 0.0 <= test["balanced_accuracy"] <= 1.0
    assert test["class_names"] == BLOODMNIST_CLASSES
    assert np.array(test["confusion_matrix"]).sum() == PER_CLASS["test"] * 8
    assert Path(test["checkpoint"]) == phase1_run / "models" / "model.pt"


def test_two_epoch_run_writes_tensorboard_scalars_and_images(phase1_run: Path):
    events = EventAccumulator(str(phase1_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    scalars = set(tags["scalars"])
    expected = {"train/loss", "train/loss_peer0", "train/loss_peer1", "train/learning_rate"}
    expected |= {"val/balanced_accuracy", "val/macro_f1", "val/auroc", "val/loss"}
    expected |= {f"val/recall/{c}" for c in BLOODMNIST_CLASSES}
    expected |= {"selection/kept_fraction", "selection/selection_precision", "selection/min_clean_recall"}
    expected |= {f"selection/kept_fraction/{c}" for c in BLOODMNIST_CLASSES}
    expected |= {"selection/vog_mean", "selection/vog_std", "selection/label_error_auroc"}
    expected |= {"noise/forget_rate", "noise/noise_rate_estimate"}
    expected |= {f"noise/noise_rate_estimate/{c}" for c in BLOODMNIST_CLASSES}
    assert expected <= scalars, expected - scalars
    # one scheme: every tag sits in a section, none keeps the old flat names
    assert {tag.split("/")[0] for tag in scalars} <= {"train", "val", "selection", "noise"}, scalars
    for tag in ("train/loss", "val/balanced_accuracy", "val/loss"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2]  # one point per epoch
    assert events.Scalars("train/learning_rate")[-1].value == pytest.approx(1e-3)
    metrics = json.loads((phase1_run / "metrics.json").read_text())
    assert events.Scalars("val/balanced_accuracy")[-1].value == pytest.approx(
        metrics["history"][-1]["val"]["val_balanced_accuracy"], abs=1e-6
    )
    images = set(tags["images"])
    assert {"val/confusion_matrix", "val/per_class_recall", "selection/per_class_kept_fraction"} <= images
    image = events.Images("val/confusion_matrix")[-1]
    assert image.width > 0 and image.height > 0
    # tensorboard_image_interval 5: of a 2-epoch run only the last epoch is drawn, and once
    assert [e.step for e in events.Images("val/confusion_matrix")] == [2]


def test_inference_bundle_writes_predictions_of_the_trained_model(phase1_run: Path, tiny_dataset_dir: Path):
    workflow = ConfigWorkflow(
        config_file=str(INFERENCE),
        workflow_type="infer",
        logging_file=False,
        output_dir=str(phase1_run),
        dataset_dir=str(tiny_dataset_dir),
        **TINY_NET,
    )
    _run(workflow)
    with open(phase1_run / "predictions.csv", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["id", *(f"prob_{name}" for name in BLOODMNIST_CLASSES), "predicted_index", "predicted_label"]
    data = load_medmnist(tiny_dataset_dir / "bloodmnist.npz")
    assert [r[0] for r in rows] == data["test"].ids
    probs = torch.tensor([[float(v) for v in r[1:9]] for r in rows])
    assert [r[10] for r in rows] == [BLOODMNIST_CLASSES[int(p.argmax())] for p in probs]
    assert probs.shape == (len(data["test"]), 8)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(rows)), atol=1e-4, rtol=0)

    # The same probabilities from the checkpoint by hand: the inference bundle loaded the trained model.
    network = workflow.parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(phase1_run / "models" / "model.pt", weights_only=True))
    network.eval()
    images = torch.stack(
        [workflow.parser.get_parsed_content("preprocessing")(i)["image"] for i in data["test"].items()]
    )
    with torch.no_grad():
        expected = torch.softmax(network(images), 1)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)


def test_verify_net_in_out_and_torchscript_export(phase1_run: Path, tiny_dataset_dir: Path):
    overrides = {"dataset_dir": str(tiny_dataset_dir), **TINY_NET}
    verify_net_in_out(net_id="network_def", meta_file=str(METADATA), config_file=str(TRAIN), device="cpu", **overrides)
    exported = phase1_run / "models" / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(phase1_run / "models" / "model.pt"),
        meta_file=str(METADATA),
        config_file=str(TRAIN),
        key_in_ckpt="",
        **overrides,
    )
    scripted = torch.jit.load(str(exported), map_location="cpu")
    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser.update(overrides)
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(phase1_run / "models" / "model.pt", weights_only=True))
    eager.eval()
    scripted.eval()
    images = torch.rand(5, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = eager(images)
        got = scripted(images)
    assert got.shape == (5, 8)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Not a trivially equal pair: the checkpoint's logits differ from a freshly initialised network's.
    fresh = parser.get_parsed_content("network_def", lazy=False).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(images), expected, atol=1e-3)


# ---------------------------------------------------------------------------------------------- presets


def test_all_presets_parse():
    expected = {
        "smoke": {"max_epochs": 3, "vog#num_snapshots": 2, "noise_estimate#latest_epoch": 1},
        "coteaching": {"vog#mix_ratio": 0.0, "coteaching#forget_rate": None, "selection#per_class": False},
        "paper_recipe": {"coteaching#forget_rate": 0.6, "vog#class_normalise": False, "vog#mix_ratio": 0.2},
        "ce": {
            "network_def#num_peers": 1,
            "coteaching#forget_rate": 0.0,
            "vog#mix_ratio": 0.0,
            "imbalance#logit_adjustment": 0.0,
        },
        "noise_estimate_val": {
            "noise_estimate#method": "prototype_matching",
            "noise_estimate#latest_epoch": None,
            "selection#per_class": False,
        },
        "vog_global": {"noise_estimate#method": "gmm", "selection#per_class": False, "coteaching#trusted_rule": "any"},
        "prototype": {"selection#rank_by": "prototype", "selection#per_class": True},
        "loss_prototype": {"selection#rank_by": "loss+prototype"},
        "cleanlab_subset": {"cleanlab#train_indices": None, "vog#class_normalise": False},
        "plain_loss": {"imbalance#logit_adjustment": 0.0},
        "prototype_estimate": {"noise_estimate#method": "prototype_matching", "noise_estimate#latest_epoch": None},
        "class_balanced": {"imbalance#sampler": "class_balanced", "imbalance#logit_adjustment": 0.0},
    }
    assert {p.stem for p in PRESETS.glob("*.json")} == set(expected)
    for name, values in expected.items():
        parser = ConfigParser()
        parser.read_config([str(TRAIN), str(PRESETS / f"{name}.json")])
        parser.parse()
        for key, value in values.items():
            # Follows references such as "@simulation#noise_rate" without building any data.
            got = parser.get_parsed_content(key)
            assert got == value, (name, key, got)


@pytest.mark.parametrize("preset", ["paper_recipe", "ce"])
def test_presets_run_one_epoch(preset: str, tiny_dataset_dir: Path, tmp_path: Path):
    workflow = _train(tmp_path, tiny_dataset_dir, extra_files=(PRESETS / f"{preset}.json",), max_epochs=1)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1]
    assert math.isfinite(summary["last"]["val"]["val_balanced_accuracy"])
    assert "test" in summary
    _, rows = _read_csv(tmp_path / "selection.csv")
    assert len(rows) == PER_CLASS["train"] * 8
    if preset == "paper_recipe":
        assert trainer.forget_rate == pytest.approx(0.6)  # the injected rate, as the reference code does
        assert workflow.parser.get_parsed_content("vog_tracker").class_normalise is False
        assert {r["kept_by_net2"] for r in rows} <= {"0", "1"}
    else:
        assert trainer.network.num_peers == 1
        assert {r["kept_by_net2"] for r in rows} == {""}
        assert {r["trusted"] for r in rows} == {"1"}  # plain CE: nothing is ever dropped


# ---------------------------------------------------------------------------------------------- manifest overlay


@pytest.fixture
def manifest_dataset(tmp_path: Path, imagefile_dicom, imagefile_nifti, imagefile_png, manifest_write_csv) -> Path:
    """20 images in DICOM, NIfTI (.nii / .nii.gz), gray PNG and RGB PNG: train 12 / val 4 / test 4, 2 classes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "hospital"
    rows = []
    for i in range(20):
        label = "abnormal" if i % 2 else "normal"
        shape = (12, 10) if i % 3 else (9, 14)
        pixels = rng.integers(0, 200, size=shape).astype(np.int16) + (40 if label == "abnormal" else 0)
        kind = i % 4
        if kind == 0:
            path = imagefile_dicom(folder / "dcm" / f"case{i}.dcm", pixels, patient_id=f"P{i // 4}")
        elif kind == 1:
            path = imagefile_nifti(
                folder / "nii" / f"case{i}.nii{'.gz' if i % 8 == 1 else ''}", pixels.T.astype(np.float32)
            )
        elif kind == 2:
            path = imagefile_png(folder / "png" / f"case{i}.png", pixels.clip(0, 255).astype(np.uint8))
        else:
            gray = pixels.clip(0, 255).astype(np.uint8)
            path = imagefile_png(folder / "png" / f"case{i}.png", np.stack([gray, gray // 2, 255 - gray], axis=-1))
        split = "train" if i < 12 else ("val" if i < 16 else "test")
        rows.append({"id": f"case{i}", "image": str(path.relative_to(folder)), "label": label, "split": split})
    return manifest_write_csv(folder / "manifest.csv", rows)


def _manifest_settings(manifest: Path | None, **overrides) -> dict:
    settings = {"max_epochs": 1, "batch_size": 4, "image_size": [16, 16], **TINY_NET, **overrides}
    if manifest is not None:
        settings["manifest_path"] = str(manifest)
    return settings


def _manifest_workflow(manifest: Path | None, output_dir: Path, **overrides) -> ConfigWorkflow:
    return _workflow([TRAIN, TRAIN_MANIFEST], output_dir, **_manifest_settings(manifest, **overrides))


def test_manifest_run_trains_on_dicom_nifti_png(manifest_dataset: Path, tmp_path: Path, monkeypatch):
    def no_medmnist(*_args, **_kwargs):
        raise AssertionError("the manifest overlay must not load MedMNIST data")

    monkeypatch.setattr(alr_monai.data.medmnist, "load_medmnist", no_medmnist)
    output_dir = tmp_path / "run"
    workflow = _run(_manifest_workflow(manifest_dataset, output_dir))

    assert json.loads((output_dir / "classes.json").read_text()) == {"class_names": ["abnormal", "normal"]}
    assert not (output_dir / "noise.csv").exists()
    header, rows = _read_csv(output_dir / "selection.csv")
    assert header == SELECTION_COLUMNS
    assert [r["id"] for r in rows] == [f"case{i}" for i in range(12)]
    # The manifest's own labels are trained on, unchanged (abnormal = 0, normal = 1).
    assert [int(r["given_label"]) for r in rows] == [1 - i % 2 for i in range(12)]
    summary = json.loads((output_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1]
    assert math.isfinite(summary["last"]["val"]["val_balanced_accuracy"])
    assert "noise_rate_true" not in summary["last"]["train"] and "selection_precision" not in summary["last"]["train"]
    assert np.array(summary["test"]["confusion_matrix"]).sum() == 4
    assert (output_dir / "models" / "model.pt").is_file()

    batch = next(iter(workflow.parser.get_parsed_content("train#dataloader")))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["image"].dtype == torch.float32
    handlers = workflow.parser.get_parsed_content("train#handlers")
    assert not any(isinstance(h, SelectionMetricsHandler) for h in handlers)
    assert workflow.parser.get_parsed_content("noise_rate_estimator").true_rate is None


def test_manifest_phase2_reads_phase1_labels_and_refuses_an_edited_manifest(
    manifest_dataset: Path, tmp_path: Path, manifest_write_csv
):
    output_dir = tmp_path / "run"
    _run(_manifest_workflow(manifest_dataset, output_dir))
    relabel = {"relabel#mode": "interactive", "relabel#round_budget": 2, "relabel#recalibration_epochs": 1}
    _run(
        _workflow(
            [TRAIN, TRAIN_MANIFEST, CONFIGS / "relabel.json"],
            output_dir,
            **_manifest_settings(manifest_dataset),
            **relabel,
        )
    )
    _, query = _read_csv(output_dir / "relabel" / "queries" / "round_1.csv")
    given = {r["id"]: ["abnormal", "normal"][int(r["given_label"])] for r in _read_csv(output_dir / "selection.csv")[1]}
    assert len(query) == 2 and all(r["given_label"] == given[r["id"]] for r in query)  # phase 1's labels, by name

    # The same manifest with one training label changed: phase 1's trusted mask belongs to other labels.
    _, rows = _read_csv(manifest_dataset)
    rows[3]["label"] = "normal" if rows[3]["label"] == "abnormal" else "abnormal"
    edited = manifest_write_csv(manifest_dataset.parent / "edited.csv", rows)
    other = tmp_path / "other"
    shutil.copytree(output_dir, other)
    shutil.rmtree(other / "relabel")
    with pytest.raises(Exception) as info:
        _run(
            _workflow([TRAIN, TRAIN_MANIFEST, CONFIGS / "relabel.json"], other, **_manifest_settings(edited), **relabel)
        )
    message = _error_chain(info.value)
    assert f"{other / 'selection.csv'} row 5: id 'case3'" in message, message
    assert not (other / "relabel").exists()


def _base_value(config: dict, key: str):
    """The value at a ``#``-separated key of a parsed config file, or a sentinel when the key does not exist."""
    node = config
    for part in key.split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


_MISSING = object()


# paper_recipe.json pins the reference code's settings on purpose (some equal today's defaults), so it keeps
# reproducing that recipe if a default changes; every other overlay sets only what differs.
@pytest.mark.parametrize(
    "overlay_path",
    [TRAIN_MANIFEST, CONFIGS / "relabel.json", *sorted(p for p in PRESETS.glob("*.json") if p.stem != "paper_recipe")],
    ids=lambda path: path.name,
)
def test_overlays_change_only_what_differs(overlay_path: Path):
    train = ConfigParser.load_config_file(str(TRAIN))
    overlay = ConfigParser.load_config_file(str(overlay_path))
    copies = [
        key
        for key, value in overlay.items()
        if not key.startswith(("_", "+"))
        and _base_value(train, key) is not _MISSING
        and _base_value(train, key) == value
    ]
    assert not copies, f"{overlay_path.name} repeats train.json's value for {copies}"
    for key in overlay:
        if key.startswith("+"):  # appended to train.json's list: only new entries
            assert not set(overlay[key]) & set(train[key[1:]]), f"{overlay_path.name} {key} repeats entries"


def test_manifest_overlay_switches_off_the_simulation_parts_by_key():
    train = ConfigParser.load_config_file(str(TRAIN))
    overlay = ConfigParser.load_config_file(str(TRAIN_MANIFEST))
    # The handler list and initialize come from train.json; the overlay only nulls the simulation-only parts.
    assert "train#handlers" not in overlay and "initialize" not in overlay
    references = [h.get("handler") for h in train["train"]["handlers"] if isinstance(h, dict)]
    assert "@selection_metrics" in references and "@noise_record" in train["initialize"]
    assert train["selection_metrics"]["_target_"].endswith("SelectionMetricsHandler")
    assert overlay["selection_metrics"] is None and overlay["noise_record"] is None
    assert "_comment" in overlay
    for key in ("manifest_path", "image_size", "in_channels", "manifest_classes", "intensity", "spatial_dims"):
        assert key in overlay and key in " ".join(overlay["_comment"])
    assert overlay["manifest_path"] is None and overlay["image_size"] == [64, 64] and overlay["in_channels"] == 1


def test_manifest_overlay_errors_are_clear(manifest_dataset: Path, tmp_path: Path, manifest_write_csv):
    workflow = _manifest_workflow(None, tmp_path / "a")
    workflow.parser.parse()
    with pytest.raises(RuntimeError) as missing:
        workflow.parser.get_parsed_content("train#items")
    assert "manifest_path is not set" in _error_chain(missing.value)

    header, rows = _read_csv(manifest_dataset)
    no_val = manifest_write_csv(
        manifest_dataset.parent / "no_val.csv",
        [{**r, "split": "train" if r["split"] == "val" else r["split"]} for r in rows],
    )
    workflow = _manifest_workflow(no_val, tmp_path / "b")
    workflow.parser.parse()
    assert len(workflow.parser.get_parsed_content("train#items")) == 16
    with pytest.raises(RuntimeError) as empty:
        workflow.parser.get_parsed_content("validate#items")
    message = _error_chain(empty.value)
    assert "no rows with split 'val'" in message and "no_val.csv" in message


def test_manifest_without_test_rows_skips_the_test_evaluation(manifest_dataset: Path, tmp_path: Path, caplog):
    header, rows = _read_csv(manifest_dataset)
    from_rows = [{**r, "split": "val" if r["split"] == "test" else r["split"]} for r in rows]
    no_test = manifest_dataset.parent / "no_test.csv"
    with open(no_test, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(from_rows)
    workflow = _manifest_workflow(no_test, tmp_path / "c")
    workflow.parser.parse()
    assert workflow.parser.get_parsed_content("test#items") == []
    with caplog.at_level(logging.WARNING, logger="alr_monai"):
        workflow.parser.get_parsed_content("test#evaluate")
    assert "no 'test' rows" in caplog.text
    assert not (tmp_path / "c" / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------- resume


class DecreasingMetric(Metric):
    """A validation 'metric' of 1 - 0.1 * epoch: the best model is always epoch 1's, whatever training does."""

    def __init__(self) -> None:
        super().__init__(output_transform=lambda _output: (None, None))

    def reset(self) -> None:
        pass

    def update(self, output) -> None:
        pass

    def compute(self) -> float:
        return 0.0

    def completed(self, engine: Engine, name: str) -> None:
        engine.state.metrics[name] = 1.0 - 0.1 * engine.state.epoch


class SimulatedKill(RuntimeError):
    pass


def _resume_overrides(dataset_dir: Path) -> dict:
    return {
        "dataset_dir": str(dataset_dir),
        **TINY,
        # An epoch-seeded sampler makes the shuffle order a function of (seed, epoch) instead of the global RNG
        # history, which a restarted process cannot reproduce.
        "train#dataloader#shuffle": False,
        "train#dataloader#sampler": {
            "_target_": "DistributedSampler",
            "dataset": "@train#dataset",
            "shuffle": True,
            "even_divisible": False,
            "num_replicas": 1,
            "rank": 0,
            "seed": "@seed",
        },
        # A fixed forget rate (see test_resume_keeps_the_estimated_forget_rate for the estimated one).
        "coteaching#forget_rate": 0.5,
        "coteaching#num_gradual": 1,
        # B's first leg ends at max_epochs 2, and a run estimates by its last epoch at the latest, so B would
        # estimate at 2 where A waits: the estimate epoch is fixed here (the resume, not the rule, is under test)
        "noise_estimate#latest_epoch": None,
        "vog#num_snapshots": 2,  # VoG takes part in the selection of epoch 3
        "validate#evaluator#key_val_metric": {"val_balanced_accuracy": DecreasingMetric()},
        # the schedule and the average are restored exactly too (averaging from epoch 2, so resuming at 3 needs it)
        "stability#lr_schedule": "cosine",
        "lr_schedule_handler#total_epochs": 3,  # B's first leg runs to max_epochs 2 on the same 3-epoch schedule
        "stability#average_epochs": 1,
        "stability#average_start_epoch": 2,
    }


@pytest.fixture(scope="module")
def resume_runs(tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A: 3 epochs in one go. B: 2 epochs, then a new process-like run to 3. C: killed in epoch 3, then rerun."""
    root = tmp_path_factory.mktemp("resume")
    overrides = _resume_overrides(tiny_dataset_dir)
    runs: dict = {"dirs": {name: root / name for name in "ABC"}}

    runs["A"] = _run(_workflow([TRAIN], root / "A", max_epochs=3, **overrides))
    _run(_workflow([TRAIN], root / "B", max_epochs=2, **overrides))
    runs["B"] = _run(_workflow([TRAIN], root / "B", max_epochs=3, **overrides), before_run=_epoch_recorder)

    def kill_in_epoch_3(workflow: ConfigWorkflow) -> None:
        def kill(engine: Engine) -> None:
            if engine.state.epoch == 3 and engine.state.iteration == 2 * engine.state.epoch_length + 2:
                raise SimulatedKill("simulated kill in epoch 3")

        workflow.parser.get_parsed_content("train#trainer").add_event_handler(Events.ITERATION_COMPLETED, kill)

    with pytest.raises(RuntimeError) as killed:
        _run(_workflow([TRAIN], root / "C", max_epochs=3, **overrides), before_run=kill_in_epoch_3)
    runs["kill_message"] = _error_chain(killed.value)
    runs["C_checkpoints_after_kill"] = sorted(p.name for p in (root / "C" / "checkpoints").iterdir())
    runs["C_history_after_kill"] = [
        h["epoch"] for h in json.loads((root / "C" / "metrics.json").read_text())["history"]
    ]
    runs["C"] = _run(_workflow([TRAIN], root / "C", max_epochs=3, **overrides), before_run=_epoch_recorder)
    return runs


def _checkpoint(run_dir: Path, epoch: int = 3) -> dict:
    return torch.load(run_dir / "checkpoints" / f"checkpoint_epoch={epoch}.pt", weights_only=True)


def _assert_same_state(left, right, path: str = "") -> None:
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor), path
        assert torch.equal(left.nan_to_num(-7.0), right.nan_to_num(-7.0)), path
    elif isinstance(left, dict):
        assert set(left) == set(right), path
        for key in left:
            _assert_same_state(left[key], right[key], f"{path}/{key}")
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), path
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            _assert_same_state(a, b, f"{path}[{i}]")
    else:
        assert left == right, path


def _assert_resumed_equals_uninterrupted(runs: dict, name: str) -> None:
    a_dir, x_dir = runs["dirs"]["A"], runs["dirs"][name]
    workflow = runs[name]
    checkpointer = next(
        h for h in workflow.parser.get_parsed_content("train#handlers") if isinstance(h, RunCheckpointer)
    )
    assert checkpointer.resumed_from is not None and checkpointer.resumed_from.name == "checkpoint_epoch=2.pt"
    assert workflow.started_epochs == [3]  # continued at epoch 3, did not start over

    expected, got = _checkpoint(a_dir), _checkpoint(x_dir)
    for key in ("network", "optimizer", "selection", "vog", "noise_rate", "weight_average", "trainer"):
        _assert_same_state(expected[key], got[key], key)
    assert got["weight_average"]["started"] and got["optimizer"]["param_groups"][0]["lr"] < 1e-3  # cosine, averaged
    vog = workflow.parser.get_parsed_content("vog_tracker")
    assert [b.num_committed for b in vog.buffers] == [3, 3]
    _assert_same_state(vog.state_dict(), runs["A"].parser.get_parsed_content("vog_tracker").state_dict(), "vog")

    _, a_rows = _read_csv(a_dir / "selection.csv")
    _, x_rows = _read_csv(x_dir / "selection.csv")
    assert x_rows == a_rows
    a_summary = json.loads((a_dir / "metrics.json").read_text())
    x_summary = json.loads((x_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in x_summary["history"]] == [1, 2, 3]
    assert x_summary["history"] == a_summary["history"]
    assert (x_summary["best_val_metric"], x_summary["best_val_epoch"]) == (0.9, 1)


def test_resume_reproduces_the_uninterrupted_run(resume_runs: dict):
    a_summary = json.loads((resume_runs["dirs"]["A"] / "metrics.json").read_text())
    assert a_summary["best_val_epoch"] == 1
    # VoG was part of epoch 3's selection, so its resumed buffers mattered.
    assert a_summary["history"][-1]["train"]["forget_rate"] == pytest.approx(0.5)
    _assert_resumed_equals_uninterrupted(resume_runs, "B")


def test_killed_run_resumes_from_the_last_checkpoint_and_finishes(resume_runs: dict):
    assert "simulated kill in epoch 3" in resume_runs["kill_message"]
    assert resume_runs["C_checkpoints_after_kill"] == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]  # n_saved 2
    assert resume_runs["C_history_after_kill"] == [1, 2]
    assert resume_runs["C"].parser.get_parsed_content("train#trainer").state.epoch == 3
    # The half-done epoch 3 left nothing behind: the rerun equals the run that was never killed.
    _assert_resumed_equals_uninterrupted(resume_runs, "C")


def test_resume_keeps_the_best_model(resume_runs: dict):
    best = torch.load(resume_runs["dirs"]["A"] / "models" / "model.pt", weights_only=True)  # epoch 1 (A never resumed)
    for name in ("B", "C"):
        resumed = torch.load(resume_runs["dirs"][name] / "models" / "model.pt", weights_only=True)
        _assert_same_state(best, resumed, name)


@pytest.fixture(scope="module")
def default_resume_run(tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ConfigWorkflow]:
    """train.json as shipped (shuffled loader, forget rate estimated from the data): 2 epochs, then resumed to 3."""
    output_dir = tmp_path_factory.mktemp("default_resume")
    # estimated at epoch 1 exactly (not once the network has learned, the default), so the resume of an
    # estimated forget rate is what the tests below compare
    overrides = {
        "coteaching#num_gradual": 1,
        "noise_estimate#estimate_epoch": 1,
        "noise_estimate#latest_epoch": None,
        "vog#num_snapshots": 2,
    }
    _train(output_dir, tiny_dataset_dir, max_epochs=2, **overrides)
    workflow = _run(
        _workflow([TRAIN], output_dir, dataset_dir=str(tiny_dataset_dir), max_epochs=3, **TINY, **overrides),
        before_run=_epoch_recorder,
    )
    return output_dir, workflow


def test_default_config_resume_continues_from_epoch_3(default_resume_run):
    # The shipped config is reproducible too (epoch-seeded sampler); this checks the continuation itself (exact
    # equality with the uninterrupted run: test_resume_reproduces_the_uninterrupted_run).
    output_dir, workflow = default_resume_run
    assert workflow.started_epochs == [3]
    vog = workflow.parser.get_parsed_content("vog_tracker")
    assert [b.num_committed for b in vog.buffers] == [3, 3]
    # VoG needs two snapshots; after one epoch in this process it is finite only because epoch 2's snapshot,
    # taken before the interruption, came back from the checkpoint.
    assert all(bool(torch.isfinite(b.scores()).all()) for b in vog.buffers)
    assert workflow.parser.get_parsed_content("selection_tracker").completed_epoch == 3
    summary = json.loads((output_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["last"]["train"]["noise_rate_estimate"] == summary["history"][0]["train"]["noise_rate_estimate"]


def test_resume_keeps_the_estimated_forget_rate(default_resume_run):
    output_dir, _ = default_resume_run
    history = json.loads((output_dir / "metrics.json").read_text())["history"]
    estimate = history[0]["train"]["noise_rate_estimate"]
    assert 0.0 < estimate < 0.9
    assert history[1]["train"]["forget_rate"] == pytest.approx(estimate)  # before the interruption
    assert history[2]["train"]["forget_rate"] == pytest.approx(estimate)  # after it
    assert history[2]["train"]["kept_fraction"] < 1.0


def test_default_cuts_each_given_class_at_its_own_rate_and_keeps_it_over_a_resume(default_resume_run):
    output_dir, workflow = default_resume_run
    trainer = workflow.parser.get_parsed_content("train#trainer")
    estimator = workflow.parser.get_parsed_content("noise_rate_estimator")
    assert trainer.selection_policy.per_class
    # restored from the checkpoint in the resumed process: the per-class estimates are the per-class rates
    assert trainer.class_forget_rates is not None
    assert trainer.class_forget_rates.tolist() == pytest.approx([min(r, 0.9) for r in estimator.class_estimates])
    last = json.loads((output_dir / "metrics.json").read_text())["last"]["train"]
    names = workflow.parser.get_parsed_content("class_names")
    assert [last[f"forget_rate/{name}"] for name in names] == pytest.approx(trainer.class_forget_rates.tolist())
    # the trusted set is each class's lowest-loss share at its rate (class_cut), from the whole epoch
    _, rows = _read_csv(output_dir / "selection.csv")
    for cls, name in enumerate(names):
        members = [r for r in rows if int(r["given_label"]) == cls]
        kept = sum(int(r["trusted"]) for r in members)
        assert kept == round(len(members) * (1 - last[f"forget_rate/{name}"])), name
