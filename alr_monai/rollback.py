"""Leave a run folder as it was found when a command is refused during its setup.

``alr train`` and ``alr relabel``/``query`` check what they can before they create anything (arguments, keys, the
device), but many settings are only checked where the bundle uses them: an ``image_size`` of the wrong length, a
window of negative width, a missing data folder, BALD without dropout. By then the lock, ``run_config.json`` and
the first outputs (``classes.json``, ``noise.csv``, ``models/metadata.json``, ``relabel/state.json``) may exist.
:func:`snapshot` records the folder before the command, and :func:`restore` undoes the command's setup when it is
refused before it made progress: files it created are removed, small files it rewrote get their old bytes back,
folders it created are removed if empty. Progress is a new checkpoint (phase 1 or phase 2), a new or changed query
or answers file, or a changed audit trail: then the run has started, and nothing is undone (rerunning resumes it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from alr_monai.runlock import LOCK_NAME
from alr_monai.utils import atomic_write_bytes

__all__ = ["FolderSnapshot", "before_lock", "restore", "snapshot"]

# Files up to this size are kept in memory to be restored (run_config.json, classes.json, noise.csv, metadata).
SMALL_FILE_LIMIT = 16 * 1024 * 1024
# Folders whose files are kept to be restored: the run folder itself, models/ (model metadata), relabel/ (state).
_RESTORED_FOLDERS = ("", "models", "relabel")
# What shows that a command made progress that must not be undone: checkpoints, rounds' files, the audit trail.
_PROGRESS_GLOBS = ("checkpoints/*.pt", "relabel/checkpoints/*.pt", "relabel/queries/*", "relabel/answers/**/*")


@dataclass
class FolderSnapshot:
    """What a run folder held before a command: its entries, small files' bytes and modes, its checkpoints."""

    root: Path
    existed: bool
    entries: set[str] = field(default_factory=set)
    small: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    progress: dict[str, tuple[int, int]] = field(default_factory=dict)


def _entries(root: Path) -> set[str]:
    """Relative paths of every file, link and folder below ``root`` (links are not followed)."""
    found: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=False):
        base = Path(folder).relative_to(root)
        found.update(str(base / name) for name in dirs + files)
    return found


def _progress(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file whose appearance or change means the run made progress."""
    found = {}
    paths = [p for pattern in _PROGRESS_GLOBS for p in root.glob(pattern)] + [root / "relabel" / "audit.csv"]
    for path in paths:
        if path.is_file():
            info = path.lstat()
            found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return found


def before_lock(run_dir: str | Path) -> tuple[bool, bytes | None]:
    """Whether ``run_dir`` exists, and its lock file's bytes (None: no lock file), read before the lock is taken:
    taking it creates the folder and the file and rewrites the holder record, which :func:`snapshot` (taken under
    the lock, so no other command changes the folder meanwhile) must not mistake for the folder as found."""
    root = Path(run_dir)
    lock = root / LOCK_NAME
    try:
        record = lock.read_bytes() if lock.is_file() and not lock.is_symlink() else None
    except OSError:
        record = None
    return root.is_dir(), record


def snapshot(run_dir: str | Path, before: tuple[bool, bytes | None] | None = None) -> FolderSnapshot:
    """Record ``run_dir`` before a command changes it (cheap: names, and the bytes of small files).

    Args:
        run_dir: the run folder.
        before: :func:`before_lock`'s answer when the snapshot is taken under the lock.
    """
    root = Path(run_dir)
    if not root.is_dir():
        return FolderSnapshot(root, existed=False)
    snap = FolderSnapshot(root, existed=True, entries=_entries(root), progress=_progress(root))
    if before is not None:
        snap.existed, record = before
        if record is None:  # the lock file is this command's: removed on restore
            snap.entries.discard(LOCK_NAME)
        else:
            snap.small[LOCK_NAME] = (record, 0o644)
    for sub in _RESTORED_FOLDERS:
        folder = root / sub
        if not folder.is_dir() or folder.is_symlink():
            continue
        for path in folder.iterdir():
            info = path.lstat()
            if before is not None and sub == "" and path.name == LOCK_NAME:
                continue
            if path.is_file() and not path.is_symlink() and info.st_size <= SMALL_FILE_LIMIT:
                snap.small[str(path.relative_to(root))] = (path.read_bytes(), info.st_mode & 0o777)
    return snap


def _rewrite_in_place(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def restore(snap: FolderSnapshot) -> list[str]:
    """Undo what was done to the folder since :func:`snapshot`, unless the command made progress (see above).

    Call it while still holding the run lock, so no other alr command writes meanwhile.

    Returns:
        The relative paths removed or restored ([] when nothing was undone).
    """
    root = snap.root
    if not root.is_dir() or _progress(root) != snap.progress:
        return []
    changed: list[str] = []
    created = sorted(_entries(root) - snap.entries, key=lambda name: name.count(os.sep), reverse=True)
    for name in created:  # deepest first, so a created folder is empty when its turn comes
        path = root / name
        if path.is_dir() and not path.is_symlink():
            try:
                path.rmdir()
            except OSError:  # not empty: something not created by this command is inside
                continue
        else:
            path.unlink(missing_ok=True)
        changed.append(name)
    for name, (data, mode) in snap.small.items():
        path = root / name
        if path.is_symlink() or not path.is_file() or path.read_bytes() != data:
            if path.is_symlink():
                path.unlink()
            if name == LOCK_NAME and path.is_file():
                _rewrite_in_place(path, data)  # the same inode: this process still holds its flock
            else:
                atomic_write_bytes(path, data)
                os.chmod(path, mode)
            changed.append(name)
    if not snap.existed:
        try:
            root.rmdir()
        except OSError:
            pass
    return changed
