"""Where a phase-1 epoch's time goes: the real bundle config (train.json with its defaults), timed by Ignite event.

Builds the phase-1 workflow exactly as ``alr train`` does (``alr_monai.workflow.phase1_files`` plus overrides,
the embedded set by default), then wraps every handler the trainer has attached with a timer and times the
data loader's ``next()`` (between ``GET_BATCH_STARTED`` and ``GET_BATCH_COMPLETED``), the trainer's iteration
(forward, loss, backward and optimiser step, less the selection policy and the handlers fired inside it) and
the selection policy. Handlers are grouped by class: batch augmentation, selection (the small-loss tracker and
the policy), VoG, validation (the evaluator's whole run; its network's forward passes are timed within it),
checkpoint, and the rest. Prints seconds per epoch and the share of the training run (setup and caching excluded),
then the overhead: the run less the networks' own work (training step, selection, VoG and validation's forward
pass), and again counting validation's forward pass as overhead.

    python scripts/profile_epoch.py [--epochs 3] [--override augment_on=sample] [--override num_workers=2]
"""

from __future__ import annotations

import argparse
import ast
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine, Events

ONCE = "noise-rate estimate (one-off, epochs 2+)"
# Handler class -> row of the table; anything else is "other handlers".
GROUPS = {
    "BatchAugmentHandler": "augmentation (batched, on the device)",
    "SmallLossSelectionHandler": "selection (tracker + policy)",
    "VoGHandler": "VoG",
    "ValidationHandler": "validation",
    "RunCheckpointer": "checkpoint",
    "NoiseRateEstimateHandler": ONCE,
    "TensorBoardImageHandler": "TensorBoard charts",
}
DATA = "data loading (DataLoader next())"
COMPUTE = "forward / backward / step"
SELECT = "selection (tracker + policy)"
ROWS = [
    DATA,
    "augmentation (batched, on the device)",
    COMPUTE,
    SELECT,
    "VoG",
    "validation",
    "checkpoint",
    ONCE,
    "TensorBoard charts",
    "other handlers",
    "engine and unaccounted",
]


def _owner(handler: Callable) -> Any:
    parent = getattr(handler, "_parent", None)  # Ignite wraps filtered handlers (every=N) and keeps the original
    if parent is not None:
        handler = parent()
    return getattr(handler, "__self__", handler)


