"""Phase-1 stability: a cosine learning rate and an exponential moving average of the weights.

Thin Ignite adapters over :mod:`alr_monai.algorithms.stability` (the recalibration rounds use the same two
functions). Both are pure functions of the trainer's iteration plus state a checkpoint holds, so a resumed run
trains and validates exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy

import torch
from ignite.engine import Engine, Events

from alr_monai.algorithms.stability import LR_SCHEDULES, WeightAverage, cosine_learning_rate


class LearningRateScheduleHandler:
    """Sets the optimiser's learning rate before every iteration from the trainer's position in the run.

    "cosine" anneals from ``base_lr`` at the first iteration to ``base_lr * min_lr_fraction`` at the last
    (``total_epochs x epoch_length`` iterations); "constant" leaves the optimiser alone. The rate depends only on
    the iteration number, which a checkpoint restores, so no scheduler state needs saving. By default the
    schedule spans the trainer's ``max_epochs``: a run resumed with a larger ``max_epochs`` stretches what is left
    of it.

    Args:
        optimizer: the phase-1 optimiser (every parameter group gets the same rate).
        base_lr: the rate at the start.
        schedule: one of :data:`~alr_monai.algorithms.stability.LR_SCHEDULES`.
        min_lr_fraction: the last iteration's rate as a share of ``base_lr``.
        total_epochs: the epochs the schedule spans; None: the trainer's ``max_epochs``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        schedule: str = "constant",
        min_lr_fraction: float = 0.0,
        total_epochs: int | None = None,
    ) -> None:
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
        if not 0.0 <= min_lr_fraction <= 1.0:
            raise ValueError(f"min_lr_fraction must be in [0, 1], got {min_lr_fraction}")
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.schedule = schedule
        self.min_lr_fraction = float(min_lr_fraction)
        self.total_epochs = total_epochs

    def attach(self, engine: Engine) -> None:
        if self.schedule != "constant":
            engine.add_event_handler(Events.ITERATION_STARTED, self._set_rate)

    def rate_at(self, iteration: int, total: int) -> float:
        """The rate of (1-based) ``iteration`` out of ``total``."""
        return cosine_learning_rate(self.base_lr, iteration - 1, max(1, total - 1), self.min_lr_fraction)

    def _set_rate(self, engine: Engine) -> None:
        epochs = self.total_epochs if self.total_epochs is not None else engine.state.max_epochs
        total = int(epochs) * int(engine.state.epoch_length)
        rate = self.rate_at(int(engine.state.iteration), total)
        for group in self.optimizer.param_groups:
            group["lr"] = rate


def _memory_format(network: torch.nn.Module) -> torch.memory_format | None:
    """The memory format of the network's convolution weights: channels-last (2D or 3D) or contiguous; None if it
    has no 4-D or 5-D weight whose formats differ (a 1x1 kernel over one channel is both)."""
    for parameter in network.parameters():
        if parameter.ndim not in (4, 5):
            continue
        channels_last = torch.channels_last if parameter.ndim == 4 else torch.channels_last_3d
        if parameter.is_contiguous(memory_format=channels_last) != parameter.is_contiguous():
            return channels_last if parameter.is_contiguous(memory_format=channels_last) else torch.contiguous_format
    return None


class WeightAverageHandler:
    """Validates, saves and tests an exponential moving average of phase 1's weights instead of the last step's.

    Phase 1's validation score swings from epoch to epoch at high noise (on the embedded set at 60%: jumps of up to
    0.4 balanced accuracy during the forget-rate ramp, a std of about 0.07 over the last 10 epochs), so the
    best-validation epoch is a lucky draw that later rounds must beat. Averaging the weights
    over the last few epochs gives a model whose validation score moves slowly, and the selection is untouched:
    the co-teaching peers keep training on their own weights; only :attr:`evaluation_network` holds the average.

    From ``start_epoch`` on (default: the first epoch after the forget-rate ramp, when the kept share stops
    changing), after every iteration ``average = decay * average + (1 - decay) * weights`` with
    ``decay = 1 - 1 / (epochs x epoch_length)``: a horizon of ``epochs`` epochs whatever the data size. The average
    starts at that epoch's starting weights; before it, :attr:`evaluation_network` gets the current weights at each
    epoch's end. Attach it before the ``ValidationHandler`` so validation sees this epoch's average.

    Args:
        network: the trained network.
        epochs: the averaging horizon in epochs; 0 switches averaging off (:attr:`evaluation_network` is then
            ``network`` itself and nothing is copied).
        start_epoch: first epoch averaged (1-based); None: set from the trainer's ``num_gradual`` at attach.
    """

    def __init__(self, network: torch.nn.Module, epochs: float = 0.0, start_epoch: int | None = None) -> None:
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if start_epoch is not None and start_epoch < 1:
            raise ValueError(f"start_epoch must be >= 1, got {start_epoch}")
        self.network = network
        self.epochs = float(epochs)
        self.start_epoch = start_epoch
        self.average: WeightAverage | None = None
        # a separate copy: the selection reads the live peers, validation and models/model.pt the average
        self.evaluation_network = copy.deepcopy(network) if self.enabled else network

    @property
    def enabled(self) -> bool:
        return self.epochs > 0

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        if self.start_epoch is None:
            self.start_epoch = int(getattr(engine, "num_gradual", 0)) + 1
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def decay(self, epoch_length: int) -> float:
        """Per-iteration decay for a horizon of :attr:`epochs` epochs of ``epoch_length`` iterations."""
        return max(0.0, 1.0 - 1.0 / (self.epochs * max(1, epoch_length)))

    def _start(self, engine: Engine) -> None:
        if self.average is None and engine.state.epoch >= (self.start_epoch or 1):
            self.average = WeightAverage(self.network, self.decay(int(engine.state.epoch_length)))

    def _update(self, engine: Engine) -> None:
        if self.average is not None:
            self.average.update()

    def _publish(self, engine: Engine) -> None:
        source = self.network.state_dict() if self.average is None else self.average.average
        # The trainer may have turned the live peers channels-last (``channels_last``); the copy follows, or
        # validation would run contiguous convolutions (2.5x slower for the default network on a CPU).
        memory_format = _memory_format(self.network)
        if memory_format is not None and _memory_format(self.evaluation_network) != memory_format:
            self.evaluation_network.to(memory_format=memory_format)
        self.evaluation_network.load_state_dict(source)

    def state_dict(self) -> dict:
        if self.average is None:
            return {"started": False}
        return {"started": True, "decay": self.average.decay, **self.average.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict.get("started", False):
            self.average = None
            return
        weights = {k: v for k, v in state_dict.items() if k not in ("started", "decay")}
        self.average = WeightAverage(self.network, float(state_dict["decay"]))
        self.average.load_state_dict(weights)
        # validation at the next epoch's end publishes again; a test right after resume must not see stale weights
        self.evaluation_network.load_state_dict(self.average.average)
