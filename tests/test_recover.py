"""A missing or unreadable relabel state: refusal, and the rebuild from the rounds' files (no training here).

The bundle-level versions (phase 2 refusing, ``recover_run`` after crashes in a real round) are in
test_fault_injection.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from alr_monai import cli
from alr_monai.relabel import StateMissingError
from alr_monai.relabel.recover import recover_run
from alr_monai.relabel.state import (
    RoundError,
    RoundState,
    apply_answers_file,
    open_state,
    relabel_outputs,
    start_round,
)
from alr_monai.utils import atomic_write_csv, atomic_write_json

CLASSES = ["normal", "benign", "malignant"]
IDS = [f"s{i}" for i in range(10)]
GIVEN = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
TRUSTED = [True, True, False, False, False, False, False, False, False, False]


def _query_rows(ids: list[str], state: RoundState) -> list[dict]:
    index = {sample_id: i for i, sample_id in enumerate(state.ids)}
    return [
        {
            "id": i,
            "given_label": state.current_labels[index[i]],
            "predicted_label": 0,
            "predicted_probability": 0.5,
            "score": 1.0 - n / 10,
        }
        for n, i in enumerate(ids)
    ]


def _write_answers(path: Path, answers: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "expert_label", "comment"])
        for sample_id, label in answers.items():
            writer.writerow([sample_id, label, ""])
    return path


def _expert_run(run_dir: Path, tmp_path: Path) -> dict:
    """Phase-1 files, two applied expert rounds (answers from outside the run folder), and a pending round 3."""
    relabel = run_dir / "relabel"
    atomic_write_json(run_dir / "classes.json", {"class_names": CLASSES})
    atomic_write_csv(
        run_dir / "selection.csv",
        [
            {"id": i, "index": n, "given_label": g, "trusted": int(t)}
            for n, (i, g, t) in enumerate(zip(IDS, GIVEN, TRUSTED, strict=True))
        ],
        ["id", "index", "given_label", "trusted"],
    )
    paths = {
        "state": relabel / "state.json",
        "audit": relabel / "audit.csv",
        "labels": relabel / "labels_cleaned.csv",
    }
    state = open_state(paths["state"], IDS, GIVEN, TRUSTED, CLASSES)
    state.record_metrics(0, {"val_balanced_accuracy": 0.5})
    state.save(paths["state"])
    # Round 1: a change, a confirmation (no audit row, but trusted and paid for), an exclusion and a skip.
    start_round(paths["state"], relabel / "queries" / "round_1.csv", 1, _query_rows(["s2", "s3", "s4", "s5"], state))
    answers1 = _write_answers(tmp_path / "expert1.csv", {"s2": "normal", "s3": "normal", "s4": "exclude", "s5": ""})
    apply_answers_file(paths["state"], paths["audit"], paths["labels"], answers1)
    # Round 2 asks about the skipped sample again.
    state = RoundState.load(paths["state"])
    start_round(paths["state"], relabel / "queries" / "round_2.csv", 2, _query_rows(["s5", "s6"], state))
    answers2 = _write_answers(tmp_path / "expert2.csv", {"s5": "BENIGN", "s6": "2"})
    apply_answers_file(paths["state"], paths["audit"], paths["labels"], answers2)
    state = RoundState.load(paths["state"])
    start_round(paths["state"], relabel / "queries" / "round_3.csv", 3, _query_rows(["s7", "s8"], state))
    return paths


def _comparable(state: RoundState) -> dict:
    data = dict(vars(state))
    data["history"] = [{k: v for k, v in entry.items() if k != "metrics"} for entry in state.history]
    data.pop("baseline_metrics")
    # audit.csv holds the time of each answer, so its digest differs between two runs; its size does not
    data["audit"] = {k: v for k, v in (state.audit or {}).items() if k != "sha256"}
    return data


def test_answers_applied_from_elsewhere_are_kept_in_the_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    _expert_run(run_dir, tmp_path)
    for k in (1, 2):
        kept = run_dir / "relabel" / "answers" / f"round_{k}.csv"
        assert kept.read_bytes() == (tmp_path / f"expert{k}.csv").read_bytes()


def test_a_different_kept_answers_file_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    paths = _expert_run(run_dir, tmp_path)
    kept = _write_answers(run_dir / "relabel" / "answers" / "round_3.csv", {"s7": "benign"})
    other = _write_answers(tmp_path / "other.csv", {"s7": "normal"})
    with pytest.raises(RoundError, match="already holds other answers"):
        apply_answers_file(paths["state"], paths["audit"], paths["labels"], other)
    assert RoundState.load(paths["state"]).pending_round == 3
    assert "benign" in kept.read_text()


def test_missing_state_with_outputs_is_refused_everywhere(tmp_path):
    run_dir = tmp_path / "run"
    paths = _expert_run(run_dir, tmp_path)
    labels_before = paths["labels"].read_bytes()
    paths["state"].unlink()
    hint = f"alr recover --run_dir {run_dir.resolve()}"
    with pytest.raises(StateMissingError, match="audit.csv") as info:
        RoundState.load(paths["state"])
    assert hint in str(info.value)
    with pytest.raises(StateMissingError, match="alr recover"):
        open_state(paths["state"], IDS, GIVEN, TRUSTED, CLASSES)  # phase 2 starting: no silent round 0
    with pytest.raises(StateMissingError, match="alr recover"):
        apply_answers_file(paths["state"], paths["audit"], paths["labels"], tmp_path / "expert2.csv")
    assert not paths["state"].exists() and paths["labels"].read_bytes() == labels_before
    # A corrupt file is refused the same way.
    paths["state"].write_text('{"format_version": 1, "ids": [')
    with pytest.raises(StateMissingError, match="not valid JSON.*alr recover"):
        RoundState.load(paths["state"])
    # An empty relabel folder is simply a phase 2 that has not started.
    fresh = tmp_path / "fresh" / "relabel" / "state.json"
    assert relabel_outputs(fresh.parent) == []
    assert open_state(fresh, IDS, GIVEN, TRUSTED, CLASSES).round == 0


def test_recover_rebuilds_the_state_an_uninterrupted_run_has(tmp_path):
    run_dir = tmp_path / "run"
    paths = _expert_run(run_dir, tmp_path)
    expected = RoundState.load(paths["state"])
    for damage in ("delete", "corrupt"):
        if damage == "delete":
            paths["state"].unlink()
        else:
            paths["state"].write_text("{")
        recovery = recover_run(run_dir)
        rebuilt = RoundState.load(paths["state"])
        assert _comparable(rebuilt) == _comparable(expected), damage
        assert rebuilt.pending_round == 3 and rebuilt.round == 2 and rebuilt.budget_spent == 5
        assert rebuilt.source[IDS.index("s3")] == "expert" and rebuilt.trusted[IDS.index("s3")]  # the confirmation
        assert any("round 3 is pending" in note for note in recovery.notes)
    assert (run_dir / "relabel" / "state.json.unreadable").read_text() == "{"
    # The rebuilt state goes on like the original: the pending round's answers apply normally.
    answers3 = _write_answers(tmp_path / "expert3.csv", {"s7": "normal", "s8": ""})
    state = apply_answers_file(paths["state"], paths["audit"], paths["labels"], answers3)
    assert state.round == 3 and state.skipped["3"] == ["s8"]


def test_recover_command_prints_what_it_did(tmp_path, capsys):
    run_dir = tmp_path / "run"
    paths = _expert_run(run_dir, tmp_path)
    paths["state"].unlink()
    cli.main(["recover", "--run_dir", str(run_dir)])
    out = capsys.readouterr().out
    assert "2 applied round(s) rebuilt, 5 labels spent" in out and "rebuilt" in out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["recover", "--run_dir", str(run_dir)])
    assert exit_info.value.code == 2 and "nothing to recover" in capsys.readouterr().err


def test_recover_after_a_crash_between_audit_and_labels(tmp_path, monkeypatch):
    # Round 2's audit rows landed; its labels_cleaned.csv and state did not, and then the state was lost.
    reference = _expert_run(tmp_path / "reference", tmp_path)
    run_dir = tmp_path / "run"
    original = RoundState.write_labels_cleaned

    def crash_in_round_2(self, path):
        if self.round == 2:
            raise KeyboardInterrupt("killed after the audit append of round 2")
        return original(self, path)

    monkeypatch.setattr(RoundState, "write_labels_cleaned", crash_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        _expert_run(run_dir, tmp_path)
    monkeypatch.setattr(RoundState, "write_labels_cleaned", original)
    relabel = run_dir / "relabel"
    assert "s6" in (relabel / "audit.csv").read_text()  # round 2's change is in the trail already
    (relabel / "state.json").unlink()

    recovered = recover_run(run_dir).state
    assert recovered.round == 1 and recovered.pending_round == 2
    state = apply_answers_file(
        relabel / "state.json", relabel / "audit.csv", relabel / "labels_cleaned.csv", tmp_path / "expert2.csv"
    )
    expected = RoundState.load(reference["state"])
    expected.pending_round, expected.queried = None, {k: v for k, v in expected.queried.items() if k != "3"}
    assert _comparable(state) == _comparable(expected)
    for name in ("labels_cleaned.csv", "answers/round_2.csv"):
        assert (relabel / name).read_bytes() == (reference["state"].parent / name).read_bytes(), name
    audit = [line.rsplit(",", 1)[0] for line in (relabel / "audit.csv").read_text().splitlines()]
    assert audit == [line.rsplit(",", 1)[0] for line in reference["audit"].read_text().splitlines()]


def test_recover_refuses_files_that_disagree(tmp_path):
    run_dir = tmp_path / "run"
    paths = _expert_run(run_dir, tmp_path)
    paths["state"].unlink()
    audit = paths["audit"].read_text()
    paths["audit"].write_text(audit.replace(",normal,", ",benign,", 1))  # an edited audit row
    with pytest.raises(RoundError, match="audit.csv does not list the changes"):
        recover_run(run_dir)
    paths["audit"].write_text(audit)
    labels = paths["labels"].read_text()
    paths["labels"].write_text(labels.replace("s9,normal,0,given", "s9,benign,1,given"))
    with pytest.raises(RoundError, match="matches no replay"):
        recover_run(run_dir)
    assert not paths["state"].exists(), "nothing is written when the rebuild fails"
    paths["labels"].write_text(labels)
    (run_dir / "relabel" / "answers" / "round_1.csv").unlink()
    with pytest.raises(RoundError, match="round_2.csv exists, but round 1 has no answers"):
        recover_run(run_dir)
    assert json.loads((run_dir / "classes.json").read_text())["class_names"] == CLASSES
