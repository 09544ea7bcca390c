from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alr_monai.algorithms.metrics import classification_metrics, per_class_kept_fraction, selection_metrics


def test_classification_metrics_hand_computed():
    y_true = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    metrics = classification_metrics(y_true, y_pred, num_classes=3)
    assert metrics["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert metrics["per_class_recall"] == pytest.approx([0.75, 0.5, 1.0])
    assert metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    # F1 per class: 2PR/(P+R) with P = (1, 0.5, 2/3), R = (0.75, 0.5, 1).
    f1 = [2 * 0.75 / 1.75, 0.5, 2 * (2 / 3) / (5 / 3)]
    assert metrics["macro_f1"] == pytest.approx(np.mean(f1))
    # Multi-class MCC (Gorodkin): (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)).
    c, s, t, p = 6, 8, [4, 2, 2], [3, 2, 3]
    expected_mcc = (c * s - np.dot(p, t)) / math.sqrt((s**2 - np.dot(p, p)) * (s**2 - np.dot(t, t)))
    assert metrics["mcc"] == pytest.approx(expected_mcc)
    assert math.isnan(metrics["auroc"])  # no probabilities given


def test_auroc_macro_one_vs_rest_and_absent_class():
    y_true = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    metrics = classification_metrics(y_true, probs.argmax(1), probs=probs)
    # Class 1 positives score 0.65 and 0.8 against negatives 0.1 and 0.6: 4 of 4 pairs ordered -> 1.0;
    # class 0 is the mirror image, also 1.0.
    assert metrics["auroc"] == pytest.approx(1.0)
    probs_bad = np.array([[0.9, 0.1], [0.2, 0.8], [0.35, 0.65], [0.7, 0.3]])
    # Class 1: pairs (0.65>0.1, 0.65<0.8, 0.3>0.1, 0.3<0.8) -> 0.5; class 0 likewise 0.5.
    assert classification_metrics(y_true, probs_bad.argmax(1), probs=probs_bad)["auroc"] == pytest.approx(0.5)

    # A class absent from y_true: recall NaN, AUROC undefined, balanced accuracy over present classes.
    three = classification_metrics([0, 0, 1], [0, 2, 1], probs=np.eye(3)[[0, 2, 1]], num_classes=3)
    assert math.isnan(three["per_class_recall"][2]) and math.isnan(three["auroc"])
    assert three["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)


def test_selection_metrics_hand_computed():
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    given = np.array([0, 0, 1, 1, 0, 2, 2, 0])  # samples 2, 4, 7 are mislabelled
    kept = np.array([True, False, True, True, False, False, True, False])
    metrics = selection_metrics(torch.from_numpy(kept), given, true, num_classes=4)
    assert metrics["num_kept"] == 4 and metrics["kept_fraction"] == pytest.approx(0.5)
    assert metrics["precision"] == pytest.approx(3 / 4)  # sample 2 is kept but wrong
    # Clean samples per true class: class 0 -> {0, 1}, class 1 -> {3}, class 2 -> {5, 6}, class 3 -> none.
    recall = metrics["per_class_clean_recall"]
    assert recall[:3] == pytest.approx([0.5, 1.0, 0.5]) and math.isnan(recall[3])
    assert metrics["min_clean_recall"] == pytest.approx(0.5)
    assert metrics["clean_recall"] == pytest.approx(3 / 5)
    # Given label 0 -> {0, 1, 4, 7}: kept 1; label 1 -> {2, 3}: kept 2; label 2 -> {5, 6}: kept 1.
    kept_fraction = metrics["per_class_kept_fraction"]
    assert kept_fraction[:3] == pytest.approx([0.25, 1.0, 0.5]) and math.isnan(kept_fraction[3])
    assert per_class_kept_fraction(np.flatnonzero(kept), given, 4)[:3] == pytest.approx([0.25, 1.0, 0.5])


def test_selection_metrics_nothing_kept():
    metrics = selection_metrics(np.zeros(3, dtype=bool), [0, 1, 1], [0, 1, 0], num_classes=2)
    assert math.isnan(metrics["precision"]) and metrics["min_clean_recall"] == 0.0 and metrics["num_kept"] == 0
    with pytest.raises(ValueError):
        selection_metrics(np.zeros(2, dtype=bool), [0, 1, 1], [0, 1, 0], num_classes=2)
