"""Issue 24 items 5, 6 and 8: manifest splits, control characters in ids, confusable class names."""

from __future__ import annotations

import logging
import unicodedata

import numpy as np
import pytest

from alr_monai import cli
from alr_monai.data.classes import check_class_names
from alr_monai.data.manifest import ManifestError, load_manifest
from alr_monai.relabel.expert import AnswerError, read_answers, write_query_file

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


@pytest.fixture
def manifest(tmp_path, imagefile_png, manifest_write_csv):
    """``write(rows)``: a manifest of PNGs (``id``, ``label``, optional ``patient_id`` / ``split`` per row dict)."""

    def write(rows):
        for row in rows:
            row.setdefault("image", f"img{len(list(tmp_path.glob('*.png')))}.png")
            imagefile_png(tmp_path / row["image"], np.zeros((4, 4), np.uint8))
        header = ["id", "image", "label", "patient_id", "split"]
        return manifest_write_csv(tmp_path / "manifest.csv", [{k: r.get(k, "") for k in header} for r in rows])

    return write


def _problems(path, **kwargs) -> str:
    with pytest.raises(ManifestError) as error:
        load_manifest(path, check_images=False, **kwargs)
    return str(error.value)


# ------------------------------------------------------------------------------------------------ item 5
def test_an_unknown_split_value_is_refused_with_its_row_and_the_accepted_values(manifest):
    path = manifest([{"id": "a", "label": "x", "split": "train"}, {"id": "b", "label": "y", "split": "training"}])
    message = _problems(path)
    assert "row 3" in message and "'training'" in message and "train, val, test" in message
    # any case of an accepted value is fine, and so is a blank
    path = manifest([{"id": "a", "label": "x", "split": "Train"}, {"id": "b", "label": "y", "split": ""}])
    assert len(load_manifest(path, check_images=False).records) == 2


def test_a_patient_in_two_splits_is_refused_unless_allowed(manifest, caplog, capsys):
    rows = [
        {"id": "a", "label": "x", "patient_id": "P1", "split": "train"},
        {"id": "b", "label": "y", "patient_id": "P1", "split": "val"},
        {"id": "c", "label": "y", "patient_id": "P2", "split": "val"},
        {"id": "d", "label": "x", "patient_id": "P2", "split": "val"},
    ]
    path = manifest(rows)
    message = _problems(path)
    assert "row 2: patient 'P1' lies in 2 splits (train: rows 2; val: rows 3)" in message
    assert "P2" not in message and "--allow_patient_overlap true" in message
    with pytest.raises(SystemExit):
        cli.main(["manifest", "check", str(path)])
    assert "patient 'P1' lies in 2 splits" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING, logger="alr_monai"):
        assert len(load_manifest(path, check_images=False, allow_patient_overlap=True).records) == 4
    assert "1 of 2 patients (2 rows) lie in more than one split" in caplog.text
    cli.main(["manifest", "check", str(path), "--allow_patient_overlap", "true"])
    assert "4 rows OK" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ item 6
@pytest.mark.parametrize(
    ("column", "value", "said"),
    [
        ("id", "a\nb", "U+000A"),
        ("id", "a\x00b", "U+0000"),
        ("patient_id", "P\r1", "U+000D"),
        ("patient_id", "P\u202e1", "bidirectional"),
        ("label", "x\ty", "U+0009"),
    ],
)
def test_control_characters_in_ids_and_labels_are_refused_naming_row_and_column(manifest, column, value, said):
    rows = [{"id": "ok", "label": "x"}, {"id": "z", "label": "y"}]
    rows[1][column] = value
    message = _problems(manifest(rows))
    assert f"row 3: column {column!r}" in message and said in message


def test_a_query_file_refuses_an_id_with_a_line_break(tmp_path):
    row = {"id": "a\nb", "given_label": 0, "predicted_label": 1, "predicted_probability": 0.5, "score": 0.1}
    with pytest.raises(ValueError, match="control character"):
        write_query_file(tmp_path / "q.csv", [row], ["x", "y"])
    assert not (tmp_path / "q.csv").exists()


def test_a_nul_in_a_comment_is_refused_and_carriage_returns_become_line_feeds(tmp_path):
    path = tmp_path / "answers.csv"
    path.write_bytes(b'id,expert_label,comment\na,x,"bad\x00comment"\nb,y,"two\r\nlines\rthree"\n')
    with pytest.raises(AnswerError) as error:
        read_answers(path, ["x", "y"], ["a", "b"], ["a", "b"])
    assert error.value.problems == [f"{path} row 2, column 'comment': 'bad\\x00comment' contains a control character "
                                    "(U+0000 NUL)"]  # fmt: skip
    path.write_bytes(b'id,expert_label,comment\na,x,ok\nb,y,"two\r\nlines\rthree"\n')
    answers = read_answers(path, ["x", "y"], ["a", "b"], ["a", "b"])
    assert answers[1].comment == "two\nlines\nthree"


# ------------------------------------------------------------------------------------------------ item 8
@pytest.mark.parametrize(
    "names",
    [[NFC, NFD], ["a", "a\u200b"], ["Café", NFD.upper()], ["\u00df\u0301", "SS\u0301"]],
)
def test_class_names_that_look_the_same_are_refused_as_duplicates(names):
    with pytest.raises(ValueError, match="clash"):
        check_class_names(names)


@pytest.mark.parametrize("name", ["abc\u202e", "x\u200by", "\u2066a", "a\ufeff"])
def test_invisible_and_bidi_characters_are_refused_in_class_names(name):
    with pytest.raises(ValueError, match="bidirectional|zero-width"):
        check_class_names(["other", name])


def test_class_names_are_nfc(manifest):
    assert check_class_names([NFD, "tea"]) == [NFC, "tea"]
    path = manifest([{"id": "a", "label": NFD}, {"id": "b", "label": NFC}, {"id": "c", "label": "tea"}])
    loaded = load_manifest(path, check_images=False)
    assert loaded.class_names == [NFC, "tea"] and [r["label"] for r in loaded.records] == [0, 0, 1]


def test_answers_typed_back_follow_the_same_rules(tmp_path):
    path = tmp_path / "answers.csv"
    path.write_text(f"id,expert_label\na,{NFD.upper()}\nb,tea\n", encoding="utf-8")
    answers = read_answers(path, [NFC, "tea"], ["a", "b"], ["a", "b"])
    assert [a.label for a in answers] == [0, 1]
    path.write_text("id,expert_label\na,te\u200ba\nb,\u202etea\n", encoding="utf-8")
    with pytest.raises(AnswerError) as error:
        read_answers(path, [NFC, "tea"], ["a", "b"], ["a", "b"])
    assert ["zero-width" in p for p in error.value.problems] == [True, False]
    assert "bidirectional" in error.value.problems[1] and "row 3" in error.value.problems[1]
