from __future__ import annotations

import csv
from pathlib import Path

import pytest

from alr_monai.relabel.expert import (
    QUERY_COLUMNS,
    Answer,
    AnswerError,
    OracleExpert,
    check_class_names,
    class_label,
    class_legend,
    read_answers,
    write_query_file,
)
from alr_monai.relabel.state import RoundState, apply_answers_file
from alr_monai.utils import read_csv

CLASSES = ["normal", "Benign", "malignant"]
KNOWN = [f"s{i}" for i in range(10)]
QUERIED = ["s1", "s2", "s3", "s4"]


def _write(path: Path, rows: list[list[str]], delimiter: str = ",", encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


def _query_rows(ids: list[str]) -> list[dict[str, object]]:
    return [
        {
            "id": sample_id,
            "image": f"img/{sample_id}.png",
            "given_label": i % 3,
            "predicted_label": (i + 1) % 3,
            "predicted_probability": 0.5 + i / 100,
            "score": 1.0 / (i + 1),
            "patient_id": f"P{i}",
        }
        for i, sample_id in enumerate(ids)
    ]


# ------------------------------------------------------------------------------------------ query files
def test_query_file_writes_class_names_and_empty_answer_columns(tmp_path):
    path = write_query_file(tmp_path / "q.csv", _query_rows(QUERIED), CLASSES)
    header, rows = read_csv(path)
    assert header == QUERY_COLUMNS
    assert [r["id"] for r in rows] == QUERIED
    assert [r["given_label"] for r in rows] == ["normal", "Benign", "malignant", "normal"]
    assert [r["predicted_label"] for r in rows] == ["Benign", "malignant", "normal", "Benign"]
    assert rows[0]["image"] == "img/s1.png" and rows[0]["patient_id"] == "P0"
    assert float(rows[1]["predicted_probability"]) == pytest.approx(0.51)
    assert all(r["expert_label"] == "" and r["comment"] == "" for r in rows)


def test_query_file_refuses_to_overwrite_different_content(tmp_path):
    path = tmp_path / "q.csv"
    write_query_file(path, _query_rows(QUERIED), CLASSES)
    before = path.read_bytes()
    # Identical content (a rerun recomputing the same query) is accepted.
    write_query_file(path, _query_rows(QUERIED), CLASSES)
    assert path.read_bytes() == before
    with pytest.raises(FileExistsError, match="different content"):
        write_query_file(path, _query_rows(["s5", "s6"]), CLASSES)
    assert path.read_bytes() == before
    # An expert's half-filled query file also counts as different content.
    header, rows = read_csv(path)
    rows[0]["expert_label"] = "normal"
    _write(path, [header] + [[r[c] for c in header] for r in rows])
    with pytest.raises(FileExistsError):
        write_query_file(path, _query_rows(QUERIED), CLASSES)
    write_query_file(path, _query_rows(["s5", "s6"]), CLASSES, overwrite=True)
    assert [r["id"] for r in read_csv(path)[1]] == ["s5", "s6"]


def test_query_file_rejects_bad_rows(tmp_path):
    rows = _query_rows(QUERIED)
    rows[2]["given_label"] = 3
    with pytest.raises(ValueError, match="out of range"):
        write_query_file(tmp_path / "q.csv", rows, CLASSES)
    with pytest.raises(ValueError, match="duplicate id"):
        write_query_file(tmp_path / "q.csv", _query_rows(["s1", "s1"]), CLASSES)
    assert not (tmp_path / "q.csv").exists()


def test_class_names_are_checked():
    with pytest.raises(ValueError, match="reserved"):
        check_class_names(["a", "Exclude"])
    with pytest.raises(ValueError, match="clash"):
        check_class_names(["Benign", "benign "])


# ------------------------------------------------------------------------------------------ answers
def test_read_answers_parses_names_indices_blank_and_exclude(tmp_path):
    path = _write(
        tmp_path / "a.csv",
        [
            ["reader", "ID", " Expert_Label ", "comment"],  # header names ignore case and whitespace
            ["dr x", "s1", "  MALIGNANT ", "clear mass"],
            ["dr x", "s2", "1", ""],  # class number 1 = the first class, as on the query page
            ["dr x", "s3", "", "unsure"],
            ["dr x", "s4", "Exclude", "wrong body part"],
        ],
    )
    answers = read_answers(path, CLASSES, QUERIED, KNOWN)
    assert answers == [
        Answer("s1", 2, False, "clear mass", "dr x"),
        Answer("s2", 0, False, "", "dr x"),
        Answer("s3", None, False, "unsure", "dr x"),
        Answer("s4", None, True, "wrong body part", "dr x"),
    ]
    assert answers[2].skipped and not answers[3].skipped


def test_queried_ids_missing_from_file_are_skipped_and_blank_rows_ignored(tmp_path):
    path = _write(tmp_path / "a.csv", [["id", "expert_label"], ["s2", "benign"], [], ["", ""]])
    answers = read_answers(path, CLASSES, QUERIED, KNOWN)
    assert answers[0] == Answer("s2", 1, False, "")
    assert [(a.id, a.skipped) for a in answers[1:]] == [("s1", True), ("s3", True), ("s4", True)]


def test_filled_in_query_file_is_an_answers_file(tmp_path):
    path = write_query_file(tmp_path / "q.csv", _query_rows(QUERIED), CLASSES)
    header, rows = read_csv(path)
    for row, label in zip(rows, ["benign", "3", "", "exclude"], strict=True):
        row["expert_label"] = label
    rows[0]["comment"] = "looks benign, with a comma"
    _write(path, [header] + [[r[c] for c in header] for r in rows])
    answers = read_answers(path, CLASSES, QUERIED, KNOWN)
    assert [(a.id, a.label, a.excluded) for a in answers] == [
        ("s1", 1, False),
        ("s2", 2, False),
        ("s3", None, False),
        ("s4", None, True),
    ]
    assert answers[0].comment == "looks benign, with a comma"


def test_semicolon_separated_spreadsheet_export_is_read(tmp_path):
    path = _write(tmp_path / "a.csv", [["id", "expert_label"], ["s1", "normal"]], delimiter=";")
    assert read_answers(path, CLASSES, QUERIED, KNOWN)[0] == Answer("s1", 0, False, "")


def test_every_problem_is_reported_at_once(tmp_path):
    path = _write(
        tmp_path / "a.csv",
        [
            ["id", "expert_label", "comment"],
            ["s1", "normal", ""],  # row 2: fine
            ["nope", "normal", ""],  # row 3: unknown id
            ["s7", "benign", ""],  # row 4: known but not queried
            ["s2", "cancer", ""],  # row 5: not a class
            ["s3", "7", ""],  # row 6: index out of range
            ["s1", "benign", ""],  # row 7: duplicate
            ["", "benign", ""],  # row 8: empty id
        ],
    )
    with pytest.raises(AnswerError) as info:
        read_answers(path, CLASSES, QUERIED, KNOWN)
    problems = info.value.problems
    assert len(problems) == 6
    expected = [
        (3, "unknown id 'nope'"),
        (4, "'s7' was not queried"),
        (5, "'cancer' is not valid"),
        (6, "class number 7 is out of range: classes are numbered 1-3, as on the query page (1 = normal"),
        (7, "duplicate id 's1' (first on row 2)"),
        (8, "empty id"),
    ]
    for problem, (row, reason) in zip(problems, expected, strict=True):
        assert problem.startswith(f"{path} row {row}: ")
        assert reason in problem
    assert str(info.value).count(str(path)) == 6 and "nothing was applied" in str(info.value)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"id,label\ns1,normal\n", "missing required column 'expert_label'"),
        (b"name,expert_label\ns1,normal\n", "missing required column 'id'"),
        (b"id,expert_label\ns1,b\xe9nign\n", "not UTF-8"),
    ],
)
def test_file_level_problems(tmp_path, content, reason):
    path = tmp_path / "a.csv"
    path.write_bytes(content)
    with pytest.raises(AnswerError, match=reason) as info:
        read_answers(path, CLASSES, QUERIED, KNOWN)
    assert len(info.value.problems) == 1
    assert " row " in info.value.problems[0]


