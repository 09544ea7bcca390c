"""The training half of ``scripts/gpu_check.sh``: phase-1 throughput on one GPU, and AMP against float32.

1. Throughput grid: co-teaching + VoG phase-1 epochs (``pipeline_bench.train_throughput``: PNG files read through
   the manifest chain, the default batched augmentation) at 28x28 and 224x224, with the bundle's default network
   and MONAI's ResNet-18 (``network_name resnet18``). Each (size, network) runs a base setting (AMP on,
   channels_last on, 8 workers, persistent, VoG on, no cache: every epoch decodes the files) and one change at a
   time: AMP off, channels_last off, 4 workers, 0 workers, VoG off, cache memory. Prints ONE table: images per
   second, GPU busy share (NVML utilisation sampled every 50 ms), peak GPU memory, and the share of the step spent
   waiting on the input pipeline (the loader's ``next()``).
2. AMP accuracy: the bundle's phase 1 (``alr train``'s configs) on the embedded set, same seed, AMP on and off;
   test balanced accuracy of each (target: within 0.01).

Everything is written under ``--out``: gpu_check.md (the table and the verdicts), gpu_check.json, and the AMP
runs' folders. A time budget (``--budget_s``) skips, and names, the settings that would not fit.

``--dry-run`` is the CPU rehearsal the test suite runs: tiny images, few files, 1 epoch per setting, 0 and 2
workers, a 1-epoch AMP pair on a slice of the embedded set (AMP is off on a CPU, so the pair only checks the plumbing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_bench import train_throughput, write_images  # noqa: E402

BASE = {"amp": True, "channels_last": True, "workers": 8, "vog": True, "cache": "none"}
VARIANTS = [
    ("base", {}),
    ("AMP off", {"amp": False}),
    ("channels_last off", {"channels_last": False}),
    ("4 workers", {"workers": 4}),
    ("0 workers", {"workers": 0}),
    ("VoG off", {"vog": False}),
    # the bundle's default cache: decode and resize once (threads), then each epoch only collates cached tensors
    ("cache memory", {"cache": "memory"}),
]


def plan(dry_run: bool) -> list[dict[str, Any]]:
    """The settings to run, in order (most informative first, so a tight budget drops the least)."""
    if dry_run:
        sizes = [(32, 16, 1)]  # (image size, images, epochs)
        variants = [
            ("base", {"workers": 2}),
            ("0 workers", {"workers": 0}),
            ("cache memory", {"workers": 2, "cache": "memory"}),
        ]
    else:
        sizes = [(224, 2048, 3), (28, 4096, 3)]
        variants = VARIANTS
    rows = []
    for size, images, epochs in sizes:
        for network in ("resnet18", "default"):
            for name, change in variants:
                rows.append(
                    {"size": size, "images": images, "epochs": epochs, "network": network, "variant": name}
                    | BASE
                    | change
                )
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| size | network | setting | AMP | channels_last | workers | VoG | cache | images/s | GPU busy | peak GPU MiB | "
        "input wait | epoch s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(
                f"| {r['size']} | {r['network']} | {r['variant']} | {r['amp']} | {r['channels_last']} | "
                f"{r['workers']} | {r['vog']} | {r['cache']} | {r.get('error') or r.get('skipped')} | | | | |"
            )
            continue
        peak = "n/a" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}"
        lines.append(
            f"| {r['size']} | {r['network']} | {r['variant']} | {r['amp']} | {r['channels_last']} | {r['workers']} | "
            f"{r['vog']} | {r['cache']} | {r['images_per_s']:.0f} | {_pct(r['gpu_busy'])} | {peak} | "
            f"{_pct(r['data_wait_share'])} | {r['epoch_s']:.2f} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]], amp: dict[str, Any] | None) -> list[str]:
    """The issue's GPU targets, read off the measured rows (n/a where a row is missing)."""

    def find(size: int, network: str, variant: str) -> dict[str, Any] | None:
        for r in rows:
            if (r["size"], r["network"], r["variant"]) == (size, network, variant) and "images_per_s" in r:
                return r
        return None

    out = []
    base, no_vog = find(224, "resnet18", "base"), find(224, "resnet18", "VoG off")
    for row, words in ((base, "files decoded every epoch"), (find(224, "resnet18", "cache memory"), "cache memory")):
        if row is not None:
            out.append(
                f"224x224 ResNet-18, 8 workers, {words}: GPU busy {_pct(row['gpu_busy'])} (target >= 85%), input "
                f"wait {_pct(row['data_wait_share'])}, {row['images_per_s']:.0f} images/s"
            )
    if base is not None and no_vog is not None:
        ratio = no_vog["images_per_s"] / base["images_per_s"]
        out.append(f"VoG / co-teaching step time at 224x224 ResNet-18: {ratio:.3f}x (target <= 1.05x)")
    if amp is not None and amp.get("difference") is not None:
        out.append(
            f"AMP test balanced accuracy {amp['amp']:.4f} vs float32 {amp['float32']:.4f} on seed {amp['seed']}, "
            f"{amp['epochs']} epochs: difference {amp['difference']:+.4f} (target within 0.01)"
            + ("" if amp.get("cuda") else "; no CUDA here, so both ran in float32 (plumbing only)")
        )
    return out


