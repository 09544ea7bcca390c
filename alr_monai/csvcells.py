"""The one rule that keeps CSV cells from running as spreadsheet formulas, and undoes itself exactly.

Every CSV alr writes may be opened in a spreadsheet program (query and answers files by the expert, audit.csv and
labels_cleaned.csv by a reviewer, label_issues.csv by a data manager), and ids, patient ids, comments and reader
names come from people. A cell starting with ``=``, ``+``, ``-``, ``@``, a tab, a carriage return or a line feed
can be read as a formula (``=HYPERLINK("http://evil.example","y")``), so, as OWASP recommends for CSV injection,
such a cell is written with a leading apostrophe, which spreadsheets show as text; so is one whose first character
after leading spaces is one of these (some programs trim the spaces). To keep the rule reversible a cell that
itself starts with an apostrophe (after leading spaces) gets one more. Plain numbers (``-3``, ``+0.5``, ``-1e-05``) are written
as they are: a spreadsheet reads them as numbers, never as formulas.

Every CSV reader of alr undoes the rule (one leading apostrophe is dropped), so an id ``=1+1`` goes out as
``'=1+1`` and comes back as ``=1+1``; a spreadsheet that drops the apostrophe on saving gives ``=1+1`` back too.
The one consequence for hand-made files (a manifest, an answers file): a cell whose real value starts with an
apostrophe must be written with two.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "ESCAPE",
    "FORMULA_STARTS",
    "escape_cell",
    "escape_dict",
    "escape_row",
    "unescape_cell",
    "unescape_dict",
    "unescape_row",
]

ESCAPE = "'"
"""The prefix that makes a spreadsheet show a cell as text."""
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
"""First characters that make a spreadsheet read a cell as a formula (OWASP's list, plus a line feed)."""

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def escape_cell(value: Any) -> Any:
    """A cell as written: text starting with a formula character or an apostrophe gets a leading apostrophe.

    Non-text values (numbers, None) are returned unchanged; the csv module formats them.
    """
    if not isinstance(value, str):
        return value
    head = value.lstrip(" ")
    if head[:1] == ESCAPE or (head[:1] in FORMULA_STARTS and head and not _NUMBER.fullmatch(head)):
        return ESCAPE + value
    return value


def unescape_cell(text: str) -> str:
    """A cell as read: one leading apostrophe is dropped (the inverse of :func:`escape_cell` for text)."""
    return text[1:] if text.startswith(ESCAPE) else text


def escape_row(cells: Iterable[Any]) -> list[Any]:
    """:func:`escape_cell` of every cell of a ``csv.writer`` row."""
    return [escape_cell(cell) for cell in cells]


def unescape_row(cells: Iterable[str]) -> list[str]:
    """:func:`unescape_cell` of every cell of a ``csv.reader`` row."""
    return [unescape_cell(cell) for cell in cells]


def escape_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`escape_cell` of every value of a ``csv.DictWriter`` row."""
    return {key: escape_cell(value) for key, value in row.items()}


def unescape_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`unescape_cell` of every text value of a ``csv.DictReader`` row (None for short rows is kept)."""
    return {key: unescape_cell(value) if isinstance(value, str) else value for key, value in row.items()}
