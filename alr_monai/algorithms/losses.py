"""Imbalance-aware classification losses (pure PyTorch).

Small-loss selection handles imbalance in WHICH samples train; these losses handle it in HOW they train. Logit
adjustment (Menon et al., ICLR 2021) adds ``tau * log(prior)`` to the logits inside the cross-entropy only: the
network's own logits then estimate the class-balanced posterior, so argmax of the plain logits maximises
balanced accuracy, with no change at inference. ``tau = 1`` is the Fisher-consistent choice; ``tau = 0`` is plain
cross-entropy. With ``tau = 1`` the loss equals the balanced softmax of Ren et al. (NeurIPS 2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["adjust_logits", "class_log_prior", "logit_adjusted_cross_entropy"]


def class_log_prior(labels: Sequence[int] | Tensor, num_classes: int, smoothing: float = 1.0) -> Tensor:
    """Log class frequencies of ``labels`` (the GIVEN training labels), add-``smoothing`` so none is -inf.

    Args:
        labels: class index of every training sample; negative entries (excluded samples) are ignored.
        num_classes: number of classes.
        smoothing: pseudo-count added to every class.

    Returns:
        (C,) float32 log prior that sums (in probability) to 1.

    Raises:
        ValueError: on a label outside ``[0, num_classes)`` or a negative smoothing.
    """
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    labels = labels[labels >= 0]
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"label {int(labels.max())} is outside the {num_classes} classes")
    counts = torch.bincount(labels, minlength=num_classes).double() + smoothing
    if float(counts.sum()) <= 0:
        raise ValueError("no labels to estimate a class prior from (and smoothing 0)")
    return torch.log(counts / counts.sum()).float()


def adjust_logits(logits: Tensor, log_prior: Tensor | None, tau: float = 1.0) -> Tensor:
    """``logits + tau * log_prior`` (the logits unchanged when ``log_prior`` is None or tau 0): what a
    logit-adjusted loss sees, while inference keeps the plain logits.

    Raises:
        ValueError: the prior's class count differs from the logits'.
    """
    if log_prior is None or tau == 0.0:
        return logits
    if log_prior.numel() != logits.shape[-1]:
        raise ValueError(f"log prior has {log_prior.numel()} classes, the logits {logits.shape[-1]}")
    return logits + tau * log_prior.to(device=logits.device, dtype=logits.dtype)


def logit_adjusted_cross_entropy(
    logits: Tensor, targets: Tensor, log_prior: Tensor | None = None, tau: float = 1.0, reduction: str = "none"
) -> Tensor:
    """Cross-entropy of ``logits + tau * log_prior`` (plain cross-entropy when ``log_prior`` is None or tau 0).

    Args:
        logits: (B, C) raw scores.
        targets: (B,) class indices.
        log_prior: (C,) log class prior (:func:`class_log_prior`).
        tau: adjustment strength.
        reduction: as in :func:`torch.nn.functional.cross_entropy`.
    """
    return F.cross_entropy(adjust_logits(logits, log_prior, tau), targets, reduction=reduction)
