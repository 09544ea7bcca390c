"""Inference and evaluation outputs of the bundle: predictions.csv, evaluation metrics, and manifest items.

``inference.json`` (MedMNIST) and ``inference.json`` + ``inference_manifest.json`` (a manifest CSV) run a MONAI
``SupervisedEvaluator`` with the best-validation model; :class:`PredictionsCSVWriter` writes one row per image
with a header (id, a probability per class, the predicted class index and name). ``evaluate.json`` adds
:class:`EvaluationWriter`, which scores the predictions against the labels of a labelled split.
:func:`read_inference_items` reads the images of a manifest for inference, where labels are optional.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from alr_monai.algorithms.metrics import classification_metrics
from alr_monai.data.dicom import is_series_ref
from alr_monai.data.manifest import ManifestError, image_kind, read_manifest_table
from alr_monai.data.text import text_key
from alr_monai.utils import atomic_write_csv, atomic_write_json

__all__ = [
    "EvaluationWriter",
    "image_paths_of",
    "PredictionsCSVWriter",
    "per_class_rows",
    "prediction_columns",
    "read_inference_items",
]


def prediction_columns(class_names: Sequence[str], with_image: bool = False) -> list[str]:
    """The header of predictions.csv: ``id``, [``image``], ``prob_<class>`` per class, ``predicted_index``,
    ``predicted_label``."""
    columns = ["id", "image"] if with_image else ["id"]
    return [*columns, *(f"prob_{name}" for name in class_names), "predicted_index", "predicted_label"]


def _batch_values(data: Any, key: str) -> list:
    """``key`` of every sample, from a collated batch (dict of lists/tensors) or a decollated one (list of dicts)."""
    if data is None:
        return []
    if isinstance(data, Mapping):
        values = data.get(key)
        if values is None:
            return []
        if isinstance(values, torch.Tensor):
            return list(values.detach().cpu()) if values.ndim > 0 else [values.detach().cpu()]
        return list(values)
    values = []
    for item in data:
        value = item.get(key) if isinstance(item, Mapping) else None
        values.append(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
    return values


class _Collector:
    """Collects ids, probabilities and labels of one evaluator run (reset at every run's start)."""

    def __init__(self, pred_key: str, label_key: str | None, id_key: str) -> None:
        self.pred_key, self.label_key, self.id_key = pred_key, label_key, id_key
        self.ids: list[str] = []
        self.probs: list[torch.Tensor] = []
        self.labels: list[Any] = []

    def reset(self, _engine: Engine | None = None) -> None:
        self.ids, self.probs, self.labels = [], [], []

    def collect(self, engine: Engine) -> None:
        preds = _batch_values(engine.state.output, self.pred_key)
        ids = _batch_values(engine.state.batch, self.id_key)
        if len(ids) != len(preds):
            raise ValueError(
                f"the batch has {len(preds)} predictions but {len(ids)} '{self.id_key}' values: every data item "
                f"needs an '{self.id_key}' key"
            )
        self.ids.extend(str(i) for i in ids)
        self.probs.extend(torch.as_tensor(p).float().reshape(-1) for p in preds)
        if self.label_key is not None:
            labels = _batch_values(engine.state.batch, self.label_key)
            if len(labels) != len(preds):
                raise ValueError(
                    f"evaluation needs a '{self.label_key}' for every image, got {len(labels)} for "
                    f"{len(preds)} images: evaluate a labelled split"
                )
            self.labels.extend(int(torch.as_tensor(label).reshape(-1)[0]) for label in labels)

    def matrix(self, num_classes: int) -> torch.Tensor:
        if not self.probs:
            return torch.zeros(0, num_classes)
        probs = torch.stack(self.probs)
        if probs.shape[1] != num_classes:
            raise ValueError(
                f"the network gives {probs.shape[1]} outputs per image but {num_classes} class names are set: "
                "use the class names the model was trained with"
            )
        return probs

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)


