"""What a person watching the console sees: one line per epoch, and a progress bar within it on a terminal."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import torch
from ignite.engine import Engine, Events

from alr_monai.distributed import is_main_process


def format_duration(seconds: float) -> str:
    """``seconds`` as ``"42 s"``, ``"6 min 12 s"`` or ``"1 h 05 min"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class EpochLossMeter:
    """Accumulates, over one epoch, the mean loss each peer learned from and the kept fraction.

    Reads CoTeachingTrainer's ``output["losses"]`` (per-peer, per-sample) and ``output["keep"]`` (per-peer
    masks): peer k learns from the samples its peer kept (a single network from its own choice). An engine
    without them (a plain trainer) gives the mean of ``output["loss"]`` as one peer.
    """

    def __init__(self) -> None:
        self._start()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._start())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)

    def _start(self) -> None:
        self._sums: list[float] = []
        self._counts: list[int] = []
        self._batch_loss_sum, self._batches = 0.0, 0
        self.kept = self.seen = 0

    def update(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, dict):
            return
        batch_loss = _scalar_loss(output)
        self._batch_loss_sum += batch_loss
        self._batches += 1
        losses, keep = output.get("losses"), output.get("keep")
        if losses is None or keep is None:
            self._add(0, batch_loss, 1)
            return
        for k, loss in enumerate(losses):
            chosen = keep[(k + 1) % len(losses)]
            count = int(chosen.sum())
            if count:
                self._add(k, float(loss[chosen].sum()), count)
        self.kept += sum(int(mask.sum()) for mask in keep)
        self.seen += sum(int(mask.numel()) for mask in keep)

    def _add(self, peer: int, total: float, count: int) -> None:
        while len(self._sums) <= peer:
            self._sums.append(0.0)
            self._counts.append(0)
        self._sums[peer] += total
        self._counts[peer] += count

    def peer_means(self) -> list[float]:
        """Mean loss each peer learned from this epoch (peers that learned from nothing are left out)."""
        return [total / count for total, count in zip(self._sums, self._counts, strict=True) if count]

    @property
    def mean_loss(self) -> float | None:
        """Epoch mean of the engine's batch loss (``output["loss"]``), None before the first batch."""
        return self._batch_loss_sum / self._batches if self._batches else None

    @property
    def kept_fraction(self) -> float | None:
        return self.kept / self.seen if self.seen else None


