"""Selection policy: which samples of a batch each peer keeps, decided from named per-sample scores.

Every criterion (small loss, VoG, prototype distance, ...) is a per-sample score, lower = more likely clean,
registered under a name for the batch. The policy decides how many samples to keep (one cut over the batch, as
Co-teaching does, or one cut per GIVEN class at that class's own forget rate) and from which scores: the bulk
of each quota by the order of ``rank_by``, fixed shares (``fill``) by other scores among the samples not yet
picked. Adding a criterion needs a scorer and a name, never an engine edit.

Why per given class: under symmetric noise on a long-tailed set the noise concentrates in the rare GIVEN
classes (most samples labelled as a rare class belong to a frequent one). One cut over the batch keeps about
the same share of every class, so those classes are kept mostly noisy; a cut at each class's estimated noise
rate keeps few of them, and the fill shares then follow each class's estimated clean count instead of an even
draw over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from alr_monai.algorithms.selection import num_to_keep, select_with_fills

__all__ = ["SelectionPolicy", "class_keep_counts", "rank_fractions"]


def rank_fractions(scores: Tensor) -> Tensor:
    """Each score's rank among the finite scores, scaled to [0, 1] (0 = lowest); NaN stays NaN.

    Ties are broken by position so the result is deterministic.
    """
    out = torch.full(scores.shape, float("nan"), dtype=torch.float32, device=scores.device)
    finite = torch.isfinite(scores)
    count = int(finite.sum())
    if count == 0:
        return out
    values = scores[finite]
    ranks = torch.empty(count, dtype=torch.float32, device=scores.device)
    ranks[torch.argsort(values, stable=True)] = torch.arange(count, dtype=torch.float32, device=scores.device)
    out[finite] = ranks / max(count - 1, 1)
    return out


def class_keep_counts(labels: Tensor, keep_shares: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """How many samples of each GIVEN class a batch keeps, unbiased over an epoch.

    A class with 10 samples per batch and keep share 0.12 would keep ``round(1.2) = 1`` every batch (0.10, not
    0.12) and one with 3 samples would keep none. The fractional part is carried to the next batch instead
    (error diffusion), so over an epoch each class keeps its share to within one sample, deterministically.

    Args:
        labels: (B,) given labels.
        keep_shares: (C,) share of each class to keep, in [0, 1].
        residual: (C,) fractions carried from earlier batches of the epoch (None = zeros).

    Returns:
        ``(counts, residual)``: (C,) long counts (never more than the class's batch count) and the new residual.
    """
    num_classes = keep_shares.numel()
    present = torch.bincount(labels.long().cpu(), minlength=num_classes)[:num_classes].double()
    carried = torch.zeros(num_classes, dtype=torch.float64)
    if residual is not None:
        # a batch may reveal a class an earlier batch did not have (one shared rate, classes from the labels)
        carried[: min(residual.numel(), num_classes)] = residual.double()[:num_classes]
    residual = carried
    target = residual + present * keep_shares.double().cpu().clamp(0.0, 1.0)
    counts = torch.minimum(torch.floor(target + 0.5), present)
    residual = torch.where(present > 0, target - counts, residual)
    if labels.numel() and int(counts.sum()) == 0:
        # Every peer needs a gradient each step: the class closest to its next sample keeps one.
        best = int(torch.argmax(torch.where(present > 0, target, -torch.inf)))
        counts[best] = 1
        residual[best] = target[best] - 1
    return counts.long(), residual


class SelectionPolicy:
    """Decides each peer's kept samples from the named scores of a batch.

    Args:
        rank_by: name, or names (a list or ``"loss+prototype"``), of the scores whose order takes the bulk of
            each quota. Several names are
            combined by the mean of their rank fractions within the group being cut (a rank combination:
            scores on different scales count alike). A name absent from the batch is skipped; "loss" is
            always there.
        fill: ``{score name: share}``: that share of each quota is taken by the score's order among the
            samples not yet picked, in the order given. A score absent from the batch (its tracker not yet
            ready) hands its share back to ``rank_by``.
        per_class: cut each GIVEN class at its own forget rate, ranking within the class (see the module
            docstring); False = one cut over the batch, as Co-teaching. With ``per_class`` and a single forget
            rate, every class is cut at that rate.
    """

    def __init__(
        self,
        rank_by: str | Sequence[str] = "loss",
        fill: Mapping[str, float] | None = None,
        per_class: bool = False,
    ) -> None:
        names = rank_by.split("+") if isinstance(rank_by, str) else list(rank_by)
        self.rank_by = [name.strip() for name in names if name.strip()]
        if not self.rank_by:
            raise ValueError("rank_by needs at least one score name")
        self.fill = {str(name): float(share) for name, share in (fill or {}).items()}
        for name, share in self.fill.items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"fill share of {name!r} must be in [0, 1], got {share}")
        if sum(self.fill.values()) > 1.0 + 1e-9:
            raise ValueError(f"fill shares add up to {sum(self.fill.values()):.3f}; they must not exceed 1")
        self.per_class = bool(per_class)
        self._residual: Tensor | None = None

    def start_epoch(self) -> None:
        """Forget the per-class rounding carried between batches (an epoch's quotas are exact on their own)."""
        self._residual = None

    def _primary(self, scores: Mapping[str, Sequence[Tensor]], peer: int, members: Tensor) -> Tensor:
        present = [name for name in self.rank_by if name in scores]
        if not present:
            raise KeyError(f"none of the rank_by scores {self.rank_by} is in this batch (have {sorted(scores)})")
        if len(present) == 1:
            return scores[present[0]][peer][members].float()
        ranks = torch.stack([rank_fractions(scores[name][peer][members].float()) for name in present])
        return torch.nanmean(ranks, dim=0)

    def _fills(self, scores: Mapping[str, Sequence[Tensor]], peer: int, members: Tensor) -> list[tuple[Tensor, float]]:
        return [(scores[name][peer][members], share) for name, share in self.fill.items() if name in scores]

    def select(
        self, scores: Mapping[str, Sequence[Tensor]], labels: Tensor, forget_rate: float | Tensor
    ) -> list[Tensor]:
        """Boolean keep masks, one per peer.

        Args:
            scores: ``{name: [per-peer (B,) scores]}``, lower = keep; must hold ``"loss"``.
            labels: (B,) given labels.
            forget_rate: one rate for the batch, or a (C,) tensor of per-class rates (``per_class`` only).
        """
        if "loss" not in scores:
            raise KeyError("scores must hold the per-sample 'loss'")
        num_peers = len(scores["loss"])
        batch = labels.numel()
        rates = torch.as_tensor(forget_rate, dtype=torch.float64)
        if not self.per_class:
            if rates.numel() != 1:
                raise ValueError("per-class forget rates need SelectionPolicy(per_class=True)")
            keep_count = num_to_keep(batch, float(rates))
            everyone = torch.arange(batch, device=labels.device)
            return [
                select_with_fills(self._primary(scores, k, everyone), keep_count, self._fills(scores, k, everyone))
                for k in range(num_peers)
            ]
        if rates.numel() == 1:
            seen = 0 if self._residual is None else self._residual.numel()
            num_classes = max(int(labels.max()) + 1 if batch else 1, seen)
            rates = rates.reshape(1).expand(num_classes)
        elif batch and int(labels.max()) >= rates.numel():
            raise ValueError(f"label {int(labels.max())} has no forget rate (got {rates.numel()} per-class rates)")
        counts, self._residual = class_keep_counts(labels, 1.0 - rates, self._residual)
        keep = [torch.zeros(batch, dtype=torch.bool, device=labels.device) for _ in range(num_peers)]
        for cls in torch.unique(labels).tolist():
            members = torch.nonzero(labels == cls).reshape(-1)
            count = int(counts[cls])
            for k in range(num_peers):
                picked = select_with_fills(self._primary(scores, k, members), count, self._fills(scores, k, members))
                keep[k][members[picked]] = True
        return keep