class PredictionsCSVWriter:
    """Writes ``predictions.csv`` when an evaluator run completes: one row per image, with a header.

    Columns: ``id``, ``image`` (with ``image_paths``), ``prob_<class>`` for each class (the softmax of the summed
    peer logits, which the bundle's ``postprocessing`` computes), ``predicted_index`` and ``predicted_label``
    (the class name). Rows follow the data order. Written atomically.

    Args:
        output_dir: folder of the file.
        class_names: class names in index order (the network's output channels).
        filename: the file name.
        image_paths: optional ``{id: image path}`` for the ``image`` column (a manifest's files).
        pred_key: the key of the probabilities in the engine output.
        id_key: the key of the sample id in the batch.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        filename: str = "predictions.csv",
        image_paths: Mapping[str, str] | None = None,
        pred_key: str = "pred",
        id_key: str = "id",
    ) -> None:
        self.path = Path(output_dir) / filename
        self.class_names = [str(n) for n in class_names]
        self.image_paths = None if image_paths is None else {str(k): str(v) for k, v in image_paths.items()}
        self._collector = _Collector(pred_key, None, id_key)

    def attach(self, engine: Engine) -> None:
        """Collect every iteration's outputs and write the file when the run completes."""
        self._collector.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self)

    def rows(self) -> list[dict[str, Any]]:
        """The rows collected so far, as written to the file."""
        probs = self._collector.matrix(len(self.class_names))
        rows = []
        for sample_id, p in zip(self._collector.ids, probs, strict=True):
            predicted = int(p.argmax())
            row: dict[str, Any] = {"id": sample_id}
            if self.image_paths is not None:
                row["image"] = self.image_paths.get(sample_id, "")
            row.update({f"prob_{name}": float(v) for name, v in zip(self.class_names, p.tolist(), strict=True)})
            row["predicted_index"] = predicted
            row["predicted_label"] = self.class_names[predicted]
            rows.append(row)
        return rows

    def __call__(self, _engine: Engine) -> None:
        atomic_write_csv(self.path, self.rows(), prediction_columns(self.class_names, self.image_paths is not None))


def per_class_rows(class_names: Sequence[str], confusion: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    """Per-class support, predicted count, recall, precision and F1 from a confusion matrix (rows true)."""
    matrix = np.asarray(confusion, dtype=np.int64)
    rows = []
    for c, name in enumerate(class_names):
        tp, support, predicted = int(matrix[c, c]), int(matrix[c].sum()), int(matrix[:, c].sum())
        recall = tp / support if support else math.nan
        precision = tp / predicted if predicted else math.nan
        f1 = 2 * tp / (support + predicted) if support + predicted else math.nan
        rows.append(
            {
                "class": name,
                "support": support,
                "predicted": predicted,
                "recall": recall,
                "precision": precision,
                "f1": f1,
            }
        )
    return rows


class EvaluationWriter:
    """Scores an evaluator run against the labels and writes the metrics when it completes.

    Files (in ``output_dir``, ``<split>`` from ``split``): ``evaluation_<split>.json`` (balanced accuracy, macro
    F1, accuracy, MCC, macro AUROC, per-class recall by class name, the confusion matrix, the model file and the
    number of images), ``evaluation_<split>_per_class.csv`` (class, support, predicted, recall, precision, f1)
    and ``evaluation_<split>_confusion.csv`` (rows = true class, columns = predicted class). Written atomically.

    Args:
        output_dir: folder of the files.
        class_names: class names in index order.
        split: the evaluated split's name, used in the file names.
        checkpoint: the evaluated model file (recorded in the JSON).
        pred_key: the key of the probabilities in the engine output.
        label_key: the key of the label (class index) in the batch.
        id_key: the key of the sample id in the batch.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        split: str | None = "test",
        checkpoint: str | Path | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
        id_key: str = "id",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = [str(n) for n in class_names]
        self.split = "all" if split is None else str(split)
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self._collector = _Collector(pred_key, label_key, id_key)
        self.report: dict[str, Any] = {}

    @property
    def json_path(self) -> Path:
        return self.output_dir / f"evaluation_{self.split}.json"

    @property
    def per_class_path(self) -> Path:
        return self.output_dir / f"evaluation_{self.split}_per_class.csv"

    @property
    def confusion_path(self) -> Path:
        return self.output_dir / f"evaluation_{self.split}_confusion.csv"

    def attach(self, engine: Engine) -> None:
        """Collect every iteration's outputs and labels, and write the metrics when the run completes."""
        self._collector.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self)

    def compute(self) -> dict[str, Any]:
        """The metrics of what was collected."""
        probs = self._collector.matrix(len(self.class_names))
        if probs.shape[0] == 0:
            raise ValueError(f"split {self.split!r} has no images to evaluate")
        if (probs < 0).any() or not torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-3):
            probs = probs.softmax(
                1
            )  # logits (train.json's evaluator, overlaid by evaluate.json): the AUROC wants probabilities
        labels = torch.tensor(self._collector.labels, dtype=torch.long)
        metrics = classification_metrics(labels, probs.argmax(1), probs, num_classes=len(self.class_names))
        return {
            "split": self.split,
            "num_images": int(probs.shape[0]),
            "checkpoint": self.checkpoint,
            "class_names": self.class_names,
            "balanced_accuracy": metrics["balanced_accuracy"],
            "macro_f1": metrics["macro_f1"],
            "accuracy": metrics["accuracy"],
            "mcc": metrics["mcc"],
            "auroc": metrics["auroc"],
            "per_class_recall": dict(zip(self.class_names, metrics["per_class_recall"], strict=True)),
            "confusion_matrix": metrics["confusion_matrix"],
        }

    def __call__(self, _engine: Engine) -> None:
        self.report = self.compute()
        confusion = self.report["confusion_matrix"]
        atomic_write_json(self.json_path, self.report)
        atomic_write_csv(
            self.per_class_path,
            per_class_rows(self.class_names, confusion),
            ["class", "support", "predicted", "recall", "precision", "f1"],
        )
        header = ["true \\ predicted", *self.class_names]
        atomic_write_csv(
            self.confusion_path,
            [
                dict(zip(header, [name, *row], strict=True))
                for name, row in zip(self.class_names, confusion, strict=True)
            ],
            header,
        )


