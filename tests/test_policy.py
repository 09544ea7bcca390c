"""Selection policy and prototype scorer: today's recipes reproduced, per-class cuts, rank combination."""

from __future__ import annotations

import pytest
import torch

from alr_monai.algorithms.policy import SelectionPolicy, class_keep_counts, rank_fractions
from alr_monai.algorithms.prototype import PrototypeAccumulator, cosine_distance_to_prototypes
from alr_monai.algorithms.selection import num_to_keep
from alr_monai.engines import CoTeachingEvents, CoTeachingTrainer
from alr_monai.handlers import PrototypeDistanceHandler
from alr_monai.networks import PeerEnsemble


def _reference_selection(losses: torch.Tensor, forget_rate: float, vog: torch.Tensor | None, mix: float):
    """The trainer's selection before the policy existed, written out independently of the library."""
    num_keep = num_to_keep(losses.numel(), forget_rate)
    n_vog = 0 if vog is None else round(mix * num_keep)
    keep = torch.zeros(losses.numel(), dtype=torch.bool)
    keep[torch.argsort(losses, stable=True)[: num_keep - n_vog]] = True
    if n_vog:
        # (is-NaN, score, loss, position) ascending among the samples the loss did not pick
        rows = sorted(
            (bool(torch.isnan(vog[i])), float(torch.nan_to_num(vog[i], nan=float("inf"))), float(losses[i]), i)
            for i in range(losses.numel())
            if not keep[i]
        )
        for row in rows[:n_vog]:
            keep[row[3]] = True
    return keep


@pytest.mark.parametrize("seed", range(6))
def test_global_policy_reproduces_the_coteaching_and_vog_selection(seed):
    generator = torch.Generator().manual_seed(seed)
    batch = 37
    losses = [torch.rand(batch, generator=generator) for _ in range(2)]
    vog = [torch.randn(batch, generator=generator) for _ in range(2)]
    vog[1][:5] = float("nan")  # samples without enough snapshots yet
    labels = torch.randint(0, 4, (batch,), generator=generator)
    for rate, mix in ((0.0, 0.0), (0.3, 0.0), (0.45, 0.2), (0.6, 0.5)):
        policy = SelectionPolicy(fill={"vog": mix})
        keep = policy.select({"loss": losses, "vog": vog}, labels, rate)
        for k in range(2):
            assert torch.equal(keep[k], _reference_selection(losses[k], rate, vog[k] if mix else None, mix))
        # before VoG is ready the share goes back to the loss
        keep = policy.select({"loss": losses}, labels, rate)
        assert all(torch.equal(keep[k], _reference_selection(losses[k], rate, None, 0.0)) for k in range(2))


def test_class_keep_counts_are_exact_over_an_epoch():
    generator = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.zeros(700), torch.ones(60), torch.full((40,), 2)]).long()
    labels = labels[torch.randperm(labels.numel(), generator=generator)]
    shares = torch.tensor([0.77, 0.12, 0.5])
    residual, kept = None, torch.zeros(3, dtype=torch.long)
    for batch in labels.split(64):
        counts, residual = class_keep_counts(batch, shares, residual)
        assert (counts <= torch.bincount(batch, minlength=3)).all()
        kept += counts
    expected = torch.tensor([700 * 0.77, 60 * 0.12, 40 * 0.5])
    # per-batch rounding would give the rare class 0 or 1 per batch (0 or 13 in all); carrying gives 7
    assert (kept.double() - expected).abs().max() <= 1.0


def test_class_keep_counts_keep_one_sample_when_every_quota_rounds_to_zero():
    counts, _ = class_keep_counts(torch.tensor([1, 1, 2]), torch.tensor([0.0, 0.1, 0.1]))
    assert int(counts.sum()) == 1


def test_per_class_cut_keeps_a_clean_rare_class_that_a_global_cut_starves():
    # Class 1 is rare and clean but has large losses (it is rare); class 0 is 40% noise with bimodal losses.
    # One cut at the true global rate drops the rare class; a cut per class at each class's rate keeps it.
    generator = torch.Generator().manual_seed(1)
    n_major, n_rare = 200, 20
    major_clean = torch.rand(120, generator=generator) * 0.5
    major_noisy = 2.0 + torch.rand(80, generator=generator)
    rare_clean = 2.5 + torch.rand(n_rare, generator=generator)  # rarer than the majority's noise is wrong
    losses = torch.cat([major_clean, major_noisy, rare_clean])
    labels = torch.cat([torch.zeros(n_major), torch.ones(n_rare)]).long()
    clean = torch.cat([torch.ones(120), torch.zeros(80), torch.ones(n_rare)]).bool()
    scores = {"loss": [losses]}
    global_keep = SelectionPolicy().select(scores, labels, 80 / 220)[0]
    per_class_keep = SelectionPolicy(per_class=True).select(scores, labels, torch.tensor([0.4, 0.0]))[0]
    assert int(global_keep[labels == 1].sum()) < n_rare // 2
    assert bool(per_class_keep[labels == 1].all())
    assert bool(clean[per_class_keep].all())  # and the noisy majority samples are all dropped


