"""Scale benchmark: one phase-1 epoch (co-teaching + VoG) and one acquisition pass at 10k-200k images.

Writes synthetic MedMNIST-layout sets (8 classes, uint8 RGB, class-dependent stripe textures so training
learns something) into ``--work``, then for each size runs, in a fresh subprocess so peak RSS is per size:

1. the real bundle (``train.json`` through :func:`alr_monai.workflow.run_workflow`) for one epoch, with a
   small validation and test split (1000 images each);
2. one entropy acquisition pass over the whole training set with the trained network (eval mode, no
   augmentation, uncached), as a relabel round scores its pool.

It prints and writes (``--out``: ``scale.csv``, ``scale.png``) the epoch's wall time (training loop,
validation, the VoG and selection handlers' share), the acquisition pass's wall time, peak RSS and the
per-sample state's bytes (``VoGHandler.state_bytes``, ``SmallLossSelectionHandler.state_bytes``), and the
log-log slope of time and memory against N over the 28x28 sizes. A number, not a test:

    python scripts/benchmark_scale.py --sizes 10k,50k,10k@64 --threads 2 --out docs/benchmark_scale
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

NUM_CLASSES = 8
EVAL_SIZE = 1000  # validation and test images: enough for the metrics, small next to the training set
COLUMNS = (
    "spec",
    "n_train",
    "image_size",
    "threads",
    "cache",
    "vog_dtype",
    "vog_sketch_dim",
    "setup_s",
    "epoch_s",
    "train_loop_s",
    "vog_s",
    "selection_s",
    "validation_s",
    "acquisition_s",
    "total_s",
    "base_rss_mib",
    "peak_rss_phase1_mib",
    "peak_rss_mib",
    "vog_bytes_per_sample",
    "selection_bytes_per_sample",
)


def parse_spec(spec: str) -> tuple[int, int]:
    """``"50k"`` -> (50000, 28); ``"10k@64"`` -> (10000, 64); plain integers are counts."""
    count, _, size = spec.strip().lower().partition("@")
    scale = 1000 if count.endswith("k") else 1
    return int(float(count.rstrip("k")) * scale), int(size or 28)


def synthetic_images(labels: np.ndarray, size: int, rng: np.random.Generator, chunk: int = 2000) -> np.ndarray:
    """uint8 (N, size, size, 3): each class a stripe texture of its own orientation, frequency and tint.

    The phase, contrast and brightness vary per image and Gaussian noise is added, so the class is in the
    texture, not in any single pixel.
    """
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    angles = np.arange(NUM_CLASSES) * np.pi / NUM_CLASSES
    freqs = 2.0 + (np.arange(NUM_CLASSES) % 3) * 1.5
    tints = 0.6 + 0.4 * np.stack([np.cos(angles), np.sin(angles + 1.0), np.cos(2 * angles + 2.0)], 1) ** 2
    for start in range(0, len(labels), chunk):
        c = labels[start : start + chunk]
        n = len(c)
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
        along = x[None] * np.cos(angles[c])[:, None, None] + y[None] * np.sin(angles[c])[:, None, None]
        wave = np.sin(2 * np.pi * freqs[c][:, None, None] * along + phase)  # (n, S, S)
        contrast = rng.uniform(40, 70, (n, 1, 1, 1)).astype(np.float32)
        bright = rng.uniform(100, 150, (n, 1, 1, 1)).astype(np.float32)
        image = bright + contrast * wave[..., None] * tints[c][:, None, None, :]
        image += rng.normal(0, 20, image.shape).astype(np.float32)
        out[start : start + n] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def write_synthetic(path: Path, n_train: int, size: int, seed: int = 0) -> None:
    """A MedMNIST-layout .npz (train/val/test images and (N, 1) labels), written once and reused."""
    if path.is_file():
        return
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", EVAL_SIZE), ("test", EVAL_SIZE)):
        labels = rng.integers(0, NUM_CLASSES, n).astype(np.uint8)
        arrays[f"{split}_images"] = synthetic_images(labels, size, rng)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Timed:
    """Wraps a handler method with a wall-time accumulator (the benchmark's only instrumentation)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, cls: type, name: str, label: str) -> None:
        original = getattr(cls, name)

        def timed(obj, *args, **kwargs):
            started = time.perf_counter()
            try:
                return original(obj, *args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started

        setattr(cls, name, timed)


def run_one(args: argparse.Namespace) -> dict:
    """Child process: one size. Returns the row (also printed as JSON on the last stdout line)."""
    import torch

    torch.set_num_threads(args.threads)
    from monai.data import DataLoader, Dataset

    from alr_monai.engines import CoTeachingTrainer
    from alr_monai.handlers import SmallLossSelectionHandler, VoGHandler
    from alr_monai.relabel.acquire import acquire
    from alr_monai.workflow import bundle_file, run_workflow

    n_train, size = parse_spec(args.child)
    data = Path(args.work) / f"synthetic_{n_train}_{size}.npz"
    run_dir = Path(args.work) / "runs" / args.child.replace("@", "_")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resume
    base_rss = _current_rss_mib()

    timers = _Timed()
    timers.wrap(VoGHandler, "_on_losses", "vog")
    timers.wrap(VoGHandler, "_commit", "vog")
    timers.wrap(SmallLossSelectionHandler, "_record", "selection")
    timers.wrap(SmallLossSelectionHandler, "_complete_epoch", "selection")
    marks: dict[str, float] = {}
    original_run = CoTeachingTrainer.run

    def run_with_marks(engine, *a, **kw):
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _e: marks.setdefault("started", time.perf_counter()))
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _e: marks.__setitem__("epoch", time.perf_counter()))
        engine.add_event_handler(
            Events.ITERATION_COMPLETED, lambda _e: marks.__setitem__("last_iteration", time.perf_counter())
        )
        return original_run(engine, *a, **kw)

    CoTeachingTrainer.run = run_with_marks

    overrides = {
        "dataset_path": str(data),
        "output_dir": str(run_dir),
        "max_epochs": 1,
        "vog#dtype": args.vog_dtype,
        "vog#sketch_dim": args.vog_sketch_dim,
    }
    config = json.loads(Path(bundle_file("train.json")).read_text(encoding="utf-8"))
    cache_note = "n/a"
    if args.cache:
        if "cache" in config:
            overrides["cache"] = args.cache
            cache_note = args.cache
        else:
            cache_note = "no 'cache' key in train.json yet (default caching)"
    started = time.perf_counter()
    workflow = run_workflow([bundle_file("train.json")], overrides)
    total = time.perf_counter() - started
    parsed = workflow.parser.get_parsed_content
    trainer = parsed("train#trainer")
    evaluator = parsed("validate#evaluator")
    vog, selection = parsed("vog_tracker"), parsed("selection_tracker")
    peak_phase1 = _rss_mib()

    # One acquisition pass as a relabel round runs it: the whole training set as the pool, eval mode.
    network, device = parsed("network"), parsed("device")
    pool = Dataset(parsed("train#items"), transform=parsed("validate#preprocessing"))
    loader = DataLoader(pool, batch_size=256, shuffle=False, num_workers=0)
    acquired = time.perf_counter()
    picked = acquire("entropy", network, loader, budget=100, device=device)
    acquisition = time.perf_counter() - acquired
    assert len(picked.indices) == min(100, n_train)

    return {
        "spec": args.child,
        "n_train": n_train,
        "image_size": size,
        "threads": args.threads,
        "cache": cache_note,
        "vog_dtype": args.vog_dtype,
        "vog_sketch_dim": args.vog_sketch_dim or "exact",
        "setup_s": round(marks["started"] - started, 2),
        "epoch_s": round(float(trainer.state.times["EPOCH_COMPLETED"]), 2),
        "train_loop_s": round(marks["last_iteration"] - marks["epoch"], 2),
        "vog_s": round(timers.seconds.get("vog", 0.0), 2),
        "selection_s": round(timers.seconds.get("selection", 0.0), 2),
        "validation_s": round(float(evaluator.state.times.get("COMPLETED") or 0.0), 2),
        "acquisition_s": round(acquisition, 2),
        "total_s": round(total, 2),
        "base_rss_mib": round(base_rss, 1),
        "peak_rss_phase1_mib": round(peak_phase1, 1),
        "peak_rss_mib": round(_rss_mib(), 1),
        "vog_bytes_per_sample": round(vog.state_bytes() / n_train, 1),
        "selection_bytes_per_sample": round(selection.state_bytes() / n_train, 1),
    }


