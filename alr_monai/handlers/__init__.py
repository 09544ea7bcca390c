"""Ignite handlers: thin adapters between ``engine.state`` and the pure-torch algorithms."""

from __future__ import annotations

from alr_monai.handlers.active_relabel import ActiveRelabelRoundHandler
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
from alr_monai.handlers.tensorboard import TensorBoardScalars, tensorboard_tag
from alr_monai.handlers.vog import VoGHandler

__all__ = [
    "ActiveRelabelRoundHandler",
    "BestModelSaver",
    "ClassificationReport",
    "EngineBestMetric",
    "EpochLossMeter",
    "EpochSummaryPrinter",
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
    "latest_checkpoint",
    "tensorboard_tag",
]
