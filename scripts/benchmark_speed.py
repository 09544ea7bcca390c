"""Epoch time and memory: one network (MONAI SupervisedTrainer) vs co-teaching vs co-teaching + VoG.

All three run in one process on the same data loader (the embedded long-tailed BloodMNIST subset, or any
MedMNIST-layout file via --data), with the bundle's default network. Each is warmed up for one epoch, then
timed over --epochs epochs; epochs are interleaved (single, co-teaching, +VoG, single, ...) so machine drift
hits all three alike. Prints median epoch seconds, the ratios, and memory (peak RSS of the process, the VoG
buffer's size, and on CUDA the peak allocated memory of each variant).

The training augmentation is the bundle's default (train.json's ``augment``, ``augment_rotate90``,
``augment_shift`` and ``augment_on``: batched on the device by ``BatchAugmentHandler``), so the times are those
of the epochs the default config runs; ``--augment_on sample`` times the per-sample MONAI chain instead, and
``--augment_on off`` no augmentation.

    python scripts/benchmark_speed.py [--data ../shared/data/bloodmnist.npz --imbalance_ratio 20] [--epochs 5]
        [--augment_on batch|sample|off]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedTrainer
from monai.networks.nets import ResNet

from alr_monai.algorithms.policy import SelectionPolicy
from alr_monai.data.augment import augment_mode
from alr_monai.data.medmnist import load_medmnist
from alr_monai.data.transforms import build_array_transforms
from alr_monai.engines import CoTeachingTrainer
from alr_monai.handlers import BatchAugmentHandler, VoGHandler
from alr_monai.keys import config_default
from alr_monai.networks import PeerEnsemble


def make_network(in_channels: int, num_classes: int) -> torch.nn.Module:
    return ResNet(
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=[16, 32, 64, 128],
        spatial_dims=2,
        n_input_channels=in_channels,
        num_classes=num_classes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="MedMNIST .npz (default: embedded subset)")
    parser.add_argument("--imbalance_ratio", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vog_dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument(
        "--augment_on",
        default=config_default("train.json", "augment_on"),
        choices=["batch", "sample", "off"],
        help="training augmentation (default: train.json's)",
    )
    args = parser.parse_args()
    # The bundle's default augmentation, so the epochs timed are the ones the default config runs.
    augment = {
        "mode": "off"
        if args.augment_on == "off"
        else augment_mode(config_default("train.json", "augment"), args.augment_on),
        "rotate90": bool(config_default("train.json", "augment_rotate90")),
        "shift": int(config_default("train.json", "augment_shift")),
    }
    torch.manual_seed(0)
    device = torch.device(args.device)

    data = load_medmnist(args.data, args.imbalance_ratio)
    items = data["train"].items()
    transform = build_array_transforms(
        data.in_channels,
        augment=augment["mode"] == "sample",
        rotate90=augment["rotate90"],
        crop_padding=augment["shift"],
    )
    dataset = CacheDataset(items, transform, progress=False)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0)
    n, c, k = len(items), data.num_classes, data.in_channels

    def augmentation() -> BatchAugmentHandler:
        enabled = augment["mode"] == "batch"
        return BatchAugmentHandler(enabled, rotate90=augment["rotate90"], max_shift=augment["shift"])

    single_net = make_network(k, c).to(device)
    single = SupervisedTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=loader,
        network=single_net,
        optimizer=torch.optim.Adam(single_net.parameters(), 1e-3),
        loss_function=torch.nn.CrossEntropyLoss(),
        decollate=False,
        train_handlers=[augmentation()],
    )

    def coteaching_trainer(with_vog: bool) -> CoTeachingTrainer:
        pair = PeerEnsemble(lambda: make_network(k, c), num_peers=2).to(device)
        handlers = [augmentation()] + (
            [VoGHandler(n, c, num_snapshots=5, mix_ratio=0.2, dtype=args.vog_dtype, start_epoch=1)] if with_vog else []
        )
        # forget rate fixed and no ramp, so every timed epoch does the full selection work (and VoG mixing
        # once its 5-epoch buffer is full).
        return CoTeachingTrainer(
            device=device,
            max_epochs=1,
            train_data_loader=loader,
            network=pair,
            optimizer=torch.optim.Adam(pair.parameters(), 1e-3),
            forget_rate=0.5,
            num_gradual=0,
            train_handlers=handlers,
            # VoG takes its share of each kept set only through the policy's fill
            selection_policy=SelectionPolicy(fill={"vog": 0.2} if with_vog else None),
        )

    variants = {
        "single network": single,
        "co-teaching": coteaching_trainer(False),
        "co-teaching + VoG": coteaching_trainer(True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    peak_cuda: dict[str, float] = {}
    # Warm-up: one epoch each (and 5 for VoG so its buffer is full and the mixing path is timed).
    for name, engine in variants.items():
        warmup = 5 if "VoG" in name else 1
        engine.state.max_epochs = warmup
        engine.run()
    for epoch in range(args.epochs):
        for name, engine in variants.items():
            engine.state.max_epochs = engine.state.epoch + 1
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            engine.run()
            if device.type == "cuda":
                torch.cuda.synchronize()
                peak_cuda[name] = torch.cuda.max_memory_allocated() / 2**20
            times[name].append(time.perf_counter() - start)
        print(
            f"epoch {epoch + 1}/{args.epochs}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True
        )

    median = {name: statistics.median(values) for name, values in times.items()}
    itemsize = 2 if args.vog_dtype == "float16" else 4
    vog_bytes = 2 * n * (128 + 1) * 5 * itemsize
    print(
        f"\ndata: {data.source}, {n} training images, batch {args.batch_size}, device {device}, torch threads {torch.get_num_threads()}, "
        f"augmentation {augment['mode']} (rotate90 {augment['rotate90']}, shift {augment['shift']})"
    )
    for name, value in median.items():
        extra = f", peak CUDA {peak_cuda[name]:.0f} MiB" if name in peak_cuda else ""
        print(f"{name:<20} median epoch {value:.3f} s{extra}")
    print(f"co-teaching / single network: {median['co-teaching'] / median['single network']:.3f}x (target <= 2.1x)")
    print(
        f"VoG overhead (co-teaching + VoG / co-teaching): {median['co-teaching + VoG'] / median['co-teaching']:.3f}x (target <= 1.05x)"
    )
    print(f"VoG buffer: 2 peers x {n} samples x 129 dims x 5 snapshots x {itemsize} B = {vog_bytes / 2**20:.1f} MiB")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