def test_per_class_cut_of_a_mostly_noisy_rare_class():
    # A rare given class that is 85% noise: cut at its rate it keeps its clean 15%, a global 40% cut keeps 60%.
    generator = torch.Generator().manual_seed(2)
    rare = torch.cat([torch.rand(6, generator=generator), 1.5 + torch.rand(34, generator=generator)])
    major = torch.cat([torch.rand(240, generator=generator), 1.5 + torch.rand(60, generator=generator)])
    losses = torch.cat([major, rare])
    labels = torch.cat([torch.zeros(300), torch.ones(40)]).long()
    policy = SelectionPolicy(per_class=True)
    keep = policy.select({"loss": [losses]}, labels, torch.tensor([0.2, 0.85]))[0]
    assert int(keep[labels == 1].sum()) == 6 and bool(keep[300:306].all())
    assert int(keep[labels == 0].sum()) == 240


def test_fill_share_follows_each_class_quota():
    labels = torch.cat([torch.zeros(50), torch.ones(50)]).long()
    losses = torch.arange(100, dtype=torch.float32)
    vog = -torch.arange(100, dtype=torch.float32)  # VoG prefers exactly what the loss rejects
    policy = SelectionPolicy(fill={"vog": 0.5}, per_class=True)
    keep = policy.select({"loss": [losses], "vog": [vog]}, labels, torch.tensor([0.2, 0.8]))[0]
    # class 0 keeps 40 (20 by loss, 20 by VoG), class 1 keeps 10 (5 and 5): shares follow the clean counts
    assert int(keep[:50].sum()) == 40 and int(keep[:20].sum()) == 20 and int(keep[30:50].sum()) == 20
    assert int(keep[50:].sum()) == 10 and int(keep[50:55].sum()) == 5 and int(keep[95:].sum()) == 5


def test_rank_combination_and_parsing():
    assert SelectionPolicy(rank_by="loss+prototype").rank_by == ["loss", "prototype"]
    fractions = rank_fractions(torch.tensor([3.0, float("nan"), 1.0, 2.0]))
    assert fractions[[0, 2, 3]].tolist() == [1.0, 0.0, 0.5] and torch.isnan(fractions[1])
    losses = torch.tensor([0.1, 0.3, 0.2, 0.4])
    proto = torch.tensor([0.9, 0.0, 0.1, 0.8])
    labels = torch.zeros(4, dtype=torch.long)
    # mean rank fractions 1/2, 1/3, 1/3, 5/6: the two best by both criteria together
    keep = SelectionPolicy(rank_by="loss+prototype").select({"loss": [losses], "prototype": [proto]}, labels, 0.5)[0]
    assert keep.tolist() == [False, True, True, False]
    # a missing rank score is skipped (the prototypes exist only from the second epoch)
    keep = SelectionPolicy(rank_by="loss+prototype").select({"loss": [losses]}, labels, 0.5)[0]
    assert keep.tolist() == [True, False, True, False]


def test_policy_refuses_bad_settings():
    with pytest.raises(ValueError, match="add up"):
        SelectionPolicy(fill={"vog": 0.7, "prototype": 0.5})
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        SelectionPolicy(fill={"vog": 1.5})
    with pytest.raises(ValueError, match="per_class=True"):
        SelectionPolicy().select({"loss": [torch.rand(4)]}, torch.zeros(4, dtype=torch.long), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="no forget rate"):
        SelectionPolicy(per_class=True).select(
            {"loss": [torch.rand(3)]}, torch.tensor([0, 1, 2]), torch.tensor([0.1, 0.2])
        )


def test_cosine_distance_and_prototypes():
    acc = PrototypeAccumulator(num_classes=3)
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    acc.add(features, torch.tensor([0, 0, 1, 1]))
    acc.commit()
    assert acc.valid.tolist() == [True, True, False]
    distance = cosine_distance_to_prototypes(
        torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 1, 2]), acc.prototypes, acc.valid
    )
    assert distance[0] == pytest.approx(0.0) and distance[1] == pytest.approx(1.0) and torch.isnan(distance[2])
    restored = PrototypeAccumulator(num_classes=3)
    restored.load_state_dict(acc.state_dict())
    assert torch.equal(restored.prototypes, acc.prototypes) and torch.equal(restored.valid, acc.valid)


def test_prototype_handler_offers_scores_from_the_second_epoch():
    torch.manual_seed(0)
    images, labels = torch.randn(24, 4), torch.arange(24) % 3
    batches = [
        {"image": images[s : s + 8], "label": labels[s : s + 8], "index": torch.arange(s, s + 8)} for s in (0, 8, 16)
    ]
    network = PeerEnsemble(
        lambda: torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)), 2
    )
    handler = PrototypeDistanceHandler(num_classes=3)
    offered: dict[int, bool] = {}

    def probe(engine):
        scores = engine.state.output["scores"]
        offered[engine.state.epoch] = "prototype" in scores
        if "prototype" in scores:
            assert all(
                torch.isfinite(s).all() and (s >= -1e-6).all() and (s <= 2 + 1e-6).all() for s in scores["prototype"]
            )

    trainer = CoTeachingTrainer(
        device="cpu",
        max_epochs=3,
        train_data_loader=batches,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        forget_rate=0.2,
        num_gradual=0,
        selection_policy=SelectionPolicy(rank_by="loss+prototype", per_class=True),
        train_handlers=[handler],
    )
    trainer.add_event_handler(CoTeachingEvents.SELECTION_COMPLETED, probe)
    trainer.run()
    assert offered == {1: False, 2: True, 3: True}
    restored = PrototypeDistanceHandler(num_classes=3)
    restored.load_state_dict(handler.state_dict())
    assert all(
        torch.equal(a.prototypes, b.prototypes)
        for a, b in zip(restored.accumulators, handler.accumulators, strict=True)
    )
