"""The one markdown table writer."""

from __future__ import annotations

import pytest

from alr_monai.tables import format_cell, markdown_table


def test_markdown_table_layout_and_cells():
    table = markdown_table(["round", "accuracy", "note"], [[0, 0.5, None], [1, float("nan"), "ok"]])
    assert table == "| round | accuracy | note |\n|---|---|---|\n| 0 | 0.500 |  |\n| 1 |  | ok |"
    assert markdown_table(["a"], [], lambda v: format_cell(v, "n/a")) == "| a |\n|---|"


def test_format_cell_and_row_length_check():
    assert format_cell(None, "n/a") == "n/a" and format_cell(float("nan"), "n/a") == "n/a"
    assert format_cell(0.12345) == "0.123" and format_cell(0.12345, digits=1) == "0.1"
    assert format_cell(3) == "3" and format_cell("x") == "x"
    with pytest.raises(ValueError, match="row 2 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [[1, 2], [3]])
