"""Input pipeline and training throughput at real image sizes (224x224 PNG and DICOM files by default).

Writes ``--images`` synthetic grayscale images per format into a temporary folder (class-dependent stripes plus
noise, so the networks have something to learn), then measures

1. each stage per image in the main process: decode (the manifest reader), the deterministic transforms (channels,
   intensity, resize, to tensor), the per-sample augmentation (the random flip of ``augment_on sample``), and the
   batched augmentation on the device (``augment_on batch``, the default);
2. co-teaching phase-1 epochs (two peers of ``--network``, VoG recording, the default batched augmentation), the
   training set read through the manifest chain, for each loader setting: workers 0 / 2, persistent workers on / off,
   and the cache modes (``cache`` memory / disk / none). The first epoch is a warm-up (cache fill, worker start);
   the next ``--epochs - 1`` are timed. "data wait" is the time the trainer waits in the loader's ``next()``, i.e.
   the part of the input pipeline the workers do not hide.

    python scripts/pipeline_bench.py [--images 256] [--size 224] [--batch_size 32] [--network default]
        [--epochs 2] [--formats png,dicom] [--out DIR]

``scripts/gpu_check.py`` reuses :func:`write_images` and :func:`train_throughput` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

NUM_CLASSES = 4


def _pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A class-dependent stripe texture with noise, uint8 in [0, 255]."""
    grid = np.arange(size, dtype=np.float32)
    period = 4 + 3 * label
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * grid / period)
    image = stripes[None, :] if label % 2 == 0 else stripes[:, None]
    image = np.broadcast_to(image, (size, size)) * 180 + rng.normal(0, 25, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing = [1, 1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = (pixels.astype(np.uint16) * 8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def write_images(folder: str | Path, count: int, size: int, kind: str = "png", seed: int = 0) -> list[dict[str, Any]]:
    """Write ``count`` ``size`` x ``size`` grayscale images (``png`` or ``dicom``); return training items.

    Returns:
        ``[{"image": path, "label": int, "index": int, "id": str}]``, labels cycling over :data:`NUM_CLASSES`.
    """
    from PIL import Image

    if kind not in ("png", "dicom"):
        raise ValueError(f"kind must be 'png' or 'dicom', got {kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        label = index % NUM_CLASSES
        pixels = _pattern(label, size, rng)
        path = folder / f"img{index:05d}.{'png' if kind == 'png' else 'dcm'}"
        if kind == "png":
            Image.fromarray(pixels).save(path)
        else:
            _write_dicom(path, pixels)
        items.append({"image": str(path), "label": label, "index": index, "id": f"{kind}{index}"})
    return items


def make_network(name: str, in_channels: int = 1, num_classes: int = NUM_CLASSES, spatial_dims: int = 2):
    """``default`` is the bundle's small ResNet (train.json's network_factory); else a ``network_name`` choice."""
    from monai.networks.nets import ResNet

    from alr_monai.networks import build_classifier

    if name == "default":
        return ResNet(
            block="basic",
            layers=[1, 1, 1, 1],
            block_inplanes=[16, 32, 64, 128],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            num_classes=num_classes,
        )
    return build_classifier(name, spatial_dims, in_channels, num_classes)


def image_chain(size: int, augment: bool = False):
    """The manifest preprocessing (train_manifest.json's), one channel, ``size`` x ``size``."""
    from alr_monai.data.transforms import build_image_transforms

    return build_image_transforms([size, size], in_channels=1, spatial_dims=2, augment=augment)


class GpuBusy:
    """Samples the GPU's utilisation (NVML through ``torch.cuda.utilization``) every ``period`` seconds in a thread.

    NVML reports the share of its last sample period in which a kernel ran; the mean over a timed window is the
    "GPU busy" share. ``mean()`` is None where NVML cannot be read (no GPU, or no nvidia-ml-py).
    """

    def __init__(self, device: torch.device, period: float = 0.05) -> None:
        self.device = device
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.available = False
        if device.type == "cuda":
            try:
                torch.cuda.utilization(device)
                self.available = True
            except Exception:  # no NVML: the column reads n/a
                self.available = False

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append(float(torch.cuda.utilization(self.device)))
            except Exception:
                return

    def start(self) -> None:
        if self.available:
            self.samples.clear()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def mean(self) -> float | None:
        return statistics.fmean(self.samples) / 100.0 if self.samples else None


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_throughput(
    items: list[dict[str, Any]],
    size: int,
    network: str = "default",
    device: str | torch.device = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    workers: int = 0,
    persistent: bool = True,
    cache: str = "none",
    cache_dir: str | Path | None = None,
    vog: bool = True,
    epochs: int = 2,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Co-teaching phase-1 epochs on ``items`` read through the manifest chain; returns the measured numbers.

    The first epoch is a warm-up and the remaining ``epochs - 1`` are timed; with ``epochs`` 1 (a rehearsal) the one
    epoch is timed, warm-up included.

    Returns:
        ``images_per_s``, ``epoch_s`` (mean timed epoch), ``data_wait_share`` (loader ``next()`` over the timed
        wall time), ``compute_share`` (the trainer's iteration, forward / selection / backward / step, over the
        timed wall time), ``gpu_busy`` (mean NVML utilisation, or None), ``peak_mem_mib`` (CUDA peak allocated,
        or None), ``final_loss``.
    """
    from ignite.engine import Events
    from monai.data import DataLoader

    from alr_monai.algorithms.policy import SelectionPolicy
    from alr_monai.data.datasets import build_dataset
    from alr_monai.engines import CoTeachingTrainer
    from alr_monai.handlers import BatchAugmentHandler, VoGHandler
    from alr_monai.networks import PeerEnsemble

    device = torch.device(device)
    torch.manual_seed(seed)
    epochs = max(1, int(epochs))
    # the memory cache is filled with `workers` threads, as the bundle does (num_workers)
    dataset = build_dataset(items, image_chain(size), cache=cache, cache_dir=cache_dir, num_workers=workers)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=bool(persistent and workers > 0),
        pin_memory=device.type == "cuda",
    )
    pair = PeerEnsemble(lambda: make_network(network), num_peers=2).to(device)
    handlers: list[Any] = [BatchAugmentHandler(True, spatial_dims=2, flip_axis=0, seed=seed)]
    if vog:
        handlers.append(VoGHandler(len(items), NUM_CLASSES, num_snapshots=5, mix_ratio=0.2, sketch_dim=8))
    trainer = CoTeachingTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=loader,
        network=pair,
        optimizer=torch.optim.Adam(pair.parameters(), 1e-3),
        forget_rate=0.5,
        num_gradual=0,
        non_blocking=True,
        train_handlers=handlers,
        amp=amp and device.type == "cuda",
        selection_policy=SelectionPolicy(fill={"vog": 0.2} if vog else None, per_class=True),
        channels_last=channels_last,
    )
    timer = {"wait": 0.0, "compute": 0.0, "mark": 0.0}

    def batch_started(_engine) -> None:
        timer["mark"] = time.perf_counter()

    def batch_completed(_engine) -> None:
        timer["wait"] += time.perf_counter() - timer["mark"]

    trainer.add_event_handler(Events.GET_BATCH_STARTED, batch_started)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, batch_completed)
    completed = trainer._event_handlers[Events.GET_BATCH_COMPLETED]
    completed.insert(0, completed.pop())  # right after next(), before the batched augmentation
    process = trainer._process_function

    def iteration(engine, batch):
        start = time.perf_counter()
        try:
            return process(engine, batch)
        finally:
            timer["compute"] += time.perf_counter() - start

    trainer._process_function = iteration
    busy = GpuBusy(device)
    if epochs > 1:
        trainer.run()  # warm-up epoch: cache fill, worker start, cuDNN / allocator warm-up
    _synchronise(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer["wait"] = timer["compute"] = 0.0
    busy.start()
    start = time.perf_counter()
    trainer.state.max_epochs = epochs
    trainer.run()
    _synchronise(device)
    wall = time.perf_counter() - start
    busy.stop()
    timed = max(epochs - 1, 1)
    # Stop persistent workers now: left to the garbage collector, a later loader's forked workers inherit them.
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    return {
        "images_per_s": timed * len(items) / wall,
        "epoch_s": wall / timed,
        "data_wait_share": timer["wait"] / wall,
        "compute_share": timer["compute"] / wall,
        "gpu_busy": busy.mean(),
        "peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "final_loss": float(trainer.state.output["loss"]) if trainer.state.output else None,
    }


def stage_times(items: list[dict[str, Any]], size: int, batch_size: int = 32) -> dict[str, float]:
    """Milliseconds per image of each input stage, in the main process, over ``items``."""
    from alr_monai.data.augment import augment_batch

    chain = image_chain(size)
    decode = chain.transforms[0]
    start = time.perf_counter()
    for item in items:
        decode(dict(item))
    decode_ms = 1000 * (time.perf_counter() - start) / len(items)
    start = time.perf_counter()
    images = [chain(dict(item))["image"] for item in items]
    chain_ms = 1000 * (time.perf_counter() - start) / len(items)
    augmented = image_chain(size, augment=True)
    start = time.perf_counter()
    for item in items:
        augmented(dict(item))
    augment_ms = 1000 * (time.perf_counter() - start) / len(items) - chain_ms
    batch = torch.stack([torch.as_tensor(i) for i in images[:batch_size]])
    uniforms = torch.rand(batch.shape[0], 8)
    start = time.perf_counter()
    repeats = 5
    for _ in range(repeats):
        augment_batch(batch, flip=True, rotate90=False, max_shift=0, flip_axis=0, uniforms=uniforms)
    batch_ms = 1000 * (time.perf_counter() - start) / (repeats * batch.shape[0])
    return {
        "decode_ms": decode_ms,
        "transforms_ms": chain_ms - decode_ms,
        "augment_sample_ms": max(augment_ms, 0.0),
        "augment_batch_ms": batch_ms,
    }


LOADER_SETTINGS = [
    {"workers": 0, "persistent": False, "cache": "none"},
    {"workers": 2, "persistent": False, "cache": "none"},
    {"workers": 2, "persistent": True, "cache": "none"},
    {"workers": 0, "persistent": False, "cache": "memory"},
    {"workers": 2, "persistent": True, "cache": "memory"},
    {"workers": 2, "persistent": True, "cache": "disk"},
]


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--network", default="default")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per setting; the first is a warm-up")
    parser.add_argument("--formats", default="png,dicom")
    parser.add_argument("--settings", default="all", help="'all' or comma-separated indices into LOADER_SETTINGS")
    parser.add_argument("--out", default=None, help="folder for pipeline_bench.json (default: print only)")
    args = parser.parse_args(argv)
    settings = (
        LOADER_SETTINGS if args.settings == "all" else [LOADER_SETTINGS[int(i)] for i in args.settings.split(",")]
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {args.images} images "
        f"{args.size}x{args.size} per format, batch {args.batch_size}, network {args.network}, 2 peers + VoG",
        flush=True,
    )
    results: dict[str, Any] = {"args": vars(args), "stages": {}, "epochs": []}
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.formats.split(","):
            items = write_images(Path(scratch) / kind, args.images, args.size, kind)
            stages = stage_times(items[: min(64, len(items))], args.size, args.batch_size)
            results["stages"][kind] = stages
            print(
                f"{kind}: decode {stages['decode_ms']:.2f} ms/image, transforms {stages['transforms_ms']:.2f}, "
                f"per-sample flip {stages['augment_sample_ms']:.2f}, batched flip {stages['augment_batch_ms']:.3f}",
                flush=True,
            )
            for setting in settings:
                row = train_throughput(
                    items,
                    args.size,
                    args.network,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    cache_dir=Path(scratch) / f"cache_{kind}_{len(results['epochs'])}",
                    **setting,
                )
                row.update(format=kind, **setting)
                results["epochs"].append(row)
                print(
                    f"{kind} workers {setting['workers']} persistent {setting['persistent']!s:<5} cache "
                    f"{setting['cache']:<6}: epoch {row['epoch_s']:.2f} s, {row['images_per_s']:.1f} images/s, "
                    f"data wait {100 * row['data_wait_share']:.1f}%, compute {100 * row['compute_share']:.1f}%",
                    flush=True,
                )
    print("\n| format | workers | persistent | cache | epoch s | images/s | data wait | compute |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results["epochs"]:
        print(
            f"| {row['format']} | {row['workers']} | {row['persistent']} | {row['cache']} | {row['epoch_s']:.2f} | "
            f"{row['images_per_s']:.1f} | {100 * row['data_wait_share']:.1f}% | {100 * row['compute_share']:.1f}% |"
        )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "pipeline_bench.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
