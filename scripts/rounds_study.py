"""Issue 11's study: how recalibration settings turn expert labels into accuracy, read from benchmark folders.

Each folder is an ``alr benchmark`` output (one preset per recalibration variant, the same phase 1 copied into
each). Prints, per variant and noise setting (mean ± std over seeds): phase 1's test balanced accuracy, the test
balanced accuracy after the last round, the gain, how many rounds adopted their model, and the epoch-to-epoch
spread of validation balanced accuracy over the last 10 recalibration epochs (the model each round would choose
from). A table of numbers, never a test::

    python scripts/rounds_study.py runs/rounds_base runs/rounds_A runs/rounds_B --acquisition entropy
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

SPREAD_EPOCHS = 10


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def recalibration_val_curve(cell: Path) -> list[float]:
    """Validation balanced accuracy after each recalibration epoch, from the cell's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alr_monai.handlers.tensorboard import phase1_epochs

    by_step: dict[int, float] = {}
    phase1 = phase1_epochs(cell)
    for events in sorted((cell / "tensorboard").glob("events.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag == "val/balanced_accuracy":  # recalibration continues phase 1's epoch count (issue 25)
                by_step.update({e.step: e.value for e in accumulator.Scalars(tag) if e.step > phase1})
            elif tag.startswith("recalibration/") and tag.endswith("val_balanced_accuracy"):  # runs before that
                by_step.update({phase1 + e.step: e.value for e in accumulator.Scalars(tag)})
    return [by_step[step] for step in sorted(by_step)]


def study_rows(folder: Path, acquisition: str) -> list[dict]:
    rows = []
    for rounds_csv in sorted(folder.glob(f"*/*/seed*/relabel_{acquisition}/rounds.csv")):
        cell = rounds_csv.parent.parent
        with open(rounds_csv, newline="") as handle:
            table = list(csv.DictReader(handle))
        state = json.loads((rounds_csv.parent / "state.json").read_text())
        choices = [entry.get("metrics", {}).get("model_choice", "") for entry in state["history"]]
        curve = recalibration_val_curve(cell)
        pseudo = [entry.get("metrics", {}).get("pseudo_label_accuracy") for entry in state["history"]]
        rows.append(
            {
                "setting": cell.parent.name,
                "seed": cell.name,
                "phase1": float(table[0]["test_balanced_accuracy"]),
                "last": float(table[-1]["test_balanced_accuracy"]),
                "adopted": sum(choice == "adopted" for choice in choices),
                "rounds": len(choices),
                "spread": statistics.pstdev(curve[-SPREAD_EPOCHS:]) if len(curve) >= 2 else float("nan"),
                "pseudo_accuracy": [p for p in pseudo if p is not None],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--acquisition", default="entropy")
    args = parser.parse_args()
    print(
        "| variant | setting | seeds | phase 1 | after last round | gain | rounds adopted | val spread (last 10) |"
        " pseudo-label accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        rows = study_rows(folder, args.acquisition)
        for setting in sorted({row["setting"] for row in rows}):
            cells = [row for row in rows if row["setting"] == setting]
            pseudo = [p for row in cells for p in row["pseudo_accuracy"]]
            print(
                f"| {folder.name} | {setting} | {len(cells)} | {_mean_std([r['phase1'] for r in cells])} | "
                f"{_mean_std([r['last'] for r in cells])} | {_mean_std([r['last'] - r['phase1'] for r in cells])} | "
                f"{sum(r['adopted'] for r in cells)}/{sum(r['rounds'] for r in cells)} | "
                f"{_mean_std([r['spread'] for r in cells])} | "
                f"{_mean_std(pseudo) if pseudo else '-'} |"
            )


if __name__ == "__main__":
    main()
