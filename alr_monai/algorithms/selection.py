"""Co-teaching sample selection (Han et al., NeurIPS 2018), with optional Variance-of-Gradients mixing.

Each network ranks the batch by per-sample loss and keeps the ``(1 - forget_rate)`` fraction with the smallest
loss; its peer is updated on that selection. :func:`select_with_vog` fills part of that quota by VoG order
among the samples the loss did not pick, so clean minority-class samples with large loss can still be kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["forget_rate_schedule", "num_to_keep", "select_small_loss", "select_with_fills", "select_with_vog"]


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
    orients the scores so that lower means "keep" (negate them to keep high VoG). This is
    :func:`select_with_fills` with one fill score.

    Args:
        losses: per-sample losses, shape (B,).
        num_keep: total number of samples to keep, in ``[0, B]``.
        vog_scores: per-sample scores, shape (B,), or None for plain small-loss selection.
        mix_ratio: share of ``num_keep`` chosen by VoG, in ``[0, 1]``.

    Returns:
        Bool tensor of shape (B,) on the device of ``losses`` with exactly ``num_keep`` True entries.
    """
    return select_with_fills(losses, num_keep, [] if vog_scores is None else [(vog_scores, mix_ratio)])


def select_with_fills(primary: Tensor, num_keep: int, fills: Sequence[tuple[Tensor, float]] = ()) -> Tensor:
    """Keep ``num_keep`` samples: fixed shares by secondary scores, the rest by ascending ``primary``.

    Each fill ``(scores, share)`` takes ``round(share * num_keep)`` samples. The primary score first takes the
    ``num_keep`` minus all fill counts smallest values; then each fill in turn takes its count of lowest scores
    among the samples not already picked.

    Samples with a NaN fill score (e.g. not enough gradient snapshots yet) rank after every finite score and,
    among themselves, by ascending primary score, so before a score is available this reduces to primary
    selection. Finite ties are broken by the primary score, then by position.

    Args:
        primary: per-sample scores (e.g. losses), shape (B,); lower = keep.
        num_keep: total number of samples to keep, in ``[0, B]``.
        fills: ``(scores, share)`` pairs, scores of shape (B,) (lower = keep), shares in ``[0, 1]``.

    Returns:
        Bool tensor of shape (B,) on the device of ``primary`` with exactly ``num_keep`` True entries.
    """
    _check_num_keep(primary, num_keep)
    counts = []
    for scores, share in fills:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"mix_ratio must be in [0, 1], got {share}")
        if scores.shape != primary.shape:
            raise ValueError(f"fill scores shape {tuple(scores.shape)} must match losses {tuple(primary.shape)}")
        counts.append(round(share * num_keep))
    if sum(counts) > num_keep:
        raise ValueError(f"fill shares take {sum(counts)} of {num_keep} samples")
    primary = primary.detach()
    keep = select_small_loss(primary, num_keep - sum(counts))
    for (scores, _share), count in zip(fills, counts, strict=True):
        if count == 0:
            continue
        # The fill scores may live on the CPU while the losses are on a GPU.
        scores = scores.detach().to(device=primary.device, dtype=torch.float32)
        # Lexicographic order (is-NaN, score, primary, position) by successive stable sorts, least significant first.
        order = _stable_ascending_order(primary)
        order = order[_stable_ascending_order(torch.nan_to_num(scores[order], nan=torch.inf))]
        order = order[_stable_ascending_order(torch.isnan(scores[order]).to(torch.uint8))]
        candidates = order[~keep[order]]
        keep[candidates[:count]] = True
    return keep
