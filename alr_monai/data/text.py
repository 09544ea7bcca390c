"""The rule for text a person types that alr writes back into files: ids, patient ids, class names, answers.

Such text travels through CSV files, spreadsheets, a query page and the audit trail, so characters that a reader
cannot see, or that change what the reader sees, are refused where the text comes in, naming where it was:

- control characters (line breaks, tabs, NUL, DEL, C1 codes): a line break in an id splits its row in every CSV
  and a spreadsheet hides them;
- bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C): a right-to-left override makes
  ``abc`` display as ``cba``;
- zero-width characters (U+200B-U+200D, U+2060, U+FEFF): ``a`` and ``a`` + zero-width space look the same.

Class names are also compared in NFC normal form, ignoring case (see :func:`text_key`), so ``café`` typed with a
combining accent is the class ``café``.
"""

from __future__ import annotations

import unicodedata

__all__ = ["BIDI_CONTROLS", "ZERO_WIDTH", "comment_problem", "normalize_comment", "text_key", "text_problem"]

BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")


def _describe(character: str) -> str:
    name = unicodedata.name(character, "")
    if not name:
        name = {"\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\t": "TAB", "\0": "NUL"}.get(character, "control")
    return f"U+{ord(character):04X} {name}"


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be an id, patient id, class name or answer, or None when it is fine.

    Args:
        value: the text.

    Returns:
        e.g. ``"contains a control character (U+000A LINE FEED)"``.
    """
    for character in value:
        if unicodedata.category(character) in ("Cc", "Zl", "Zp"):
            return f"contains a control character ({_describe(character)}; line breaks, tabs and NUL are refused)"
        if character in BIDI_CONTROLS:
            return f"contains a bidirectional control character ({_describe(character)}), which changes how it reads"
        if character in ZERO_WIDTH:
            return f"contains an invisible zero-width character ({_describe(character)})"
    return None


def text_key(value: str) -> str:
    """How two names are compared: NFC normal form, zero-width characters and surrounding whitespace removed, case
    folded (``Café``, ``cafe`` + combining acute and ``caf`` + zero-width space + ``é`` are one name)."""
    visible = "".join(character for character in value if character not in ZERO_WIDTH)
    # Unicode's canonical caseless match: case folding can un-normalise ("SS" + combining acute folds from
    # "ß" + acute but composes differently), so normalise on both sides of it
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", visible).casefold()).strip()


def normalize_comment(value: str) -> str:
    """A free-text comment with its line breaks as ``\\n`` (a lone carriage return would split a CSV row)."""
    return value.replace("\r\n", "\n").replace("\r", "\n")


def comment_problem(value: str) -> str | None:
    """Why a (normalised) comment cannot be recorded, or None: control characters other than tab and line feed
    (a NUL byte, say) are refused."""
    for character in value:
        if character not in "\t\n" and unicodedata.category(character) == "Cc":
            return f"contains a control character ({_describe(character)})"
    return None
