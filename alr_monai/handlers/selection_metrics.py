"""Selection quality metrics: kept fractions always, precision and clean recall in simulation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

from alr_monai.algorithms.metrics import label_error_ranking, selection_metrics
from alr_monai.handlers.selection import SmallLossSelectionHandler


class SelectionMetricsHandler:
    """Puts selection precision, per-class clean recall and the label-error ranking into the epoch's metrics.

    The ranking (``label_error_auroc``, ``label_error_ap``, ``label_error_auroc/<class>`` per GIVEN class)
    scores the epoch's per-sample training loss, averaged over the peers: the criterion every co-teaching
    variant ranks by (within each given class under a per-class policy, which the per-class AUROC measures).

    Simulation only: ``true_labels`` come from the noise injection, and this handler (a metric) is one of the
    few readers of truth. Nothing it computes feeds back into training.

    Args:
        selection: the selection tracker.
        true_labels: ground truth by training index.
        class_names: names by class index.

    Memory: the true labels, 8 bytes per training sample (int64); the metrics are computed at each epoch end
    from the selection tracker's tensors, with temporaries of a few bytes per sample that are freed at once.
    """

    def __init__(
        self, selection: SmallLossSelectionHandler, true_labels: Sequence[int] | torch.Tensor, class_names: list[str]
    ) -> None:
        self.selection = selection
        self.true_labels = torch.as_tensor(true_labels).long().reshape(-1)
        self.class_names = list(class_names)
        self.last: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        seen = self.selection.seen
        if len(self.true_labels) != len(seen):
            raise ValueError(f"{len(self.true_labels)} true labels for {len(seen)} training samples")
        self.last = selection_metrics(
            self.selection.trusted()[seen],
            self.selection.labels[seen],
            self.true_labels[seen],
            len(self.class_names),
        )
        engine.state.metrics["selection_precision"] = self.last["precision"]
        engine.state.metrics["min_clean_recall"] = self.last["min_clean_recall"]
        for name, recall in zip(self.class_names, self.last["per_class_clean_recall"], strict=True):
            engine.state.metrics[f"clean_recall/{name}"] = recall
        losses = self.selection.mean_loss()[seen]
        finite = torch.isfinite(losses)
        if finite.any():
            ranking = label_error_ranking(
                losses[finite],
                self.selection.labels[seen][finite],
                self.true_labels[seen][finite],
                self.class_names,
            )
            engine.state.metrics.update(ranking)