class EpochProfiler:
    """Accumulates seconds per row of the table for one trainer."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.other: dict[str, float] = defaultdict(float)  # "other handlers" by class
        self.inside_iteration = 0.0  # handler and policy time spent inside the process function
        self._depth = 0
        self._batch_started = 0.0
        self.validation_forward = 0.0  # the evaluator network's forward passes, part of the "validation" row
        self._validating = False

    def _timed(self, row: str, function: Callable, name: str = "") -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            self._validating = row == "validation"
            try:
                return function(*args, **kwargs)
            finally:
                self._validating = False
                elapsed = time.perf_counter() - start
                self.seconds[row] += elapsed
                if row == "other handlers":
                    self.other[name] += elapsed
                if self._depth:
                    self.inside_iteration += elapsed

        return timed

    def _time_forward(self, network: torch.nn.Module) -> None:
        # Only while the validation handler runs: the evaluator's network may be the trainer's own.
        forward = network.forward

        def timed_forward(*args: Any, **kwargs: Any) -> Any:
            if not self._validating:
                return forward(*args, **kwargs)
            start = time.perf_counter()
            try:
                return forward(*args, **kwargs)
            finally:
                self.validation_forward += time.perf_counter() - start

        network.forward = timed_forward

    def instrument(self, trainer: Engine) -> None:
        for handlers in trainer._event_handlers.values():
            for position, (handler, args, kwargs) in enumerate(handlers):
                owner = _owner(handler)
                name = getattr(owner, "__qualname__", type(owner).__name__)
                row = GROUPS.get(type(owner).__name__, "other handlers")
                handlers[position] = (self._timed(row, handler, name), args, kwargs)
                if row == "validation":
                    self._time_forward(owner.validator.network)
        policy = getattr(trainer, "selection_policy", None)
        if policy is not None:
            policy.select = self._timed(SELECT, policy.select)

        def batch_started(_engine: Engine) -> None:
            self._batch_started = time.perf_counter()

        def batch_completed(_engine: Engine) -> None:
            self.seconds[DATA] += time.perf_counter() - self._batch_started

        trainer.add_event_handler(Events.GET_BATCH_STARTED, batch_started)  # last: right before next()
        trainer.add_event_handler(Events.GET_BATCH_COMPLETED, batch_completed)
        completed = trainer._event_handlers[Events.GET_BATCH_COMPLETED]
        completed.insert(0, completed.pop())  # first: right after next()

        process = trainer._process_function

        def iteration(engine: Engine, batch: Any) -> Any:
            self._depth += 1
            before = self.inside_iteration
            start = time.perf_counter()
            try:
                return process(engine, batch)
            finally:
                self._depth -= 1
                self.seconds[COMPUTE] += time.perf_counter() - start - (self.inside_iteration - before)

        trainer._process_function = iteration


def _override(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="phase-1 epochs to run and average over")
    parser.add_argument("--override", action="append", default=[], help="bundle key=value, e.g. augment_on=sample")
    parser.add_argument("--output_dir", default=None, help="run folder (default: a temporary one)")
    parser.add_argument(
        "--run_epochs", type=int, default=30, help="epochs of the run the one-off estimate is spread over (default 30)"
    )
    args = parser.parse_args()

    from monai.bundle import ConfigWorkflow

    from alr_monai.workflow import bundle_file, coerce_literal, phase1_files

    overrides = dict(_override(text) for text in args.override)
    with tempfile.TemporaryDirectory() as scratch:
        output_dir = args.output_dir or scratch
        settings = {"output_dir": output_dir, "max_epochs": args.epochs, "resume": False, **overrides}
        workflow = ConfigWorkflow(
            config_file=phase1_files(),
            meta_file=bundle_file("metadata.json"),
            logging_file=bundle_file("logging.conf"),
            workflow_type="train",
            **{key: coerce_literal(value) for key, value in settings.items()},
        )
        start = time.perf_counter()
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        setup = time.perf_counter() - start
        profiler = EpochProfiler()
        profiler.instrument(trainer)
        start = time.perf_counter()
        trainer.run()
        total = time.perf_counter() - start
        workflow.finalize()

    seconds = dict(profiler.seconds)
    seconds["engine and unaccounted"] = total - sum(seconds.values())
    epochs = trainer.state.epoch
    parsed = workflow.parser
    print(
        f"phase 1, {epochs} epochs, {len(parsed.get_parsed_content('train#items'))} training images, batch "
        f"{parsed.get_parsed_content('batch_size')}, augment {parsed.get_parsed_content('augment')} on "
        f"{parsed.get_parsed_content('augment_on')!r}, cache {parsed.get_parsed_content('cache')!r}, num_workers "
        f"{parsed.get_parsed_content('num_workers')}, device {trainer.state.device}, torch threads "
        f"{torch.get_num_threads()}; setup (load + cache, not in the table) {setup:.2f} s"
    )
    print(f"{'':<40} {'s / epoch':>10} {'share':>8}")
    for row in ROWS:
        value = seconds.get(row, 0.0)
        print(f"{row:<40} {value / epochs:>10.3f} {100 * value / total:>7.1f}%")
    print(f"{'whole epoch':<40} {total / epochs:>10.3f} {100.0:>7.1f}%")
    for name, value in sorted(profiler.other.items(), key=lambda item: -item[1])[:6]:
        print(f"  of which {name:<31} {value / epochs:>10.3f} {100 * value / total:>7.1f}%")
    loading = seconds.get(DATA, 0.0) + seconds.get(ROWS[1], 0.0)
    print(f"data loading + augmentation: {loading / epochs:.3f} s / epoch = {100 * loading / total:.1f}% of the epoch")
    # Overhead (issue 27's target: <= 15%) = the epoch less the networks' own work: the training step (forward,
    # backward, optimiser), the selection (small-loss policy and tracker, VoG) and the validation's forward pass.
    # The second line also counts that forward pass, which grows with the validation split's size, as overhead.
    # The one-off noise-rate estimate runs once per run, so a run of max_epochs spreads it over all of them.
    core = sum(seconds.get(row, 0.0) for row in (COMPUTE, SELECT, "VoG")) + profiler.validation_forward
    once = seconds.get(ONCE, 0.0)
    run_epochs = int(args.run_epochs)
    steady = total - once
    amortised_total = steady / epochs + once / run_epochs
    validation = seconds.get("validation", 0.0)
    print(f"noise-rate estimate: {once:.2f} s in all, once per run (its row above is that spread over {epochs} epochs)")
    print(
        f"validation: {validation / epochs:.3f} s / epoch, of which the network's forward pass "
        f"{profiler.validation_forward / epochs:.3f} s ({len(parsed.get_parsed_content('validate#items'))} images)"
    )
    for label, networks in (
        ("overhead outside the networks' work (training step, selection, VoG, validation forward)", core),
        ("overhead counting the validation forward too", core - profiler.validation_forward),
    ):
        print(
            f"{label}: {100 * (total - networks) / total:.1f}% of these {epochs} epochs; "
            f"{100 * (steady - networks) / steady:.1f}% without the one-off estimate; "
            f"{100 * (amortised_total - networks / epochs) / amortised_total:.1f}% with it spread over a "
            f"{run_epochs}-epoch run"
        )


if __name__ == "__main__":
    main()
