"""The ``alr`` command line (fire), run in-process through ``alr_monai.cli.main``; no training here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from alr_monai import cli
from alr_monai.relabel import RoundState

CLASSES = ["normal", "abnormal", "unclear"]  # as conftest.PENDING_RUN_CLASSES


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
def test_status_before_and_after_a_round(tmp_path, pending_run, capsys):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    code, printed, _ = run_cli(["status", "--run_dir", str(fresh)], capsys)
    assert code == 0 and "phase 1 not run" in printed and "no relabel round started" in printed
    assert printed.strip().splitlines()[-1] == f"Next: alr train --output_dir {fresh}"
    (fresh / "metrics.json").write_text("{}")
    printed = run_cli(["status", "--run_dir", str(fresh)], capsys)[1]
    assert "phase 1 finished" in printed
    assert printed.strip().splitlines()[-1].startswith(f"Next: alr query --run_dir {fresh} (asks round 1 of 5")

    code, printed, _ = run_cli(["status", "--run_dir", str(pending_run)], capsys)
    assert code == 0
    assert "0 of 5 round(s) applied, 0 labels spent, pool 7" in printed
    query_file = pending_run / "relabel" / "queries" / "round_1.csv"
    assert f"waiting: round 1 of 5, query {query_file} (4 samples)" in printed
    assert "class numbers (page keys and expert_label): 1 = normal, 2 = abnormal, 3 = unclear" in printed
    assert printed.strip().splitlines()[-1] == f"Next: alr answer <saved file> --run_dir {pending_run}"
    assert str(pending_run / "relabel" / "answers" / "round_1.csv") in printed

    answers = write_csv(
        pending_run / "filled.csv",
        ["id", "expert_label", "comment"],
        [["s3", "abnormal", "looks abnormal"], ["s4", "2", ""], ["s5", "exclude", "blurred"], ["s6", "", ""]],
    )
    code, printed, err = run_cli(["answer", str(answers), "--run_dir", str(pending_run)], capsys)
    assert code == 0, err
    # "2" is class number 2 as on the page (abnormal), s4's given label: a confirmation, not a change
    assert "round 1: applied 3 answers (1 changed, 1 confirmed, 1 excluded, 1 skipped)" in printed
    assert f"alr query --run_dir {pending_run}" in printed

    code, printed, _ = run_cli(["status", "--run_dir", str(pending_run)], capsys)
    assert code == 0
    assert "1 of 5 round(s) applied, 3 labels spent, pool 4" in printed  # s3, s4 trusted, s5 excluded; s6 stays
    assert "nothing waiting" in printed and "waiting: round" not in printed
    # the next step: the recalibration on round 1's answers, then round 2's query
    assert printed.strip().splitlines()[-1] == (
        f"Next: alr query --run_dir {pending_run} (recalibrates the model on round 1's answers, then asks round 2 of 5)"
    )

    # The same answers again: nothing is applied twice.
    audit = (pending_run / "relabel" / "audit.csv").read_bytes()
    code, _, err = run_cli(["answer", str(answers), "--run_dir", str(pending_run)], capsys)
    assert code == 2 and "no query is pending" in err
    assert (pending_run / "relabel" / "audit.csv").read_bytes() == audit


def test_status_ends_with_the_next_command_at_every_step(pending_run, capsys):
    (pending_run / "run_config.json").write_text(
        json.dumps({"config_files": [], "overrides": {}, "relabel": {"relabel#num_rounds": 1}})
    )
    answers = write_csv(pending_run / "a.csv", ["id", "expert_label"], [["s3", "abnormal"]])
    assert run_cli(["answer", str(answers), "--run_dir", str(pending_run)], capsys)[0] == 0
    last = run_cli(["status", "--run_dir", str(pending_run)], capsys)[1].strip().splitlines()[-1]
    assert last == (
        f"Next: alr query --run_dir {pending_run} (recalibrates the model on round 1's answers, the last of 1)"
    )
    state_path = pending_run / "relabel" / "state.json"
    state = RoundState.load(state_path)
    state.record_metrics(1, {"val_balanced_accuracy": 0.5})  # what the recalibration records at the round's end
    state.save(state_path)
    last = run_cli(["status", "--run_dir", str(pending_run)], capsys)[1].strip().splitlines()[-1]
    assert last == (
        f"Next: alr report --run_dir {pending_run} (the results), or add rounds: "
        f"alr query --run_dir {pending_run} --relabel#num_rounds 2 (or more)"
    )


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


# ------------------------------------------------------------------------------------- help and refusals
COMMAND_LINES = [["demo"], ["train"], ["relabel"], ["query"], ["answer"], ["status"], ["report"], ["benchmark"]]
COMMAND_LINES += [["manifest"], ["manifest", "build"], ["manifest", "split"], ["manifest", "check"]]
COMMAND_LINES += [["recover"], ["issues"]]


@pytest.fixture
def no_workflow(monkeypatch):
    """Any attempt to run a bundle workflow (training) fails the test."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a workflow ran")

    monkeypatch.setattr(cli, "run_workflow", refuse)
    return calls


