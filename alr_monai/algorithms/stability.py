"""Stable recalibration and a fair model choice: weight averaging, a per-round cosine learning rate, and a rule
that judges a round's model against the incumbent by the noise of the validation estimate.

Pure PyTorch and Python: nothing here knows Ignite. Why these exist: a validation score is a noisy draw (on the
embedded set, validation balanced accuracy swings by 0.1-0.3 from epoch to epoch), so the model kept by "best
validation epoch so far" is the luckiest of many draws, and a short recalibration rarely beats it even when the
expert's labels improved the model. Averaging weights and annealing the learning rate make the round's last
model a low-variance estimate; comparing it with the incumbent within the standard error of the validation
estimate stops a lucky earlier draw from vetoing every later round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "MODEL_CHOICES",
    "LR_SCHEDULES",
    "ModelChoice",
    "WeightAverage",
    "balanced_accuracy_standard_error",
    "choose_round_model",
    "cosine_learning_rate",
]

MODEL_CHOICES = ("best", "tolerant")
LR_SCHEDULES = ("constant", "cosine")


class WeightAverage:
    """Exponential moving average of a module's parameters and floating-point buffers.

    After each optimiser step, ``average = decay * average + (1 - decay) * current``; integer buffers (BatchNorm's
    ``num_batches_tracked``) are copied. BatchNorm running statistics are averaged like weights, which keeps
    them consistent with the averaged weights without an extra pass over the data.

    Args:
        module: the network whose weights are averaged (read, never modified, except by :meth:`copy_to`).
        decay: weight of the old average per update, in [0, 1); 0.98 averages over roughly the last 50 steps.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.module = module
        self.decay = float(decay)
        self.average: dict[str, torch.Tensor] = {}
        self.reset()

    def reset(self) -> None:
        """Start the average at the module's current weights."""
        self.average = {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the module's current weights into the average."""
        for name, value in self.module.state_dict().items():
            average = self.average[name]
            if average.is_floating_point():
                average.mul_(self.decay).add_(value.detach().to(average.dtype), alpha=1.0 - self.decay)
            else:
                average.copy_(value)

    def copy_to(self, module: nn.Module | None = None) -> None:
        """Load the averaged weights into ``module`` (default: the averaged module)."""
        (module or self.module).load_state_dict(self.average)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.average.items()}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        missing = set(self.average) - set(state_dict)
        if missing:
            raise KeyError(f"weight average state lacks {sorted(missing)[:3]}")
        self.average = {k: state_dict[k].detach().clone().to(self.average[k].device) for k in self.average}


def cosine_learning_rate(base: float, step: int, total: int, minimum_fraction: float = 0.0) -> float:
    """Cosine annealing from ``base`` at ``step`` 0 to ``base * minimum_fraction`` at ``step == total``.

    A pure function of the step, so a resumed run sets exactly the rate an uninterrupted one would.
    """
    if total <= 0:
        return base
    progress = min(max(step / total, 0.0), 1.0)
    minimum = base * minimum_fraction
    return minimum + (base - minimum) * 0.5 * (1.0 + math.cos(math.pi * progress))


def balanced_accuracy_standard_error(confusion: Sequence[Sequence[int]] | torch.Tensor) -> float:
    """Standard error of a balanced-accuracy estimate from its confusion matrix (rows = true class).

    Balanced accuracy is the mean of per-class recalls r_c, each a binomial proportion over the n_c validation
    samples of class c, so its variance is sum_c r_c (1 - r_c) / n_c / C^2 (classes without samples are left out,
    as balanced accuracy leaves them out). A recall of 0 or 1 gets the variance of one error in n_c + 1 so that a
    small class never counts as noise-free.
    """
    matrix = torch.as_tensor(confusion, dtype=torch.float64)
    counts = matrix.sum(1)
    present = counts > 0
    if not bool(present.any()):
        return float("nan")
    n = counts[present]
    recall = matrix.diagonal()[present] / n
    floor = 1.0 / (n + 1.0)
    recall = recall.clamp(min=floor, max=1.0 - floor)
    variance = (recall * (1.0 - recall) / n).sum() / present.sum() ** 2
    return float(variance.sqrt())


@dataclass(frozen=True)
class ModelChoice:
    """The outcome of :func:`choose_round_model`: adopt the round's model or keep the incumbent, and why."""

    adopt: bool
    reason: str


def choose_round_model(
    candidate_score: float,
    incumbent_score: float,
    standard_error: float,
    tolerance: float = 1.0,
    incumbent_name: str = "the incumbent",
) -> ModelChoice:
    """Adopt a round's model unless its validation score is worse than the incumbent's by more than ``tolerance``
    standard errors of the validation estimate.

    The incumbent's score is biased upwards (it was kept because it scored well), while the round's model was
    trained with more correct labels; a difference within the estimate's noise is no evidence against the round.

    Args:
        candidate_score: validation score of the round's model.
        incumbent_score: validation score of the model it would replace.
        standard_error: standard error of the validation estimate (e.g. :func:`balanced_accuracy_standard_error`).
        tolerance: how many standard errors worse the round's model may score and still be adopted.
        incumbent_name: how the reason names the incumbent ("phase 1's model", "round 2's model").
    """
    margin = tolerance * standard_error if math.isfinite(standard_error) else 0.0
    floor = incumbent_score - margin
    if candidate_score >= incumbent_score:
        return ModelChoice(True, f"adopted: val {candidate_score:.3f} >= {incumbent_name} {incumbent_score:.3f}")
    if candidate_score >= floor:
        return ModelChoice(
            True,
            f"adopted: val {candidate_score:.3f} within {tolerance:g} SE ({margin:.3f}) of {incumbent_name} "
            f"{incumbent_score:.3f}",
        )
    return ModelChoice(
        False,
        f"kept {incumbent_name}: val {candidate_score:.3f} < {incumbent_score:.3f} - {tolerance:g} SE ({margin:.3f})",
    )
