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

from alr_monai.csvcells import unescape_row
from alr_monai.tables import format_cell, markdown_escape, markdown_table
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


def phase1_story(run_dir: str | Path, seconds: float | None = None) -> str:
    """What the console says when phase 1 ends: a few lines of headline numbers (not the whole report).

    Args:
        run_dir: the run folder (its metrics.json).
        seconds: how long phase 1 took in this command (None: not said).
    """
    from alr_monai.handlers.console import format_duration

    summary = phase1_summary(run_dir)
    took = f" in {format_duration(seconds)}" if seconds is not None else ""
    lines = [f"Phase 1 done: {summary['epochs']} epochs{took}."]
    model = f"the model of epoch {summary['best_val_epoch']}, validation {_fmt(summary['best_val_balanced_accuracy'])}"
    if summary["test_balanced_accuracy"] is not None:
        lines.append(f"  test balanced accuracy {_fmt(summary['test_balanced_accuracy'])} ({model})")
    else:
        lines.append(f"  validation balanced accuracy {_fmt(summary['best_val_balanced_accuracy'])} (no test yet)")
    noise = f"  estimated noise {_fmt(summary['noise_rate_estimate'])}"
    if summary["noise_rate_true"] is not None:
        noise += f" (simulation truth {_fmt(summary['noise_rate_true'])})"
    if summary["kept_fraction"] is not None:
        noise += f"; trusted {summary['kept_fraction']:.0%} of the training set"
        if summary["selection_precision"] is not None:
            noise += f", {summary['selection_precision']:.0%} of it correctly labelled (simulation)"
    lines.append(noise)
    return "\n".join(lines)


def run_headline(run_dir: str | Path) -> str:
    """What the console says at the end of a command: the result in one line, then where to look.

    e.g. ``Result: test balanced accuracy 0.762 -> 0.805 after 500 labels (5 rounds), 434 labels fixed``, the
    report's path and the TensorBoard command.
    """
    run_dir = Path(run_dir)
    lines = []
    state = _load_json(run_dir / "relabel" / "state.json") or {}
    trained = [entry for entry in state.get("history") or [] if entry.get("metrics")]
    baseline = state.get("baseline_metrics") or {}
    if trained:
        split = "test" if trained[-1]["metrics"].get("test_balanced_accuracy") is not None else "val"
        before = baseline.get(f"{split}_balanced_accuracy")
        after = trained[-1]["metrics"].get(f"{split}_balanced_accuracy")
        fixed = sum(entry.get("labels_changed", 0) for entry in trained)
        spent = trained[-1].get("budget_spent")
        rounds = f"{len(trained)} round{'s' if len(trained) != 1 else ''}"
        lines.append(
            f"Result: {'test' if split == 'test' else 'validation'} balanced accuracy {_fmt(before)} -> {_fmt(after)} "
            f"after {spent} labels ({rounds}), {fixed} labels fixed"
        )
    lines.append(f"Report: {run_dir / 'report.html'} (and report.md)")
    lines.append(f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    return "\n".join(lines)


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
    # phase 1's own judgement of its trusted set (alr_monai.phase1_check): an early stop, an implausible share
    banners += [f"Warning: {warning}" for warning in metrics.get("warnings") or []]
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
        trained = [entry for entry in history if entry.get("metrics", {}).get("test_confusion_matrix")]
        if trained:
            last = trained[-1]["metrics"]
            title = f"test, after round {trained[-1]['round']}"
            figures.append(
                (
                    "phase2",
                    "confusion_last_round",
                    "Test confusion matrix after the last round",
                    confusion_matrix_figure(last["test_confusion_matrix"], names, title),
                )
            )
        points = [(0, state.get("baseline_metrics") or {})] + [(h["budget_spent"], h["metrics"]) for h in history]
        points = [(spent, m) for spent, m in points if m]  # an answered round is plotted once its model is trained
        spent = [p for p, _ in points]
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=80)
        left.plot(spent, [m.get("test_balanced_accuracy") for _, m in points], marker="o", label="test")
        left.plot(spent, [m.get("val_balanced_accuracy") for _, m in points], marker="s", label="validation")
        # the whole 0-1 scale with chance marked, so a gain of 0.04 looks like one (a zoomed axis exaggerates)
        chance = 1 / max(len(names), 1)
        left.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3f})")
        left.set_ylim(0, 1)
        left.set_xlabel("labels spent")
        left.set_ylabel("balanced accuracy (axis 0-1)")
        left.legend(fontsize=8, loc="lower right")
        for c, name in enumerate(names):
            recalls = [(m.get("test_per_class_recall") or [None] * len(names))[c] for _, m in points]
            right.plot(spent, recalls, marker=".", label=name)
        right.set_ylim(0, 1.02)
        right.set_xlabel("labels spent")
        right.set_ylabel("test recall (axis 0-1)")
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


