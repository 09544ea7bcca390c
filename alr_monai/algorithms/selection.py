"""Co-teaching sample selection (Han et al., NeurIPS 2018), with optional Variance-of-Gradients mixing.

Each network ranks the batch by per-sample loss and keeps the ``(1 - forget_rate)`` fraction with the smallest
loss; its peer is updated on that selection. :func:`select_with_vog` fills part of that quota by VoG order
among the samples the loss did not pick, so clean minority-class samples with large loss can still be kept.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["forget_rate_schedule", "num_to_keep", "select_small_loss", "select_with_vog"]


def forget_rate_schedule(epoch: int, final_rate: float, num_gradual: int, exponent: float = 1.0) -> float:
    """Forget rate of an epoch: a linear ramp from 0 to ``final_rate ** exponent``, then ``final_rate``.

    Matches the Co-teaching reference code, ``rate_schedule[:num_gradual] = linspace(0, rate**exponent,
    num_gradual)`` followed by ``rate`` for every later epoch.

    Args:
        epoch: 0-based epoch index.
        final_rate: forget rate after the ramp, in ``[0, 1)``.
        num_gradual: number of ramp epochs; 0 means ``final_rate`` from the first epoch.
        exponent: the ramp ends at ``final_rate ** exponent`` (1 gives a plain linear ramp).

    Returns:
        The fraction of each batch to discard in this epoch.

    Raises:
        ValueError: on a negative epoch or num_gradual, or ``final_rate`` outside ``[0, 1)``.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0 (0-based), got {epoch}")
    if not 0.0 <= final_rate < 1.0:
        raise ValueError(f"final_rate must be in [0, 1), got {final_rate}")
    if num_gradual < 0:
        raise ValueError(f"num_gradual must be >= 0, got {num_gradual}")
    if epoch < num_gradual:
        return float(np.linspace(0.0, final_rate**exponent, num_gradual)[epoch])
    return float(final_rate)


def num_to_keep(batch_size: int, forget_rate: float) -> int:
    """Number of samples to keep from a batch: ``round((1 - forget_rate) * batch_size)``, at least 1.

    Python's ``round`` (half to even) is used. A non-empty batch always keeps one sample so the peer network
    gets a gradient every step.

    Args:
        batch_size: number of samples in the batch (>= 0).
        forget_rate: fraction to discard, in ``[0, 1]``.

    Returns:
        An integer in ``[min(1, batch_size), batch_size]``.
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    if not 0.0 <= forget_rate <= 1.0:
        raise ValueError(f"forget_rate must be in [0, 1], got {forget_rate}")
    if batch_size == 0:
        return 0
    return min(batch_size, max(1, round((1.0 - forget_rate) * batch_size)))


def _check_num_keep(losses: Tensor, num_keep: int) -> None:
    if losses.ndim != 1:
        raise ValueError(f"losses must be 1-D (one loss per sample), got shape {tuple(losses.shape)}")
    if not 0 <= num_keep <= losses.numel():
        raise ValueError(f"num_keep must be in [0, {losses.numel()}], got {num_keep}")


def _stable_ascending_order(values: Tensor) -> Tensor:
    # Stable sort: equal values keep their batch order, so the selection is deterministic. NaN sorts last.
    return torch.argsort(values, stable=True)


def select_small_loss(losses: Tensor, num_keep: int) -> Tensor:
    """Mask of the ``num_keep`` smallest losses.

    Ties are broken by position (earlier sample first); NaN losses rank last.

    Args:
        losses: per-sample losses, shape (B,).
        num_keep: how many samples to keep, in ``[0, B]``.

    Returns:
        Bool tensor of shape (B,) on the device of ``losses`` with exactly ``num_keep`` True entries.
    """
    _check_num_keep(losses, num_keep)
    keep = torch.zeros(losses.shape, dtype=torch.bool, device=losses.device)
    keep[_stable_ascending_order(losses.detach())[:num_keep]] = True
    return keep


def select_with_vog(losses: Tensor, num_keep: int, vog_scores: Tensor | None, mix_ratio: float) -> Tensor:
    """Keep ``num_keep`` samples: most by small loss, a ``mix_ratio`` share by ascending VoG score.

    ``n_vog = round(mix_ratio * num_keep)``. The first ``num_keep - n_vog`` samples are the smallest losses;
    the remaining ``n_vog`` are the lowest ``vog_scores`` among the samples not already picked. The caller
    orients the scores so that lower means "keep" (negate them to keep high VoG).

    Samples with a NaN score (not enough gradient snapshots yet) rank after every finite score and, among
    themselves, by ascending loss, so before VoG is available this reduces to small-loss selection. Finite
    ties are broken by loss, then by position.

    Args:
        losses: per-sample losses, shape (B,).
        num_keep: total number of samples to keep, in ``[0, B]``.
        vog_scores: per-sample scores, shape (B,), or None for plain small-loss selection.
        mix_ratio: share of ``num_keep`` chosen by VoG, in ``[0, 1]``.

    Returns:
        Bool tensor of shape (B,) on the device of ``losses`` with exactly ``num_keep`` True entries.
    """
    _check_num_keep(losses, num_keep)
    if not 0.0 <= mix_ratio <= 1.0:
        raise ValueError(f"mix_ratio must be in [0, 1], got {mix_ratio}")
    if vog_scores is None or mix_ratio == 0.0:
        return select_small_loss(losses, num_keep)
    if vog_scores.shape != losses.shape:
        raise ValueError(f"vog_scores shape {tuple(vog_scores.shape)} must match losses {tuple(losses.shape)}")

    losses = losses.detach()
    # The VoG buffer usually lives on the CPU while the losses may be on a GPU.
    vog_scores = vog_scores.detach().to(device=losses.device, dtype=torch.float32)
    n_vog = round(mix_ratio * num_keep)
    keep = select_small_loss(losses, num_keep - n_vog)
    if n_vog == 0:
        return keep

    # Lexicographic order (is-NaN, score, loss, position) by successive stable sorts, least significant key first.
    order = _stable_ascending_order(losses)
    order = order[_stable_ascending_order(torch.nan_to_num(vog_scores[order], nan=torch.inf))]
    order = order[_stable_ascending_order(torch.isnan(vog_scores[order]).to(torch.uint8))]
    candidates = order[~keep[order]]
    keep[candidates[:n_vog]] = True
    return keep
