"""Per-sample small-loss selection tracker for the co-teaching trainer."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

from alr_monai.algorithms.metrics import per_class_kept_fraction
from alr_monai.engines.coteaching import CoTeachingEvents

TRUSTED_RULES = ("any", "all", "class_cut")


class SmallLossSelectionHandler:
    """Records every sample's per-peer loss and selection in each epoch, keyed on the batch ``index``.

    At the end of an epoch the epoch's record of each sample it drew replaces that sample's "last completed"
    record, from which the trusted set is read by ``trusted_rule``. A shuffling sampler draws every sample every
    epoch, so the record is that epoch's; a class-balanced sampler (drawing with replacement) leaves some of a
    large class out of any one epoch, and those keep the record of the last epoch that drew them. A sample no
    epoch has drawn yet has no loss and is never trusted:

    - ``"any"`` / ``"all"``: samples kept in their batch by any peer / by every peer;
    - ``"class_cut"``: within each GIVEN class, the ``1 - rate`` share with the smallest epoch loss (mean over
      peers), at the class's forget rate in force that epoch (the trainer's per-class rates, else its one
      rate). One cut over the whole epoch ranks each sample against its whole class instead of a handful of
      batch mates, and it keeps each class's estimated clean count instead of the union of two peers' picks.

    Per-class kept fractions (by GIVEN label, no truth needed) go to ``engine.state.metrics`` as
    ``kept_fraction/<class>``.

    Args:
        num_samples: size of the training set (indices run 0..num_samples-1).
        num_peers: number of peers trained.
        class_names: class names by index, used for metric names.
        trusted_rule: one of :data:`TRUSTED_RULES`.
        ids: every sample's id, known before training (the batches' ids fill them otherwise, so a sample never
            drawn would have none: selection.csv must name every sample for phase 2 to match it).
        labels: every sample's GIVEN label, known before training (as ``ids``).

    Memory (per training sample, P peers): the label 8 bytes, the last completed and the running epoch's
    losses 2 x P x 4 bytes, kept flags 2 x P bytes and seen flags 2 bytes (30 bytes for P = 2), plus the sample
    id as a Python str (about 8 + 49 + len(id) bytes for an ASCII id). No history across epochs is kept: the
    running epoch's record replaces the last completed one (sample by sample). See :meth:`state_bytes`.
    """

    def __init__(
        self,
        num_samples: int,
        num_peers: int,
        class_names: list[str],
        trusted_rule: str = "any",
        ids: Sequence[str] | None = None,
        labels: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        if trusted_rule not in TRUSTED_RULES:
            raise ValueError(f"trusted_rule must be one of {TRUSTED_RULES}, got {trusted_rule!r}")
        for name, given in (("ids", ids), ("labels", labels)):
            if given is not None and len(given) != num_samples:
                raise ValueError(f"{len(given)} {name} for a training set of {num_samples} samples")
        self.num_samples = num_samples
        self.num_peers = num_peers
        self.class_names = list(class_names)
        self.trusted_rule = trusted_rule
        self.labels = torch.full((num_samples,), -1, dtype=torch.long)
        self.losses = torch.full((num_peers, num_samples), float("nan"))
        self.kept = torch.zeros((num_peers, num_samples), dtype=torch.bool)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)
        self.ids: list[str] = [""] * num_samples if ids is None else [str(i) for i in ids]
        if labels is not None:
            self.labels.copy_(torch.as_tensor(labels).long().reshape(-1))
        self.completed_epoch = 0
        # the forget rate of each class in the last completed epoch ("class_cut")
        self.cut_rates = torch.zeros(len(self.class_names), dtype=torch.float64)
        self._epoch_losses = self.losses.clone()
        self._epoch_kept = self.kept.clone()
        self._epoch_seen = self.seen.clone()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset_epoch)
        engine.add_event_handler(CoTeachingEvents.SELECTION_COMPLETED, self._record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete_epoch)

    def _reset_epoch(self, _engine: Engine) -> None:
        self._epoch_losses.fill_(float("nan"))
        self._epoch_kept.zero_()
        self._epoch_seen.zero_()

    def _record(self, engine: Engine) -> None:
        output = engine.state.output
        index = output["index"].cpu()
        if index.numel() and (int(index.max()) >= self.num_samples or int(index.min()) < 0):
            raise IndexError(f"batch index {int(index.max())} outside the training set of {self.num_samples}")
        self.labels[index] = output["label"].cpu()
        for k in range(self.num_peers):
            self._epoch_losses[k, index] = output["losses"][k].float().cpu()
            self._epoch_kept[k, index] = output["keep"][k].cpu()
        self._epoch_seen[index] = True
        ids = output.get("id")  # the global batch's ids (several processes), else the batch's own
        if ids is None and isinstance(engine.state.batch, dict):
            ids = engine.state.batch.get("id")
        if ids is not None:
            for i, sample_id in zip(index.tolist(), ids, strict=True):
                self.ids[i] = str(sample_id)

    def _complete_epoch(self, engine: Engine) -> None:
        drawn = self._epoch_seen  # every sample when shuffling; a class-balanced epoch leaves some out
        self.losses[:, drawn] = self._epoch_losses[:, drawn]
        self.kept[:, drawn] = self._epoch_kept[:, drawn]
        self.seen |= drawn
        self.completed_epoch = engine.state.epoch
        self.cut_rates = self._rates_in_force(engine)
        fractions = per_class_kept_fraction(self.trusted(), self.labels, len(self.class_names))
        for name, fraction in zip(self.class_names, fractions, strict=True):
            engine.state.metrics[f"kept_fraction/{name}"] = fraction
        engine.state.metrics["kept_fraction"] = (
            float(self.trusted()[self.seen].float().mean()) if self.seen.any() else 0.0
        )

    def _rates_in_force(self, engine: Engine) -> torch.Tensor:
        epoch = engine.state.epoch - 1
        per_class = getattr(engine, "current_class_forget_rates", lambda _epoch: None)(epoch)
        if per_class is not None:
            return torch.as_tensor(per_class, dtype=torch.float64).reshape(-1)
        rate = float(getattr(engine, "current_forget_rate", lambda _epoch: 0.0)(epoch))
        return torch.full((len(self.class_names),), rate, dtype=torch.float64)

    def trusted(self) -> torch.Tensor:
        """Boolean (N,) mask of samples selected in the last completed epoch under ``trusted_rule``."""
        if self.trusted_rule == "class_cut":
            return self._class_cut()
        trusted = self.kept.any(0) if self.trusted_rule == "any" else self.kept.all(0)
        return trusted & self.seen

    def _class_cut(self) -> torch.Tensor:
        trusted = torch.zeros(self.num_samples, dtype=torch.bool)
        loss = self.mean_loss()
        for cls in range(len(self.class_names)):
            members = torch.nonzero(self.seen & (self.labels == cls)).reshape(-1)
            count = round(members.numel() * (1.0 - float(self.cut_rates[cls])))
            order = torch.argsort(loss[members], stable=True)
            trusted[members[order[:count]]] = True
        return trusted

    def mean_loss(self) -> torch.Tensor:
        """(N,) loss averaged over peers in the last completed epoch (NaN for unseen samples)."""
        return self.losses.mean(0)

    def state_bytes(self) -> int:
        """Bytes of per-sample state held now: the tensors plus the sample-id strings and their list."""
        tensors = (self.labels, self.losses, self.kept, self.seen, self._epoch_losses, self._epoch_kept)
        tensor_bytes = sum(t.numel() * t.element_size() for t in (*tensors, self._epoch_seen))
        # interned or shared strings are counted each time: an upper bound
        return tensor_bytes + sys.getsizeof(self.ids) + sum(sys.getsizeof(i) for i in self.ids)

    def state_dict(self) -> dict:
        return {
            "labels": self.labels,
            "losses": self.losses,
            "kept": self.kept,
            "seen": self.seen,
            "ids": list(self.ids),
            "completed_epoch": self.completed_epoch,
            "cut_rates": self.cut_rates,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict["losses"].shape != self.losses.shape:
            raise ValueError(
                f"selection state is for {tuple(state_dict['losses'].shape)} (peers, samples), "
                f"this run has {tuple(self.losses.shape)}"
            )
        self.labels.copy_(state_dict["labels"])
        self.losses.copy_(state_dict["losses"])
        self.kept.copy_(state_dict["kept"])
        self.seen.copy_(state_dict["seen"])
        self.ids = [str(i) for i in state_dict["ids"]]
        self.completed_epoch = int(state_dict["completed_epoch"])
        if "cut_rates" in state_dict:  # checkpoints from before the class cut lack it
            self.cut_rates = state_dict["cut_rates"].to(torch.float64).clone()