class EpochSummaryPrinter:
    """Prints one line per training epoch and, on a terminal, a progress bar within the epoch.

    The line: epoch/total, the mean loss each peer learned from (the samples its peer kept), the kept fraction,
    the forget rate, the validation metric with the best so far, the epoch's time and the ETA of the run, e.g.::

        epoch  3/30 | loss 0.812 0.795 | kept 0.62 | forget 0.38 | val 0.712 (best 0.731 @ 2) | 14.2 s | ETA 6 min 12 s

    Attach it after the ``ValidationHandler`` (later in ``train_handlers``) so the epoch's validation has run.
    The bar (ignite's ``ProgressBar``, which needs tqdm) goes to stderr and only when stderr is a terminal, so CI
    logs and redirected output get the plain lines alone.

    Args:
        evaluator: the validation evaluator whose ``metric_name`` is shown; None shows no validation column.
        metric_name: key of ``evaluator.state.metrics`` (default: the evaluator's key metric); without an
            evaluator, a key of the trainer's ``engine.state.metrics`` shown as ``val`` (phase 2's
            ``val_balanced_accuracy``), or None for no validation column.
        prefix: put before every line (e.g. ``"recalibration"``).
        progress_bar: True / False, or None (default) for "when stderr is a terminal".
        stream: where the lines go (default: stdout).
        show_selection: show ``kept`` and ``forget`` (False where nothing is forgotten, as in phase 2's
            trusted-set recalibration, where they would always read 1.00 and 0.00).
        schedule: what the line calls an epoch and how many are left, for an engine that stops before
            ``max_epochs`` (phase 2 stops at each query): an object with ``epoch_label(epoch) -> str`` (e.g.
            ``"round 2 epoch 1/3"``) and ``epochs_left(epoch) -> int`` (epochs this command will still run after
            ``epoch``, for the ETA). None: ``epoch k/max_epochs`` and the ETA to ``max_epochs``.
    """

    def __init__(
        self,
        evaluator: Engine | None = None,
        metric_name: str | None = None,
        prefix: str = "",
        progress_bar: bool | None = None,
        stream: TextIO | None = None,
        show_selection: bool = True,
        schedule: Any = None,
    ) -> None:
        self.evaluator = evaluator
        self.metric_name = metric_name
        self.prefix = prefix
        self.progress_bar = progress_bar
        self.stream = stream
        self.show_selection = show_selection
        self.schedule = schedule
        self.losses = EpochLossMeter()
        self._epoch_started = 0.0
        self._epoch_times: list[float] = []

    def attach(self, engine: Engine) -> None:
        self.losses.attach(engine)
        if not is_main_process():  # one console: rank 0's
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        show_bar = self.progress_bar if self.progress_bar is not None else _stderr_is_terminal()
        if show_bar:
            from ignite.handlers import ProgressBar

            # attached before the epoch line, so the bar is cleared (at EPOCH_COMPLETED) before the line prints
            bar = ProgressBar(persist=False, desc=self.prefix) if self.prefix else ProgressBar(persist=False)
            bar.attach(engine, output_transform=lambda output: {"loss": _scalar_loss(output)})
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._print_epoch)

    def _start_epoch(self, engine: Engine) -> None:
        self._epoch_started = time.perf_counter()

    def _print_epoch(self, engine: Engine) -> None:
        elapsed = time.perf_counter() - self._epoch_started
        self._epoch_times.append(elapsed)
        print(self.epoch_line(engine, elapsed), file=self.stream or sys.stdout, flush=True)

    def epoch_line(self, engine: Engine, elapsed: float) -> str:
        """The summary line of the epoch ``engine`` just finished."""
        state = engine.state
        if self.schedule is not None:
            label = self.schedule.epoch_label(state.epoch)
            remaining = int(self.schedule.epochs_left(state.epoch))
        else:
            width = len(str(state.max_epochs))
            label = f"epoch {state.epoch:>{width}}/{state.max_epochs}"
            remaining = state.max_epochs - state.epoch
        parts = [f"{self.prefix + ' ' if self.prefix else ''}{label}"]
        means = self.losses.peer_means()
        if means:
            parts.append("loss " + " ".join(f"{m:.3f}" for m in means))
        if self.show_selection and self.losses.kept_fraction is not None:
            parts.append(f"kept {self.losses.kept_fraction:.2f}")
        forget_rate = getattr(engine, "current_forget_rate", None)
        if self.show_selection and callable(forget_rate):
            parts.append(f"forget {float(forget_rate()):.2f}")
        parts.extend(self._validation_part(engine))
        parts.append(format_duration(elapsed))
        if remaining > 0:
            recent = self._epoch_times[-5:]  # the last epochs: the first one pays for caching and warm-up
            parts.append(f"ETA {format_duration(remaining * sum(recent) / len(recent))}")
        return " | ".join(parts)

    def _validation_part(self, engine: Engine) -> list[str]:
        if self.evaluator is None:
            value = engine.state.metrics.get(self.metric_name) if self.metric_name else None
            if value is None or not isinstance(value, (int, float)) or math.isnan(value):
                return []
            return [f"val {value:.3f}"]
        state = self.evaluator.state
        name = self.metric_name or getattr(state, "key_metric_name", None)
        value = state.metrics.get(name) if name else None
        if value is None or not isinstance(value, (int, float)) or math.isnan(value):
            return []
        text = f"val {value:.3f}"
        best, best_epoch = getattr(state, "best_metric", None), getattr(state, "best_metric_epoch", -1)
        if best is not None and best_epoch is not None and best_epoch >= 0:
            text += f" (best {best:.3f} @ {best_epoch})"
        return [text]


def _scalar_loss(output: Any) -> float:
    loss = output.get("loss") if isinstance(output, dict) else output
    return float(loss.detach().mean()) if isinstance(loss, torch.Tensor) else float(loss or 0.0)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
