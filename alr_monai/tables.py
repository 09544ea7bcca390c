"""Markdown tables: the one writer behind report.md, the round table and the benchmark's results.md."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["format_cell", "markdown_escape", "markdown_table"]

_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]|~])")
_LONE_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def markdown_escape(text: Any) -> str:
    """``text`` shown as itself in markdown: HTML (``<``, ``>``, ``&``) as entities, so a class name cannot carry a
    tag into a rendered page, and the characters that make emphasis, code, links or table cells (``\\ ` * [ ] |
    ~``, and ``_`` outside a word) backslash-escaped. ``snake_case`` words stay as they are."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _LONE_UNDERSCORE.sub(r"\\_", _MARKDOWN_SPECIAL.sub(r"\\\1", text))


def format_cell(value: Any, missing: str = "", digits: int = 3) -> str:
    """One table cell: floats with ``digits`` decimals, None and NaN as ``missing``, anything else as ``str``.

    Args:
        value: the cell's value.
        missing: text for a value that does not exist (None) or could not be measured (NaN).
        digits: decimals of a float.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    header: Sequence[Any], rows: Iterable[Sequence[Any]], fmt: Callable[[Any], str] = format_cell
) -> str:
    """A GitHub-flavoured markdown table, one line per row, without a trailing newline.

    Args:
        header: column titles.
        rows: one sequence of cells per row, as long as ``header``.
        fmt: turns a cell's value into its text (default :func:`format_cell`); titles are used as given.

    Raises:
        ValueError: a row does not have one cell per column.
    """
    titles = [str(title) for title in header]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for number, row in enumerate(rows, 1):
        cells = list(row)
        if len(cells) != len(titles):
            raise ValueError(f"markdown table row {number} has {len(cells)} cells for {len(titles)} columns")
        lines.append("| " + " | ".join(fmt(cell) for cell in cells) + " |")
    return "\n".join(lines)
