"""Tests for batched augmentation (alr_monai.data.augment) and its handler in the bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow

from alr_monai.data.augment import (
    NUM_DRAWS,
    AugmentChoices,
    apply_choices,
    augment_batch,
    augment_mode,
    choose,
    keyed_uniforms,
)
from alr_monai.handlers import BatchAugmentHandler

TRAIN = Path(__file__).resolve().parents[1] / "bundles" / "alr_classification" / "configs" / "train.json"


def _images(batch: int = 8, size: int = 6, channels: int = 2) -> torch.Tensor:
    # Distinct values everywhere, so any transposition, flip or shift is visible.
    return torch.arange(batch * channels * size * size, dtype=torch.float32).reshape(batch, channels, size, size)


def _choices(batch: int, flip=None, flip_other=None, k=None, shifts=None, spatial_dims: int = 2) -> AugmentChoices:
    no = torch.zeros(batch, dtype=torch.bool)
    return AugmentChoices(
        flip=no if flip is None else torch.tensor(flip),
        flip_other=no if flip_other is None else torch.tensor(flip_other),
        k=torch.zeros(batch, dtype=torch.long) if k is None else torch.tensor(k),
        shifts=torch.zeros(batch, spatial_dims, dtype=torch.long) if shifts is None else torch.tensor(shifts),
    )


def test_choices_apply_exactly_flip_and_rot90():
    images = _images(batch=4)
    choices = _choices(4, flip=[True, False, True, False], flip_other=[False, True, True, False], k=[0, 1, 2, 3])
    out = apply_choices(images, choices)
    assert torch.equal(out[0], images[0].flip(-1))
    assert torch.equal(out[1], torch.rot90(images[1].flip(-2), 1, dims=(-2, -1)))
    assert torch.equal(out[2], torch.rot90(images[2].flip(-1).flip(-2), 2, dims=(-2, -1)))
    assert torch.equal(out[3], torch.rot90(images[3], 3, dims=(-2, -1)))
    # flip_axis 0: the first spatial axis (a MONAI-loaded image's x)
    out = apply_choices(images, _choices(4, flip=[True, True, False, False]), flip_axis=0)
    assert torch.equal(out[:2], images[:2].flip(-2)) and torch.equal(out[2:], images[2:])


def test_shift_is_an_edge_filled_pad_and_crop():
    images = _images(batch=2, size=5)
    out = apply_choices(images, _choices(2, shifts=[[1, -2], [0, 0]]))
    padded = torch.nn.functional.pad(images[:1], [2, 2, 2, 2], mode="replicate")
    # shift +1 down the rows and -2 along the columns = the window starting at (2 - 1, 2 + 2) of the padded image
    assert torch.equal(out[0], padded[0, :, 1:6, 4:9])
    assert torch.equal(out[1], images[1])


def test_3d_volumes_flip_the_last_axis_only_and_shift():
    volumes = torch.arange(2 * 1 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 1, 3, 4, 5)
    uniforms = torch.zeros(2, NUM_DRAWS)  # every draw below its threshold: flip, flip_other, rotate
    choices = choose(uniforms, spatial_dims=3, rotate90=True)
    assert not choices.flip_other.any() and not choices.k.any()
    assert torch.equal(apply_choices(volumes, choices), volumes.flip(-1))
    shifted = augment_batch(volumes, torch.Generator().manual_seed(0), max_shift=1)
    assert shifted.shape == volumes.shape


def test_identity_when_augmentation_is_off():
    images = _images()
    out = augment_batch(images, torch.Generator().manual_seed(0), flip=False, rotate90=False, max_shift=0)
    assert torch.equal(out, images)


def test_reproducible_for_the_same_seed_epoch_and_sample():
    images = _images(batch=16)
    index = torch.arange(100, 116)
    first = augment_batch(images, uniforms=keyed_uniforms(index, 3, 2), rotate90=True, max_shift=1)
    again = augment_batch(images, uniforms=keyed_uniforms(index, 3, 2), rotate90=True, max_shift=1)
    assert torch.equal(first, again)
    # A sample's augmentation does not depend on its batch: the reversed batch gives the reversed result.
    reversed_ = augment_batch(images.flip(0), uniforms=keyed_uniforms(index.flip(0), 3, 2), rotate90=True, max_shift=1)
    assert torch.equal(reversed_, first.flip(0))
    other_epoch = augment_batch(images, uniforms=keyed_uniforms(index, 3, 3), rotate90=True, max_shift=1)
    other_seed = augment_batch(images, uniforms=keyed_uniforms(index, 4, 2), rotate90=True, max_shift=1)
    assert not torch.equal(first, other_epoch) and not torch.equal(first, other_seed)
    generated = [augment_batch(images, torch.Generator().manual_seed(7), rotate90=True) for _ in range(2)]
    assert torch.equal(*generated)


def test_choice_distribution_matches_the_per_sample_chain():
    n = 40_000
    choices = choose(keyed_uniforms(torch.arange(n), 0, 1), rotate90=True, max_shift=2)
    assert abs(choices.flip.float().mean().item() - 0.5) < 0.01
    assert abs(choices.flip_other.float().mean().item() - 0.5) < 0.01
    k_share = torch.bincount(choices.k, minlength=4).float() / n
    assert abs(k_share[0].item() - 0.25) < 0.01
    assert all(abs(k_share[q].item() - 0.25) < 0.01 for q in (1, 2, 3))  # 0.75 / 3 each
    shift_share = torch.bincount(choices.shifts.flatten() + 2, minlength=5).float() / (2 * n)
    assert torch.allclose(shift_share, torch.full((5,), 0.2), atol=0.01)
    # independent draws: flip and flip_other are not correlated
    both = (choices.flip & choices.flip_other).float().mean().item()
    assert abs(both - 0.25) < 0.01
    # the generator path has the same distribution
    drawn = choose(torch.rand((n, NUM_DRAWS), generator=torch.Generator().manual_seed(0)), rotate90=True)
    assert abs(drawn.flip.float().mean().item() - 0.5) < 0.01


def test_rotate90_refuses_non_square_images():
    with pytest.raises(ValueError, match="square"):
        augment_batch(torch.zeros(2, 1, 4, 6), torch.Generator(), rotate90=True)
    with pytest.raises(ValueError, match="augment_rotate90"):
        BatchAugmentHandler(rotate90=True, image_size=[64, 48])
    BatchAugmentHandler(rotate90=True, spatial_dims=3, image_size=[4, 5, 6])  # volumes never rotate


def test_augment_mode_names_the_key():
    assert augment_mode(True, "batch") == "batch" and augment_mode(False, "sample") == "off"
    with pytest.raises(ValueError, match="augment_on"):
        augment_mode(True, "btach")


def test_handler_replaces_the_batch_images_on_get_batch_completed():
    images = _images(batch=4)
    seen = []

    def step(engine: Engine, batch: dict) -> None:
        seen.append(batch["image"].clone())

    engine = Engine(step)
    BatchAugmentHandler(rotate90=True, seed=5, device="cpu").attach(engine)
    data = [{"image": images.clone(), "index": torch.arange(4)}]
    engine.run(data, max_epochs=2)
    expected = [augment_batch(images, uniforms=keyed_uniforms(torch.arange(4), 5, e), rotate90=True) for e in (1, 2)]
    assert torch.equal(seen[0], expected[0]) and torch.equal(seen[1], expected[1])
    # disabled: attaches nothing
    disabled = Engine(step)
    BatchAugmentHandler(enabled=False).attach(disabled)
    assert not disabled.has_event_handler(BatchAugmentHandler, Events.GET_BATCH_COMPLETED)


@pytest.mark.parametrize("augment_on", ["batch", "sample"])
def test_bundle_runs_with_batch_and_sample_augmentation(augment_on: str, tmp_path: Path, write_tiny_bloodmnist) -> None:
    (tmp_path / "data").mkdir()
    dataset_dir = write_tiny_bloodmnist(tmp_path / "data", {"train": 6, "val": 2, "test": 2})
    workflow = ConfigWorkflow(
        config_file=str(TRAIN),
        workflow_type="train",
        logging_file=False,
        output_dir=str(tmp_path / "run"),
        dataset_dir=str(dataset_dir),
        max_epochs=1,
        batch_size=16,
        augment_on=augment_on,
        augment_shift=1,
        **{"network_factory#block_inplanes": [4, 4, 4, 4]},
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    handler = workflow.parser.get_parsed_content("batch_augment")
    preprocessing = workflow.parser.get_parsed_content("train#preprocessing")
    random_transforms = [t for t in preprocessing.transforms if "Rand" in type(t).__name__]
    images = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: images.append(e.state.batch["image"]))
    try:
        workflow.run()
    finally:
        workflow.finalize()
    assert trainer.state.epoch == 1 and images
    if augment_on == "batch":
        assert handler.enabled and not random_transforms  # the cached preprocessing is deterministic
    else:
        assert not handler.enabled and random_transforms
    assert (tmp_path / "run" / "selection.csv").is_file()
