"""The list of likely label errors: every training sample ranked by how suspect its label is, knowing what the
expert already answered.

Suspicion. Phase 1 cuts each GIVEN class at its estimated noise rate ``r_c``: a sample is suspect when its loss
lies in the class's top ``r_c`` share. The suspicion score says how far past that cut it lies: ``q - (1 - r_c)``,
where ``q`` is the sample's loss quantile within its given class (0 = smallest loss, 1 = largest); it is positive
for samples past the cut. Without per-class estimates the run's one forget rate is used.

Order (the ``rank`` column). Classes are interleaved so one class does not fill the top: within each given class
the open samples (not answered by the expert) are numbered by suspicion, ``k = 1, 2, ...``, and sorted on
``k / w_c``, where ``w_c = r_c x (open samples of class c)`` is the class's estimated count of wrong labels still
open. This is a weighted round-robin: each class takes turns in proportion to its estimated errors (a class with
twice the estimated errors gets two places for the other's one), and since ``k <= w_c`` exactly for the suspects,
every class's suspects come before any sample past no cut. Ties go to the higher suspicion, then the lower index.
Then come the samples the expert answered (``status`` "answered", with ``expert_label``), then the excluded ones
(``status`` "excluded"), both in index order: they need no second look.

The model's view. With phase 1's model (``models/model.pt``) each row also gets ``suggested_label`` (the model's
most probable class) and ``label_quality``, cleanlab's self-confidence: the predicted probability of the given
label, from the model in eval mode without augmentation (lower = more likely wrong). The model trained on these
very samples (co-teaching keeps mostly the clean ones), so these are in-sample probabilities, not cleanlab's
out-of-fold ones.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alr_monai.csvcells import unescape_dict
from alr_monai.utils import atomic_write_csv

__all__ = ["LABEL_ISSUE_COLUMNS", "label_issues", "model_probabilities", "write_label_issues"]

LABEL_ISSUE_COLUMNS = [
    "rank",
    "id",
    "index",
    "given_label",
    "status",
    "expert_label",
    "suggested_label",
    "suggested_probability",
    "label_quality",
    "loss",
    "class_noise_estimate",
    "class_loss_quantile",
    "suspicion",
    "suspect",
    "trusted",
]
STATUSES = ("open", "answered", "excluded")


def _class_rates(metrics: dict, class_names: list[str]) -> list[float]:
    train = metrics.get("last", {}).get("train", {})
    fallback = train.get("forget_rate", train.get("noise_rate_estimate", 0.0)) or 0.0
    rates = []
    for name in class_names:
        rate = train.get(f"noise_rate_estimate/{name}")
        rates.append(float(fallback) if rate is None or (isinstance(rate, float) and math.isnan(rate)) else float(rate))
    return rates


def _expert_answers(run_dir: Path, ids: Sequence[str]) -> dict[str, int]:
    """The expert's current label by id (-1 = excluded) for every answered sample; {} before any round."""
    from alr_monai.relabel.state import EXCLUDED_LABEL, RoundState, relabel_outputs

    path = run_dir / "relabel" / "state.json"
    if not path.is_file() and not relabel_outputs(path.parent):
        return {}
    state = RoundState.load(path)  # a lost state with rounds refuses here, naming `alr recover`
    answered = {}
    for sample_id, label, source in zip(state.ids, state.current_labels, state.source, strict=True):
        if source in ("expert", "oracle") or label == EXCLUDED_LABEL:
            answered[sample_id] = label
    unknown = set(answered) - set(ids)
    if unknown:
        raise ValueError(f"{path} answers ids that {run_dir / 'selection.csv'} lacks (e.g. {sorted(unknown)[0]!r})")
    return answered


def model_probabilities(run_dir: str | Path) -> np.ndarray:
    """Phase 1's model's softmax probabilities (N, C) for every training sample, by selection.csv index.

    The model (``models/model.pt``) runs in eval mode on the un-augmented training images, built from the run's
    own bundle settings (run_config.json), so it sees what validation sees.

    Raises:
        FileNotFoundError: naming the missing run_config.json or models/model.pt.
    """
    import warnings

    import torch
    from monai.bundle import ConfigParser
    from monai.data import DataLoader, Dataset

    from alr_monai.evaluation import predict
    from alr_monai.relabel.phase1 import load_phase1_model
    from alr_monai.workflow import coerce_literal, load_run_config

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    model = run_dir / "models" / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(f"{model} is missing: phase 1 did not finish (`alr train --output_dir {run_dir}`)")
    parser = ConfigParser()
    parser.read_config(list(config["config_files"]))
    parser.update(pairs={key: coerce_literal(value) for key, value in config["overrides"].items()})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*resolved to an importable callable.*")
        items = parser.get_parsed_content("train#items")
        transform = parser.get_parsed_content("validate#preprocessing")
        network = parser.get_parsed_content("network")
        device = parser.get_parsed_content("device")
    load_phase1_model(network, model, device)
    loader = DataLoader(Dataset(list(items), transform), batch_size=256, shuffle=False, num_workers=0)
    outputs = predict(network, loader, device)
    probs = np.full((len(items), outputs["logits"].shape[1]), np.nan)
    probs[outputs["index"].numpy()] = torch.softmax(outputs["logits"].double(), 1).numpy()
    return probs


