"""The list of likely label errors after phase 1: every training sample ranked by how suspect its label is.

Phase 1 cuts each GIVEN class at its estimated noise rate ``r_c``: a sample is suspect when its loss lies in the
class's top ``r_c`` share. The suspicion score says how far past that cut it lies: ``q - (1 - r_c)``, where
``q`` is the sample's loss quantile within its given class (0 = smallest loss, 1 = largest). It is positive for
samples past the cut and ranks them across classes on one scale: the worst sample of a class that is mostly
noise and the worst of a clean class both reach ``r_c``, so a class estimated to be 90% wrong puts its worst
sample above a class estimated 10% wrong. Without per-class estimates the run's one forget rate is used.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from alr_monai.utils import atomic_write_csv

__all__ = ["LABEL_ISSUE_COLUMNS", "label_issues", "write_label_issues"]

LABEL_ISSUE_COLUMNS = [
    "rank",
    "id",
    "index",
    "given_label",
    "loss",
    "class_noise_estimate",
    "class_loss_quantile",
    "suspicion",
    "suspect",
    "trusted",
]


def _class_rates(metrics: dict, class_names: list[str]) -> list[float]:
    train = metrics.get("last", {}).get("train", {})
    fallback = train.get("forget_rate", train.get("noise_rate_estimate", 0.0)) or 0.0
    rates = []
    for name in class_names:
        rate = train.get(f"noise_rate_estimate/{name}")
        rates.append(float(fallback) if rate is None or (isinstance(rate, float) and math.isnan(rate)) else float(rate))
    return rates


def label_issues(run_dir: str | Path) -> list[dict]:
    """Rows of :data:`LABEL_ISSUE_COLUMNS` for every training sample of a finished phase 1, most suspect first.

    Raises:
        FileNotFoundError: naming the phase-1 file that is missing.
        ValueError: naming the file and row of a malformed selection.csv.
    """
    run_dir = Path(run_dir)
    paths = {name: run_dir / name for name in ("selection.csv", "classes.json", "metrics.json")}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run phase 1 (`alr train --output_dir {run_dir}`) first")
    class_names = list(json.loads(paths["classes.json"].read_text())["class_names"])
    rates = _class_rates(json.loads(paths["metrics.json"].read_text()), class_names)
    with open(paths["selection.csv"], newline="") as handle:
        records = list(csv.DictReader(handle))
    samples = []
    for line, record in enumerate(records, start=2):
        try:
            label = int(record["given_label"])
            loss = float(record["loss"]) if record["loss"] != "" else math.nan
            samples.append((record["id"], int(record["index"]), label, loss, record["trusted"] == "1"))
        except (KeyError, ValueError) as error:
            raise ValueError(f"{paths['selection.csv']} row {line}: unreadable ({error})") from None
        if not 0 <= label < len(class_names):
            raise ValueError(f"{paths['selection.csv']} row {line}: given_label {label} has no class in classes.json")
    rows = []
    for cls, name in enumerate(class_names):
        members = sorted((s for s in samples if s[2] == cls and not math.isnan(s[3])), key=lambda s: (s[3], s[1]))
        for position, (sample_id, index, _label, loss, trusted) in enumerate(members):
            quantile = position / max(len(members) - 1, 1)
            suspicion = quantile - (1.0 - rates[cls])
            rows.append(
                {
                    "id": sample_id,
                    "index": index,
                    "given_label": name,
                    "loss": round(loss, 6),
                    "class_noise_estimate": round(rates[cls], 4),
                    "class_loss_quantile": round(quantile, 4),
                    "suspicion": round(suspicion, 4),
                    "suspect": int(suspicion > 0),
                    "trusted": int(trusted),
                }
            )
    rows.sort(key=lambda row: (-row["suspicion"], -row["loss"], row["index"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def write_label_issues(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, list[dict]]:
    """Write ``label_issues.csv`` (default: into the run folder), atomically; returns its path and rows.

    Holds the run folder's lock, so it never writes while another alr command changes the run.

    Raises:
        RunLockedError: another process holds the run folder's lock.
    """
    from alr_monai.runlock import run_lock

    with run_lock(run_dir, "issues", create=False):
        rows = label_issues(run_dir)
        path = Path(out) if out is not None else Path(run_dir) / "label_issues.csv"
        atomic_write_csv(path, rows, LABEL_ISSUE_COLUMNS)
    return path, rows
