"""The round driver on its own: no Ignite engine, a plain loop calls it as the bundle's handler does."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from alr_monai.networks import PeerEnsemble
from alr_monai.relabel import OracleExpert, RelabelDriver, RoundOutcome
from alr_monai.relabel.driver import ROUND_COLUMNS
from alr_monai.utils import read_csv

N, CLASSES = 24, ["a", "b", "c"]


def _data():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(N, 4, generator=generator)
    truth = [i % 3 for i in range(N)]
    given = [(t + 1) % 3 if i % 4 == 0 else t for i, t in enumerate(truth)]  # every fourth label is wrong
    items = [{"image": images[i], "label": given[i], "index": i} for i in range(N)]
    return items, given, truth


def _driver(tmp_path, mode="simulation", recipe="trusted", **kwargs) -> RelabelDriver:
    torch.manual_seed(0)
    items, given, truth = _data()
    ids = [f"s{i}" for i in range(N)]
    network = PeerEnsemble(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), num_peers=2)
    val = DataLoader([{**item, "label": truth[i]} for i, item in enumerate(items)], batch_size=8)
    oracle = OracleExpert(dict(zip(ids, truth, strict=True)), 3, class_names=CLASSES) if mode == "simulation" else None
    return RelabelDriver(
        network,
        tmp_path / "relabel",
        CLASSES,
        ids,
        given,
        [i % 4 != 0 and i % 3 != 1 for i in range(N)],  # the wrong labels are never trusted
        items,
        val,
        test_loader=kwargs.pop("test_loader", val),
        round_budget=3,
        num_rounds=2,
        recalibration_epochs=2,
        mode=mode,
        oracle=oracle,
        true_labels=truth if mode == "simulation" else None,
        recipe=recipe,
        base_forget_rate=0.25,
        batch_size=8,
        device="cpu",
        **kwargs,
    )


def test_a_plain_loop_runs_simulated_rounds(tmp_path):
    driver = _driver(tmp_path)
    state = driver.open()
    assert state.round == 0 and state.baseline_metrics["val_balanced_accuracy"] >= 0
    target = driver.training_target(state)
    assert target.forget_rate == 0.0 and target.indices == [i for i in range(N) if state.trusted[i]]
    optimizer = torch.optim.SGD(driver.network.parameters(), lr=0.1)
    for epoch in range(1, 5):
        round_index = driver.round_starting(epoch)
        if round_index is not None:
            assert driver.advance_to(round_index) == RoundOutcome.APPLIED
            target = driver.training_target(driver.load_state())
        batch = torch.stack([_data()[0][i]["image"] for i in target.indices])
        labels = torch.tensor([target.labels[i] for i in target.indices])
        optimizer.zero_grad()
        nn.functional.cross_entropy(driver.network(batch), labels).backward()
        optimizer.step()
        driver.consider(driver.validation_score())
        if driver.round_ending(epoch) is not None:
            assert driver.end_round(driver.round_ending(epoch)) is not None
    state = driver.finish()
    assert state.round == 2 and state.budget_spent == 6
    assert sum(target.verified) == 6 and len(target.indices) == sum(state.trusted) - sum(
        state.current_labels[i] < 0 for i in range(N)
    )
    header, rows = read_csv(tmp_path / "relabel" / "rounds.csv")
    assert header == ROUND_COLUMNS and [r["round"] for r in rows] == ["0", "1", "2"]
    assert (tmp_path / "relabel" / "models" / "model.pt").is_file()
    markdown = driver.round_table_markdown(state)
    assert markdown.startswith("| round | labels_spent |") and "Per-class test recall by round:" in markdown
    # the round ended on the best validation weights seen
    assert driver.best_val >= state.baseline_metrics["val_balanced_accuracy"]


def test_interactive_waits_and_coteaching_shrinks_the_forget_rate(tmp_path):
    driver = _driver(tmp_path, mode="interactive", recipe="coteaching")
    state = driver.open()
    assert driver.training_target(state).forget_rate == 0.25
    assert driver.advance_to(1) == RoundOutcome.WAITING
    assert driver.query_path(1).is_file() and not driver.answers_path(1).exists()
    assert str(driver.answers_path(1)) in driver.waiting_message(1)
    header, rows = read_csv(driver.query_path(1))
    driver.answers_path(1).parent.mkdir(parents=True)
    fixed = {row["id"]: "c" if row["given_label"] != "c" else "a" for row in rows}
    with open(driver.answers_path(1), "w") as handle:
        handle.write("id,expert_label\n" + "".join(f"{i},{label}\n" for i, label in fixed.items()))
    assert driver.advance_to(1) == RoundOutcome.APPLIED
    state = driver.load_state()
    target = driver.training_target(state)
    assert sum(target.verified) == 3
    assert abs(target.forget_rate - (0.25 * N - 3) / N) < 1e-9
    assert driver.end_round(2) is None  # round 2 never answered


def test_best_weights_survive_a_state_dict_round_trip(tmp_path):
    driver = _driver(tmp_path)
    driver.open()
    saved = driver.state_dict()
    other = _driver(tmp_path)
    other.load_state_dict(saved)
    assert other.best_val == driver.best_val
    assert all(torch.equal(other.best_weights[k], v) for k, v in driver.best_weights.items())


def test_scoring_passes_take_the_loader_settings_and_query_the_same_samples(tmp_path):
    queries = []
    for workers in (0, 2):
        driver = _driver(tmp_path / f"w{workers}", num_workers=workers)
        assert driver._loader(range(N)).num_workers == workers
        state = driver.open()
        queries.append([row["id"] for row in driver.query_rows(state, 1)])
    # worker processes change where items are loaded, never which samples are asked
    assert queries[0] == queries[1] and len(queries[0]) == 3


def test_a_run_without_test_rows_evaluates_on_validation_only(tmp_path):
    """A manifest without 'test' rows gives an empty test loader: the rounds report validation (it crashed in
    torch.cat on no batches)."""
    driver = _driver(tmp_path, test_loader=DataLoader([], batch_size=8))
    state = driver.open()
    assert "val_balanced_accuracy" in state.baseline_metrics
    assert not any(key.startswith("test_") for key in state.baseline_metrics)
