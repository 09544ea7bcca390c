"""Handlers: checkpoint round trips, VoG activation timing, ClassificationReport values, selection.csv layout."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from sklearn.metrics import matthews_corrcoef, roc_auc_score
from torch import nn

from alr_monai.engines import CoTeachingEvents, CoTeachingTrainer
from alr_monai.handlers import (
    ClassificationReport,
    MetricsJSONWriter,
    NoiseRateEstimateHandler,
    SelectionCSVWriter,
    SmallLossSelectionHandler,
    VoGHandler,
)
from alr_monai.handlers.outputs import SELECTION_COLUMNS
from alr_monai.networks import PeerEnsemble

NUM_SAMPLES = 24
NUM_CLASSES = 3
CLASS_NAMES = ["a", "b", "c"]


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, NUM_CLASSES))


def _batches(batch_size: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(NUM_SAMPLES, 4, generator=generator)
    labels = torch.arange(NUM_SAMPLES) % NUM_CLASSES
    return [
        {
            "image": images[s : s + batch_size],
            "label": labels[s : s + batch_size],
            "index": torch.arange(s, min(s + batch_size, NUM_SAMPLES)),
            "id": [f"s{i}" for i in range(s, min(s + batch_size, NUM_SAMPLES))],
        }
        for s in range(0, NUM_SAMPLES, batch_size)
    ]


def _run(handlers: list, max_epochs: int, num_peers: int = 2, num_gradual: int = 1, **kwargs) -> CoTeachingTrainer:
    torch.manual_seed(0)
    network = PeerEnsemble(_tiny_net, num_peers=num_peers)
    trainer = CoTeachingTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=kwargs.pop("loader", None) or _batches(),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        forget_rate=kwargs.pop("forget_rate", 0.25),
        num_gradual=num_gradual,
        train_handlers=handlers,
        **kwargs,
    )
    trainer.run()
    return trainer


def _continue(trainer: CoTeachingTrainer, max_epochs: int) -> None:
    # MONAI's Workflow.run() takes no arguments: raise the target and ignite resumes where it stopped.
    trainer.state.max_epochs = max_epochs
    trainer.run()


def _round_trip(state: dict, path: Path) -> dict:
    # CheckpointLoader loads with weights_only=True: the state must survive that exactly.
    torch.save(state, path)
    return torch.load(path, weights_only=True)


def _assert_equal(left, right) -> None:
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and left.dtype == right.dtype
        assert torch.equal(left.nan_to_num(-7.0), right.nan_to_num(-7.0))
    elif isinstance(left, dict):
        assert set(left) == set(right)
        for key in left:
            _assert_equal(left[key], right[key])
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right)
        for a, b in zip(left, right, strict=True):
            _assert_equal(a, b)
    else:
        assert left == right


def test_selection_and_vog_state_round_trip(tmp_path):
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, CLASS_NAMES)
    vog = VoGHandler(NUM_SAMPLES, NUM_CLASSES, num_snapshots=2, mix_ratio=0.5)
    _run([selection, vog], max_epochs=3)

    restored = SmallLossSelectionHandler(NUM_SAMPLES, 2, CLASS_NAMES)
    restored.load_state_dict(_round_trip(selection.state_dict(), tmp_path / "selection.pt"))
    _assert_equal(restored.state_dict(), selection.state_dict())
    assert restored.completed_epoch == 3
    assert restored.ids == [f"s{i}" for i in range(NUM_SAMPLES)]
    assert torch.equal(restored.trusted(), selection.trusted())
    assert torch.equal(restored.mean_loss(), selection.mean_loss())
    assert restored.seen.all() and 0 < int(restored.trusted().sum()) < NUM_SAMPLES

    fresh = VoGHandler(NUM_SAMPLES, NUM_CLASSES, num_snapshots=2, mix_ratio=0.5)
    fresh.load_state_dict(_round_trip(vog.state_dict(), tmp_path / "vog.pt"))
    _assert_equal(fresh.state_dict(), vog.state_dict())
    assert len(fresh.buffers) == 2 and fresh.buffers[0].num_committed == 3
    assert torch.isfinite(vog.scores()).all()
    assert torch.equal(fresh.scores(), vog.scores())
    _assert_equal(fresh._oriented, vog._oriented)  # what the next epoch's selection reads

    with pytest.raises(ValueError):
        SmallLossSelectionHandler(NUM_SAMPLES + 1, 2, CLASS_NAMES).load_state_dict(selection.state_dict())


def test_empty_vog_state_round_trip(tmp_path):
    vog = VoGHandler(NUM_SAMPLES, NUM_CLASSES)
    fresh = VoGHandler(NUM_SAMPLES, NUM_CLASSES)
    fresh.load_state_dict(_round_trip(vog.state_dict(), tmp_path / "vog.pt"))
    assert fresh.buffers == [] and torch.isnan(fresh.scores()).all()


def test_noise_rate_estimate_state_round_trip(tmp_path):
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, CLASS_NAMES)
    estimator = NoiseRateEstimateHandler(selection, NUM_CLASSES, estimate_epoch=2, true_rate=0.3)
    before = NoiseRateEstimateHandler(selection, NUM_CLASSES)
    before.load_state_dict(_round_trip(estimator.state_dict(), tmp_path / "none.pt"))
    assert before.estimate is None  # "not estimated yet" survives the file

    trainer = _run([selection, estimator], max_epochs=2, forget_rate=None)
    assert estimator.estimate is not None and 0.0 <= estimator.estimate <= 1.0
    assert trainer.forget_rate == pytest.approx(min(estimator.estimate, 0.9))
    assert trainer.state.metrics["noise_rate_true"] == 0.3
    restored = NoiseRateEstimateHandler(selection, NUM_CLASSES)
    restored.load_state_dict(_round_trip(estimator.state_dict(), tmp_path / "estimate.pt"))
    assert restored.estimate == estimator.estimate


def test_metrics_json_writer_state_round_trip(tmp_path):
    writer = MetricsJSONWriter(tmp_path, extra={"class_names": CLASS_NAMES})
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, CLASS_NAMES)
    _run([selection, writer], max_epochs=2)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert summary["class_names"] == CLASS_NAMES
    assert "kept_fraction/a" in summary["last"]["train"]

    restored = MetricsJSONWriter(tmp_path / "other")
    restored.load_state_dict(_round_trip(writer.state_dict(), tmp_path / "metrics.pt"))
    assert restored.history == writer.history

    # A resumed run that repeats epoch 2 replaces that entry instead of duplicating it.
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.metrics = 2, {"x": 1.0}
    restored(engine)
    assert [h["epoch"] for h in restored.history] == [1, 2]
    assert restored.history[-1]["train"] == {"x": 1.0}


def _vog_activity(num_snapshots: int, num_gradual: int, max_epochs: int) -> tuple[list[bool], VoGHandler]:
    vog = VoGHandler(NUM_SAMPLES, NUM_CLASSES, num_snapshots=num_snapshots, class_normalise=False, mix_ratio=0.5)
    active: dict[int, list[bool]] = {}

    class Probe:
        def attach(self, engine: Engine) -> None:
            engine.add_event_handler(CoTeachingEvents.SELECTION_COMPLETED, self)

        def __call__(self, engine: Engine) -> None:
            output = engine.state.output
            has_vog = "vog" in output["scores"]
            active.setdefault(engine.state.epoch, []).append(has_vog)
            if has_vog:
                for k, scores in enumerate(output["scores"]["vog"]):
                    # The scores are the previous epoch's cached VoG of exactly this batch's samples.
                    assert torch.equal(scores, vog._oriented[k][output["index"]])
                    assert torch.isfinite(scores).all()

    _run([vog, Probe()], max_epochs=max_epochs, num_gradual=num_gradual)
    # Every batch of an epoch agrees.
    assert all(len(set(flags)) == 1 for flags in active.values())
    return [active[e][0] for e in range(1, max_epochs + 1)], vog


def test_vog_is_offered_only_after_the_buffer_is_full_and_the_ramp_is_over():
    # Buffer full after epoch 2, ramp over after epoch 3: the ramp decides.
    flags, vog = _vog_activity(num_snapshots=2, num_gradual=3, max_epochs=5)
    assert vog.start_epoch == 4
    assert flags == [False, False, False, True, True]
    # No ramp, but 3 snapshots are needed: the buffer decides.
    flags, _ = _vog_activity(num_snapshots=3, num_gradual=0, max_epochs=5)
    assert flags == [False, False, False, True, True]


def test_vog_with_zero_mix_ratio_is_never_offered():
    vog = VoGHandler(NUM_SAMPLES, NUM_CLASSES, num_snapshots=2, mix_ratio=0.0)
    seen: list[bool] = []
    trainer_handlers = [vog]
    trainer = _run(trainer_handlers, max_epochs=1, num_gradual=0)
    trainer.add_event_handler(
        CoTeachingEvents.SELECTION_COMPLETED, lambda e: seen.append("vog" in e.state.output["scores"])
    )
    _continue(trainer, 4)
    assert seen and not any(seen)
    assert vog.buffers[0].ready


def _evaluate(report: ClassificationReport, batches: list) -> dict:
    engine = Engine(lambda _engine, batch: batch)
    report.attach(engine, "val_ba")
    engine.run(batches, max_epochs=1)
    return engine.state.metrics


def test_classification_report_values_on_a_hand_made_batch():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.tensor(
        [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 3.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.5]]
    )  # predictions 0, 1, 1, 1, 2, 0
    report = ClassificationReport(CLASS_NAMES)
    metrics = _evaluate(report, [{"pred": logits[:4], "label": labels[:4]}, {"pred": logits[4:], "label": labels[4:]}])

    assert metrics["val_ba"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert metrics["val_ba_accuracy"] == pytest.approx(4 / 6)
    # Per-class F1: 0.5 (1 TP, 1 FP, 1 FN), 0.8 (2 TP, 1 FP), 2/3 (1 TP, 1 FN).
    assert metrics["val_ba_macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics["val_ba_mcc"] == pytest.approx(matthews_corrcoef(labels, [0, 1, 1, 1, 2, 0]))
    probs = torch.softmax(logits, 1).numpy()
    assert metrics["val_ba_auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert [metrics[f"val_ba_recall/{c}"] for c in CLASS_NAMES] == pytest.approx([0.5, 1.0, 0.5])
    assert report.report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]

    # A decollated engine output (list of per-sample dicts) gives the same result.
    decollated = [{"pred": p, "label": y} for p, y in zip(logits, labels, strict=True)]
    again = _evaluate(ClassificationReport(CLASS_NAMES), [decollated])
    assert again["val_ba"] == pytest.approx(metrics["val_ba"])

    # A class absent from the labels has NaN recall and is left out of balanced accuracy.
    partial = _evaluate(ClassificationReport(CLASS_NAMES), [{"pred": logits[:4], "label": labels[:4]}])
    assert partial["val_ba"] == pytest.approx(0.75)
    assert math.isnan(partial["val_ba_recall/c"])


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_selection_csv_writer_columns_and_values(tmp_path):
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, CLASS_NAMES)
    vog = VoGHandler(NUM_SAMPLES, NUM_CLASSES, num_snapshots=2)
    writer = SelectionCSVWriter(selection, tmp_path, vog=vog)
    first_epoch_vog: list[list[str]] = []

    def snapshot(_engine: Engine) -> None:
        first_epoch_vog.append([row["vog"] for row in _read_csv(tmp_path / "selection.csv")[1]])

    handlers = [selection, vog, writer]
    trainer = _run(handlers, max_epochs=1)
    snapshot(trainer)
    _continue(trainer, 2)

    header, rows = _read_csv(tmp_path / "selection.csv")
    assert header == SELECTION_COLUMNS
    assert len(rows) == NUM_SAMPLES
    assert [r["id"] for r in rows] == [f"s{i}" for i in range(NUM_SAMPLES)]
    assert [int(r["index"]) for r in rows] == list(range(NUM_SAMPLES))
    assert [int(r["given_label"]) for r in rows] == [i % NUM_CLASSES for i in range(NUM_SAMPLES)]
    assert [int(r["kept_by_net1"]) for r in rows] == selection.kept[0].int().tolist()
    assert [int(r["kept_by_net2"]) for r in rows] == selection.kept[1].int().tolist()
    assert [int(r["trusted"]) for r in rows] == selection.trusted().int().tolist()
    assert [float(r["loss"]) for r in rows] == pytest.approx(selection.mean_loss().tolist(), rel=1e-4)
    # VoG needs two snapshots: blank after epoch 1, numbers after epoch 2.
    assert first_epoch_vog == [[""] * NUM_SAMPLES]
    assert [float(r["vog"]) for r in rows] == pytest.approx(vog.scores().tolist(), rel=1e-4)


def test_selection_csv_writer_one_peer_leaves_net2_blank(tmp_path):
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 1, CLASS_NAMES)
    _run([selection, SelectionCSVWriter(selection, tmp_path)], max_epochs=1, num_peers=1)
    header, rows = _read_csv(tmp_path / "selection.csv")
    assert header == SELECTION_COLUMNS
    assert {r["kept_by_net2"] for r in rows} == {""} and {r["vog"] for r in rows} == {""}
    assert {r["kept_by_net1"] for r in rows} == {"1"}  # forget rate 0 in epoch 1 of the ramp keeps everything


class _EpochDraws:
    """A loader whose epochs draw given index lists (as a class-balanced sampler does): each epoch the next plan,
    the last one repeating; every plan has the same number of batches, as an epoch length must."""

    def __init__(self, plans: list[list[list[int]]]) -> None:
        batches = _batches()
        images = torch.cat([b["image"] for b in batches])
        labels = torch.cat([b["label"] for b in batches])
        self.epochs = [
            [
                {"image": images[idx], "label": labels[idx], "index": torch.tensor(idx), "id": [f"s{i}" for i in idx]}
                for idx in plan
            ]
            for plan in plans
        ]
        self.drawn = 0

    def __len__(self) -> int:
        return len(self.epochs[0])

    def __iter__(self):
        epoch = self.epochs[min(self.drawn, len(self.epochs) - 1)]
        self.drawn += 1
        return iter(epoch)


def test_selection_tracker_keeps_the_last_record_of_samples_an_epoch_did_not_draw():
    # epoch 1 draws everyone; epoch 2 draws 0-15 only (0-7 twice), as class-balanced draws with replacement can
    first, second = list(range(8)), list(range(8, 16))
    plans = [[first, second, list(range(16, 24))], [first, second, first]]
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, CLASS_NAMES, trusted_rule="class_cut")
    after_epoch: dict[int, torch.Tensor] = {}
    trainer = _run([selection], max_epochs=1, loader=_EpochDraws(plans))
    after_epoch[1] = selection.losses.clone()
    _continue(trainer, 2)
    assert bool(selection.seen.all())  # drawn once is enough: not dropped from the trusted set's candidates
    assert torch.equal(selection.losses[:, 16:], after_epoch[1][:, 16:])  # epoch 1's record, kept
    assert not torch.equal(selection.losses[:, :16], after_epoch[1][:, :16])  # epoch 2's record
    assert int(selection.trusted().sum()) == round(NUM_SAMPLES * 0.75)  # 8 per class, at forget rate 0.25


def test_selection_tracker_names_samples_no_epoch_has_drawn(tmp_path):
    # without the ids and labels given up front, a sample never drawn would leave selection.csv a blank id and
    # label -1, and phase 2 refuses such a file
    plans = [[list(range(8)), list(range(8, 16)), list(range(8))]]
    ids, labels = [f"s{i}" for i in range(NUM_SAMPLES)], [i % NUM_CLASSES for i in range(NUM_SAMPLES)]
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, CLASS_NAMES, trusted_rule="class_cut", ids=ids, labels=labels)
    _run([selection, SelectionCSVWriter(selection, tmp_path)], max_epochs=1, loader=_EpochDraws(plans))
    _, rows = _read_csv(tmp_path / "selection.csv")
    assert [r["id"] for r in rows] == ids and [int(r["given_label"]) for r in rows] == labels
    assert not bool(selection.seen[16:].any()) and not bool(selection.trusted()[16:].any())
    assert bool(selection.mean_loss()[16:].isnan().all())
    with pytest.raises(ValueError, match="23 ids for a training set of 24"):
        SmallLossSelectionHandler(NUM_SAMPLES, 2, CLASS_NAMES, ids=ids[:-1])


def test_selection_tracker_rejects_out_of_range_index():
    selection = SmallLossSelectionHandler(NUM_SAMPLES - 1, 2, CLASS_NAMES)
    with pytest.raises(IndexError):
        _run([selection], max_epochs=1)


def test_events_fire_in_order_for_handlers():
    order: list[str] = []
    trainer_handlers: list = []
    trainer = _run(trainer_handlers, max_epochs=1)
    trainer.add_event_handler(CoTeachingEvents.LOSSES_COMPUTED, lambda _e: order.append("losses"))
    trainer.add_event_handler(CoTeachingEvents.SELECTION_COMPLETED, lambda _e: order.append("selection"))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _e: order.append("iteration"))
    _continue(trainer, 2)
    assert order == ["losses", "selection", "iteration"] * 3
