"""What validating every second epoch would change in phase 1's model choice, read from finished runs (issue 27).

Phase 1 keeps the epoch with the best validation balanced accuracy. With ``--val_interval 2`` only even epochs
are validated, so the choice can only fall on one of them. For each phase-1 run folder under the given benchmark
or suite outputs (``<out>/<cell>/<method>/<noise>/seed<k>/metrics.json``, or one level less for a matrix), this
prints how often the chosen epoch would change and the validation balanced accuracy given up. The test set is not
read: its number exists only for the epoch that was chosen. A table of numbers, never a test::

    python scripts/val_interval_study.py runs/suite [more output folders]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def choice_change(history: list[dict], interval: int = 2) -> tuple[bool, float] | None:
    """Whether the best epoch changes when only every ``interval``-th epoch is validated, and the validation
    balanced accuracy given up (ties go to the earlier epoch, as the best-metric handler keeps the first best)."""
    curve = {e["epoch"]: e["val"]["val_balanced_accuracy"] for e in history if e.get("val")}
    kept = {epoch: value for epoch, value in curve.items() if epoch % interval == 0}
    if not kept:
        return None
    best = max(curve, key=lambda epoch: (curve[epoch], -epoch))
    best_kept = max(kept, key=lambda epoch: (kept[epoch], -epoch))
    return best != best_kept, curve[best] - kept[best_kept]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--interval", type=int, default=2)
    args = parser.parse_args()
    by_method: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    for folder in args.folders:
        for path in sorted({*folder.glob("*/*/*/seed*/metrics.json"), *folder.glob("*/*/seed*/metrics.json")}):
            summary = json.loads(path.read_text())
            if "test" not in summary:  # an unfinished phase 1
                continue
            found = choice_change(summary.get("history", []), args.interval)
            if found is not None:
                by_method[path.parents[2].name].append(found)
    print("| method | runs | choice changes | validation bal. acc. given up: mean | max |")
    print("|---|---|---|---|---|")
    everything = [row for rows in by_method.values() for row in rows]
    for method, rows in sorted(by_method.items()) + [("all", everything)]:
        if rows:
            losses = [loss for _, loss in rows]
            changed = sum(change for change, _ in rows)
            print(f"| {method} | {len(rows)} | {changed} | {statistics.mean(losses):.4f} | {max(losses):.4f} |")


if __name__ == "__main__":
    main()
