"""Hardening (issue 24, part A): nothing outside the run folder changes, nothing is lost or changed silently.

Symbolic links where the tool writes are refused, files with sample or patient ids are private, phase 1 is frozen
once relabel rounds exist, every writer holds the run lock, a refused command leaves the folder as it found it,
malformed state is named by file and key, and a lost pending query file is rebuilt.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hold_run_lock, release_run_lock, run_cli

from alr_monai import runlock
from alr_monai.relabel.state import AuditTrail, RoundState, apply_answers_file, open_state, start_round
from alr_monai.utils import UnsafePathError, append_bytes, atomic_write_bytes, atomic_write_csv, atomic_write_json

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
CLASSES = ["normal", "abnormal"]
IDS = [f"s{i}" for i in range(6)]


def _alr(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alr_monai.cli", *args], capture_output=True, text=True, env=env or ENV, timeout=300
    )


def _pending_round(run_dir: Path) -> Path:
    """A run folder whose relabel round 1 is pending, and a filled answers file beside it."""
    relabel = run_dir / "relabel"
    open_state(relabel / "state.json", IDS, [0] * len(IDS), [False] * len(IDS), CLASSES)
    rows = [{"id": i, "given_label": 0, "predicted_label": 1, "predicted_probability": 0.9, "score": 1.0} for i in IDS]
    start_round(relabel / "state.json", relabel / "queries" / "round_1.csv", 1, rows)
    answers = run_dir.parent / "answers.csv"
    with open(answers, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "expert_label"])
        writer.writerows([[i, "abnormal"] for i in IDS])
    return answers


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry below ``folder``: file bytes, or where a link points."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = "dir"
    return found


# ------------------------------------------------------------------------------------------------ symlinks
def test_atomic_write_refuses_a_symlink_and_leaves_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "run" / "selection.csv"
    link.parent.mkdir()
    link.symlink_to(victim)
    for write in (
        lambda: atomic_write_bytes(link, b"x"),
        lambda: atomic_write_json(link, {"a": 1}),
        lambda: atomic_write_csv(link, [{"id": "a"}], ["id"]),
    ):
        with pytest.raises(UnsafePathError, match=str(link)):
            write()
    assert victim.read_text() == "precious" and link.is_symlink()
    assert sorted(p.name for p in link.parent.iterdir()) == ["selection.csv"], "no temporary file left"


def test_append_refuses_a_symlink_even_a_dangling_one(tmp_path):
    victim = tmp_path / "victim.csv"
    victim.write_text("a\n")
    link = tmp_path / "audit.csv"
    link.symlink_to(victim)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        append_bytes(link, b"b\n")
    assert victim.read_text() == "a\n"
    dangling = tmp_path / "new.csv"
    dangling.symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(UnsafePathError):
        append_bytes(dangling, b"b\n")
    assert not (tmp_path / "elsewhere.csv").exists()


def test_the_lock_file_as_a_symlink_is_refused_not_truncated(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runlock.LOCK_NAME).symlink_to(victim)
    with pytest.raises(UnsafePathError, match=runlock.LOCK_NAME):
        runlock.acquire(run_dir, "answer")
    assert victim.read_text() == "precious" and not runlock.is_held(run_dir)


def test_an_audit_trail_linked_elsewhere_gets_no_rows(tmp_path):
    run_dir = tmp_path / "run"
    answers = _pending_round(run_dir)
    victim = tmp_path / "victim.csv"
    header = "id,old_label,new_label,action,round,source,reader,comment,time\n"
    victim.write_text(header + "x,y")  # a torn tail, which the append would have truncated
    relabel = run_dir / "relabel"
    (relabel / "audit.csv").symlink_to(victim)
    with pytest.raises(ValueError, match="audit.csv is a symbolic link"):
        apply_answers_file(relabel / "state.json", relabel / "audit.csv", relabel / "labels_cleaned.csv", answers)
    assert victim.read_text() == header + "x,y"
    assert RoundState.load(relabel / "state.json").pending_round == 1
    with pytest.raises(UnsafePathError):
        AuditTrail(relabel / "audit.csv").append([])


def test_alr_answer_with_a_linked_lock_file_refuses_with_the_path(tmp_path):
    run_dir = tmp_path / "run"
    answers = _pending_round(run_dir)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run_dir / runlock.LOCK_NAME).unlink(missing_ok=True)
    (run_dir / runlock.LOCK_NAME).symlink_to(victim)
    refused = _alr("answer", str(answers), "--run_dir", str(run_dir))
    assert refused.returncode == 2, refused.stderr
    assert "symbolic link" in refused.stderr and str(run_dir / runlock.LOCK_NAME) in refused.stderr
    assert victim.read_text() == "precious"


# ------------------------------------------------------------------------------------------------ file modes
def test_files_with_ids_are_private_whatever_the_umask(tmp_path):
    run_dir = tmp_path / "run"
    old = os.umask(0o022)
    try:
        answers = _pending_round(run_dir)
        relabel = run_dir / "relabel"
        apply_answers_file(relabel / "state.json", relabel / "audit.csv", relabel / "labels_cleaned.csv", answers)
        public = atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ["state.json", "audit.csv", "labels_cleaned.csv", "queries/round_1.csv", "answers/round_1.csv"]:
        assert (relabel / name).stat().st_mode & 0o777 == 0o600, name
    assert public.stat().st_mode & 0o777 == 0o644  # no ids: the umask decides, as for any file


def test_the_private_mode_is_configurable_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("ALR_PRIVATE_FILE_MODE", "640")
    assert atomic_write_csv(tmp_path / "a.csv", [{"id": "x"}], ["id"]).stat().st_mode & 0o777 == 0o640
    assert append_bytes(tmp_path / "b.csv", b"x\n", private=True).stat().st_mode & 0o777 == 0o640
    monkeypatch.setenv("ALR_PRIVATE_FILE_MODE", "rw-r--r--")
    with pytest.raises(ValueError, match="ALR_PRIVATE_FILE_MODE"):
        atomic_write_csv(tmp_path / "c.csv", [{"id": "x"}], ["id"])
    assert not (tmp_path / "c.csv").exists()


# ------------------------------------------------------------------------------------------------ phase 1 frozen
@pytest.mark.parametrize("what", ["applied", "pending", "state only"])
def test_train_on_a_run_with_relabel_rounds_is_refused_and_writes_nothing(what, pending_run, capsys, monkeypatch):
    from alr_monai import cli

    monkeypatch.setattr(cli, "run_workflow", lambda *a, **k: pytest.fail("phase 1 ran again"))
    relabel = pending_run / "relabel"
    if what == "applied":
        answers = relabel.parent / "filled.csv"
        answers.write_text("id,expert_label\ns3,abnormal\ns4,normal\ns5,normal\ns6,normal\n")
        assert run_cli(["answer", str(answers), "--run_dir", str(pending_run)], capsys)[0] == 0
    elif what == "state only":  # a relabel command stopped before its first query was written
        for path in sorted(relabel.rglob("*.csv")):
            path.unlink()
    before = _snapshot(pending_run)
    code, out, err = run_cli(["train", "--output_dir", str(pending_run), "--max_epochs", "10"], capsys)
    assert code == 2, err
    assert f"phase 1 of run folder {pending_run} is frozen" in err and "alr train --output_dir <new folder>" in err
    assert _snapshot(pending_run) == before, "nothing was written"


def test_the_bundle_refuses_phase_1_on_a_run_with_rounds_before_taking_the_lock(pending_run):
    from monai.bundle import ConfigWorkflow

    from alr_monai.relabel.state import Phase1FrozenError

    before = _snapshot(pending_run)
    workflow = ConfigWorkflow(
        config_file=str(REPO / "bundles" / "alr_classification" / "configs" / "train.json"),
        workflow_type="train",
        logging_file=False,
        output_dir=str(pending_run),
    )
    with pytest.raises(RuntimeError) as info:
        workflow.initialize()
    assert isinstance(info.value.__cause__, Phase1FrozenError)
    assert _snapshot(pending_run) == before and not runlock.is_held(pending_run)


# ------------------------------------------------------------------------------------------------ malformed state
@pytest.mark.parametrize(
    "key, value, words",
    [
        ("round", "abc", "key 'round' must be a non-negative integer, got 'abc'"),
        ("pending_round", "1", "key 'pending_round' must be a positive integer or null, got '1'"),
        ("queried", {"1": "s3"}, "key 'queried' must map round numbers to lists of ids"),
        ("current_labels", [0, 1, "2"], "key 'current_labels' must be a list of integers"),
        ("trusted", 1, "key 'trusted' must be a list of true/false, got 1"),
    ],
)
def test_a_malformed_state_is_named_by_file_and_key_in_status_and_recover(key, value, words, pending_run, capsys):
    import json

    state_path = pending_run / "relabel" / "state.json"
    data = json.loads(state_path.read_text())
    data[key] = value
    state_path.write_text(json.dumps(data))
    code, _, err = run_cli(["status", "--run_dir", str(pending_run)], capsys)
    assert code == 2 and f"relabel state file {state_path} is corrupt: {words}" in err, err
    assert "alr recover" in err and "unexpected" not in err
    with pytest.raises(ValueError, match=f"{state_path} is corrupt: {words}"):  # what the driver of `alr query` loads
        open_state(state_path, ["s0"], [0], [False], CLASSES)
    # phase 1's files as conftest's pending_run describes them (given labels, s0-s2 trusted)
    given = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    lines = ["id,given_label,trusted"] + [f"s{i},{label},{int(i < 3)}" for i, label in enumerate(given)]
    (pending_run / "selection.csv").write_text("\n".join(lines) + "\n")
    (pending_run / "classes.json").write_text(json.dumps({"class_names": ["normal", "abnormal", "unclear"]}))
    code, out, err = run_cli(["recover", "--run_dir", str(pending_run)], capsys)  # rebuilds from the files
    assert code == 0, err
    assert RoundState.load(state_path).pending_round == 1
    assert (state_path.parent / "state.json.unreadable").is_file()


# ------------------------------------------------------------------------------------------------ refusals write nothing
def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from alr_monai import cli

    monkeypatch.setattr(cli, "run_workflow", lambda *a, **k: pytest.fail("the workflow ran"))
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["train", "--output_dir", str(run_dir), "--device", "cuda:99"], capsys)
    assert code == 2 and "--device cuda:99" in err and "AssertionError" not in err, err
    assert not run_dir.exists()
    code, _, err = run_cli(["train", "--output_dir", str(run_dir), "--device", "gpu7"], capsys)
    assert code == 2 and "is not a device" in err and not run_dir.exists(), err


def _manifest(folder: Path, imagefile_png, manifest_write_csv) -> Path:
    rows = []
    for i in range(6):
        imagefile_png(folder / f"img{i}.png", (i * 40 + 10) * __import__("numpy").ones((12, 10)))
        rows.append({"id": f"img{i}", "image": f"img{i}.png", "label": "ab" if i % 2 else "no"})
    return manifest_write_csv(folder / "manifest.csv", rows)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--image_size", "[16]"], "give --image_size 2 entries"),
        (["--intensity", '{"window": [40, -5]}'], "width > 0"),
        (["--dataset_dir", "MISSING"], "MedMNIST file not found"),
    ],
    ids=["image_size", "negative_window", "missing_dataset"],
)
@pytest.mark.parametrize("fresh", [True, False], ids=["new_folder", "existing_run"])
def test_a_setting_refused_inside_the_bundle_leaves_the_folder_as_it_was(
    extra, words, fresh, tmp_path, capsys, imagefile_png, manifest_write_csv
):
    argv = ["train", "--max_epochs", "1"]
    if "--dataset_dir" in extra:
        extra = ["--dataset_dir", str(tmp_path / "no_such_folder")]
    else:
        argv += ["--manifest", str(_manifest(tmp_path / "data", imagefile_png, manifest_write_csv))]
    run_dir = tmp_path / "run"
    if not fresh:  # a run folder another command left: its files keep their bytes, the lock its inode
        run_dir.mkdir()
        (run_dir / "run_config.json").write_text('{"config_files": [], "overrides": {}}\n')
        (run_dir / "classes.json").write_text('{"class_names": ["x", "y"]}\n')
        (run_dir / runlock.LOCK_NAME).write_text('{"pid": 1}\n')
    before = _snapshot(run_dir) if not fresh else None
    lock_inode = None if fresh else (run_dir / runlock.LOCK_NAME).stat().st_ino
    code, _, err = run_cli([*argv, "--output_dir", str(run_dir), *extra], capsys)
    assert code == 2 and words in err, err
    if fresh:
        assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())
    else:
        assert _snapshot(run_dir) == before
        assert (run_dir / runlock.LOCK_NAME).stat().st_ino == lock_inode
    runlock.release(run_dir)  # the bundle's own acquire, whose finalize never ran in this process


# ------------------------------------------------------------------------------------------------ writers under the lock
@pytest.mark.parametrize("command", ["answer --reader", "issues", "report"])
def test_every_writer_is_refused_while_another_command_holds_the_lock(command, pending_run, capsys):
    import json

    relabel = pending_run / "relabel"
    (relabel / "readers.json").write_text(json.dumps({"readers": 2, "consensus": "majority"}))
    answers = pending_run.parent / "lee.csv"
    answers.write_text("id,expert_label\ns3,abnormal\ns4,normal\ns5,normal\ns6,normal\n")
    argv = {
        "answer --reader": ["answer", str(answers), "--run_dir", str(pending_run), "--reader", "lee"],
        "issues": ["issues", "--run_dir", str(pending_run)],
        "report": ["report", "--run_dir", str(pending_run)],
    }[command]
    holder = hold_run_lock(pending_run, "train")
    try:
        before = _snapshot(pending_run)
        code, _, err = run_cli(argv, capsys)
    finally:
        release_run_lock(holder)
    assert code == 2 and f"is in use by process {holder.pid}" in err, err
    assert _snapshot(pending_run) == before
    if command == "answer --reader":  # with the lock free, the reader's file is kept
        code, out, err = run_cli(argv, capsys)
        assert code == 0 and "kept lee's answers" in out, err
        assert (relabel / "answers" / "round_1" / "lee.csv").is_file()


# ------------------------------------------------------------------------------------------------ manifest build
def test_manifest_build_refuses_links_out_of_the_root_and_writes_nothing(tmp_path, imagefile_png):
    from alr_monai.data.manifest import build_manifest_from_folder

    root = tmp_path / "root"
    image = __import__("numpy").zeros((8, 8))
    imagefile_png(root / "a" / "x.png", image)
    imagefile_png(root / "b" / "y.png", image)
    secret = imagefile_png(tmp_path / "elsewhere" / "patient.png", image)
    (root / "b" / "inside.png").symlink_to(root / "a" / "x.png")  # a link inside the root is fine
    out = build_manifest_from_folder(root, tmp_path / "ok.csv")
    assert "b/inside" in out.read_text()
    (root / "b" / "leak.png").symlink_to(secret)
    with pytest.raises(ValueError, match=r"1 symbolic link\(s\) under .* point outside it .*leak\.png"):
        build_manifest_from_folder(root, tmp_path / "m.csv")
    (root / "b" / "leak.png").unlink()
    (root / "c").symlink_to(secret.parent, target_is_directory=True)  # a class folder linked elsewhere
    with pytest.raises(ValueError, match="point outside it"):
        build_manifest_from_folder(root, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


# ------------------------------------------------------------------------------------------------ byte-identical resume
def _metrics_run(folder: Path, resume_from: dict | None = None) -> tuple[str, dict]:
    """Two epochs where a VoG-like metric appears from epoch 2 on and is set before the others (as VoG's commit
    is); ``resume_from`` is the writer's state after epoch 1 of another run (a resume from its checkpoint)."""
    from ignite.engine import Engine, Events

    from alr_monai.handlers import MetricsJSONWriter

    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _vog(engine):
        if engine.state.epoch >= 2:
            engine.state.metrics["vog_mean"] = 0.5

    @engine.on(Events.EPOCH_COMPLETED)
    def _loss(engine):
        engine.state.metrics["loss"] = 1.0 / engine.state.epoch

    writer = MetricsJSONWriter(folder)
    writer.attach(engine)
    if resume_from is None:
        engine.run([0, 1], max_epochs=2)
    else:
        writer.load_state_dict(resume_from)
        engine.load_state_dict({"epoch": 1, "epoch_length": 2, "max_epochs": 2})
        engine.run([0, 1])
    return (folder / "metrics.json").read_text(), writer.state_dict()


