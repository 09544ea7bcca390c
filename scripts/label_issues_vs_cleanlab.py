"""How precise is the top of `alr issues`? Top-k precision (the share of the k first samples whose given label is
truly wrong, from the simulation's noise.csv) of `alr issues`'s ranking against cleanlab's ``find_label_issues``
on the same run and the same model probabilities (phase 1's model, eval mode, un-augmented training images).

Rankings compared:
- ``alr issues`` (the ``rank`` column: each class's suspects by loss, classes interleaved by estimated errors);
- the suspicion score alone (the order before issue 25: one scale over all classes, no interleaving);
- cleanlab ``find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence")`` (its default
  ``filter_by="prune_by_noise_rate"``; only the samples it flags are ranked, so its top-k is short when it flags
  fewer than k), and the same with ``"normalized_margin"``;
- self-confidence alone (``label_quality`` ascending over every sample).

With ``--oof CLEANLAB_RUN`` it adds cleanlab as its users run it: ``find_label_issues`` on out-of-fold
probabilities of K networks (the benchmark's cleanlab peer, same data settings). Also prints the largest class's
count in each top-k. Run on a phase-1 run with injected noise::

    alr train --output_dir runs/e10 --max_epochs 10
    python scripts/label_issues_vs_cleanlab.py runs/e10 [--oof runs/cleanlab10]
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from alr_monai.label_issues import label_issues, model_probabilities

KS = (50, 100, 200, 500, 1000)


def _precision(order: list[int], wrong: np.ndarray, k: int) -> tuple[float, int]:
    top = order[:k]
    return (float(np.mean(wrong[top])) if top else float("nan")), len(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument(
        "--oof",
        help="a cleanlab peer run of the same data (alr benchmark method cleanlab, or run_cleanlab_peer): adds "
        "cleanlab's own ranking from its out-of-fold probabilities (RUN/cleanlab/oof_fold*.npz)",
    )
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    from cleanlab.filter import find_label_issues

    probs = model_probabilities(run_dir)
    rows = label_issues(run_dir, probs, answers={})
    class_names = json.loads((run_dir / "classes.json").read_text())["class_names"]
    with open(run_dir / "noise.csv", newline="") as handle:
        truth = {row["id"]: (int(row["true_label"]), int(row["noisy_label"])) for row in csv.DictReader(handle)}
    by_index = sorted(rows, key=lambda row: row["index"])
    ids = [row["id"] for row in by_index]
    given = np.array([class_names.index(row["given_label"]) for row in by_index])
    wrong = np.array([truth[i][0] != truth[i][1] for i in ids])
    assert all(truth[i][1] == g for i, g in zip(ids, given, strict=True)), "noise.csv disagrees with selection.csv"

    orders = {
        "alr issues (interleaved)": [row["index"] for row in rows],
        "suspicion alone (before)": [
            row["index"] for row in sorted(rows, key=lambda r: (-r["suspicion"], -r["loss"], r["index"]))
        ],
        "cleanlab find_label_issues, self_confidence": list(
            find_label_issues(given, probs, return_indices_ranked_by="self_confidence")
        ),
        "cleanlab find_label_issues, normalized_margin": list(
            find_label_issues(given, probs, return_indices_ranked_by="normalized_margin")
        ),
        "self-confidence alone (label_quality)": list(np.argsort(probs[np.arange(len(given)), given], kind="stable")),
    }
    if args.oof:
        oof = np.full_like(probs, np.nan)
        for path in sorted(Path(args.oof, "cleanlab").glob("oof_fold*.npz")):
            with np.load(path) as fold:
                oof[fold["indices"]] = fold["probs"]
        if np.isnan(oof).any():
            raise SystemExit(f"{args.oof}: the out-of-fold probabilities do not cover every sample")
        orders["cleanlab find_label_issues, self_confidence, its out-of-fold probabilities"] = list(
            find_label_issues(given, oof, return_indices_ranked_by="self_confidence")
        )
    print(f"{run_dir}: {len(given)} samples, {int(wrong.sum())} wrong labels ({wrong.mean():.3f})")
    print(
        f"| ranking | flagged | {' | '.join(f'precision@{k}' for k in KS)} | "
        f"{' | '.join(f'largest class in top {k}' for k in KS)} |"
    )
    print("|---|---" + "|---" * 2 * len(KS) + "|")
    for name, order in orders.items():
        cells = []
        for k in KS:
            value, count = _precision(order, wrong, k)
            cells.append(f"{value:.3f}" + (f" (of {count})" if count < k else ""))
        shares = []
        for k in KS:
            counts = Counter(int(given[i]) for i in order[:k])
            cls, count = counts.most_common(1)[0]
            shares.append(f"{count} {class_names[cls]}")
        print(f"| {name} | {len(order)} | {' | '.join(cells)} | {' | '.join(shares)} |")


if __name__ == "__main__":
    main()
