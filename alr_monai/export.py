"""Bundle metadata that describes the model a run trained: input shape, channels, spatial dims and classes.

The bundle's ``configs/metadata.json`` describes the default model (28 x 28 RGB BloodMNIST, 8 classes). A run on
another dataset (a manifest of CT volumes, say) trains a different model, so phase 1 writes
``<output_dir>/models/metadata.json`` beside ``model.pt`` (:func:`write_model_metadata`): the bundle's metadata
with every model-specific field replaced. ``python -m monai.bundle ckpt_export --meta_file`` embeds it in the
TorchScript file, and ``inference_manifest.json`` reads its ``alr_monai`` section
(:func:`read_model_metadata`) for the preprocessing and network settings the model was trained with.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from alr_monai.distributed import is_main_process
from alr_monai.utils import atomic_write_json

__all__ = [
    "METADATA_FILE",
    "data_description",
    "REQUIRED_PACKAGES",
    "model_metadata",
    "network_config",
    "package_versions",
    "read_model_metadata",
    "write_model_metadata",
]

METADATA_FILE = "metadata.json"

# Distribution names of the third-party packages alr_monai imports (torch, monai and numpy have their own
# metadata fields). tests/test_export_metadata.py checks this list against the package's imports.
REQUIRED_PACKAGES: tuple[str, ...] = (
    "alr_monai",
    "pytorch-ignite",
    "tensorboard",
    "scikit-learn",
    "nibabel",
    "pydicom",
    "pillow",
    "matplotlib",
    "fire",
    "tqdm",
)


def package_versions(packages: Sequence[str] = REQUIRED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (distribution names); a package not installed is left out."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _default_channel_def(channels: int) -> dict[str, str]:
    if channels == 1:
        return {"0": "gray"}
    if channels == 3:
        return {"0": "R", "1": "G", "2": "B"}
    return {str(c): f"channel {c}" for c in range(channels)}


def _base_metadata() -> dict[str, Any]:
    from alr_monai.workflow import bundle_file

    with open(bundle_file(METADATA_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def _same_model_as_base(base: Mapping[str, Any], shape: Sequence[int], class_names: Sequence[str]) -> bool:
    """True when ``base`` already describes a model with this input shape and these classes."""
    try:
        image = base["network_data_format"]["inputs"]["image"]
        pred = base["network_data_format"]["outputs"]["pred"]
        names = [pred["channel_def"][str(c)] for c in range(len(pred["channel_def"]))]
    except (KeyError, TypeError):
        return False
    return (
        int(image["num_channels"]) == shape[0]
        and list(image["spatial_shape"]) == list(shape[1:])
        and names == list(class_names)
    )


def model_metadata(
    class_names: Sequence[str],
    input_shape: Sequence[int],
    *,
    base: Mapping[str, Any] | None = None,
    num_peers: int = 2,
    dropout: float = 0.0,
    preprocessing: Mapping[str, Any] | None = None,
    data_source: str | None = None,
    modality: str | None = None,
    network: Mapping[str, Any] | None = None,
    sequences: Sequence[str] | None = None,
    data_type: str | None = None,
) -> dict[str, Any]:
    """The bundle metadata of one trained model.

    Args:
        class_names: class names in index order (the network's output channels).
        input_shape: one preprocessed image's shape, channels first: ``(C, *spatial)``.
        base: the metadata to start from; default: the bundle's ``configs/metadata.json``.
        num_peers: peers in the :class:`alr_monai.networks.PeerEnsemble` (the output is the sum of their logits).
        dropout: the ensemble's dropout before the last linear layer (it changes the state-dict layout).
        preprocessing: the settings that turn a file into the network input (a manifest run's
            :func:`~alr_monai.data.transforms.build_image_transforms` arguments: ``spatial_size``,
            ``in_channels``, ``spatial_dims``, ``intensity``, ...); recorded under ``alr_monai`` for inference.
        data_source: where the training data came from (e.g. the manifest path); default: keep the base's.
        modality: the input's modality; default: the base's when the model matches it, else ``"unknown"``.
        network: the peer network's constructor as a config (``_target_`` and its arguments), recorded so a
            user can rebuild the same network for inference or export (see :func:`network_config`).
        sequences: the manifest columns whose files were stacked as channels (a manifest run's ``sequences``).
        data_type: the training files' kind in words (e.g. "DICOM files"; :func:`data_description`).

    Returns:
        The metadata dict: the base with ``network_data_format``, ``image_classes``, ``label_classes``,
        ``pred_classes``, the package versions and an ``alr_monai`` section (``class_names``, ``num_classes``,
        ``in_channels``, ``spatial_dims``, ``spatial_shape``, ``num_peers``, ``dropout``, ``preprocessing``,
        ``network``, ``sequences``).

    Raises:
        ValueError: ``input_shape`` has no spatial axis, or ``class_names`` is empty.
    """
    shape = [int(s) for s in input_shape]
    if len(shape) < 2:
        raise ValueError(f"input_shape must be (channels, *spatial), got {tuple(shape)}")
    if not class_names:
        raise ValueError("class_names is empty: a classifier needs at least one class")
    names = [str(n) for n in class_names]
    meta = copy.deepcopy(dict(base) if base is not None else _base_metadata())
    same = _same_model_as_base(meta, shape, names)
    channels, spatial = shape[0], shape[1:]
    size = " x ".join(str(s) for s in spatial)
    settings = dict(preprocessing or {})

    versions = package_versions(("monai", "torch", "numpy"))
    for field, package in (("monai_version", "monai"), ("pytorch_version", "torch"), ("numpy_version", "numpy")):
        if package in versions:
            # A local build tag ("2.13.0+cpu") is not a version pin.
            meta[field] = versions[package].split("+")[0]
    meta["required_packages_version"] = package_versions()
    if data_source is not None:
        meta["data_source"] = data_source
    if not same:
        # the bundle's name and task describe its default BloodMNIST model, not this run's
        what = f"{modality} " if modality and modality != "unknown" else ""
        meta["name"] = f"Active Label Refinement classifier: {what}{len(spatial)}D images, {len(names)} classes"
        meta["task"] = (
            f"Noise-robust classification of {what or 'medical '}images ({len(spatial)}D, {channels} channel"
            f"{'s' if channels != 1 else ''}) into {len(names)} classes ({', '.join(names)}), with active label "
            "refinement of the training labels"
        )
    peers = f"the {num_peers} peers' logits" if num_peers > 1 else "one network's logits"
    meta["pred_classes"] = f"{len(names)} logits (sum of {peers}); softmax gives class probabilities"
    meta["label_classes"] = f"{len(names)} classes: {', '.join(names)}"
    if not same:
        intensity = settings.get("intensity", "minmax")
        scaled = intensity != "none"
        meta["image_classes"] = f"{channels}-channel {len(spatial)}D image, {size} after preprocessing" + (
            f", intensity {json.dumps(intensity)} scaled to [0, 1]" if scaled else ", intensity unscaled"
        )
        if data_source is None:
            meta["data_source"] = "the training data of this run (the manifest or dataset it was trained on)"
        meta["data_type"] = (
            data_type or "image files (DICOM, NIfTI, PNG or JPEG) or arrays, as listed by the training data"
        )

    image = dict(meta.get("network_data_format", {}).get("inputs", {}).get("image", {}))
    if not same:
        image.update(
            {
                "type": "image",
                "format": "magnitude",
                "modality": modality or "unknown",
                "channel_def": _default_channel_def(channels),
                "value_range": [0, 1] if settings.get("intensity", "minmax") != "none" else [],
            }
        )
    elif modality is not None:
        image["modality"] = modality
    image.update({"num_channels": channels, "spatial_shape": spatial, "dtype": "float32", "is_patch_data": False})
    meta["network_data_format"] = {
        "inputs": {"image": image},
        "outputs": {
            "pred": {
                "type": "logits",
                "format": "classes",
                "num_channels": len(names),
                "spatial_shape": [1],
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": False,
                "channel_def": {str(c): name for c, name in enumerate(names)},
            }
        },
    }
    meta["alr_monai"] = {
        "class_names": names,
        "num_classes": len(names),
        "in_channels": channels,
        "spatial_dims": len(spatial),
        "spatial_shape": spatial,
        "num_peers": int(num_peers),
        "dropout": float(dropout),
        "preprocessing": settings,
        "network": None if network is None else dict(network),
        "sequences": None if sequences is None else [str(c) for c in sequences],
    }
    return meta


_KIND_WORDS = {"dicom": "DICOM", "nifti": "NIfTI", "pil": "PNG/JPEG"}


def _first_files(image: Any) -> list[Path]:
    """The files of one item's image: a path, a list of sequence paths, or a folder (a DICOM series)."""
    paths = [Path(p) for p in (image if isinstance(image, (list, tuple)) else [image]) if isinstance(p, (str, Path))]
    files = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file())
            files.extend(inside[:1])
        else:
            files.append(path)
    return files


def _dicom_modality(path: Path) -> str | None:
    try:
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"], force=False)
    except Exception:  # not DICOM, unreadable: the data check reports those, not the metadata
        return None
    value = str(getattr(header, "Modality", "") or "").strip()
    return value or None


def data_description(
    items: Sequence[Mapping[str, Any]], manifest_path: str | Path | None = None, limit: int = 64
) -> dict[str, str | None]:
    """What the training data is, for the model's metadata: its modality and its file kinds.

    The modality comes from the DICOM Modality tags of up to ``limit`` files spread over ``items`` (several
    modalities are joined, e.g. "CT, MR"); without DICOM files, from a ``modality`` column of the manifest when it
    has one; else None (written as "unknown").

    Args:
        items: the training items (``image``: a path, a list of sequence paths, or a series folder).
        manifest_path: the manifest CSV, for its optional ``modality`` column.
        limit: the most files whose headers are read.

    Returns:
        ``{"modality": str or None, "data_type": str or None}`` (e.g. ``"CT"``, ``"DICOM files"``).
    """
    from alr_monai.data.manifest import image_kind

    items = list(items)
    step = max(1, len(items) // max(limit, 1))
    sample = items[::step][:limit]
    modalities: set[str] = set()
    kinds: set[str] = set()
    for item in sample:
        for path in _first_files(item.get("image")):
            kind = image_kind(path) or ("dicom" if path.parent.is_dir() and path.suffix == "" else None)
            if kind:
                kinds.add(_KIND_WORDS[kind])
            if kind == "dicom" or path.suffix == "":
                modality = _dicom_modality(path)
                if modality:
                    modalities.add(modality)
    if not modalities and manifest_path is not None:
        modalities = _manifest_modalities(Path(manifest_path))
    return {
        "modality": ", ".join(sorted(modalities)) or None,
        "data_type": f"{' and '.join(sorted(kinds))} files listed in a manifest CSV" if kinds else None,
    }


def _manifest_modalities(path: Path) -> set[str]:
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if "modality" not in (reader.fieldnames or []):
                return set()
            return {row["modality"].strip() for row in reader if (row.get("modality") or "").strip()}
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()


def network_config(factory: Any) -> dict[str, Any] | None:
    """The config of a network factory (``"_mode_": "callable"`` gives a ``functools.partial``), or None.

    Args:
        factory: the bundle's ``network_factory`` as instantiated.

    Returns:
        ``{"_target_": dotted path, **arguments}`` when the factory is a partial of an importable callable with
        JSON arguments (the bundle's default ResNet), else None.
    """
    if not isinstance(factory, functools.partial) or factory.args:
        return None
    target = f"{getattr(factory.func, '__module__', '')}.{getattr(factory.func, '__qualname__', '')}"
    config = {"_target_": target, **factory.keywords}
    try:
        json.dumps(config)
    except (TypeError, ValueError):
        return None
    return config


def _ensemble_settings(network: torch.nn.Module) -> tuple[int, float]:
    """``(num_peers, dropout)`` of a :class:`~alr_monai.networks.PeerEnsemble` (1 and 0.0 for another network)."""
    num_peers = int(getattr(network, "num_peers", 1))
    dropout = next((float(m.p) for m in network.modules() if isinstance(m, torch.nn.Dropout)), 0.0)
    return num_peers, dropout


def write_model_metadata(
    path: str | Path,
    network: torch.nn.Module,
    class_names: Sequence[str],
    input_shape: Sequence[int],
    preprocessing: Mapping[str, Any] | None = None,
    data_source: str | None = None,
    modality: str | None = None,
    network_factory: Any = None,
    sequences: Sequence[str] | None = None,
    data_type: str | None = None,
) -> Path:
    """Writes :func:`model_metadata` for ``network`` to ``path`` atomically (phase 1 calls it in ``initialize``).

    Args:
        path: the JSON file, by convention ``<output_dir>/models/metadata.json`` beside ``model.pt``.
        network: the trained network (its peer count and dropout are recorded).
        class_names: class names in index order.
        input_shape: one preprocessed image's shape, channels first (e.g. ``validate#dataset[0]['image'].shape``).
        preprocessing: see :func:`model_metadata`.
        data_source: see :func:`model_metadata`.
        modality: see :func:`model_metadata`.
        network_factory: the bundle's ``network_factory``; its arguments are recorded (:func:`network_config`).
        sequences: see :func:`model_metadata`.
        data_type: see :func:`model_metadata`.

    Returns:
        ``path``.
    """
    num_peers, dropout = _ensemble_settings(network)
    meta = model_metadata(
        class_names,
        list(input_shape),
        num_peers=num_peers,
        dropout=dropout,
        preprocessing=preprocessing,
        data_source=data_source,
        modality=modality,
        network=network_config(network_factory),
        sequences=sequences,
        data_type=data_type,
    )
    if not is_main_process():  # several processes: rank 0 writes
        return Path(path)
    return atomic_write_json(path, meta)


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The ``alr_monai`` section of a model's metadata, as :func:`write_model_metadata` wrote it.

    Args:
        path: the metadata JSON, or the model file (``models/model.pt``) or folder beside which it lies.

    Returns:
        ``class_names``, ``num_classes``, ``in_channels``, ``spatial_dims``, ``spatial_shape``, ``num_peers``,
        ``dropout``, ``preprocessing``, ``network`` (the peer constructor's config, or None) and ``sequences``
        (the manifest columns stacked as channels, or None) of the trained model.

    Raises:
        FileNotFoundError: no metadata file; the message names where it looked and what to do.
        ValueError: the file is not JSON or has no ``alr_monai`` section; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METADATA_FILE
    elif path.suffix != ".json":
        path = path.parent / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"model metadata {path} not found: phase 1 writes it beside models/model.pt (runs trained before it "
            "existed: pass the training settings, e.g. --image_size, --in_channels, --spatial_dims, --intensity "
            "and --class_names, or retrain)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"model metadata {path} is not valid JSON ({error})") from error
    section = meta.get("alr_monai") if isinstance(meta, dict) else None
    required = ("class_names", "in_channels", "spatial_dims", "spatial_shape", "num_peers", "dropout")
    if not isinstance(section, dict) or any(key not in section for key in required):
        raise ValueError(
            f"model metadata {path} has no complete 'alr_monai' section (needs {', '.join(required)}); "
            "it was not written by alr_monai's phase 1"
        )
    section.setdefault("preprocessing", {})
    section.setdefault("network", None)
    section.setdefault("sequences", None)
    section.setdefault("num_classes", len(section["class_names"]))
    return section