def test_a_resumed_run_writes_metrics_in_the_uninterrupted_key_order(tmp_path):
    from alr_monai.handlers import MetricsJSONWriter

    uninterrupted, state = _metrics_run(tmp_path / "a")
    first = MetricsJSONWriter(tmp_path / "b")  # the state the epoch-1 checkpoint held
    first.load_state_dict({"history": [h for h in state["history"] if h["epoch"] == 1]})
    resumed, resumed_state = _metrics_run(tmp_path / "b", first.state_dict())
    assert '"loss": 0.5,\n        "vog_mean": 0.5' in uninterrupted
    assert resumed == uninterrupted  # text, so key order counts
    assert [list(h["train"]) for h in resumed_state["history"]] == [list(h["train"]) for h in state["history"]]


def test_rounds_in_another_relabel_folder_freeze_phase_1_too(tmp_path):
    from alr_monai.relabel.state import Phase1FrozenError, refuse_phase1_rerun

    run_dir = tmp_path / "run"
    refuse_phase1_rerun(run_dir)  # no folder yet: nothing to refuse
    open_state(run_dir / "relabel_margin" / "state.json", IDS, [0] * len(IDS), [False] * len(IDS), CLASSES)
    with pytest.raises(Phase1FrozenError, match="relabel_margin: state.json"):
        refuse_phase1_rerun(run_dir)