@pytest.mark.parametrize("command", COMMAND_LINES, ids=" ".join)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_of_every_command_exits_0_and_runs_nothing(command, flag, tmp_path, monkeypatch, capsys, no_workflow):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli([*command, flag], capsys)
    assert code == 0, err
    assert out.startswith("usage: alr " + " ".join(command)), out
    assert not no_workflow and list(tmp_path.iterdir()) == [], "help must not run or write anything"


def test_help_lists_every_key_a_command_accepts_with_default_and_meaning(capsys):
    from alr_monai.keys import keys_for

    for command, phases in [("train", ("train", "manifest")), ("relabel", ("relabel",)), ("query", ("relabel",))]:
        code, out, _ = run_cli([command, "--help"], capsys)
        assert code == 0
        for key in keys_for(phases):
            line = f"--{key.name} (default {key.default_text()})"
            assert line in out, f"{command} --help lacks {line!r}"
            assert key.meaning in out
    out = run_cli(["train", "--help"], capsys)[1]
    assert "--max_epochs (default 30)" in out and "phase-1 training epochs" in out
    assert (
        "{random, entropy, least_confidence, margin, bald, coreset, label_quality, suspect_entropy}"
        in run_cli(["query", "-h"], capsys)[1]
    )
    out = run_cli(["answer", "--help"], capsys)[1]
    assert "--dry_run" in out and "--allow_empty" in out and "FILE" in out
    # The working form of the old CLI, `alr train -- --help`, is help too.
    assert run_cli(["train", "--", "--help"], capsys)[0] == 0


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--max_epoch", "2"], "did you mean --max_epochs?"),
        (["relabel", "--relabel#acquisiton", "margin"], "did you mean --relabel#acquisition?"),
        (["train", "--relabel#acquisiton", "margin"], "did you mean --relabel#acquisition, which alr train does not"),
        (["train", "--relabel#round_budget", "5"], "phase-2 setting: pass it to alr relabel or alr query"),
        (["train", "--image_size", "[32,32]"], "add --manifest"),
        (["query", "--max_epochs", "3"], "phase-1 setting: pass it to alr train"),
        (["answer", "f.csv", "--dry-run", "--bogus"], "unknown option --bogus for alr answer"),
        (["answer", "f.csv", "--dryrun"], "did you mean --dry_run?"),
        (["status", "--run-dri", "x"], "did you mean --run_dir?"),
        (["trian"], "did you mean train?"),
        (["manifest", "chek", "m.csv"], "did you mean check?"),
        (["answer"], "needs FILE"),
        (["status", "a", "b"], "unexpected argument"),
        (
            ["train", "--network_factory#width", "64"],
            "the network_factory keys it takes are --network_factory#block_inplanes, --network_factory#layers",
        ),
        (["status", "--run_dir"], "--run_dir needs a value, e.g. --run_dir runs/alr"),
        (["issues", "--top"], "--top needs a value"),
    ],
)
def test_typos_are_refused_with_the_closest_name_before_anything_runs(
    argv, words, tmp_path, monkeypatch, capsys, no_workflow
):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli([*argv, "--output_dir", "run"] if argv[0] == "train" else argv, capsys)
    assert code == 2
    assert err.startswith("alr: error: ") and words in err, err
    assert len(err.strip().splitlines()) <= 2, err
    assert out == "" and not no_workflow
    assert list(tmp_path.iterdir()) == [], "nothing may be written before the arguments are checked"


