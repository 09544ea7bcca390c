"""``alr_monai.relabel.acquire.acquire`` on a tiny fake network whose outputs are fixed tables."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from alr_monai.algorithms.acquisition import find_last_linear
from alr_monai.relabel.acquire import acquire, quota_mode

OFFSET = 100  # dataset indices differ from pool positions, so a mix-up shows


class TableNet(nn.Module):
    """Looks up a feature row by the integer in ``image`` and applies a Linear head (found by find_last_linear).

    With ``identity_head`` the features are the logits. Records the mode of every forward call.
    """

    def __init__(self, features: torch.Tensor, num_classes: int, identity_head: bool = True, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("table", features.float())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(features.shape[1], num_classes)
        if identity_head:
            with torch.no_grad():
                self.head.weight.copy_(torch.eye(num_classes, features.shape[1]))
                self.head.bias.zero_()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.head(self.dropout(self.table[x.reshape(-1).long()]))


def pool_loader(n: int, batch_size: int = 3, offset: int = OFFSET) -> DataLoader:
    items = [{"image": torch.tensor([i]), "label": 0, "index": offset + i} for i in range(n)]
    return DataLoader(items, batch_size=batch_size, shuffle=False)


def log_probs(rows: list[list[float]]) -> torch.Tensor:
    probs = torch.tensor(rows, dtype=torch.float64).clamp_min(1e-9)
    return (probs / probs.sum(1, keepdim=True)).log().float()


# Four classes. Entropy ranks G > H > I > A, least confidence H > G > I > A, margin I > H > G > A.
A = [0.97, 0.01, 0.01, 0.01]
G = [0.40, 0.20, 0.20, 0.20]
H = [0.36, 0.34, 0.30, 0.00]
I = [0.00, 0.50, 0.50, 0.00]  # noqa: E741
PROBS = [A, H, G, A, I, A]  # pool positions 0..5: A=0,3,5  H=1  G=2  I=4


@pytest.mark.parametrize(
    ("method", "expected_positions"),
    [("entropy", [2, 1, 4]), ("least_confidence", [1, 2, 4]), ("margin", [4, 1, 2])],
)
def test_uncertainty_acquisitions_pick_the_expected_samples(method, expected_positions):
    network = TableNet(log_probs(PROBS), 4)
    network.train()
    picked = acquire(method, network, pool_loader(len(PROBS)), 3, "cpu")
    assert picked.indices == [OFFSET + p for p in expected_positions]
    assert picked.scores == sorted(picked.scores, reverse=True)
    probs = torch.tensor(PROBS)
    for rank, position in enumerate(expected_positions):
        row = probs[position]
        # Ties in the top class (I) go to the first one.
        assert picked.predicted_labels[rank] == int(row.argmax())
        assert picked.predicted_probabilities[rank] == pytest.approx(float(row.max()), abs=1e-5)
    assert network.modes and not any(network.modes), "scores must come from eval-mode inference"
    assert network.training, "the network's mode is restored"


def test_predicted_class_quota_spreads_the_budget_over_the_predicted_classes():
    # The model predicts class 0 for every pool sample but I (position 4, predicted 1): entropy alone takes the
    # two most uncertain class-0 samples; the even quota over predicted classes takes one of each.
    network = TableNet(log_probs(PROBS), 4)
    assert acquire("entropy", network, pool_loader(len(PROBS)), 2, "cpu").indices == [OFFSET + 2, OFFSET + 1]
    picked = acquire("entropy", network, pool_loader(len(PROBS)), 2, "cpu", class_quota="predicted")
    assert picked.indices == [OFFSET + 2, OFFSET + 4]
    assert picked.predicted_labels == [0, 1]


def test_quota_mode_reads_the_old_switch_and_refuses_unknown_modes():
    assert quota_mode(True) == "given" and quota_mode(False) == "off" and quota_mode("predicted") == "predicted"
    with pytest.raises(ValueError, match="class_quota must be one of"):
        quota_mode("predict")


def test_uncertainty_scores_have_the_documented_values():
    network = TableNet(log_probs([G]), 4)
    entropy = -sum(p * math.log(p) for p in G)
    assert acquire("entropy", network, pool_loader(1), 1, "cpu").scores[0] == pytest.approx(entropy, abs=1e-5)
    assert acquire("least_confidence", network, pool_loader(1), 1, "cpu").scores[0] == pytest.approx(0.6, abs=1e-5)
    assert acquire("margin", network, pool_loader(1), 1, "cpu").scores[0] == pytest.approx(0.8, abs=1e-5)


def test_budget_larger_than_the_pool_returns_the_whole_pool():
    network = TableNet(log_probs(PROBS), 4)
    picked = acquire("entropy", network, pool_loader(len(PROBS)), 50, "cpu")
    assert sorted(picked.indices) == [OFFSET + p for p in range(len(PROBS))]


def test_random_is_reproducible_per_seed_and_differs_across_seeds():
    n = 40
    network = TableNet(torch.zeros(n, 4), 4)
    loader = pool_loader(n, batch_size=7)

    def pick(seed: int) -> list[int]:
        return acquire("random", network, loader, 10, "cpu", generator=torch.Generator().manual_seed(seed)).indices

    first = pick(3)
    assert first == pick(3)
    assert len(set(first)) == 10 and set(first) <= set(range(OFFSET, OFFSET + n))
    assert first != pick(4)
    # Identical probabilities everywhere: only the generator decides, and not simply in pool order.
    assert first != list(range(OFFSET, OFFSET + 10))


# Pool embeddings (2-D): a tight cluster near the origin, one far point on each axis.
POOL = torch.tensor([[0.0, 0.0], [0.5, -0.5], [10.0, 0.0], [0.0, 6.0], [0.2, 0.1]])


def test_coreset_picks_the_farthest_embeddings():
    network = TableNet(POOL, 3, identity_head=False)
    picked = acquire("coreset", network, pool_loader(len(POOL)), 2, "cpu")
    # No labelled centres: first the point farthest from the pool mean, then the one farthest from it.
    assert picked.indices == [OFFSET + 2, OFFSET + 3]
    assert picked.scores == [1.0, 0.0]
    assert not any(network.modes)


def test_coreset_starts_from_the_labelled_embeddings():
    # Labelled samples sit next to (10, 0): that region is covered, so the first pick is (0, 6), and the next
    # is the cluster point farthest from both (0, 6) and the labelled ones.
    features = torch.cat([POOL, torch.tensor([[10.0, 0.5], [9.5, 0.0]])])
    network = TableNet(features, 3, identity_head=False)
    pool = pool_loader(len(POOL))
    labelled = DataLoader(
        [{"image": torch.tensor([5 + j]), "label": 0, "index": j} for j in range(2)], batch_size=2, shuffle=False
    )
    picked = acquire("coreset", network, pool, 3, "cpu", labelled_loader=labelled)
    assert picked.indices == [OFFSET + 3, OFFSET + 1, OFFSET + 0]
    assert picked.scores == [1.0, 0.5, 0.0]


def test_bald_needs_dropout_and_names_the_setting():
    network = TableNet(log_probs(PROBS), 4)
    with pytest.raises(ValueError, match="network_def#dropout"):
        acquire("bald", network, pool_loader(len(PROBS)), 2, "cpu")


def test_bald_with_dropout_scores_disagreeing_passes():
    torch.manual_seed(0)
    features = torch.randn(8, 16) * 3
    network = TableNet(features, 4, identity_head=False, dropout=0.5)
    network.train()
    picked = acquire("bald", network, pool_loader(8), 8, "cpu", mc_samples=6)
    assert sorted(picked.indices) == list(range(OFFSET, OFFSET + 8))
    assert all(score >= 0 for score in picked.scores) and max(picked.scores) > 0
    assert network.training and network.dropout.training, "modes are restored after MC sampling"


def test_bald_masks_follow_the_generator_and_leave_the_global_rng_alone():
    torch.manual_seed(0)
    features = torch.randn(8, 16) * 3
    network = TableNet(features, 4, identity_head=False, dropout=0.5)

    def scores(seed: int) -> list[float]:
        generator = torch.Generator().manual_seed(seed)
        return acquire("bald", network, pool_loader(8), 8, "cpu", mc_samples=4, generator=generator).scores

    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    first = scores(7)
    assert torch.equal(torch.get_rng_state(), global_state), "MC dropout must not consume training's RNG"
    torch.manual_seed(999)  # whatever the global RNG holds (a resumed process), the same generator: same query
    assert scores(7) == first
    assert scores(8) != first


def test_unknown_method_lists_the_choices():
    network = TableNet(log_probs(PROBS), 4)
    with pytest.raises(ValueError, match="entropy"):
        acquire("entropie", network, pool_loader(len(PROBS)), 1, "cpu")


def test_fake_network_exposes_its_head_to_find_last_linear():
    network = TableNet(POOL, 3)
    assert find_last_linear(network) is network.head
