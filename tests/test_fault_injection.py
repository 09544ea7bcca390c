"""Fault injection: a crash at every write boundary of a tiny phase 1 and a tiny relabel round, then a resume.

Every file a run depends on is written through ``alr_monai.utils.atomic_write_bytes`` (temp file, fsync, rename),
and the audit trail through ``alr_monai.utils.append_bytes``. The suite first counts those calls in an
uninterrupted run; then, for each call N, it reruns from the same starting point with the N-th call replaced by a
crash (a ``BaseException`` no code catches, as a kill would be) and resumes with a fresh workflow in the same run
folder, which must end byte-identical to the uninterrupted run. Crash kinds:

- "torn": a kill inside the write, after its temporary file is (partly) written and before the rename; the
  temporary file is left behind, as a kill leaves it, and the target keeps its old content.
- "renamed": a kill right after the rename (the write landed, nothing after it ran). Run at every checkpoint save
  and at the last write; elsewhere the disk then looks exactly as at the next write's "torn" crash, minus a
  stray temporary file, so it adds no new disk state.

The appended audit trail is torn by writing half of the appended bytes. After the crash, any further write
attempt also fails (a killed process writes nothing more).

Sizes: phase 1 runs 2 epochs (10 writes: classes.json, noise.csv, then per epoch model.pt when best,
selection.csv, metrics.json and the checkpoint, then the test metrics), so 13 crash points; the relabel run is one
round with 2 recalibration epochs (19 writes: state, round table, query, answers, audit, labels, checkpoints,
model), so 22 crash points, and a crash in epoch 2 resumes from epoch 1's checkpoint. The CLI's own writes
(run_config.json, report.md) are atomic too but not part of these bundle runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

import alr_monai.utils
from alr_monai import runlock
from alr_monai.handlers import RunCheckpointer, TensorBoardImageHandler
from alr_monai.relabel import RoundError, RoundState, StateMissingError
from alr_monai.relabel.recover import recover_run
from alr_monai.utils import TEMP_SUFFIX, read_csv

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "alr_classification" / "configs"
TRAIN, RELABEL = CONFIGS / "train.json", CONFIGS / "relabel.json"
PER_CLASS = {"train": 8, "val": 3, "test": 3}  # 64 / 24 / 24 images
PHASE1 = {
    "network_factory#block_inplanes": [4, 4, 8, 8],
    "batch_size": 32,
    "max_epochs": 2,
    "coteaching#num_gradual": 1,
    "noise_estimate#estimate_epoch": 1,
    "vog#num_snapshots": 2,
}
RELABEL_ROUND = {"relabel#round_budget": 6, "relabel#num_rounds": 1, "relabel#recalibration_epochs": 2}


class SimulatedKill(BaseException):
    """A crash no ``except Exception`` catches, standing in for kill -9."""


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two intra-op threads on a 2-core machine shared with other jobs make tiny convolutions much slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", autouse=True)
def no_tensorboard_images():
    # Drawing the per-class bar charts is 2/3 of a tiny run's time; TensorBoard files are no run state.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TensorBoardImageHandler, "__call__", lambda self, engine: None)
        yield


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, write_tiny_bloodmnist) -> Path:
    """A class-balanced slice of the embedded BloodMNIST set in the MedMNIST layout."""
    folder = tmp_path_factory.mktemp("tiny_blood")
    return write_tiny_bloodmnist(folder, PER_CLASS)


def workflow(files: list[Path], output_dir: Path, data_dir: Path, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=[str(f) for f in files],
        workflow_type="train",
        logging_file=False,
        output_dir=str(output_dir),
        dataset_dir=str(data_dir),
        **{**PHASE1, **overrides},
    )


def run(files: list[Path], output_dir: Path, data_dir: Path, before_run: Callable | None = None, **overrides):
    wf = workflow(files, output_dir, data_dir, **overrides)
    wf.initialize()
    if before_run is not None:
        before_run(wf)
    wf.run()
    wf.finalize()
    return wf


def run_phase1(output_dir: Path, data_dir: Path, **overrides):
    return run([TRAIN], output_dir, data_dir, **overrides)


def run_relabel(output_dir: Path, data_dir: Path, **overrides):
    return run([TRAIN, RELABEL], output_dir, data_dir, **{**RELABEL_ROUND, **overrides})


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def phase1_reference(tiny_data, tmp_path_factory) -> dict:
    """An uninterrupted phase 1, with the writes it made (kind, path relative to the run folder)."""
    output_dir = tmp_path_factory.mktemp("p1ref") / "run"
    with WriteRecorder(output_dir) as recorder:
        run_phase1(output_dir, tiny_data)
    return {"dir": output_dir, "writes": recorder.writes}


@pytest.fixture(scope="module")
def relabel_reference(phase1_reference, tiny_data, tmp_path_factory) -> dict:
    """Phase 1 followed by one uninterrupted simulated round, with the writes the round made."""
    output_dir = copy_run(phase1_reference["dir"], tmp_path_factory.mktemp("p2ref") / "run")
    with WriteRecorder(output_dir) as recorder:
        run_relabel(output_dir, tiny_data)
    return {"dir": output_dir, "start": phase1_reference["dir"], "writes": recorder.writes}


# ------------------------------------------------------------------------------------------ write injection
def _patch_everywhere(name: str, replacement) -> list[tuple[object, str, object]]:
    """Replace ``alr_monai.utils.<name>`` and every alias a module imported by name; returns what to undo."""
    original = getattr(alr_monai.utils, name)
    undo = []
    for module_name, module in list(sys.modules.items()):
        if (module_name == "alr_monai" or module_name.startswith("alr_monai.")) and getattr(
            module, name, None
        ) is original:
            undo.append((module, name, original))
            setattr(module, name, replacement)
    return undo


class WriteRecorder:
    """Counts (and optionally crashes) the package's file writes while active.

    Args:
        root: run folder; recorded paths are relative to it.
        crash_at: 1-based index of the write to replace by a crash, or None to only record.
        kind: "torn" or "renamed" (see the module docstring).
    """

    def __init__(self, root: Path, crash_at: int | None = None, kind: str = "torn") -> None:
        self.root = Path(root)
        self.crash_at = crash_at
        self.kind = kind
        self.writes: list[tuple[str, str]] = []
        self.crashed = False
        self.writes_after_crash = 0
        self._undo: list = []

    def _relative(self, path) -> str:
        return os.path.relpath(Path(path), self.root)

    def _step(self, kind: str, path) -> bool:
        """Record a write; True if this one is the crash."""
        if self.crashed:
            self.writes_after_crash += 1
            raise SimulatedKill("the process is dead")
        self.writes.append((kind, self._relative(path)))
        return len(self.writes) == self.crash_at

    def __enter__(self) -> WriteRecorder:
        real_write, real_append = alr_monai.utils.atomic_write_bytes, alr_monai.utils.append_bytes

        def atomic_write_bytes(path, data, private=False):
            if not self._step("write", path):
                return real_write(path, data, private)
            self.crashed = True
            path = Path(path)
            if self.kind == "renamed":
                real_write(path, data, private)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                (path.parent / f".{path.name}.crashed0{TEMP_SUFFIX}").write_bytes(data[: len(data) // 2])
            raise SimulatedKill(f"killed {'after renaming' if self.kind == 'renamed' else 'while writing'} {path}")

        def append_bytes(path, data, private=False):
            if not self._step("append", path):
                return real_append(path, data, private)
            self.crashed = True
            real_append(path, data if self.kind == "renamed" else data[: len(data) // 2], private)
            raise SimulatedKill(f"killed while appending to {path}")

        self._undo = _patch_everywhere("atomic_write_bytes", atomic_write_bytes)
        self._undo += _patch_everywhere("append_bytes", append_bytes)
        return self

    def __exit__(self, *exc) -> None:
        for module, name, original in self._undo:
            setattr(module, name, original)


# ------------------------------------------------------------------------------------------------ comparison
def _json_without_wall_clock(path: Path, run_dir: Path) -> dict:
    """The JSON with the run folder's path replaced (metrics.json names the model file it evaluated), and without
    the digest of audit.csv that state.json records (the trail holds the wall-clock time of each answer)."""
    data = json.loads(path.read_text().replace(str(run_dir), "<run_dir>"))
    return _without_audit_digest(data) if isinstance(data, dict) else data


def _without_audit_digest(fields: dict) -> dict:
    if isinstance(fields.get("audit"), dict):
        fields = {**fields, "audit": {k: v for k, v in fields["audit"].items() if k != "sha256"}}
    return fields


def _audit_without_time(path: Path) -> list[dict]:
    header, rows = read_csv(path)
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def _same_tensors(left, right) -> bool:
    if isinstance(left, torch.Tensor):
        return isinstance(right, torch.Tensor) and torch.equal(left.nan_to_num(-7.0), right.nan_to_num(-7.0))
    if isinstance(left, dict):  # in the same key order: the checkpoints' metrics history is compared here too
        return (
            isinstance(right, dict)
            and list(left) == list(right)
            and all(_same_tensors(left[k], right[k]) for k in left)
        )
    if isinstance(left, (list, tuple)):
        return len(left) == len(right) and all(_same_tensors(a, b) for a, b in zip(left, right, strict=True))
    return left == right


def differences(reference: Path, resumed: Path, files: list[str]) -> list[str]:
    """Names of the compared outputs that differ (empty when the resumed run equals the reference)."""
    problems = []
    for name in files:
        expected, got = reference / name, resumed / name
        if not got.exists():
            problems.append(f"{name} missing")
        elif name.endswith("audit.csv"):
            if _audit_without_time(expected) != _audit_without_time(got):
                problems.append(name)
        elif name.endswith(".json"):
            left, right = _json_without_wall_clock(expected, reference), _json_without_wall_clock(got, resumed)
            if json.dumps(left) != json.dumps(right):  # key order too (metrics.json once moved vog_mean on resume)
                differing = sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))
                problems.append(f"{name} (keys {differing})" if differing else f"{name} (same values, other key order)")
        elif name.endswith(".pt"):
            if not _same_tensors(torch.load(expected, weights_only=True), torch.load(got, weights_only=True)):
                problems.append(name)
        elif expected.read_bytes() != got.read_bytes():
            problems.append(name)
    stray = [str(p.relative_to(resumed)) for p in resumed.rglob(f"*{TEMP_SUFFIX}")]
    if stray:
        problems.append(f"stray temporary files {stray}")
    return problems


PHASE1_OUTPUTS = [
    "selection.csv",
    "metrics.json",
    "classes.json",
    "noise.csv",
    "models/model.pt",
    "checkpoints/checkpoint_epoch=2.pt",
]
RELABEL_OUTPUTS = [
    "relabel/labels_cleaned.csv",
    "relabel/audit.csv",
    "relabel/rounds.csv",
    "relabel/rounds.md",
    "relabel/state.json",
    "relabel/queries/round_1.csv",
    "relabel/answers/round_1.csv",
    "relabel/models/model.pt",
    "relabel/checkpoints/checkpoint_epoch=2.pt",
]


def crash_points(writes: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """(write index, kind): "torn" at every write, "renamed" at every checkpoint save and at the last write."""
    points = [(n, "torn") for n in range(1, len(writes) + 1)]
    points += [(n, "renamed") for n, (_, path) in enumerate(writes, 1) if "checkpoint_epoch=" in path]
    if (len(writes), "renamed") not in points:
        points.append((len(writes), "renamed"))
    return points


def crash_and_resume(start: Path | None, target: Path, crash_at: int, kind: str, run_fn) -> WriteRecorder:
    if start is not None:
        copy_run(start, target)
    with WriteRecorder(target, crash_at, kind) as recorder:
        with pytest.raises(SimulatedKill):
            run_fn(target)
    assert recorder.crashed and recorder.writes_after_crash == 0, "nothing may write after the crash"
    while runlock.is_held(target):  # a killed process holds no lock
        runlock.release(target)
    run_fn(target)  # the resume: a fresh workflow in the same run folder
    return recorder


# ---------------------------------------------------------------------------------------------------- suite
def test_uninterrupted_runs_write_only_through_the_atomic_writers(phase1_reference, relabel_reference):
    phase1 = [path for _, path in phase1_reference["writes"]]
    for name in PHASE1_OUTPUTS:
        assert name in phase1, f"{name} was not written through atomic_write_bytes"
    relabel = relabel_reference["writes"]
    for name in RELABEL_OUTPUTS:
        assert name in [path for _, path in relabel], f"{name} was not written through the writers"
    assert ("append", "relabel/audit.csv") in relabel
    assert sum("checkpoint_epoch=" in path for path in phase1) == PHASE1["max_epochs"]


def test_a_crash_at_every_phase1_write_resumes_to_the_uninterrupted_result(phase1_reference, tiny_data, tmp_path):
    writes = phase1_reference["writes"]
    failures = []
    started = time.perf_counter()
    for n, kind in crash_points(writes):
        target = tmp_path / f"crash{n}_{kind}" / "run"
        crash_and_resume(None, target, n, kind, lambda d: run_phase1(d, tiny_data))
        problems = differences(phase1_reference["dir"], target, PHASE1_OUTPUTS)
        if problems:
            failures.append(f"crash {kind} at write {n} ({writes[n - 1][1]}): {problems}")
        shutil.rmtree(target.parent)
    print(
        f"phase 1: {len(crash_points(writes))} crash points over {len(writes)} writes, {time.perf_counter() - started:.1f} s"
    )
    assert not failures, "\n".join(failures)


def test_a_crash_at_every_relabel_write_resumes_to_the_uninterrupted_result(relabel_reference, tiny_data, tmp_path):
    writes = relabel_reference["writes"]
    failures = []
    started = time.perf_counter()
    for n, kind in crash_points(writes):
        target = tmp_path / f"crash{n}_{kind}" / "run"
        crash_and_resume(relabel_reference["start"], target, n, kind, lambda d: run_relabel(d, tiny_data))
        problems = differences(relabel_reference["dir"], target, RELABEL_OUTPUTS)
        if problems:
            failures.append(f"crash {kind} at write {n} ({writes[n - 1][1]}): {problems}")
        shutil.rmtree(target.parent)
    print(
        f"relabel: {len(crash_points(writes))} crash points over {len(writes)} writes, {time.perf_counter() - started:.1f} s"
    )
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------ unreadable checkpoints
def _checkpointer(wf: ConfigWorkflow, key: str = "train#handlers") -> RunCheckpointer:
    return next(h for h in wf.parser.get_parsed_content(key) if isinstance(h, RunCheckpointer))


def test_a_0_byte_checkpoint_is_named_and_skipped_for_the_previous_one(phase1_reference, tiny_data, tmp_path, caplog):
    run_dir = copy_run(phase1_reference["dir"], tmp_path / "run")
    (run_dir / "checkpoints" / "checkpoint_epoch=2.pt").write_bytes(b"")  # what a kill during MONAI's save left
    with pytest.warns(UserWarning, match=r"checkpoint_epoch=2\.pt \(0 bytes"), caplog.at_level("WARNING"):
        wf = run_phase1(run_dir, tiny_data)
    checkpointer = _checkpointer(wf)
    assert checkpointer.resumed_from.name == "checkpoint_epoch=1.pt"
    assert len(checkpointer.skipped) == 1 and checkpointer.skipped[0].startswith("checkpoint_epoch=2.pt (0 bytes")
    assert "checkpoint_epoch=2.pt" in caplog.text and "resuming from checkpoint_epoch=1.pt" in caplog.text
    # Epoch 2 was trained again from epoch 1's state and ended exactly where the uninterrupted run ended.
    assert differences(phase1_reference["dir"], run_dir, PHASE1_OUTPUTS) == []
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "checkpoint_epoch=1.pt",
        "checkpoint_epoch=2.pt",
    ]


def test_only_unreadable_checkpoints_give_an_error_naming_them(phase1_reference, tiny_data, tmp_path):
    run_dir = copy_run(phase1_reference["dir"], tmp_path / "run")
    (run_dir / "checkpoints" / "checkpoint_epoch=2.pt").write_bytes(b"")
    (run_dir / "checkpoints" / "checkpoint_epoch=1.pt").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(RuntimeError) as info:
        run_phase1(run_dir, tiny_data)
    message = _error_chain(info.value)
    assert "checkpoint_epoch=2.pt (0 bytes" in message and "checkpoint_epoch=1.pt (" in message
    assert "cannot resume" in message and "delete those files" in message


def _error_chain(error: BaseException) -> str:
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


# ----------------------------------------------------------------------------------------------------- BALD
BALD = {"network_def#dropout": 0.3}


@pytest.fixture(scope="module")
def bald_reference(tiny_data, tmp_path_factory) -> dict:
    phase1 = tmp_path_factory.mktemp("bald1") / "run"
    run_phase1(phase1, tiny_data, **BALD)
    output_dir = copy_run(phase1, tmp_path_factory.mktemp("bald2") / "run")
    with WriteRecorder(output_dir) as recorder:
        run_relabel(output_dir, tiny_data, **BALD, **{"relabel#acquisition": "bald", "relabel#mc_samples": 3})
    return {"dir": output_dir, "start": phase1, "writes": recorder.writes}


def test_bald_round_killed_between_query_and_state_resumes(bald_reference, tiny_data, tmp_path):
    writes = bald_reference["writes"]
    query = writes.index(("write", "relabel/queries/round_1.csv")) + 1
    assert writes[query] == ("write", "relabel/state.json")
    settings = {**BALD, "relabel#acquisition": "bald", "relabel#mc_samples": 3}
    for n, kind in ((query, "renamed"), (query + 1, "torn")):
        target = tmp_path / f"crash{n}{kind}" / "run"
        # Before the fix the rerun drew other dropout masks, recomputed another query and stopped with
        # "round_1.csv already exists with different content".
        crash_and_resume(bald_reference["start"], target, n, kind, lambda d: run_relabel(d, tiny_data, **settings))
        assert differences(bald_reference["dir"], target, RELABEL_OUTPUTS) == []


# ------------------------------------------------------------------------------------------ lost state file
def comparable_state(state: RoundState) -> dict:
    """Every field but the metrics (which recovery restores only as rounds.csv prints them)."""
    fields = {k: v for k, v in vars(state).items() if k not in ("history", "baseline_metrics")}
    fields["history"] = [{k: v for k, v in entry.items() if k != "metrics"} for entry in state.history]
    return _without_audit_digest(fields)


def assert_metrics_close(recovered: dict, reference: dict) -> None:
    assert recovered, "metrics were not restored"
    for key, value in recovered.items():
        if isinstance(value, str):  # the round's model choice
            assert value == reference[key], key
        else:
            assert value == pytest.approx(reference[key], rel=1e-5, abs=1e-9), key


RECOVERED_OUTPUTS = [name for name in RELABEL_OUTPUTS if name not in ("relabel/rounds.md", "relabel/state.json")]


def test_a_missing_state_is_refused_and_alr_recover_rebuilds_it(relabel_reference, tiny_data, tmp_path):
    run_dir = copy_run(relabel_reference["dir"], tmp_path / "run")
    relabel = run_dir / "relabel"
    reference = RoundState.load(relabel_reference["dir"] / "relabel" / "state.json")
    before = {name: (relabel / name).read_bytes() for name in ("labels_cleaned.csv", "rounds.csv", "audit.csv")}
    (relabel / "state.json").unlink()

    with pytest.raises(RuntimeError) as info:
        run_relabel(run_dir, tiny_data)
    refusal = next(e for e in _chain(info.value) if isinstance(e, StateMissingError))
    assert f"alr recover --run_dir {run_dir.resolve()}" in str(refusal) and "audit.csv" in str(refusal)
    for name, data in before.items():
        assert (relabel / name).read_bytes() == data, f"{name} was reset"
    assert not (relabel / "state.json").exists()

    recovery = recover_run(run_dir)
    recovered = RoundState.load(relabel / "state.json")
    assert comparable_state(recovered) == comparable_state(reference)
    assert_metrics_close(recovered.baseline_metrics, reference.baseline_metrics)
    assert_metrics_close(recovered.history[0]["metrics"], reference.history[0]["metrics"])
    assert any("1 applied round" in note for note in recovery.notes)
    with pytest.raises(RoundError, match="nothing to recover"):
        recover_run(run_dir)

    run_relabel(run_dir, tiny_data)  # the finished run goes on from the rebuilt state: nothing changes
    assert differences(relabel_reference["dir"], run_dir, RECOVERED_OUTPUTS) == []


def _chain(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def test_recovery_after_a_crash_anywhere_in_a_round_ends_like_the_uninterrupted_run(
    relabel_reference, tiny_data, tmp_path
):
    writes = relabel_reference["writes"]
    reference = RoundState.load(relabel_reference["dir"] / "relabel" / "state.json")
    points = [
        (writes.index(("write", "relabel/queries/round_1.csv")) + 2, "torn"),  # query written, state not
        (writes.index(("append", "relabel/audit.csv")) + 1, "torn"),  # answers written, audit torn
        (writes.index(("write", "relabel/labels_cleaned.csv")) + 2, "torn"),  # labels written, state not
        (writes.index(("write", "relabel/checkpoints/checkpoint_epoch=1.pt")) + 1, "renamed"),
        (len(writes), "renamed"),
    ]
    failures = []
    for n, kind in points:
        target = copy_run(relabel_reference["start"], tmp_path / f"crash{n}{kind}" / "run")
        with WriteRecorder(target, n, kind), pytest.raises(SimulatedKill):
            run_relabel(target, tiny_data)
        while runlock.is_held(target):
            runlock.release(target)
        (target / "relabel" / "state.json").unlink()
        recover_run(target)
        run_relabel(target, tiny_data)
        problems = differences(relabel_reference["dir"], target, RECOVERED_OUTPUTS)
        state = RoundState.load(target / "relabel" / "state.json")
        if comparable_state(state) != comparable_state(reference):
            problems.append("state.json")
        if problems:
            failures.append(f"crash {kind} at write {n} ({writes[n - 1][1]}), state deleted: {problems}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------ resume in a new process
CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import test_fault_injection as t
from pathlib import Path
t.TensorBoardImageHandler.__call__ = lambda self, engine: None
t.run_relabel(Path(sys.argv[2]), Path(sys.argv[3]))
"""


def test_phase_2_killed_mid_round_resumes_in_a_new_process_like_the_uninterrupted_run(
    relabel_reference, tiny_data, tmp_path
):
    # The suite resumes in the crashed process; here the resume runs in a fresh interpreter, so no state carried
    # over in memory (module-level RNGs, cached objects) can make the resumed run look right.
    writes = relabel_reference["writes"]
    n = writes.index(("write", "relabel/checkpoints/checkpoint_epoch=1.pt")) + 1  # mid-round: epoch 2 reruns
    target = copy_run(relabel_reference["start"], tmp_path / "run")
    with WriteRecorder(target, n, "renamed"), pytest.raises(SimulatedKill):
        run_relabel(target, tiny_data)
    while runlock.is_held(target):
        runlock.release(target)
    assert not (target / "relabel" / "checkpoints" / "checkpoint_epoch=2.pt").exists()
    child = [sys.executable, "-c", CHILD, str(Path(__file__).parent), str(target), str(tiny_data)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    resumed = subprocess.run(child, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert differences(relabel_reference["dir"], target, RELABEL_OUTPUTS) == []
