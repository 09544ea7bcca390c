"""label_issues.csv: every sample ranked by how far its loss lies past its given class's estimated noise cut."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from alr_monai.cli import main
from alr_monai.label_issues import LABEL_ISSUE_COLUMNS, label_issues, write_label_issues


def _phase1_folder(folder: Path, rates: dict[str, float] | None, losses: dict[str, list[float]]) -> Path:
    """A phase-1 run folder holding just what label_issues reads."""
    names = list(losses)
    rows, index = [], 0
    for cls, name in enumerate(names):
        for loss in losses[name]:
            rows.append({"id": f"s{index}", "index": index, "given_label": cls, "loss": loss, "trusted": 1})
            index += 1
    with open(folder / "selection.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "index", "given_label", "loss", "vog", "trusted"])
        writer.writeheader()
        writer.writerows(rows)
    (folder / "classes.json").write_text(json.dumps({"class_names": names}))
    train = {"forget_rate": 0.5}
    for name, rate in (rates or {}).items():
        train[f"noise_rate_estimate/{name}"] = rate
    (folder / "metrics.json").write_text(json.dumps({"last": {"train": train}}))
    return folder


def test_each_class_is_cut_at_its_rate_and_classes_share_one_scale(tmp_path: Path):
    # "rare" is estimated 80% wrong, "big" 20%: the rare class's worst losses outrank the big class's, although
    # the big class's losses are larger in absolute terms.
    losses = {"big": [float(v) for v in range(10, 20)], "rare": [0.1, 0.2, 0.3, 0.4, 0.5]}
    rows = label_issues(_phase1_folder(tmp_path, {"big": 0.2, "rare": 0.8}, losses))
    assert [r["rank"] for r in rows] == list(range(1, 16))
    suspects = [r for r in rows if r["suspect"]]
    assert sum(r["given_label"] == "rare" for r in suspects) == 4  # its top 80%, the lowest loss kept
    assert sum(r["given_label"] == "big" for r in suspects) == 2  # its top 20%
    assert rows[0]["given_label"] == "rare" and rows[0]["loss"] == 0.5
    assert rows[-1]["given_label"] == "big" and rows[-1]["loss"] == 10.0


def test_without_per_class_estimates_the_run_forget_rate_applies(tmp_path: Path):
    rows = label_issues(_phase1_folder(tmp_path, None, {"a": [1.0, 2.0, 3.0, 4.0, 5.0]}))
    assert [r["suspect"] for r in sorted(rows, key=lambda r: r["loss"])] == [0, 0, 0, 1, 1]


def test_missing_and_malformed_phase1_files_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="selection.csv is missing"):
        label_issues(tmp_path)
    folder = _phase1_folder(tmp_path, None, {"a": [1.0, 2.0]})
    text = (folder / "selection.csv").read_text().replace("s1,1,0,2.0", "s1,1,zero,2.0")
    (folder / "selection.csv").write_text(text)
    with pytest.raises(ValueError, match="selection.csv row 3"):
        label_issues(folder)


def test_cli_writes_the_file_and_prints_the_top(tmp_path: Path, capsys):
    folder = _phase1_folder(tmp_path, {"a": 0.5}, {"a": [1.0, 2.0, 3.0, 4.0]})
    main(["issues", "--run_dir", str(folder), "--top", "2"])
    out = capsys.readouterr().out
    assert "4 samples ranked, 2 open suspects" in out
    assert len([line for line in out.splitlines() if "suspicion" in line]) == 2
    assert "no suggested labels or label quality" in out and "run_config.json" in out  # no model in this folder
    with open(folder / "label_issues.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == LABEL_ISSUE_COLUMNS and len(list(reader)) == 4
    path, _ = write_label_issues(folder, tmp_path / "elsewhere.csv")
    assert path.is_file()


def test_answered_and_excluded_samples_are_marked_and_ranked_last(tmp_path: Path):
    # Before issue 25 an excluded sample stayed at the top and answered ones filled the list.
    losses = {"a": [1.0, 2.0, 3.0, 4.0, 5.0], "b": [1.0, 2.0, 3.0, 4.0, 5.0]}
    folder = _phase1_folder(tmp_path, {"a": 0.6, "b": 0.6}, losses)
    # s4 (a, the largest loss of a) answered as b; s9 (the largest of b) excluded
    rows = label_issues(folder, answers={"s4": 1, "s9": -1})
    assert [(r["id"], r["status"], r["expert_label"]) for r in rows[-2:]] == [
        ("s4", "answered", "b"),
        ("s9", "excluded", ""),
    ]
    assert all(r["status"] == "open" and r["expert_label"] == "" for r in rows[:-2])


def test_answers_are_read_from_the_relabel_state(tmp_path: Path):
    from alr_monai.relabel import Answer, RoundState

    folder = _phase1_folder(tmp_path, {"a": 0.5}, {"a": [1.0, 2.0, 3.0, 4.0]})
    (folder / "relabel").mkdir()
    state = RoundState.initial(["s0", "s1", "s2", "s3"], [0, 0, 0, 0], [True, True, False, False], ["a"])
    state.begin_round(1, ["s2", "s3"])
    state.apply_answers(1, [Answer("s3", None, True), Answer("s2", 0)], "expert")
    state.save(folder / "relabel" / "state.json")
    rows = label_issues(folder)
    assert [(r["id"], r["status"]) for r in rows] == [
        ("s1", "open"),
        ("s0", "open"),
        ("s2", "answered"),
        ("s3", "excluded"),
    ]


def test_model_suggestion_and_label_quality_come_from_the_probabilities(tmp_path: Path):
    folder = _phase1_folder(tmp_path, {"a": 0.5, "b": 0.5}, {"a": [1.0, 2.0], "b": [3.0, 4.0]})
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    by_id = {r["id"]: r for r in label_issues(folder, probs, answers={})}
    assert (by_id["s1"]["suggested_label"], by_id["s1"]["suggested_probability"], by_id["s1"]["label_quality"]) == (
        "b",
        0.7,
        0.3,  # cleanlab's self-confidence: the probability of the GIVEN label
    )
    assert (by_id["s3"]["suggested_label"], by_id["s3"]["label_quality"]) == ("a", 0.4)


def test_classes_take_turns_by_their_estimated_wrong_labels(tmp_path: Path):
    # "big" (20 samples, 50% wrong: 10 estimated errors) and "small" (10 samples, 50%: 5). By suspicion alone the
    # top would alternate arbitrarily or follow one class; interleaved, big gets two places for small's one, and
    # every suspect of both classes comes before any sample past no cut.
    losses = {"big": [float(v) for v in range(20)], "small": [float(v) for v in range(10)]}
    rows = label_issues(_phase1_folder(tmp_path, {"big": 0.5, "small": 0.5}, losses), answers={})
    top = [r["given_label"] for r in rows[:15]]
    assert top.count("big") == 10 and top.count("small") == 5
    for end in (3, 6, 9, 12, 15):
        assert top[:end].count("big") == 2 * end // 3, top
    assert all(r["suspect"] for r in rows[:15]) and not any(r["suspect"] for r in rows[15:])
    big = [r["loss"] for r in rows if r["given_label"] == "big"]
    assert big == sorted(big, reverse=True), "within a class the order is by loss"
