"""Per-run outputs: selection.csv, metrics.json and TensorBoard images."""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from alr_monai.handlers.metrics import ClassificationReport
from alr_monai.handlers.selection import SmallLossSelectionHandler
from alr_monai.handlers.vog import VoGHandler
from alr_monai.plots import confusion_matrix_figure, figure_to_array, per_class_bars
from alr_monai.utils import atomic_write_csv, atomic_write_json

SELECTION_COLUMNS = ["id", "index", "given_label", "loss", "vog", "kept_by_net1", "kept_by_net2", "trusted"]


def scalar_metrics(metrics: dict) -> dict:
    """The numeric entries of an engine's ``state.metrics`` as floats (booleans, lists and tensors left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class SelectionCSVWriter:
    """Writes ``selection.csv`` (one row per training sample) at the end of every epoch, atomically.

    Columns: id, index, given_label, loss (mean over peers), vog (mean over peers, empty until two epochs are
    recorded), kept_by_net1, kept_by_net2 (empty with one peer), trusted.
    """

    def __init__(
        self, selection: SmallLossSelectionHandler, output_dir: str | Path, vog: VoGHandler | None = None
    ) -> None:
        self.selection = selection
        self.vog = vog
        self.path = Path(output_dir) / "selection.csv"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, _engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        selection = self.selection
        loss = selection.mean_loss()
        vog = self.vog.scores() if self.vog is not None else torch.full_like(loss, float("nan"))
        # Python lists once: indexing tensors element by element cost 40 ms an epoch for 2,800 samples.
        losses, vogs = loss.tolist(), vog.tolist()
        labels, trusted = selection.labels.tolist(), selection.trusted().tolist()
        kept = [[int(value) for value in peer] for peer in selection.kept.tolist()]
        rows = [
            {
                "id": selection.ids[i],
                "index": i,
                "given_label": int(labels[i]),
                "loss": _blank_nan(losses[i]),
                "vog": _blank_nan(vogs[i]),
                "kept_by_net1": kept[0][i],
                "kept_by_net2": kept[1][i] if len(kept) > 1 else "",
                "trusted": int(trusted[i]),
            }
            for i in range(selection.num_samples)
        ]
        atomic_write_csv(self.path, rows, SELECTION_COLUMNS)


def _blank_nan(value: float) -> float | str:
    return "" if math.isnan(value) else value


class MetricsJSONWriter:
    """Writes ``metrics.json`` after every epoch: the trainer's and the evaluator's latest scalar metrics,
    the best validation metric and its epoch, and a per-epoch history.

    A resumed run starts with an empty ``engine.state.metrics``, so its keys would be inserted in another order
    than in the uninterrupted run (``vog_mean`` moved up) and a metric not recomputed every epoch would be missing;
    the first epoch after a resume therefore starts from the last recorded epoch's metrics, as the uninterrupted
    run's dict does, and metrics.json and the checkpoints' history end byte-identical.
    """

    def __init__(self, output_dir: str | Path, evaluator: Engine | None = None, extra: dict | None = None) -> None:
        self.path = Path(output_dir) / "metrics.json"
        self.evaluator = evaluator
        self.extra = dict(extra or {})
        self.history: list[dict] = []
        self._carried = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_STARTED, self._carry_over)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _start(self, engine: Engine) -> None:
        self._carried = False

    def _carry_over(self, engine: Engine) -> None:
        # EPOCH_STARTED, not STARTED: the checkpointer restores the history at STARTED, after this handler's turn
        if self._carried:
            return
        self._carried = True
        previous = [h for h in self.history if h["epoch"] == engine.state.epoch - 1]
        if previous:
            for name, value in previous[-1]["train"].items():
                engine.state.metrics.setdefault(name, value)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        entry = {"epoch": engine.state.epoch, "train": scalar_metrics(engine.state.metrics)}
        if self.evaluator is not None and self.evaluator.state.metrics:
            entry["val"] = scalar_metrics(self.evaluator.state.metrics)
        self.history = [h for h in self.history if h["epoch"] < engine.state.epoch] + [entry]
        summary = {"epoch": engine.state.epoch, **self.extra, "last": entry, "history": self.history}
        if self.evaluator is not None:
            summary["best_val_metric"] = getattr(self.evaluator.state, "best_metric", None)
            summary["best_val_epoch"] = getattr(self.evaluator.state, "best_metric_epoch", None)
        atomic_write_json(self.path, summary)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])


class TensorBoardImageHandler:
    """Logs per-class bar charts (kept fraction, clean recall, validation recall) and the validation confusion
    matrix as TensorBoard images at the end of each trainer epoch.

    The charts are drawn off the training loop: the handler copies the epoch's values and a background thread
    renders the matplotlib figures and writes them (about 0.5-0.8 s a time on a 2-core CPU, which the loop used to
    wait for), one chart set at a time and in epoch order. The run's end (``COMPLETED``) waits for what is pending,
    so every image is written when ``run()`` returns; an error in the thread is raised there.

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (shared with the scalar handler).
        class_names: names by class index.
        report: the evaluator's :class:`ClassificationReport` (optional).
        interval: log every ``interval`` epochs; the last epoch is always logged.
        background: render in a background thread (False: in the training loop, as before).
    """

    def __init__(
        self,
        summary_writer,
        class_names: list[str],
        report: ClassificationReport | None = None,
        interval: int = 1,
        background: bool = True,
    ) -> None:
        self.writer = summary_writer
        self.class_names = list(class_names)
        self.report = report
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.interval = interval
        self.background = bool(background)
        self._logged_epoch = -1
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.wait)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if idist.get_rank() != 0 or epoch == self._logged_epoch:  # the last epoch may fire twice
            return
        self._logged_epoch = epoch
        charts = self._charts(engine.state.metrics, epoch)
        if not self.background:
            self._render(charts, epoch)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alr-tensorboard-images")
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        self._pending.append(self._executor.submit(self._render, charts, epoch))

    def _charts(self, metrics: dict, epoch: int) -> list[tuple[str, str, tuple]]:
        """This epoch's charts as (tag, kind, arguments), values copied so later epochs cannot change them."""
        charts = []
        for prefix, label in (("kept_fraction", "kept fraction"), ("clean_recall", "clean recall")):
            values = [float(metrics.get(f"{prefix}/{name}", float("nan"))) for name in self.class_names]
            if not all(math.isnan(v) for v in values):
                charts.append((f"selection/per_class_{prefix}", "bars", (values, f"{label}, epoch {epoch}", label)))
        if self.report is not None and self.report.report:
            recall = [float(v) for v in self.report.report["per_class_recall"]]
            charts.append(("val/per_class_recall", "bars", (recall, f"validation recall, epoch {epoch}", "recall")))
            matrix = [[int(c) for c in row] for row in self.report.report["confusion_matrix"]]
            charts.append(("val/confusion_matrix", "matrix", (matrix, f"validation, epoch {epoch}")))
        return charts

    def _render(self, charts: list[tuple[str, str, tuple]], epoch: int) -> None:
        for tag, kind, args in charts:
            if kind == "bars":
                values, title, label = args
                figure = per_class_bars(values, self.class_names, title, label)
            else:
                matrix, title = args
                figure = confusion_matrix_figure(matrix, self.class_names, title)
            self.writer.add_image(tag, figure_to_array(figure), epoch, dataformats="HWC")
        self.writer.flush()

    def wait(self, _engine: Engine | None = None) -> None:
        """Block until every chart set handed to the background thread is written; re-raise its error, if any."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()
