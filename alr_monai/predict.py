"""``alr predict``: a trained run's model on a manifest CSV or on every image file in a folder.

The predictions come from the bundle's own inference configs (``inference.json`` + ``inference_manifest.json``)
with the run's recorded preprocessing and network (``models/metadata.json``); unreadable files are skipped and
listed (``drop_bad_images``), so one bad file no longer blocks the rest. A folder is turned into a manifest first
(``predict_manifest.csv`` in the output folder: id = the file's path under the folder, image = its path).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from alr_monai.data.manifest import image_extension
from alr_monai.utils import atomic_write_csv

__all__ = ["FOLDER_MANIFEST", "PredictResult", "folder_manifest", "model_file", "predict"]

FOLDER_MANIFEST = "predict_manifest.csv"
logger = logging.getLogger("alr_monai")


def _is_dicom(path: Path) -> bool:
    """True for a file with the DICOM preamble ("DICM" at byte 128), whatever its name (IM0001 from a PACS)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def folder_manifest(folder: str | Path, out_csv: str | Path) -> tuple[Path, int, Counter]:
    """Writes a manifest (``id,image``) of every image file under ``folder``, recursively, in path order.

    Image files are those with an image extension (.dcm, .nii, .nii.gz, .png, .jpg, .jpeg) and files without one
    that carry the DICOM preamble (listed, so the prediction names them as skipped if they cannot be read).
    Hidden files and folders are left out.

    Returns:
        ``(manifest path, number of images, Counter of the other files' suffixes)``.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: no image file was found (the message counts what was there).
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{folder} is neither a manifest CSV nor a folder")
    rows: list[dict[str, str]] = []
    others: Counter = Counter()
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(directory) / name
            if image_extension(path) is not None or (not path.suffix and _is_dicom(path)):
                rows.append({"id": path.relative_to(root).as_posix(), "image": str(path)})
            else:
                others[path.suffix.lower() or "(no extension)"] += 1
    if not rows:
        found = ", ".join(f"{count} {suffix}" for suffix, count in others.most_common()) or "no files"
        raise ValueError(f"no image files (.dcm, .nii, .nii.gz, .png, .jpg, .jpeg, or DICOM) in {root}: found {found}")
    return atomic_write_csv(out_csv, rows, ["id", "image"]), len(rows), others


def model_file(run_dir: str | Path, model: str = "final") -> Path:
    """The model ``alr predict`` uses: ``final`` (phase 2's relabel/models/model.pt when rounds ran, else phase
    1's models/model.pt), ``phase1``, or a path.

    Raises:
        FileNotFoundError: the model file does not exist (the message says which command writes it).
    """
    run = Path(run_dir)
    if model == "final":
        relabelled = run / "relabel" / "models" / "model.pt"
        path = relabelled if relabelled.is_file() else run / "models" / "model.pt"
    elif model == "phase1":
        path = run / "models" / "model.pt"
    else:
        path = Path(model).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model {path} not found: `alr train --output_dir {run}` writes models/model.pt (phase 1), "
            "`alr relabel`/`alr query` relabel/models/model.pt"
        )
    return path


def _data_rows(path: Path) -> int:
    with open(path, newline="", encoding="utf-8") as handle:
        return max(sum(1 for _ in csv.reader(handle)) - 1, 0)


class PredictResult(dict):
    """What :func:`predict` wrote: ``predictions`` and ``skipped`` (CSV paths), ``model``, ``predicted`` and
    ``skipped_count``, ``ignored`` (a Counter of non-image files in a folder)."""


def predict(
    source: str | Path,
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    model: str = "final",
    device: str | None = None,
    split: str | None = None,
) -> PredictResult:
    """Predict the images of a manifest CSV or a folder with a run's model; unreadable files are skipped and listed.

    Args:
        source: a manifest CSV (``id`` and ``image`` columns; ``label`` and ``split`` optional) or a folder.
        run_dir: the run folder (``models/metadata.json`` says how the model reads images).
        out_dir: where to write predictions.csv and skipped_images.csv; default ``<run_dir>/predict/<source
            name>``.
        model: ``final``, ``phase1`` or a model file (see :func:`model_file`).
        device: torch device; default cuda:0 when available, else cpu.
        split: a manifest's split to predict (None: every row).

    Returns:
        A :class:`PredictResult`.

    Raises:
        FileNotFoundError: no such source, run metadata or model.
        ManifestError: a manifest problem (duplicate ids, missing columns), or every image was unreadable.
    """
    from alr_monai.export import read_model_metadata
    from alr_monai.inference import SKIPPED_FILE
    from alr_monai.workflow import bundle_file, run_workflow

    source = Path(source).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"{source} not found: pass a manifest CSV or a folder of images")
    run = Path(run_dir)
    metadata_path = run / "models" / "metadata.json"
    trained = read_model_metadata(metadata_path)
    checkpoint = model_file(run, model)
    out = Path(out_dir) if out_dir is not None else run / "predict" / source.name.split(".")[0]
    out.mkdir(parents=True, exist_ok=True)
    ignored: Counter = Counter()
    if source.is_dir():
        manifest, found, ignored = folder_manifest(source, out / FOLDER_MANIFEST)
        logger.info("%d image files found in %s (manifest %s)", found, source, manifest)
    else:
        manifest = source
    overrides: dict[str, Any] = {
        "output_dir": str(out),
        "manifest_path": str(manifest.resolve()),
        "model_metadata_path": str(metadata_path.resolve()),
        "ckpt_path": str(checkpoint.resolve()),
        "split": split,
        "drop_bad_images": True,
    }
    if trained.get("network"):
        # the network the model was trained with (its size keys too), as phase 1 recorded it
        overrides["network_factory"] = {**trained["network"], "_mode_": "callable"}
    if device is not None:
        overrides["device"] = str(device)
    run_workflow([bundle_file("inference.json"), bundle_file("inference_manifest.json")], overrides)
    predictions, skipped = out / "predictions.csv", out / SKIPPED_FILE
    predicted, skipped_count = _data_rows(predictions), _data_rows(skipped)
    return PredictResult(
        predictions=predictions,
        skipped=skipped,
        model=checkpoint,
        predicted=predicted,
        skipped_count=skipped_count,
        ignored=ignored,
    )