def test_bundle_inference_takes_the_run_lock(tmp_path):
    """predictions.csv is written into output_dir: not while another command writes the run (issue 24, item 9)."""
    from monai.bundle import ConfigWorkflow

    from alr_monai.runlock import RunLockedError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = hold_run_lock(run_dir, "train")
    try:
        workflow = ConfigWorkflow(
            config_file=str(REPO / "bundles" / "alr_classification" / "configs" / "inference.json"),
            workflow_type="infer",
            logging_file=False,
            output_dir=str(run_dir),
        )
        with pytest.raises(RuntimeError) as info:
            workflow.initialize()
    finally:
        release_run_lock(holder)
    assert isinstance(info.value.__cause__, RunLockedError)
    assert sorted(p.name for p in run_dir.iterdir()) == [runlock.LOCK_NAME]


def test_a_run_subfolder_linked_elsewhere_is_refused_but_a_linked_run_folder_is_fine(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = tmp_path / "run"
    (run_dir / "relabel").mkdir(parents=True)
    (run_dir / runlock.LOCK_NAME).write_text("")
    (run_dir / "models").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePathError, match=r"models is a symbolic link"):
        atomic_write_bytes(run_dir / "models" / "model.pt", b"x")
    (run_dir / "relabel" / "queries").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePathError, match=r"queries is a symbolic link"):
        append_bytes(run_dir / "relabel" / "queries" / "round_1.csv", b"x")
    assert list(elsewhere.iterdir()) == []
    linked_run = tmp_path / "runs_link"
    linked_run.symlink_to(run_dir, target_is_directory=True)  # e.g. runs/ on a bigger disk
    assert atomic_write_bytes(linked_run / "relabel" / "state.json", b"{}").read_bytes() == b"{}"
