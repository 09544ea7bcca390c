"""Derive the embedded demo dataset from the official BloodMNIST file.

BloodMNIST (MedMNIST v2, Yang et al., Scientific Data 2023) is licensed CC BY 4.0. The embedded subset keeps
val and test as released and long-tails the training split to imbalance ratio 20 with n_max = 1000 (so the
demo trains in minutes on a laptop CPU and the file stays under 15 MB), seed 0. Run from the repo root:

    python scripts/make_embedded_dataset.py --source ../shared/data/bloodmnist.npz
"""

from __future__ import annotations

import argparse
import hashlib
import io
import lzma
from pathlib import Path

import numpy as np

from alr_monai.data.medmnist import EMBEDDED_BLOODMNIST, long_tail_indices, read_npz_arrays
from alr_monai.utils import atomic_write_bytes

IMBALANCE_RATIO = 20
N_MAX = 1000
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/data/bloodmnist.npz")
    parser.add_argument("--out", default=str(EMBEDDED_BLOODMNIST))
    args = parser.parse_args()

    arrays = read_npz_arrays(args.source)
    labels = arrays["train_labels"].reshape(-1)
    keep = long_tail_indices(labels, IMBALANCE_RATIO, SEED, n_max=N_MAX)
    subset = dict(arrays)
    subset["train_images"] = arrays["train_images"][keep]
    subset["train_labels"] = arrays["train_labels"][keep]
    # Positions in the official training split, so every embedded image can be traced to its source.
    subset["train_source_index"] = keep.astype(np.int64)

    buffer = io.BytesIO()
    np.savez(buffer, **subset)
    payload = lzma.compress(buffer.getvalue(), preset=9)
    atomic_write_bytes(args.out, payload)
    counts = np.bincount(subset["train_labels"].reshape(-1), minlength=8)
    print(f"wrote {args.out}: {len(payload) / 1e6:.2f} MB, train per class {counts.tolist()} (total {counts.sum()})")
    print(f"source md5 {hashlib.md5(Path(args.source).read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
