"""cleanlab's confident learning as a peer method, run with the bundle's own network and CE training recipe.

``cleanlab.classification.CleanLearning`` is what users pick instead of alr_monai, so the benchmark runs its recipe
with everything else held equal:

1. K-fold out-of-fold probabilities: folds stratified by the GIVEN label and seeded by the run's seed; for each fold
   one network is trained by the bundle itself (``train.json`` + ``configs/presets/ce.json``: one peer, forget rate
   0, the same network, optimizer, learning rate, weight decay, batch size and augmentation as the CE baseline)
   on the other folds for ``fold_epochs`` epochs, into ``<run>/cleanlab/fold<k>/``. The overlay
   ``configs/presets/cleanlab_subset.json`` restricts only the training dataset, so every item keeps its position
   in the full training set as ``index``. The fold's model chosen on the validation set (expert-clean, as for every
   method) then predicts softmax probabilities for the held-out fold in eval mode without augmentation; they are
   saved atomically as ``<run>/cleanlab/oof_fold<k>.npz``, and a fold with that file is not trained again.
2. ``cleanlab.filter.find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate")`` flags label issues and
   ``cleanlab.rank.get_label_quality_scores`` scores every sample (self-confidence, p of the given label), from the
   GIVEN labels only (saved as ``<run>/cleanlab/label_issues.npz``).
3. The final model: CE, one network, the full ``max_epochs`` on the samples cleanlab keeps, with the bundle's usual
   validation model choice and test evaluation, into the run folder itself, so the folder holds what every
   method's phase 1 writes (metrics.json with ``test``, selection.csv with trusted = kept by cleanlab,
   classes.json, noise.csv, models/model.pt) and phase-2 relabel rounds run on it unchanged: their pool is the
   samples cleanlab flagged.

Ground truth never reaches training or the flags: the true labels are read from noise.csv only afterwards, for the
simulation metrics in metrics.json ``last.train`` (selection precision, clean recall per class, and how well
``1 - label quality`` ranks the label errors). Cost: K + 1 trainings (K of ``fold_epochs`` on (K-1)/K of the data,
one of ``max_epochs`` on the kept samples).

Resume: a fold with its .npz is done; a final training is done when metrics.json has ``test``; the run is done
when metrics.json also has the ``cleanlab`` section, written last.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alr_monai.utils import read_json_or_empty

__all__ = ["OVERLAY", "run_cleanlab_peer", "stratified_folds", "subset_items"]

OVERLAY = "cleanlab_subset"
"""The preset overlay (``configs/presets/cleanlab_subset.json``) that restricts training to given indices."""


def subset_items(items: Sequence[Mapping[str, Any]], indices: Sequence[int] | None) -> list:
    """The items at ``indices`` (positions in ``items``), in that order; all items for None.

    The items are not copied, so each keeps its ``index`` (its position in the full training set), which the
    per-sample trackers, sized for the full set, key on.
    """
    if indices is None:
        return list(items)
    positions = [int(i) for i in indices]
    bad = [i for i in positions if not 0 <= i < len(items)]
    if bad:
        raise IndexError(f"cleanlab#train_indices: {bad[:5]} outside the training set of {len(items)} samples")
    return [items[i] for i in positions]


def stratified_folds(labels: Sequence[int] | np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """Fold number (0..num_folds-1) of every sample, stratified by label and shuffled with ``seed``.

    Each label's samples are shuffled and dealt round-robin to the folds, continuing where the previous label
    stopped, so every fold gets about 1/num_folds of every label and the folds differ in size by at most one.
    A label with fewer samples than folds is simply absent from some folds.
    """
    labels = np.asarray(labels).reshape(-1)
    if num_folds < 2:
        raise ValueError(f"cleanlab_folds must be at least 2, got {num_folds}")
    if len(labels) < num_folds:
        raise ValueError(f"{len(labels)} samples cannot be split into {num_folds} folds")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    start = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        folds[members] = (start + np.arange(len(members))) % num_folds
        start = (start + len(members)) % num_folds
    return folds


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    from alr_monai.utils import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def _parse(config_files: Sequence[str], overrides: Mapping[str, Any]):
    """The merged bundle config, parsed lazily (nothing runs: no lock, no files written)."""
    from monai.bundle import ConfigParser

    from alr_monai.workflow import coerce_literal

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    parser.update(pairs={key: coerce_literal(value) for key, value in overrides.items()})
    return parser


def _predict_probs(network, items: Sequence[Mapping[str, Any]], transform, device) -> np.ndarray:
    """Softmax probabilities (len(items), C) in eval mode, un-augmented, in the order of ``items``."""
    import torch
    from monai.data import DataLoader, Dataset

    from alr_monai.evaluation import predict

    loader = DataLoader(Dataset(list(items), transform), batch_size=256, shuffle=False, num_workers=0)
    outputs = predict(network, loader, device)
    order = [int(item["index"]) for item in items]
    if outputs["index"].tolist() != order:
        raise RuntimeError("held-out predictions came back in another order than the items")
    return torch.softmax(outputs["logits"].double(), 1).numpy()


def run_cleanlab_peer(
    config_files: Sequence[str],
    overrides: Mapping[str, Any],
    num_folds: int = 5,
    fold_epochs: int | None = None,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Run (or resume) the cleanlab peer into ``overrides["output_dir"]``; see the module docstring.

    Args:
        config_files: phase-1 config files of the CE baseline (``train.json``, ``configs/presets/ce.json``); the
            subset overlay is appended here. Phase 2 uses these same files (without the overlay).
        overrides: bundle keys (``output_dir``, ``seed``, ``simulation#noise_rate``, ``max_epochs``, ...).
        num_folds: K of the K-fold out-of-fold probabilities.
        fold_epochs: epochs per fold network; None = the run's ``max_epochs``.
        log: where progress lines go (None: silent).

    Returns:
        The run folder.

    Raises:
        ValueError: a saved fold or label-issue file does not fit this run's folds or labels (other settings
            than the run that wrote it), naming the file.
    """
    from alr_monai.workflow import preset_files, run_workflow

    say = log or (lambda _message: None)
    if "output_dir" not in overrides:
        raise ValueError("run_cleanlab_peer: overrides must set output_dir (the run folder)")
    run_dir = Path(overrides["output_dir"])
    state_dir = run_dir / "cleanlab"
    if "cleanlab" in read_json_or_empty(run_dir / "metrics.json"):
        return run_dir
    base_files = list(config_files)
    subset_files = [*base_files, *preset_files([OVERLAY])]

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*resolved to an importable callable.*")
        parser = _parse(base_files, overrides)
        items = parser.get_parsed_content("train#items")
        class_names = [str(name) for name in parser.get_parsed_content("class_names")]
        seed = int(parser.get_parsed_content("seed"))
        max_epochs = int(parser.get_parsed_content("max_epochs"))
    fold_epochs = max_epochs if fold_epochs is None else int(fold_epochs)
    given = np.array([int(item["label"]) for item in items], dtype=np.int64)
    folds = stratified_folds(given, num_folds, seed)

    pred_probs = np.full((len(items), len(class_names)), np.nan)
    network = None
    for k in range(num_folds):
        held_out = np.flatnonzero(folds == k)
        path = state_dir / f"oof_fold{k}.npz"
        if path.is_file():
            saved = _load_npz(path)
            if not np.array_equal(saved["indices"], held_out):
                raise ValueError(
                    f"{path} holds another fold than this run's fold {k} (other cleanlab_folds, seed or data?); "
                    f"delete {state_dir} to recompute the folds"
                )
            pred_probs[held_out] = saved["probs"]
            continue
        say(f"cleanlab fold {k + 1}/{num_folds}: training on {len(items) - len(held_out)} samples")
        fold_dir = state_dir / f"fold{k}"
        run_workflow(
            subset_files,
            {
                **overrides,
                "output_dir": str(fold_dir),
                "max_epochs": fold_epochs,
                "cleanlab#train_indices": np.flatnonzero(folds != k).tolist(),
                # a fold model is never tested: the test set gives the final number only
                "run": ["$@train#trainer.run()"],
            },
        )
        if network is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*resolved to an importable callable.*")
                network = parser.get_parsed_content("network")
                transform = parser.get_parsed_content("validate#preprocessing")
                device = parser.get_parsed_content("device")
        from alr_monai.networks import load_weights

        # the fold's model chosen on the validation set, as the bundle chooses for every method
        load_weights(network, fold_dir / "models" / "model.pt", device)
        probs = _predict_probs(network, [items[i] for i in held_out], transform, device)
        _save_npz(path, indices=held_out, probs=probs)
        pred_probs[held_out] = probs

    issues, quality = _label_issues(state_dir / "label_issues.npz", given, pred_probs)
    kept = np.flatnonzero(~issues)
    if not read_json_or_empty(run_dir / "metrics.json").get("test"):
        say(f"cleanlab final model: CE on the {len(kept)} of {len(items)} samples cleanlab keeps")
        run_workflow(subset_files, {**overrides, "cleanlab#train_indices": kept.tolist()})
    _write_outputs(run_dir, items, class_names, given, pred_probs, issues, quality, num_folds, fold_epochs)
    return run_dir


