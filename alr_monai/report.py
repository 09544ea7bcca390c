"""The report of a run: what phase 1 selected, how the model did, what each round fixed, and what is left to do.

``alr report`` writes ``report.md`` (PNG plots in ``report/``) and ``report.html`` (one self-contained file, the
plots embedded), both from the same sections, so they never say different things. Columns that need the
simulation's truth (clean recall, true noise rate) appear only when the run has it.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

from alr_monai.tables import format_cell, markdown_table
from alr_monai.utils import atomic_write_bytes, atomic_write_text

PLOT_DIR = "report"


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


def phase1_summary(run_dir: str | Path, metrics: dict | None = None) -> dict:
    """The headline numbers of phase 1 from ``metrics.json`` (test metrics of the validation-chosen model).

    ``metrics``: the file's content when the caller has read it already.
    """
    if metrics is None:
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


def _has_values(values: list) -> bool:
    return any(v is not None and v == v for v in values)


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _planned_rounds(run_dir: Path) -> int | None:
    """Rounds the run was asked for (run_config.json's relabel section, else the bundle's default)."""
    saved = (_load_json(run_dir / "run_config.json") or {}).get("relabel", {})
    if "relabel#num_rounds" in saved:
        return int(saved["relabel#num_rounds"])
    from alr_monai.workflow import bundle_file

    bundle = _load_json(Path(bundle_file("relabel.json"))) or {}
    value = bundle.get("relabel", {}).get("num_rounds")
    return int(value) if isinstance(value, int) else None


def _banners(run_dir: Path, metrics: dict, state: dict | None) -> list[str]:
    """What a reader must know first: an interrupted phase 1, a round waiting for answers, rounds not yet run."""
    banners = []
    if "test" not in metrics:
        banners.append(
            f"Phase 1 is unfinished (stopped after epoch {metrics.get('epoch')}, no test evaluation yet): it was "
            f"interrupted or is still running. Rerun `alr train --output_dir {run_dir}` to resume it."
        )
    if state is not None:
        pending = state.get("pending_round")
        if pending is not None:
            query = run_dir / "relabel" / "queries" / f"round_{pending}.csv"
            banners.append(
                f"Round {pending} waits for answers: fill {query} and run "
                f"`alr answer FILLED.csv --run_dir {run_dir}`, then `alr query --run_dir {run_dir}`."
            )
        planned = _planned_rounds(run_dir)
        done = int(state.get("round", 0))
        if pending is None and planned is not None and done < planned:
            banners.append(
                f"Phase 2 is unfinished: {done} of {planned} rounds applied. Rerun the same `alr relabel` or "
                f"`alr query` command (with --run_dir {run_dir}) to go on."
            )
    return banners


def _plots(run_dir: Path, summary: dict, metrics: dict, state: dict | None) -> list[tuple[str, str, str]]:
    """Render the report's figures; returns (section, caption, file name) for each PNG written."""
    import matplotlib.pyplot as plt

    from alr_monai.plots import confusion_matrix_figure, grouped_class_bars

    names = summary["class_names"]
    train = metrics["last"]["train"]
    figures: list[tuple[str, str, str, Any]] = []
    bars = {"kept fraction": summary["per_class_kept_fraction"]}
    if _has_values(summary["per_class_clean_recall"]):
        bars["clean recall (simulation)"] = summary["per_class_clean_recall"]
    figures.append(
        (
            "phase1",
            "kept_fraction",
            "Kept fraction per given class" + (" and clean recall" if len(bars) > 1 else ""),
            grouped_class_bars(bars, names, "what phase 1 kept", "fraction"),
        )
    )
    estimate = [train.get(f"noise_rate_estimate/{c}") for c in names]
    if _has_values(estimate):
        noise = {"estimate": estimate}
        truth = [train.get(f"noise_rate_true/{c}") for c in names]
        if _has_values(truth):
            noise["truth (simulation)"] = truth
        figures.append(
            (
                "phase1",
                "noise_estimate",
                "Noise-rate estimate per given class",
                grouped_class_bars(noise, names, "noise rate per given class", "noise rate"),
            )
        )
    test = metrics.get("test", {})
    if test.get("confusion_matrix"):
        figures.append(
            (
                "phase1",
                "confusion_phase1",
                "Test confusion matrix after phase 1",
                confusion_matrix_figure(test["confusion_matrix"], names, "test, phase-1 model"),
            )
        )
    history = (state or {}).get("history") or []
    if history:
        last = history[-1]["metrics"]
        if last.get("test_confusion_matrix"):
            title = f"test, after round {history[-1]['round']}"
            figures.append(
                (
                    "phase2",
                    "confusion_last_round",
                    "Test confusion matrix after the last round",
                    confusion_matrix_figure(last["test_confusion_matrix"], names, title),
                )
            )
        points = [(0, state.get("baseline_metrics") or {})] + [(h["budget_spent"], h["metrics"]) for h in history]
        spent = [p for p, _ in points]
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=80)
        left.plot(spent, [m.get("test_balanced_accuracy") for _, m in points], marker="o", label="test")
        left.plot(spent, [m.get("val_balanced_accuracy") for _, m in points], marker="s", label="validation")
        left.set_xlabel("labels spent")
        left.set_ylabel("balanced accuracy")
        left.legend(fontsize=8)
        for c, name in enumerate(names):
            recalls = [(m.get("test_per_class_recall") or [None] * len(names))[c] for _, m in points]
            right.plot(spent, recalls, marker=".", label=name)
        right.set_xlabel("labels spent")
        right.set_ylabel("test recall")
        right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        figure.tight_layout()
        figures.append(("phase2", "rounds", "Balanced accuracy and per-class test recall against labels spent", figure))
    folder = run_dir / PLOT_DIR
    folder.mkdir(exist_ok=True)
    written = []
    for section, stem, caption, figure in figures:
        name = f"{stem}.png"
        buffer = _png_bytes(figure)
        plt.close(figure)
        atomic_write_bytes(folder / name, buffer)
        written.append((section, caption, name))
    return written


