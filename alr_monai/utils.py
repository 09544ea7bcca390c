"""Small shared helpers: atomic file writes and CSV helpers.

Every state or result file, checkpoints included, is written by :func:`atomic_write_bytes`: to a temporary file
in the same folder, fsynced, then renamed over the target, so a crash leaves either the old file or the new one,
never half of one (plus, after a kill, a stray ``.<name>.<random>.alr-tmp`` that :func:`remove_stray_temp_files`
cleans). The one file that grows instead (the relabel audit trail) is appended by :func:`append_bytes`. These two
functions are the only ways the package writes a file a run depends on, which is what the fault-injection tests
rely on: they make the N-th write fail and check that rerunning ends where an uninterrupted run ends.

Neither writes through a symbolic link: a link where the tool writes (``ln -s VICTIM run/relabel/audit.csv``)
is refused with :class:`UnsafePathError` naming it, so no file outside the run folder is changed. Files that
hold sample or patient ids are written ``private`` (mode 0600, or ``$ALR_PRIVATE_FILE_MODE``), whatever the umask.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

_LOCK_NAME = ".alr.lock"  # runlock.LOCK_NAME (runlock imports this module)
PRIVATE_MODE_ENV = "ALR_PRIVATE_FILE_MODE"
DEFAULT_PRIVATE_MODE = 0o600
# Our temporary files end in this suffix, so start-up clean-up never takes another program's ``*.tmp``.
TEMP_SUFFIX = ".alr-tmp"


class UnsafePathError(ValueError):
    """A path the tool would write is a symbolic link (it never writes through one)."""


def refuse_symlink(path: str | Path) -> None:
    """Raise :class:`UnsafePathError` if ``path`` itself is a symbolic link (a dangling one included), or if a
    folder between it and its run folder (the nearest folder above holding ``.alr.lock``, at most 3 levels up) is
    one: ``run/relabel`` linked elsewhere would take the rounds' files there. The run folder itself may be a link.

    Raises:
        UnsafePathError: the message names the link and where it points.
    """
    path = Path(path)
    linked = [path] if os.path.islink(path) else []
    if not linked:
        folders = [path.parent, path.parent.parent, path.parent.parent.parent]
        for depth, folder in enumerate(folders):
            if os.path.lexists(folder / _LOCK_NAME):  # the run folder: the folders below it must be real ones
                linked = [f for f in folders[:depth] if os.path.islink(f)]
                break
    if linked:
        raise UnsafePathError(
            f"{linked[0]} is a symbolic link (to {os.readlink(linked[0])}); alr never writes through a link, which "
            "could change a file outside the run folder. Remove the link (or replace it by the file or folder "
            "itself) and rerun"
        )


def private_file_mode() -> int:
    """The mode of files holding sample or patient ids: ``$ALR_PRIVATE_FILE_MODE`` (octal, e.g. 640) or 0600.

    Raises:
        ValueError: the variable is not an octal mode of at most 0o777.
    """
    text = os.environ.get(PRIVATE_MODE_ENV, "").strip()
    if not text:
        return DEFAULT_PRIVATE_MODE
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{PRIVATE_MODE_ENV}={text!r} is not a file mode: give octal digits such as 600 or 640")
    return mode


def _file_mode(private: bool) -> int:
    if private:
        return private_file_mode()
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask  # the mode a plain open() would give


def atomic_write_bytes(path: str | Path, data: bytes | memoryview, private: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, then rename).

    Args:
        path: the target; a symbolic link there is refused, not followed or replaced.
        data: the bytes.
        private: the file holds sample or patient ids: give it :func:`private_file_mode` instead of the umask's.

    Raises:
        UnsafePathError: ``path`` is a symbolic link.
    """
    path = Path(path)
    mode = _file_mode(private)  # a bad $ALR_PRIVATE_FILE_MODE fails before anything is created
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_symlink(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, mode)  # mkstemp creates 0600 files
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)  # make the rename itself durable
    return path


