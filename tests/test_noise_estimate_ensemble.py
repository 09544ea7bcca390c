"""Issue 28: several noise estimators combined, an estimate made when the network has learned enough, the
expert's answers correcting the estimate, and the logit-adjusted loss."""

from __future__ import annotations

import math

import pytest
import torch
from test_noise_estimate_handler import _batches, _setup
from torch import nn

from alr_monai.algorithms.losses import class_log_prior, logit_adjusted_cross_entropy
from alr_monai.algorithms.noise_estimate import combine_estimates, expert_corrected_rates
from alr_monai.engines import CoTeachingTrainer
from alr_monai.handlers import NoiseRateEstimateHandler, SmallLossSelectionHandler
from alr_monai.networks import PeerEnsemble

NUM_CLASSES = 3
NUM_SAMPLES = 48


def test_combine_takes_the_median_and_flags_the_classes_where_estimators_disagree():
    estimates = {
        "a": torch.tensor([0.10, 0.50, float("nan")]),
        "b": torch.tensor([0.12, 0.10, 0.30]),
        "c": torch.tensor([0.14, 0.90, 0.32]),
    }
    rates, spread, flagged = combine_estimates(estimates, tolerance=0.15)
    # the spread is the narrowest range holding a majority (2 of 3): 0.10-0.12-0.14 -> 0.02
    assert rates[0] == pytest.approx(0.12) and not flagged[0] and spread[0] == pytest.approx(0.02)
    # 0.10, 0.50, 0.90: no two within 0.15, so the median is uncertain (it stands, flagged)
    assert flagged[1] and spread[1] == pytest.approx(0.4) and rates[1] == pytest.approx(0.5)
    assert rates[2] == pytest.approx(0.31) and not flagged[2]  # NaN ignored; two estimates: their mean
    # one failing estimator (0.0 for a class 80% wrong) moves neither the median far nor raises the flag:
    # three of four agree within 0.10
    four = {k: torch.tensor([v, v / 4]) for k, v in zip("abcd", [0.0, 0.75, 0.8, 0.85], strict=True)}
    rates, spread, flagged = combine_estimates(four, tolerance=0.15)
    assert rates[0] == pytest.approx(0.775) and spread[0] == pytest.approx(0.10) and not flagged[0]
    # split two against two: no majority agrees, flagged
    split = {k: torch.tensor([v]) for k, v in zip("abcd", [0.1, 0.15, 0.6, 0.65], strict=True)}
    assert combine_estimates(split, tolerance=0.15)[2].tolist() == [True]
    with pytest.raises(ValueError, match="no estimates"):
        combine_estimates({})


def test_expert_answers_move_the_estimate_towards_what_they_measured():
    # class 0: 100 samples, phase 1 said 20% wrong, 40 in the pool; class 1: 50 samples, said 10%, 10 in the pool
    prior = [0.2, 0.1]
    sizes, pool = [100, 50], [40, 10]
    unchanged = expert_corrected_rates(prior, sizes, pool, [0, 0], [0, 0], [0, 0], [0, 0])
    assert unchanged.tolist() == pytest.approx(prior)  # no answers: the phase-1 estimate
    # 30 random pool answers of class 0, all wrong; an audit of 20 trusted samples of class 1, 10 wrong
    corrected = expert_corrected_rates(prior, sizes, pool, [30, 0], [30, 0], [0, 20], [0, 10], prior_strength=10)
    pool_rate = (30 + 10 * 0.5) / 40  # prior within the pool: 20 expected wrong / 40
    assert corrected[0] == pytest.approx(40 * pool_rate / 100)
    trusted_rate = (10 + 0) / 30
    assert corrected[1] == pytest.approx((10 * 0.5 + 40 * trusted_rate) / 50)
    assert corrected[1] > prior[1]  # the audit found the trusted set dirtier than phase 1 assumed
    with pytest.raises(ValueError, match="more wrong answers"):
        expert_corrected_rates(prior, sizes, pool, [1, 0], [2, 0], [0, 0], [0, 0])