def read_inference_items(
    path: str | Path,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
    require_labels: bool = False,
    sequences: Sequence[str] | None = None,
    skip_bad_files: bool = False,
) -> list[dict[str, Any]]:
    """Reads the images of a manifest CSV for inference (labels optional) or evaluation (labels required).

    Only ``id`` and ``image`` (or the ``sequences`` columns) are required; ``split`` selects rows; ``label`` is
    read when ``require_labels`` (evaluation) and mapped to ``class_names`` (the trained model's classes, by
    name in any case, or by index). Every problem is collected and reported at once, each naming the manifest
    and the row.

    Args:
        path: the manifest CSV; relative image paths are relative to its folder.
        split: keep only rows whose ``split`` equals this (any case); None keeps every row.
        class_names: the model's class names (needed with ``require_labels``).
        require_labels: read the ``label`` column; every kept row must have a known class.
        sequences: columns holding one file per sequence, stacked as channels in this order (as the model was
            trained with ``sequences``); None reads the ``image`` column.
        skip_bad_files: a row whose image file is missing or of an unsupported type is returned with a
            ``"skip"`` entry (``{"kind", "reason", "fix"}``) instead of refusing the manifest; a later
            :func:`require_decodable_items` with ``drop=True`` leaves it out and lists it.

    Returns:
        One dict per kept row: ``{"image": absolute path (a list of paths with sequences), "id": str, "index":
        position, "row": row in the file}`` plus ``"label"`` (class index) with ``require_labels``.

    Raises:
        ManifestError: the file is missing or not CSV, a column is missing, an id is empty or repeated, an image
            file is missing or of an unsupported type, a label is unknown, or no row is left; ``problems`` lists
            every problem.
        ValueError: ``require_labels`` without ``class_names``.
    """
    manifest = Path(path).expanduser().absolute()

    def at(row: int, reason: str) -> str:
        return f"{manifest} row {row}: {reason}"

    table = read_manifest_table(manifest)
    header = [cell.strip() for cell in table[0]]
    image_columns = list(sequences) if sequences else ["image"]
    needed = ["id", *image_columns, *(["label"] if require_labels else []), *(["split"] if split is not None else [])]
    needed = list(dict.fromkeys(needed))
    missing = [name for name in needed if name not in header]
    if missing:
        raise ManifestError([at(1, f"missing column {name!r} (header: {header})") for name in missing], manifest)
    column = {name: header.index(name) for name in needed}
    lookup: dict[str, int] = {}
    if require_labels:
        if not class_names:
            raise ValueError("require_labels needs the model's class_names")
        lookup = {text_key(str(name)): c for c, name in enumerate(class_names)}
        lookup.update({str(c): c for c in range(len(class_names))})

    problems: list[str] = []
    seen: dict[str, int] = {}
    items: list[dict[str, Any]] = []
    for number, cells in enumerate(table[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) < len(header):
            cells = [*cells, *[""] * (len(header) - len(cells))]
        if split is not None and cells[column["split"]].strip().casefold() != split.strip().casefold():
            continue
        sample_id = cells[column["id"]].strip()
        if not sample_id:
            problems.append(at(number, "empty id"))
        elif sample_id in seen:
            problems.append(at(number, f"duplicate id {sample_id!r} (first in row {seen[sample_id]})"))
        else:
            seen[sample_id] = number
        paths = []
        file_problems: list[tuple[str, str]] = []
        for name in image_columns:
            image = cells[column[name]].strip()
            image_path = Path(image).expanduser()
            if not image_path.is_absolute():
                image_path = manifest.parent / image_path
            if not image:
                file_problems.append(("missing file", f"empty {name!r} path"))
            elif image_kind(image_path) is None:  # by extension; or a DICOM series folder, or DICOM by its marker
                file_problems.append(
                    (
                        "unsupported type",
                        f"{name} {image!r} is not a supported type (.dcm, .nii, .nii.gz, .png, .jpg, .jpeg)",
                    )
                )
            elif not image_path.is_file() and not is_series_ref(image_path):
                file_problems.append(("missing file", f"{name} file {image_path} not found"))
            paths.append(str(image_path.resolve()))
        item: dict[str, Any] = {
            "image": paths if sequences else paths[0],
            "id": sample_id,
            "index": len(items),
            "row": number,
        }
        if file_problems and skip_bad_files:
            kind, reason = file_problems[0]
            item["skip"] = {"kind": kind, "reason": reason, "fix": ""}
        else:
            problems.extend(at(number, reason) for _, reason in file_problems)
        if require_labels:
            label = cells[column["label"]].strip()
            if text_key(label) not in lookup:
                problems.append(
                    at(number, f"label {label!r} is not a class of the model ({', '.join(map(str, class_names))})")
                )
            else:
                item["label"] = lookup[text_key(label)]
        items.append(item)
    if not items and not problems:
        where = f" with split {split!r}" if split is not None else ""
        problems.append(at(1, f"no rows{where} to run on"))
    if problems:
        raise ManifestError(problems, manifest)
    return items


def image_paths_of(items: Sequence[Mapping[str, Any]]) -> dict[str, str] | None:
    """``{id: image path}`` when the items' images are files (a row's sequence files joined by ";"), else None
    (MedMNIST arrays)."""

    def path(image: Any) -> str | None:
        if isinstance(image, str):
            return image
        if isinstance(image, (list, tuple)) and image and all(isinstance(p, str) for p in image):
            return ";".join(image)
        return None

    paths = {str(item["id"]): path(item.get("image")) for item in items}
    if not paths or any(p is None for p in paths.values()):
        return None
    return paths  # type: ignore[return-value]


def manifest_transforms(settings: Mapping[str, Any] | None, where: str | Path = "the model metadata") -> Any:
    """The evaluation-time image chain of a manifest model, from its recorded preprocessing settings.

    Args:
        settings: keyword arguments of :func:`alr_monai.data.transforms.build_image_transforms` as phase 1
            recorded them (``models/metadata.json``, ``alr_monai.preprocessing``); ``augment`` is forced off.
        where: where the settings came from, for the error message.

    Returns:
        The ``Compose`` for the inference dataset.

    Raises:
        ValueError: no settings (a model trained on MedMNIST arrays, or metadata written before they were
            recorded); the message says which key to set.
    """
    from alr_monai.data.transforms import build_image_transforms

    if not settings or "spatial_size" not in settings:
        raise ValueError(
            f"{where} records no manifest preprocessing (spatial_size, in_channels, spatial_dims, intensity): the "
            "model was not trained on a manifest; use inference.json alone for MedMNIST data, or set "
            "preprocessing_settings, e.g. --preprocessing_settings \"{'spatial_size': [28, 28], 'in_channels': 3}\""
        )
    return build_image_transforms(**{**dict(settings), "augment": False})


SKIPPED_FILE = "skipped_images.csv"
SKIPPED_COLUMNS = ("row", "id", "image", "kind", "reason", "fix")


def require_decodable_items(
    items: Sequence[Mapping[str, Any]],
    manifest_path: str | Path,
    transform: Any,
    check: bool = True,
    drop: bool = False,
    skipped_path: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Decodes every item through ``transform`` before inference and reports every file that fails at once.

    Without this, the first bad file would stop the run halfway with a traceback; here each bad file is named
    with its row, the reason and the fix (:func:`alr_monai.data.decode_check.check_images`). With ``drop``, the
    bad files are left out instead, listed in ``skipped_path`` (with the rows :func:`read_inference_items` marked
    ``skip``: missing files, unsupported types), and the rest is predicted.

    Args:
        items: :func:`read_inference_items` output.
        manifest_path: the manifest they came from (named in the error).
        transform: the inference chain (``preprocessing``).
        check: False skips the check (each image is then decoded once only, during inference); ``drop`` checks
            regardless, since a file that fails during inference would stop the run.
        drop: skip and list unreadable files instead of refusing the manifest.
        skipped_path: the CSV listing skipped files (columns row, id, image, kind, reason, fix; written, header
            only when none was skipped, whenever ``drop`` is on); None writes none.

    Returns:
        The items to predict (with ``drop``: without the skipped ones, ``index`` renumbered).

    Raises:
        ManifestError: some images cannot be decoded (without ``drop``), or every image was skipped.
    """
    items = [dict(item) for item in items]
    if drop:
        return _drop_unreadable(items, manifest_path, transform, skipped_path)
    if not check or not items:
        return items
    from alr_monai.data.decode_check import check_images
    from alr_monai.data.manifest import Manifest

    path = Path(manifest_path).expanduser().absolute()
    records = [
        {
            "id": item["id"],
            "image": item["image"][0] if isinstance(item["image"], list) else item["image"],
            "images": item["image"] if isinstance(item["image"], list) else None,
            "label": int(item.get("label", 0)),
            "row": int(item.get("row", position + 2)),
            "split": None,
        }
        for position, item in enumerate(items)
    ]
    bad = check_images(Manifest(path, ["-"], records), transform)
    if bad:
        raise ManifestError(
            [*(b.line(path) for b in bad), "fix or remove these rows, or pass --check_images false to skip the check"],
            path,
        )
    return items


def _drop_unreadable(
    items: list[dict[str, Any]], manifest_path: str | Path, transform: Any, skipped_path: str | Path | None
) -> list[dict[str, Any]]:
    import logging

    from alr_monai.data.decode_check import check_images
    from alr_monai.data.manifest import Manifest

    path = Path(manifest_path).expanduser().absolute()
    skipped = [
        {"row": item["row"], "id": item["id"], "image": _image_text(item["image"]), **item["skip"]}
        for item in items
        if "skip" in item
    ]
    readable = [item for item in items if "skip" not in item]
    records = [
        {
            "id": item["id"],
            "image": item["image"][0] if isinstance(item["image"], list) else item["image"],
            "images": item["image"] if isinstance(item["image"], list) else None,
            "label": int(item.get("label", 0)),
            "row": int(item.get("row", position + 2)),
            "split": None,
        }
        for position, item in enumerate(readable)
    ]
    bad = check_images(Manifest(path, ["-"], records), transform) if records else []
    bad_ids = {b.id for b in bad}
    skipped += [{key: b.as_row()[key] for key in SKIPPED_COLUMNS} for b in bad]
    skipped.sort(key=lambda row: int(row["row"]))
    kept = [item for item in readable if item["id"] not in bad_ids]
    for position, item in enumerate(kept):
        item["index"] = position
    if skipped_path is not None:
        atomic_write_csv(skipped_path, skipped, list(SKIPPED_COLUMNS))
    if skipped:
        where = f", listed in {skipped_path}" if skipped_path is not None else ""
        logging.getLogger("alr_monai").warning(
            "%d of %d images skipped as unreadable%s (first: %s: %s)",
            len(skipped),
            len(items),
            where,
            skipped[0]["image"],
            skipped[0]["reason"],
        )
    if not kept:
        raise ManifestError(
            [f"{path}: every image was skipped as unreadable ({len(skipped)}); see {skipped_path}"], path
        )
    return kept


def _image_text(image: Any) -> str:
    return ";".join(image) if isinstance(image, (list, tuple)) else str(image)
