"""RunCheckpointer: atomic saves, how many are kept, fallback past unreadable files; the atomic writers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from alr_monai.handlers import ReseedTransformsHandler, RunCheckpointer
from alr_monai.handlers.resume import CheckpointError, checkpoint_files, read_latest_checkpoint
from alr_monai.utils import append_bytes, atomic_write_bytes, remove_stray_temp_files


class Counter:
    """A stateful object whose state is the number of iterations it has seen."""

    def __init__(self) -> None:
        self.seen = 0

    def state_dict(self) -> dict:
        return {"seen": torch.tensor(self.seen)}

    def load_state_dict(self, state: dict) -> None:
        self.seen = int(state["seen"])


def _run(ckpt_dir: Path, max_epochs: int, n_saved: int = 2, resume: bool = True, kill_at: int | None = None):
    counter = Counter()
    engine = Engine(lambda engine, batch: setattr(counter, "seen", counter.seen + 1))
    checkpointer = RunCheckpointer(ckpt_dir, {"counter": counter}, resume=resume, n_saved=n_saved)
    if kill_at is not None:

        def kill(engine):
            if engine.state.epoch == kill_at:
                raise KeyboardInterrupt("killed")

        engine.add_event_handler(Events.EPOCH_STARTED, kill)
    checkpointer.attach(engine)
    engine.run(range(3), max_epochs=max_epochs)
    return engine, counter, checkpointer


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_keeps_the_newest_n_saved_across_restarts(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, max_epochs=5, kill_at=4)
    assert _names(tmp_path) == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]
    engine, counter, checkpointer = _run(tmp_path, max_epochs=5)
    assert checkpointer.resumed_from.name == "checkpoint_epoch=3.pt" and counter.seen == 15
    assert _names(tmp_path) == ["checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt"]
    assert int(torch.load(tmp_path / "checkpoint_epoch=5.pt", weights_only=True)["counter"]["seen"]) == 15


def test_unreadable_newest_checkpoints_are_skipped_and_named(tmp_path):
    _run(tmp_path, max_epochs=3, n_saved=3)
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"")
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.warns(
        UserWarning,
        match=r"checkpoint_epoch=3\.pt \(0 bytes.*checkpoint_epoch=2\.pt \(.*resuming from checkpoint_epoch=1\.pt",
    ):
        engine, counter, checkpointer = _run(tmp_path, max_epochs=3, n_saved=3)
    assert checkpointer.resumed_from.name == "checkpoint_epoch=1.pt" and counter.seen == 9
    assert [name.split(" ")[0] for name in checkpointer.skipped] == ["checkpoint_epoch=3.pt", "checkpoint_epoch=2.pt"]
    assert int(torch.load(tmp_path / "checkpoint_epoch=3.pt", weights_only=True)["counter"]["seen"]) == 9


def test_a_folder_of_unreadable_checkpoints_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be read.*checkpoint_epoch=1\.pt \(0 bytes"):
        read_latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="delete those files"):
        _run(tmp_path, max_epochs=2)
    # resume false starts over and replaces the damaged file.
    _run(tmp_path, max_epochs=2, resume=False)
    assert _names(tmp_path) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    assert read_latest_checkpoint(tmp_path)[2] == []


def test_a_restart_with_resume_false_drops_checkpoints_of_the_old_timeline(tmp_path):
    _run(tmp_path, max_epochs=4)
    _run(tmp_path, max_epochs=1, resume=False)
    # checkpoint_epoch=4.pt must not be resumed from later: it belongs to the abandoned run.
    assert [epoch for epoch, _ in checkpoint_files(tmp_path)] == [1]


def test_stray_temporary_files_of_an_interrupted_save_are_removed(tmp_path):
    stray = tmp_path / ".checkpoint_epoch=2.pt.k3j_x9a2.alr-tmp"
    stray.write_bytes(b"half")
    _run(tmp_path, max_epochs=1)
    assert _names(tmp_path) == ["checkpoint_epoch=1.pt"]


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")

    def killed_rename(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr("os.replace", killed_rename)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["state.json"]
    assert append_bytes(tmp_path / "audit.csv", b"a\n").read_bytes() == b"a\n"
    assert append_bytes(tmp_path / "audit.csv", b"b\n").read_bytes() == b"a\nb\n"
    (tmp_path / "relabel").mkdir()
    (tmp_path / "relabel" / ".x.csv.abcdefgh.alr-tmp").write_text("")
    assert [p.name for p in remove_stray_temp_files(tmp_path)] == [".x.csv.abcdefgh.alr-tmp"]


def test_clean_up_takes_only_our_temporary_names_in_our_folders(tmp_path):
    """A run folder may sit in a shared folder: another program's temp files, and ours outside the tool's
    folders, stay (the clean-up once deleted every ``.*.XXXXXXXX.tmp`` below the run folder)."""
    ours = [
        tmp_path / ".selection.csv.abcd1234.alr-tmp",
        tmp_path / "relabel" / "queries" / ".round_1.csv.x_y_z_12.alr-tmp",
    ]
    theirs = [
        tmp_path / ".notes.txt.abcdefgh.tmp",  # another program's mkstemp name
        tmp_path / "relabel" / ".state.json.abcdefgh.tmp",
        tmp_path / "other_project" / ".data.csv.abcdefgh.alr-tmp",  # not one of the tool's folders
        tmp_path / "relabel" / "queries" / "round_1.csv.alr-tmp",  # not our name pattern
    ]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / ".model.pt.abcdefgh.alr-tmp").symlink_to(victim)  # a link is never deleted
    assert sorted(remove_stray_temp_files(tmp_path)) == sorted(ours)
    assert all(path.exists() for path in theirs) and victim.read_text() == "keep"
    assert (tmp_path / "models" / ".model.pt.abcdefgh.alr-tmp").is_symlink()


def test_reseed_handler_makes_dropout_a_function_of_seed_and_epoch():
    engine = Engine(lambda engine, batch: None)
    handler = ReseedTransformsHandler(None, seed=5)
    engine.state.epoch = 3
    torch.manual_seed(100)
    handler(engine)
    first = torch.rand(3)
    torch.manual_seed(200)  # another RNG history, e.g. a process that resumed at epoch 3
    handler(engine)
    assert torch.equal(torch.rand(3), first)
