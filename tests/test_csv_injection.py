"""Issue 24 item 4: spreadsheet-safe CSV cells on write, read back unchanged."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from alr_monai.csvcells import escape_cell, unescape_cell
from alr_monai.data.manifest import build_manifest_from_folder, load_manifest
from alr_monai.relabel.expert import read_answers, write_query_file
from alr_monai.relabel.readers import ReaderSettings, submit_reader_answers
from alr_monai.relabel.state import AuditTrail
from alr_monai.utils import atomic_write_csv, read_csv

HOSTILE = ['=HYPERLINK("http://evil.example","y")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "'quoted", "''", "'"]
# a carriage return inside a cell is never written (ids refuse control characters, comments normalise line breaks):
# Python's csv writer leaves it unquoted, so the file round trips are checked without it
IN_FILES = [value for value in HOSTILE if "\r" not in value]
CLASSES = ["normal", "benign"]


def _raw_cells(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def _formula_cells(path) -> list[str]:
    return [cell for row in _raw_cells(path) for cell in row if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]


@pytest.mark.parametrize("value", [*HOSTILE, "plain", "", "a=b", " =x", "  'x", " @x"])
def test_the_rule_round_trips_and_leaves_no_formula(value):
    written = escape_cell(value)
    assert unescape_cell(written) == value
    assert written.lstrip(" ")[:1] not in ("=", "+", "-", "@", "\t", "\r", "\n")
    assert unescape_cell(written.strip()).strip() == value.strip()  # how an answers file's cells are read


@pytest.mark.parametrize("number", ["-3", "+0.5", "-1e-05", "-.5", "12", " -3"])
def test_plain_numbers_are_written_as_numbers(number):
    assert escape_cell(number) == number


def test_atomic_write_csv_and_read_csv(tmp_path):
    rows = [{"id": value, "loss": -0.25, "n": -3} for value in IN_FILES]
    atomic_write_csv(tmp_path / "x.csv", rows, ["id", "loss", "n"])
    assert _formula_cells(tmp_path / "x.csv") == ["-0.25", "-3"] * len(IN_FILES)  # numbers stay numbers
    assert [row["id"] for row in read_csv(tmp_path / "x.csv")[1]] == IN_FILES


def test_query_file_and_answers_round_trip_a_formula_id(tmp_path):
    ids = ["=1+1", "@cmd", "'x", "plain"]
    rows = [
        {"id": i, "given_label": 0, "predicted_label": 1, "predicted_probability": 0.5, "score": 0.1, "patient_id": i}
        for i in ids
    ]
    query = write_query_file(tmp_path / "round_1.csv", rows, CLASSES)
    assert _formula_cells(query) == []
    assert [row[0] for row in _raw_cells(query)[1:]] == ["'=1+1", "'@cmd", "''x", "plain"]
    # the expert fills expert_label and a comment in the file itself, in a spreadsheet that keeps the apostrophes
    table = _raw_cells(query)
    for row in table[1:]:
        row[7], row[8] = "benign", "'=2+2"
    with open(query, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(table)
    answers = read_answers(query, CLASSES, ids, ids)
    assert [(a.id, a.label, a.comment) for a in answers] == [(i, 1, "=2+2") for i in ids]
    # a spreadsheet that drops the apostrophes on saving gives the same ids back
    plain = tmp_path / "plain.csv"
    plain.write_text('id,expert_label\n"=1+1",benign\n@cmd,normal\n', encoding="utf-8")
    assert [a.id for a in read_answers(plain, CLASSES, ids, ids) if not a.skipped] == ["=1+1", "@cmd"]


def test_audit_trail_cells_are_safe_and_read_back(tmp_path):
    trail = AuditTrail(tmp_path / "audit.csv")
    rows = [
        {
            "id": "=1+1",
            "old_label": "normal",
            "new_label": "benign",
            "action": "changed",
            "round": 1,
            "source": "expert",
            "reader": "-dr",
            "comment": '=HYPERLINK("http://evil.example","y")',
            "time": "t",
        }
    ]
    assert trail.append(rows) == 1
    assert _formula_cells(trail.path) == []
    (row,) = trail.rows()
    assert (row["id"], row["reader"], row["comment"]) == ("=1+1", "-dr", rows[0]["comment"])
    assert trail.append(rows) == 0  # idempotent on the unescaped values


def test_built_manifest_is_safe_and_reads_back(tmp_path, imagefile_png):
    imagefile_png(tmp_path / "data" / "=cls" / "+a.png", np.zeros((4, 4), np.uint8))
    imagefile_png(tmp_path / "data" / "b" / "@b.png", np.zeros((4, 4), np.uint8))
    out = build_manifest_from_folder(tmp_path / "data", tmp_path / "manifest.csv")
    assert _formula_cells(out) == []
    manifest = load_manifest(out, check_images=False)
    assert sorted(r["id"] for r in manifest.records) == ["=cls/+a", "b/@b"]
    assert manifest.class_names == ["=cls", "b"]


def test_reader_files_are_safe(tmp_path):
    ids = ["=a", "b"]
    answers = tmp_path / "mine.csv"
    answers.write_text("id,expert_label,comment\n'=a,benign,'=x\nb,normal,\n", encoding="utf-8")
    result = submit_reader_answers(
        tmp_path, 1, ids, ids, CLASSES, answers, "dr_a", ReaderSettings(readers=1, rule="majority")
    )
    final = tmp_path / "answers" / "round_1.csv"
    assert result["status"] == "decided" and _formula_cells(final) == []
    assert [a.id for a in read_answers(final, CLASSES, ids, ids)] == ids


def test_the_query_page_saves_with_the_same_rule():
    """The page's csvCell (JavaScript) escapes as escape_cell does; its two regexes read the same in Python."""
    import re

    from alr_monai.relabel.query_page import page_file

    script = page_file("query.js")
    start = script.index("function csvCell(value)")
    formula, number = re.findall(r"/(\^.*?\$?)/\.test\(value\)", script[start : start + 400])[:2]

    def page_cell(value: str) -> str:
        return "'" + value if re.search(formula, value) and not re.search(number, value) else value

    for value in [*HOSTILE, "plain", "-3", "+0.5", "-1e-05", "a=b", "-x", " =x", "  'y", " -3"]:
        assert page_cell(value) == escape_cell(value), value
