"""Running the bundle: config file lookup (bundle, presets, benchmark presets), run configs, and the workflow.

The CLI (:mod:`alr_monai.cli`) and the benchmark (:mod:`alr_monai.benchmark`) both build runs from here, so
neither imports the other.

Where the configs live: in a source checkout (and an editable install) they are the repository's top-level
``bundles/`` and ``configs/`` folders, the layout ``python -m monai.bundle run --config_file
bundles/alr_classification/configs/train.json`` uses. A wheel ships the same folders as package data inside the
package (``alr_monai/bundles``, ``alr_monai/configs``; see ``[tool.setuptools]`` in pyproject.toml), so an
installed ``alr`` finds them from any folder.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLE_NAME",
    "RUN_CONFIG",
    "benchmark_preset_file",
    "bundle_dir",
    "bundle_file",
    "coerce_literal",
    "configs_dir",
    "load_run_config",
    "phase1_files",
    "preset_files",
    "relabel_files",
    "run_workflow",
    "save_run_config",
    "with_multi_process_overlay",
]

BUNDLE_NAME = "alr_classification"
RUN_CONFIG = "run_config.json"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _resource_dir(name: str) -> Path:
    """The folder ``name`` ("bundles" or "configs"): package data of an installed wheel, else the checkout's."""
    packaged = resources.files("alr_monai").joinpath(name)
    if packaged.is_dir():
        return Path(str(packaged))
    source = _SOURCE_ROOT / name
    if source.is_dir():
        return source
    raise FileNotFoundError(
        f"alr_monai's {name}/ folder is missing: looked in the installed package ({packaged}) and the source "
        f"checkout ({source}); reinstall the package (pip install .)"
    )


def bundle_dir() -> Path:
    """The bundle folder (``configs/``, ``docs/``, ``LICENSE``)."""
    return _resource_dir("bundles") / BUNDLE_NAME


def configs_dir() -> Path:
    """The folder holding ``presets/`` (method overlays) and ``benchmarks/`` (benchmark matrices)."""
    return _resource_dir("configs")


def bundle_file(name: str) -> str:
    """Path of a bundle config file, e.g. ``bundle_file("train.json")``.

    Raises:
        FileNotFoundError: the bundle has no such file.
    """
    path = bundle_dir() / "configs" / name
    if not path.is_file():
        raise FileNotFoundError(f"bundle config {path} not found")
    return str(path)


def preset_files(presets: str | Sequence[str] | None) -> list[str]:
    """Paths of method presets given by name (``configs/presets/<name>.json``) or as .json paths.

    Raises:
        FileNotFoundError: naming the preset and the available ones.
    """
    if not presets:
        return []
    names = [presets] if isinstance(presets, str) else list(presets)
    folder = configs_dir() / "presets"
    files = []
    for name in names:
        name = str(name)
        path = Path(name) if name.endswith(".json") else folder / f"{name}.json"
        if not path.is_file():
            available = sorted(p.stem for p in folder.glob("*.json"))
            raise FileNotFoundError(f"preset {name!r} not found (looked for {path}); available: {available}")
        files.append(str(path))
    return files


def benchmark_preset_file(preset: str) -> Path:
    """A benchmark matrix by name (``configs/benchmarks/<name>.json``) or path.

    Raises:
        FileNotFoundError: naming the available presets.
    """
    path = Path(preset)
    if path.is_file():
        return path
    folder = configs_dir() / "benchmarks"
    named = folder / f"{path.stem}.json"  # "small", or "configs/benchmarks/small.json" from another folder
    if named.is_file():
        return named
    available = sorted(p.stem for p in folder.glob("*.json"))
    raise FileNotFoundError(f"benchmark preset {preset!r} not found; available: {available} or a .json path")


def phase1_files(
    presets: str | Sequence[str] | None = None, manifest: bool = False, given_labels: bool = False
) -> list[str]:
    """Config files of phase 1: train.json, the manifest overlay when training on a manifest (and the overlay of
    its real noisy labels, ``given_labels``, when a noisy-label column is set), then presets."""
    files = [bundle_file("train.json")]
    if manifest:
        files.append(bundle_file("train_manifest.json"))
        if given_labels:
            files.append(bundle_file("train_manifest_given.json"))
    return files + preset_files(presets)


def relabel_files(phase1: Sequence[str]) -> list[str]:
    """Config files of phase 2: phase 1's files (same data and presets) plus the relabel overlay."""
    return [*phase1, bundle_file("relabel.json")]


def with_multi_process_overlay(files: Sequence[str]) -> list[str]:
    """In a process group of several processes (joined by the caller, e.g. the CLI under torchrun), ``files`` plus
    the multi-process overlays: multi_gpu_train.json after phase 1's files, multi_gpu_relabel.json after
    relabel.json; else ``files``."""
    from alr_monai.distributed import is_distributed

    if not is_distributed():
        return list(files)
    relabel = bundle_file("relabel.json")
    overlaid = [*(f for f in files if f != relabel), bundle_file("multi_gpu_train.json")]
    if relabel in files:
        overlaid += [relabel, bundle_file("multi_gpu_relabel.json")]
    return overlaid


