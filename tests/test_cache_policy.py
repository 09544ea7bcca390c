"""Tests for the cache policy (alr_monai.data.datasets.build_dataset, bundle key ``cache``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset

from alr_monai.data.datasets import build_dataset, pin_memory_for
from alr_monai.data.transforms import build_array_transforms


def _items(count: int = 6) -> list[dict]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 10, 10, 3), dtype=np.uint8)
    return [{"image": images[i], "label": np.array([i % 3]), "index": i, "id": f"s{i}"} for i in range(count)]


def test_the_three_policies_give_identical_items(tmp_path: Path):
    transform = build_array_transforms(3, spatial_size=(8, 8))
    datasets = {
        "memory": build_dataset(_items(), transform, "memory"),
        "memory, half": build_dataset(_items(), transform, "memory", cache_rate=0.5),
        "disk": build_dataset(_items(), transform, "disk", cache_dir=tmp_path / "cache"),
        "none": build_dataset(_items(), transform, "none"),
        "null (`--cache none` on the command line)": build_dataset(_items(), transform, None),
    }
    assert isinstance(datasets["memory"], CacheDataset)
    assert isinstance(datasets["disk"], PersistentDataset) and isinstance(datasets["none"], Dataset)
    reference = [datasets["none"][i] for i in range(6)]
    for name, dataset in datasets.items():
        for _ in range(2):  # the disk cache's second read comes from its files
            for i, expected in enumerate(reference):
                item = dataset[i]
                assert torch.equal(item["image"], expected["image"]), name
                assert item["image"].dtype == torch.float32, name
                assert (item["label"], item["index"], item["id"]) == (expected["label"], i, f"s{i}"), name
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 6


def test_the_disk_cache_keys_on_the_transforms(tmp_path: Path):
    # Two chains over the same items in one folder (the training and evaluation chains) never share files.
    build_dataset(_items(), build_array_transforms(3, spatial_size=(8, 8)), "disk", cache_dir=tmp_path)[0]
    other = build_dataset(_items(), build_array_transforms(1, spatial_size=(6, 6)), "disk", cache_dir=tmp_path)
    assert other[0]["image"].shape == (1, 6, 6)
    assert len(list(tmp_path.glob("*.pt"))) == 2


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"cache": "ram"}, "cache must be one of memory, disk, none, got 'ram'"),
        ({"cache": "memory", "cache_rate": 1.5}, "cache_rate must be in [0, 1]"),
        ({"cache": "disk"}, "cache 'disk' needs cache_dir"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict, words: str):
    with pytest.raises(ValueError) as error:
        build_dataset(_items(), build_array_transforms(3), **kwargs)
    assert words in str(error.value)


def test_pin_memory_only_on_cuda():
    assert pin_memory_for(True, "cpu") is False
    assert pin_memory_for(False, "cuda:0") is False
    assert pin_memory_for(True, torch.device("cuda:0")) is torch.cuda.is_available()


def test_a_bundle_run_is_the_same_with_every_cache_policy(tmp_path: Path, write_tiny_bloodmnist):
    from monai.bundle import ConfigWorkflow

    train = Path(__file__).resolve().parents[1] / "bundles" / "alr_classification" / "configs" / "train.json"
    (tmp_path / "data").mkdir()
    dataset_dir = write_tiny_bloodmnist(tmp_path / "data", {"train": 4, "val": 2, "test": 2})
    selections = {}
    for cache in ("memory", "disk", "none"):
        output_dir = tmp_path / cache
        workflow = ConfigWorkflow(
            config_file=str(train),
            workflow_type="train",
            logging_file=False,
            output_dir=str(output_dir),
            dataset_dir=str(dataset_dir),
            max_epochs=1,
            batch_size=16,
            cache=cache,
            **{"network_factory#block_inplanes": [4, 4, 4, 4]},
        )
        workflow.initialize()
        try:
            workflow.run()
        finally:
            workflow.finalize()
        selections[cache] = (output_dir / "selection.csv").read_text()
    assert selections["disk"] == selections["memory"] == selections["none"]
    assert any((tmp_path / "disk" / "cache").glob("*.pt")) and not (tmp_path / "memory" / "cache").exists()


def test_the_bundle_fills_the_memory_cache_with_num_workers_threads():
    """The one-off cache fill decodes every image; with num_workers set it uses that many threads, not one."""
    from monai.bundle import ConfigParser

    from alr_monai.workflow import bundle_file

    parser = ConfigParser()
    parser.read_config([bundle_file("train.json"), bundle_file("relabel.json")])
    parser["num_workers"] = 3
    for key in ("train#dataset", "validate#dataset", "relabel#scoring_dataset"):
        assert parser[key]["num_workers"] == "@num_workers", key
    items = _items(4)
    dataset = build_dataset(items, build_array_transforms(3), "memory", num_workers=3)
    assert dataset.num_workers == 3
    assert torch.equal(dataset[2]["image"], build_dataset(items, build_array_transforms(3), "none")[2]["image"])