def run_distributed(args: argparse.Namespace) -> None:
    """The same ``--epochs`` run on 1 and on ``--nproc`` processes (``alr train --nproc``: torchrun, gloo on the
    CPU) on the first size of ``--sizes``, the cores split between the processes: wall time, the last epoch
    line's seconds, how far the trusted sets agree (float order differs between 1 and N processes, so they need
    not match) and the test balanced accuracy of each."""
    import re

    spec = args.sizes.split(",")[0].strip()
    n_train, size = parse_spec(spec)
    data = Path(args.work) / f"synthetic_{n_train}_{size}.npz"
    write_synthetic(data, n_train, size)
    trusted: dict[int, list[str]] = {}
    accuracy: dict[int, float] = {}
    for nproc in sorted({1, args.nproc}):
        run_dir = Path(args.work) / "runs" / f"{spec.replace('@', '_')}_nproc{nproc}"
        shutil.rmtree(run_dir, ignore_errors=True)
        threads = max(1, args.threads // nproc)
        command = [sys.executable, "-m", "alr_monai.cli", "train", "--nproc", str(nproc), "--output_dir", str(run_dir)]
        command += ["--dataset_path", str(data), "--max_epochs", str(args.epochs)]
        if args.cache:
            command += ["--cache", args.cache]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - started
        if result.returncode:
            print(f"{nproc} process(es): failed (exit {result.returncode})\n{result.stdout[-2000:]}", flush=True)
            return
        epoch = re.search(rf"epoch {args.epochs}/{args.epochs} .*\| ([0-9.]+) s", result.stdout)
        with open(run_dir / "selection.csv", newline="") as handle:
            trusted[nproc] = [row["trusted"] for row in csv.DictReader(handle)]
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        accuracy[nproc] = float(metrics["test"]["balanced_accuracy"])
        print(
            f"{spec}, {nproc} process(es) x {threads} thread(s), {args.epochs} epoch(s): wall {wall:.1f} s, "
            f"last epoch {epoch.group(1) if epoch else '?'} s, test balanced accuracy {accuracy[nproc]:.4f}",
            flush=True,
        )
    if len(trusted) == 2:
        one, many = trusted.values()
        agree = sum(a == b for a, b in zip(one, many, strict=True)) / len(one)
        kept_one = {i for i, flag in enumerate(one) if flag in ("1", "True", "true")}
        kept_many = {i for i, flag in enumerate(many) if flag in ("1", "True", "true")}
        jaccard = len(kept_one & kept_many) / max(1, len(kept_one | kept_many))
        print(
            f"1 vs {args.nproc} processes: trusted decisions agreeing {agree:.4f}, trusted sets' overlap "
            f"(intersection / union) {jaccard:.4f} ({len(kept_one)} vs {len(kept_many)} trusted), test balanced "
            f"accuracy difference {abs(accuracy[1] - accuracy[args.nproc]):.4f}",
            flush=True,
        )


def log_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): the exponent of y ~ x^a."""
    if len(xs) < 2 or any(v <= 0 for v in (*xs, *ys)):
        return math.nan
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def report(rows: list[dict], out: Path) -> None:
    """Print the table and the fitted exponents; write scale.csv and scale.png."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scale.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    shown = (
        "spec",
        "epoch_s",
        "train_loop_s",
        "vog_s",
        "selection_s",
        "validation_s",
        "acquisition_s",
        "setup_s",
        "peak_rss_mib",
        "vog_bytes_per_sample",
        "selection_bytes_per_sample",
    )
    print("| " + " | ".join(shown) + " |")
    print("|" + "---|" * len(shown))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in shown) + " |")
    flat = sorted((r for r in rows if r["image_size"] == 28), key=lambda r: r["n_train"])
    if len(flat) >= 2:
        n = [r["n_train"] for r in flat]
        print(f"log-log slopes over N = {n} (28x28):")
        for column in ("epoch_s", "train_loop_s", "acquisition_s", "peak_rss_mib"):
            print(f"  {column}: {log_slope(n, [r[column] for r in flat]):.3f}")
        above_base = [r["peak_rss_mib"] - r["base_rss_mib"] for r in flat]
        print(f"  peak RSS above the process's start (torch, MONAI loaded): {log_slope(n, above_base):.3f}")
    _plot(rows, out / "scale.png")
    print(f"wrote {out / 'scale.csv'} and {out / 'scale.png'}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for size, marker in ((28, "o"), (64, "s")):
        part = sorted((r for r in rows if r["image_size"] == size), key=lambda r: r["n_train"])
        if not part:
            continue
        n = [r["n_train"] for r in part]
        left.plot(n, [r["epoch_s"] for r in part], marker=marker, label=f"phase-1 epoch {size}x{size}")
        left.plot(n, [r["acquisition_s"] for r in part], marker=marker, ls="--", label=f"acquisition {size}x{size}")
        right.plot(n, [r["peak_rss_mib"] for r in part], marker=marker, label=f"peak RSS {size}x{size}")
    for axis, ylabel in ((left, "wall time (s)"), (right, "peak RSS (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("training images N")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle("alr_monai scale: one epoch of co-teaching + VoG, one entropy pass (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10k,50k,200k,10k@64", help="comma-separated N[@image size]")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    parser.add_argument("--work", default="/tmp/alr_scale", help="synthetic data and run folders")
    parser.add_argument("--out", default="runs/benchmark_scale", help="scale.csv and scale.png")
    parser.add_argument("--cache", default=None, choices=["memory", "disk", "none"], help="the bundle's cache key")
    parser.add_argument("--vog_dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--vog_sketch_dim", type=int, default=None, help="the bundle's vog#sketch_dim (default exact)")
    parser.add_argument(
        "--nproc", type=int, default=1, help="compare 1 with this many processes on the first size (alr train --nproc)"
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs of the --nproc comparison (the selection first cuts at epoch 3)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args)), flush=True)
        return
    if args.nproc != 1:
        run_distributed(args)
        return
    rows = []
    for spec in [s for s in args.sizes.split(",") if s.strip()]:
        n_train, size = parse_spec(spec)
        data = Path(args.work) / f"synthetic_{n_train}_{size}.npz"
        made = time.perf_counter()
        write_synthetic(data, n_train, size)
        print(f"{spec}: data {data} ({time.perf_counter() - made:.0f} s)", flush=True)
        command = [sys.executable, __file__, "--child", spec.strip(), "--work", args.work]
        command += ["--threads", str(args.threads), "--vog_dtype", args.vog_dtype]
        if args.vog_sketch_dim:
            command += ["--vog_sketch_dim", str(args.vog_sketch_dim)]
        if args.cache:
            command += ["--cache", args.cache]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        result = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode != 0 or not lines:
            print(f"{spec}: failed (exit {result.returncode})\n{result.stdout[-2000:]}", flush=True)
            continue
        row = json.loads(lines[-1])
        rows.append(row)
        print(f"{spec}: {row}", flush=True)
        if row["cache"].startswith("no "):
            print(f"note: --cache {args.cache} not applied: {row['cache']}", flush=True)
    if rows:
        report(rows, Path(args.out))


if __name__ == "__main__":
    main()
