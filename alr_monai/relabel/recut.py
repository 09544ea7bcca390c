"""The expert corrects phase 1's noise estimate, and the trusted set is re-cut with the corrected rates.

Phase 1 estimates each given class's noise rate without a single verified label, and cuts the class at that rate:
the trusted set is the class's lowest-loss share. An estimate read off a weak network (or one that real,
class-dependent noise fools) leaves that cut wrong for the whole of phase 2. The expert's answers are the one
unbiased measurement of the noise the run ever gets, provided they answer RANDOM members of each part: in the
first round, a small audit draws ``per_class`` samples of each given class at random from phase 1's trusted set and
as many from its suspected pool (they count within the round's budget; the acquisition picks the rest). Their
answers measure each part's wrong share, :func:`~alr_monai.algorithms.noise_estimate.expert_corrected_rates`
updates the class's rate, and from then on the trusted set is each class's lowest phase-1-loss share of its
unanswered samples at the corrected rate (never below ``min_keep`` of them), so a class whose trusted set the audit
finds dirty is cut harder, and one whose pool the audit finds clean gives its clean samples back. Answered
samples train with the expert's label whatever the cut says.

Everything here is a deterministic function of phase 1's outputs, the seed and the answers, so nothing new is
kept in ``state.json`` except which samples the audit drew (``relabel/audit_draws.json``, written atomically with
the round's query); ``alr recover`` and a resumed run rebuild the same cut.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from alr_monai.algorithms.noise_estimate import expert_corrected_rates
from alr_monai.utils import atomic_write_json

__all__ = ["TrustedRecut"]

AUDIT_FILE = "audit_draws.json"


class TrustedRecut:
    """The round-1 audit draw, the expert-corrected per-class noise rates and the re-cut trusted set.

    Args:
        relabel_dir: the run's ``relabel/`` folder (where the audit draws are kept).
        given_labels: phase 1's given labels by training index.
        phase1_trusted: phase 1's trusted mask.
        phase1_losses: each sample's phase-1 loss (NaN where unknown: such samples are cut first).
        prior_rates: (C,) the per-class rates phase 1 cut at.
        per_class: audit draws per given class from each part (0 = no audit, phase 1's cut is kept).
        prior_strength: pseudo-answers the phase-1 estimate is worth within each part.
        min_keep: the least share of a class's unanswered samples the re-cut keeps.
        seed: the run's seed (the draw is seeded by it).
    """

    def __init__(
        self,
        relabel_dir: str | Path,
        given_labels: Sequence[int],
        phase1_trusted: Sequence[bool],
        phase1_losses: Sequence[float],
        prior_rates: Sequence[float],
        per_class: int = 0,
        prior_strength: float = 4.0,
        min_keep: float = 0.1,
        seed: int = 0,
    ) -> None:
        if per_class < 0:
            raise ValueError(f"per_class must be >= 0, got {per_class}")
        if not 0.0 <= min_keep <= 1.0:
            raise ValueError(f"min_keep must be in [0, 1], got {min_keep}")
        if not len(given_labels) == len(phase1_trusted) == len(phase1_losses):
            raise ValueError("given labels, trusted flags and losses: one of each per training sample")
        self.path = Path(relabel_dir) / AUDIT_FILE
        self.given = torch.as_tensor(list(given_labels), dtype=torch.long)
        self.trusted = torch.as_tensor(list(phase1_trusted), dtype=torch.bool)
        self.losses = torch.nan_to_num(torch.as_tensor(list(phase1_losses), dtype=torch.float64), nan=math.inf)
        self.prior_rates = torch.as_tensor(list(prior_rates), dtype=torch.float64)
        self.num_classes = len(self.prior_rates)
        self.per_class = int(per_class)
        self.prior_strength = float(prior_strength)
        self.min_keep = float(min_keep)
        self.seed = int(seed)

    @property
    def enabled(self) -> bool:
        return self.per_class > 0

    @property
    def most_labels(self) -> int:
        """The most labels :meth:`draw` can ask: ``per_class`` from each part (trusted set, pool) of every class."""
        return 2 * self.per_class * self.num_classes

    # ------------------------------------------------------------------------------------------ the audit draw
    def draws(self) -> dict[str, list[int]]:
        """The audit's samples by part (``trusted``, ``pool``), as training indices; empty before the draw."""
        if not self.path.is_file():
            return {"trusted": [], "pool": []}
        try:
            data = json.loads(self.path.read_text())
            return {"trusted": [int(i) for i in data["trusted"]], "pool": [int(i) for i in data["pool"]]}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{self.path}: not an audit draw file ({error}); delete it to draw again") from error

    def draw(self, answerable: Sequence[bool], round_index: int) -> list[int]:
        """Draw the audit (once, in the first round that asks): ``per_class`` random samples of each given class
        from phase 1's trusted set and as many from its pool, among the samples still ``answerable``. Returns
        the drawn training indices (empty when disabled or already drawn)."""
        if not self.enabled or self.path.is_file():
            return []
        generator = torch.Generator().manual_seed(self.seed * 7919 + round_index)
        open_mask = torch.as_tensor(list(answerable), dtype=torch.bool)
        parts: dict[str, list[int]] = {"trusted": [], "pool": []}
        for c in range(self.num_classes):
            for part, mask in (("trusted", self.trusted), ("pool", ~self.trusted)):
                members = torch.nonzero(mask & open_mask & (self.given == c)).reshape(-1)
                order = torch.randperm(len(members), generator=generator)[: self.per_class]
                parts[part].extend(int(i) for i in members[order])
        atomic_write_json(self.path, {"round": round_index, **parts})
        return parts["trusted"] + parts["pool"]

    # ------------------------------------------------------------------------------------------ the correction
    def corrected_rates(self, current_labels: Sequence[int], answered: Sequence[bool]) -> torch.Tensor:
        """(C,) per-class noise rates corrected by the audit's answers (the prior before any answer)."""
        current = torch.as_tensor(list(current_labels), dtype=torch.long)
        done = torch.as_tensor(list(answered), dtype=torch.bool)
        sizes = torch.bincount(self.given, minlength=self.num_classes)
        pool_sizes = torch.bincount(self.given[~self.trusted], minlength=self.num_classes)
        counts = {}
        for part, indices in self.draws().items():
            index = torch.as_tensor(indices, dtype=torch.long)
            index = index[done[index]] if index.numel() else index
            wrong = current[index] != self.given[index]  # changed or excluded (-1)
            counts[part] = (
                torch.bincount(self.given[index], minlength=self.num_classes),
                torch.bincount(self.given[index][wrong], minlength=self.num_classes),
            )
        return expert_corrected_rates(
            self.prior_rates,
            sizes,
            pool_sizes,
            counts["pool"][0],
            counts["pool"][1],
            counts["trusted"][0],
            counts["trusted"][1],
            self.prior_strength,
        )

    def trusted_mask(self, current_labels: Sequence[int], answered: Sequence[bool]) -> list[bool]:
        """The re-cut trusted set: answered samples (not excluded), plus each class's lowest-loss unanswered
        share at its corrected rate. Phase 1's trusted set (with the answers) while disabled or before the
        audit's answers exist."""
        current = torch.as_tensor(list(current_labels), dtype=torch.long)
        done = torch.as_tensor(list(answered), dtype=torch.bool)
        audited = self.draws()
        audit_answered = any(bool(done[i]) for part in audited.values() for i in part)
        if not self.enabled or not audit_answered:
            return [bool(t) or bool(d and c >= 0) for t, d, c in zip(self.trusted, done, current, strict=True)]
        rates = self.corrected_rates(current_labels, answered)
        keep = done & (current >= 0)
        for c in range(self.num_classes):
            in_class = self.given == c
            size = int(in_class.sum())
            if size == 0:
                continue
            found_wrong = int((in_class & done & (current != self.given)).sum())
            remaining_wrong = max(float(rates[c]) * size - found_wrong, 0.0)
            unanswered = torch.nonzero(in_class & ~done).reshape(-1)
            count = len(unanswered)
            kept = max(round(count - remaining_wrong), math.ceil(self.min_keep * count))
            order = torch.argsort(self.losses[unanswered], stable=True)[: min(kept, count)]
            keep[unanswered[order]] = True
        return [bool(k) for k in keep]

    def simulation_metrics(self, current_labels: Sequence[int], answered: Sequence[bool], truth: Sequence[int]) -> dict:
        """The corrected estimate against the truth of each given class (simulation only: reported, never used)."""
        truth_t = torch.as_tensor(list(truth), dtype=torch.long)
        rates = self.corrected_rates(current_labels, answered)
        true_rates, sizes = [], []
        for c in range(self.num_classes):
            in_class = self.given == c
            sizes.append(int(in_class.sum()))
            true_rates.append(float((truth_t[in_class] != c).double().mean()) if sizes[-1] else math.nan)
        present = [c for c in range(self.num_classes) if sizes[c]]
        total = sum(sizes)
        return {
            "noise_estimate": sum(float(rates[c]) * sizes[c] for c in present) / max(total, 1),
            "noise_estimate_class_mae": sum(abs(float(rates[c]) - true_rates[c]) for c in present) / len(present),
            "noise_estimate_phase1_class_mae": sum(abs(float(self.prior_rates[c]) - true_rates[c]) for c in present)
            / len(present),
        }
