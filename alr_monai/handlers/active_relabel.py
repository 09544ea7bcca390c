"""Ignite wiring of phase 2: the relabel rounds of :class:`alr_monai.relabel.RelabelDriver` on trainer events."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from alr_monai.distributed import barrier, broadcast_object, is_main_process
from alr_monai.engines.coteaching import CoTeachingEvents
from alr_monai.relabel.driver import RelabelDriver, RoundOutcome
from alr_monai.relabel.training import LabelStore, SubsetShuffleSampler

__all__ = ["ActiveRelabelRoundHandler"]


class ActiveRelabelRoundHandler:
    """Runs the relabel rounds of phase 2 inside a recalibration trainer (``num_rounds * recalibration_epochs``
    epochs); the round logic is the driver's, this handler only reads ``engine.state`` and calls it.

    Events:
        STARTED: :meth:`RelabelDriver.open` (state, round 0), then the trainer follows the state.
        EPOCH_STARTED: the sampler's epoch; on a round's first epoch :meth:`RelabelDriver.advance_to` queries
            and applies the round and :meth:`RelabelDriver.begin_round` starts it; then the trainer follows the
            labels. An empty pool ends the run; a round
            waiting for a person prints what to do and ends the run (rerunning the same command resumes).
        ITERATION_STARTED: the learning rate of the driver's schedule (when it has one and ``optimizer`` is given).
        LOSSES_COMPUTED: expert-verified samples are always kept by co-teaching.
        ITERATION_COMPLETED: :meth:`RelabelDriver.after_step` (weight averaging).
        EPOCH_COMPLETED: validation score (``val_balanced_accuracy`` metric; ``forget_rate`` when it is not 0)
            and the driver's per-epoch choice; on a round's last epoch :meth:`RelabelDriver.end_round`.
        COMPLETED: :meth:`RelabelDriver.finish` and the round table printed, unless waiting for a person.

    Several processes (torchrun): rank 0 alone opens the state, queries, runs the expert I/O, applies answers,
    evaluates and writes; the other ranks wait for it (a barrier, or the broadcast of the round's outcome) and
    then read the applied state. Every rank scores validation and makes the same model choice, so all hold the
    same weights.

    Args:
        driver: the round logic; its network must be the trainer's network.
        label_store: the labels the trainer reads (``LabelLookup`` as the trainer's ``prepare_batch``).
        sampler: the trainer's sampler.
        optimizer: the trainer's optimizer, whose learning rate follows the driver's schedule (None = untouched).
    """

    def __init__(
        self,
        driver: RelabelDriver,
        label_store: LabelStore,
        sampler: SubsetShuffleSampler,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.driver = driver
        self.label_store = label_store
        self.sampler = sampler
        self.optimizer = optimizer
        self.waiting_for = None
        self._closed_round: int | None = None

    # ------------------------------------------------------------------------------------------ console
    def epoch_label(self, epoch: int) -> str:
        """What the console calls recalibration ``epoch`` (see ``EpochSummaryPrinter``'s ``schedule``)."""
        per_round = self.driver.recalibration_epochs
        return f"round {self.driver.round_of(epoch)} epoch {(epoch - 1) % per_round + 1}/{per_round}"

    def epochs_left(self, epoch: int) -> int:
        """Epochs this command still runs after ``epoch``: to the end of the round when a person answers (the run
        stops at the next query), else to the end of the last round."""
        if self.driver.mode == "interactive":
            return self.driver.round_of(epoch) * self.driver.recalibration_epochs - epoch
        return self.driver.num_rounds * self.driver.recalibration_epochs - epoch

    def _print_round_line(self, engine: Engine) -> None:
        # registered at STARTED, after every handler of the bundle's list: the round's line follows its last
        # epoch's line
        if self._closed_round is None:
            return
        round_index, self._closed_round = self._closed_round, None
        if is_main_process():
            print(self.driver.round_line(self.driver.load_state(), round_index), flush=True)

    def attach(self, engine: Engine) -> None:
        if getattr(engine, "network", self.driver.network) is not self.driver.network:
            raise ValueError("the relabel driver's network must be the trainer's network (the one it recalibrates)")
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._set_learning_rate)
        engine.add_event_handler(CoTeachingEvents.LOSSES_COMPUTED, self._force_keep_verified)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._after_step)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _follow(self, engine: Engine, state) -> None:
        """Make the trainer follow the state: labels, verified mask, the subset trained on and the forget rate."""
        target = self.driver.training_target(state)
        self.label_store.update(target.labels, target.verified)
        engine.forget_rate = target.forget_rate
        self.sampler.set_indices(target.indices, self.label_store.labels)

    def _started(self, engine: Engine) -> None:
        self.waiting_for = None
        if not engine.has_event_handler(self._print_round_line, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._print_round_line)
        if is_main_process():
            state = self.driver.open()
        barrier()
        if not is_main_process():
            state = self.driver.open()
        self._follow(engine, state)

    def _epoch_started(self, engine: Engine) -> None:
        self.sampler.set_epoch(engine.state.epoch)
        round_index = self.driver.round_starting(engine.state.epoch)
        if round_index is not None:
            outcome = broadcast_object(self.driver.advance_to(round_index) if is_main_process() else None)
            if outcome == RoundOutcome.WAITING:
                self.waiting_for = self.driver.answers_path(round_index)
                if is_main_process():
                    print(self.driver.waiting_message(round_index), flush=True)
            if outcome != RoundOutcome.APPLIED:
                engine.terminate()
                return
            self.driver.begin_round(round_index)
        # every epoch, not only a round's first: a run resumed mid-round gets the driver's round state (pseudo-labels)
        # from the checkpoint only after STARTED
        self._follow(engine, self.driver.load_state())

    def _set_learning_rate(self, engine: Engine) -> None:
        if self.optimizer is None:
            return
        epoch_length = engine.state.epoch_length
        if not epoch_length:
            return
        iteration_in_epoch = (engine.state.iteration - 1) % epoch_length
        rate = self.driver.learning_rate_at(engine.state.epoch, iteration_in_epoch, epoch_length)
        if rate is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = rate

    def _after_step(self, engine: Engine) -> None:
        self.driver.after_step()

    def _force_keep_verified(self, engine: Engine) -> None:
        output = engine.state.output
        output["force_keep"] = self.label_store.verified[output["index"].cpu()].to(output["label"].device)

    def _epoch_completed(self, engine: Engine) -> None:
        # phase 1's names, so TensorBoard draws one curve per metric across both phases (val/balanced_accuracy)
        if engine.forget_rate:  # recipe "coteaching" only: the trusted-set recipe forgets nothing
            engine.state.metrics["forget_rate"] = float(engine.forget_rate)
        else:
            engine.state.metrics.pop("forget_rate", None)
        val_score = self.driver.validation_score()
        engine.state.metrics["val_balanced_accuracy"] = val_score
        self.driver.consider(val_score, self.driver.round_of(engine.state.epoch))
        round_index = self.driver.round_ending(engine.state.epoch)
        if round_index is not None and self.driver.end_round(round_index) is not None:
            self._closed_round = round_index

    def _completed(self, engine: Engine) -> None:
        if self.waiting_for is not None:
            return
        if is_main_process():
            state = self.driver.finish()
            print(self.driver.round_table_markdown(state), flush=True)
        barrier()

    def state_dict(self) -> dict:
        """The driver's best validation score and weights, so a resumed run chooses as an uninterrupted one."""
        return self.driver.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.driver.load_state_dict(state_dict)
