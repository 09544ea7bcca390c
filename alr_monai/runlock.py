"""One writer per run folder: an exclusive lock on ``<run_dir>/.alr.lock``.

Every command that writes into a run folder (``alr train``, ``relabel``, ``query``, ``answer``, ``recover``, and
``python -m monai.bundle run`` with train.json or relabel.json, whose ``initialize`` lists acquire it) holds the
lock while it runs. A second process is refused at once with the holder's pid and command, instead of both
appending to the audit trail. The lock is ``fcntl.flock`` on an open file, so the operating system releases it
when the holder exits or is killed: a lock is never left stale, and the file itself (which only records who held
it last) may stay.

Within one process the lock is re-entrant: phase 2's round handler applies an answers file while the command that
runs it already holds the lock. Acquire and release must pair up; the lock is freed when the count reaches zero.
A child made by ``fork`` does not inherit the parent's hold. Under ``torchrun`` only rank 0 takes the lock (the
other ranks belong to the same command, and only rank 0 writes).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from alr_monai.utils import refuse_symlink, remove_stray_temp_files

LOCK_NAME = ".alr.lock"

__all__ = ["LOCK_NAME", "RunLockedError", "acquire", "holder", "is_held", "release", "run_lock"]


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


@dataclass
class _Hold:
    fd: int
    count: int
    pid: int


_HOLDS: dict[str, _Hold] = {}
_GUARD = threading.Lock()


def _key(run_dir: str | Path) -> str:
    return os.path.realpath(run_dir)


def _rank() -> int:
    """The process's rank under torchrun (0 outside distributed runs)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _command_line() -> str:
    """How this process was started, as a person would type it (``alr answer ...``, ``python -m monai.bundle ...``)."""
    argv = list(sys.argv) or ["python"]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        module = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        head = ["python", "-m", module]
    elif argv[0] == "-c":
        head = ["python", "-c"]
    elif Path(argv[0]).name == "__main__.py":  # e.g. a multiprocessing child of ``python -m pkg``
        head = ["python", "-m", Path(argv[0]).parent.name]
    else:
        head = [Path(argv[0]).name]
    return shlex.join(head + argv[1:])


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 64 * 1024, 0)
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        holder = {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it has not written its pid yet)"
    text = f"process {holder['pid']}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    if holder.get("since"):
        text += f", running since {holder['since']}"
    return text


def _open_lock_file(path: Path, flags: int) -> int:
    """``os.open`` without following a symbolic link: a link at the lock's path would have its target truncated."""
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP or os.path.islink(path):
            refuse_symlink(path)
        raise


def acquire(run_dir: str | Path, purpose: str = "write", create: bool = True) -> Path:
    """Take the run folder's lock, or raise at once if another process holds it.

    On the first (not re-entrant) acquisition, temporary files a killed writer left in the run's folders are
    deleted (our own temporary names only, see :func:`~alr_monai.utils.remove_stray_temp_files`). A symbolic link
    at the lock's path is refused (:class:`~alr_monai.utils.UnsafePathError`), never followed.

    Args:
        run_dir: the run folder.
        purpose: what this process does there (train, relabel, answer, ...), recorded for the error message.
        create: create the folder if it does not exist (phase 1 starting); else a missing folder is an error.

    Returns:
        The lock file's path.

    Raises:
        RunLockedError: another process holds the lock; the message names its pid and command.
        FileNotFoundError: ``create`` is False and the folder does not exist.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    if _rank() != 0:
        return path
    key = _key(run_dir)
    with _GUARD:
        hold = _HOLDS.get(key)
        if hold is not None and hold.pid == os.getpid():
            hold.count += 1
            return path
        if create:
            run_dir.mkdir(parents=True, exist_ok=True)
        elif not run_dir.is_dir():
            raise FileNotFoundError(f"run folder {run_dir} does not exist")
        fd = _open_lock_file(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"run folder {run_dir} is in use by {_describe(holder)}; only one alr command may write to a run "
                "folder at a time. Wait for it to finish (the lock is released as soon as that process exits), "
                "then rerun this command."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        record = {
            "pid": os.getpid(),
            "command": _command_line(),
            "purpose": purpose,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        _HOLDS[key] = _Hold(fd=fd, count=1, pid=os.getpid())
    remove_stray_temp_files(run_dir)
    return path


def release(run_dir: str | Path) -> None:
    """Undo one :func:`acquire`; the lock is freed when every acquisition of this process is undone."""
    key = _key(run_dir)
    with _GUARD:
        hold = _HOLDS.get(key)
        if hold is None or hold.pid != os.getpid():
            return
        hold.count -= 1
        if hold.count > 0:
            return
        del _HOLDS[key]
        try:
            fcntl.flock(hold.fd, fcntl.LOCK_UN)
        finally:
            os.close(hold.fd)


def is_held(run_dir: str | Path) -> bool:
    """Whether this process holds the run folder's lock."""
    hold = _HOLDS.get(_key(run_dir))
    return hold is not None and hold.pid == os.getpid()


def holder(run_dir: str | Path) -> dict | None:
    """Who holds the run folder's lock (pid, command, purpose, since), or None if nobody does."""
    path = Path(run_dir) / LOCK_NAME
    if is_held(run_dir):
        return _read_holder(_HOLDS[_key(run_dir)].fd)
    if not path.exists():
        return None
    fd = _open_lock_file(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextmanager
def run_lock(run_dir: str | Path, purpose: str = "write", create: bool = True) -> Iterator[Path]:
    """Hold the run folder's lock for the ``with`` block (see :func:`acquire`)."""
    path = acquire(run_dir, purpose, create)
    try:
        yield path
    finally:
        release(run_dir)