def test_logit_adjusted_loss_shifts_towards_the_rare_class():
    labels = torch.tensor([0] * 9 + [1])
    log_prior = class_log_prior(labels, 2, smoothing=0.0)
    assert torch.exp(log_prior).tolist() == pytest.approx([0.9, 0.1])
    logits = torch.zeros(2, 2)
    targets = torch.tensor([0, 1])
    plain = logit_adjusted_cross_entropy(logits, targets, None)
    adjusted = logit_adjusted_cross_entropy(logits, targets, log_prior, tau=1.0)
    assert plain.tolist() == pytest.approx([math.log(2)] * 2)
    # with equal logits, the adjusted loss calls the frequent class likely: small loss for it, large for the rare
    assert adjusted[0] == pytest.approx(-math.log(0.9)) and adjusted[1] == pytest.approx(-math.log(0.1))
    assert logit_adjusted_cross_entropy(logits, targets, log_prior, tau=0.0).tolist() == pytest.approx(plain.tolist())
    with pytest.raises(ValueError, match="outside the 2 classes"):
        class_log_prior([0, 2], 2)
    assert torch.isfinite(class_log_prior([0, 0], 3)).all()  # smoothing: an absent class is not -inf


def _run(method: str, latest_epoch: int | None, max_epochs: int = 6, logit_adjustment: float = 0.0, prior=None):
    true, given, images, val_true, val_images = _setup(flipped=9)
    torch.manual_seed(0)
    network = PeerEnsemble(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, NUM_CLASSES)), num_peers=2)
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, ["a", "b", "c"])
    estimator = NoiseRateEstimateHandler(
        selection,
        NUM_CLASSES,
        estimate_epoch=1,
        method=method,
        network=network,
        train_loader=_batches(given, images, batch_size=48),
        val_loader=_batches(val_true, val_images, batch_size=24),
        true_labels=true,
        class_names=["a", "b", "c"],
        latest_epoch=latest_epoch,
    )
    trainer = CoTeachingTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=_batches(given, images),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=0.05),
        forget_rate=None,
        train_handlers=[selection, estimator],
        class_log_prior=class_log_prior(given, NUM_CLASSES) if prior is None else torch.log(torch.tensor(prior)),
        logit_adjustment=logit_adjustment,
    )
    trainer.run()
    return estimator, trainer


def test_ensemble_records_every_estimator_and_their_disagreement():
    estimator, trainer = _run("ensemble", latest_epoch=None)
    assert set(estimator.estimator_rates) == {"prototype_matching", "confident_joint_val", "confusion_inversion", "gmm"}
    rates, spread, cautious = combine_estimates(
        {k: torch.tensor(v) for k, v in estimator.estimator_rates.items()}, estimator.disagreement_tolerance
    )
    assert estimator.class_estimates == pytest.approx(rates.tolist())
    assert estimator.disagreement == pytest.approx(float(spread.max()))
    assert estimator.cautious_classes == [n for n, c in zip("abc", cautious.tolist(), strict=True) if c]
    metrics = trainer.state.metrics
    assert metrics["noise_estimate_epoch"] == 1
    assert metrics["noise_estimate_disagreement"] == pytest.approx(estimator.disagreement)
    assert "noise_rate_estimate_gmm" in metrics and "noise_rate_estimate_prototype_matching" in metrics
    # everything survives a checkpoint
    restored = NoiseRateEstimateHandler(estimator.selection, NUM_CLASSES, class_names=["a", "b", "c"])
    restored.load_state_dict(estimator.state_dict())
    assert set(restored.estimator_rates) == set(estimator.estimator_rates)
    for name, rates in estimator.estimator_rates.items():
        assert restored.estimator_rates[name] == pytest.approx(rates)
    assert restored.cautious_classes == estimator.cautious_classes
    assert restored.estimated_at == 1 and restored.disagreement == pytest.approx(estimator.disagreement)