def test_a_flag_without_its_value_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys, no_workflow):
    # `alr train --output_dir` used to reach the command with output_dir=True and fail with a TypeError
    monkeypatch.chdir(tmp_path)
    for argv in (["train", "--output_dir"], ["train", "--output_dir", "--max_epochs", "2"]):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and err.strip() == (
            "alr: error: --output_dir needs a value, e.g. --output_dir runs/alr (see alr train --help)"
        )
    assert list(tmp_path.iterdir()) == [] and not no_workflow


def test_the_network_size_keys_the_readme_shows_are_accepted():
    assert cli.check_argv(["train", "--network_factory#block_inplanes", "[32,64,128,256]"])[0] == "train"
    assert cli.check_argv(["train", "--network_factory#layers", "[2,2,2,2]"])[0] == "train"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["relabel", "--relabel#acquisition", "margn"], "did you mean margin?"),
        (["query", "--relabel#recipe", "all"], "choose one of: coteaching, trusted"),
        (["train", "--max_epochs", "two"], "expected an integer"),
        (["train", "--simulation#noise_kind", "uniform"], "choose one of: symmetric, pairflip"),
        (["train", "--manifest", "m.csv", "--spatial_dims", "4"], "choose one of: 2, 3"),
        (["relabel", "--mode", "interactiv"], "did you mean interactive?"),
        (["demo", "--acquisition", "margn"], "did you mean margin?"),
        (["answer", "f.csv", "--dry_run", "yes"], "is a switch"),
        (["demo", "--rounds", "two"], "--rounds 'two' is not accepted; expected an integer"),
        (["benchmark", "--imbalance_ratio", "high"], "expected a number"),
    ],
)
def test_bad_values_are_refused_with_the_choices_before_any_output(
    argv, words, tmp_path, monkeypatch, capsys, no_workflow
):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and words in err, err
    assert out == "" and not no_workflow and list(tmp_path.iterdir()) == []


def test_missing_manifest_file_is_one_line_exit_2_and_creates_no_run_folder(tmp_path, capsys, no_workflow):
    code, out, err = run_cli(
        ["train", "--manifest", str(tmp_path / "labels.csv"), "--output_dir", str(tmp_path / "r")], capsys
    )
    assert code == 2
    assert err.count("\n") == 1 and "labels.csv not found" in err and "alr manifest build" in err
    assert not (tmp_path / "r").exists()


def test_errors_inside_config_expressions_are_unwrapped(capsys, monkeypatch, tmp_path):
    """MONAI wraps a user's error in several RuntimeErrors; the CLI prints the user's error in one line."""
    from alr_monai.data.manifest import ManifestError

    def nested(*args, **kwargs):
        try:
            try:
                raise ManifestError([f"{tmp_path / 'm.csv'} row 3: label 'tumour' is not a class"])
            except ManifestError as inner:
                raise RuntimeError("Failed to evaluate ConfigExpression: $load_manifest(@manifest_path)") from inner
        except RuntimeError as middle:
            raise RuntimeError("Failed to instantiate component 'train#dataset' with keywords: data") from middle

    monkeypatch.setattr(cli, "run_workflow", nested)
    argv = ["train", "--output_dir", str(tmp_path / "run")]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and f"{tmp_path / 'm.csv'} row 3: label 'tumour' is not a class" in err
    assert "Failed" not in err and "Traceback" not in err and len(err.splitlines()) <= 2, err
    # --debug shows the whole chain as a traceback instead.
    with pytest.raises(RuntimeError, match="Failed to instantiate") as info:
        cli.main([*argv, "--debug"])
    assert isinstance(info.value.__cause__.__cause__, ManifestError)


# ---------------------------------------------------------------------------------- strict answers via alr
def test_unterminated_quote_is_an_error_naming_the_row(pending_run, capsys):
    path = pending_run / "quoted.csv"
    path.write_text('id,expert_label,comment\ns3,abnormal,"fine\ns4,normal,ok\ns5,normal,ok\ns6,normal,ok\n')
    state = (pending_run / "relabel" / "state.json").read_bytes()
    code, out, err = run_cli(["answer", str(path), "--run_dir", str(pending_run)], capsys)
    assert code == 2 and "applied" not in out
    assert f"{path} row 2 (line 2)" in err and "never closed" in err, err
    assert (pending_run / "relabel" / "state.json").read_bytes() == state


