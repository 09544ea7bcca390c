from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alr_monai.algorithms.acquisition import (
    ACQUISITION_NAMES,
    SCORE_FUNCTIONS,
    add_dropout_before_last_linear,
    bald,
    class_quotas,
    enable_mc_dropout,
    entropy,
    even_quotas,
    find_last_linear,
    kcenter_greedy,
    least_confidence,
    margin,
    random_scores,
    select_top,
    select_top_per_class,
)

# Rows: confident, two-way tie, uniform, confident-ish with a runner-up.
PROBS = torch.tensor(
    [
        [0.98, 0.01, 0.01],
        [0.50, 0.50, 0.00],
        [1 / 3, 1 / 3, 1 / 3],
        [0.70, 0.25, 0.05],
    ]
)


def test_entropy_values_and_ranking():
    scores = entropy(PROBS)
    assert scores[2].item() == pytest.approx(math.log(3))
    assert scores[1].item() == pytest.approx(math.log(2))  # 0 * log 0 counts as 0, not NaN
    assert entropy(torch.tensor([[1.0, 0.0, 0.0]])).item() == 0.0
    # Unlike least confidence and margin, entropy counts the third class: (0.7, 0.25, 0.05) beats the tie.
    assert scores[3].item() == pytest.approx(-(0.7 * math.log(0.7) + 0.25 * math.log(0.25) + 0.05 * math.log(0.05)))
    assert select_top(scores, 4).tolist() == [2, 3, 1, 0]


def test_least_confidence_values_and_ranking():
    scores = least_confidence(PROBS)
    torch.testing.assert_close(scores, torch.tensor([0.02, 0.5, 2 / 3, 0.3]))
    assert select_top(scores, 4).tolist() == [2, 1, 3, 0]


def test_margin_values_and_ranking():
    scores = margin(PROBS)
    # Tie and uniform both have top1 == top2: margin score 1; the tie resolves by position.
    torch.testing.assert_close(scores, torch.tensor([0.03, 1.0, 1.0, 0.55]))
    assert select_top(scores, 4).tolist() == [1, 2, 3, 0]


def test_bald_zero_when_passes_agree_high_when_confident_passes_disagree():
    agree = PROBS.unsqueeze(0).repeat(5, 1, 1)
    torch.testing.assert_close(bald(agree), torch.zeros(4), atol=1e-6, rtol=0)

    confident_a = torch.tensor([[0.99, 0.01], [0.5, 0.5]])
    confident_b = torch.tensor([[0.01, 0.99], [0.5, 0.5]])
    mc = torch.stack([confident_a, confident_b, confident_a, confident_b])
    scores = bald(mc)
    assert scores[0].item() > 0.6  # close to log 2 = 0.693: each pass sure, passes disagree
    assert scores[1].item() == pytest.approx(0.0, abs=1e-6)  # uncertain but consistent: no information
    with pytest.raises(ValueError):
        bald(PROBS)


def test_random_scores_reproducible_and_registry_consistent():
    first = random_scores(6, torch.Generator().manual_seed(7))
    second = random_scores(6, torch.Generator().manual_seed(7))
    assert torch.equal(first, second) and first.shape == (6,)
    assert torch.equal(SCORE_FUNCTIONS["random"](PROBS, generator=torch.Generator().manual_seed(7)), first[:4])
    assert torch.equal(SCORE_FUNCTIONS["entropy"](PROBS), entropy(PROBS))
    assert set(ACQUISITION_NAMES) == {
        "random",
        "entropy",
        "least_confidence",
        "margin",
        "bald",
        "coreset",
        "label_quality",
        "suspect_entropy",
    }


def test_select_top_ties_nan_and_budget():
    scores = torch.tensor([0.5, float("nan"), 0.9, 0.5, -float("inf")])
    assert select_top(scores, 3).tolist() == [2, 0, 3]
    assert select_top(scores, 10).tolist() == [2, 0, 3, 4, 1]
    assert select_top(scores, 0).numel() == 0


def test_kcenter_greedy_without_labelled_points():
    pool = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [0.0, 5.0], [0.2, 0.1]])
    picks = kcenter_greedy(pool, None, budget=3)
    # Mean (2.06, 1.02): farthest is (10, 0). Then (0, 5) (distance 11.2 vs 10 for the origin), then the
    # point of the origin cluster farthest from both centres: (0.1, 0), 5.001 from (0, 5), beats (0, 0) at 5.
    assert picks.tolist() == [2, 3, 1]
    assert picks.dtype == torch.long


def test_kcenter_greedy_with_labelled_points_and_chunking():
    pool = torch.tensor([[1.0, 0.0], [9.5, 0.0], [5.0, 5.0], [5.0, -6.0], [0.0, 0.5]])
    labelled = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    expected = [3, 2, 0]
    assert kcenter_greedy(pool, labelled, budget=3).tolist() == expected
    assert kcenter_greedy(pool, labelled, budget=3, chunk_size=2).tolist() == expected
    # Never repeats a pick, even with duplicate points.
    duplicates = torch.zeros(4, 2)
    assert sorted(kcenter_greedy(duplicates, None, budget=4).tolist()) == [0, 1, 2, 3]


