"""Warnings about a phase 1 whose trusted set should not be trusted: said on the console and kept in metrics.json.

Three ways a phase 1 looks finished but its trusted set is not to be trusted: it stopped before the forget-rate
ramp was done (the forget rate ramps from 0 over ``coteaching#num_gradual`` epochs, so an early stop trusts most
of the noise); its trusted set is implausible for its own noise estimate (it keeps far more than the estimated
clean share); or no estimate was made at all, so nothing says how clean the trusted set is. Each warning gives the numbers and the fix. They are
written to ``metrics.json`` under ``warnings`` (a list of sentences, empty when all is well), where the report and
any later command read them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alr_monai.utils import atomic_write_json

__all__ = ["PLAUSIBLE_MARGIN", "check_phase1", "phase1_warnings"]

PLAUSIBLE_MARGIN = 0.15
"""How far the trusted share may exceed the estimated clean share (1 - estimated noise) before it is implausible."""

logger = logging.getLogger("alr_monai.phase1")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def phase1_warnings(
    metrics: Mapping[str, Any],
    trusted_share: float,
    num_gradual: int,
    estimate_epoch: int | None = None,
    forget_rate: float | None = None,
) -> list[str]:
    """The warnings for a finished phase 1 (pure: no files).

    Args:
        metrics: metrics.json's content (``epoch`` and ``last.train`` are read).
        trusted_share: the share of training samples in the trusted set (selection.csv's ``trusted``).
        num_gradual: epochs of the forget-rate ramp (``coteaching#num_gradual``).
        estimate_epoch: the epoch after which the noise rate is estimated (``noise_estimate#estimate_epoch``).
        forget_rate: the forget rate set by hand (``coteaching#forget_rate``), None when it is estimated.

    Returns:
        Sentences with the numbers and the fix; empty when nothing looks wrong.
    """
    epoch = int(metrics.get("epoch") or 0)
    train = metrics.get("last", {}).get("train", {})
    reached = _number(train.get("forget_rate"))
    estimate = _number(train.get("noise_rate_estimate"))
    precision = _number(train.get("selection_precision"))
    target = _number(forget_rate) if forget_rate is not None else estimate
    if forget_rate is not None and float(forget_rate) == 0.0:
        return []  # no selection by design (one network on every sample, the `ce` preset): nothing to judge
    truth = f" (its precision against the injected truth: {precision:.2f})" if precision is not None else ""
    warnings = []
    if epoch < num_gradual:
        rate = f"reached {reached:.2f}" if reached is not None else "did not reach its target"
        of_target = f" (its target: {target:.2f})" if target is not None and reached is not None else ""
        warnings.append(
            f"phase 1 ended at epoch {epoch}, before its forget-rate ramp ({num_gradual} epochs) was done: the forget "
            f"rate {rate}{of_target}, so the trusted set keeps {trusted_share:.0%} of the samples{truth} and still "
            f"holds much of the noise. Fix: train at least {num_gradual} epochs (--max_epochs {num_gradual}), or "
            f"shorten the ramp (--coteaching#num_gradual {max(epoch, 1)})."
        )
    elif estimate is None and forget_rate is None:
        when = f" (it is made after epoch {estimate_epoch}; phase 1 ran {epoch})" if estimate_epoch else ""
        warnings.append(
            f"phase 1 made no noise-rate estimate{when}, so nothing says how clean its trusted set "
            f"({trusted_share:.0%} of the samples) is{truth}. Fix: train past the estimate epoch (--max_epochs), or "
            "set the forget rate you expect (--coteaching#forget_rate R)."
        )
    elif target is not None and trusted_share > 1.0 - target + PLAUSIBLE_MARGIN:
        warnings.append(
            f"the trusted set keeps {trusted_share:.0%} of the samples while the noise rate is {target:.2f} "
            f"({'set' if forget_rate is not None else 'estimated'}), so at most about {1.0 - target:.0%} are clean: "
            f"it holds wrong labels{truth}. Fix: check the per-class estimates (noise_rate_estimate/<class> in "
            "metrics.json) and the selection (coteaching#trusted_rule class_cut cuts each class at its rate)."
        )
    return warnings


def check_phase1(
    output_dir: str | Path,
    num_gradual: int,
    estimate_epoch: int | None = None,
    forget_rate: float | None = None,
) -> list[str]:
    """Judge a finished phase 1: log each warning and record them in metrics.json under ``warnings``.

    Called by the bundle after training (train.json's ``run``); on a process other than rank 0 it does nothing.

    Returns:
        The warnings (empty when all is well).
    """
    from alr_monai.distributed import is_main_process

    output_dir = Path(output_dir)
    metrics_path, selection_path = output_dir / "metrics.json", output_dir / "selection.csv"
    if not is_main_process() or not metrics_path.is_file() or not selection_path.is_file():
        return []
    metrics = json.loads(metrics_path.read_text())
    with open(selection_path, newline="") as handle:
        trusted = [row["trusted"] == "1" for row in csv.DictReader(handle)]
    share = sum(trusted) / max(len(trusted), 1)
    warnings = phase1_warnings(metrics, share, int(num_gradual), estimate_epoch, forget_rate)
    for warning in warnings:
        logger.warning(warning)
    if metrics.get("warnings") != warnings:
        metrics["warnings"] = warnings
        atomic_write_json(metrics_path, metrics)
    return warnings
