"""Estimate the label-noise rate from per-sample training losses.

A hospital never knows its noise rate, yet co-teaching needs a forget rate. Early in training, networks fit
clean labels before noisy ones, so per-sample losses are bimodal: the low-loss mode is mostly clean, the
high-loss mode mostly noisy. As in DivideMix (Li et al., ICLR 2020) we fit a two-component 1-D Gaussian mixture
to min-max normalised losses; the noise rate is the mean posterior of the high-mean component.

Per-class fitting protects rare classes: a rare, clean class can have large losses only because it is rare,
and a global fit would count all of it as noisy. Fitting within each labelled class compares each sample only
with samples of the same given label.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch import Tensor

__all__ = ["NOISE_ESTIMATION_METHODS", "estimate_noise_rate", "gmm_clean_probability"]

NOISE_ESTIMATION_METHODS: tuple[str, ...] = ("gmm",)
MAX_NOISE_RATE = 0.95


def _fit_clean_posterior(losses: np.ndarray, seed: int) -> np.ndarray:
    """Posterior of the low-mean component for 1-D float64 losses; all clean if there is nothing to split."""
    low, high = float(losses.min()), float(losses.max())
    if losses.size < 2 or high - low <= 1e-12:
        return np.ones_like(losses)
    normalised = ((losses - low) / (high - low)).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=100, tol=1e-2, reg_covar=5e-4, random_state=seed)
    gmm.fit(normalised)
    return gmm.predict_proba(normalised)[:, int(np.argmin(gmm.means_.ravel()))]


def gmm_clean_probability(
    losses: Tensor,
    labels: Tensor | None = None,
    num_classes: int | None = None,
    per_class: bool = False,
    seed: int = 0,
    min_class_samples: int = 10,
) -> Tensor:
    """Each sample's posterior probability of belonging to the low-loss (clean) mixture component.

    Args:
        losses: per-sample losses, shape (N,), finite.
        labels: given labels, shape (N,); required when ``per_class`` is True.
        num_classes: number of classes; inferred from ``labels`` if None.
        per_class: fit one mixture per labelled class. Classes with fewer than ``min_class_samples`` samples
            keep the posteriors of the global fit.
        seed: random state of the mixture initialisation (results are deterministic for a given seed).
        min_class_samples: smallest class that gets its own fit.

    Returns:
        float32 tensor of shape (N,) on the device of ``losses``. If all losses are equal (nothing to split),
        every sample is clean (probability 1).
    """
    if losses.ndim != 1:
        raise ValueError(f"losses must be 1-D, got shape {tuple(losses.shape)}")
    values = losses.detach().to("cpu", torch.float64).numpy()
    if values.size == 0:
        raise ValueError("losses is empty")
    if not np.isfinite(values).all():
        raise ValueError("losses contain NaN or inf; drop those samples before estimating the noise rate")

    clean = _fit_clean_posterior(values, seed)
    if per_class:
        if labels is None:
            raise ValueError("per_class=True needs labels")
        if labels.shape != losses.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} must match losses {tuple(losses.shape)}")
        given = labels.detach().to("cpu", torch.long).numpy()
        num_classes = int(given.max()) + 1 if num_classes is None else num_classes
        if given.min() < 0 or given.max() >= num_classes:
            raise ValueError(f"labels must be in [0, {num_classes}), got {given.min()}..{given.max()}")
        for cls in range(num_classes):
            members = given == cls
            if members.sum() >= max(2, min_class_samples):
                clean[members] = _fit_clean_posterior(values[members], seed)
    return torch.as_tensor(clean, dtype=torch.float32).to(losses.device)


def estimate_noise_rate(
    losses: Tensor,
    labels: Tensor | None = None,
    num_classes: int | None = None,
    method: str = "gmm",
    per_class: bool = False,
    seed: int = 0,
) -> float:
    """Estimate the fraction of wrong labels from per-sample losses (e.g. after a few warm-up epochs).

    Args:
        losses: per-sample cross-entropy losses over the training set, shape (N,).
        labels: given labels, shape (N,); needed for ``per_class``.
        num_classes: number of classes; inferred from ``labels`` if None.
        method: ``"gmm"`` (the only method so far; see :data:`NOISE_ESTIMATION_METHODS`).
        per_class: fit within each labelled class and average weighted by class size, so that a rare clean
            class with high losses is not counted as noise.
        seed: random state of the mixture fit.

    Returns:
        Estimated noise rate, clipped to ``[0, 0.95]``.
    """
    if method not in NOISE_ESTIMATION_METHODS:
        raise ValueError(f"unknown noise estimation method {method!r}; choose from {NOISE_ESTIMATION_METHODS}")
    clean = gmm_clean_probability(losses, labels=labels, num_classes=num_classes, per_class=per_class, seed=seed)
    # The mean over samples of the noisy posterior is the class-size-weighted average of per-class rates.
    rate = float(1.0 - clean.double().mean())
    return float(min(max(rate, 0.0), MAX_NOISE_RATE))
