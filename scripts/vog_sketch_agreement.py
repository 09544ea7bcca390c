"""How closely a projected (sketched) VoG buffer ranks samples like the exact one, from a phase-1 checkpoint.

The projection is linear, so the sketch that a run with ``vog#sketch_dim m`` would have stored is the exact
snapshots times :func:`alr_monai.algorithms.vog.sketch_matrix`; this script rebuilds it from a checkpoint of an
exact run and compares, per peer and projection seed:

- Spearman correlation of the raw scores with the exact VoG;
- overlap of the VoG fill: within each given class, the share of the exact run's lowest-20% class-normalised
  VoG that the sketch also puts in its lowest 20%;
- the share of truly clean labels in that lowest 20% (needs the run's noise.csv; truth read for metrics only).

Usage: python scripts/vog_sketch_agreement.py RUN_DIR [--dims 4,8,16,32] [--seeds 5]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from alr_monai.algorithms.vog import VoGBuffer, normalise_per_class, sketch_matrix


def lowest_share(scores: torch.Tensor, labels: torch.Tensor, num_classes: int, share: float) -> torch.Tensor:
    """Bool mask of each given class's lowest ``share`` of class-normalised scores."""
    normalised = normalise_per_class(scores, labels, num_classes)
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).reshape(-1)
        count = round(members.numel() * share)
        mask[members[torch.argsort(normalised[members], stable=True)[:count]]] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--dims", default="4,8,16,32")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.2)
    args = parser.parse_args()
    checkpoint = max((args.run_dir / "checkpoints").glob("checkpoint_epoch=*.pt"), key=lambda p: p.stat().st_mtime)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["vog"]
    labels = state["labels"]
    with open(args.run_dir / "noise.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    clean = torch.tensor([row["true_label"] == row["noisy_label"] for row in rows])
    num_classes = int(labels.max()) + 1
    print(f"{checkpoint}: {labels.numel()} samples, {num_classes} classes, share {args.share}")
    print("sketch_dim | spearman (mean, min) | fill overlap (mean, min) | fill clean share | exact fill clean share")
    # "rms": exact snapshots, the sketch's statistic (root mean square instead of mean of the per-dim stds)
    for dim in [*(int(d) for d in args.dims.split(",")), "rms"]:
        spearman, overlap, clean_share, exact_clean = [], [], [], []
        for peer in range(int(state["num_buffers"])):
            sub = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"buffer{peer}.")}
            exact = VoGBuffer(labels.numel(), int(sub["dim"]), int(sub["num_snapshots"]))
            exact.load_state_dict(sub)
            exact_scores = exact._compute_scores()
            exact_fill = lowest_share(exact_scores, labels, num_classes, args.share)
            exact_clean.append(float(clean[exact_fill].float().mean()))
            for seed in range(args.seeds if dim != "rms" else 1):
                if dim == "rms":
                    values, weights = sub["snapshots"].float(), sub["seen"].float().unsqueeze(-1)
                    mean = (values * weights).sum(0) / weights.sum(0).clamp_min(1)
                    variance = (((values - mean) ** 2) * weights).sum(0) / weights.sum(0).clamp_min(1)
                    scores = torch.where(weights.sum(0).squeeze(1) >= 2, variance.mean(1).sqrt(), float("nan"))
                    spearman.append(spearmanr(exact_scores.numpy(), scores.numpy(), nan_policy="omit").statistic)
                    fill = lowest_share(scores, labels, num_classes, args.share)
                    overlap.append(float((fill & exact_fill).sum()) / max(1, int(exact_fill.sum())))
                    clean_share.append(float(clean[fill].float().mean()))
                    continue
                sketched = VoGBuffer(
                    labels.numel(), int(sub["dim"]), int(sub["num_snapshots"]), sketch_dim=dim, sketch_seed=seed
                )
                # stored in float16, as the documented large-data setting does
                projected = sub["snapshots"].float() @ sketch_matrix(int(sub["dim"]), dim, seed)
                sketched._snapshots = projected.to(torch.float16)
                sketched._seen = sub["seen"].clone()
                scores = sketched._compute_scores()
                finite = torch.isfinite(exact_scores)
                spearman.append(spearmanr(exact_scores[finite].numpy(), scores[finite].numpy()).statistic)
                fill = lowest_share(scores, labels, num_classes, args.share)
                overlap.append(float((fill & exact_fill).sum()) / max(1, int(exact_fill.sum())))
                clean_share.append(float(clean[fill].float().mean()))
        print(
            f"{dim!s:>10} | {np.mean(spearman):.3f}, {np.min(spearman):.3f} | {np.mean(overlap):.3f}, "
            f"{np.min(overlap):.3f} | {np.mean(clean_share):.3f} | {np.mean(exact_clean):.3f}"
        )


if __name__ == "__main__":
    main()