def _label_issues(path: Path, given: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's flags and label-quality scores from the GIVEN labels, computed once and kept in ``path``."""
    if path.is_file():
        saved = _load_npz(path)
        if not np.array_equal(saved["given_labels"], given):
            raise ValueError(f"{path} was computed for other labels than this run's; delete it to recompute")
        return saved["issues"].astype(bool), saved["quality"]
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:  # pragma: no cover - the benchmark extra is missing
        raise ImportError(
            "the cleanlab peer needs cleanlab: pip install 'alr_monai[benchmark]' (or cleanlab==2.9.0)"
        ) from None
    if not np.isfinite(pred_probs).all():
        raise RuntimeError("some training samples got no out-of-fold probabilities")
    # n_jobs=1: cleanlab would otherwise fork one process per core, on a machine other runs share
    issues = find_label_issues(given, pred_probs, filter_by="prune_by_noise_rate", n_jobs=1)
    quality = get_label_quality_scores(given, pred_probs)
    _save_npz(path, given_labels=given, issues=issues.astype(bool), quality=np.asarray(quality, dtype=np.float64))
    return issues.astype(bool), np.asarray(quality, dtype=np.float64)


def _write_outputs(
    run_dir: Path,
    items: Sequence[Mapping[str, Any]],
    class_names: list[str],
    given: np.ndarray,
    pred_probs: np.ndarray,
    issues: np.ndarray,
    quality: np.ndarray,
    num_folds: int,
    fold_epochs: int,
) -> None:
    """selection.csv for the full training set (trusted = kept), then metrics.json's additions, written last."""
    from alr_monai.algorithms.metrics import label_error_ranking, per_class_kept_fraction, selection_metrics
    from alr_monai.data.noise import NoisyLabels
    from alr_monai.handlers.outputs import SELECTION_COLUMNS
    from alr_monai.utils import atomic_write_csv, atomic_write_json

    kept = ~issues
    # the out-of-fold cross-entropy of the given label stands in the loss column
    oof_loss = -np.log(np.clip(pred_probs[np.arange(len(given)), given], 1e-12, None))
    rows = [
        {
            "id": item["id"],
            "index": i,
            "given_label": int(given[i]),
            "loss": float(oof_loss[i]),
            "vog": "",
            "kept_by_net1": int(kept[i]),
            "kept_by_net2": "",
            "trusted": int(kept[i]),
            "label_quality": float(quality[i]),
        }
        for i, item in enumerate(items)
    ]
    atomic_write_csv(run_dir / "selection.csv", rows, [*SELECTION_COLUMNS, "label_quality"])

    num_classes = len(class_names)
    train: dict[str, Any] = {"noise_rate_estimate": float(issues.mean()), "kept_fraction": float(kept.mean())}
    for name, flagged in zip(class_names, per_class_kept_fraction(issues, given, num_classes), strict=True):
        train[f"noise_rate_estimate/{name}"] = flagged
    noise_file = run_dir / "noise.csv"
    if noise_file.is_file():  # simulation: the truth, for metrics only
        noise = NoisyLabels.load(noise_file)
        truth_of = dict(zip(noise.ids, noise.true_labels.tolist(), strict=True))
        missing = [str(item["id"]) for item in items if str(item["id"]) not in truth_of]
        if missing:
            raise ValueError(f"{noise_file}: no row for training id(s) {missing[:5]}")
        true = np.array([truth_of[str(item["id"])] for item in items], dtype=np.int64)
        selection = selection_metrics(kept, given, true, num_classes)
        train.update(
            {
                "noise_rate_true": float((given != true).mean()),
                "selection_precision": selection["precision"],
                "clean_recall": selection["clean_recall"],
                "min_clean_recall": selection["min_clean_recall"],
            }
        )
        for c, name in enumerate(class_names):
            train[f"clean_recall/{name}"] = selection["per_class_clean_recall"][c]
            train[f"kept_fraction/{name}"] = selection["per_class_kept_fraction"][c]
            labelled = given == c
            train[f"noise_rate_true/{name}"] = float((true[labelled] != c).mean()) if labelled.any() else float("nan")
        train.update(label_error_ranking(1.0 - quality, given, true, class_names))
    else:
        for name, fraction in zip(class_names, per_class_kept_fraction(kept, given, num_classes), strict=True):
            train[f"kept_fraction/{name}"] = fraction

    path = run_dir / "metrics.json"
    metrics = read_json_or_empty(path)
    if "test" not in metrics:
        raise RuntimeError(f"{path}: the final cleanlab model has no test metrics; rerun to finish its training")
    metrics["last"]["train"].update(train)
    if metrics.get("history"):
        metrics["history"][-1]["train"].update(train)
    metrics["cleanlab"] = {
        "version": _cleanlab_version(),
        "folds": num_folds,
        "fold_epochs": fold_epochs,
        "filter_by": "prune_by_noise_rate",
        "label_quality": "self_confidence",
        "num_flagged": int(issues.sum()),
        "num_kept": int(kept.sum()),
        "fold_folders": str(run_dir / "cleanlab"),
    }
    atomic_write_json(path, metrics)


def _cleanlab_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cleanlab")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"
