"""Ignite handlers: thin adapters between ``engine.state`` and the pure-torch algorithms."""

from __future__ import annotations

from alr_monai.handlers.active_relabel import ActiveRelabelRoundHandler
from alr_monai.handlers.augment import BatchAugmentHandler
from alr_monai.handlers.console import EpochLossMeter, EpochSummaryPrinter
from alr_monai.handlers.metrics import ClassificationReport
from alr_monai.handlers.noise_rate import NoiseRateEstimateHandler
from alr_monai.handlers.outputs import MetricsJSONWriter, SelectionCSVWriter, TensorBoardImageHandler
from alr_monai.handlers.prototype import PrototypeDistanceHandler
from alr_monai.handlers.resume import (
    BestModelSaver,
    EngineBestMetric,
    ReseedTransformsHandler,
    RunCheckpointer,
    latest_checkpoint,
)
from alr_monai.handlers.selection import SmallLossSelectionHandler
from alr_monai.handlers.selection_metrics import SelectionMetricsHandler
from alr_monai.handlers.stability import LearningRateScheduleHandler, WeightAverageHandler
from alr_monai.handlers.tensorboard import TensorBoardScalars, tensorboard_tag
from alr_monai.handlers.vog import VoGHandler


def handler_defined_elsewhere(handler: object | None) -> object | None:
    """Return ``handler``: a ``train#handlers`` entry for a handler defined under its own config key.

    The list could hold ``"@selection_tracker"`` directly, but MONAI's ``ConfigWorkflow.check_properties`` reads
    every entry of ``train#handlers`` as a component dict with a ``_target_``, so the entry is written as
    ``{"_target_": "alr_monai.handlers.handler_defined_elsewhere", "handler": "@selection_tracker"}``. A handler
    disabled by an overlay (``null``) stays None, which the trainer skips.
    """
    return handler


__all__ = [
    "ActiveRelabelRoundHandler",
    "BatchAugmentHandler",
    "BestModelSaver",
    "ClassificationReport",
    "EngineBestMetric",
    "EpochLossMeter",
    "EpochSummaryPrinter",
    "LearningRateScheduleHandler",
    "MetricsJSONWriter",
    "NoiseRateEstimateHandler",
    "PrototypeDistanceHandler",
    "ReseedTransformsHandler",
    "RunCheckpointer",
    "SelectionCSVWriter",
    "SelectionMetricsHandler",
    "SmallLossSelectionHandler",
    "TensorBoardImageHandler",
    "TensorBoardScalars",
    "VoGHandler",
    "WeightAverageHandler",
    "handler_defined_elsewhere",
    "latest_checkpoint",
    "tensorboard_tag",
]