def label_issues(
    run_dir: str | Path, probabilities: np.ndarray | None = None, answers: dict[str, int] | None = None
) -> list[dict]:
    """Rows of :data:`LABEL_ISSUE_COLUMNS` for every training sample of a finished phase 1, in the order of the
    module docstring (open samples interleaved by class, then answered, then excluded).

    Args:
        run_dir: the phase-1 run folder.
        probabilities: model probabilities (N, C) by selection.csv index for ``suggested_label`` and
            ``label_quality``; None leaves those columns empty.
        answers: the expert's labels by id (-1 = excluded); None reads them from ``relabel/state.json``.

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
    with open(paths["selection.csv"], newline="", encoding="utf-8") as handle:
        records = [unescape_dict(record) for record in csv.DictReader(handle)]
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
    if answers is None:
        answers = _expert_answers(run_dir, [s[0] for s in samples])
    if probabilities is not None and (probabilities.ndim != 2 or probabilities.shape[1] != len(class_names)):
        raise ValueError(f"probabilities of shape {probabilities.shape} for {len(class_names)} classes")
    rows = []
    for cls, name in enumerate(class_names):
        members = sorted((s for s in samples if s[2] == cls and not math.isnan(s[3])), key=lambda s: (s[3], s[1]))
        for position, (sample_id, index, _label, loss, trusted) in enumerate(members):
            quantile = position / max(len(members) - 1, 1)
            suspicion = quantile - (1.0 - rates[cls])
            expert = answers.get(sample_id)
            row = {
                "id": sample_id,
                "index": index,
                "given_label": name,
                "status": "open" if expert is None else ("excluded" if expert < 0 else "answered"),
                "expert_label": "" if expert is None or expert < 0 else class_names[expert],
                "suggested_label": "",
                "suggested_probability": "",
                "label_quality": "",
                "loss": round(loss, 6),
                "class_noise_estimate": round(rates[cls], 4),
                "class_loss_quantile": round(quantile, 4),
                "suspicion": round(suspicion, 4),
                "suspect": int(suspicion > 0),
                "trusted": int(trusted),
                "_class": cls,
            }
            if probabilities is not None and index < len(probabilities) and not np.isnan(probabilities[index]).any():
                suggested = int(np.argmax(probabilities[index]))
                row["suggested_label"] = class_names[suggested]
                row["suggested_probability"] = round(float(probabilities[index, suggested]), 4)
                row["label_quality"] = round(float(probabilities[index, cls]), 4)
            rows.append(row)
    rows = interleave(rows, rates)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        del row["_class"]
    return rows


def interleave(rows: list[dict], rates: Sequence[float]) -> list[dict]:
    """Order rows as the module docstring says: open rows by ``k / w_c`` (a weighted round-robin over the given
    classes), then answered, then excluded rows by index. Each row needs ``_class``, ``status``, ``suspicion``,
    ``loss`` and ``index``."""
    by_suspicion = sorted(rows, key=lambda row: (-row["suspicion"], -row["loss"], row["index"]))
    open_rows = [row for row in by_suspicion if row["status"] == "open"]
    open_count = [0] * len(rates)
    for row in open_rows:
        open_count[row["_class"]] += 1
    seen = [0] * len(rates)
    keyed = []
    for row in open_rows:
        cls = row["_class"]
        seen[cls] += 1
        weight = rates[cls] * open_count[cls]  # the class's estimated wrong labels still open
        keyed.append((seen[cls] / weight if weight > 0 else math.inf, -row["suspicion"], row["index"], row))
    keyed.sort(key=lambda item: item[:3])
    done = {status: sorted((r for r in rows if r["status"] == status), key=lambda r: r["index"]) for status in STATUSES}
    return [item[3] for item in keyed] + done["answered"] + done["excluded"]


def write_label_issues(
    run_dir: str | Path, out: str | Path | None = None, probabilities: np.ndarray | None = None
) -> tuple[Path, list[dict]]:
    """Write ``label_issues.csv`` (default: into the run folder), atomically; returns its path and rows.

    Holds the run folder's lock, so it never writes while another alr command changes the run.

    Raises:
        RunLockedError: another process holds the run folder's lock.
    """
    from alr_monai.runlock import run_lock

    with run_lock(run_dir, "issues", create=False):
        rows = label_issues(run_dir, probabilities)
        path = Path(out) if out is not None else Path(run_dir) / "label_issues.csv"
        atomic_write_csv(path, rows, LABEL_ISSUE_COLUMNS)
    return path, rows
