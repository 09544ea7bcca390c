"""One class-name rule for manifests (phase 1) and expert files (phase 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alr_monai.data.classes import check_class_names, class_name_problems
from alr_monai.data.manifest import ManifestError, load_class_map, load_manifest
from alr_monai.relabel import OracleExpert, RoundState, write_query_file
from alr_monai.relabel import check_class_names as expert_check_class_names

GRAY = (np.arange(48, dtype=np.uint8).reshape(6, 8) * 5).astype(np.uint8)

BAD_NAME_SETS = {
    "reserved exclude": ["normal", "Exclude"],
    "reserved excluded": ["excluded", "normal"],
    "case clash": ["Benign", "benign"],
    "clash with whitespace": ["Benign", "benign "],
    "leading whitespace": [" normal", "abnormal"],
    "blank": ["normal", "  "],
    "line break": ["normal", "ab\nnormal"],
    "tab": ["nor\tmal", "abnormal"],
    "line separator": ["a\u2028b", "c"],
}


def test_the_expert_files_use_the_same_validator():
    assert expert_check_class_names is check_class_names


@pytest.mark.parametrize("names", list(BAD_NAME_SETS.values()), ids=list(BAD_NAME_SETS))
def test_bad_names_are_refused_everywhere(names, tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        check_class_names(names)
    with pytest.raises(ValueError):
        RoundState.initial(["a", "b"], [0, 1], [True, False], names)
    with pytest.raises(ValueError):
        OracleExpert({"a": 0}, len(names), class_names=names)
    with pytest.raises(ValueError):
        write_query_file(tmp_path / "q.csv", [], names)
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"class_names": names}))
    with pytest.raises(ValueError, match="classes.json"):
        load_class_map(path)


def test_good_names_pass_and_integers_become_text():
    assert check_class_names(["normal", "Abnormal", "type\u00a02"]) == ["normal", "Abnormal", "type\u00a02"]
    assert check_class_names([0, 1, 10]) == ["0", "1", "10"]
    assert class_name_problems(["a", "b"]) == []


def test_every_bad_name_is_listed_with_its_class_index():
    problems = class_name_problems(["exclude", "a", "A", " b", "", 1.5])
    assert [index for index, _ in problems] == [0, 2, 3, 4, 5]
    message = str(pytest.raises(ValueError, check_class_names, ["ok", "exclude", " b"], where="my.json").value)
    assert message.startswith("my.json:") and "class 1" in message and "class 2" in message


@pytest.mark.parametrize(
    ("labels", "bad_row", "reason"),
    [
        (["normal", "exclude", "normal"], 3, "reserved"),
        (["Normal", "abnormal", "normal"], 4, "clash"),
        (["normal", "Excluded", "abnormal"], 3, "reserved"),
    ],
)
def test_a_label_the_answers_would_reject_is_refused_at_manifest_load(
    tmp_path, imagefile_png, manifest_write_csv, labels, bad_row, reason
):
    image = imagefile_png(tmp_path / "img" / "p.png", GRAY)
    rows = [{"id": f"s{i}", "image": str(image), "label": label} for i, label in enumerate(labels)]
    path = manifest_write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.startswith(f"{path} row {bad_row}: label") and reason in problem, problem
    # the same name is what phase 2 would refuse
    with pytest.raises(ValueError, match=reason):
        check_class_names(sorted(set(labels)))


def test_class_names_given_for_a_manifest_follow_the_same_rules(tmp_path, imagefile_png, manifest_write_csv):
    image = imagefile_png(tmp_path / "img" / "p.png", GRAY)
    path = manifest_write_csv(tmp_path / "m.csv", [{"id": "a", "image": str(image), "label": "normal"}])
    for names in (["normal", "EXCLUDE"], ["normal", "Normal"], ["normal ", "b"]):
        with pytest.raises(ValueError, match=f"class_names given for manifest {path}"):
            load_manifest(path, class_names=names)
