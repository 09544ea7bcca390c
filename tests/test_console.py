"""What the console shows: the per-epoch summary line, the quiet default and --verbose, warnings shown once."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from alr_monai import cli
from alr_monai.handlers import EpochSummaryPrinter, tensorboard_tag
from alr_monai.handlers.console import format_duration
from alr_monai.workflow import RepeatedWarningFilter, preset_files, set_verbose

TINY_NET = {"network_factory#block_inplanes": [4, 8, 8, 8]}
LINE = re.compile(
    r"^epoch (?P<epoch>\d+)/(?P<total>\d+) \| loss (?P<losses>\d+\.\d{3}( \d+\.\d{3})*) \| kept (?P<kept>\d\.\d\d) "
    r"\| forget \d\.\d\d \| val \d\.\d{3} \(best \d\.\d{3} @ \d+\) \| [\d.]+ (s|min \d\d s)( \| ETA .+)?$"
)


def test_format_duration():
    assert format_duration(4.25) == "4.2 s"
    assert format_duration(42.4) == "42 s"
    assert format_duration(372) == "6 min 12 s"
    assert format_duration(3900) == "1 h 05 min"


class _FakeCoTeaching(Engine):
    """An engine whose outputs look like CoTeachingTrainer's: per-peer losses and keep masks of known values."""

    def __init__(self) -> None:
        super().__init__(lambda engine, batch: batch)

    def current_forget_rate(self) -> float:
        return 0.25


def test_epoch_line_means_the_loss_each_peer_learned_from_and_the_kept_fraction():
    # peer 0 learns from what peer 1 kept (samples 0, 1) and peer 1 from what peer 0 kept (samples 0, 2, 3)
    batch = {
        "losses": [torch.tensor([1.0, 3.0, 5.0, 7.0]), torch.tensor([2.0, 4.0, 6.0, 8.0])],
        "keep": [torch.tensor([True, False, True, True]), torch.tensor([True, True, False, False])],
        "loss": 0.0,
    }
    engine = _FakeCoTeaching()
    evaluator = Engine(lambda e, b: None)
    evaluator.state.metrics = {"val_balanced_accuracy": 0.5}
    evaluator.state.key_metric_name = "val_balanced_accuracy"
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.75, 1
    stream = io.StringIO()
    EpochSummaryPrinter(evaluator=evaluator, progress_bar=False, stream=stream).attach(engine)
    engine.run([batch, batch], max_epochs=2)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first = LINE.match(lines[0])
    assert first, lines[0]
    # peer 0: mean(1, 3) = 2; peer 1: mean(2, 6, 8) = 5.333; kept 5 of 8
    assert first["losses"] == "2.000 5.333" and first["kept"] == "0.62"
    assert "forget 0.25" in lines[0] and "val 0.500 (best 0.750 @ 1)" in lines[0]
    assert "ETA" in lines[0] and "ETA" not in lines[1]  # nothing is left after the last epoch
    assert lines[1].startswith("epoch 2/2 | loss 2.000 5.333")  # sums restart every epoch


def test_epoch_line_of_an_engine_without_selection_or_validation():
    engine = Engine(lambda e, b: {"loss": torch.tensor(0.5)})
    stream = io.StringIO()
    EpochSummaryPrinter(prefix="recalibration", progress_bar=False, stream=stream).attach(engine)
    engine.run([0, 1], max_epochs=1)
    assert re.match(r"^recalibration epoch 1/1 \| loss 0\.500 \| [\d.]+ s$", stream.getvalue().strip())


def test_repeated_warning_is_shown_once_and_other_records_always():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RepeatedWarningFilter())
    logger = logging.getLogger("alr_monai.tests.repeated")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(3):
            logger.warning("nvImageCodec is not available")
            logger.error("an error every time")
        logger.warning("another warning")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "nvImageCodec is not available",
        "an error every time",
        "an error every time",
        "an error every time",
        "another warning",
    ]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory, write_tiny_bloodmnist) -> Path:
    folder = tmp_path_factory.mktemp("tiny_console")
    return write_tiny_bloodmnist(folder, {"train": 8, "val": 3, "test": 3})


def _train(tmp_path: Path, tiny_npz: Path, capsys, *extra: str) -> str:
    preset = tmp_path / "tiny.json"  # the smoke preset with a 4-8 channel ResNet
    preset.write_text(json.dumps({**json.loads(Path(preset_files("smoke")[0]).read_text()), **TINY_NET}))
    argv = ["train", "--preset", str(preset), "--output_dir", str(tmp_path / "run"), "--dataset_dir", str(tiny_npz)]
    argv += ["--max_epochs", "2", "--batch_size", "32", *extra]
    try:
        cli.main(argv)
    finally:
        set_verbose(False)
        logging.getLogger("ignite").setLevel(logging.WARNING)
    return capsys.readouterr().out


def test_train_prints_one_line_per_epoch_and_no_ignite_chatter(tmp_path, tiny_npz, capsys):
    out = _train(tmp_path, tiny_npz, capsys)
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [LINE.match(line)["epoch"] for line in epoch_lines] == ["1", "2"], out
    for chatter in ("Engine run", "Epoch[", "Got new best metric", "Not all config files", "Setting logging"):
        assert chatter not in out


def test_verbose_brings_back_ignite_log(tmp_path, tiny_npz, capsys):
    out = _train(tmp_path, tiny_npz, capsys, "--verbose")
    assert "Engine run" in out and "Epoch[2] Complete" in out
    assert len([line for line in out.splitlines() if LINE.match(line)]) == 2