def test_adaptive_estimate_waits_until_validation_stops_rising():
    fixed, _ = _run("prototype_matching", latest_epoch=None)
    adaptive, trainer = _run("prototype_matching", latest_epoch=5)
    assert fixed.estimated_at == 1
    # epoch 1's validation accuracy has no predecessor, so the adaptive rule waits at least one epoch
    assert 2 <= adaptive.estimated_at <= 5
    assert trainer.state.metrics["noise_estimate_epoch"] == adaptive.estimated_at
    never, _ = _run("prototype_matching", latest_epoch=3, max_epochs=3)
    assert never.estimated_at is not None and never.estimated_at <= 3  # latest_epoch forces it
    # a run shorter than latest_epoch estimates by its last epoch rather than not at all
    short, _ = _run("prototype_matching", latest_epoch=6, max_epochs=2)
    assert short.estimated_at == 2


def test_latest_epoch_before_estimate_epoch_is_refused():
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, ["a", "b", "c"])
    with pytest.raises(ValueError, match="latest_epoch"):
        NoiseRateEstimateHandler(selection, NUM_CLASSES, estimate_epoch=3, latest_epoch=2)


def test_trainer_with_logit_adjustment_uses_the_adjusted_loss():
    # the given labels here are balanced, where the adjustment is a constant shift: use a long-tailed prior
    prior = [0.7, 0.2, 0.1]
    _, plain = _run("gmm", latest_epoch=None, max_epochs=1, prior=prior)
    _, adjusted = _run("gmm", latest_epoch=None, max_epochs=1, logit_adjustment=1.0, prior=prior)
    assert plain.state.output["loss"] != pytest.approx(adjusted.state.output["loss"])
    with pytest.raises(ValueError, match="needs class_log_prior"):
        CoTeachingTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=[],
            network=PeerEnsemble(lambda: nn.Linear(4, 2), num_peers=2),
            optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1),
            logit_adjustment=1.0,
        )


def test_class_balanced_sampler_sees_classes_equally_and_reproducibly():
    from alr_monai.data.datasets import ClassBalancedSampler, build_train_sampler

    labels = [0] * 90 + [1] * 10
    dataset = list(range(100))
    sampler = build_train_sampler("class_balanced", dataset, labels, seed=3)
    assert isinstance(sampler, ClassBalancedSampler)
    sampler.set_epoch(2)
    draw = list(sampler)
    assert len(draw) == 100 and list(sampler) == draw  # the same epoch draws the same order (resume)
    rare = sum(labels[i] == 1 for i in draw)
    assert 30 <= rare <= 70  # about half, not a tenth
    sampler.set_epoch(3)
    assert list(sampler) != draw
    # two processes split one draw
    halves = [build_train_sampler("class_balanced", dataset, labels, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    for half in halves:
        half.set_epoch(2)
    assert sorted(list(halves[0]) + list(halves[1])) == sorted(draw)
    assert sorted(build_train_sampler("shuffle", dataset, labels)) == dataset
    with pytest.raises(ValueError, match="imbalance#sampler"):
        build_train_sampler("oversample", dataset, labels)
    with pytest.raises(ValueError, match="labels for a dataset"):
        ClassBalancedSampler(dataset, labels[:5])


def test_report_names_the_estimators_and_their_disagreement():
    from alr_monai.report import _estimator_facts

    assert _estimator_facts({"noise_rate_estimate": 0.4}) == []
    train = {
        "noise_rate_estimate_prototype_matching": 0.5,
        "noise_rate_estimate_gmm": 0.2,
        "noise_estimate_epoch": 6,
        "noise_estimate_disagreement": 0.3,
        "noise_estimate_cautious_classes": 2,
    }
    (line,) = _estimator_facts(train)
    assert "prototype_matching 0.500" in line and "gmm 0.200" in line and "after epoch 6" in line
    assert "no majority of them agrees on 2 class(es) (the closest majority spans 0.300)" in line