_LITERALS = {"true": True, "false": False, "null": None, "none": None}


def coerce_literal(value: Any) -> Any:
    """Fire passes ``--flag false`` as the string "false"; bundle configs mean the JSON literal."""
    return _LITERALS.get(value.strip().lower(), value) if isinstance(value, str) else value


_verbose = False


class RepeatedWarningFilter(logging.Filter):
    """Lets a warning through once: a library that warns per file or per reader (nvImageCodec missing,
    ImageOrientationPatient, pixel padding) would otherwise repeat the same line for every image."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def set_verbose(verbose: bool) -> None:
    """Show (True) or hide (False, the default) Ignite's and MONAI's per-event console lines in later workflows.

    The bundle's logging.conf keeps the ``ignite`` loggers at WARNING, so a run prints one line per epoch (see
    :class:`alr_monai.handlers.EpochSummaryPrinter`); ``alr --verbose`` calls this to bring the chatter back.
    """
    global _verbose
    _verbose = bool(verbose)


def run_workflow(config_files: Sequence[str], overrides: Mapping[str, Any], tracking: str | None = None) -> Any:
    """Initialise, run and finalise a MONAI bundle workflow built from ``config_files`` plus ``overrides``.

    Args:
        config_files: bundle config files, merged in order (later files override earlier ones).
        overrides: bundle keys (``"max_epochs"``, ``"vog#mix_ratio"``, ...) and their values; with ``tracking``
            also MONAI's tracking keys (``tracking_uri``, ``experiment_name``, ``run_name``).
        tracking: MONAI's experiment tracking (``"mlflow"``, as ``python -m monai.bundle run --tracking mlflow``),
            or None.

    Returns:
        The finalised :class:`monai.bundle.ConfigWorkflow`.
    """
    from monai.bundle import ConfigWorkflow

    bundle_logger = logging.getLogger("monai.bundle.workflows")
    bundle_level = bundle_logger.level
    with warnings.catch_warnings():
        # MONAI warns on every config parse that configs run code; these are the project's own configs.
        warnings.filterwarnings("ignore", message=".*resolved to an importable callable.*")
        if not _verbose:
            # "Not all config files are in ...": presets live beside the bundle by design, and logging_file and
            # meta_file are always given, so the warning (and the logging.conf notice) says nothing to a user
            bundle_logger.setLevel(logging.ERROR)
        try:
            workflow = ConfigWorkflow(
                config_file=list(config_files),
                meta_file=bundle_file("metadata.json"),
                logging_file=bundle_file("logging.conf"),
                workflow_type="train",
                tracking=tracking,
                **{key: coerce_literal(value) for key, value in overrides.items()},
            )
        finally:
            bundle_logger.setLevel(bundle_level)
        if _verbose:
            logging.getLogger("ignite").setLevel(logging.INFO)
        once = RepeatedWarningFilter()
        for handler in logging.getLogger().handlers:  # logging.conf's console handler, made anew per workflow
            handler.addFilter(once)
            if not _verbose and getattr(handler, "stream", None) in (sys.stdout, sys.stderr):
                # the timestamped INFO lines (queries written, a resume, the noise estimate) are --verbose's: the
                # console tells the run's story in its epoch and round lines and the summaries; warnings still show
                handler.setLevel(logging.WARNING)
                handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    return workflow


def save_run_config(run_dir: str | Path, **sections: Any) -> Path:
    """Update ``run_dir/run_config.json`` atomically, replacing only the given sections.

    Sections in use: ``config_files`` and ``overrides`` (phase 1, written by ``alr train``), and ``relabel``
    (the phase-2 settings, written by the first ``alr relabel`` / ``alr query``).
    """
    from alr_monai.utils import atomic_write_json, read_json_or_empty

    path = Path(run_dir) / RUN_CONFIG
    saved = read_json_or_empty(path)
    saved.update(sections)
    return atomic_write_json(path, saved)


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """Read ``run_dir/run_config.json``.

    Returns:
        A dict with ``config_files`` (list), ``overrides`` (dict) and ``relabel`` (dict, empty before phase 2).

    Raises:
        FileNotFoundError: phase 1 was never started in ``run_dir``.
        ValueError: the file is not the JSON ``alr train`` writes.
    """
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `alr train --output_dir {run_dir}` (phase 1) first")
    try:
        saved = json.loads(path.read_text())
        config = {
            "config_files": [str(f) for f in saved["config_files"]],
            "overrides": dict(saved["overrides"]),
            "relabel": dict(saved.get("relabel") or {}),
        }
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is unreadable ({error}); it is written by `alr train`, rerun phase 1") from None
    # Config files saved by another install (or before a move) are found again by name in this one.
    config["config_files"] = [_relocate(f) for f in config["config_files"]]
    return config


def _relocate(path: str) -> str:
    if Path(path).is_file():
        return path
    candidate = Path(path)
    for folder in (bundle_dir() / "configs", configs_dir() / "presets"):
        if (folder / candidate.name).is_file() and candidate.parent.name == folder.name:
            return str(folder / candidate.name)
    return path
