"""Classification metrics for imbalanced data, and sample-selection metrics for noisy-label simulations."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score

__all__ = ["classification_metrics", "per_class_kept_fraction", "selection_metrics"]

ArrayLike = torch.Tensor | np.ndarray | list


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _labels_1d(values: ArrayLike, name: str) -> np.ndarray:
    array = _to_numpy(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array.astype(np.int64)


def _safe_fraction(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else math.nan


def _nanmin(values: list[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return min(finite) if finite else math.nan


def classification_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    probs: ArrayLike | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Metrics that stay honest under class imbalance.

    Args:
        y_true: true labels, shape (N,).
        y_pred: predicted labels, shape (N,).
        probs: optional class scores, shape (N, C) (probabilities or any monotone score per class).
        num_classes: C; inferred from the labels and ``probs`` if None.

    Returns:
        A dict with
            ``accuracy``;
            ``balanced_accuracy``: mean recall over the classes present in ``y_true`` (as sklearn);
            ``macro_f1``: unweighted F1 mean over the classes present in ``y_true`` or ``y_pred`` (as sklearn's
            default), 0 for a class never predicted correctly;
            ``mcc``: multi-class Matthews correlation coefficient;
            ``auroc``: macro one-vs-rest ROC AUC when ``probs`` is given and every class occurs in ``y_true``,
            else NaN;
            ``per_class_recall``: list of C floats, NaN for classes absent from ``y_true``;
            ``confusion_matrix``: C x C list of lists of ints, rows true, columns predicted.
    """
    true = _labels_1d(y_true, "y_true")
    pred = _labels_1d(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.shape} vs {pred.shape}")
    if true.size == 0:
        raise ValueError("no samples")
    scores = None if probs is None else _to_numpy(probs).astype(np.float64)
    if num_classes is None:
        num_classes = int(max(true.max(), pred.max())) + 1
        if scores is not None:
            num_classes = max(num_classes, scores.shape[1])
    if min(true.min(), pred.min()) < 0 or max(true.max(), pred.max()) >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes})")
    if scores is not None and scores.shape != (true.size, num_classes):
        raise ValueError(f"probs must have shape ({true.size}, {num_classes}), got {scores.shape}")

    classes = list(range(num_classes))
    matrix = sk_confusion_matrix(true, pred, labels=classes)
    support = matrix.sum(axis=1)
    recall = [_safe_fraction(matrix[c, c], support[c]) for c in classes]

    auroc = math.nan
    if scores is not None and bool((support > 0).all()) and num_classes >= 2:
        # Macro one-vs-rest, computed per class so unnormalised scores are accepted too.
        auroc = float(np.mean([roc_auc_score(true == c, scores[:, c]) for c in classes]))

    present = sorted(set(true.tolist()) | set(pred.tolist()))
    return {
        "accuracy": float((true == pred).mean()),
        "balanced_accuracy": float(np.nanmean(recall)),
        "macro_f1": float(f1_score(true, pred, labels=present, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(true, pred)),
        "auroc": auroc,
        "per_class_recall": recall,
        "confusion_matrix": matrix.astype(int).tolist(),
    }


def _kept_mask(kept: ArrayLike, num_samples: int) -> np.ndarray:
    """Accept either a bool mask of length N or integer positions of the kept samples."""
    array = _to_numpy(kept)
    if array.dtype == np.bool_:
        if array.shape != (num_samples,):
            raise ValueError(f"kept mask must have shape ({num_samples},), got {array.shape}")
        return array
    mask = np.zeros(num_samples, dtype=bool)
    mask[array.astype(np.int64).reshape(-1)] = True
    return mask


def per_class_kept_fraction(kept: ArrayLike, given_labels: ArrayLike, num_classes: int) -> list[float]:
    """For each GIVEN label c, the fraction of samples labelled c that were kept (NaN if none); needs no truth.

    Args:
        kept: bool mask of shape (N,) or integer positions of the kept samples.
        given_labels: the (possibly noisy) training labels, shape (N,).
        num_classes: C.
    """
    given = _labels_1d(given_labels, "given_labels")
    mask = _kept_mask(kept, given.size)
    return [_safe_fraction(mask[given == c].sum(), (given == c).sum()) for c in range(num_classes)]


def selection_metrics(
    kept: ArrayLike, given_labels: ArrayLike, true_labels: ArrayLike, num_classes: int
) -> dict[str, Any]:
    """How well a clean-sample selection did, measured against the truth (simulation only).

    Args:
        kept: bool mask of shape (N,) or integer positions of the kept samples.
        given_labels: the noisy training labels, shape (N,).
        true_labels: the true labels, shape (N,).
        num_classes: C.

    Returns:
        A dict with
            ``precision``: fraction of kept samples whose given label is correct (NaN if none kept);
            ``clean_recall``: fraction of all correctly labelled samples that were kept;
            ``per_class_clean_recall``: for each TRUE class c, among its correctly labelled samples, the
            fraction kept (NaN if there are none);
            ``min_clean_recall``: the smallest finite per-class clean recall (NaN if none);
            ``per_class_kept_fraction``: for each GIVEN label c, the fraction kept;
            ``num_kept`` and ``kept_fraction``.
    """
    given = _labels_1d(given_labels, "given_labels")
    true = _labels_1d(true_labels, "true_labels")
    if given.shape != true.shape:
        raise ValueError(f"given_labels and true_labels differ in length: {given.shape} vs {true.shape}")
    mask = _kept_mask(kept, given.size)
    correct = given == true
    per_class_clean = [
        _safe_fraction((mask & correct & (true == c)).sum(), (correct & (true == c)).sum()) for c in range(num_classes)
    ]
    num_kept = int(mask.sum())
    return {
        "precision": _safe_fraction((mask & correct).sum(), num_kept),
        "clean_recall": _safe_fraction((mask & correct).sum(), correct.sum()),
        "per_class_clean_recall": per_class_clean,
        "min_clean_recall": _nanmin(per_class_clean),
        "per_class_kept_fraction": per_class_kept_fraction(mask, given, num_classes),
        "num_kept": num_kept,
        "kept_fraction": _safe_fraction(num_kept, given.size),
    }


def label_error_ranking(
    scores: ArrayLike, given_labels: ArrayLike, true_labels: ArrayLike, class_names: int | list[str] | tuple[str, ...]
) -> dict[str, float]:
    """How well a per-sample score ranks the label errors first (simulation only: it needs the truth).

    Any method's score works as long as higher means "more likely wrongly labelled" (``1 - label quality`` for
    cleanlab, the loss for small-loss selection, ...). The positives are the samples whose GIVEN label differs
    from the true one.

    Args:
        scores: shape (N,), finite; higher = more likely wrong.
        given_labels: the noisy training labels, shape (N,).
        true_labels: the true labels, shape (N,).
        class_names: names by class index (for the per-class keys), or the number of classes C (names "0".."C-1").

    Returns:
        ``label_error_auroc`` (ROC AUC of the score for "given label is wrong"), ``label_error_ap`` (average
        precision, whose chance level is the noise rate) and, for each GIVEN class c, ``label_error_auroc/<name>``
        over the samples labelled c. A value is NaN where the samples hold only one kind (all wrong or all right).
    """
    from sklearn.metrics import average_precision_score

    names = [str(c) for c in range(class_names)] if isinstance(class_names, int) else [str(n) for n in class_names]
    values = _to_numpy(scores).astype(np.float64)
    given = _labels_1d(given_labels, "given_labels")
    true = _labels_1d(true_labels, "true_labels")
    if values.ndim != 1 or values.shape != given.shape or given.shape != true.shape:
        raise ValueError(
            f"scores, given_labels and true_labels must be 1-D of one length, got {values.shape}, {given.shape}, "
            f"{true.shape}"
        )
    if not np.isfinite(values).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(values)).sum())} are not")
    wrong = given != true

    def auroc(mask: np.ndarray) -> float:
        kinds = wrong[mask]
        return float(roc_auc_score(kinds, values[mask])) if 0 < kinds.sum() < kinds.size else math.nan

    everyone = np.ones_like(wrong)
    result = {
        "label_error_auroc": auroc(everyone),
        "label_error_ap": float(average_precision_score(wrong, values)) if wrong.any() else math.nan,
    }
    for c, name in enumerate(names):
        result[f"label_error_auroc/{name}"] = auroc(given == c)
    return result


__all__ += ["label_error_ranking"]  # appended here so the list above stays as it was
