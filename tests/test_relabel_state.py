from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path

import pytest

from alr_monai.relabel.expert import Answer, OracleExpert, read_answers
from alr_monai.relabel.state import (
    AUDIT_COLUMNS,
    LEGACY_AUDIT_COLUMNS,
    AuditTrail,
    RoundError,
    RoundState,
    apply_round,
    audit_digest,
    start_round,
)
from alr_monai.utils import read_csv

CLASSES = ["normal", "benign", "malignant"]
IDS = [f"s{i}" for i in range(8)]
GIVEN = [0, 1, 2, 0, 1, 2, 0, 1]
TRUSTED = [True, True, False, False, False, False, False, False]


def _state() -> RoundState:
    return RoundState.initial(IDS, GIVEN, TRUSTED, CLASSES)


def _answers() -> list[Answer]:
    # s2: changed, s3: confirmed (same label), s4: excluded, s5: skipped (blank), s6: not in the file at all.
    return [
        Answer("s2", 0, False, "was wrong"),
        Answer("s3", 0, False, ""),
        Answer("s4", None, True, "not a chest film"),
        Answer("s5", None, False, ""),
    ]


def _setup(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in ("state.json", "audit.csv", "labels.csv")}
    state = _state()
    state.begin_round(1, ["s2", "s3", "s4", "s5", "s6"])
    state.save(paths["state.json"])
    return paths


def _apply(paths: dict[str, Path], answers: list[Answer], round_index: int = 1) -> RoundState:
    return apply_round(
        paths["state.json"], paths["audit.csv"], paths["labels.csv"], round_index, answers, source="expert"
    )


# ------------------------------------------------------------------------------------------ state basics
def test_initial_state_and_pool():
    state = _state()
    assert state.current_labels == GIVEN and state.source == ["given"] * 8
    assert state.round == 0 and state.pending_round is None and state.next_round == 1
    assert state.pool_indices() == [2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="entries"):
        RoundState.initial(IDS, GIVEN[:-1], TRUSTED, CLASSES)
    with pytest.raises(ValueError, match="given_labels"):
        RoundState.initial(IDS, [3] + GIVEN[1:], TRUSTED, CLASSES)


def test_pool_is_every_unanswered_sample_when_phase1_trusted_all(tmp_path):
    # A one-network CE phase 1 selects nothing; the expert may then be asked about any sample.
    paths = {name: tmp_path / name for name in ("state.json", "audit.csv", "labels.csv")}
    state = RoundState.initial(IDS, GIVEN, [True] * 8, CLASSES)
    assert state.pool_scope == "unverified" and state.pool_indices() == list(range(8))
    state.begin_round(1, ["s0", "s4"])
    state.save(paths["state.json"])
    state = _apply(paths, [Answer("s0", 2, False, ""), Answer("s4", None, True, "")])
    assert state.pool_indices() == [1, 2, 3, 5, 6, 7]
    with pytest.raises(RoundError, match="outside the pool"):
        state.begin_round(2, ["s0"])
    # A suspected-scope state keeps trusted samples out of the pool, and old files without the field load.
    assert _state().pool_scope == "suspected"
    saved = json.loads(paths["state.json"].read_text())
    del saved["pool_scope"]
    paths["state.json"].write_text(json.dumps(saved))
    assert RoundState.load(paths["state.json"]).pool_scope == "suspected"


def test_save_load_round_trip(tmp_path):
    state = _state()
    state.begin_round(1, ["s2", "s3"])
    state.rng_state = {"bit_generator": "PCG64", "state": {"state": 2**100, "inc": 7}}
    path = state.save(tmp_path / "state.json")
    assert json.loads(path.read_text())["format_version"] == 1
    assert RoundState.load(path) == state


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.json.*RoundState\.initial"):
        RoundState.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format_version": 1, "ids": [')
    with pytest.raises(ValueError, match=r"bad\.json.*corrupt"):
        RoundState.load(bad)
    data = json.loads(_state().save(tmp_path / "ok.json").read_text())
    bad.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(ValueError, match=r"bad\.json.*format_version 99"):
        RoundState.load(bad)
    bad.write_text(json.dumps({**data, "trusted": data["trusted"][:3]}))
    with pytest.raises(ValueError, match=r"bad\.json.*inconsistent"):
        RoundState.load(bad)