def _estimator_facts(train: dict) -> list[str]:
    """The ensemble's estimators and their disagreement (noise_estimate#method ensemble), when phase 1 ran it."""
    prefix = "noise_rate_estimate_"
    estimators = {k[len(prefix) :]: v for k, v in train.items() if k.startswith(prefix)}
    if not estimators:
        return []
    line = "noise estimators: " + ", ".join(f"{name} {_fmt(value)}" for name, value in estimators.items())
    if "noise_estimate_epoch" in train:
        line += f" (after epoch {int(train['noise_estimate_epoch'])})"
    cautious = int(train.get("noise_estimate_cautious_classes", 0))
    if cautious:
        line += (
            f"; no majority of them agrees on {cautious} class(es) (the closest majority spans "
            f"{_fmt(train.get('noise_estimate_disagreement'))}), whose rates (the median) are uncertain: an audit "
            "in the first round (relabel#audit_per_class) measures them"
        )
    return [line]


def _sections(run_dir: Path) -> list[tuple]:
    """The report as a list of blocks: ("h1"|"h2"|"p"|"banner", text), ("list", [text]), ("table", header,
    rows), ("image", caption, file name), ("links", [(label, path)]); rendered to markdown and to HTML."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = phase1_summary(run_dir, metrics)
    state = _load_json(run_dir / "relabel" / "state.json")
    plots = _plots(run_dir, summary, metrics, state)
    blocks: list[tuple] = [("h1", f"alr_monai report: {run_dir}")]
    blocks += [("banner", text) for text in _banners(run_dir, metrics, state)]
    blocks.append(("summary", _at_a_glance(summary, state)))
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
    facts += _estimator_facts(metrics.get("last", {}).get("train", {}))
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
    header = ["Class", "Kept fraction", *(["Clean recall (simulation)"] if simulation else []), "Test recall"]
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
        with open(rounds_csv, newline="", encoding="utf-8") as handle:
            table = [unescape_row(cells) for cells in csv.reader(handle)]
        if table:
            # columns no round fills (the simulation's, on real data) are left out: the table fits the page
            filled = [i for i, name in enumerate(table[0]) if name == "round" or any(row[i] for row in table[1:])]
            names = [table[0][i] for i in filled]
            titles = [ROUND_TITLES.get(name, name.replace("_", " ")) for name in names]
            blocks.append(("table", titles, [[_number(row[i]) for i in filled] for row in table[1:]]))
            glossary = [text for name, text in ROUND_GLOSSARY.items() if name in names]
            if glossary:
                blocks.append(("notes", glossary))
        if state is not None and state.get("history"):
            points = [(0, state.get("baseline_metrics") or {})]
            points += [(entry["round"], entry["metrics"]) for entry in state["history"]]
            width = len(summary["class_names"])
            # a round answered but not yet recalibrated (after `alr answer`, before the next `alr query`) has no
            # metrics yet: its row shows n/a rather than breaking the table
            per_class = [
                [number, *((m.get("test_per_class_recall") or [None] * width)[:width])] for number, m in points
            ]
            blocks += [
                ("p", "Per-class test recall by round:"),
                ("table", ["Round", *summary["class_names"]], per_class),
            ]
            reasons = [
                f"round {entry['round']}: {entry['metrics']['model_choice_reason']}"
                for entry in state["history"]
                if entry.get("metrics", {}).get("model_choice_reason")
            ]
            if reasons:
                blocks += [("p", "Which model closed each round, and why (validation only):"), ("list", reasons)]
            untrained = [entry["round"] for entry in state["history"] if not entry.get("metrics")]
            if untrained:
                blocks.append(
                    (
                        "p",
                        f"Round {untrained[-1]} is answered; its model is trained (and its row of the rounds table "
                        f"written) by the next `alr query --run_dir {run_dir}`.",
                    )
                )
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


# rounds.csv's columns as the report titles them, and what each means (the CSV keeps its snake_case names)
ROUND_TITLES = {
    "round": "Round",
    "labels_spent": "Labels spent",
    "labels_changed": "Labels changed",
    "excluded": "Excluded",
    "errors_found": "Errors found",
    "yield": "Yield",
    "pool_noise_rate": "Pool noise rate",
    "val_balanced_accuracy": "Validation balanced accuracy",
    "test_balanced_accuracy": "Test balanced accuracy",
    "test_macro_f1": "Test macro-F1",
    "model": "Model",
}
ROUND_GLOSSARY = {
    "labels_spent": "Labels spent, changed, excluded: totals over the rounds so far; a change is an answer that "
    "differs from the given label.",
    "errors_found": "Errors found (simulation): answered samples whose given label was wrong.",
    "yield": "Yield (simulation): errors found / labels spent, the share of the asked labels that were wrong. At "
    "high noise the pool is mostly wrong, so even random questions score high: judge a round by the accuracy "
    "it gains per label, not by its yield.",
    "pool_noise_rate": "Pool noise rate (simulation): the share of the pool (samples phase 1 did not trust and "
    "nobody has answered yet) whose given label is wrong.",
    "val_balanced_accuracy": "Balanced accuracy: the mean of the per-class recalls (chance is 1 / number of "
    "classes); validation chooses the model, test is reported only.",
    "model": "Model: phase 1's model (round 0); adopted = the round's recalibrated model replaced the previous "
    "one; kept = the previous one stayed (the reasons are listed below).",
}


def _at_a_glance(summary: dict, state: dict | None) -> list[tuple[str, str, str]]:
    """The report's first lines: (what, value, note) for the model before and after the rounds, the labels spent
    and changed, the noise estimate and the trusted set."""
    items = []
    phase1_test = summary["test_balanced_accuracy"]
    if phase1_test is not None:
        items.append(("Test balanced accuracy after phase 1", _fmt(phase1_test), f"{summary['epochs']} epochs"))
    else:
        items.append(
            ("Validation balanced accuracy after phase 1", _fmt(summary["best_val_balanced_accuracy"]), "no test yet")
        )
    applied = (state or {}).get("history") or []
    trained = [entry for entry in applied if entry.get("metrics")]
    if trained:
        last = trained[-1]
        after = last["metrics"].get("test_balanced_accuracy")
        note = f"after round {last['round']}"
        if after is not None and phase1_test is not None:
            note += f", {after - phase1_test:+.3f} over phase 1"
        items.append(("Test balanced accuracy now", _fmt(after), note))
    if applied:  # answered rounds count although their model is not trained yet
        changed = sum(entry.get("labels_changed", 0) for entry in applied)
        excluded = sum(entry.get("excluded", 0) for entry in applied)
        items.append(
            (
                "Labels spent",
                _fmt(applied[-1].get("budget_spent")),
                f"{changed} changed, {excluded} excluded, in {len(applied)} round{'s' if len(applied) != 1 else ''}",
            )
        )
    noise_note = (
        f"simulation truth {_fmt(summary['noise_rate_true'])}" if summary["noise_rate_true"] is not None else ""
    )
    items.append(("Estimated noise rate", _fmt(summary["noise_rate_estimate"]), noise_note))
    if summary["kept_fraction"] is not None:
        precision = summary["selection_precision"]
        items.append(
            (
                "Trusted by phase 1",
                f"{summary['kept_fraction']:.0%}",
                "of the training set" + (f"; {precision:.0%} correctly labelled" if precision is not None else ""),
            )
        )
    return items


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


def _banner_markdown(text: str) -> str:
    """A banner's text escaped, but its `command` spans kept as code (inside one nothing is interpreted)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans at all
        return markdown_escape(text)
    return "`".join(part if number % 2 else markdown_escape(part) for number, part in enumerate(parts))


