"""The one rule for class names, shared by manifests (phase 1) and expert files (phase 2).

A class name must survive the whole pipeline: it is read from a manifest or a config, written into query files a
person edits in a spreadsheet, typed back by an expert in any case, and written into the audit trail beside the
word ``excluded``. So a name that phase 2 would reject must already be rejected when phase 1 loads its data.
"""

from __future__ import annotations

import numbers
import unicodedata
from collections.abc import Sequence

from alr_monai.data.text import text_key, text_problem

__all__ = ["EXCLUDE", "EXCLUDED", "RESERVED_NAMES", "check_class_names", "class_name_problems"]

EXCLUDE = "exclude"
"""The expert's answer that removes a sample from training."""
EXCLUDED = "excluded"
"""How an excluded sample's label is written in audit.csv and labels_cleaned.csv."""
RESERVED_NAMES = (EXCLUDE, EXCLUDED)


def _as_name(value: object) -> str | None:
    # Configs may give class names as numbers (JSON [0, 1]); labels in a CSV are always text.
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    return None


def class_name_problems(class_names: Sequence[object]) -> list[tuple[int, str]]:
    """Every problem of a list of class names, as ``(position, reason)`` pairs in list order.

    Rules: each name is text (or an integer, taken as its decimal text), is not blank, has no leading or trailing
    whitespace, no control characters (tabs, line breaks: a spreadsheet cell hides them), no bidirectional controls
    and no zero-width characters (:func:`alr_monai.data.text.text_problem`), is unique in NFC normal form ignoring
    case and zero-width characters (the expert may type any case; names that look the same are one name), and is
    not one of the reserved words ``exclude`` / ``excluded``. Names are compared and returned in NFC form.

    Args:
        class_names: the names, by class index.

    Returns:
        ``(index, reason)`` for each bad name; empty when every name is fine. An empty list of names is not
        checked here (see :func:`check_class_names`).
    """
    problems: list[tuple[int, str]] = []
    seen: dict[str, str] = {}
    for index, value in enumerate(class_names):
        name = _as_name(value)
        if name is None:
            problems.append((index, f"class name {value!r} is not text"))
            continue
        key = text_key(name)
        if not key:
            problems.append((index, f"class name {name!r} is empty"))
            continue
        if key in seen:
            problems.append(
                (
                    index,
                    f"class names {seen[key]!r} and {name!r} clash: the expert's answers ignore case, Unicode "
                    "normal form and zero-width characters",
                )
            )
            continue
        seen[key] = name
        if key in RESERVED_NAMES:
            problems.append(
                (
                    index,
                    f"{name!r} cannot be a class name: it is reserved for excluding a sample ({EXCLUDE!r} is the "
                    f"expert's answer, {EXCLUDED!r} the label written for it)",
                )
            )
        elif name != name.strip():
            problems.append((index, f"class name {name!r} has leading or trailing whitespace"))
        elif text_problem(name) is not None:
            problems.append((index, f"class name {name!r} {text_problem(name)}"))
    return problems


def check_class_names(class_names: Sequence[object], where: str = "class_names") -> list[str]:
    """Validate class names (rules in :func:`class_name_problems`) and return them as a list of strings.

    Args:
        class_names: the names, by class index.
        where: what the names are and where they come from, to start the error message (e.g. a file name).

    Returns:
        The names as strings, in order.

    Raises:
        ValueError: ``class_names`` is a single string or empty, or a name breaks a rule; the message starts
            with ``where`` and lists every bad name.
    """
    if isinstance(class_names, (str, bytes)):
        raise ValueError(f"{where}: must be a sequence of names, not a single string ({class_names!r})")
    names = list(class_names)
    if not names:
        raise ValueError(f"{where}: class_names is empty")
    problems = class_name_problems(names)
    if problems:
        raise ValueError(f"{where}: " + "; ".join(f"class {index}: {reason}" for index, reason in problems))
    return [_as_name(name) for name in names]  # type: ignore[misc]