def test_numbers_count_from_1_as_on_the_query_page_and_typos_get_a_did_you_mean(tmp_path):
    # The page's key 3 is the third class: a 3 typed into the CSV must mean the same class (issue 25, item 1).
    path = _write(tmp_path / "a.csv", [["id", "expert_label"], ["s1", "3"], ["s2", "1"], ["s3", "EXCLUDED"]])
    answers = read_answers(path, CLASSES, QUERIED, KNOWN)
    assert [(a.label, a.excluded) for a in answers[:3]] == [(2, False), (0, False), (None, True)]
    assert class_legend(CLASSES) == "1 = normal, 2 = Benign, 3 = malignant"
    assert class_label(2, CLASSES) == "3 (malignant)"
    path = _write(
        tmp_path / "b.csv",
        [["id", "expert_label"], ["s1", "0"], ["s2", "maligant"], ["s3", "Excluded"], ["s4", "EXCLUDE"]],
    )
    with pytest.raises(AnswerError) as info:
        read_answers(path, CLASSES, QUERIED, KNOWN)
    zero, typo = info.value.problems  # "Excluded" and "EXCLUDE" are exclusions, any case
    assert "row 2: class number 0 is out of range: classes are numbered 1-3" in zero
    assert "1 = normal, 2 = Benign, 3 = malignant" in zero
    assert "row 3: expert_label 'maligant' is not valid (did you mean 'malignant'?)" in typo