class _TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.BatchNorm1d(8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def test_find_last_linear_and_error():
    model = _TinyClassifier()
    assert find_last_linear(model) is model.fc
    with pytest.raises(ValueError, match="no torch.nn.Linear"):
        find_last_linear(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_enable_mc_dropout_only_switches_dropout():
    model = _TinyClassifier()
    assert enable_mc_dropout(model) == 1
    assert model.features[2].training and not model.features[3].training and not model.training
    assert enable_mc_dropout(nn.Sequential(nn.Linear(2, 2))) == 0


def test_add_dropout_before_last_linear_keeps_linear_and_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    linear = model[2]
    captured = []
    linear.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    add_dropout_before_last_linear(model, p=0.5)
    assert isinstance(model[2], nn.Sequential) and model[2][1] is linear
    assert find_last_linear(model) is linear
    assert enable_mc_dropout(model) == 1

    x = torch.ones(2, 4)
    first, second = model(x), model(x)
    assert not torch.equal(first, second)  # MC passes differ
    assert len(captured) == 2 and (captured[0] == 0).any()  # hook sees the dropped-out features

    add_dropout_before_last_linear(model, p=0.2)  # idempotent: only updates p
    assert model[2][0].p == 0.2 and model[2][1] is linear
    with pytest.raises(ValueError):
        add_dropout_before_last_linear(nn.Linear(2, 2), p=0.1)


def test_kcenter_greedy_matches_brute_force_reference():
    generator = torch.Generator().manual_seed(3)
    pool = torch.randn(300, 16, generator=generator, dtype=torch.float64)
    labelled = torch.randn(40, 16, generator=generator, dtype=torch.float64)
    nearest = torch.cdist(pool, labelled).min(dim=1).values
    reference = []
    for _ in range(25):
        pick = int(nearest.argmax())
        reference.append(pick)
        nearest = torch.minimum(nearest, (pool - pool[pick]).norm(dim=1))
    assert kcenter_greedy(pool, labelled, budget=25, chunk_size=64).tolist() == reference


def test_class_quotas_follow_the_pool_shares_with_largest_remainders():
    classes = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    assert class_quotas(classes, 5) == {0: 3, 1: 2, 2: 0}  # exact 3.0, 1.5, 0.5: the tied remainder goes to class 1
    assert sum(class_quotas(classes, 7).values()) == 7
    assert class_quotas(classes, 50) == {0: 6, 1: 3, 2: 1}  # never more than a class has


def test_even_quotas_fill_like_water_and_give_small_remainders_to_the_smaller_indices():
    classes = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    assert even_quotas(classes, 5) == {0: 2, 1: 2, 2: 1}
    assert even_quotas(classes, 7) == {0: 3, 1: 3, 2: 1}  # class 2 has one sample: its unused share goes on
    assert even_quotas(classes, 4) == {0: 2, 1: 1, 2: 1}  # one left over: to class 0
    assert even_quotas(classes, 50) == {0: 6, 1: 3, 2: 1}
    assert even_quotas(classes, 0) == {0: 0, 1: 0, 2: 0}


def test_per_class_selection_looks_at_a_class_whose_scores_are_all_low():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1, 0.05])
    classes = torch.tensor([0, 0, 0, 0, 1, 1])
    assert select_top(scores, 3).tolist() == [0, 1, 2]
    picked = select_top_per_class(scores, classes, 3)
    assert picked.tolist() == [0, 1, 4]  # class 1 holds a third of the pool, so it gets one pick, best first
    assert select_top_per_class(scores, classes, 4).tolist() == [0, 1, 2, 4]  # in proportion: 3 + 1
    assert select_top_per_class(scores, classes, 4, split="even").tolist() == [0, 1, 4, 5]  # evenly: 2 + 2
    with pytest.raises(ValueError, match="must match"):
        select_top_per_class(scores, classes[:3], 2)
    with pytest.raises(ValueError, match="unknown quota split"):
        select_top_per_class(scores, classes, 2, split="inverse")


def test_suspect_entropy_asks_where_the_model_doubts_the_label_and_does_not_know_the_answer():
    from alr_monai.algorithms.acquisition import suspect_entropy

    probs = torch.tensor(
        [
            [0.5, 0.5, 0.0, 0.0],  # unsure between 0 and 1, given 0: half suspicious
            [0.0, 1.0, 0.0, 0.0],  # sure it is 1, given 0: suspicious but no uncertainty left (label quality's pick)
            [0.25, 0.25, 0.25, 0.25],  # knows nothing, given 2
            [1.0, 0.0, 0.0, 0.0],  # agrees with its label 0
        ]
    )
    labels = torch.tensor([0, 0, 2, 0])
    scores = suspect_entropy(probs, labels)
    assert scores.tolist() == pytest.approx([0.5 * 0.5, 0.0, 1.0 * 0.75, 0.0])
    assert int(scores.argmax()) == 2