def render_markdown(blocks: list[tuple], run_dir: Path) -> str:
    """The blocks as markdown; every text from the data (class names, ids, paths) is escaped
    (:func:`~alr_monai.tables.markdown_escape`), so none of it becomes HTML or formatting."""
    escape = markdown_escape
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {escape(block[1])}", ""]
        elif kind == "h2":
            lines += [f"## {escape(block[1])}", ""]
        elif kind == "banner":
            lines += [f"> **{_banner_markdown(block[1])}**", ""]
        elif kind == "p":
            lines += [escape(block[1]), ""]
        elif kind == "list":
            lines += [f"- {escape(item)}" for item in block[1]] + [""]
        elif kind == "summary":
            lines += ["**At a glance**", ""]
            lines += [
                f"- {escape(what)}: **{escape(str(value))}**" + (f" ({escape(note)})" if note else "")
                for what, value, note in block[1]
            ]
            lines.append("")
        elif kind == "notes":
            lines += [f"- *{escape(item)}*" for item in block[1]] + [""]
        elif kind == "table":
            lines += [markdown_table([escape(t) for t in block[1]], block[2], lambda v: escape(_fmt(v))), ""]
        elif kind == "image":
            lines += [f"![{escape(block[1])}]({PLOT_DIR}/{block[2]})", ""]
        elif kind == "links":
            lines += [f"- [{escape(label)}]({path})" for label, path in block[1]] + [""]
    return "\n".join(lines).rstrip() + "\n"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}
