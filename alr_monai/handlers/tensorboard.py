"""TensorBoard scalars under one tag scheme: train/, val/, selection/, noise/ (and, per round, test/ and relabel/).

``engine.state.metrics`` and metrics.json keep the names the handlers give (``kept_fraction/<class>``,
``val_balanced_accuracy_macro_f1``); only the TensorBoard tags are grouped, so TensorBoard shows one section per
question: is it learning (train/), does it generalise (val/), what does it keep (selection/), how noisy does it
think the labels are (noise/). One metric has one tag: phase 2's recalibration epochs write the same tags as phase
1 (``val/balanced_accuracy``, ``train/loss``), their step continuing phase 1's epoch count, so each is one curve.
The relabel rounds are written by the driver into the run ``tensorboard/rounds`` with the labels spent as the
step, under the same tags (``val/balanced_accuracy``, ``test/balanced_accuracy``, ``relabel/pool_noise_rate``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events

from alr_monai.handlers.console import EpochLossMeter
from alr_monai.handlers.outputs import scalar_metrics

_PREFIX_GROUPS = (
    ("noise_rate", "noise"),
    ("forget_rate", "noise"),
    ("kept_fraction", "selection"),
    ("clean_recall", "selection"),
    ("min_clean_recall", "selection"),
    ("selection_precision", "selection"),
    ("label_error", "selection"),
    ("vog", "selection"),
)


def tensorboard_tag(name: str, key_metric: str | None = None) -> str:
    """The TensorBoard tag of a metric name.

    Args:
        name: a trainer metric (``kept_fraction/basophil``, ``noise_rate_estimate``, ``val_balanced_accuracy`` as
            phase 2's trainer holds it) or,
            with ``key_metric``, an evaluator metric (``val_balanced_accuracy``, ``val_balanced_accuracy_auroc``).
        key_metric: the evaluator's key metric name; None for trainer metrics.

    Returns:
        e.g. ``selection/kept_fraction/basophil``, ``noise/noise_rate_estimate``, ``noise/forget_rate``,
        ``val/balanced_accuracy``, ``val/auroc``, ``val/recall/basophil``.
    """
    if key_metric is not None:
        bare_key = key_metric.removeprefix("val_")
        if name == key_metric:
            return f"val/{bare_key}"
        if name.startswith(key_metric + "_"):  # ClassificationReport's extras: <key>_auroc, <key>_recall/<class>
            return f"val/{name[len(key_metric) + 1 :]}"
        return f"val/{name.removeprefix('val_')}"
    if name.startswith("val_"):  # a validation score a trainer holds (phase 2's recalibration)
        return f"val/{name.removeprefix('val_')}"
    for prefix, group in _PREFIX_GROUPS:
        if name.startswith(prefix):
            return f"{group}/{name}"
    return f"train/{name}"


def phase1_epochs(run_dir: str | Path) -> int:
    """Epochs phase 1 trained in ``run_dir`` (its metrics.json): phase 2's epochs are logged after them."""
    path = Path(run_dir) / "metrics.json"
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: cannot read phase 1's epoch count ({error}); run phase 1 first") from error


class TensorBoardScalars:
    """Writes a trainer's epoch scalars, and its evaluator's, under :func:`tensorboard_tag`'s scheme.

    At each trainer ``EPOCH_COMPLETED`` (attach it after the ``ValidationHandler`` and the handlers that set
    metrics): every numeric ``engine.state.metrics`` entry; ``<loss_group>/loss`` (epoch mean of the batch loss)
    and ``<loss_group>/loss_peer<k>`` (mean loss each peer learned from); ``<loss_group>/learning_rate``; and,
    when the evaluator ran this epoch, its metrics (``val/balanced_accuracy``, ``val/loss``, ``val/recall/<c>``).

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        evaluator: the validation evaluator (optional).
        optimizer: the trainer's optimizer, for the learning rate (optional).
        loss_group: tag group of the loss and learning-rate curves.
        step_offset: added to the epoch to make the step: phase 2 passes phase 1's epoch count
            (:func:`phase1_epochs`), so its recalibration epochs continue phase 1's curves.
    """

    def __init__(
        self,
        summary_writer: Any,
        evaluator: Engine | None = None,
        optimizer: Any = None,
        loss_group: str = "train",
        step_offset: int = 0,
    ) -> None:
        self.writer = summary_writer
        self.evaluator = evaluator
        self.optimizer = optimizer
        self.loss_group = loss_group
        self.step_offset = int(step_offset)
        self.losses = EpochLossMeter()

    def attach(self, engine: Engine) -> None:
        self.losses.attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        step = self.step_offset + engine.state.epoch
        for tag, value in self.scalars(engine).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def scalars(self, engine: Engine) -> dict[str, float]:
        """The tags and values written for the epoch ``engine`` just finished."""
        group = self.loss_group
        values: dict[str, float] = {}
        if self.losses.mean_loss is not None:
            values[f"{group}/loss"] = self.losses.mean_loss
        for k, loss in enumerate(self.losses.peer_means()):
            values[f"{group}/loss_peer{k}"] = loss
        if self.optimizer is not None:
            values[f"{group}/learning_rate"] = float(self.optimizer.param_groups[0]["lr"])
        values.update(_numeric(engine.state.metrics, None))
        evaluator = self.evaluator
        if evaluator is not None and evaluator.state.epoch == engine.state.epoch:  # it ran this epoch
            values.update(_numeric(evaluator.state.metrics, getattr(evaluator.state, "key_metric_name", None) or ""))
        return values


def _numeric(metrics: dict, key_metric: str | None) -> dict[str, float]:
    return {tensorboard_tag(name, key_metric): value for name, value in scalar_metrics(metrics).items()}
