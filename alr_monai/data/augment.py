"""Batched training augmentation on tensors: one call augments a whole batch, on whatever device it lives.

The per-sample MONAI chain (``RandFlipd``, ``RandRotate90d``, ``RandShiftd`` in
:func:`alr_monai.data.transforms.build_array_transforms`) costs about twice a training epoch on the embedded set
when run in the main process; here the same distribution is drawn per sample and applied to the batch at once:

* flip of ``flip_axis`` (default the last spatial axis, the image width) with probability 0.5;
* with ``rotate90`` (2D, square images): flip of the other axis with probability 0.5, then a rotation by
  k x 90 degrees with probability 0.75, k uniform in {1, 2, 3};
* with ``max_shift`` > 0: a shift of -max_shift..max_shift pixels on every spatial axis, filled with edge values.

Random choices come from a ``(B, NUM_DRAWS)`` tensor of uniforms: drawn from a ``torch.Generator``
(:func:`augment_batch`), or computed from each sample's key (:func:`keyed_uniforms`), so a sample's augmentation
depends only on (seed, epoch, sample index): the same after a resume, in any batch and on any number of processes.
Nothing here knows of Ignite (:class:`alr_monai.handlers.BatchAugmentHandler` is the adapter).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "AUGMENT_ON",
    "NUM_DRAWS",
    "AugmentChoices",
    "apply_choices",
    "augment_batch",
    "augment_mode",
    "choose",
    "keyed_uniforms",
]

AUGMENT_ON = ("batch", "sample")
# Columns of the uniforms: flip, other flip, rotate?, k, then one shift per spatial axis (up to 3).
NUM_DRAWS = 7
_MASK32 = 0xFFFFFFFF


def augment_mode(augment: bool, augment_on: str) -> str:
    """Where training augmentation runs: ``"batch"``, ``"sample"`` or ``"off"``.

    Args:
        augment: the ``augment`` key.
        augment_on: the ``augment_on`` key, ``"batch"`` (tensors, on the device) or ``"sample"`` (MONAI chain).

    Raises:
        ValueError: naming the key when ``augment_on`` is another value.
    """
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {', '.join(AUGMENT_ON)}, got {augment_on!r}")
    return augment_on if augment else "off"


class AugmentChoices(NamedTuple):
    """Per-sample choices for a batch of B images.

    Attributes:
        flip: (B,) bool, flip ``flip_axis``.
        flip_other: (B,) bool, flip the other axis (2D with rotate90 only).
        k: (B,) int64 in 0..3, quarter turns.
        shifts: (B, spatial_dims) int64 in [-max_shift, max_shift].
    """

    flip: torch.Tensor
    flip_other: torch.Tensor
    k: torch.Tensor
    shifts: torch.Tensor


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    # x * constant mod 2**32 in 16-bit halves, so no int64 product overflows.
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    # Chris Wellons' "lowbias32" integer hash: every input bit flips each output bit with probability ~0.5.
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_uniforms(keys: torch.Tensor, seed: int, epoch: int, num_draws: int = NUM_DRAWS) -> torch.Tensor:
    """Uniform numbers in [0, 1) that depend only on (seed, epoch, key, column).

    Args:
        keys: (B,) integer keys, e.g. each sample's index in the training set.
        seed: base seed.
        epoch: the epoch (1-based as Ignite counts; any int works).
        num_draws: columns.

    Returns:
        (B, num_draws) float32 on ``keys``' device, multiples of 2**-24.
    """
    keys = torch.as_tensor(keys).long().reshape(-1)
    base = _hash32(_hash32(torch.tensor(int(seed) & _MASK32)) ^ (int(epoch) & _MASK32))
    state = _hash32(base.to(keys.device) ^ _hash32(keys))
    columns = _hash32(torch.arange(1, num_draws + 1, device=keys.device))
    bits = _hash32(state[:, None] ^ columns[None, :])
    return (bits >> 8).to(torch.float32) / float(1 << 24)


def choose(
    uniforms: torch.Tensor, spatial_dims: int = 2, flip: bool = True, rotate90: bool = False, max_shift: int = 0
) -> AugmentChoices:
    """Turns a (B, NUM_DRAWS) tensor of uniforms into per-sample choices (see the module docstring)."""
    if uniforms.ndim != 2 or uniforms.shape[1] < NUM_DRAWS:
        raise ValueError(f"uniforms must be (batch, >= {NUM_DRAWS}), got {tuple(uniforms.shape)}")
    batch = uniforms.shape[0]
    no = torch.zeros(batch, dtype=torch.bool, device=uniforms.device)
    turn = rotate90 and spatial_dims == 2
    k = torch.where(uniforms[:, 2] < 0.75, 1 + (uniforms[:, 3] * 3).long().clamp(max=2), 0) if turn else no.long()
    shifts = (uniforms[:, 4 : 4 + spatial_dims] * (2 * max_shift + 1)).long().clamp(max=2 * max_shift) - max_shift
    return AugmentChoices(
        flip=uniforms[:, 0] < 0.5 if flip else no,
        flip_other=uniforms[:, 1] < 0.5 if turn else no,
        k=k,
        shifts=shifts if max_shift > 0 else torch.zeros_like(shifts),
    )


def _select(mask: torch.Tensor, changed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (images.ndim - 1))), changed, images)


def _shift(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    # Output pixel i reads input pixel clamp(i - shift): a shift with edge fill, the same as MONAI-style
    # "pad by max_shift with edge values and crop back at a random place".
    out = images
    spatial_dims = shifts.shape[1]
    for axis in range(spatial_dims):
        dim = images.ndim - spatial_dims + axis
        size = images.shape[dim]
        index = (torch.arange(size, device=images.device)[None, :] - shifts[:, axis : axis + 1]).clamp(0, size - 1)
        shape = [images.shape[0]] + [1] * (images.ndim - 1)
        shape[dim] = size
        out = out.gather(dim, index.view(shape).expand(*out.shape[:dim], size, *out.shape[dim + 1 :]))
    return out


def apply_choices(images: torch.Tensor, choices: AugmentChoices, flip_axis: int = -1) -> torch.Tensor:
    """Applies per-sample choices to a (B, C, *spatial) batch: flip, other flip, quarter turns, shift, in that
    order (the order of the per-sample chain). Flips and turns only move pixels, so values are exact.

    Args:
        images: the batch, on any device.
        choices: from :func:`choose`, for ``spatial_dims = images.ndim - 2``.
        flip_axis: the spatial axis the plain flip mirrors (-1: the last, the width of a MedMNIST image; 0: the
            first, a MONAI-loaded image's x axis, left-right).
    """
    spatial_dims = images.ndim - 2
    device = images.device
    axis = flip_axis % spatial_dims
    dim = 2 + axis
    out = images
    if bool(choices.flip.any()):
        out = _select(choices.flip.to(device), out.flip(dim), out)
    if bool(choices.flip_other.any()):
        other = 2 + (1 - axis)  # flip_other exists only in 2D
        out = _select(choices.flip_other.to(device), out.flip(other), out)
    k = choices.k.to(device)
    if bool((k > 0).any()):
        if out.shape[-1] != out.shape[-2]:
            raise ValueError(f"90-degree rotations need square images, got {tuple(out.shape[-2:])}")
        turned = out
        for quarter in (1, 2, 3):
            if bool((k == quarter).any()):
                turned = _select(k == quarter, torch.rot90(out, quarter, dims=(-2, -1)), turned)
        out = turned
    if bool(choices.shifts.any()):
        out = _shift(out, choices.shifts.to(device))
    return out


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    flip: bool = True,
    rotate90: bool = False,
    max_shift: int = 0,
    flip_axis: int = -1,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Augments a (B, C, *spatial) batch with an independent random choice per sample.

    Args:
        images: the batch (2D or 3D), on any device; the result stays there.
        generator: CPU generator the choices are drawn from (ignored when ``uniforms`` is given).
        flip: flip ``flip_axis`` with probability 0.5.
        rotate90: 2D only (ignored for volumes): flip the other axis with probability 0.5 and turn by k x 90
            degrees with probability 0.75, k uniform in {1, 2, 3}. Needs square images.
        max_shift: shift every spatial axis by up to this many pixels, edge-filled (0: no shift).
        flip_axis: the spatial axis of the plain flip (see :func:`apply_choices`).
        uniforms: (B, NUM_DRAWS) uniforms to use instead of drawing, e.g. :func:`keyed_uniforms`.

    Raises:
        ValueError: rotate90 on non-square 2D images, or a bad shape.
    """
    if images.ndim not in (4, 5):
        raise ValueError(f"expected a (batch, channels, *spatial) batch of 2D or 3D images, got {tuple(images.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    spatial_dims = images.ndim - 2
    if rotate90 and spatial_dims == 2 and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotate90 needs square images, got {tuple(images.shape[-2:])}: set augment_rotate90 to false")
    if uniforms is None:
        uniforms = torch.rand((images.shape[0], NUM_DRAWS), generator=generator)
    choices = choose(uniforms, spatial_dims, flip=flip, rotate90=rotate90, max_shift=max_shift)
    return apply_choices(images, choices, flip_axis=flip_axis)
