"""Phase-1 learning-rate schedule and weight averaging handlers (alr_monai.handlers.stability)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from ignite.engine import Engine, Events

from alr_monai.handlers import LearningRateScheduleHandler, WeightAverageHandler

EPOCH_LENGTH = 5


def _trainer(network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Engine:
    data = [torch.full((2, 3), float(i)) for i in range(EPOCH_LENGTH)]

    def step(engine: Engine, batch: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = (network(batch) - 1.0).square().mean()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    engine = Engine(step)
    engine.data = data
    return engine


def _network(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))


def test_cosine_schedule_anneals_from_the_base_rate_to_its_floor():
    network = _network()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.5)
    engine = _trainer(network, optimizer)
    LearningRateScheduleHandler(optimizer, 0.1, "cosine", min_lr_fraction=0.05).attach(engine)
    rates: list[float] = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: rates.append(optimizer.param_groups[0]["lr"]))
    engine.run(engine.data, max_epochs=3)
    assert len(rates) == 3 * EPOCH_LENGTH
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.005)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    # halfway through (step 7 of 14) the rate is halfway between base and floor; a quarter in, cos(pi/4)'s share
    assert rates[7] == pytest.approx(0.0525)
    assert rates[3] == pytest.approx(0.005 + 0.095 * 0.5 * (1 + math.cos(math.pi * 3 / 14)))


def test_constant_schedule_leaves_the_optimiser_alone_and_bad_settings_are_refused():
    network = _network()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.5)
    engine = _trainer(network, optimizer)
    LearningRateScheduleHandler(optimizer, 0.1, "constant").attach(engine)
    engine.run(engine.data, max_epochs=1)
    assert optimizer.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="schedule"):
        LearningRateScheduleHandler(optimizer, 0.1, "step")
    with pytest.raises(ValueError, match="min_lr_fraction"):
        LearningRateScheduleHandler(optimizer, 0.1, "cosine", min_lr_fraction=2.0)


def _averaged_run(max_epochs: int, start_epoch: int = 2, epochs: float = 1.0, resume_from: dict | None = None):
    network = _network()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05)
    handler = WeightAverageHandler(network, epochs=epochs, start_epoch=start_epoch)
    engine = _trainer(network, optimizer)
    handler.attach(engine)
    if resume_from is not None:
        network.load_state_dict(resume_from["network"])
        optimizer.load_state_dict(resume_from["optimizer"])
        handler.load_state_dict(resume_from["average"])
        engine.load_state_dict(resume_from["engine"])
    engine.run(engine.data, max_epochs=max_epochs)
    saved = {
        "network": copy.deepcopy(network.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "average": copy.deepcopy(handler.state_dict()),
        "engine": engine.state_dict(),
    }
    return network, handler, saved


def test_weight_average_follows_the_ema_of_each_step_from_its_start_epoch():
    # the same run by hand: snapshot the weights after every step, fold them in from epoch 2 on
    network = _network()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05)
    engine = _trainer(network, optimizer)
    snapshots: list[dict] = []
    engine.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: snapshots.append({k: v.clone() for k, v in network.state_dict().items()}),
    )
    engine.add_event_handler(
        Events.EPOCH_STARTED(once=2),
        lambda e: snapshots.append({k: v.clone() for k, v in network.state_dict().items()}),
    )
    engine.run(engine.data, max_epochs=3)
    decay = 1.0 - 1.0 / EPOCH_LENGTH
    start = EPOCH_LENGTH  # snapshots[EPOCH_LENGTH] is epoch 2's starting weights
    expected = {k: v.clone() for k, v in snapshots[start].items()}
    for later in snapshots[start + 1 :]:
        for key, value in later.items():
            if value.is_floating_point():
                expected[key] = decay * expected[key] + (1 - decay) * value
            else:
                expected[key] = value.clone()

    trained, handler, _ = _averaged_run(max_epochs=3)
    assert handler.evaluation_network is not trained
    assert handler.average is not None and handler.average.decay == pytest.approx(decay)
    for key, value in handler.evaluation_network.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7)
    # the average is not just the last step's weights
    assert not torch.equal(handler.evaluation_network[0].weight, trained[0].weight)


def test_before_its_start_epoch_the_evaluated_network_is_the_current_one():
    trained, handler, saved = _averaged_run(max_epochs=2, start_epoch=3)
    assert handler.average is None and saved["average"] == {"started": False}
    for key, value in trained.state_dict().items():
        assert torch.equal(handler.evaluation_network.state_dict()[key], value)


def test_weight_average_resumes_exactly():
    _, uninterrupted, _ = _averaged_run(max_epochs=4)
    _, _, at_epoch_3 = _averaged_run(max_epochs=3)
    _, resumed, _ = _averaged_run(max_epochs=4, resume_from=at_epoch_3)
    for key, value in uninterrupted.evaluation_network.state_dict().items():
        assert torch.equal(resumed.evaluation_network.state_dict()[key], value), key


def test_weight_averaging_off_evaluates_the_network_itself():
    network = _network()
    handler = WeightAverageHandler(network, epochs=0)
    assert handler.evaluation_network is network and not handler.enabled
    engine = _trainer(network, torch.optim.SGD(network.parameters(), lr=0.05))
    handler.attach(engine)
    assert not engine.has_event_handler(handler._update)
    with pytest.raises(ValueError, match="epochs"):
        WeightAverageHandler(network, epochs=-1)


def test_evaluation_network_follows_the_live_networks_channels_last_format():
    # The trainer turns the live peers channels-last at its first batch (channels_last on); the averaged copy must
    # follow, or validation runs contiguous convolutions. The published weights are unchanged by the format.
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05)
    data = [torch.randn(2, 3, 4, 4) for _ in range(EPOCH_LENGTH)]

    def step(engine: Engine, batch: torch.Tensor) -> None:
        if engine.state.iteration == 1:
            network.to(memory_format=torch.channels_last)
        optimizer.zero_grad()
        network(batch.contiguous(memory_format=torch.channels_last)).square().mean().backward()
        optimizer.step()

    engine = Engine(step)
    handler = WeightAverageHandler(network, epochs=1.0, start_epoch=1)
    handler.attach(engine)
    engine.run(data, max_epochs=2)
    weight = handler.evaluation_network[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    torch.testing.assert_close(weight, handler.average.average["0.weight"], rtol=0, atol=0)
