"""Several readers per round: consensus, adjudication, agreement (kappa on known tables) and the audit trail."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli
from test_cli import write_csv

from alr_monai.relabel import AuditTrail, RoundState
from alr_monai.relabel.expert import Answer
from alr_monai.relabel.readers import (
    ReaderSettings,
    ReaderVote,
    cohen_kappa,
    consensus,
    fleiss_kappa,
    write_reader_settings,
)
from alr_monai.utils import read_csv

# ------------------------------------------------------------------------------------------ rules


def test_cohen_kappa_on_a_known_table():
    # 50 samples: both yes 20, a yes / b no 5, a no / b yes 10, both no 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    first = ["y"] * 25 + ["n"] * 25
    second = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError, match="same samples"):
        cohen_kappa(["a"], [])


def test_fleiss_kappa_on_the_textbook_table():
    # Fleiss (1971) as tabulated on Wikipedia: 10 subjects, 14 raters, 5 categories -> kappa 0.210
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[1, 1], [2, 1]])


def _votes(*values):
    return [ReaderVote(f"r{k}", v) for k, v in enumerate(values)]


def test_consensus_majority_and_unanimous():
    assert consensus(_votes(1, 1), readers=2) == 1
    assert consensus(_votes(1, 2), readers=2) is None  # two readers: a majority is both
    assert consensus(_votes(1, None), readers=2) is None  # a skip is no vote
    assert consensus(_votes(1, 1, 2), readers=3) == 1
    assert consensus(_votes(1, 1, 2), readers=3, rule="unanimous") is None
    assert consensus(_votes("exclude", "exclude", 0), readers=3) == "exclude"
    assert consensus(_votes(None, None), readers=2) is None
    with pytest.raises(ValueError, match="consensus"):
        consensus(_votes(1), readers=1, rule="loudest")


# ------------------------------------------------------------------------------------------ file flow
def _reader_file(path, answers):
    return write_csv(path, ["id", "expert_label", "comment"], [[i, label, comment] for i, label, comment in answers])


def test_two_readers_agree_disagree_one_missing_then_the_adjudicator_decides(pending_run, tmp_path, capsys):
    relabel = pending_run / "relabel"
    write_reader_settings(relabel, ReaderSettings(2, "majority"))
    run = ["--run_dir", str(pending_run)]
    # queried s3, s4, s5, s6 with given labels normal, abnormal, unclear, normal
    lee = [("s3", "abnormal", ""), ("s4", "unclear", "faint"), ("s5", "exclude", ""), ("s6", "", "")]
    kim = [("s3", "abnormal", ""), ("s4", "normal", ""), ("s5", "", ""), ("s6", "", "")]
    lee, kim = _reader_file(tmp_path / "lee.csv", lee), _reader_file(tmp_path / "kim.csv", kim)

    code, _, err = run_cli(["answer", str(lee), *run], capsys)
    assert code == 2 and "--reader" in err and "2 readers" in err
    code, out, err = run_cli(["answer", str(lee), *run, "--reader", "lee"], capsys)
    assert code == 0 and "1 of 2 readers in" in out, err
    assert RoundState.load(relabel / "state.json").pending_round == 1  # nothing applied with one reader missing

    code, out, err = run_cli(["answer", str(kim), *run, "--reader", "kim"], capsys)
    assert code == 0, err
    assert "readers agree on 50% of 2 samples" in out  # s3 and s4 were answered by both: agree on s3 only
    assert "2 samples without majority consensus" in out  # s4 (normal vs unclear), s5 (one exclude, one skip)
    adjudication = relabel / "queries" / "round_1_adjudication.csv"
    header, rows = read_csv(adjudication)
    assert header == ["id", "reader_kim", "reader_lee", "expert_label", "comment"]
    assert [(r["id"], r["reader_kim"], r["reader_lee"]) for r in rows] == [
        ("s4", "normal", "unclear"),
        ("s5", "skip", "exclude"),
    ]

    decision = _reader_file(tmp_path / "adj.csv", [("s4", "unclear", "mass visible"), ("s5", "exclude", "")])
    code, out, err = run_cli(["answer", str(decision), *run, "--reader", "adjudicator"], capsys)
    assert code == 0 and "round 1: applied 3 answers" in out, err
    state = RoundState.load(relabel / "state.json")
    assert state.round == 1 and state.current_labels[3:7] == [1, 2, -1, 0]  # s6 skipped by both: stays given
    audit = {row["id"]: row for row in AuditTrail(relabel / "audit.csv").rows()}
    assert audit["s3"]["reader"] == "consensus" and audit["s3"]["action"] == "changed"
    assert audit["s4"]["reader"] == "adjudicator"
    assert "kim: normal" in audit["s4"]["comment"] and "lee: unclear (faint)" in audit["s4"]["comment"]
    assert "mass visible" in audit["s4"]["comment"]
    assert (relabel / "answers" / "round_1" / "lee.csv").is_file() and (relabel / "answers" / "round_1.csv").is_file()


def test_oracle_readers_have_their_own_errors():
    from alr_monai.relabel.expert import OracleExpert

    truth = {f"s{i}": i % 3 for i in range(300)}
    oracle = OracleExpert(truth, 3, error_rate=0.2, seed=1)
    first, second = (oracle.reader(k).answer(list(truth), 1) for k in (1, 2))
    wrong = [sum(a.label != truth[a.id] for a in answers) / 300 for answers in (first, second)]
    assert all(0.12 < w < 0.28 for w in wrong)
    assert [a.label for a in first] != [a.label for a in second]
    assert isinstance(first[0], Answer)


def test_a_simulated_round_with_two_oracle_readers_and_an_adjudicator(tmp_path):
    from test_relabel_driver import _data, _driver

    from alr_monai.relabel import OracleExpert, RoundOutcome

    driver = _driver(tmp_path, readers=2)
    _, _, truth = _data()
    # the oracle answers with the run's class names, as the bundle builds it (bare numbers count from 1)
    driver.oracle = OracleExpert(
        dict(zip(driver.ids, truth, strict=True)), 3, error_rate=0.5, seed=3, class_names=driver.class_names
    )
    driver.open()
    assert driver.advance_to(1) == RoundOutcome.APPLIED
    folder = driver.dir / "answers" / "round_1"
    assert (folder / "reader1.csv").is_file() and (folder / "reader2.csv").is_file()
    agreement = (folder / "agreement.json").read_text()
    assert '"kappa_kind": "cohen"' in agreement
    audit = AuditTrail(driver.audit_path).rows()
    assert len(audit) == 3 and {row["reader"] for row in audit} <= {"consensus", "adjudicator"}
    assert all("reader1:" in row["comment"] and "reader2:" in row["comment"] for row in audit)


def test_the_report_gives_per_reader_counts_and_kappa(tmp_path):
    from alr_monai.report import _reader_blocks

    folder = tmp_path / "relabel" / "answers" / "round_2"
    folder.mkdir(parents=True)
    summary = {"reader_counts": {"kim": 9, "lee": 10}, "agreement_samples": 9, "percent_agreement": 0.8}
    (folder / "agreement.json").write_text(json.dumps({**summary, "kappa": 0.61, "kappa_kind": "cohen"}))
    blocks = _reader_blocks(tmp_path / "relabel")
    assert blocks[1][2] == [[2, "kim 9, lee 10", 9, 0.8, "0.610 (cohen)"]]