def _png_bytes(figure: Any) -> bytes:
    import io

    stream = io.BytesIO()
    figure.savefig(stream, format="png", bbox_inches="tight")
    return stream.getvalue()


def _sections(run_dir: Path) -> list[tuple]:
    """The report as a list of blocks: ("h1"|"h2"|"p"|"banner", text), ("list", [text]), ("table", header,
    rows), ("image", caption, file name), ("links", [(label, path)]); rendered to markdown and to HTML."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = phase1_summary(run_dir, metrics)
    state = _load_json(run_dir / "relabel" / "state.json")
    plots = _plots(run_dir, summary, metrics, state)
    blocks: list[tuple] = [("h1", f"alr_monai report: {run_dir}")]
    blocks += [("banner", text) for text in _banners(run_dir, metrics, state)]
    blocks.append(("h2", "Phase 1: noise-robust training"))
    facts = [
        f"epochs: {summary['epochs']}; model chosen on validation balanced accuracy "
        f"{_fmt(summary['best_val_balanced_accuracy'])} (epoch {summary['best_val_epoch']})"
    ]
    if summary["test_balanced_accuracy"] is not None:
        facts.append(
            f"test: balanced accuracy {_fmt(summary['test_balanced_accuracy'])}, macro-F1 "
            f"{_fmt(summary['test_macro_f1'])}, AUROC {_fmt(summary['test_auroc'])}, MCC {_fmt(summary['test_mcc'])}"
        )
    estimate_line = f"noise rate estimate {_fmt(summary['noise_rate_estimate'])}"
    if summary["noise_rate_true"] is not None:
        estimate_line += f" (simulation truth {_fmt(summary['noise_rate_true'])})"
    facts.append(estimate_line + f"; final forget rate {_fmt(summary['forget_rate'])}")
    trusted_line = f"trusted (selected as clean): {_fmt(summary['kept_fraction'])} of the training set"
    if summary["selection_precision"] is not None:
        trusted_line += (
            f"; selection precision {_fmt(summary['selection_precision'])}, "
            f"lowest per-class clean recall {_fmt(summary['min_clean_recall'])}"
        )
    facts.append(trusted_line)
    blocks.append(("list", facts))
    simulation = _has_values(summary["per_class_clean_recall"])
    recalls = summary["test_per_class_recall"]
    header = ["class", "kept fraction", *(["clean recall (simulation)"] if simulation else []), "test recall"]
    rows = [
        [
            name,
            summary["per_class_kept_fraction"][i],
            *([summary["per_class_clean_recall"][i]] if simulation else []),
            recalls[i] if i < len(recalls) else None,
        ]
        for i, name in enumerate(summary["class_names"])
    ]
    blocks.append(("table", header, rows))
    blocks += [("image", caption, name) for section, caption, name in plots if section == "phase1"]
    rounds_csv = run_dir / "relabel" / "rounds.csv"
    if rounds_csv.is_file():
        blocks.append(("h2", "Phase 2: active relabel rounds"))
        with open(rounds_csv, newline="") as handle:
            table = list(csv.reader(handle))
        if table:
            blocks.append(("table", table[0], [[_number(cell) for cell in row] for row in table[1:]]))
        if state is not None and state.get("history"):
            points = [(0, state.get("baseline_metrics") or {})]
            points += [(entry["round"], entry["metrics"]) for entry in state["history"]]
            per_class = [[number, *(m.get("test_per_class_recall") or [])] for number, m in points]
            blocks += [
                ("p", "Per-class test recall by round:"),
                ("table", ["round", *summary["class_names"]], per_class),
            ]
            reasons = [
                f"round {entry['round']}: {entry['metrics']['model_choice_reason']}"
                for entry in state["history"]
                if entry.get("metrics", {}).get("model_choice_reason")
            ]
            if reasons:
                blocks += [("p", "Which model closed each round, and why (validation only):"), ("list", reasons)]
        blocks += [("image", caption, name) for section, caption, name in plots if section == "phase2"]
        blocks += _reader_blocks(run_dir / "relabel")
    links = [("selection.csv (every sample: loss, VoG, kept, trusted)", "selection.csv")]
    for label, relative in (
        ("labels_cleaned.csv (the labels after the expert's answers)", "relabel/labels_cleaned.csv"),
        ("audit.csv (every answer: who, when, old and new label)", "relabel/audit.csv"),
        ("label_issues.csv (`alr issues`)", "label_issues.csv"),
    ):
        if (run_dir / relative).is_file():
            links.append((label, relative))
    if state is not None and state.get("pending_round") is not None:
        relative = f"relabel/queries/round_{state['pending_round']}.csv"
        links.append((f"pending query of round {state['pending_round']} (to fill)", relative))
    blocks += [("h2", "Files"), ("links", links)]
    return blocks


def _number(cell: str) -> Any:
    try:
        return int(cell)
    except ValueError:
        try:
            return float(cell)
        except ValueError:
            return cell


def build_report(run_dir: str | Path) -> str:
    """Markdown for ``run_dir`` (writes the plots into ``run_dir/report/``)."""
    run_dir = Path(run_dir)
    return render_markdown(_sections(run_dir), run_dir)


def render_markdown(blocks: list[tuple], run_dir: Path) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "banner":
            lines += [f"> **{block[1]}**", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            lines += [markdown_table(block[1], block[2], _fmt), ""]
        elif kind == "image":
            lines += [f"![{block[1]}]({PLOT_DIR}/{block[2]})", ""]
        elif kind == "links":
            lines += [f"- [{label}]({path})" for label, path in block[1]] + [""]
    return "\n".join(lines).rstrip() + "\n"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px}
td{text-align:right}td:first-child{text-align:left}th{background:#f2f2f2}
.banner{background:#fff3cd;border:1px solid #e0b000;padding:.8em 1em;margin:1em 0;font-weight:600}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:13px}.wide{overflow-x:auto}"""


