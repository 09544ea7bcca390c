"""Estimate the label-noise rate from the data and hand it to the co-teaching schedule."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

from alr_monai.algorithms.noise_estimate import estimate_noise_rate
from alr_monai.handlers.selection import SmallLossSelectionHandler


class NoiseRateEstimateHandler:
    """After epoch ``estimate_epoch``, fit the loss distribution and estimate the noise rate.

    A hospital never knows its noise rate; the reference code set the forget rate to the injected truth. When
    the trainer's ``forget_rate`` is None, the estimate (clipped to ``max_rate``) becomes the forget rate; the
    ramp started at 0, so nothing was dropped before the estimate existed. The estimate is logged as
    ``noise_rate_estimate`` every time, and ``noise_rate_true`` too when a simulation supplies it.

    Args:
        selection: the tracker holding the epoch's per-sample losses and labels.
        num_classes: number of classes.
        estimate_epoch: 1-based epoch after which to estimate (after a short warm-up).
        method: estimator name passed to :func:`estimate_noise_rate`.
        per_class: fit within each labelled class (protects rare clean classes).
        max_rate: upper bound on the forget rate taken from the estimate.
        true_rate: the injected rate, in simulation only, for logging.
    """

    def __init__(
        self,
        selection: SmallLossSelectionHandler,
        num_classes: int,
        estimate_epoch: int = 2,
        method: str = "gmm",
        per_class: bool = True,
        max_rate: float = 0.9,
        true_rate: float | None = None,
    ) -> None:
        self.selection = selection
        self.num_classes = num_classes
        self.estimate_epoch = estimate_epoch
        self.method = method
        self.per_class = per_class
        self.max_rate = max_rate
        self.true_rate = true_rate
        self.estimate: float | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._apply_estimate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _apply_estimate(self, engine: Engine) -> None:
        # A resumed run restores the estimate from the checkpoint, but not the trainer's forget rate.
        if self.estimate is not None and getattr(engine, "forget_rate", 0.0) is None:
            engine.forget_rate = min(self.estimate, self.max_rate)

    def __call__(self, engine: Engine) -> None:
        if self.estimate is None and engine.state.epoch >= self.estimate_epoch:
            seen = self.selection.seen
            self.estimate = estimate_noise_rate(
                self.selection.mean_loss()[seen],
                self.selection.labels[seen],
                num_classes=self.num_classes,
                method=self.method,
                per_class=self.per_class,
            )
            message = f"noise rate estimate after epoch {engine.state.epoch}: {self.estimate:.3f}"
            if getattr(engine, "forget_rate", 0.0) is None:
                engine.forget_rate = min(self.estimate, self.max_rate)
                message += f" -> forget rate {engine.forget_rate:.3f}"
            if self.true_rate is not None:
                message += f" (simulation truth {self.true_rate:.3f})"
            self.logger.info(message)
        if self.estimate is not None:
            engine.state.metrics["noise_rate_estimate"] = self.estimate
        if self.true_rate is not None:
            engine.state.metrics["noise_rate_true"] = self.true_rate
        engine.state.metrics["forget_rate"] = engine.current_forget_rate(engine.state.epoch - 1)

    def state_dict(self) -> dict:
        return {"estimate": -1.0 if self.estimate is None else float(self.estimate)}

    def load_state_dict(self, state_dict: dict) -> None:
        estimate = float(state_dict["estimate"])
        self.estimate = None if estimate < 0 else estimate
