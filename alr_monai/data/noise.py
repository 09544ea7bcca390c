"""Label-noise injection for simulation studies.

This module and the oracle expert are the only code that reads ground truth. A study saves its noise as a
CSV (id, true_label, noisy_label) so it can be rerun exactly; the seed always matters (the reference code
cached noise per rate and silently reused it across seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alr_monai.distributed import is_main_process
from alr_monai.utils import atomic_write_csv, read_csv

NOISE_KINDS = ("symmetric", "pairflip")


@dataclass
class NoisyLabels:
    """The result of a noise injection: what training sees, and the truth kept aside for simulation."""

    ids: list[str]
    true_labels: np.ndarray
    noisy_labels: np.ndarray

    @property
    def is_noisy(self) -> np.ndarray:
        return self.true_labels != self.noisy_labels

    @property
    def noise_rate(self) -> float:
        return float(self.is_noisy.mean()) if len(self.ids) else 0.0

    def save(self, path: str | Path) -> Path:
        """Write ``id,true_label,noisy_label`` atomically (on rank 0 alone when several processes train)."""
        if not is_main_process():
            return Path(path)
        rows = (
            {"id": i, "true_label": int(t), "noisy_label": int(n)}
            for i, t, n in zip(self.ids, self.true_labels, self.noisy_labels, strict=True)
        )
        return atomic_write_csv(path, rows, ["id", "true_label", "noisy_label"])

    @classmethod
    def load(cls, path: str | Path) -> NoisyLabels:
        header, rows = read_csv(path)
        missing = {"id", "true_label", "noisy_label"} - set(header)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        return cls(
            [r["id"] for r in rows],
            np.array([int(r["true_label"]) for r in rows], dtype=np.int64),
            np.array([int(r["noisy_label"]) for r in rows], dtype=np.int64),
        )


def inject_noise(
    labels: Sequence[int] | np.ndarray,
    rate: float,
    num_classes: int,
    kind: str = "symmetric",
    seed: int = 0,
    spared_classes: Sequence[int] = (),
    ids: Sequence[str] | None = None,
) -> NoisyLabels:
    """Corrupt a ``rate`` fraction of labels.

    Exactly ``round(rate * n_eligible)`` samples are flipped, chosen uniformly among samples whose class is not
    spared, so the realised rate matches the request up to rounding.

    Args:
        labels: clean labels (N,).
        rate: fraction of eligible samples to corrupt, in [0, 1).
        num_classes: number of classes C.
        kind: "symmetric" (uniformly to one of the C-1 other classes) or "pairflip" (c -> c+1 mod C).
        seed: RNG seed; different seeds give different noise.
        spared_classes: classes whose samples are never corrupted.
        ids: sample ids for the saved CSV (defaults to positions).
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {NOISE_KINDS}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    if num_classes < 2:
        raise ValueError("noise needs at least 2 classes")
    true_labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(true_labels) and (true_labels.min() < 0 or true_labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{true_labels.min()}, {true_labels.max()}]")
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(~np.isin(true_labels, np.asarray(spared_classes, dtype=np.int64)))
    flipped = rng.choice(eligible, size=int(round(rate * len(eligible))), replace=False)
    noisy = true_labels.copy()
    if kind == "symmetric":
        # An offset in 1..C-1 lands uniformly on one of the other classes.
        offsets = rng.integers(1, num_classes, size=len(flipped))
        noisy[flipped] = (true_labels[flipped] + offsets) % num_classes
    else:
        noisy[flipped] = (true_labels[flipped] + 1) % num_classes
    ids = [str(i) for i in range(len(true_labels))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(true_labels):
        raise ValueError(f"{len(ids)} ids for {len(true_labels)} labels")
    return NoisyLabels(ids, true_labels, noisy)


def noise_table(noisy: NoisyLabels, class_names: Sequence[str]) -> str:
    """A plain-text per-class table: clean count, noisy count and noise rate by TRUE class."""
    lines = [f"{'class':<24}{'clean':>8}{'noisy':>8}{'noise rate':>12}"]
    for c, name in enumerate(class_names):
        in_class = noisy.true_labels == c
        n_noisy = int((noisy.is_noisy & in_class).sum())
        n_total = int(in_class.sum())
        rate = n_noisy / n_total if n_total else float("nan")
        lines.append(f"{name:<24}{n_total - n_noisy:>8}{n_noisy:>8}{rate:>12.3f}")
    total_noisy = int(noisy.is_noisy.sum())
    lines.append(f"{'total':<24}{len(noisy.ids) - total_noisy:>8}{total_noisy:>8}{noisy.noise_rate:>12.3f}")
    return "\n".join(lines)
