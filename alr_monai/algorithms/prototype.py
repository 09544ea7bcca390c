"""Prototype distance: how far a sample's penultimate feature lies from the prototype of its GIVEN class.

RoLT (Wei et al., 2021) replaces the small-loss criterion on long-tailed noisy data by the distance of a
sample's feature to its labelled class's prototype: a clean sample of a rare class has a large loss because the
class is rare, but its feature still sits with its class, while a wrong label puts the feature near another
class. Prototypes here are the mean L2-normalised features of the samples each peer's selection kept in the
previous epoch (the trusted part of each class, so a class that is mostly noise is not summarised by its
noise), and the distance is the cosine distance ``1 - cos(feature, prototype)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PrototypeAccumulator", "cosine_distance_to_prototypes"]


def cosine_distance_to_prototypes(features: Tensor, labels: Tensor, prototypes: Tensor, valid: Tensor) -> Tensor:
    """``1 - cos(feature_i, prototype[label_i])``; NaN where the labelled class has no prototype.

    Args:
        features: (B, D) penultimate features.
        labels: (B,) given labels.
        prototypes: (C, D) unit-norm class prototypes.
        valid: (C,) bool, which prototypes exist.

    Returns:
        (B,) float32 distances in [0, 2] on the device of ``features``.
    """
    if features.ndim != 2 or prototypes.ndim != 2 or features.shape[1] != prototypes.shape[1]:
        raise ValueError(f"features {tuple(features.shape)} and prototypes {tuple(prototypes.shape)} do not match")
    labels = labels.to(features.device, torch.long)
    protos = prototypes.to(features.device, torch.float32)[labels]
    distance = 1.0 - (F.normalize(features.float(), dim=1) * protos).sum(1)
    return torch.where(valid.to(features.device)[labels], distance, torch.full_like(distance, float("nan")))


class PrototypeAccumulator:
    """Per-class sums of unit-norm features over an epoch; :meth:`commit` turns them into prototypes.

    Args:
        num_classes: number of classes.
        min_count: a class needs this many accumulated samples to get a prototype.
    """

    def __init__(self, num_classes: int, min_count: int = 2) -> None:
        self.num_classes = num_classes
        self.min_count = min_count
        self.prototypes: Tensor | None = None
        self.valid = torch.zeros(num_classes, dtype=torch.bool)
        self._sums: Tensor | None = None
        self._counts = torch.zeros(num_classes, dtype=torch.float64)

    def add(self, features: Tensor, labels: Tensor) -> None:
        """Accumulate (B, D) features of samples with (B,) labels."""
        unit = F.normalize(features.detach().float(), dim=1).cpu().double()
        labels = labels.detach().cpu().long()
        if self._sums is None:
            self._sums = torch.zeros(self.num_classes, unit.shape[1], dtype=torch.float64)
        self._sums.index_add_(0, labels, unit)
        self._counts += torch.bincount(labels, minlength=self.num_classes)[: self.num_classes].double()

    def commit(self) -> None:
        """Prototypes from this epoch's sums (classes under ``min_count`` keep their old prototype), then reset."""
        if self._sums is not None:
            fresh = self._counts >= self.min_count
            new = F.normalize(self._sums.float(), dim=1)
            if self.prototypes is None:
                self.prototypes = torch.zeros_like(new)
            self.prototypes[fresh] = new[fresh]
            self.valid = self.valid | fresh
            self._sums.zero_()
        self._counts.zero_()

    def state_dict(self) -> dict:
        empty = torch.zeros(0)
        return {"prototypes": empty if self.prototypes is None else self.prototypes, "valid": self.valid}

    def load_state_dict(self, state_dict: dict) -> None:
        prototypes = state_dict["prototypes"]
        self.prototypes = None if prototypes.numel() == 0 else prototypes.clone().float()
        self.valid = state_dict["valid"].clone().bool()