@pytest.mark.parametrize(
    "name, key_metric, tag",
    [
        ("kept_fraction/basophil", None, "selection/kept_fraction/basophil"),
        ("label_error_auroc", None, "selection/label_error_auroc"),
        ("vog_mean", None, "selection/vog_mean"),
        ("noise_rate_estimate/platelet", None, "noise/noise_rate_estimate/platelet"),
        ("forget_rate", None, "noise/forget_rate"),
        ("val_balanced_accuracy", None, "val/balanced_accuracy"),  # phase 2's trainer: phase 1's tag
        ("something_new", None, "train/something_new"),
        ("val_balanced_accuracy", "val_balanced_accuracy", "val/balanced_accuracy"),
        ("val_balanced_accuracy_auroc", "val_balanced_accuracy", "val/auroc"),
        ("val_balanced_accuracy_recall/monocyte", "val_balanced_accuracy", "val/recall/monocyte"),
        ("val_other", "val_balanced_accuracy", "val/other"),
    ],
)
def test_tensorboard_tag_scheme(name, key_metric, tag):
    assert tensorboard_tag(name, key_metric) == tag


def test_progress_bar_goes_to_stderr_and_is_cleared_before_the_epoch_line(capsys):
    engine = Engine(lambda e, b: {"loss": torch.tensor(0.25)})
    EpochSummaryPrinter(progress_bar=True).attach(engine)
    engine.run(list(range(4)), max_epochs=1)
    captured = capsys.readouterr()
    assert "[1/4]" in captured.err and "loss=0.25" in captured.err  # tqdm draws the first batch at once
    assert re.match(r"^epoch 1/1 \| loss 0\.250 \| [\d.]+ s$", captured.out.strip())


# ------------------------------------------------------------------------------------ the story (issue 25)
TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|INFO")  # warnings may show, as "WARNING: ..."


def test_train_and_relabel_tell_the_story_once(tmp_path, tiny_npz, capsys):
    out = _train(tmp_path, tiny_npz, capsys)
    run = tmp_path / "run"
    assert "Phase 1 done: 2 epochs in " in out and "test balanced accuracy" in out, out
    assert "# alr_monai report" not in out, "phase 1 prints a summary, not the whole report"
    assert f"Report: {run / 'report.html'}" in out and f"tensorboard --logdir {run / 'tensorboard'}" in out
    assert f"Next: alr query --run_dir {run}" in out
    assert not [line for line in out.splitlines() if TIMESTAMPED.match(line)], out

    cli.main(
        ["relabel", "--run_dir", str(run), "--relabel#round_budget", "4", "--relabel#num_rounds", "2"]
        + ["--relabel#recalibration_epochs", "2"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if TIMESTAMPED.match(line)], lines
    epoch_lines = [line for line in lines if re.match(r"^round \d epoch", line)]
    assert [line.split(" | ")[0] for line in epoch_lines] == [
        "round 1 epoch 1/2",
        "round 1 epoch 2/2",
        "round 2 epoch 1/2",
        "round 2 epoch 2/2",
    ], lines
    assert all(re.search(r" \| val \d\.\d{3} \| ", line) for line in epoch_lines), epoch_lines
    assert not [line for line in epoch_lines if "kept" in line or "forget" in line], "meaningless in recalibration"
    assert ["ETA" in line for line in epoch_lines] == [True, True, True, False]
    # one line per round, after that round's last epoch line and before the next round's first
    round_lines = [i for i, line in enumerate(lines) if re.match(r"^round \d/2 \| 4 answers \(", line)]
    assert len(round_lines) == 2, lines
    assert lines.index(epoch_lines[1]) < round_lines[0] < lines.index(epoch_lines[2]) < round_lines[1]
    assert "labels spent" in lines[round_lines[1]] and ("adopted" in lines[round_lines[1]] or "kept" in lines[-4])
    assert sum(line.startswith("| round | labels_spent") for line in lines) == 1, "the round table, once"
    assert re.match(
        r"^Result: test balanced accuracy \d\.\d{3} -> \d\.\d{3} after 8 labels \(2 rounds\), \d+ labels fixed$",
        lines[-3],
    ), lines[-3:]
    assert lines[-2] == f"Report: {run / 'report.html'} (and report.md)"
    assert lines[-1] == f"TensorBoard: tensorboard --logdir {run / 'tensorboard'}"


class _Driver:
    recalibration_epochs, num_rounds = 3, 5

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def round_of(self, epoch: int) -> int:
        return (epoch - 1) // self.recalibration_epochs + 1


@pytest.mark.parametrize("mode, left", [("interactive", [2, 1, 0, 2]), ("simulation", [14, 13, 12, 11])])
def test_recalibration_eta_counts_the_epochs_this_command_runs(mode, left):
    """`alr query` stops after the round's epochs: its ETA counts those, not all rounds' (issue 25 item 6)."""
    from alr_monai.handlers.active_relabel import ActiveRelabelRoundHandler

    handler = ActiveRelabelRoundHandler.__new__(ActiveRelabelRoundHandler)
    handler.driver = _Driver(mode)
    assert [handler.epochs_left(epoch) for epoch in (1, 2, 3, 4)] == left
    assert [handler.epoch_label(epoch) for epoch in (1, 3, 4)] == [
        "round 1 epoch 1/3",
        "round 1 epoch 3/3",
        "round 2 epoch 1/3",
    ]