def render_html(blocks: list[tuple], run_dir: Path) -> str:
    """One self-contained page (styles inline, plots as data URIs); links are relative to the run folder."""
    escape = html.escape
    title = next((block[1] for block in blocks if block[0] == "h1"), "alr_monai report")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"]
    parts.append(f"<style>{_STYLE}</style></head><body>")
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{escape(block[1])}</{kind}>")
        elif kind == "banner":
            parts.append(f"<div class='banner' role='alert'>{escape(block[1])}</div>")
        elif kind == "p":
            parts.append(f"<p>{escape(block[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{escape(str(cell))}</th>" for cell in block[1])
            body = "".join(
                "<tr>" + "".join(f"<td>{escape(_fmt(cell))}</td>" for cell in row) + "</tr>" for row in block[2]
            )
            # a wide round table scrolls inside its box instead of pushing the page sideways
            parts.append(f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
        elif kind == "image":
            data = base64.b64encode((run_dir / PLOT_DIR / block[2]).read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{escape(block[1])}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{escape(block[1])}</figcaption></figure>"
            )
        elif kind == "links":
            items = "".join(f"<li><a href='{escape(path)}'>{escape(label)}</a></li>" for label, path in block[1])
            parts.append(f"<ul>{items}</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` (plots in ``report/``) and ``report.html`` into ``run_dir``; returns report.md's path.

    Holds the run folder's lock (re-entrant: train and relabel call it under theirs).

    Raises:
        RunLockedError: another process holds the run folder's lock.
    """
    from alr_monai.runlock import run_lock

    run_dir = Path(run_dir)
    with run_lock(run_dir, "report", create=False):
        blocks = _sections(run_dir)
        atomic_write_text(run_dir / "report.html", render_html(blocks, run_dir))
        return atomic_write_text(run_dir / "report.md", render_markdown(blocks, run_dir))


def _reader_blocks(relabel_dir: Path) -> list[tuple]:
    """Per round with several readers: how many answers each reader gave and how well they agreed."""
    rows = []
    found = {
        int(path.parent.name.removeprefix("round_")): path
        for path in relabel_dir.glob("answers/round_*/agreement.json")
    }
    for round_index, path in sorted(found.items()):
        agreement = json.loads(path.read_text())
        counts = ", ".join(f"{name} {count}" for name, count in agreement.get("reader_counts", {}).items())
        kappa = agreement.get("kappa")
        rows.append(
            [
                round_index,
                counts,
                agreement.get("agreement_samples"),
                agreement.get("percent_agreement"),
                "" if kappa is None else f"{kappa:.3f} ({agreement.get('kappa_kind')})",
            ]
        )
    if not rows:
        return []
    header = ["round", "answers per reader", "answered by all", "agreement", "kappa"]
    return [("p", "Readers: answers given and agreement between readers, per round:"), ("table", header, rows)]