def test_begin_round_checks_the_query():
    state = _state()
    with pytest.raises(RoundError, match="next round is 1"):
        state.begin_round(2, ["s2"])
    with pytest.raises(RoundError, match="already trusted"):
        state.begin_round(1, ["s0", "s2"])
    with pytest.raises(RoundError, match="unknown"):
        state.begin_round(1, ["zz"])
    state.begin_round(1, ["s2", "s3"])
    state.begin_round(1, ["s2", "s3"])  # rerun: same query is fine
    with pytest.raises(RoundError, match="different query"):
        state.begin_round(1, ["s4"])
    state.begin_round(1, ["s4"], replace=True)
    assert state.pending_ids() == ["s4"]


# ------------------------------------------------------------------------------------------ applying answers
def test_apply_answers_updates_labels_trust_budget_and_history():
    state = _state()
    state.begin_round(1, ["s2", "s3", "s4", "s5", "s6"])
    rows = state.apply_answers(1, _answers(), "expert")
    # An audit row for every answered sample (the confirmation too), labels as names; skipped samples have none.
    assert [(r["id"], r["old_label"], r["new_label"], r["action"], r["round"], r["source"]) for r in rows] == [
        ("s2", "malignant", "normal", "changed", 1, "expert"),
        ("s3", "normal", "normal", "confirmed", 1, "expert"),
        ("s4", "benign", "excluded", "excluded", 1, "expert"),
    ]
    assert datetime.fromisoformat(rows[0]["time"]).utcoffset().total_seconds() == 0
    assert state.current_labels == [0, 1, 0, 0, -1, 2, 0, 1]
    assert state.trusted == [True, True, True, True, False, False, False, False]
    assert state.source[2:6] == ["expert", "expert", "excluded", "given"]
    assert state.pool_indices() == [5, 6, 7]  # skipped s5 and unanswered s6 stay in the pool
    assert state.budget_spent == 3  # change + confirmation + exclusion; skipped not counted
    assert state.round == 1 and state.pending_round is None
    assert state.skipped == {"1": ["s5", "s6"]}
    assert state.history == [
        {
            "round": 1,
            "source": "expert",
            "queried": 5,
            "labels_spent": 3,
            "labels_changed": 1,
            "excluded": 1,
            "skipped": 2,
            "budget_spent": 3,
            "metrics": {},
        }
    ]
    state.record_metrics(1, {"balanced_accuracy": 0.8})
    state.record_metrics(0, {"balanced_accuracy": 0.7})
    assert state.history[0]["metrics"] == {"balanced_accuracy": 0.8}
    assert state.baseline_metrics == {"balanced_accuracy": 0.7}
    with pytest.raises(RoundError):
        state.record_metrics(2, {"x": 1})
    assert state.labels_cleaned_rows()[2:5] == [
        {"id": "s2", "label": "normal", "label_index": 0, "source": "expert"},
        {"id": "s3", "label": "normal", "label_index": 0, "source": "expert"},
        {"id": "s4", "label": "", "label_index": -1, "source": "excluded"},
    ]


def test_applying_a_round_twice_or_out_of_turn_raises(tmp_path):
    paths = _setup(tmp_path)
    _apply(paths, _answers())
    state_bytes, audit_bytes = paths["state.json"].read_bytes(), paths["audit.csv"].read_bytes()
    with pytest.raises(RoundError, match="already applied"):
        _apply(paths, _answers())
    with pytest.raises(RoundError, match="no query is pending"):
        _apply(paths, _answers(), round_index=2)
    assert paths["state.json"].read_bytes() == state_bytes and paths["audit.csv"].read_bytes() == audit_bytes

    state = _state()
    state.begin_round(1, ["s2"])
    with pytest.raises(RoundError, match="not the pending round"):
        state.apply_answers(2, [], "expert")
    with pytest.raises(RoundError, match="not queried"):
        state.apply_answers(1, [Answer("s3", 0)], "expert")
    with pytest.raises(RoundError, match="two answers"):
        state.apply_answers(1, [Answer("s2", 0), Answer("s2", 1)], "expert")
    with pytest.raises(ValueError, match="source"):
        state.apply_answers(1, [Answer("s2", 0)], "given")
    assert state.pending_round == 1 and state.current_labels == GIVEN  # failed calls changed nothing


