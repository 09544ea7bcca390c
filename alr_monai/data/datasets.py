"""The bundle's cache policy (key ``cache``): where the deterministic part of the preprocessing is kept."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.data import CacheDataset, Dataset, DistributedSampler, PersistentDataset
from monai.data.utils import pickle_hashing

__all__ = [
    "CACHE_POLICIES",
    "SAMPLERS",
    "ClassBalancedSampler",
    "build_dataset",
    "build_train_sampler",
    "class_balanced_weights",
    "pin_memory_for",
    "weighted_draw",
]

CACHE_POLICIES = ("memory", "disk", "none")
SAMPLERS = ("shuffle", "class_balanced")


def _transform_hash(transforms: object) -> bytes:
    # The cached transforms go into the file names, so a changed chain (another image size, the evaluation chain
    # beside the training one in the same folder) never reads another's files.
    try:
        return pickle_hashing(transforms)
    except Exception:  # a transform that cannot be pickled: its class names and attributes' text
        text = repr([(type(t).__qualname__, sorted(map(str, vars(t).items()))) for t in transforms])
        return hashlib.sha256(text.encode()).hexdigest().encode()


def build_dataset(
    data: Sequence,
    transform: Callable,
    cache: str | None = "memory",
    cache_rate: float = 1.0,
    cache_dir: str | Path | None = None,
    num_workers: int | None = 0,
) -> Dataset:
    """A MONAI dataset of ``data`` under ``transform`` with the chosen cache policy.

    Every policy gives the same items: only the deterministic transforms (up to the first random one) are
    cached, and the rest run on each read.

    Args:
        data: the items.
        transform: the preprocessing chain.
        cache: ``"memory"`` (``CacheDataset``: ``cache_rate`` of the items kept in RAM), ``"disk"``
            (``PersistentDataset``: one file per item in ``cache_dir``, kept across runs; memory stays O(1) per
            item) or ``"none"`` (``Dataset``: preprocess on every read).
        cache_rate: ``"memory"``: share of the items cached, in [0, 1].
        cache_dir: ``"disk"``: the folder (created if missing).
        num_workers: ``"memory"``: threads that fill the cache.

    Raises:
        ValueError: naming the key for a bad ``cache``, ``cache_rate`` or missing ``cache_dir``.
    """
    if cache is None:  # `--cache none` on the command line arrives as JSON null
        cache = "none"
    if cache not in CACHE_POLICIES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_POLICIES)}, got {cache!r}")
    if cache == "memory":
        if not 0.0 <= float(cache_rate) <= 1.0:
            raise ValueError(f"cache_rate must be in [0, 1], got {cache_rate!r}")
        return CacheDataset(data, transform, cache_rate=float(cache_rate), num_workers=num_workers, progress=False)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache 'disk' needs cache_dir, the folder of the cached items")
        return PersistentDataset(data, transform, cache_dir=str(cache_dir), hash_transform=_transform_hash)
    return Dataset(data, transform)


def pin_memory_for(pin_memory: bool, device: str | object) -> bool:
    """The DataLoader's ``pin_memory``: the ``pin_memory`` key, honoured only when training on CUDA (pinned pages
    speed only host-to-GPU copies, and pinning without a GPU warns)."""
    import torch

    return bool(pin_memory) and torch.device(str(device)).type == "cuda" and torch.cuda.is_available()


def class_balanced_weights(labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Each sample's draw weight, 1 / (size of its label's class), so every class is drawn about equally often."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    return 1.0 / torch.bincount(labels)[labels].double()


def weighted_draw(weights: torch.Tensor, count: int, seed: int) -> list[int]:
    """``count`` positions drawn with replacement by ``weights``, the same for the same seed (resumes agree)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(weights, count, replacement=True, generator=generator).tolist()


class ClassBalancedSampler(torch.utils.data.DistributedSampler):
    """Draws each epoch's indices with replacement, each sample weighted by 1 / (size of its GIVEN class).

    Every class is then seen about equally often, so a rare class's gradient is not drowned by the common ones
    (``imbalance#sampler class_balanced``). A ``DistributedSampler`` subclass because MONAI's workflows call
    ``set_epoch`` on those: epoch ``e`` draws with seed ``seed + e``, so a resumed run sees the same order as an
    uninterrupted one, and each of ``num_replicas`` processes takes every ``num_replicas``-th index of one draw.

    Args:
        dataset: the training dataset (only its length is used).
        labels: the given label of every sample, by position.
        num_replicas: processes sharing the draw.
        rank: this process's share.
        seed: base seed.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        labels: Sequence[int],
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        labels_t = torch.as_tensor(list(labels), dtype=torch.long)
        if len(labels_t) != len(dataset):
            raise ValueError(f"{len(labels_t)} labels for a dataset of {len(dataset)} samples")
        if len(labels_t) and int(labels_t.min()) < 0:
            raise ValueError("class-balanced sampling needs a class index (>= 0) for every sample")
        self.weights = class_balanced_weights(labels_t)

    def __iter__(self):
        draw = weighted_draw(self.weights, self.total_size, self.seed + self.epoch)
        return iter(draw[self.rank : self.total_size : self.num_replicas])


def build_train_sampler(
    kind: str,
    dataset: torch.utils.data.Dataset,
    labels: Sequence[int],
    num_replicas: int = 1,
    rank: int = 0,
    seed: int = 0,
) -> torch.utils.data.DistributedSampler:
    """Phase 1's sampler (``imbalance#sampler``): "shuffle" (every sample once an epoch, shuffled by seed and
    epoch) or "class_balanced" (:class:`ClassBalancedSampler`)."""
    if kind == "shuffle":
        return DistributedSampler(
            dataset, even_divisible=False, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed
        )
    if kind == "class_balanced":
        return ClassBalancedSampler(dataset, labels, num_replicas=num_replicas, rank=rank, seed=seed)
    raise ValueError(f"imbalance#sampler must be one of {SAMPLERS}, got {kind!r}")
