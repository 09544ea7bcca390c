"""A plain markdown report of a run: what phase 1 selected, how the model did, and what each round fixed."""

from __future__ import annotations

import json
from pathlib import Path

from alr_monai.tables import format_cell, markdown_table
from alr_monai.utils import atomic_write_text


def _fmt(value) -> str:
    return format_cell(value, missing="n/a")


def _class_mae(train: dict, class_names: list) -> float | None:
    """Mean absolute error of the per-class noise estimates against the simulation's truth (None without both)."""
    errors = []
    for name in class_names:
        estimate, truth = train.get(f"noise_rate_estimate/{name}"), train.get(f"noise_rate_true/{name}")
        if estimate is not None and truth is not None and estimate == estimate and truth == truth:
            errors.append(abs(estimate - truth))
    return sum(errors) / len(errors) if errors else None


def phase1_summary(run_dir: str | Path) -> dict:
    """The headline numbers of phase 1 from ``metrics.json`` (test metrics of the validation-chosen model)."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    train = metrics["last"]["train"]
    class_names = metrics.get("class_names") or metrics.get("test", {}).get("class_names", [])
    test = metrics.get("test", {})
    return {
        "class_names": class_names,
        "epochs": metrics["epoch"],
        "best_val_balanced_accuracy": metrics.get("best_val_metric"),
        "best_val_epoch": metrics.get("best_val_epoch"),
        "test_balanced_accuracy": test.get("balanced_accuracy"),
        "test_macro_f1": test.get("macro_f1"),
        "test_auroc": test.get("auroc"),
        "test_mcc": test.get("mcc"),
        "test_per_class_recall": test.get("per_class_recall", []),
        "noise_rate_estimate": train.get("noise_rate_estimate"),
        "noise_rate_true": train.get("noise_rate_true"),
        "forget_rate": train.get("forget_rate"),
        "kept_fraction": train.get("kept_fraction"),
        "selection_precision": train.get("selection_precision"),
        "min_clean_recall": train.get("min_clean_recall"),
        "label_error_auroc": train.get("label_error_auroc"),
        "label_error_ap": train.get("label_error_ap"),
        "noise_rate_class_mae": _class_mae(train, class_names),
        "per_class_kept_fraction": [train.get(f"kept_fraction/{c}") for c in class_names],
        "per_class_clean_recall": [train.get(f"clean_recall/{c}") for c in class_names],
    }


def build_report(run_dir: str | Path) -> str:
    """Markdown for ``run_dir``: phase 1 headline and per-class table, then phase 2's round table if any."""
    run_dir = Path(run_dir)
    summary = phase1_summary(run_dir)
    lines = [f"# alr_monai report: {run_dir}", "", "## Phase 1: noise-robust training", ""]
    lines.append(
        f"- epochs: {summary['epochs']}; model chosen on validation balanced accuracy "
        f"{_fmt(summary['best_val_balanced_accuracy'])} (epoch {summary['best_val_epoch']})"
    )
    lines.append(
        f"- test: balanced accuracy {_fmt(summary['test_balanced_accuracy'])}, macro-F1 {_fmt(summary['test_macro_f1'])}"
        f", AUROC {_fmt(summary['test_auroc'])}, MCC {_fmt(summary['test_mcc'])}"
    )
    estimate_line = f"- noise rate estimate {_fmt(summary['noise_rate_estimate'])}"
    if summary["noise_rate_true"] is not None:
        estimate_line += f" (simulation truth {_fmt(summary['noise_rate_true'])})"
    lines.append(estimate_line + f"; final forget rate {_fmt(summary['forget_rate'])}")
    trusted_line = f"- trusted (selected as clean): {_fmt(summary['kept_fraction'])} of the training set"
    if summary["selection_precision"] is not None:
        trusted_line += (
            f"; selection precision {_fmt(summary['selection_precision'])}, "
            f"lowest per-class clean recall {_fmt(summary['min_clean_recall'])}"
        )
    recalls = summary["test_per_class_recall"]
    class_rows = [
        [
            name,
            summary["per_class_kept_fraction"][i],
            summary["per_class_clean_recall"][i],
            recalls[i] if i < len(recalls) else None,
        ]
        for i, name in enumerate(summary["class_names"])
    ]
    header = ["class", "kept fraction", "clean recall (simulation)", "test recall"]
    lines += [trusted_line, "", markdown_table(header, class_rows, _fmt)]
    rounds = run_dir / "relabel" / "rounds.md"
    if rounds.exists():
        lines += ["", "## Phase 2: active relabel rounds", "", rounds.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` into ``run_dir`` and return its path."""
    return atomic_write_text(Path(run_dir) / "report.md", build_report(run_dir))
