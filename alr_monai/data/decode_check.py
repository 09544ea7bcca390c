"""Decode every image of a manifest through the training chain before anything trains.

``load_manifest`` checks that each file exists and that its header opens; only decoding the pixels finds a
JPEG-LS file with no decoder installed, truncated pixel data, a multi-frame DICOM in a 2D pipeline or a 4D NIfTI.
:func:`check_images` runs every row through the same MONAI transform chain training uses (in a small thread
pool, with a progress bar on a terminal) and returns every failure with the file, the kind, the reason and the
fix. :func:`require_decodable` is what the manifest bundle overlay calls: it refuses a manifest with bad rows, or,
when told to, drops them and lists what it dropped in ``dropped_images.csv``. It remembers the files that decoded
(``image_check.json`` in the run folder, by size and modification time, for the same chain settings), so a resumed
run or a relabel round decodes only new or changed files again.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alr_monai.data.dicom import is_series_ref, quiet_pydicom, series_stamp_files
from alr_monai.data.image_errors import ImageFileError, find_image_error
from alr_monai.data.manifest import Manifest, ManifestError, image_input
from alr_monai.distributed import is_main_process
from alr_monai.utils import atomic_write_csv, atomic_write_json

__all__ = [
    "BadImage",
    "BadImagesError",
    "CHECK_CACHE_FILE",
    "DROPPED_FILE",
    "check_images",
    "default_workers",
    "require_decodable",
]

DROPPED_FILE = "dropped_images.csv"
CHECK_CACHE_FILE = "image_check.json"
DROPPED_COLUMNS = ("row", "id", "image", "split", "kind", "reason", "fix")

logger = logging.getLogger("alr_monai")


@dataclass(frozen=True)
class BadImage:
    """One manifest row whose image the training chain cannot use.

    Attributes:
        row: the row in the manifest file (header = row 1).
        id: the row's id.
        image: the image file (for a row of sequences, the file that failed).
        split: the row's split, or None.
        kind: one of :data:`alr_monai.data.image_errors.KINDS`.
        reason: what is wrong.
        fix: the package to install or the flag to set, or None.
    """

    row: int
    id: str
    image: str
    split: str | None
    kind: str
    reason: str
    fix: str | None

    def line(self, manifest_path: str | Path) -> str:
        """``<manifest> row <n> (id <id>): <file>: [<kind>] <reason>; fix: <fix>``."""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{manifest_path} row {self.row} (id {self.id}): {self.image}: [{self.kind}] {self.reason}{fix}"

    def as_row(self) -> dict[str, Any]:
        """The row of ``dropped_images.csv``."""
        return {
            "row": self.row,
            "id": self.id,
            "image": self.image,
            "split": self.split or "",
            "kind": self.kind,
            "reason": self.reason,
            "fix": self.fix or "",
        }


class BadImagesError(ManifestError):
    """A manifest whose rows include images the training chain cannot decode; one line per bad file.

    Attributes:
        bad: the bad rows, in file order.
    """

    def __init__(self, bad: Sequence[BadImage], path: str | Path, hint: str | None = None) -> None:
        self.bad = list(bad)
        super().__init__([b.line(path) for b in self.bad], path)
        if hint:
            self.args = (f"{self.args[0]}\n{hint}",)


def default_workers() -> int:
    """Threads that decode at once: two at most, so a check does not take a shared machine's every core."""
    return max(1, min(2, os.cpu_count() or 1))


def _bad_image(record: Mapping[str, Any], error: BaseException) -> BadImage:
    found = find_image_error(error)
    if found is None:
        inner = error.__cause__ or error
        found = ImageFileError(
            record["image"], "undecodable", f"{type(inner).__name__}: {' '.join(str(inner).split())}"
        )
    return BadImage(
        row=int(record["row"]),
        id=str(record["id"]),
        image=found.path,
        split=record.get("split"),
        kind=found.kind,
        reason=found.reason,
        fix=found.fix,
    )


def check_images(
    manifest: Manifest,
    transform: Callable[[dict[str, Any]], Any],
    workers: int | None = None,
    progress: bool | None = None,
) -> list[BadImage]:
    """Runs every row of ``manifest`` through ``transform`` and returns the rows that fail.

    Args:
        manifest: the validated manifest (every split).
        transform: the training chain without augmentation, e.g.
            :func:`alr_monai.data.transforms.build_image_transforms` with ``augment=False`` (the bundle's
            ``validate#preprocessing``). Each thread decodes with its own copy.
        workers: threads decoding at once; None = :func:`default_workers`.
        progress: show a tqdm bar on stderr; None = only when stderr is a terminal.

    Returns:
        The failing rows in file order, each with its file, kind, reason and fix.
    """
    records = list(manifest.records)
    workers = default_workers() if workers is None else max(1, int(workers))
    local = threading.local()

    def decode(record: dict[str, Any]) -> BadImage | None:
        chain = getattr(local, "transform", None)
        if chain is None:
            chain = local.transform = copy.deepcopy(transform)
        item = {"image": image_input(record), "label": int(record["label"]), "index": 0, "id": record["id"]}
        try:
            chain(item)
        except Exception as error:  # every failure is a finding about this file, reported with the others
            return _bad_image(record, error)
        return None

    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else bool(progress)
    bad: list[BadImage] = []
    with (
        warnings.catch_warnings(),
        quiet_pydicom(),  # one line per bad file (ours), not pydicom's logged traceback besides it
        tqdm(total=len(records), desc="decoding images", unit="image", file=sys.stderr, disable=not show) as bar,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alr-decode") as pool,
    ):
        # Said once per file, it would bury the report: a 2D slice without orientation tags is normal.
        warnings.filterwarnings("ignore", message=".*ImageOrientationPatient", category=UserWarning)
        # pydicom warns about a file it then fails on ("End of file reached ..."): our line names it once.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        futures = [pool.submit(decode, record) for record in records]
        for future in as_completed(futures):
            result = future.result()
            if result is not None:
                bad.append(result)
            bar.update(1)
    return sorted(bad, key=lambda b: b.row)