def append_bytes(path: str | Path, data: bytes, private: bool = False) -> Path:
    """Append ``data`` to ``path`` (created if missing) and fsync it; the folder too when the file is new.

    Not atomic: a crash may leave a torn last line, which the reader must tolerate (see ``AuditTrail``).

    Args:
        path: the file; opened with ``O_NOFOLLOW``, so a symbolic link there is refused.
        data: the bytes.
        private: a new file gets :func:`private_file_mode` (an existing one keeps its mode).

    Raises:
        UnsafePathError: ``path`` is a symbolic link.
    """
    path = Path(path)
    mode = _file_mode(private)
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_symlink(path)  # a linked folder between it and the run folder (O_NOFOLLOW covers only the file)
    created = not os.path.lexists(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, mode)
    except OSError as error:
        if error.errno == errno.ELOOP or os.path.islink(path):
            refuse_symlink(path)
        raise
    with os.fdopen(fd, "ab") as handle:
        if created:
            os.fchmod(handle.fileno(), mode)  # os.open's mode is masked by the umask
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so a new or renamed entry in it survives a power cut (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# atomic_write_bytes's temporary names: ".<name>.", mkstemp's 8 random characters, TEMP_SUFFIX.
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")
# The folders of a run folder the tool writes files into (relabel/answers/round_<k>/ is added when present).
RUN_SUBFOLDERS = (
    "models",
    "checkpoints",
    "report",
    "relabel",
    "relabel/queries",
    "relabel/answers",
    "relabel/models",
    "relabel/checkpoints",
    "relabel/report",
)


def run_folders(run_dir: str | Path) -> list[Path]:
    """The run folder and those of its subfolders the tool writes into (links to folders excluded)."""
    run_dir = Path(run_dir)
    folders = [run_dir] + [run_dir / name for name in RUN_SUBFOLDERS]
    answers = run_dir / "relabel" / "answers"
    if answers.is_dir() and not answers.is_symlink():
        folders += sorted(p for p in answers.glob("round_*") if p.is_dir())
    return [folder for folder in folders if folder.is_dir() and (folder == run_dir or not folder.is_symlink())]


def remove_stray_temp_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files :func:`atomic_write_bytes` leaves when a process is killed mid-write.

    Only our own names (``.<name>.<8 random>.alr-tmp``, regular files, not links) are deleted, and only in the
    tool's own folders: ``folder`` and, with ``recursive``, the subfolders of a run folder the tool writes into
    (:data:`RUN_SUBFOLDERS`), never a whole tree (``--output_dir`` may be a shared folder).
    Only call this while no other process writes into ``folder`` (e.g. holding the run lock).

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for root in run_folders(folder) if recursive else [folder]:
        for name in sorted(os.listdir(root)):
            if not _TEMP_NAME.match(name):
                continue
            path = root / name
            try:
                if not path.is_file() or path.is_symlink():
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


def atomic_write_text(path: str | Path, text: str, private: bool = False) -> Path:
    """Write ``text`` (utf-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), private)


def atomic_write_json(path: str | Path, obj: Any, private: bool = False) -> Path:
    """Write ``obj`` as indented JSON atomically; non-finite floats become null so the file stays valid JSON."""
    return atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=False) + "\n", private)


def atomic_write_csv(
    path: str | Path, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str], private: bool = True
) -> Path:
    """Write ``rows`` as a CSV with a header of ``fieldnames`` atomically; text cells are spreadsheet-safe
    (:mod:`alr_monai.csvcells`).

    ``private`` by default: the CSVs of a run are per sample (ids, and patient ids where the manifest has them).
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_cell(value) for key, value in row.items()})
    return atomic_write_text(path, buffer.getvalue(), private)


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save`` to ``path`` atomically."""
    import torch  # here, so the lock and the writers load fast in processes that never touch torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    # a view, not getvalue()'s copy: at 200k samples the VoG buffer alone is 1 GB of checkpoint
    return atomic_write_bytes(path, buffer.getbuffer())


def read_json_or_empty(path: str | Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when the file does not exist yet (e.g. a run step not done)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def read_csv(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV (utf-8, BOM tolerated) and return its header and rows as string dicts, the spreadsheet-safe
    escaping of :mod:`alr_monai.csvcells` undone."""
    from alr_monai.csvcells import unescape_dict

    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        rows = [unescape_dict(row) for row in reader]
        return list(reader.fieldnames or []), rows


def _csv_cell(value: Any) -> Any:
    from alr_monai.csvcells import escape_cell

    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool):
        return int(value)
    if value is None or isinstance(value, int):
        return value
    return escape_cell(str(value))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, Mapping):
        return {str(key): _json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(value) for value in obj]
    torch = sys.modules.get("torch")  # without torch imported, nothing can be a tensor
    if torch is not None and isinstance(obj, torch.Tensor):
        return _json_safe(obj.tolist())
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalars
        return _json_safe(obj.item())
    if hasattr(obj, "tolist"):
        return _json_safe(obj.tolist())
    return obj


_AMP_WARNED: set[str] = set()


def amp_enabled(amp: bool, device: Any) -> bool:
    """Whether automatic mixed precision can run on ``device``: ``amp`` on a CUDA device, else False.

    MONAI's engines build a CUDA ``GradScaler`` and ``torch.autocast("cuda")``, which on a CPU device only warn
    (on every run) and do nothing; here a request on another device says so once per device type and is off.
    """
    import logging

    import torch

    if not amp:
        return False
    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available():
        return True
    if kind not in _AMP_WARNED:
        _AMP_WARNED.add(kind)
        logging.getLogger(__name__).warning(f"amp: automatic mixed precision needs a CUDA device; off on {kind}")
    return False