def test_integer_like_class_names_disable_index_answers(tmp_path):
    # With classes named "1", "2", "3", the answer "1" must mean the class NAMED "1" (index 0), never index 1.
    path = _write(tmp_path / "a.csv", [["id", "expert_label"], ["s1", "1"], ["s2", "3"], ["s3", "0"]])
    with pytest.raises(AnswerError) as info:
        read_answers(path, ["1", "2", "3"], QUERIED, KNOWN)
    assert len(info.value.problems) == 1 and "row 4" in info.value.problems[0]
    path = _write(tmp_path / "b.csv", [["id", "expert_label"], ["s1", "1"], ["s2", "3"]])
    assert [a.label for a in read_answers(path, ["1", "2", "3"], QUERIED, KNOWN)[:2]] == [0, 2]


def test_bad_answers_file_applies_nothing(tmp_path):
    state = RoundState.initial(KNOWN, [0] * 10, [False] * 10, CLASSES)
    state.begin_round(1, QUERIED)
    state_path = state.save(tmp_path / "state.json")
    before = state_path.read_bytes()
    answers = _write(tmp_path / "a.csv", [["id", "expert_label"], ["s1", "benign"], ["s2", "typo"], ["s9", "normal"]])
    with pytest.raises(AnswerError) as info:
        apply_answers_file(state_path, tmp_path / "audit.csv", tmp_path / "labels.csv", answers)
    assert len(info.value.problems) == 2
    assert state_path.read_bytes() == before
    assert not (tmp_path / "audit.csv").exists() and not (tmp_path / "labels.csv").exists()
    # Fixed file: applied once, and the state records it.
    _write(answers, [["id", "expert_label"], ["s1", "benign"], ["s2", "malignant"]])
    new = apply_answers_file(state_path, tmp_path / "audit.csv", tmp_path / "labels.csv", answers)
    assert new.round == 1 and new.current_labels[1:3] == [1, 2] and new.skipped["1"] == ["s3", "s4"]


# ------------------------------------------------------------------------------------------ oracle
def test_oracle_without_errors_tells_the_truth():
    truth = {f"s{i}": i % 3 for i in range(30)}
    oracle = OracleExpert(truth, 3)
    answers = oracle.answer(list(truth), round_index=1)
    assert [a.label for a in answers] == list(truth.values())
    assert all(a.comment == "oracle" and not a.excluded for a in answers)
    with pytest.raises(KeyError, match="zzz"):
        oracle.answer(["zzz"], round_index=1)


def test_oracle_is_deterministic_per_seed_and_round_and_respects_error_rate():
    truth = {f"s{i}": i % 4 for i in range(2000)}
    ids = list(truth)
    oracle = OracleExpert(truth, 4, error_rate=0.2, seed=7)
    first = [a.label for a in oracle.answer(ids, round_index=3)]
    # A fresh oracle (a resumed run) answers the same round identically, whatever the query order.
    again = OracleExpert(truth, 4, error_rate=0.2, seed=7).answer(ids[::-1], round_index=3)
    assert [a.label for a in again[::-1]] == first
    wrong = [label != truth[i] for i, label in zip(ids, first, strict=True)]
    assert 0.17 < sum(wrong) / len(ids) < 0.23
    assert all(0 <= label < 4 for label in first)
    # Wrong answers spread over the other classes.
    assert {first[k] for k, w in enumerate(wrong) if w and truth[ids[k]] == 0} == {1, 2, 3}
    other_round = [a.label for a in oracle.answer(ids, round_index=4)]
    other_seed = [a.label for a in OracleExpert(truth, 4, error_rate=0.2, seed=8).answer(ids, round_index=3)]
    assert other_round != first and other_seed != first


def test_oracle_fills_query_file_through_the_human_path(tmp_path):
    truth = {sample_id: 2 for sample_id in KNOWN}
    query = write_query_file(tmp_path / "q.csv", _query_rows(QUERIED), CLASSES)
    oracle = OracleExpert(truth, 3, class_names=CLASSES)
    answers_path = oracle.fill_query_file(query, tmp_path / "answers.csv", round_index=1)
    header, rows = read_csv(answers_path)
    assert header == ["id", "expert_label", "comment"]
    assert [(r["id"], r["expert_label"], r["comment"]) for r in rows] == [(i, "malignant", "oracle") for i in QUERIED]
    answers = read_answers(answers_path, CLASSES, QUERIED, KNOWN)
    assert [a.label for a in answers] == [2, 2, 2, 2]


def test_oracle_rejects_bad_settings():
    with pytest.raises(ValueError):
        OracleExpert({"a": 0}, 2, error_rate=1.5)
    with pytest.raises(ValueError, match="out of range"):
        OracleExpert({"a": 5}, 2)