def test_empty_answers_file_is_refused_unless_allowed(pending_run, capsys):
    query = pending_run / "relabel" / "queries" / "round_1.csv"  # saved back unfilled
    state_path = pending_run / "relabel" / "state.json"
    before = state_path.read_bytes()
    code, out, err = run_cli(["answer", str(query), "--run_dir", str(pending_run)], capsys)
    assert code == 2 and "no answer at all" in err and "--allow_empty" in err, err
    assert state_path.read_bytes() == before

    code, out, err = run_cli(["answer", str(query), "--run_dir", str(pending_run), "--allow_empty"], capsys)
    assert code == 0, err
    assert "round 1: applied 0 answers (0 changed, 0 confirmed, 0 excluded, 4 skipped)" in out
    assert RoundState.load(state_path).pending_round is None


def test_dry_run_prints_the_changes_and_applies_nothing(pending_run, capsys):
    answers = write_csv(
        pending_run / "filled.csv",
        ["id", "expert_label", "comment"],
        [["s3", "abnormal", ""], ["s4", "abnormal", ""], ["s5", "exclude", ""], ["s6", "", ""]],
    )
    relabel_dir = pending_run / "relabel"
    before = {path.name: path.read_bytes() for path in relabel_dir.rglob("*") if path.is_file()}
    for flag in ("--dry_run", "--dry-run"):
        code, out, err = run_cli(["answer", str(answers), "--run_dir", str(pending_run), flag], capsys)
        assert code == 0, err
        assert "dry run, round 1: 3 answers (1 changed, 1 confirmed, 1 excluded, 1 skipped) would be applied" in out
        # classes as the page and the CSV number them
        assert "s3: 1 (normal) -> 2 (abnormal)" in out and "s5: 3 (unclear) -> excluded" in out
        assert "s4:" not in out  # s4's given label is already abnormal: no change
        after = {path.name: path.read_bytes() for path in relabel_dir.rglob("*") if path.is_file()}
        assert after == before
    # A bad file in a dry run is reported like a real one.
    bad = write_csv(pending_run / "bad.csv", ["id", "expert_label"], [["s3", "tumour"]])
    code, _, err = run_cli(["answer", str(bad), "--run_dir", str(pending_run), "--dry_run"], capsys)
    assert code == 2 and "tumour" in err