td{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}td:first-child{text-align:left}
th{background:#f2f2f2;font-weight:600;vertical-align:bottom;max-width:9em}
.banner{background:#fff3cd;border:1px solid #e0b000;padding:.8em 1em;margin:1em 0;font-weight:600}
.summary{display:flex;flex-wrap:wrap;gap:12px;margin:1em 0 1.5em}
.card{border:1px solid #d0d7de;border-radius:8px;padding:.6em .9em;min-width:11em;background:#f8fafc}
.card .what{font-size:13px;color:#555}.card .value{font-size:26px;font-weight:650}.card .note{font-size:12px;color:#555}
ul.notes{font-size:13px;color:#444;margin-top:-.5em}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:13px}.wide{overflow-x:auto;max-width:100%}"""


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
        elif kind == "summary":
            cards = "".join(
                f"<div class='card'><div class='what'>{escape(what)}</div><div class='value'>{escape(value)}</div>"
                f"<div class='note'>{escape(note)}</div></div>"
                for what, value, note in block[1]
            )
            parts.append(f"<section class='summary' aria-label='at a glance'>{cards}</section>")
        elif kind == "notes":
            parts.append("<ul class='notes'>" + "".join(f"<li>{escape(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            # long class names may wrap after their underscores (immature_<wbr>granulocytes)
            head = "".join(f"<th>{escape(str(cell)).replace('_', '_<wbr>')}</th>" for cell in block[1])
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
