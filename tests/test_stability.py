"""Issue 11: weight averaging, the per-round cosine rate, the standard error of balanced accuracy and the
round model choice, on inputs whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch
from test_relabel_driver import _driver
from torch import nn

from alr_monai.algorithms.stability import (
    WeightAverage,
    balanced_accuracy_standard_error,
    choose_round_model,
    cosine_learning_rate,
)
from alr_monai.utils import read_csv


def test_weight_average_follows_the_ema_formula_and_copies_integer_buffers():
    module = nn.BatchNorm1d(2)
    average = WeightAverage(module, decay=0.5)
    with torch.no_grad():
        module.weight.fill_(3.0)  # starts at 1
        module.num_batches_tracked.fill_(7)
    average.update()
    assert torch.allclose(average.average["weight"], torch.full((2,), 2.0))
    assert int(average.average["num_batches_tracked"]) == 7
    with torch.no_grad():
        module.weight.fill_(4.0)
    average.update()
    assert torch.allclose(average.average["weight"], torch.full((2,), 3.0))
    target = nn.BatchNorm1d(2)
    average.copy_to(target)
    assert torch.allclose(target.weight, torch.full((2,), 3.0))


def test_weight_average_state_round_trip_and_bad_decay():
    module = nn.Linear(2, 2)
    average = WeightAverage(module, decay=0.9)
    with torch.no_grad():
        module.weight.add_(1.0)
    average.update()
    other = WeightAverage(nn.Linear(2, 2), decay=0.9)
    other.load_state_dict(average.state_dict())
    assert all(torch.equal(other.average[k], average.average[k]) for k in average.average)
    with pytest.raises(KeyError, match="lacks"):
        other.load_state_dict({"weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(module, decay=1.0)


def test_cosine_rate_runs_from_base_to_the_floor():
    assert cosine_learning_rate(1e-3, 0, 100) == pytest.approx(1e-3)
    assert cosine_learning_rate(1e-3, 50, 100) == pytest.approx(0.5e-3)
    assert cosine_learning_rate(1e-3, 100, 100, minimum_fraction=0.1) == pytest.approx(1e-4)
    rates = [cosine_learning_rate(1.0, step, 10) for step in range(11)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_standard_error_of_balanced_accuracy_on_a_known_table():
    # recalls 0.8 (n=100) and 0.5 (n=4): var = (0.16/100 + 0.25/4) / 4
    confusion = [[80, 20], [2, 2]]
    expected = math.sqrt((0.8 * 0.2 / 100 + 0.5 * 0.5 / 4) / 4)
    assert balanced_accuracy_standard_error(confusion) == pytest.approx(expected)
    # a perfect small class still counts as uncertain; an empty class is left out like balanced accuracy does
    assert balanced_accuracy_standard_error([[5, 0, 0], [0, 5, 0], [0, 0, 0]]) > 0
    assert math.isnan(balanced_accuracy_standard_error([[0, 0], [0, 0]]))


def test_round_choice_adopts_within_the_tolerance_and_rolls_back_beyond_it():
    assert choose_round_model(0.74, 0.70, 0.03).adopt
    close = choose_round_model(0.68, 0.70, 0.03, incumbent_name="phase 1's model")
    assert close.adopt and "within 1 SE" in close.reason and "phase 1's model" in close.reason
    worse = choose_round_model(0.60, 0.70, 0.03, incumbent_name="round 2's model")
    assert not worse.adopt and worse.reason.startswith("kept round 2's model")
    assert not choose_round_model(0.68, 0.70, 0.03, tolerance=0.0).adopt


def _run_rounds(driver, val_scores):
    """Drive ``driver`` through its rounds with a scripted validation sequence (no training)."""
    scores = iter(val_scores)
    driver.open()
    driver.validation_score = lambda: _scripted(driver, next(scores))
    for epoch in range(1, driver.num_rounds * driver.recalibration_epochs + 1):
        round_index = driver.round_starting(epoch)
        if round_index is not None:
            driver.advance_to(round_index)
            driver.begin_round(round_index)
        with torch.no_grad():  # each epoch changes the weights, so the choice is visible in them
            for parameter in driver.network.parameters():
                parameter.add_(1.0)
        driver.consider(driver.validation_score(), driver.round_of(epoch))
        if driver.round_ending(epoch) is not None:
            driver.end_round(driver.round_ending(epoch))
    return driver.load_state()


def _scripted(driver, score):
    driver.last_val = score
    driver._candidate_standard_error = 0.02
    return score


def test_tolerant_choice_on_a_synthetic_validation_sequence(tmp_path):
    driver = _driver(tmp_path, model_choice="tolerant", choice_tolerance=1.0)
    driver.open()
    driver.best_val, driver.best_standard_error = 0.80, 0.05  # phase 1's lucky epoch
    # round 1 ends at 0.77 (within 1 SE of 0.80: adopted), round 2 at 0.60 (clearly worse: rolled back)
    state = _run_rounds(driver, [0.50, 0.77, 0.90, 0.60])
    choices = [entry["metrics"]["model_choice"] for entry in state.history]
    assert choices == ["adopted", "kept"]
    assert "kept round 1's model" in state.history[1]["metrics"]["model_choice_reason"]
    assert driver.best_round == 1 and driver.best_val == 0.77
    # the network holds round 1's last weights (two epochs of +1 on top of the start)
    assert torch.equal(driver.network.state_dict()["peers.0.0.bias"], driver.best_weights["peers.0.0.bias"])


def test_best_choice_keeps_phase_1_when_no_epoch_beats_it(tmp_path):
    driver = _driver(tmp_path, model_choice="best")
    driver.open()
    start = {k: v.clone() for k, v in driver.network.state_dict().items()}
    driver.best_val = 0.80
    state = _run_rounds(driver, [0.50, 0.77, 0.79, 0.60])
    assert [entry["metrics"]["model_choice"] for entry in state.history] == ["kept", "kept"]
    assert all(torch.equal(driver.network.state_dict()[k], v) for k, v in start.items())
    _, rows = read_csv(driver.dir / "rounds.csv")
    assert [row["model"] for row in rows] == ["phase 1", "kept", "kept"]


def test_driver_schedule_restarts_each_round_and_its_averages_survive_a_state_dict(tmp_path):
    driver = _driver(tmp_path, lr_schedule="cosine", learning_rate=1e-3, min_lr_fraction=0.1, ema_decay=0.5)
    epoch_length = 4
    first = [driver.learning_rate_at(1, i, epoch_length) for i in range(epoch_length)]
    assert first[0] == pytest.approx(1e-3) and driver.learning_rate_at(2, 3, epoch_length) < first[-1]
    assert driver.learning_rate_at(3, 0, epoch_length) == pytest.approx(1e-3)  # round 2 restarts
    driver.open()
    with torch.no_grad():
        for parameter in driver.network.parameters():
            parameter.add_(2.0)
    driver.after_step()
    saved = driver.state_dict()
    other = _driver(tmp_path / "other", ema_decay=0.5)
    other.load_state_dict(saved)
    assert all(torch.equal(other.weight_average.average[k], v) for k, v in driver.weight_average.average.items())
    with pytest.raises(ValueError, match="learning_rate"):
        _driver(tmp_path / "bad", lr_schedule="cosine")


def test_pseudo_labels_add_the_confident_pool_with_the_predicted_label_and_survive_a_state_dict(tmp_path):
    driver = _driver(tmp_path, unqueried="pseudo_label", pseudo_label_threshold=0.0)
    state = driver.open()
    pool = state.pool_indices()
    assert pool and driver.training_target(state).indices == [i for i in range(len(state.ids)) if state.trusted[i]]
    driver.begin_round(1)
    target = driver.training_target(state)
    assert set(target.indices) == {i for i in range(len(state.ids)) if state.trusted[i]} | set(pool)
    with torch.no_grad():
        inputs = torch.stack([driver.scoring_dataset[i]["image"] for i in pool])
        predicted = driver.network.eval()(inputs).argmax(1).tolist()
    assert [target.labels[i] for i in pool] == predicted
    assert not any(target.verified[i] for i in pool)  # a pseudo-label is not an expert's answer
    other = _driver(tmp_path / "other", unqueried="pseudo_label")
    other.load_state_dict(driver.state_dict())
    assert other.training_target(state).indices == target.indices
    strict = _driver(tmp_path / "strict", unqueried="pseudo_label", pseudo_label_threshold=1.0)
    strict.open()
    strict.begin_round(1)
    assert strict.training_target(state).indices == [i for i in range(len(state.ids)) if state.trusted[i]]
