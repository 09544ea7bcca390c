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
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from alr_monai.algorithms.vog import VoGBuffer, normalise_per_class
from alr_monai.data.noise import NoisyLabels


def lowest_share(scores: torch.Tensor, labels: torch.Tensor, num_classes: int, share: float) -> torch.Tensor:
    """Bool mask of each given class's lowest ``share`` of class-normalised scores."""
    normalised = normalise_per_class(scores, labels, num_classes)
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).reshape(-1)
        count = round(members.numel() * share)
        mask[members[torch.argsort(normalised[members], stable=True)[:count]]] = True
    return mask


def replayed_scores(buffer_state: dict, sketch_dim: int | None = None, seed: int = 0) -> torch.Tensor:
    """VoG over the snapshots a checkpointed exact buffer holds, recorded again into a new buffer: exact (float32)
    or sketched as a run with ``vog#sketch_dim`` would store it (projected in float32, kept in float16)."""
    snapshots, seen = buffer_state["snapshots"], buffer_state["seen"]
    num_snapshots, num_samples, dim = snapshots.shape
    dtype = torch.float32 if sketch_dim is None else torch.float16
    buffer = VoGBuffer(num_samples, dim, num_snapshots, dtype=dtype, sketch_dim=sketch_dim, sketch_seed=seed)
    for slot in range(num_snapshots):  # the window's variance does not depend on the slots' order
        indices = torch.nonzero(seen[slot]).reshape(-1)
        if indices.numel():
            buffer.record(indices, snapshots[slot, indices].float())
            buffer.commit()
    return buffer.scores()


def rms_scores(buffer_state: dict) -> torch.Tensor:
    """The sketch's statistic on the exact snapshots: root mean square of the per-dimension stds."""
    values, weights = buffer_state["snapshots"].float(), buffer_state["seen"].float().unsqueeze(-1)
    counts = weights.sum(0)
    mean = (values * weights).sum(0) / counts.clamp_min(1)
    variance = (((values - mean) ** 2) * weights).sum(0) / counts.clamp_min(1)
    return torch.where(counts.squeeze(1) >= 2, variance.mean(1).sqrt(), float("nan"))


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
    clean = torch.from_numpy(~NoisyLabels.load(args.run_dir / "noise.csv").is_noisy)  # truth, for the metric only
    num_classes = int(labels.max()) + 1
    peers = []  # per peer: its checkpointed buffer, exact VoG, and exact VoG's lowest share
    for peer in range(int(state["num_buffers"])):
        sub = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"buffer{peer}.")}
        exact = replayed_scores(sub)
        peers.append((sub, exact, lowest_share(exact, labels, num_classes, args.share)))
    exact_clean = np.mean([float(clean[fill].float().mean()) for _, _, fill in peers])
    print(f"{checkpoint}: {labels.numel()} samples, {num_classes} classes, share {args.share}")
    print("sketch_dim | spearman (mean, min) | fill overlap (mean, min) | fill clean share | exact fill clean share")
    # "rms": exact snapshots, the sketch's statistic (root mean square instead of mean of the per-dim stds)
    for dim in [*(int(d) for d in args.dims.split(",")), "rms"]:
        spearman, overlap, clean_share = [], [], []
        for sub, exact, exact_fill in peers:
            for seed in range(args.seeds if dim != "rms" else 1):
                scores = rms_scores(sub) if dim == "rms" else replayed_scores(sub, dim, seed)
                finite = torch.isfinite(exact)
                spearman.append(spearmanr(exact[finite].numpy(), scores[finite].numpy()).statistic)
                fill = lowest_share(scores, labels, num_classes, args.share)
                overlap.append(float((fill & exact_fill).sum()) / max(1, int(exact_fill.sum())))
                clean_share.append(float(clean[fill].float().mean()))
        print(
            f"{dim!s:>10} | {np.mean(spearman):.3f}, {np.min(spearman):.3f} | {np.mean(overlap):.3f}, "
            f"{np.min(overlap):.3f} | {np.mean(clean_share):.3f} | {exact_clean:.3f}"
        )


if __name__ == "__main__":
    main()
