"""Plumbing that lets one training run follow labels as the expert changes them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from alr_monai import distributed
from alr_monai.data.datasets import class_balanced_weights, weighted_draw


class LabelStore:
    """The current training label of every sample, by training index; -1 marks an excluded sample.

    Batches keep the label they were cached with; :class:`LabelLookup` replaces it with the store's, so an
    expert's answer takes effect from the next iteration without rebuilding any dataset.
    """

    def __init__(self, labels: Sequence[int] | torch.Tensor) -> None:
        self.labels = torch.as_tensor(labels, dtype=torch.long).clone()
        self.verified = torch.zeros(len(self.labels), dtype=torch.bool)

    def update(self, labels: Sequence[int], verified: Sequence[bool]) -> None:
        self.labels.copy_(torch.as_tensor(labels, dtype=torch.long))
        self.verified.copy_(torch.as_tensor(verified, dtype=torch.bool))


class LabelLookup:
    """A ``prepare_batch`` for MONAI engines that takes labels from a :class:`LabelStore` by ``index``."""

    def __init__(self, store: LabelStore) -> None:
        self.store = store

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        image = batchdata["image"].to(device=device, non_blocking=non_blocking)
        labels = self.store.labels[torch.as_tensor(batchdata["index"]).long()]
        if bool((labels < 0).any()):
            raise RuntimeError("an excluded sample reached training; the sampler should have dropped it")
        return image, labels.to(device=device, non_blocking=non_blocking)


class SubsetShuffleSampler(Sampler[int]):
    """Yields ``num_samples`` indices per epoch drawn from a subset that may change between epochs.

    The epoch length stays fixed (so Ignite's iteration count, and resuming from it, stays consistent)
    while the subset trained on changes round by round: a smaller subset is cycled through repeatedly. With
    ``class_balanced`` the draw is with replacement, each sample weighted by 1 / (size of its label's class
    within the subset), so rare classes are seen as often as common ones.

    Args:
        indices: the subset to draw from.
        num_samples: indices per epoch (default: the subset's size).
        seed: base seed; epoch ``e`` uses ``seed + e`` (call :meth:`set_epoch`), so a resumed run draws the
            same order as an uninterrupted one.
        class_balanced: draw class-balanced instead of shuffling.
        num_replicas: processes sharing the draw (default: the ``torch.distributed`` world size, 1 without one).
        rank: this process's share (default: its ``torch.distributed`` rank): every ``num_replicas``-th index of
            the epoch's draw from position ``rank`` on, so the ranks' batches together are one process's batch.
    """

    def __init__(
        self,
        indices: Sequence[int],
        num_samples: int | None = None,
        seed: int = 0,
        class_balanced: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.indices = list(indices)
        self.num_samples = len(self.indices) if num_samples is None else int(num_samples)
        self.seed = seed
        self.class_balanced = class_balanced
        self.epoch = 0
        self._weights: torch.Tensor | None = None
        self.num_replicas = num_replicas
        self.rank = rank

    def _share(self) -> tuple[int, int]:
        replicas = distributed.world_size() if self.num_replicas is None else int(self.num_replicas)
        rank = distributed.rank() if self.rank is None else int(self.rank)
        if not 0 <= rank < replicas:
            raise ValueError(f"rank {rank} is outside the {replicas} processes")
        return rank, replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_indices(self, indices: Sequence[int], labels: torch.Tensor | None = None) -> None:
        """Change the subset; ``labels`` (by training index) are needed for class-balanced draws."""
        if len(indices) == 0:
            raise ValueError("no samples left to train on")
        self.indices = list(indices)
        self._weights = None
        if self.class_balanced:
            if labels is None:
                raise ValueError("class-balanced sampling needs the labels of the subset")
            self._weights = class_balanced_weights(torch.as_tensor(labels)[torch.as_tensor(self.indices)])

    def __iter__(self) -> Iterator[int]:
        if self.class_balanced and self._weights is None:
            raise RuntimeError("class-balanced sampling: call set_indices(indices, labels) before iterating")
        rank, replicas = self._share()
        if self._weights is not None:
            picks = weighted_draw(self._weights, self.num_samples, self.seed + self.epoch)
            return iter([self.indices[i] for i in picks[rank::replicas]])
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order: list[int] = []
        while len(order) < self.num_samples:
            order.extend(torch.randperm(len(self.indices), generator=generator).tolist())
        return iter([self.indices[i] for i in order[: self.num_samples][rank::replicas]])

    def __len__(self) -> int:
        rank, replicas = self._share()
        return len(range(rank, self.num_samples, replicas))