def test_answer_without_a_started_round_says_what_to_run(tmp_path, capsys):
    answers = write_csv(tmp_path / "a.csv", ["id", "expert_label"], [["s1", "normal"]])
    code, _, err = run_cli(["answer", str(answers), "--run_dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "alr query --run_dir" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- relabel settings saved with the run
@pytest.fixture
def phase1_dir(tmp_path) -> Path:
    """A run folder as `alr train` leaves it (run_config.json), with a fake workflow instead of training."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from alr_monai.workflow import phase1_files, save_run_config

    save_run_config(run_dir, config_files=phase1_files("smoke"), overrides={"output_dir": str(run_dir)})
    return run_dir


@pytest.fixture
def fake_rounds(monkeypatch):
    """Replace the workflow by one that records its overrides and writes round 1's query file (and state)."""
    from alr_monai.relabel import RoundState

    runs: list[dict] = []

    def fake(files, overrides):
        runs.append(dict(overrides))
        queries = Path(overrides["output_dir"]) / "relabel" / "queries"
        queries.mkdir(parents=True, exist_ok=True)
        (queries / "round_1.csv").write_text("id\na\n")
        state = RoundState.initial(["a"], [0], [False], ["normal", "abnormal"])
        state.begin_round(1, ["a"])
        state.save(queries.parent / "state.json")  # a query file without a state is a lost state: refused

    monkeypatch.setattr(cli, "run_workflow", fake)
    monkeypatch.setattr("alr_monai.report.write_report", lambda run_dir: Path(run_dir) / "report.md")
    return runs


def test_relabel_settings_are_saved_and_reused_on_resume(phase1_dir, fake_rounds, capsys):
    argv = ["relabel", "--run_dir", str(phase1_dir), "--relabel#round_budget", "20", "--relabel#acquisition", "margin"]
    assert run_cli(argv, capsys)[0] == 0
    saved = json.loads((phase1_dir / "run_config.json").read_text())
    assert saved["relabel"] == {"relabel#round_budget": 20, "relabel#acquisition": "margin"}
    assert saved["config_files"] and saved["overrides"]["output_dir"] == str(phase1_dir)  # phase 1 kept

    # The printed resume command carries no settings: a plain resume reuses the saved ones.
    assert fake_rounds[0]["relabel#resume_command"] == f"alr query --run_dir {phase1_dir}"
    code, _, err = run_cli(["query", "--run_dir", str(phase1_dir)], capsys)
    assert code == 0, err
    assert fake_rounds[1]["relabel#round_budget"] == 20 and fake_rounds[1]["relabel#acquisition"] == "margin"
    assert fake_rounds[1]["relabel#mode"] == "interactive"

    # The same value again is fine; more rounds are fine and saved.
    extend = ["--relabel#round_budget", "20", "--relabel#num_rounds", "8"]
    assert run_cli(["relabel", "--run_dir", str(phase1_dir), *extend], capsys)[0] == 0
    assert json.loads((phase1_dir / "run_config.json").read_text())["relabel"]["relabel#num_rounds"] == 8


def test_resume_that_changes_written_rounds_is_refused(phase1_dir, fake_rounds, capsys):
    assert run_cli(["query", "--run_dir", str(phase1_dir), "--relabel#round_budget", "20"], capsys)[0] == 0
    before = (phase1_dir / "run_config.json").read_bytes()
    for change in (["--relabel#round_budget", "100"], ["--relabel#acquisition", "random"], ["--batch_size", "8"]):
        code, out, err = run_cli(["query", "--run_dir", str(phase1_dir), *change], capsys)
        assert code == 2, change
        assert change[0][2:] in err and "rerun without" in err and "without its relabel/ folder" in err, err
    assert len(fake_rounds) == 1, "a refused resume must not run"
    assert (phase1_dir / "run_config.json").read_bytes() == before
    # The default value of a key that was never set is what the rounds were written with: giving it is fine.
    assert run_cli(["query", "--run_dir", str(phase1_dir), "--relabel#acquisition", "entropy"], capsys)[0] == 0


def test_settings_may_change_before_any_round_is_written(phase1_dir, monkeypatch, capsys):
    def failing(files, overrides):
        raise ValueError("network_def#dropout is 0: BALD needs dropout")

    monkeypatch.setattr(cli, "run_workflow", failing)
    code, _, err = run_cli(["relabel", "--run_dir", str(phase1_dir), "--relabel#acquisition", "bald"], capsys)
    assert code == 2 and "network_def#dropout" in err
    # the refused command leaves run_config.json as it found it (issue 24): the refused setting is not saved
    assert "relabel" not in json.loads((phase1_dir / "run_config.json").read_text())
    monkeypatch.setattr(cli, "run_workflow", lambda files, overrides: None)
    monkeypatch.setattr("alr_monai.report.write_report", lambda run_dir: Path(run_dir) / "report.md")
    assert run_cli(["relabel", "--run_dir", str(phase1_dir), "--relabel#acquisition", "margin"], capsys)[0] == 0
    assert json.loads((phase1_dir / "run_config.json").read_text())["relabel"] == {"relabel#acquisition": "margin"}


def test_a_bad_manifest_found_inside_the_bundle_is_one_error_line(tmp_path, capsys, imagefile_png):
    """The real MONAI path: load_manifest fails inside a config expression; the user sees the manifest's row."""
    imagefile_png(tmp_path / "a.png", np.zeros((8, 8)))
    manifest = write_csv(
        tmp_path / "m.csv",
        ["id", "image", "label", "split"],
        [["a", "a.png", "normal", "train"], ["b", "missing.png", "abnormal", "val"]],
    )
    argv = ["train", "--manifest", str(manifest), "--output_dir", str(tmp_path / "run"), "--device", "cpu"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2, err
    assert err.startswith("alr: error: ") and "row 3" in err and "missing.png" in err, err
    assert "Failed to" not in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_report_of_a_folder_without_phase_1_says_what_to_run(tmp_path, capsys):
    code, out, err = run_cli(["report", "--run_dir", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "holds no phase-1 results" in err and "alr train --output_dir" in err
