"""The phase 1 -> phase 2 handoff: what phase 2 reads from phase 1's run folder, checked against its own data.

Phase 2 rebuilds its training set from the bundle config (data, noise injection, manifest). Were that config to
differ from phase 1's (another seed, another noise rate, an edited manifest), phase 1's trusted mask would
belong to other labels and every round would silently build on it. So phase 2 takes ids, given labels, class
names and the trusted mask from phase 1's files, and refuses to start when they disagree with what it loaded,
naming the file and the first disagreement.

Files read (all written by phase 1, ``train.json``):
    selection.csv: ``id``, ``index``, ``given_label`` (class index) and ``trusted`` (0/1) per training sample.
    classes.json: ``{"class_names": [...]}``.
    metrics.json: the forget rate phase 1 ended with (``last.train.forget_rate``).
    noise.csv (simulation only): ``id``, ``true_label``, ``noisy_label`` of the injected noise.
    models/model.pt: the best-validation model (:func:`load_phase1_model`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alr_monai.data.manifest import load_class_map
from alr_monai.networks import load_weights
from alr_monai.utils import read_csv

__all__ = ["Phase1Mismatch", "Phase1Outputs", "load_phase1_model", "phase1_forget_rate", "read_phase1"]

SELECTION_REQUIRED = ("id", "index", "given_label", "trusted")
_SAME_SETTINGS = (
    "Phase 2 must load the same data as phase 1: merge the same config files and overrides phase 1 used "
    "(seed, simulation#noise_rate, dataset, manifest; `alr relabel --run_dir` does this from run_config.json), "
    "or rerun phase 1"
)


class Phase1Mismatch(ValueError):
    """Phase 1's outputs disagree with the data phase 2 loaded (or are missing or malformed)."""


@dataclass(frozen=True)
class Phase1Outputs:
    """What phase 2 takes from phase 1, by training index.

    Attributes:
        output_dir: phase 1's run folder.
        ids: sample ids.
        given_labels: the labels phase 1 trained on (class indices), as given (noisy).
        trusted: phase 1's clean selection.
        class_names: class names by index.
        forget_rate: the forget rate phase 1 ended with (its noise-rate estimate, or the configured rate).
        losses: each sample's phase-1 loss (selection.csv's mean over peers; NaN where blank).
        class_rates: the per-given-class rates phase 1 cut at (``forget_rate/<class>`` in metrics.json; the
            global forget rate for every class where phase 1 cut once over the batch).
    """

    output_dir: Path
    ids: list[str]
    given_labels: list[int]
    trusted: list[bool]
    class_names: list[str]
    forget_rate: float
    losses: list[float] = field(default_factory=list)
    class_rates: list[float] = field(default_factory=list)


def _not_run(path: Path) -> FileNotFoundError:
    return FileNotFoundError(f"{path} not found: run phase 1 (train.json) into the same output_dir first")