def test_crash_before_state_write_resumes_to_identical_result(tmp_path, monkeypatch):
    clean = _setup(tmp_path / "clean")
    _apply(clean, _answers())

    crashed = _setup(tmp_path / "crashed")
    original_save = RoundState.save
    calls = {"n": 0}

    def save_that_dies_once(self, path):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("killed before the state write")
        return original_save(self, path)

    monkeypatch.setattr(RoundState, "save", save_that_dies_once)
    with pytest.raises(KeyboardInterrupt):
        _apply(crashed, _answers())
    # Audit and labels were written, but the state still says round 1 is pending.
    assert RoundState.load(crashed["state.json"]).pending_round == 1
    assert len(AuditTrail(crashed["audit.csv"]).rows()) == 3
    first_audit = crashed["audit.csv"].read_bytes()

    resumed = _apply(crashed, _answers())
    assert calls["n"] == 2
    # audit.csv stamps each answer with the time it was written, so the two runs' trails (and the digests of them
    # the states keep) differ when a second boundary falls between them: each digest must match its own trail, and
    # everything else must be identical
    assert resumed.audit == audit_digest(crashed["audit.csv"])
    clean_state = RoundState.load(clean["state.json"])
    assert clean_state.audit == audit_digest(clean["audit.csv"])
    assert dataclasses.replace(resumed, audit=None) == dataclasses.replace(clean_state, audit=None)

    def without_digest(path: Path) -> dict:
        return {k: v for k, v in json.loads(path.read_text()).items() if k != "audit"}

    assert without_digest(crashed["state.json"]) == without_digest(clean["state.json"])
    assert crashed["labels.csv"].read_bytes() == clean["labels.csv"].read_bytes()
    assert crashed["audit.csv"].read_bytes() == first_audit  # nothing appended twice

    def without_time(path: Path) -> list[tuple[str, ...]]:
        return [tuple(r[c] for c in AUDIT_COLUMNS if c != "time") for r in AuditTrail(path).rows()]

    assert without_time(crashed["audit.csv"]) == without_time(clean["audit.csv"])
    keys = [(r["round"], r["id"]) for r in AuditTrail(crashed["audit.csv"]).rows()]
    assert sorted(keys) == [("1", "s2"), ("1", "s3"), ("1", "s4")]


