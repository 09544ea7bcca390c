"""MedMNIST-3D ``.npz`` files read as single-channel volumes with a 3D network, and ``alr relabel`` (simulation)
on a run without truth refused with a pointer to ``alr query`` (issue 12, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from alr_monai import cli
from alr_monai.data.medmnist import image_layout, load_medmnist
from alr_monai.data.transforms import build_array_transforms
from alr_monai.workflow import bundle_file

SIDE = 28  # MedMNIST-3D volumes are 28 (or 64) voxels on a side


def _write_npz(path: Path, shape_of: tuple[int, ...], per_split: dict[str, int], classes: int = 2) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in per_split.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, *shape_of), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % classes).reshape(n, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((10, 28, 28), (2, 1)),
        ((10, 28, 28, 3), (2, 3)),
        ((10, 28, 28, 1), (2, 1)),
        ((10, 28, 28, 28), (3, 1)),
        ((10, 64, 64, 64), (3, 1)),
        ((10, 16, 20, 12), (3, 1)),
        ((10, 28, 28, 28, 3), (3, 3)),
        ((10, 28), None),
        ((10, 28, 28, 28, 7), None),
    ],
)
def test_image_layout(shape, layout):
    assert image_layout(shape) == layout


def test_3d_npz_reads_as_one_channel_volumes(tmp_path):
    path = _write_npz(tmp_path / "organmnist3d.npz", (SIDE, SIDE, SIDE), {"train": 6, "val": 2, "test": 2})
    data = load_medmnist(path)
    assert (data.spatial_dims, data.in_channels, data.num_classes) == (3, 1, 2)  # not 28 channels

    chain = build_array_transforms(data.in_channels, spatial_dims=data.spatial_dims)
    item = chain(data["train"].items()[0])
    assert item["image"].shape == (1, SIDE, SIDE, SIDE)
    raw = torch.as_tensor(data["train"].images[0], dtype=torch.float32) / 255
    assert torch.equal(item["image"][0], raw)


def test_2d_npz_keeps_its_layout(tmp_path):
    rgb = load_medmnist(_write_npz(tmp_path / "rgb.npz", (SIDE, SIDE, 3), {"train": 4, "val": 2, "test": 2}))
    assert (rgb.spatial_dims, rgb.in_channels) == (2, 3)
    gray = load_medmnist(_write_npz(tmp_path / "gray.npz", (SIDE, SIDE), {"train": 4, "val": 2, "test": 2}))
    assert (gray.spatial_dims, gray.in_channels) == (2, 1)


def test_splits_with_different_layouts_are_refused(tmp_path):
    path = tmp_path / "mixed.npz"
    rng = np.random.default_rng(0)
    arrays = {}
    for split, shape in (("train", (4, SIDE, SIDE, SIDE)), ("val", (2, SIDE, SIDE)), ("test", (2, SIDE, SIDE))):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = np.zeros((shape[0], 1), dtype=np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="differ in layout"):
        load_medmnist(path)


def test_bundle_trains_a_3d_network_on_a_3d_npz(tmp_path):
    path = _write_npz(tmp_path / "nodulemnist3d.npz", (SIDE, SIDE, SIDE), {"train": 8, "val": 4, "test": 4})
    output_dir = tmp_path / "run"
    workflow = ConfigWorkflow(
        config_file=[str(bundle_file("train.json"))],
        workflow_type="train",
        logging_file=False,
        output_dir=str(output_dir),
        dataset_path=str(path),
        max_epochs=1,
        batch_size=8,
        **{"network_factory#block_inplanes": [2, 2, 2, 2], "augment_shift": 1},
    )
    workflow.initialize()
    try:
        network = workflow.parser.get_parsed_content("network")
        assert isinstance(network.peers[0].conv1, torch.nn.Conv3d)
        assert network.peers[0].conv1.in_channels == 1
        batch = next(iter(workflow.parser.get_parsed_content("train#dataloader")))
        assert batch["image"].shape == (8, 1, SIDE, SIDE, SIDE)
        workflow.run()
    finally:
        workflow.finalize()
    summary = json.loads((output_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1]
    assert (output_dir / "selection.csv").read_text().count("\n") == 8 + 1


def _manifest_run_config(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    config = {
        "config_files": [str(bundle_file("train.json")), str(bundle_file("train_manifest.json"))],
        "overrides": {"output_dir": str(run_dir), "manifest_path": str(run_dir / "m.csv")},
    }
    (run_dir / "run_config.json").write_text(json.dumps(config))


def test_relabel_simulation_without_truth_points_to_query(tmp_path):
    run_dir = tmp_path / "manifest_run"
    _manifest_run_config(run_dir)
    with pytest.raises(cli.UsageError) as excinfo:
        cli.relabel(str(run_dir))
    message = str(excinfo.value)
    assert "needs injected noise" in message and f"alr query --run_dir {run_dir}" in message
    assert not (run_dir / "relabel").exists()


def test_relabel_simulation_without_truth_exits_2_on_the_command_line(tmp_path, capsys):
    run_dir = tmp_path / "manifest_run"
    _manifest_run_config(run_dir)
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["relabel", "--run_dir", str(run_dir)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "needs injected noise" in err and "alr query" in err and "TypeError" not in err


def test_simulation_runs_have_truth(tmp_path):
    def has_truth(config: dict) -> bool:  # the check `alr relabel --mode simulation` makes
        return cli._configured_value(config, "simulation") is not None

    assert has_truth({"config_files": [str(bundle_file("train.json"))], "overrides": {}})
    manifest = {"config_files": [str(bundle_file("train.json")), str(bundle_file("train_manifest.json"))]}
    assert not has_truth({**manifest, "overrides": {}})
    assert not has_truth({"config_files": [str(bundle_file("train.json"))], "overrides": {"simulation": None}})