def phase1_forget_rate(output_dir: str | Path) -> float:
    """The forget rate phase 1 ended with (its noise-rate estimate, or the configured rate), from metrics.json."""
    path = Path(output_dir) / "metrics.json"
    if not path.is_file():
        raise _not_run(path)
    try:
        metrics = json.loads(path.read_text())["last"]["train"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise Phase1Mismatch(f"{path}: not a phase-1 metrics file (no last.train section: {error})") from error
    return float(metrics.get("forget_rate", 0.0) or 0.0)


def phase1_class_rates(output_dir: str | Path, class_names: Sequence[str], forget_rate: float) -> list[float]:
    """The per-given-class rates phase 1 ended cutting at (``forget_rate/<class>``), else ``forget_rate`` each."""
    metrics = json.loads((Path(output_dir) / "metrics.json").read_text())["last"]["train"]
    return [float(metrics.get(f"forget_rate/{name}", forget_rate)) for name in class_names]


def load_phase1_model(network: torch.nn.Module, path: str | Path, device=None) -> torch.nn.Module:
    """Load phase 1's best-validation model (a state dict, or ``{"model": state_dict}``) into ``network``."""
    path = Path(path)
    if not path.is_file():
        raise _not_run(path)
    return load_weights(
        network,
        path,
        device,
        hint="phase 2 must use the same network settings as phase 1 (network_factory, network_def#num_peers and "
        "network_def#dropout)",
    )


def _label_name(class_names: Sequence[str], label: int) -> str:
    return f"{class_names[label]!r} ({label})" if 0 <= label < len(class_names) else str(label)


def _check_classes(output_dir: Path, class_names: Sequence[str]) -> list[str]:
    path = output_dir / "classes.json"
    if not path.is_file():
        raise _not_run(path)
    saved = load_class_map(path)
    loaded = [str(name) for name in class_names]
    for index in range(max(len(saved), len(loaded))):
        before = saved[index] if index < len(saved) else None
        now = loaded[index] if index < len(loaded) else None
        if before != now:
            raise Phase1Mismatch(
                f"{path}: phase 1 had {len(saved)} classes and this run has {len(loaded)}; first difference at "
                f"class {index}: phase 1 {before!r}, now {now!r}. {_SAME_SETTINGS}"
            )
    return saved


def _read_selection(output_dir: Path, items: Sequence[Mapping[str, Any]], class_names: Sequence[str]):
    path = output_dir / "selection.csv"
    if not path.is_file():
        raise _not_run(path)
    header, rows = read_csv(path)
    missing = [column for column in SELECTION_REQUIRED if column not in header]
    if missing:
        raise Phase1Mismatch(f"{path}: missing column(s) {missing}; found {header}")
    if len(rows) != len(items):
        raise Phase1Mismatch(
            f"{path}: phase 1 trained on {len(rows)} samples, this run loaded {len(items)}. {_SAME_SETTINGS}"
        )
    ids, given, trusted, losses = [], [], [], []
    for position, (row, item) in enumerate(zip(rows, items, strict=True)):
        where = f"{path} row {position + 2}"  # the header is row 1
        sample_id, loaded_id = row["id"], str(item["id"])
        if sample_id != loaded_id:
            raise Phase1Mismatch(
                f"{where}: id {sample_id!r}, but sample {position} of the data loaded now is {loaded_id!r}. "
                f"{_SAME_SETTINGS}"
            )
        try:
            index, label = int(row["index"]), int(row["given_label"])
        except ValueError:
            raise Phase1Mismatch(f"{where} (id {sample_id!r}): index and given_label must be integers") from None
        if index != position:
            raise Phase1Mismatch(f"{where} (id {sample_id!r}): index {index}, expected {position}")
        if row["trusted"] not in ("0", "1"):
            raise Phase1Mismatch(f"{where} (id {sample_id!r}): trusted must be 0 or 1, got {row['trusted']!r}")
        loaded_label = int(item["label"])
        if label != loaded_label:
            raise Phase1Mismatch(
                f"{where}: id {sample_id!r} had given label {_label_name(class_names, label)} in phase 1, but the "
                f"data loaded now gives {_label_name(class_names, loaded_label)}. {_SAME_SETTINGS}"
            )
        ids.append(sample_id)
        given.append(label)
        trusted.append(row["trusted"] == "1")
        try:
            losses.append(float(row.get("loss") or "nan"))
        except ValueError:
            raise Phase1Mismatch(f"{where} (id {sample_id!r}): loss must be a number, got {row['loss']!r}") from None
    return ids, given, trusted, losses


def _check_noise(output_dir: Path, ids: Sequence[str], given: Sequence[int], true_labels: Sequence[int]) -> None:
    """Simulation: the injected noise phase 1 recorded must be the truth and labels phase 2 simulates with."""
    path = output_dir / "noise.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a simulated phase 2 needs phase 1's record of the injected noise (train.json "
            "writes it); run phase 1 in simulation into the same output_dir first"
        )
    header, rows = read_csv(path)
    missing = {"id", "true_label", "noisy_label"} - set(header)
    if missing:
        raise Phase1Mismatch(f"{path}: missing column(s) {sorted(missing)}; found {header}")
    recorded = {row["id"]: (row, number) for number, row in enumerate(rows, start=2)}
    if len(true_labels) != len(ids):
        raise Phase1Mismatch(f"{len(true_labels)} true labels for {len(ids)} training samples")
    for sample_id, label, truth in zip(ids, given, true_labels, strict=True):
        if sample_id not in recorded:
            raise Phase1Mismatch(f"{path}: no row for training id {sample_id!r}. {_SAME_SETTINGS}")
        row, number = recorded[sample_id]
        if int(row["noisy_label"]) != label or int(row["true_label"]) != int(truth):
            raise Phase1Mismatch(
                f"{path} row {number}: id {sample_id!r} was recorded with true label {row['true_label']} and noisy "
                f"label {row['noisy_label']}, but this run simulates true label {int(truth)} and given label "
                f"{label}. {_SAME_SETTINGS}"
            )


def read_phase1(
    output_dir: str | Path,
    items: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    true_labels: Sequence[int] | None = None,
) -> Phase1Outputs:
    """Read phase 1's outputs and refuse if they disagree with the data phase 2 loaded.

    Args:
        output_dir: phase 1's run folder.
        items: the training items phase 2 loaded (dicts with ``id`` and ``label``), by training index.
        class_names: the class names phase 2 loaded.
        true_labels: simulation only: the true labels phase 2 simulates with (the oracle's answers), by training
            index; they must match phase 1's noise.csv. None for real data.

    Returns:
        Phase 1's ids, given labels, trusted mask, class names and final forget rate.

    Raises:
        FileNotFoundError: a file phase 1 writes is missing (phase 1 did not run into ``output_dir``).
        Phase1Mismatch: ids, given labels, class names or (simulation) injected noise differ; the message names
            the file and the first differing class or sample.
    """
    output_dir = Path(output_dir)
    names = _check_classes(output_dir, class_names)
    ids, given, trusted, losses = _read_selection(output_dir, items, names)
    if true_labels is not None:
        _check_noise(output_dir, ids, given, [int(t) for t in true_labels])
    forget_rate = phase1_forget_rate(output_dir)
    return Phase1Outputs(
        output_dir, ids, given, trusted, names, forget_rate, losses, phase1_class_rates(output_dir, names, forget_rate)
    )
