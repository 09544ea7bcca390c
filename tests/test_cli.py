"""The ``alr`` command line (fire), run in-process through ``alr_monai.cli.main``; no training here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from alr_monai import cli
from alr_monai.relabel import RoundState, start_round

CLASSES = ["normal", "abnormal", "unclear"]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``alr argv``; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        cli.main(argv)
    except SystemExit as exit_:
        code = 0 if exit_.code is None else exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------------ help
def test_help_lists_every_command(capsys):
    code, out, err = run_cli(["--help"], capsys)
    assert code == 0
    text = out + err
    for command in ("train", "relabel", "query", "answer", "status", "report", "demo", "manifest"):
        assert command in text, f"{command} missing from alr --help"
    assert set(cli.COMMANDS) >= {"train", "relabel", "query", "answer", "status", "report", "demo", "manifest"}


# -------------------------------------------------------------------------------------------- manifests
def test_manifest_build_then_check(tmp_path, capsys, imagefile_png, imagefile_dicom):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    imagefile_png(root / "normal" / "a.png", rng.integers(0, 256, (8, 8)))
    imagefile_png(root / "normal" / "sub" / "b.png", rng.integers(0, 256, (8, 8)))
    imagefile_dicom(root / "normal" / "c.dcm", rng.integers(0, 1000, (8, 8)).astype(np.int16), patient_id="P7")
    imagefile_png(root / "abnormal" / "d.png", rng.integers(0, 256, (8, 8, 3)))
    out = tmp_path / "manifests" / "m.csv"

    code, printed, err = run_cli(["manifest", "build", str(root), "--out", str(out)], capsys)
    assert code == 0, err
    assert "4 images" in printed
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == ["abnormal/d", "normal/a", "normal/c", "normal/sub/b"]
    assert {row["id"]: row["label"] for row in rows}["normal/c"] == "normal"
    assert {row["id"]: row["patient_id"] for row in rows} == {
        "abnormal/d": "",
        "normal/a": "",
        "normal/c": "P7",
        "normal/sub/b": "",
    }

    code, printed, err = run_cli(["manifest", "check", str(out)], capsys)
    assert code == 0, err
    assert "4 rows OK" in printed
    assert "'normal': 3" in printed and "'abnormal': 1" in printed


def test_manifest_check_reports_every_bad_row_and_exits_2(tmp_path, capsys, imagefile_png):
    imagefile_png(tmp_path / "ok.png", np.zeros((8, 8)))
    imagefile_png(tmp_path / "ok2.png", np.zeros((8, 8)))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    manifest = write_csv(
        tmp_path / "m.csv",
        ["id", "image", "label"],
        [
            ["a", "ok.png", "normal"],  # row 2: fine
            ["b", "missing.png", "normal"],  # row 3: no such file
            ["", "ok.png", "normal"],  # row 4: empty id
            ["a", "ok2.png", "abnormal"],  # row 5: duplicate id
            ["c", "ok2.png", ""],  # row 6: empty label
            ["d", "broken.png", "normal"],  # row 7: unreadable image
        ],
    )
    code, printed, err = run_cli(["manifest", "check", str(manifest)], capsys)
    assert code == 2
    assert "rows OK" not in printed
    assert err.startswith("alr: error:")
    assert "5 problems" in err
    for row in (3, 4, 5, 6, 7):
        assert f"row {row}:" in err, f"row {row} not reported:\n{err}"
    assert "row 2:" not in err


# ------------------------------------------------------------------------------------ answers and status
@pytest.fixture
def pending_run(tmp_path) -> Path:
    """A run folder after phase 1 with round 1 queried (ids s3, s4, s5, s6) and nothing answered."""
    run_dir = tmp_path / "run"
    relabel_dir = run_dir / "relabel"
    relabel_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"epoch": 2, "last": {"train": {}}}))
    ids = [f"s{i}" for i in range(10)]
    given = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    trusted = [True, True, True, False, False, False, False, False, False, False]
    RoundState.initial(ids, given, trusted, CLASSES).save(relabel_dir / "state.json")
    rows = [
        {
            "id": f"s{i}",
            "given_label": given[i],
            "predicted_label": 1,
            "predicted_probability": 0.5,
            "score": 1 - i / 10,
        }
        for i in (3, 4, 5, 6)
    ]
    start_round(relabel_dir / "state.json", relabel_dir / "queries" / "round_1.csv", 1, rows)
    return run_dir


def test_status_before_and_after_a_round(tmp_path, pending_run, capsys):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    code, printed, _ = run_cli(["status", "--run_dir", str(fresh)], capsys)
    assert code == 0 and "phase 1 not run" in printed and "no relabel round started" in printed
    (fresh / "metrics.json").write_text("{}")
    assert "phase 1 finished" in run_cli(["status", "--run_dir", str(fresh)], capsys)[1]

    code, printed, _ = run_cli(["status", "--run_dir", str(pending_run)], capsys)
    assert code == 0
    assert "0 round(s) applied, 0 labels spent, pool 7" in printed
    assert f"waiting: round 1 query {pending_run / 'relabel' / 'queries' / 'round_1.csv'} (4 samples)" in printed
    assert str(pending_run / "relabel" / "answers" / "round_1.csv") in printed

    answers = write_csv(
        pending_run / "filled.csv",
        ["id", "expert_label", "comment"],
        [["s3", "abnormal", "looks abnormal"], ["s4", "2", ""], ["s5", "exclude", "blurred"], ["s6", "", ""]],
    )
    code, printed, err = run_cli(["answer", str(answers), "--run_dir", str(pending_run)], capsys)
    assert code == 0, err
    assert "round 1: applied 3 answers (2 labels changed, 1 excluded, 1 skipped)" in printed
    assert f"alr query --run_dir {pending_run}" in printed

    code, printed, _ = run_cli(["status", "--run_dir", str(pending_run)], capsys)
    assert code == 0
    assert "1 round(s) applied, 3 labels spent, pool 4" in printed  # s3, s4 trusted, s5 excluded; s6 stays
    assert "nothing waiting" in printed and "waiting: round" not in printed

    # The same answers again: nothing is applied twice.
    audit = (pending_run / "relabel" / "audit.csv").read_bytes()
    code, _, err = run_cli(["answer", str(answers), "--run_dir", str(pending_run)], capsys)
    assert code == 2 and "no query is pending" in err
    assert (pending_run / "relabel" / "audit.csv").read_bytes() == audit


def test_answer_with_a_bad_file_lists_every_problem_and_changes_nothing(pending_run, capsys):
    state_path = pending_run / "relabel" / "state.json"
    before = state_path.read_bytes()
    bad = write_csv(
        pending_run / "bad.csv",
        ["id", "expert_label", "comment"],
        [
            ["s3", "abnormal", ""],  # row 2: fine
            ["s4", "tumour", ""],  # row 3: not a class
            ["s99", "normal", ""],  # row 4: unknown id
            ["s0", "normal", ""],  # row 5: not queried in this round (phase-1 trusted)
            ["s3", "normal", ""],  # row 6: duplicate id
            ["s5", "7", ""],  # row 7: class index out of range
        ],
    )
    code, printed, err = run_cli(["answer", str(bad), "--run_dir", str(pending_run)], capsys)
    assert code == 2
    assert "applied" not in printed
    assert "5 problems" in err and "nothing was applied" in err
    for row, words in [(3, "tumour"), (4, "s99"), (5, "not queried"), (6, "duplicate"), (7, "out of range")]:
        assert any(f"row {row}:" in line and words in line for line in err.splitlines()), f"row {row}:\n{err}"
    assert "row 2:" not in err
    assert state_path.read_bytes() == before
    assert not (pending_run / "relabel" / "audit.csv").exists()
    assert not (pending_run / "relabel" / "labels_cleaned.csv").exists()

    code, _, err = run_cli(["answer", str(pending_run / "nope.csv"), "--run_dir", str(pending_run)], capsys)
    assert code == 2 and "nope.csv" in err
    assert state_path.read_bytes() == before
