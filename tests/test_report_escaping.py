"""Issue 24 item 15: report.md (and rounds.md) carry no raw HTML or markdown from class names and ids."""

from __future__ import annotations

import json

import markdown  # Python-Markdown, which tensorboard depends on: renders raw HTML as a markdown viewer would
import pytest
import test_report
from test_report import _add_rounds, _run

from alr_monai.report import write_report
from alr_monai.tables import markdown_escape

HOSTILE = ["<img src=x onerror=alert(1)>", "**bold** [link](javascript:alert(1))", "a|b_`c`"]


@pytest.mark.parametrize("text", [*HOSTILE, "snake_case", "plain", "-0.5", "x & y"])
def test_markdown_escape_shows_the_text_as_itself(text):
    html = markdown.markdown(f"| h |\n|---|\n| {markdown_escape(text)} |", extensions=["tables"])
    cell = html.split("<td>")[1].split("</td>")[0]
    expected = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    assert cell == expected


def test_report_md_escapes_class_names(tmp_path, monkeypatch):
    monkeypatch.setattr(test_report, "NAMES", HOSTILE)
    run = _run(tmp_path)  # metrics.json with the hostile class names
    assert json.loads((run / "metrics.json").read_text())["class_names"] == HOSTILE
    _add_rounds(run, applied=1, planned=1, pending=None)
    html = markdown.markdown(write_report(run).read_text(), extensions=["tables"])
    assert "<img src=x" not in html and "<strong>bold" not in html and 'href="javascript' not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "**bold** [link](javascript:alert(1))" in html
    assert "a|b_<code>" not in html and "a|b_`c`" in html
