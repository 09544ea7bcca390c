"""Pure-PyTorch algorithm layer: co-teaching selection, VoG, noise-rate estimation, acquisition, metrics.

Nothing here knows about Ignite or MONAI engines; the handlers and engines build on these functions.
"""

from __future__ import annotations

from .acquisition import (
    ACQUISITION_NAMES,
    EMBEDDING_ACQUISITIONS,
    MC_ACQUISITIONS,
    SCORE_FUNCTIONS,
    add_dropout_before_last_linear,
    bald,
    enable_mc_dropout,
    entropy,
    find_last_linear,
    kcenter_greedy,
    least_confidence,
    margin,
    random_scores,
    select_top,
)
from .metrics import classification_metrics, label_error_ranking, per_class_kept_fraction, selection_metrics
from .noise_estimate import NOISE_ESTIMATION_METHODS, estimate_noise_rate, gmm_clean_probability
from .policy import SelectionPolicy, class_keep_counts, rank_fractions
from .prototype import PrototypeAccumulator, cosine_distance_to_prototypes
from .selection import forget_rate_schedule, num_to_keep, select_small_loss, select_with_fills, select_with_vog
from .vog import VoGBuffer, last_layer_gradient, normalise_per_class

__all__ = [
    "ACQUISITION_NAMES",
    "PrototypeAccumulator",
    "SelectionPolicy",
    "class_keep_counts",
    "cosine_distance_to_prototypes",
    "label_error_ranking",
    "rank_fractions",
    "select_with_fills",
    "EMBEDDING_ACQUISITIONS",
    "MC_ACQUISITIONS",
    "NOISE_ESTIMATION_METHODS",
    "SCORE_FUNCTIONS",
    "VoGBuffer",
    "add_dropout_before_last_linear",
    "bald",
    "classification_metrics",
    "enable_mc_dropout",
    "entropy",
    "estimate_noise_rate",
    "find_last_linear",
    "forget_rate_schedule",
    "gmm_clean_probability",
    "kcenter_greedy",
    "last_layer_gradient",
    "least_confidence",
    "margin",
    "normalise_per_class",
    "num_to_keep",
    "per_class_kept_fraction",
    "random_scores",
    "select_small_loss",
    "select_top",
    "select_with_vog",
    "selection_metrics",
]