def test_changed_answers_after_a_partial_apply_are_refused(tmp_path, monkeypatch):
    paths = _setup(tmp_path)
    original_save = RoundState.save
    monkeypatch.setattr(RoundState, "save", lambda self, path: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        _apply(paths, _answers())
    monkeypatch.setattr(RoundState, "save", original_save)
    # The expert edited the file in between: s2 now gets another label, and s4 is no longer excluded.
    edited = [Answer("s2", 1), Answer("s3", 0), Answer("s4", 1)]
    with pytest.raises(RoundError, match="answers changed"):
        _apply(paths, edited)
    assert RoundState.load(paths["state.json"]).pending_round == 1
    assert _apply(paths, _answers()).round == 1


# ------------------------------------------------------------------------------------------ audit trail
def _row(sample_id: str, round_index: int, new: str = "benign") -> dict[str, object]:
    return {"id": sample_id, "old_label": "normal", "new_label": new, "action": "changed", "round": round_index,
            "source": "expert", "reader": "", "comment": "", "time": "2024-01-01T00:00:00+00:00"}  # fmt: skip


def test_audit_trail_append_is_idempotent_per_round_and_id(tmp_path):
    trail = AuditTrail(tmp_path / "sub" / "audit.csv")
    assert trail.rows() == []
    assert trail.append([_row("a", 1), _row("b", 1)]) == 2
    assert trail.append([_row("a", 1), _row("b", 1), _row("a", 2)]) == 1
    assert trail.append([]) == 0
    header, rows = read_csv(trail.path)
    assert header == AUDIT_COLUMNS
    assert [(r["round"], r["id"]) for r in rows] == [("1", "a"), ("1", "b"), ("2", "a")]
    with pytest.raises(ValueError, match="answers changed"):
        trail.append([_row("a", 1, new="malignant")])
    assert len(trail.rows()) == 3


def test_audit_trail_drops_a_torn_last_line(tmp_path):
    trail = AuditTrail(tmp_path / "audit.csv")
    trail.append([_row("a", 1)])
    with open(trail.path, "a") as handle:
        handle.write("b,normal,ben")  # a crash in the middle of an append
    assert [r["id"] for r in trail.rows()] == ["a"]
    assert trail.append([_row("a", 1), _row("b", 1)]) == 1
    assert [(r["id"], r["new_label"]) for r in trail.rows()] == [("a", "benign"), ("b", "benign")]
    assert trail.path.read_text().count("\n") == 3


def test_a_legacy_audit_trail_is_appended_in_its_own_columns_without_confirmations(tmp_path):
    path = tmp_path / "audit.csv"
    path.write_text(",".join(LEGACY_AUDIT_COLUMNS) + "\na,normal,benign,1,expert,2024-01-01T00:00:00+00:00\n")
    trail = AuditTrail(path)
    confirmed = {**_row("c", 2, new="normal"), "action": "confirmed"}
    assert trail.append([_row("b", 2), confirmed]) == 1
    header, rows = read_csv(path)
    assert header == LEGACY_AUDIT_COLUMNS and [r["id"] for r in rows] == ["a", "b"]


def test_audit_trail_rejects_foreign_header(tmp_path):
    path = tmp_path / "audit.csv"
    path.write_text("id,label\nx,1\n")
    with pytest.raises(ValueError, match="columns"):
        AuditTrail(path).append([_row("a", 1)])


# ------------------------------------------------------------------------------------------ full loop
def _query_rows(ids: list[str]) -> list[dict[str, object]]:
    return [{"id": i, "given_label": 0, "predicted_label": 1, "predicted_probability": 0.6, "score": 0.5} for i in ids]


def test_rounds_with_the_oracle_through_files(tmp_path):
    state_path, query_path = tmp_path / "state.json", tmp_path / "query_r1.csv"
    RoundState.initial(IDS, [0] * 8, TRUSTED, CLASSES).save(state_path)
    truth = dict(zip(IDS, [0, 0, 1, 2, 0, 1, 2, 0], strict=True))
    oracle = OracleExpert(truth, 3, class_names=CLASSES)

    start_round(state_path, query_path, 1, _query_rows(["s2", "s3", "s4"]), rng_state=[1, 2, 3])
    # A rerun of the same step while the expert is filling the query file in leaves that file alone.
    half_filled = query_path.read_text().replace(
        "s2,,normal,benign,0.6000,0.5000,,,", "s2,,normal,benign,0.6000,0.5000,,benign,"
    )
    assert half_filled != query_path.read_text()
    query_path.write_text(half_filled)
    start_round(state_path, query_path, 1, _query_rows(["s2", "s3", "s4"]))
    assert query_path.read_text() == half_filled
    state = RoundState.load(state_path)
    assert state.pending_round == 1 and state.rng_state == [1, 2, 3]

    oracle.fill_query_file(query_path, tmp_path / "answers_r1.csv", round_index=1)
    answers = read_answers(tmp_path / "answers_r1.csv", CLASSES, state.pending_ids(), state.ids)
    state = apply_round(state_path, tmp_path / "audit.csv", tmp_path / "labels.csv", 1, answers, "oracle")
    assert state.current_labels[2:5] == [1, 2, 0] and state.source[2:5] == ["oracle"] * 3

    start_round(state_path, tmp_path / "query_r2.csv", 2, _query_rows(["s5", "s6", "s7"]))
    state = RoundState.load(state_path)
    answers = oracle.answer(state.pending_ids(), round_index=2)
    state = apply_round(state_path, tmp_path / "audit.csv", tmp_path / "labels.csv", 2, answers, "oracle")

    assert state.current_labels == [0] * 2 + [truth[i] for i in IDS[2:]]
    assert state.pool_indices() == [] and state.budget_spent == 6
    audit = AuditTrail(tmp_path / "audit.csv").rows()
    changes = [(r["round"], r["id"]) for r in audit if r["action"] != "confirmed"]
    assert changes == [("1", "s2"), ("1", "s3"), ("2", "s5"), ("2", "s6")]
    assert {r["action"] for r in audit if (r["round"], r["id"]) not in changes} == {"confirmed"}
    header, labels = read_csv(tmp_path / "labels.csv")
    assert header == ["id", "label", "label_index", "source"]
    assert [r["label"] for r in labels] == [CLASSES[truth[i]] if i not in ("s0", "s1") else "normal" for i in IDS]
