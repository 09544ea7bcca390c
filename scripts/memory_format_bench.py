"""Time one training step in contiguous against channels-last memory format, 2D and 3D, on this CPU.

One step is forward, cross-entropy, backward and an SGD step, for the bundle's default network and some
``network_name`` choices.

The evidence behind ``channels_last``'s default (on for images, off for volumes). Each case alternates the two
formats twice and keeps the faster of each pair of runs, so a load spike on a shared machine hits both.

    python scripts/memory_format_bench.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_bench import make_network  # noqa: E402

# (network, spatial dims, batch shape): sizes small enough for a CPU, shaped like the bundle's uses
CASES = [
    ("default", 2, (128, 1, 28, 28)),
    ("default", 3, (8, 1, 28, 28, 28)),
    ("resnet18", 2, (8, 1, 112, 112)),
    ("resnet18", 3, (4, 1, 32, 32, 32)),
    ("densenet121", 2, (8, 1, 64, 64)),
    ("densenet121", 3, (2, 1, 32, 32, 32)),
    ("efficientnet-b0", 2, (8, 1, 64, 64)),
]


def step_seconds(name: str, spatial_dims: int, shape: tuple[int, ...], channels_last: bool, repeats: int) -> float:
    """Mean seconds of one training step after one warm-up step."""
    torch.manual_seed(0)
    network = make_network(name, in_channels=1, num_classes=8, spatial_dims=spatial_dims).train()
    images, labels = torch.randn(shape), torch.randint(0, 8, (shape[0],))
    if channels_last:
        memory_format = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        network = network.to(memory_format=memory_format)
        images = images.contiguous(memory_format=memory_format)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(network(images), labels).backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), 8 classes, 1 input channel")
    print("| network | dims | batch | contiguous ms / step | channels_last ms / step | ratio |")
    print("|---|---|---|---|---|---|")
    for name, dims, shape in CASES:
        runs: dict[bool, list[float]] = {False: [], True: []}
        for channels_last in (False, True, False, True):
            runs[channels_last].append(step_seconds(name, dims, shape, channels_last, args.repeats))
        plain, last = min(runs[False]), min(runs[True])
        size = "x".join(str(side) for side in shape[2:])
        print(
            f"| {name} | {dims}D | {shape[0]} x {size} | {1000 * plain:.1f} | {1000 * last:.1f} | {last / plain:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
