"""CoTeachingTrainer on tiny synthetic tensors: peer-update rule, forced keeps, forget-rate schedule, one peer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

from alr_monai.algorithms.selection import forget_rate_schedule, num_to_keep, select_small_loss
from alr_monai.engines import CoTeachingEvents, CoTeachingTrainer
from alr_monai.networks import PeerEnsemble

NUM_FEATURES = 2
NUM_CLASSES = 2


class TinyNet(nn.Module):
    """Linear body (features) + linear head, so ``FeatureTap`` finds the head and every gradient is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(NUM_FEATURES, NUM_FEATURES)
        self.head = nn.Linear(NUM_FEATURES, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _batch(images: torch.Tensor, labels: torch.Tensor, start: int = 0) -> dict[str, torch.Tensor]:
    return {"image": images, "label": labels, "index": torch.arange(start, start + len(labels))}


def _random_batches(sizes: list[int], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches, start = [], 0
    for size in sizes:
        images = torch.randn(size, NUM_FEATURES, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
        batches.append(_batch(images, labels, start))
        start += size
    return batches


def _ensemble(num_peers: int = 2, seed: int = 0) -> PeerEnsemble:
    torch.manual_seed(seed)
    return PeerEnsemble(TinyNet, num_peers=num_peers)


def _trainer(network: PeerEnsemble, batches: list, max_epochs: int = 1, lr: float = 1.0, **kwargs) -> CoTeachingTrainer:
    # Plain SGD with lr 1: the parameter change of one step IS minus the gradient, so gradients can be read back.
    optimizer = torch.optim.SGD(network.parameters(), lr=lr)
    return CoTeachingTrainer(
        device="cpu", max_epochs=max_epochs, train_data_loader=batches, network=network, optimizer=optimizer, **kwargs
    )


class Recorder:
    """Collects each iteration's forget rate and per-peer selection."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(CoTeachingEvents.SELECTION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        self.rows.append(
            {
                "epoch": engine.state.epoch,
                "forget_rate": output["forget_rate"],
                "batch_size": len(output["label"]),
                "keep": [k.clone() for k in output["keep"]],
                "losses": [loss.clone() for loss in output["losses"]],
            }
        )


def _disagreeing_peers() -> tuple[PeerEnsemble, dict[str, torch.Tensor]]:
    """Two peers whose small-loss picks are disjoint: peer 0 fits samples 0-3, peer 1 fits samples 4-7."""
    network = _ensemble()
    with torch.no_grad():
        for sign, peer in zip((1.0, -1.0), network.peers, strict=True):
            peer.body.weight.copy_(torch.eye(NUM_FEATURES))
            peer.body.bias.zero_()
            peer.head.weight.copy_(sign * 3.0 * torch.eye(NUM_CLASSES))
            peer.head.bias.zero_()
    # Samples 0-3 point towards their label (peer 0 right, peer 1 wrong), samples 4-7 away from it.
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    towards = F.one_hot(labels, NUM_CLASSES).float()
    images = torch.cat([towards[:4], 1.0 - towards[4:]]) * torch.linspace(0.5, 1.2, 8).unsqueeze(1)
    return network, _batch(images, labels)


def _manual_gradients(peer: nn.Module, batch: dict[str, torch.Tensor], keep: torch.Tensor) -> list[torch.Tensor]:
    peer = copy.deepcopy(peer)
    peer.zero_grad()
    losses = F.cross_entropy(peer(batch["image"]), batch["label"], reduction="none")
    losses[keep].mean().backward()
    return [p.grad.clone() for p in peer.parameters()]


def test_each_peer_is_updated_only_on_its_peers_selection():
    network, batch = _disagreeing_peers()
    before = copy.deepcopy(network)
    recorder = Recorder()
    trainer = _trainer(network, [batch], forget_rate=0.5, num_gradual=0, train_handlers=[recorder])
    trainer.run()

    keep = recorder.rows[0]["keep"]
    # The hand-built case: each peer keeps the 4 samples it fits, so the two picks are disjoint.
    assert keep[0].tolist() == [True] * 4 + [False] * 4
    assert keep[1].tolist() == [False] * 4 + [True] * 4
    for k in range(2):
        peer_before, peer_after = before.peers[k], network.peers[k]
        applied = [p0 - p1 for p0, p1 in zip(peer_before.parameters(), peer_after.parameters(), strict=True)]
        from_peer = _manual_gradients(peer_before, batch, keep[1 - k])
        from_self = _manual_gradients(peer_before, batch, keep[k])
        for got, want in zip(applied, from_peer, strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        # The self-selection gradient is different, so the check above can tell the two rules apart.
        assert any(not torch.allclose(got, wrong, atol=1e-4) for got, wrong in zip(applied, from_self, strict=True))


def test_selection_is_small_loss_and_keep_counts_match_num_to_keep():
    batches = _random_batches([16, 16, 7])
    recorder = Recorder()
    _trainer(
        _ensemble(), batches, max_epochs=2, lr=0.01, forget_rate=0.3, num_gradual=0, train_handlers=[recorder]
    ).run()
    assert len(recorder.rows) == 6
    for row in recorder.rows:
        expected = num_to_keep(row["batch_size"], 0.3)
        assert [int(k.sum()) for k in row["keep"]] == [expected, expected]
        for keep, losses in zip(row["keep"], row["losses"], strict=True):
            assert torch.equal(keep, select_small_loss(losses, expected))


def test_force_keep_samples_are_kept_by_every_peer_and_trained_on():
    network, batch = _disagreeing_peers()
    before = copy.deepcopy(network)
    forced = torch.zeros(8, dtype=torch.bool)
    forced[[3, 7]] = True  # sample 7 is dropped by peer 0's small-loss rule, sample 3 by peer 1's

    def force(engine: Engine) -> None:
        engine.state.output["force_keep"] = forced

    recorder = Recorder()
    trainer = _trainer(network, [batch], forget_rate=0.5, num_gradual=0, train_handlers=[recorder])
    trainer.add_event_handler(CoTeachingEvents.LOSSES_COMPUTED, force)
    trainer.run()

    keep = recorder.rows[0]["keep"]
    assert keep[0].tolist() == [True] * 4 + [False] * 3 + [True]
    assert keep[1].tolist() == [False] * 3 + [True] * 5
    # The forced sample reaches the gradient too, not only the mask.
    applied = [p0 - p1 for p0, p1 in zip(before.peers[0].parameters(), network.peers[0].parameters(), strict=True)]
    for got, want in zip(applied, _manual_gradients(before.peers[0], batch, keep[1]), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_forget_rate_schedule_is_applied_per_epoch():
    batches = _random_batches([10, 10])
    recorder = Recorder()
    started: list[float] = []
    trainer = _trainer(
        _ensemble(), batches, max_epochs=5, lr=0.01, forget_rate=0.4, num_gradual=3, train_handlers=[recorder]
    )
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: started.append(engine.current_forget_rate()))
    trainer.run()

    expected = [forget_rate_schedule(e, 0.4, 3) for e in range(5)]
    assert expected == pytest.approx([0.0, 0.2, 0.4, 0.4, 0.4])
    assert started == pytest.approx(expected)
    assert [trainer.current_forget_rate(e) for e in range(5)] == pytest.approx(expected)
    for row in recorder.rows:
        rate = expected[row["epoch"] - 1]
        assert row["forget_rate"] == pytest.approx(rate)
        assert all(int(k.sum()) == num_to_keep(row["batch_size"], rate) for k in row["keep"])
    assert [int(r["keep"][0].sum()) for r in recorder.rows[::2]] == [10, 8, 6, 6, 6]


def test_unknown_forget_rate_keeps_everything_until_a_handler_sets_it():
    batches = _random_batches([12])
    recorder = Recorder()
    trainer = _trainer(_ensemble(), batches, max_epochs=3, lr=0.01, forget_rate=None, num_gradual=0)
    recorder.attach(trainer)

    def estimate(engine: CoTeachingTrainer) -> None:
        assert engine.forget_rate is None  # nothing set it before
        engine.forget_rate = 0.25  # what NoiseRateEstimateHandler does with its estimate

    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), estimate)
    trainer.run()
    counts = [[int(k.sum()) for k in row["keep"]] for row in recorder.rows]
    assert counts == [[12, 12], [9, 9], [9, 9]]
    assert [row["forget_rate"] for row in recorder.rows] == pytest.approx([0.0, 0.25, 0.25])


def test_one_peer_trains_on_its_own_selection():
    network, batch = _disagreeing_peers()
    single = PeerEnsemble(TinyNet, num_peers=1)
    single.peers[0].load_state_dict(network.peers[0].state_dict())
    before = copy.deepcopy(single)
    recorder = Recorder()
    trainer = _trainer(single, [batch], forget_rate=0.5, num_gradual=0, train_handlers=[recorder])
    trainer.run()

    keep = recorder.rows[0]["keep"]
    assert len(keep) == 1 and keep[0].tolist() == [True] * 4 + [False] * 4
    applied = [p0 - p1 for p0, p1 in zip(before.parameters(), single.parameters(), strict=True)]
    for got, want in zip(applied, _manual_gradients(before.peers[0], batch, keep[0]), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert trainer.state.output["pred"].shape == (8, NUM_CLASSES)


def test_output_carries_per_peer_features_and_summed_logits():
    network, batch = _disagreeing_peers()
    trainer = _trainer(network, [batch], lr=0.0, forget_rate=0.0, num_gradual=0)
    trainer.run()
    output = trainer.state.output
    assert len(output["logits"]) == len(output["features"]) == len(output["losses"]) == 2
    assert output["features"][0].shape == (8, NUM_FEATURES)
    torch.testing.assert_close(output["pred"], output["logits"][0] + output["logits"][1])
    # With lr 0 the reported loss is the mean over peers of each peer's loss on its peer's (here: full) selection.
    expected = float(sum(loss.mean() for loss in output["losses"])) / 2
    assert output["loss"] == pytest.approx(expected, rel=1e-5)


def test_constructor_validation():
    with pytest.raises(TypeError):
        _trainer(TinyNet(), _random_batches([4]))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _trainer(_ensemble(), _random_batches([4]), forget_rate=1.0)
    batch = _random_batches([4])[0]
    del batch["index"]
    with pytest.raises(KeyError):
        _trainer(_ensemble(), [batch], forget_rate=0.0).run()
