"""Batched training augmentation as an Ignite handler (the default ``augment_on: "batch"`` of the bundle)."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from alr_monai.data.augment import augment_batch, keyed_uniforms

__all__ = ["BatchAugmentHandler"]


class BatchAugmentHandler:
    """Replaces ``engine.state.batch["image"]`` by the augmented batch, moved to the engine's device.

    Runs on ``GET_BATCH_COMPLETED``, before the iteration, so the trainer (and every handler) sees the augmented
    images; see :mod:`alr_monai.data.augment` for the distribution. Each sample's choice is keyed on (seed,
    epoch, its ``index`` in the training set), so a resumed run, a reshuffled batch or another number of
    processes augments a sample exactly alike; a batch without ``index`` is keyed on (epoch, iteration,
    position) instead, which is resume-exact too.

    Args:
        enabled: False attaches nothing (augmentation off, or done per sample by the dataset).
        spatial_dims: 2 or 3.
        rotate90: 2D only: also flip the other axis and turn by 90-degree steps (square images only).
        max_shift: edge-filled random shift of up to this many pixels per spatial axis.
        flip_axis: the spatial axis of the plain flip (-1: last, MedMNIST width; 0: a MONAI-loaded image's x).
        seed: base seed.
        image_size: the spatial shape if known, to refuse rotate90 on non-square images at construction.
        device: where to augment when the engine has no ``state.device`` (MONAI engines have one).
        key: the image key of the batch.
        index_key: the per-sample key of the batch.
    """

    def __init__(
        self,
        enabled: bool = True,
        spatial_dims: int = 2,
        rotate90: bool = False,
        max_shift: int = 0,
        flip_axis: int = -1,
        seed: int = 0,
        image_size: tuple[int, ...] | list[int] | None = None,
        device: str | torch.device | None = None,
        key: str = "image",
        index_key: str = "index",
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if int(max_shift) < 0:
            raise ValueError(f"augment_shift must be >= 0, got {max_shift}")
        if enabled and rotate90 and spatial_dims == 2 and image_size is not None and len(set(image_size)) != 1:
            raise ValueError(
                f"augment_rotate90 needs square images, got image size {list(image_size)}: "
                "set augment_rotate90 to false or make the image size square"
            )
        self.enabled = bool(enabled)
        self.spatial_dims = int(spatial_dims)
        self.rotate90 = bool(rotate90) and self.spatial_dims == 2
        self.max_shift = int(max_shift)
        self.flip_axis = int(flip_axis)
        self.seed = int(seed)
        self.device = None if device is None else torch.device(device)
        self.key = key
        self.index_key = index_key

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.GET_BATCH_COMPLETED, self)

    def uniforms(self, engine: Engine, batch_size: int) -> torch.Tensor:
        """This batch's (B, NUM_DRAWS) uniforms, keyed as the class docstring says."""
        batch = engine.state.batch
        indices = batch.get(self.index_key) if isinstance(batch, dict) else None
        epoch = engine.state.epoch
        if indices is not None:
            return keyed_uniforms(torch.as_tensor(indices), self.seed, epoch)
        # No sample index: key on the iteration instead (1-based within the run, restored by a resume).
        first = (engine.state.iteration - 1) * batch_size
        return keyed_uniforms(torch.arange(first, first + batch_size), self.seed, epoch)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        images = torch.as_tensor(batch[self.key])
        device = getattr(engine.state, "device", None) or self.device
        if device is not None:
            images = images.to(device, non_blocking=True)
        # A new dict: the loader's own batch object is left as it was (a list of batches may be iterated again).
        engine.state.batch = {
            **batch,
            self.key: augment_batch(
                images,
                flip=True,
                rotate90=self.rotate90,
                max_shift=self.max_shift,
                flip_axis=self.flip_axis,
                uniforms=self.uniforms(engine, images.shape[0]),
            ),
        }