def require_decodable(
    manifest: Manifest,
    transform: Callable[[dict[str, Any]], Any],
    drop_bad_images: bool = False,
    output_dir: str | Path | None = None,
    workers: int | None = None,
    cache_key: Any = None,
) -> Manifest:
    """Decodes every image of ``manifest``; refuses bad rows, or drops them when told to.

    Args:
        manifest: the validated manifest.
        transform: the training chain without augmentation (see :func:`check_images`).
        drop_bad_images: drop the bad rows instead of refusing the manifest; they are logged and written to
            ``output_dir/dropped_images.csv``.
        output_dir: the run folder for ``dropped_images.csv``; None writes nothing.
        workers: threads decoding at once; None = :func:`default_workers`.
        cache_key: the settings the chain was built with (JSON-able, e.g. spatial dims, channels, channel axis);
            with ``output_dir``, files that decoded under the same key and have not changed since (size and
            modification time, kept in ``output_dir/image_check.json``) are not decoded again. None: no memory.

    Returns:
        ``manifest`` itself when every image decodes, else (with ``drop_bad_images``) a manifest without the bad
        rows and with the same class names.

    Raises:
        BadImagesError: some images cannot be used and ``drop_bad_images`` is false; one line per file, with the
            reason and the fix.
    """
    cache_path = Path(output_dir) / CHECK_CACHE_FILE if output_dir is not None and cache_key is not None else None
    known = _read_cache(cache_path, cache_key)
    stamps = {_files_key(r): _stamp(r) for r in manifest.records}
    todo = [
        r
        for r in manifest.records
        if stamps[_files_key(r)] is None or known.get(_files_key(r)) != stamps[_files_key(r)]
    ]
    bad = check_images(Manifest(manifest.path, manifest.class_names, todo), transform, workers=workers) if todo else []
    if cache_path is not None and is_main_process():
        bad_keys = {_files_key(r) for r in manifest.records if r["row"] in {b.row for b in bad}}
        good = {k: v for k, v in stamps.items() if v is not None and k not in bad_keys}
        if good != known:
            atomic_write_json(cache_path, {"key": _normalised(cache_key), "decoded": good})
    if output_dir is not None and is_main_process() and (bad or (Path(output_dir) / DROPPED_FILE).exists()):
        # Rewritten whenever it exists, so a run whose files were fixed does not keep a stale list.
        atomic_write_csv(Path(output_dir) / DROPPED_FILE, [b.as_row() for b in bad], DROPPED_COLUMNS)
    if not bad:
        return manifest
    drop = str(drop_bad_images).strip().lower() == "true" if isinstance(drop_bad_images, str) else drop_bad_images
    if not drop:
        raise BadImagesError(
            bad,
            manifest.path,
            hint=(
                f"Training refuses these rows: fix or remove them (`alr manifest check {manifest.path} --decode` "
                "lists them), or pass --drop_bad_images true to train without them."
            ),
        )
    where = f" (listed in {Path(output_dir) / DROPPED_FILE})" if output_dir is not None else ""
    logger.warning(
        "dropped %d of %d manifest rows whose image cannot be used%s:\n%s",
        len(bad),
        len(manifest.records),
        where,
        "\n".join(f"  - {b.line(manifest.path)}" for b in bad),
    )
    rows = {b.row for b in bad}
    return Manifest(
        path=manifest.path,
        class_names=list(manifest.class_names),
        records=[r for r in manifest.records if r["row"] not in rows],
    )


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _files_key(record: Mapping[str, Any]) -> str:
    return json.dumps(image_input(dict(record)))


def _stamp(record: Mapping[str, Any]) -> list[list[int]] | None:
    """(size, modification time in ns) of each of the record's files; None when one cannot be read."""
    files = image_input(dict(record))
    try:
        paths: list[Any] = []
        for f in [files] if isinstance(files, str) else files:
            # A DICOM series changes when one of its slice files does, not when its folder's timestamp does.
            paths.extend(series_stamp_files(f) if is_series_ref(f) else [f])
        stats = [os.stat(f) for f in paths]
    except OSError:
        return None
    return [[st.st_size, st.st_mtime_ns] for st in stats]


def _read_cache(path: Path | None, key: Any) -> dict[str, Any]:
    """The decoded files remembered under ``key``; empty when there is no cache, another key or a damaged file."""
    if path is None or not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a damaged cache only costs a full check
        return {}
    if (
        not isinstance(saved, dict)
        or saved.get("key") != _normalised(key)
        or not isinstance(saved.get("decoded"), dict)
    ):
        return {}
    return saved["decoded"]