# --------------------------------------------------------------------------------------- strict parsing
def _answers_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "a.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_unterminated_quote_swallowing_the_rest_is_an_error_naming_its_row(tmp_path):
    rows = "".join(f"s{i},normal,ok\n" for i in range(2, 10))
    path = _answers_text(tmp_path, 'id,expert_label,comment\ns1,benign,"looks fine\n' + rows)
    with pytest.raises(AnswerError) as info:
        read_answers(path, CLASSES, [f"s{i}" for i in range(10)], KNOWN)
    assert info.value.problems == [
        f'{path} row 2 (line 2): a quote (") opened in this row is never closed, so every line after it would be '
        "read as one cell; close the quote or remove it"
    ]


def test_stray_quotes_that_join_rows_are_errors(tmp_path):
    # Two stray quotes rows apart join rows 2-4 into one record; the id and label cells then span lines.
    path = _answers_text(tmp_path, 'id,expert_label\ns1,"normal\ns2,benign\ns3,malignant"\ns4,normal\n')
    with pytest.raises(AnswerError) as info:
        read_answers(path, CLASSES, QUERIED, KNOWN)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.startswith(f"{path} row 2 (lines 2-4): ") and "spans several lines" in problem
    # A quote in the middle of a cell is malformed CSV too.
    path = _answers_text(tmp_path, 'id,expert_label\ns1,"normal"x\n')
    with pytest.raises(AnswerError, match=r"row 2 \(line 2\): malformed CSV"):
        read_answers(path, CLASSES, QUERIED, KNOWN)


def test_a_multi_line_comment_is_fine(tmp_path):
    path = _answers_text(tmp_path, 'id,expert_label,comment\ns1,benign,"two\nlines"\ns2,normal,\n')
    answers = read_answers(path, CLASSES, QUERIED, KNOWN)
    assert answers[0] == Answer("s1", 1, False, "two\nlines") and answers[1] == Answer("s2", 0, False, "")


def test_rows_with_the_wrong_number_of_cells_are_errors(tmp_path):
    path = _write(
        tmp_path / "a.csv",
        [
            ["id", "image", "expert_label", "comment"],
            ["s1", "a.png", "normal", ""],  # row 2: fine
            ["s2", "benign"],  # row 3: label typed in the image column, 2 cells
            ["s3", "c.png", "normal", "x", "extra"],  # row 4: a fifth cell with content
            ["s4", "d.png", "normal", "", ""],  # row 5: an empty extra cell is harmless
        ],
    )
    with pytest.raises(AnswerError) as info:
        read_answers(path, CLASSES, QUERIED, KNOWN)
    assert [p.split(": ")[0] for p in info.value.problems] == [f"{path} row 3", f"{path} row 4"]
    assert "2 cells but the header has 4" in info.value.problems[0]
    assert "5 cells but the header has 4" in info.value.problems[1]


def test_a_file_with_no_answer_is_refused_unless_allowed(tmp_path):
    unfilled = write_query_file(tmp_path / "q.csv", _query_rows(QUERIED), CLASSES)
    header_only = _write(tmp_path / "h.csv", [["id", "expert_label"]])
    for path in (unfilled, header_only):
        with pytest.raises(AnswerError, match="no answer at all") as info:
            read_answers(path, CLASSES, QUERIED, KNOWN)
        assert "--allow_empty" in str(info.value)
        answers = read_answers(path, CLASSES, QUERIED, KNOWN, allow_empty=True)
        assert [a.id for a in answers] == QUERIED and all(a.skipped for a in answers)
    # One exclusion is an answer.
    excluded = _write(tmp_path / "x.csv", [["id", "expert_label"], ["s1", "exclude"]])
    assert read_answers(excluded, CLASSES, QUERIED, KNOWN)[0].excluded


def test_a_huge_bad_answers_file_lists_the_first_problems_and_counts_the_rest_in_bounded_memory(tmp_path):
    """Issue 24 item 10: 5 000 bad rows give 10 000 problems; 50 are listed, the rest counted, none kept."""
    import tracemalloc

    path = tmp_path / "huge.csv"
    path.write_text(
        "id,expert_label,comment\n" + "".join(f"bad{i},nonsense,a comment\n" for i in range(5_000)), encoding="utf-8"
    )
    tracemalloc.start()
    try:
        with pytest.raises(AnswerError) as error:
            read_answers(path, CLASSES, ["s1"], ["s1"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.value.total == 10_000 and len(error.value.problems) == 50
    message = str(error.value)
    assert message.startswith("10000 problems") and message.endswith("... and 9950 more problems (the first 50 shown)")
    assert len(message.splitlines()) == 52
    assert peak < 1_000_000, peak  # every row's problem kept (and the file read whole) took 7 MB here
