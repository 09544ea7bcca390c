"""One writer per run folder: the lock, its refusal message, re-entrancy, and two real processes."""

from __future__ import annotations

import csv
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hold_run_lock, release_run_lock

from alr_monai import runlock
from alr_monai.relabel.state import RoundState, apply_answers_file, open_state, start_round
from alr_monai.runlock import RunLockedError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_a_second_process_is_refused_with_the_holders_pid_and_command(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_run_lock(run_dir)
    try:
        with pytest.raises(RunLockedError) as info:
            runlock.acquire(run_dir, "train")
        message = str(info.value)
        assert f"process {holder.pid} (python -c " in message and str(run_dir) in message
        assert "Wait for it to finish" in message
        assert runlock.holder(run_dir)["pid"] == holder.pid
        assert not runlock.is_held(run_dir)
    finally:
        release_run_lock(holder)
    # The holder exited: its lock went with it, and the folder is free again.
    assert runlock.holder(run_dir) is None
    with runlock.run_lock(run_dir, "train"):
        assert runlock.holder(run_dir)["pid"] == os.getpid()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_run_lock(run_dir)
    holder.kill()
    holder.wait(timeout=60)
    with runlock.run_lock(run_dir, "answer"):
        assert runlock.is_held(run_dir)
    assert not runlock.is_held(run_dir)


def test_the_lock_is_reentrant_within_a_process_and_freed_by_the_last_release(tmp_path):
    run_dir = tmp_path / "run"
    with runlock.run_lock(run_dir, "relabel"):
        with runlock.run_lock(run_dir, "answer"):  # phase 2 applying answers under the command's lock
            assert runlock.is_held(run_dir)
        assert runlock.is_held(run_dir)
        assert runlock.holder(run_dir)["purpose"] == "relabel"
    assert not runlock.is_held(run_dir)
    holder = hold_run_lock(run_dir)  # another process can take it now
    release_run_lock(holder)


def test_first_acquisition_removes_stray_temporary_files(tmp_path):
    run_dir = tmp_path / "run"
    stray = run_dir / "relabel" / ".state.json.ab12cd_9.alr-tmp"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"{")
    keep = run_dir / "relabel" / "notes.tmp"  # not a name the atomic writer makes
    keep.write_text("mine")
    with runlock.run_lock(run_dir):
        assert not stray.exists() and keep.exists()


# ------------------------------------------------------------------------------------- two `alr answer`s
CLASSES = ["normal", "abnormal"]
IDS = [f"s{i}" for i in range(12)]


def _pending_round(run_dir: Path) -> Path:
    """A run folder whose relabel round 1 is pending, and a filled answers file outside it."""
    relabel = run_dir / "relabel"
    state = open_state(relabel / "state.json", IDS, [0] * 12, [False] * 12, CLASSES)
    rows = [{"id": i, "given_label": 0, "predicted_label": 1, "predicted_probability": 0.9, "score": 1.0} for i in IDS]
    start_round(relabel / "state.json", relabel / "queries" / "round_1.csv", 1, rows)
    assert state.round == 0
    answers = run_dir.parent / "answers.csv"
    with open(answers, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "expert_label"])
        writer.writerows([[i, "abnormal"] for i in IDS])
    return answers


def _alr_answer(answers: Path, run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alr_monai.cli", "answer", str(answers), "--run_dir", str(run_dir)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


def test_alr_answer_is_refused_while_another_process_writes_the_run(tmp_path):
    run_dir = tmp_path / "run"
    answers = _pending_round(run_dir)
    holder = hold_run_lock(run_dir)
    try:
        refused = _alr_answer(answers, run_dir)
    finally:
        release_run_lock(holder)
    assert refused.returncode == 2, refused.stderr
    assert f"is in use by process {holder.pid}" in refused.stderr
    relabel = run_dir / "relabel"
    assert not (relabel / "audit.csv").exists() and RoundState.load(relabel / "state.json").pending_round == 1
    applied = _alr_answer(answers, run_dir)
    assert applied.returncode == 0, applied.stderr
    assert RoundState.load(relabel / "state.json").round == 1


def _answer_after_barrier(barrier, answers: str, run_dir: str, results) -> None:
    relabel = Path(run_dir) / "relabel"
    barrier.wait()
    try:
        apply_answers_file(relabel / "state.json", relabel / "audit.csv", relabel / "labels_cleaned.csv", answers)
        results.put("applied")
    except Exception as error:  # the loser: refused by the lock, or told the round is already applied
        results.put(f"{type(error).__name__}: {error}")


def test_two_concurrent_answer_processes_apply_the_round_once(tmp_path):
    run_dir = tmp_path / "run"
    answers = _pending_round(run_dir)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_answer_after_barrier, args=(barrier, str(answers), str(run_dir), results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    outcomes = [results.get(timeout=10) for _ in workers]
    assert outcomes.count("applied") == 1, outcomes
    loser = next(outcome for outcome in outcomes if outcome != "applied")
    assert "RunLockedError" in loser or "no query is pending" in loser, outcomes
    audit = (run_dir / "relabel" / "audit.csv").read_text().splitlines()
    assert len(audit) == 1 + len(IDS), "every change is recorded exactly once"
    assert RoundState.load(run_dir / "relabel" / "state.json").budget_spent == len(IDS)


@pytest.mark.parametrize("overlay", [[], ["relabel.json"]], ids=["train.json", "relabel.json"])
def test_bundle_runs_take_the_lock_in_initialize(tmp_path, overlay):
    # ``python -m monai.bundle run`` users get the lock too: it is the first initialize expression.
    from monai.bundle import ConfigWorkflow

    configs = REPO / "bundles" / "alr_classification" / "configs"
    run_dir = tmp_path / "run"
    holder = hold_run_lock(run_dir)
    try:
        workflow = ConfigWorkflow(
            config_file=[str(configs / name) for name in ["train.json", *overlay]],
            workflow_type="train",
            logging_file=False,
            output_dir=str(run_dir),
        )
        with pytest.raises(RuntimeError) as info:
            workflow.initialize()
    finally:
        release_run_lock(holder)
    assert isinstance(info.value.__cause__, RunLockedError)
    assert f"process {holder.pid}" in str(info.value.__cause__)
    assert sorted(p.name for p in run_dir.iterdir()) == [runlock.LOCK_NAME], "nothing was written"


def test_only_rank_0_of_a_distributed_run_takes_the_lock(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    holder = hold_run_lock(run_dir)  # rank 0 of the same torchrun command
    try:
        monkeypatch.setenv("RANK", "1")
        with runlock.run_lock(run_dir, "train"):
            assert not runlock.is_held(run_dir)
    finally:
        release_run_lock(holder)
