"""An Ignite metric that reports the whole classification picture for an evaluator."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from ignite.engine import Engine
from ignite.metrics import Metric

from alr_monai.algorithms.metrics import classification_metrics


def pred_label_transform(output: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``(pred, label)`` from a MONAI engine output (decollated list or batch dict)."""
    if isinstance(output, list):
        return torch.stack([o["pred"] for o in output]), torch.stack([torch.as_tensor(o["label"]) for o in output])
    return output["pred"], output["label"]


class ClassificationReport(Metric):
    """Balanced accuracy as the value, plus macro-F1, AUROC, MCC and per-class recall as extra scalars.

    The value under the attached name is balanced accuracy (the key metric for checkpoint choice under class
    imbalance); ``<name>_macro_f1``, ``<name>_auroc``, ``<name>_mcc``, ``<name>_accuracy``, ``<name>_loss`` (cross-entropy) and
    ``<name>_recall/<class>`` are added beside it, and the full report (with the confusion matrix) is kept in
    ``self.report`` for image logging.

    Args:
        class_names: names by class index.
        output_transform: maps the engine output to ``(logits, labels)``.
    """

    def __init__(self, class_names: Sequence[str], output_transform: Callable = pred_label_transform) -> None:
        self.class_names = list(class_names)
        self.report: dict = {}
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        logits, labels = output
        self._logits.append(torch.as_tensor(logits).detach().float().cpu().reshape(len(labels), -1))
        self._labels.append(torch.as_tensor(labels).detach().long().cpu().reshape(-1))

    def compute(self) -> float:
        if not self._labels:
            raise RuntimeError("ClassificationReport needs at least one batch before compute()")
        logits = torch.cat(self._logits)
        labels = torch.cat(self._labels)
        probs = torch.softmax(logits, dim=1)
        self.report = classification_metrics(labels, probs.argmax(1), probs, num_classes=len(self.class_names))
        # the model's prediction as deployed (the peers' summed logits), so val/loss tracks what is shipped
        self.report["loss"] = float(torch.nn.functional.cross_entropy(logits, labels))
        return float(self.report["balanced_accuracy"])

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        for key in ("macro_f1", "auroc", "mcc", "accuracy", "loss"):
            engine.state.metrics[f"{name}_{key}"] = float(self.report[key])
        for class_name, recall in zip(self.class_names, self.report["per_class_recall"], strict=True):
            engine.state.metrics[f"{name}_recall/{class_name}"] = float(recall)
