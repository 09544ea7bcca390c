"""Issue 24 acceptance: hostile ids, class names and CSV cells through manifest -> query -> answer -> audit.

Hypothesis draws ids, patient ids, class names and comments from an alphabet of formula starters, quotes,
separators, markdown, combining accents and wide characters (what the input rules accept), writes them into a
manifest as a tool would (spreadsheet-safe cells), loads it, starts a round, has an "expert" fill the query file
in a spreadsheet that keeps or drops the apostrophes, applies the answers and checks that the audit trail and
labels_cleaned.csv record exactly what was answered, that no written cell can run as a formula, and that the
audit digest holds. No network trains: the round is driven through the state functions `alr answer` uses.
"""

from __future__ import annotations

import csv
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from alr_monai.csvcells import FORMULA_STARTS, escape_cell, escape_row, unescape_cell
from alr_monai.data.classes import class_name_problems
from alr_monai.data.manifest import load_manifest
from alr_monai.data.text import comment_problem, normalize_comment, text_problem
from alr_monai.relabel.state import AuditTrail, RoundState, apply_answers_file, check_audit, start_round
from alr_monai.utils import read_csv

ALPHABET = "=+-@'\"`,;|<>*_[]#&!% aZ09.\u00e9e\u0301\u00df\u6f22\U0001f600\u0130"
# characters the rules refuse in ids and names; comments may hold line breaks and tabs
COMMENT_ALPHABET = ALPHABET + "\n\r\t"


def _valid_text(text: str) -> bool:
    return bool(text) and text == text.strip() and text_problem(text) is None


texts = st.text(alphabet=ALPHABET, min_size=1, max_size=10).filter(_valid_text)
class_lists = st.lists(texts, min_size=2, max_size=3).filter(lambda names: not class_name_problems(names))
comments = st.text(alphabet=COMMENT_ALPHABET, max_size=12).filter(
    lambda text: comment_problem(normalize_comment(text)) is None
)


@st.composite
def cases(draw):
    ids = draw(st.lists(texts, min_size=2, max_size=5, unique=True))
    names = draw(class_lists)
    n = len(ids)
    return {
        "ids": ids,
        "patients": draw(st.lists(texts, min_size=n, max_size=n)),
        "names": names,
        "given": draw(st.lists(st.integers(0, len(names) - 1), min_size=n, max_size=n)),
        "answers": draw(st.lists(st.integers(0, len(names) - 1), min_size=n, max_size=n)),
        "typed_upper": draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        "comments": draw(st.lists(comments, min_size=n, max_size=n)),
        "keep_apostrophes": draw(st.booleans()),
    }


def _no_formula(path: Path) -> None:
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            for cell in row:
                head = cell.lstrip(" ")
                assert not head or head[0] not in FORMULA_STARTS or escape_cell(cell) == cell, (path, cell)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=cases())
def test_what_was_answered_is_exactly_what_is_recorded(case):
    ids, names = case["ids"], case["names"]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "img.png")
        with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["id", "image", "label", "patient_id"])
            for sample_id, patient, label in zip(ids, case["patients"], case["given"], strict=True):
                writer.writerow(escape_row([sample_id, "img.png", names[label], patient]))

        # manifest (classes given, as manifest_classes does): ids and patient ids come back exactly, names in NFC
        manifest = load_manifest(root / "manifest.csv", class_names=names, check_images=False)
        assert [r["id"] for r in manifest.records] == ids
        assert [r["patient_id"] for r in manifest.records] == case["patients"]
        nfc = [unicodedata.normalize("NFC", name) for name in names]
        assert manifest.class_names == nfc
        assert [manifest.class_names[r["label"]] for r in manifest.records] == [nfc[g] for g in case["given"]]

        # query: every sample of the pool, with its patient id
        relabel = root / "run" / "relabel"
        relabel.mkdir(parents=True)
        state_path = relabel / "state.json"
        labels = [r["label"] for r in manifest.records]
        RoundState.initial(ids, labels, [False] * len(ids), manifest.class_names).save(state_path)
        rows = [
            {"id": i, "given_label": g, "predicted_label": 0, "predicted_probability": 0.5, "score": -1.0,
             "patient_id": p, "image": "img.png"}
            for i, g, p in zip(ids, labels, case["patients"], strict=True)
        ]  # fmt: skip
        query = relabel / "queries" / "round_1.csv"
        start_round(state_path, query, 1, rows)
        _no_formula(query)
        header, read_back = read_csv(query)
        assert [r["id"] for r in read_back] == ids and [r["patient_id"] for r in read_back] == case["patients"]

        # the expert fills expert_label and comment in a spreadsheet, which keeps the apostrophes or drops those
        # it can (one that protects a real leading apostrophe must stay)
        with open(query, newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle))
        label_col, comment_col = table[0].index("expert_label"), table[0].index("comment")
        typed = []
        for row, answer, upper, comment in zip(
            table[1:], case["answers"], case["typed_upper"], case["comments"], strict=True
        ):
            typed.append(names[answer].upper() if upper else names[answer])
            row[label_col], row[comment_col] = escape_cell(typed[-1]), escape_cell(comment)
            if not case["keep_apostrophes"]:
                row[:] = [
                    cell if unescape_cell(cell).lstrip(" ").startswith("'") else unescape_cell(cell) for cell in row
                ]
        filled = root / "filled.csv"
        with open(filled, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, lineterminator="\r\n").writerows(table)  # as spreadsheets save: CR in a cell quoted

        state = apply_answers_file(state_path, relabel / "audit.csv", relabel / "labels_cleaned.csv", filled)

        # what was answered is exactly what is recorded
        index = {name: k for k, name in enumerate(manifest.class_names)}
        expected_labels = [index[nfc[a]] for a in case["answers"]]
        assert state.current_labels == expected_labels and state.source == ["expert"] * len(ids)
        audit = AuditTrail(relabel / "audit.csv").rows()
        assert [r["id"] for r in audit] == ids
        assert [r["new_label"] for r in audit] == [nfc[a] for a in case["answers"]]
        assert [r["old_label"] for r in audit] == [manifest.class_names[g] for g in labels]
        assert [r["comment"] for r in audit] == [normalize_comment(c).strip() for c in case["comments"]]
        _, cleaned = read_csv(relabel / "labels_cleaned.csv")
        assert [(r["id"], r["label"]) for r in cleaned] == [
            (i, nfc[a]) for i, a in zip(ids, case["answers"], strict=True)
        ]
        # (answers/round_1.csv is the expert's file kept byte for byte: safe only if the spreadsheet kept the escapes)
        kept = [relabel / "answers" / "round_1.csv"] if case["keep_apostrophes"] else []
        for path in (relabel / "audit.csv", relabel / "labels_cleaned.csv", *kept):
            _no_formula(path)
        check_audit(RoundState.load(state_path), relabel / "audit.csv", state_path)
