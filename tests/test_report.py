"""``alr report``: report.md with PNG plots and a self-contained report.html, on hand-made run folders."""

from __future__ import annotations

import base64
import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from alr_monai.report import write_report

NAMES = ["normal", "pneumonia", "rare"]


class _Page(HTMLParser):
    """Collects what a browser would load: images, links, alert banners, table header cells."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.banners: list[str] = []
        self.headers: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "div" and attrs.get("role") == "alert":
            self._in = "banner"
        elif tag == "th":
            self._in = "th"

    def handle_endtag(self, tag):
        if tag in ("div", "th"):
            self._in = None

    def handle_data(self, data):
        if self._in == "banner":
            self.banners.append(data)
        elif self._in == "th":
            self.headers.append(data)


def _run(tmp_path: Path, simulation: bool = True, finished: bool = True) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    train = {"kept_fraction": 0.6, "forget_rate": 0.4, "noise_rate_estimate": 0.4}
    for k, name in enumerate(NAMES):
        train[f"kept_fraction/{name}"] = 0.5 + 0.1 * k
        train[f"noise_rate_estimate/{name}"] = 0.3 + 0.1 * k
        if simulation:
            train[f"clean_recall/{name}"] = 0.8
            train[f"noise_rate_true/{name}"] = 0.35
    if simulation:
        train.update(noise_rate_true=0.4, selection_precision=0.9, min_clean_recall=0.8)
    metrics = {"epoch": 3, "class_names": NAMES, "last": {"epoch": 3, "train": train}, "history": []}
    metrics.update(best_val_metric=0.7, best_val_epoch=2)
    if finished:
        metrics["test"] = {
            "balanced_accuracy": 0.7,
            "macro_f1": 0.6,
            "auroc": 0.8,
            "mcc": 0.5,
            "per_class_recall": [0.9, 0.7, 0.5],
            "confusion_matrix": [[9, 1, 0], [2, 7, 1], [1, 0, 1]],
            "class_names": NAMES,
        }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "selection.csv").write_text("id\n")
    return run


def _add_rounds(run: Path, applied: int, planned: int, pending: int | None) -> None:
    relabel = run / "relabel"
    (relabel / "queries").mkdir(parents=True)
    round_metrics = {
        "test_balanced_accuracy": 0.75,
        "val_balanced_accuracy": 0.72,
        "test_per_class_recall": [0.9, 0.8, 0.6],
        "test_confusion_matrix": [[9, 1, 0], [1, 8, 1], [0, 1, 1]],
    }
    history = [
        {
            "round": r,
            "budget_spent": 10 * r,
            "metrics": {**round_metrics, "model_choice_reason": f"adopted: val 0.7{r} within 1 SE"},
        }
        for r in range(1, applied + 1)
    ]
    state = {"round": applied, "pending_round": pending, "history": history, "baseline_metrics": round_metrics}
    (relabel / "state.json").write_text(json.dumps(state))
    with open(relabel / "rounds.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["round", "labels_spent", "test_balanced_accuracy"])
        writer.writerows([[r, 10 * r, 0.75] for r in range(applied + 1)])
    (relabel / "labels_cleaned.csv").write_text("id,label\n")
    (relabel / "audit.csv").write_text("id\n")
    if pending is not None:
        (relabel / "queries" / f"round_{pending}.csv").write_text("id\n")
    (run / "run_config.json").write_text(json.dumps({"relabel": {"relabel#num_rounds": planned}}))


def _page(run: Path) -> _Page:
    page = _Page()
    page.feed((run / "report.html").read_text())
    return page


def test_finished_run_report_has_every_plot_embedded_and_the_files_linked(tmp_path):
    run = _run(tmp_path)
    _add_rounds(run, applied=2, planned=2, pending=None)
    markdown = write_report(run).read_text()
    pngs = sorted((run / "report").glob("*.png"))
    names = {p.stem for p in pngs}
    assert names == {"kept_fraction", "noise_estimate", "confusion_phase1", "confusion_last_round", "rounds"}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert f"(report/{png.name})" in markdown
    page = _page(run)
    assert len(page.images) == len(pngs)
    for src in page.images:  # self-contained: data URIs holding real PNGs
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert {"relabel/labels_cleaned.csv", "relabel/audit.csv", "selection.csv"} <= set(page.links)
    for link in page.links:
        assert (run / link).is_file()
    assert page.banners == []
    assert "Clean recall (simulation)" in page.headers
    assert "round 2: adopted: val 0.72 within 1 SE" in markdown  # the model choice's reason, per round


def test_real_data_report_has_no_simulation_columns(tmp_path):
    run = _run(tmp_path, simulation=False)
    markdown = write_report(run).read_text()
    assert "simulation" not in markdown
    assert "Clean recall (simulation)" not in _page(run).headers


@pytest.mark.parametrize(
    "finished, applied, planned, pending, words",
    [
        (False, None, None, None, ["Phase 1 is unfinished", "alr train --output_dir"]),
        (True, 1, 3, 2, ["Round 2 waits for answers", "round_2.csv", "alr answer"]),
        (True, 1, 3, None, ["Phase 2 is unfinished: 1 of 3 rounds applied"]),
    ],
)
def test_unfinished_runs_get_a_banner_that_says_what_to_do(tmp_path, finished, applied, planned, pending, words):
    run = _run(tmp_path, finished=finished)
    if applied is not None:
        _add_rounds(run, applied, planned, pending)
    markdown = write_report(run).read_text()
    banner = " ".join(_page(run).banners)
    for word in words:
        assert word in banner and word in markdown
    if pending is not None:
        assert f"relabel/queries/round_{pending}.csv" in _page(run).links


def _full_rounds_csv(run: Path) -> None:
    """rounds.csv with every column the driver writes (simulation columns filled)."""
    from alr_monai.relabel.driver import ROUND_COLUMNS

    values = {"round": 0, "labels_spent": 0, "labels_changed": 0, "excluded": 0, "errors_found": 0, "yield": ""}
    values.update(pool_noise_rate=0.9, val_balanced_accuracy=0.72, test_balanced_accuracy=0.7, test_macro_f1=0.6)
    rows = [values, {**values, "round": 1, "labels_spent": 10, "labels_changed": 8, "errors_found": 8, "yield": 0.8}]
    with open(run / "relabel" / "rounds.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROUND_COLUMNS)
        writer.writeheader()
        writer.writerows([{**row, "model": "phase 1" if row["round"] == 0 else "adopted"} for row in rows])


def test_report_opens_with_a_summary_and_titles_and_explains_its_columns(tmp_path):
    """Issue 25 item 7: headline numbers first, human column titles, yield and pool noise rate explained."""
    run = _run(tmp_path)
    _add_rounds(run, applied=2, planned=2, pending=None)
    _full_rounds_csv(run)
    write_report(run)
    text = (run / "report.html").read_text()
    summary = text.index("class='summary'")
    assert summary < text.index("<h2>"), "the summary comes before the first section"
    cards = text[summary : text.index("</section>", summary)]
    assert "Test balanced accuracy after phase 1" in cards and "0.700" in cards
    assert "Test balanced accuracy now" in cards and "0.750" in cards and "+0.050 over phase 1" in cards
    assert "Labels spent" in cards and ">20<" in cards
    headers = _page(run).headers
    for title in ("Round", "Labels spent", "Yield", "Pool noise rate", "Test balanced accuracy", "Test macro-F1"):
        assert title in headers, headers
    assert not [h for h in headers if h in ("labels_spent", "pool_noise_rate", "test_balanced_accuracy")], headers
    assert "errors found / labels spent" in text and "Pool noise rate (simulation): the share of the pool" in text
    markdown = (run / "report.md").read_text()
    assert "**At a glance**" in markdown and "| Round | Labels spent |" in markdown


def test_real_data_round_table_leaves_out_the_simulation_columns(tmp_path):
    run = _run(tmp_path, simulation=False)
    _add_rounds(run, applied=1, planned=1, pending=None)
    _full_rounds_csv(run)
    rounds = run / "relabel" / "rounds.csv"
    rows = list(csv.DictReader(open(rounds, newline="")))
    for row in rows:
        row.update(errors_found="", pool_noise_rate="", **{"yield": ""})
    with open(rounds, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_report(run)
    headers = _page(run).headers
    assert "Labels spent" in headers and "Yield" not in headers and "Pool noise rate" not in headers
    assert "simulation" not in (run / "report.md").read_text()


def test_accuracy_axis_of_the_rounds_plot_is_not_zoomed(tmp_path, monkeypatch):
    from alr_monai import report

    figures = []
    original = report._png_bytes
    monkeypatch.setattr(report, "_png_bytes", lambda figure: figures.append(figure) or original(figure))
    run = _run(tmp_path)
    _add_rounds(run, applied=2, planned=2, pending=None)
    write_report(run)
    (rounds,) = [figure for figure in figures if len(figure.axes) == 2]
    accuracy, recall = rounds.axes
    assert accuracy.get_ylim() == (0.0, 1.0) and recall.get_ylim()[0] == 0.0
    assert any("chance" in text.get_text() for text in accuracy.get_legend().get_texts())
