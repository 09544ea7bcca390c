"""Experiment tracking: MONAI's ``--tracking mlflow`` and ``alr train --tracking mlflow`` against a real local MLflow
store (sqlite, MONAI's default; MLflow 3.13+ refuses file stores), the logged training loss read back from the store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigWorkflow
from monai.handlers import MLFlowHandler, StatsHandler, from_engine

from alr_monai import cli
from alr_monai.engines.coteaching import _scalar_loss_transform

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundles" / "alr_classification" / "configs" / "train.json"
TINY = {"batch_size": 32, "network_factory#block_inplanes": [4, 8, 8, 8]}


@pytest.fixture(scope="module")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory, write_tiny_bloodmnist) -> Path:
    return write_tiny_bloodmnist(tmp_path_factory.mktemp("tiny_bloodmnist"), {"train": 8, "val": 2, "test": 2})


def _logged(tracking_uri: str, key: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    values = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            values += [m.value for m in client.get_metric_history(run.info.run_id, key)]
    return values


def test_loss_loggers_read_the_trainers_one_dict_output():
    """MONAI's default trainer transform, from_engine(['loss'], first=True), gives a 1-tuple for one dict."""
    output = {"loss": 0.25, "pred": torch.zeros(2, 3)}
    # not constructed: MLFlowHandler() opens MLflow's default store (mlruns.db in the working folder)
    handler = MLFlowHandler.__new__(MLFlowHandler)
    handler.output_transform = from_engine(["loss"], first=True)
    assert handler.output_transform(output) == (0.25,)  # what made float() fail at the first iteration
    _scalar_loss_transform(handler)
    assert handler.output_transform(output) == 0.25
    stats = StatsHandler(output_transform=from_engine(["loss"], first=True))
    _scalar_loss_transform(stats)
    assert stats.output_transform(output) == 0.25
    # a decollated list of dicts is passed through as before
    assert stats.output_transform([{"loss": 0.5}, {"loss": 0.5}]) == 0.5
    # other handlers are left alone
    other = Engine(lambda engine, batch: None)
    _scalar_loss_transform(other)
    assert not hasattr(other, "output_transform")


def test_monai_bundle_tracking_mlflow_logs_the_training_loss(tiny_dataset_dir: Path, tmp_path: Path):
    """``python -m monai.bundle run --config_file train.json --tracking mlflow`` (its default settings)."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    workflow = ConfigWorkflow(
        config_file=str(TRAIN),
        workflow_type="train",
        logging_file=False,
        tracking="mlflow",
        output_dir=str(tmp_path / "run"),
        dataset_dir=str(tiny_dataset_dir),
        max_epochs=2,
        tracking_uri=uri,
        **TINY,
    )
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    losses = _logged(uri, "train_loss")
    iterations = 2 * math.ceil(64 / 32)  # 8 classes x 8 images, batch 32, 2 epochs
    assert len(losses) == iterations and all(math.isfinite(v) and v > 0 for v in losses), losses
    assert len(_logged(uri, "val_balanced_accuracy")) == 2


def test_alr_train_tracking_mlflow_writes_to_the_given_store(tiny_dataset_dir: Path, tmp_path: Path, capsys):
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({**TINY, "max_epochs": 1}))
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    argv = ["train", "--output_dir", str(tmp_path / "run"), "--preset", str(preset), "--device", "cpu"]
    argv += ["--dataset_dir", str(tiny_dataset_dir), "--tracking", "mlflow", "--tracking_uri", uri]
    argv += ["--experiment_name", "hospital_pilot"]
    try:
        cli.main(argv)
    except SystemExit as exit_:
        assert not exit_.code, capsys.readouterr().err
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_experiment_by_name("hospital_pilot") is not None
    losses = _logged(uri, "train_loss")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--tracking_uri", "sqlite:///x.db"], "--tracking_uri needs --tracking mlflow"),
        (["train", "--tracking", "wandb"], "choose one of: mlflow"),
    ],
)
def test_tracking_options_are_checked(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--output_dir", str(tmp_path / "run")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