def amp_accuracy(out: Path, dry_run: bool, device: str) -> dict[str, Any]:
    """Phase 1 of the bundle with AMP on and off from the same seed; test balanced accuracy of each.

    The run folders go under ``out`` (a scratch folder: the device returns only a few files from $OUT).
    """
    from monai.bundle import ConfigWorkflow

    from alr_monai.workflow import bundle_file, phase1_files

    settings: dict[str, Any] = {"device": device, "seed": 0, "resume": False}
    if dry_run:
        import numpy as np

        from alr_monai.data.medmnist import load_medmnist

        data = load_medmnist()
        folder = out / "tiny_data"
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for split, count in {"train": 4, "val": 2, "test": 2}.items():
            part = data[split]
            keep = np.concatenate([np.flatnonzero(part.labels == c)[:count] for c in range(data.num_classes)])
            arrays[f"{split}_images"] = part.images[keep]
            arrays[f"{split}_labels"] = part.labels[keep].reshape(-1, 1)
        np.savez(folder / "bloodmnist.npz", **arrays)
        settings |= {"dataset_dir": str(folder), "max_epochs": 1, "batch_size": 16}
    else:
        settings |= {"max_epochs": 10, "num_workers": 4, "pin_memory": True}
    result: dict[str, Any] = {"seed": 0, "epochs": settings["max_epochs"]}
    for name, amp in (("amp", True), ("float32", False)):
        run_dir = out / f"amp_{name}"
        workflow = ConfigWorkflow(
            config_file=phase1_files(),
            meta_file=bundle_file("metadata.json"),
            logging_file=bundle_file("logging.conf"),  # as alr runs it: one console line per epoch
            workflow_type="train",
            output_dir=str(run_dir),
            amp=amp,
            **settings,
        )
        start = time.perf_counter()
        workflow.initialize()
        try:
            workflow.run()
        finally:
            workflow.finalize()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        result[name] = float(metrics["test"]["balanced_accuracy"])
        result[f"{name}_s"] = time.perf_counter() - start
    result["difference"] = result["amp"] - result["float32"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--budget_s", type=float, default=330.0, help="stop starting settings after this")
    parser.add_argument("--batch_size", type=int, default=128)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.dry_run  # the rehearsal runs on the CPU, GPU or not
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name(0) if cuda else "CPU (no CUDA device)"
    header = (
        f"device: {name}; torch {torch.__version__}; {os.cpu_count()} CPUs; batch {args.batch_size}; "
        f"{'dry run' if args.dry_run else 'full run'}"
    )
    print(header, flush=True)
    rows = plan(args.dry_run)
    cost: dict[int, float] = {}  # seconds of the last setting run at each size, to skip what would not fit
    # the AMP pair runs last and needs about this much (measured on the CPU rehearsal; a GPU is faster)
    reserve = 0.0 if args.dry_run else 60.0
    with tempfile.TemporaryDirectory() as scratch:
        files: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            elapsed = time.perf_counter() - start
            if elapsed + 1.2 * cost.get(row["size"], 0.0) + reserve > args.budget_s:
                row["skipped"] = "skipped: time budget"
                print(f"skipped (time budget, {elapsed:.0f} s used): {row}", flush=True)
                continue
            if row["size"] not in files:
                files[row["size"]] = write_images(Path(scratch) / str(row["size"]), row["images"], row["size"])
            began = time.perf_counter()
            try:
                row |= train_throughput(
                    files[row["size"]],
                    row["size"],
                    row["network"],
                    device=device,
                    amp=row["amp"],
                    channels_last=row["channels_last"],
                    workers=row["workers"],
                    persistent=True,
                    cache=row["cache"],
                    vog=row["vog"],
                    epochs=row["epochs"],
                    batch_size=args.batch_size if not args.dry_run else 8,
                )
            except Exception as error:  # one failing setting must not cost the rest of a rare GPU session
                row["error"] = f"error: {type(error).__name__}: {error}"
                traceback.print_exc()
            row["amp"] = row["amp"] and cuda  # AMP runs on CUDA only: the table shows what ran
            cost[row["size"]] = time.perf_counter() - began
            print(f"{time.perf_counter() - start:6.1f} s  {json.dumps(row)}", flush=True)
    amp = None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            amp = amp_accuracy(Path(scratch), args.dry_run, device)
        amp["cuda"] = cuda
        print(f"AMP pair: {json.dumps(amp)}", flush=True)
    except Exception:
        traceback.print_exc()
    text = "\n".join([header, "", table(rows), "", *verdicts(rows, amp)])
    print("\n" + text, flush=True)
    (out / "gpu_check.md").write_text(text + "\n")
    (out / "gpu_check.json").write_text(json.dumps({"header": header, "rows": rows, "amp": amp}, indent=1))
    print(f"\nwritten: {out / 'gpu_check.md'}, {out / 'gpu_check.json'} ({time.perf_counter() - start:.0f} s)")
    failed = [r for r in rows if "error" in r]
    return 1 if failed or amp is None else 0


if __name__ == "__main__":
    sys.exit(main())
