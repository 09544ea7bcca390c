"""The bundle's cache policy (key ``cache``): where the deterministic part of the preprocessing is kept."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing

__all__ = ["CACHE_POLICIES", "build_dataset", "pin_memory_for"]

CACHE_POLICIES = ("memory", "disk", "none")


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
