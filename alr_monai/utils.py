"""Small shared helpers: atomic file writes and CSV helpers.

Every state or result file, checkpoints included, is written by :func:`atomic_write_bytes`: to a temporary file
in the same folder, fsynced, then renamed over the target, so a crash leaves either the old file or the new one,
never half of one (plus, after a kill, a stray ``.<name>.<random>.tmp`` that :func:`remove_stray_temp_files`
cleans). The one file that grows instead (the relabel audit trail) is appended by :func:`append_bytes`. These two
functions are the only ways the package writes a file a run depends on, which is what the fault-injection tests
rely on: they make the N-th write fail and check that rerunning ends where an uninterrupted run ends.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
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


def append_bytes(path: str | Path, data: bytes) -> Path:
    """Append ``data`` to ``path`` (created if missing) and fsync it; the folder too when the file is new.

    Not atomic: a crash may leave a torn last line, which the reader must tolerate (see ``AuditTrail``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    with open(path, "ab") as handle:
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


# tempfile.mkstemp(prefix=".<name>.", suffix=".tmp") names: the prefix, 8 random characters, the suffix.
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stray_temp_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files :func:`atomic_write_bytes` leaves when a process is killed mid-write.

    Only call this while no other process writes into ``folder`` (e.g. holding the run lock).

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, _dirs, names in walk:
        for name in names:
            if _TEMP_NAME.match(name):
                path = Path(root) / name
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed.append(path)
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (utf-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically; non-finite floats become null so the file stays valid JSON."""
    return atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]) -> Path:
    """Write ``rows`` as a CSV with a header of ``fieldnames`` atomically; text cells are spreadsheet-safe
    (:mod:`alr_monai.csvcells`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_cell(value) for key, value in row.items()})
    return atomic_write_text(path, buffer.getvalue())


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save`` to ``path`` atomically."""
    import torch  # here, so the lock and the writers load fast in processes that never touch torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    # a view, not getvalue()'s copy: at 200k samples the VoG buffer alone is 1 GB of checkpoint
    return atomic_write_bytes(path, buffer.getbuffer())


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
