"""Cost per image of each ``network_name`` choice (and the bundle's default network): parameters, forward FLOPs
(counted by ``torch.utils.flop_counter``, exact and machine-independent) and measured milliseconds per image for a
forward + backward pass on this machine's CPU, at 224x224 (2D, 1 channel) and 64x64x64 (3D, 1 channel).

    python scripts/network_cost.py [--batch 4] [--repeats 2] [--no-timing]

One peer; co-teaching trains two, so its step costs twice the numbers shown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_bench import make_network  # noqa: E402

from alr_monai.networks import NETWORK_NAMES  # noqa: E402

SHAPES = {2: (224, 224), 3: (64, 64, 64)}


def cost(name: str, spatial_dims: int, batch: int, repeats: int, timing: bool) -> dict[str, float]:
    torch.manual_seed(0)
    network = make_network(name, in_channels=1, num_classes=8, spatial_dims=spatial_dims).train()
    x = torch.randn(batch, 1, *SHAPES[spatial_dims])
    params = sum(p.numel() for p in network.parameters())
    with FlopCounterMode(display=False) as counter:
        network(x[:1])
    flops = counter.get_total_flops()
    ms = float("nan")
    if timing:
        network(x).sum().backward()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            network.zero_grad(set_to_none=True)
            network(x).sum().backward()
        ms = 1000 * (time.perf_counter() - start) / (repeats * batch)
    return {"params_m": params / 1e6, "gflops": flops / 1e9, "ms": ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, one peer, 8 classes")
    print(
        "| network | parameters | GFLOPs / image 224x224 | ms / image 224x224 (fwd+bwd) | GFLOPs / image 64^3 | ms / image 64^3 (fwd+bwd) |"
    )
    print("|---|---|---|---|---|---|")
    for name in ("default", *NETWORK_NAMES):
        two = cost(name, 2, args.batch, args.repeats, not args.no_timing)
        three = cost(name, 3, max(1, args.batch // 2), args.repeats, not args.no_timing)
        print(
            f"| {name} | {two['params_m']:.1f} M (3D {three['params_m']:.1f} M) | {two['gflops']:.2f} | {two['ms']:.0f} | "
            f"{three['gflops']:.1f} | {three['ms']:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
