"""Refit: after our selection, train the final phase-1 model afresh on the trusted set (``ours_refit``).

Co-teaching's peers see every sample while the forget rate ramps up, so they have already fitted some wrong labels
when the cut finally stands; cleanlab instead trains its final network from scratch on the samples it keeps. This
does the same with our trusted set: phase 1 runs as usual into ``<run>/selection/``; then one network (the CE
recipe, ``configs/presets/ce.json``, with the same network, optimiser, epochs and imbalance settings) is trained
from random initialisation on the trusted samples only, into the run folder itself, through the same subset overlay
the cleanlab peer uses. The run folder then holds what every phase 1 writes (metrics.json with ``test``,
models/model.pt, classes.json, noise.csv) and selection.csv is the SELECTION's (trusted = our cut, loss = the
peers'), so relabel rounds run on it unchanged: their pool is what our selection suspected. metrics.json's
``last.train`` carries the selection's metrics (estimate, precision, clean recall) and a ``refit`` section says
where they came from.

Resume: the selection is done when ``selection/metrics.json`` has ``test``; the refit when the run's metrics.json
has the ``refit`` section, written last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from alr_monai.utils import atomic_write_bytes, atomic_write_json, read_csv, read_json_or_empty

__all__ = ["SELECTION_DIR", "run_refit"]

SELECTION_DIR = "selection"


def run_refit(
    files: Sequence[str],
    overrides: Mapping[str, Any],
    log: Callable[[str], None] = print,
) -> Path:
    """Our phase 1 into ``<output_dir>/selection``, then one network refitted on its trusted set into ``output_dir``.

    Args:
        files: the refit's bundle config files: train.json first, then the one-network CE preset (the selection
            runs train.json alone, our defaults; relabel rounds on the run use these same files).
        overrides: the run's overrides, with ``output_dir``.
        log: where progress lines go.

    Returns:
        The run folder.
    """
    from alr_monai.workflow import preset_files, run_workflow

    run_dir = Path(overrides["output_dir"])
    if "refit" in read_json_or_empty(run_dir / "metrics.json"):
        return run_dir
    selection_dir = run_dir / SELECTION_DIR
    if not read_json_or_empty(selection_dir / "metrics.json").get("test"):
        log("selection: our phase 1")
        run_workflow([files[0]], {**overrides, "output_dir": str(selection_dir)})
    header, rows = read_csv(selection_dir / "selection.csv")
    trusted = [int(row["index"]) for row in rows if row["trusted"] == "1"]
    if not trusted:
        raise ValueError(f"{selection_dir / 'selection.csv'}: the selection trusted no sample; nothing to refit on")
    refit_files = [*files, *preset_files(["cleanlab_subset"])]
    if not read_json_or_empty(run_dir / "metrics.json").get("test"):
        log(f"refit: one network from scratch on the {len(trusted)} of {len(rows)} trusted samples")
        run_workflow(refit_files, {**overrides, "cleanlab#train_indices": trusted})
    _write_outputs(run_dir, selection_dir, len(trusted), len(rows))
    return run_dir


def _write_outputs(run_dir: Path, selection_dir: Path, num_trusted: int, num_samples: int) -> None:
    """The selection's selection.csv and metrics into the run folder; the ``refit`` section last."""
    path = run_dir / "metrics.json"
    metrics = read_json_or_empty(path)
    if "test" not in metrics:
        raise RuntimeError(f"{path}: the refitted model has no test metrics; rerun to finish its training")
    atomic_write_bytes(run_dir / "selection.csv", (selection_dir / "selection.csv").read_bytes(), private=True)
    selection_metrics = read_json_or_empty(selection_dir / "metrics.json")
    train = selection_metrics["last"]["train"]
    metrics["last"]["train"].update(train)
    if metrics.get("history"):
        metrics["history"][-1]["train"].update(train)
    metrics["refit"] = {
        "selection_folder": str(selection_dir),
        "num_trusted": num_trusted,
        "num_samples": num_samples,
        "selection_test": selection_metrics.get("test", {}).get("balanced_accuracy"),
    }
    atomic_write_json(path, metrics)
