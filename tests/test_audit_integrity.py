"""Issue 24 item 7: deletion, truncation and edits of audit.csv are detected before anything is appended."""

from __future__ import annotations

import json

import pytest
from test_recover import _expert_run, _query_rows, _write_answers

from alr_monai import cli
from alr_monai.relabel.recover import recover_run
from alr_monai.relabel.state import AuditError, AuditTrail, RoundState, apply_answers_file, check_audit, start_round


def _answer(paths, tmp_path):
    """Apply round 3's answers (s7 -> malignant, s8 -> normal) as `alr answer` does."""
    answers = _write_answers(tmp_path / "expert3.csv", {"s7": "malignant", "s8": "normal"})
    return apply_answers_file(paths["state"], paths["audit"], paths["labels"], answers)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(paths, tmp_path, match):
    relabel = paths["state"].parent
    before = _snapshot(relabel)
    with pytest.raises(AuditError, match=match) as error:
        _answer(paths, tmp_path)
    assert str(paths["audit"]) in str(error.value) and "alr recover --run_dir" in str(error.value)
    assert _snapshot(relabel) == before  # nothing appended, no answers file kept
    return error.value


def _damage(kind, paths):
    audit = paths["audit"]
    data = audit.read_bytes()
    if kind == "deleted":
        audit.unlink()
    elif kind == "truncated":
        audit.write_bytes(data[:-30])
    elif kind == "last row deleted":
        audit.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1])
    elif kind == "edited":
        edited = data.replace(b"s2,malignant,normal", b"s2,malignant,benign")
        assert edited != data
        audit.write_bytes(edited)
    elif kind == "row added":
        audit.write_bytes(data + b"s9,normal,benign,changed,2,expert,,,2026-01-01T00:00:00+00:00\n")
    elif kind == "digest edited":
        state = json.loads(paths["state"].read_text())
        state["audit"]["sha256"] = "0" * 64
        paths["state"].write_text(json.dumps(state))


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("deleted", "is missing"),
        ("truncated", "was truncated"),
        ("last row deleted", "was truncated"),
        ("edited", "was edited"),
        ("row added", "added by hand"),
        ("digest edited", "was edited"),
    ],
)
def test_a_damaged_audit_trail_is_refused_before_anything_is_appended(tmp_path, kind, said):
    paths = _expert_run(tmp_path / "run", tmp_path)
    _damage(kind, paths)
    _refused(paths, tmp_path, said)


def test_an_intact_trail_with_a_crashed_append_of_the_pending_round_goes_on(tmp_path):
    paths = _expert_run(tmp_path / "run", tmp_path)
    # round 3's first row landed (and half of its second) before a crash; the state still says round 3 is pending
    with open(paths["audit"], "ab") as handle:
        handle.write(b"s7,benign,malignant,changed,3,expert,,,2026-01-01T00:00:00+00:00\ns8,mali")
    state = _answer(paths, tmp_path)
    assert state.round == 3 and [r["id"] for r in AuditTrail(paths["audit"]).rows() if r["round"] == "3"] == [
        "s7",
        "s8",
    ]
    check_audit(RoundState.load(paths["state"]), paths["audit"], paths["state"])


def test_a_legacy_state_without_a_digest_is_accepted_with_a_message(tmp_path, caplog):
    paths = _expert_run(tmp_path / "run", tmp_path)
    state = json.loads(paths["state"].read_text())
    del state["audit"]
    paths["state"].write_text(json.dumps(state))
    paths["audit"].write_bytes(paths["audit"].read_bytes()[:-30])  # undetectable without a record
    with caplog.at_level("WARNING", logger="alr_monai"):
        state = _answer(paths, tmp_path)
    assert "records no digest" in caplog.text
    assert state.audit is not None and state.audit["bytes"] == paths["audit"].stat().st_size  # checked from now on


@pytest.mark.parametrize("kind", ["deleted", "truncated", "edited", "row added"])
def test_recover_rebuilds_the_trail_from_what_is_intact(tmp_path, kind, capsys):
    reference = _expert_run(tmp_path / "reference", tmp_path)
    paths = _expert_run(tmp_path / "run", tmp_path)
    original = paths["audit"].read_bytes()
    _damage(kind, paths)
    cli.main(["status", "--run_dir", str(tmp_path / "run")])
    assert "problem: audit trail" in capsys.readouterr().out
    recovery = recover_run(tmp_path / "run")
    assert recovery.rebuilt == "audit.csv"
    rebuilt = paths["audit"].read_bytes()
    if kind == "row added":  # every recorded row survives as it was, times included; the stray row is dropped
        assert rebuilt == original
    else:  # the lost or edited rows come back as the answers made them, with the time of the recovery
        assert [line.rsplit(b",", 1)[0] for line in rebuilt.splitlines()] == [
            line.rsplit(b",", 1)[0] for line in reference["audit"].read_bytes().splitlines()
        ]
    if kind != "deleted":
        assert (paths["audit"].parent / "audit.csv.damaged").is_file()
    assert any("kept as recorded" in note for note in recovery.notes)
    state = _answer(paths, tmp_path)  # the run goes on
    assert state.round == 3
    with pytest.raises(Exception, match="nothing to recover"):
        recover_run(tmp_path / "run")


def test_a_new_query_is_refused_on_a_damaged_trail(tmp_path):
    paths = _expert_run(tmp_path / "run", tmp_path)
    state = RoundState.load(paths["state"])
    rows = _query_rows(state.pending_ids(), state)
    _damage("truncated", paths)
    with pytest.raises(AuditError, match="was truncated"):
        start_round(paths["state"], paths["state"].parent / "queries" / "round_3.csv", 3, rows)
