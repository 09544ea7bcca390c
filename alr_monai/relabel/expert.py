"""Expert query and answer files for phase 2 (active relabeling).

Each round writes a query CSV that a radiologist can open in a spreadsheet: one row per sample worth a second
look, labels written as class names, and two empty columns (``expert_label``, ``comment``) to fill in. The
expert hands back either that same file filled in, or any CSV with ``id`` and ``expert_label`` columns.

Reading the answers is all-or-nothing: every problem in the file (unknown or duplicate ids, labels outside the
class set, missing columns, ...) is collected and reported in one :class:`AnswerError`, and nothing is applied
until the file is clean, so an expert fixes the file once instead of once per error.

:class:`OracleExpert` is the simulated expert. It and noise injection are the only readers of ground truth,
and it answers through the same CSV files as a human so simulations exercise the real file path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import operator
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alr_monai.csvcells import escape_row, unescape_cell
from alr_monai.data.classes import EXCLUDE, EXCLUDED, check_class_names
from alr_monai.data.text import comment_problem, normalize_comment, text_key, text_problem
from alr_monai.utils import atomic_write_csv, atomic_write_text, read_csv

QUERY_COLUMNS = [
    "id",
    "image",
    "given_label",
    "predicted_label",
    "predicted_probability",
    "score",
    "patient_id",
    "expert_label",
    "comment",
]
ANSWER_COLUMNS = ["id", "expert_label", "comment"]
REQUIRED_ANSWER_COLUMNS = ("id", "expert_label")

__all__ = [
    "ANSWER_COLUMNS",
    "EXCLUDE",
    "QUERY_COLUMNS",
    "REQUIRED_ANSWER_COLUMNS",
    "Answer",
    "AnswerError",
    "OracleExpert",
    "check_class_names",
    "class_label",
    "class_legend",
    "read_answers",
    "write_query_file",
]


@dataclass(frozen=True)
class Answer:
    """One expert answer.

    Attributes:
        id: sample id.
        label: class index, or None when the expert left the label blank (skipped) or excluded the sample.
        excluded: the expert asked to remove the sample from training.
        comment: free text from the expert (may be empty).
        reader: who answered (an ``reader`` column of the answers file, or the name given to ``alr answer``).
    """

    id: str
    label: int | None
    excluded: bool = False
    comment: str = ""
    reader: str = ""

    def __post_init__(self) -> None:
        if self.excluded and self.label is not None:
            raise ValueError(f"answer for {self.id!r}: an excluded sample has no label (got {self.label})")

    @property
    def skipped(self) -> bool:
        """True when the expert gave neither a label nor an exclusion: the sample stays in the pool."""
        return self.label is None and not self.excluded


MAX_REPORTED_PROBLEMS = 50
"""Problems an :class:`AnswerError` lists; the rest are counted ("... and N more problems")."""


class AnswerError(ValueError):
    """An answers file has problems; ``problems`` lists each as ``<file> row <n>: <reason>`` (header is row 1).

    Only the first :data:`MAX_REPORTED_PROBLEMS` are kept and listed; ``total`` counts them all.
    """

    def __init__(self, problems: Sequence[str], total: int | None = None) -> None:
        self.problems = list(problems)[:MAX_REPORTED_PROBLEMS]
        self.total = max(len(problems), total or 0)
        count = self.total
        header = f"{count} problem{'s' if count != 1 else ''} in the expert answers; nothing was applied:"
        lines = [header, *(f"  {p}" for p in self.problems)]
        if count > len(self.problems):
            lines.append(f"  ... and {count - len(self.problems)} more problems (the first {len(self.problems)} shown)")
        super().__init__("\n".join(lines))


class _Problems:
    """Collects problems, keeping the first :data:`MAX_REPORTED_PROBLEMS` and counting the rest, so a huge bad file
    costs neither memory nor a flood of output."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self.count = 0

    def append(self, problem: str) -> None:
        self.count += 1
        if len(self.kept) < MAX_REPORTED_PROBLEMS:
            self.kept.append(problem)

    def __bool__(self) -> bool:
        return self.count > 0

    def error(self) -> AnswerError:
        return AnswerError(self.kept, self.count)


def class_legend(class_names: Sequence[str]) -> str:
    """The class numbers an expert types or presses: ``"1 = basophil, 2 = eosinophil, ..."``.

    Classes are numbered from 1, as on the query page (keys 1-9) and in ``expert_label``; class index ``i`` (what
    the code and the saved files use) is number ``i + 1``.
    """
    return ", ".join(f"{number} = {name}" for number, name in enumerate(class_names, start=1))


def class_label(index: int, class_names: Sequence[str]) -> str:
    """A class as a person reads it in messages: ``"3 (erythroblast)"`` (its 1-based number and its name)."""
    return f"{index + 1} ({class_names[index]})"


class _LabelParser:
    """Turns an ``expert_label`` cell into (label, excluded) or a reason it is not a valid answer.

    A bare number is the class's number from 1, as the query page shows it (key 3 = the third class); 0 and
    numbers past the last class are refused with the legend, never read as another class.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.names = check_class_names(class_names)
        # the rule class names are unique under: NFC, case and zero-width characters ignored
        self.by_name = {text_key(name): index for index, name in enumerate(self.names)}
        # If any class is itself named like an integer ("1", "2", ...), "1" could mean the class named "1" or
        # class number 1; accept names only, so an answer can never silently mean two different classes.
        self.indices_allowed = not any(_is_int(name.strip()) for name in self.names)

    def expected(self) -> str:
        if self.indices_allowed:
            choices = f"a class name or number ({class_legend(self.names)})"
        else:
            choices = f"a class name ({', '.join(self.names)})"
        return f"{choices}, '{EXCLUDE}', or blank to skip"

    def parse(self, raw: str) -> tuple[int | None, bool, str | None]:
        value = raw.strip()
        key = text_key(value)
        if value and text_problem(value) is not None:
            return None, False, f"expert_label {raw!r} {text_problem(value)}"
        if not key:
            return None, False, None
        if key in (EXCLUDE, EXCLUDED):  # casefolded, as every key; class names may be neither (check_class_names)
            return None, True, None
        if key in self.by_name:
            return self.by_name[key], False, None
        if self.indices_allowed and _is_int(value):
            number = int(value)
            if 1 <= number <= len(self.names):
                return number - 1, False, None
            return (
                None,
                False,
                f"class number {number} is out of range: classes are numbered 1-{len(self.names)}, as on the query "
                f"page ({class_legend(self.names)})",
            )
        hint = closest_name(key, list(self.by_name))
        if hint is not None:
            hint_text = f" (did you mean {self.names[self.by_name[hint]]!r}?)"
        else:
            hint_text = ""
        return None, False, f"expert_label {raw!r} is not valid{hint_text}: expected {self.expected()}"


def closest_name(text: str, names: Sequence[str]) -> str | None:
    """The name in ``names`` closest to ``text`` (a typo of it), or None when none is close."""
    import difflib

    matches = difflib.get_close_matches(text, list(names), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _label_index(value: object, num_classes: int, what: str) -> int:
    try:
        index = operator.index(value)  # accepts numpy integers, rejects floats and bools-as-strings
    except TypeError:
        raise ValueError(f"{what} must be an integer class index, got {value!r}") from None
    if not 0 <= index < num_classes:
        raise ValueError(f"{what} {index} is out of range 0-{num_classes - 1}")
    return index


def _format_float(value: object) -> str:
    number = float(value)  # type: ignore[arg-type]
    # four decimals in every row, so a column of scores reads (and sorts) evenly in a spreadsheet
    return "" if math.isnan(number) else f"{number:.4f}"


def write_query_file(
    path: str | Path, rows: Sequence[Mapping[str, object]], class_names: Sequence[str], overwrite: bool = False
) -> Path:
    """Write the query CSV an expert fills in (columns :data:`QUERY_COLUMNS`), atomically.

    Labels are written as class names so the expert reads them; ``expert_label`` and ``comment`` are empty.
    Rewriting identical content is a no-op (a rerun that recomputes the same query is fine), but a different
    query never silently replaces one an expert may already be filling in.

    Args:
        path: output CSV.
        rows: one mapping per sample, in the order the expert should see them, with ``id``, ``given_label`` and
            ``predicted_label`` (class indices), ``predicted_probability`` and ``score`` (floats), and optional
            ``image`` and ``patient_id`` (strings; missing or None becomes empty).
        class_names: class names by index.
        overwrite: replace an existing query file whose content differs.

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists with different content and ``overwrite`` is False.
        ValueError: a row lacks a field, repeats an id, or has a label outside the class set.
    """
    names = check_class_names(class_names)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(QUERY_COLUMNS)
    seen: set[str] = set()
    for position, row in enumerate(rows):
        where = f"query row {position} ({row.get('id', '?')!r})"
        missing = [
            key for key in ("id", "given_label", "predicted_label", "predicted_probability", "score") if key not in row
        ]
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        sample_id = str(row["id"])
        if not sample_id.strip():
            raise ValueError(f"{where} has an empty id")
        if text_problem(sample_id) is not None:
            raise ValueError(f"{where}: id {sample_id!r} {text_problem(sample_id)}")
        if sample_id in seen:
            raise ValueError(f"{where}: duplicate id {sample_id!r}")
        seen.add(sample_id)
        given = _label_index(row["given_label"], len(names), f"{where} given_label")
        predicted = _label_index(row["predicted_label"], len(names), f"{where} predicted_label")
        writer.writerow(
            escape_row(
                [
                    sample_id,
                    "" if row.get("image") is None else str(row["image"]),
                    names[given],
                    names[predicted],
                    _format_float(row["predicted_probability"]),
                    _format_float(row["score"]),
                    "" if row.get("patient_id") is None else str(row["patient_id"]),
                    "",
                    "",
                ]
            )
        )
    text = buffer.getvalue()
    path = Path(path)
    if path.exists():
        if path.read_bytes() == text.encode("utf-8"):
            return path  # same query recomputed: leave the file (and its mtime) alone
        if not overwrite:
            raise FileExistsError(
                f"query file {path} already exists with different content, and an expert may be filling it in; "
                "move it away, or pass overwrite=True to replace it"
            )
    return atomic_write_text(path, text, private=True)


def _ordered(ids: Collection[str]) -> list[str]:
    # Sets iterate in a per-process hash order; sort them so results never depend on the process.
    if isinstance(ids, Sequence) and not isinstance(ids, str):
        return [str(i) for i in ids]
    return sorted(str(i) for i in ids)


def _cell(record: list[str], column: int | None) -> str:
    """A cell as the expert meant it: surrounding whitespace and the spreadsheet-safe prefix removed."""
    return unescape_cell(record[column].strip()) if column is not None and column < len(record) else ""


def _first_bad_line(path: Path) -> int:
    """The physical line holding the first byte that is not UTF-8 (read line by line: memory stays small)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _records(path: Path) -> Iterator[tuple[int, tuple[int, int], list[str]]]:
    """Yield ``(row, (first line, last line), cells)`` for each CSV record of ``path``, streamed.

    Blank lines are yielded as ``[]`` so record n is spreadsheet row n. The reader is strict: a quote that is never
    closed (which would otherwise swallow every following line into one cell) or a stray quote inside a cell stops
    the reading with :class:`AnswerError` naming the row where it starts (that problem alone: the rows' cells
    cannot be trusted), as does a file that is not UTF-8.
    """
    with open(path, encoding="utf-8-sig", newline="") as handle:
        try:
            first_line = handle.readline().rstrip("\r\n")
            handle.seek(0)
            delimiter = ","
            # Spreadsheets in some locales save with ';' (or tabs); take the delimiter that yields the required
            # columns.
            for candidate in (",", ";", "\t"):
                cells = {cell.strip().lower() for cell in next(csv.reader([first_line], delimiter=candidate), [])}
                if set(REQUIRED_ANSWER_COLUMNS) <= cells:
                    delimiter = candidate
                    break
            reader = csv.reader(handle, delimiter=delimiter, strict=True)
            row, last_line = 0, 0
            for record in reader:
                row += 1
                yield row, (last_line + 1, reader.line_num), record
                last_line = reader.line_num
        except UnicodeDecodeError:
            raise AnswerError(
                [f"{path} row {_first_bad_line(path)}: not UTF-8 text; save the file as 'CSV UTF-8'"]
            ) from None
        except csv.Error as error:
            if "unexpected end of data" in str(error):
                reason = (
                    'a quote (") opened in this row is never closed, so every line after it would be read as one '
                    "cell; close the quote or remove it"
                )
            else:
                reason = f'malformed CSV ({error}); a quote (") inside a cell must be doubled ("")'
            raise AnswerError([f"{path} row {row + 1} (line {last_line + 1}): {reason}"]) from None


def read_answers(
    path: str | Path,
    class_names: Sequence[str],
    queried_ids: Collection[str],
    known_ids: Collection[str],
    allow_empty: bool = False,
    reader: str = "",
) -> list[Answer]:
    """Read and validate an expert's answers file.

    Required columns are ``id`` and ``expert_label`` (header names ignore case and surrounding whitespace);
    ``comment`` and ``reader`` are optional and any other column is ignored, so the filled-in query file itself is a valid
    answers file. ``expert_label`` may be a class name (any case), a class number counted from 1 as on the query
    page (see :func:`class_legend`), ``exclude`` or ``excluded`` in any case (remove the sample from training) or
    blank (skipped: the sample stays in the pool); a misspelled name is refused with the closest class. Rows whose cells are all blank are ignored;
    every other row must have the header's number of cells (extra cells may only be empty). The CSV is parsed
    strictly: an unterminated or stray quote is an error naming its row, never a silently swallowed row.

    Args:
        path: the answers CSV (comma, semicolon or tab separated; UTF-8, BOM allowed).
        class_names: class names by index.
        queried_ids: ids queried this round; queried ids absent from the file count as skipped.
        known_ids: every id in the dataset, to tell a typo from a sample of another round.
        allow_empty: accept a file that answers nothing (every label blank, or no row at all), which closes the
            round with every queried sample skipped; by default such a file is refused, because it is most often
            the query file saved back unfilled.
        reader: the reader of rows whose ``reader`` cell is blank or absent.

    Returns:
        One answer per answered row in file order, then a skipped answer for each queried id not in the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AnswerError: listing every problem at once (nothing is returned, so nothing can be applied).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"answers file {path} does not exist")
    parser = _LabelParser(class_names)
    queried = _ordered(queried_ids)
    queried_set = set(queried)
    known = {str(i) for i in known_ids}
    problems = _Problems()
    records = _records(path)
    first = next(records, None)
    if first is None or not any(cell.strip() for cell in first[2]):
        if not any(any(cell.strip() for cell in record) for _, _, record in records):
            raise AnswerError([f"{path} row 1: the file is empty (expected a header with columns id, expert_label)"])
    header_cells = first[2] if first is not None else []
    header = [cell.strip().lower() for cell in header_cells]
    for column in REQUIRED_ANSWER_COLUMNS:
        if column not in header:
            problems.append(f"{path} row 1: missing required column {column!r} (header: {header_cells})")
    for column in (*REQUIRED_ANSWER_COLUMNS, "comment", "reader"):
        if header.count(column) > 1:
            problems.append(f"{path} row 1: column {column!r} appears {header.count(column)} times")
    if problems:
        raise problems.error()
    id_col, label_col = header.index("id"), header.index("expert_label")
    comment_col = header.index("comment") if "comment" in header else None
    reader_col = header.index("reader") if "reader" in header else None

    answers: list[Answer] = []
    first_row: dict[str, int] = {}  # queried ids only, so a huge file of unknown ids cannot fill memory
    for row_number, (first_line, last_line), record in records:
        if not any(cell.strip() for cell in record):
            continue
        where = f"{path} row {row_number}"
        if first_line != last_line:
            where += f" (lines {first_line}-{last_line})"
        row_ok = True
        if any(value.strip() for value in record[len(header) :]):
            problems.append(f"{where}: {len(record)} cells but the header has {len(header)} (an unquoted comma?)")
            row_ok = False
        elif len(record) < len(header):
            problems.append(
                f"{where}: {len(record)} cells but the header has {len(header)}; every row needs the header's "
                "columns (a cell typed in the wrong column, or a lost separator?)"
            )
            row_ok = False
        for column, name in ((id_col, "id"), (label_col, "expert_label")):
            if "\n" in _cell(record, column) or "\r" in _cell(record, column):
                problems.append(
                    f"{where}: the {name} cell spans several lines (a quote opened and closed rows apart?); "
                    "remove the stray quotes"
                )
                row_ok = False
        if not row_ok:
            continue  # the row's cells are not where the header says: checking their values would mislead
        sample_id = _cell(record, id_col).strip()
        raw_label = _cell(record, label_col)
        comment = normalize_comment(_cell(record, comment_col))
        for name, value, reason in (
            ("id", sample_id, text_problem(sample_id)),
            ("reader", _cell(record, reader_col), text_problem(_cell(record, reader_col))),
            ("comment", comment, comment_problem(comment)),
        ):
            if reason is not None:
                problems.append(f"{where}, column {name!r}: {value!r} {reason}")
                row_ok = False
        if not sample_id:
            problems.append(f"{where}: empty id")
            row_ok = False
        elif sample_id not in known:
            problems.append(f"{where}: unknown id {sample_id!r} (not in the dataset)")
            row_ok = False
        elif sample_id not in queried_set:
            problems.append(f"{where}: id {sample_id!r} was not queried in this round")
            row_ok = False
        if sample_id and sample_id in first_row:
            problems.append(f"{where}: duplicate id {sample_id!r} (first on row {first_row[sample_id]})")
            row_ok = False
        elif sample_id in queried_set:
            first_row[sample_id] = row_number
        label, excluded, reason = parser.parse(raw_label)
        if reason is not None:
            problems.append(f"{where}: {reason}")
            row_ok = False
        if row_ok:
            row_reader = _cell(record, reader_col).strip() or reader
            answers.append(Answer(sample_id, label, excluded, comment.strip(), row_reader))
    if not problems and not allow_empty and all(answer.skipped for answer in answers):
        problems.append(
            f"{path}: no answer at all (every expert_label is blank; was the query file saved back unfilled?): "
            "fill expert_label with a class name or 'exclude', or, to close the round with no answers, rerun the "
            "same `alr answer` command (with its --run_dir) adding --allow_empty"
        )
    if problems:
        raise problems.error()
    answered = {answer.id for answer in answers}
    answers.extend(Answer(sample_id, None, False, "", reader) for sample_id in queried if sample_id not in answered)
    return answers


class OracleExpert:
    """A simulated expert that knows the truth; for simulation studies only.

    Each answer is the true label, except that with probability ``error_rate`` it is wrong, uniformly over the
    other classes. The randomness of an answer is derived from (seed, round_index, sample id), so a resumed run
    answers a round identically, and an answer does not depend on the order in which ids were queried.

    Args:
        true_labels: true class index by sample id.
        num_classes: number of classes.
        error_rate: probability that an answer is wrong, in [0, 1].
        seed: non-negative seed.
        class_names: names written by :meth:`fill_query_file` (defaults to ``"0"``, ``"1"``, ...).
    """

    def __init__(
        self,
        true_labels: Mapping[str, int],
        num_classes: int,
        error_rate: float = 0.0,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        if error_rate > 0 and num_classes < 2:
            raise ValueError("an oracle with one class cannot give a wrong answer; use error_rate=0")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.num_classes = int(num_classes)
        self.error_rate = float(error_rate)
        self.seed = int(seed)
        names = [str(c) for c in range(num_classes)] if class_names is None else list(class_names)
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        self.class_names = check_class_names(names)
        self._truth = {
            str(key): _label_index(value, num_classes, f"true label of {key!r}") for key, value in true_labels.items()
        }

    def reader(self, number: int) -> OracleExpert:
        """Simulated reader ``number`` (1, 2, ...): the same truth and error rate, its own random errors."""
        return OracleExpert(
            self._truth, self.num_classes, self.error_rate, self.seed * 7919 + number, list(self.class_names)
        )

    def _rng(self, sample_id: str, round_index: int) -> np.random.Generator:
        digest = int.from_bytes(hashlib.sha256(sample_id.encode("utf-8")).digest()[:16], "little")
        return np.random.default_rng(np.random.SeedSequence([self.seed, round_index, digest]))

    def answer(self, ids: Sequence[str], round_index: int) -> list[Answer]:
        """Answer the queried ``ids`` of round ``round_index`` (comment ``"oracle"``).

        Raises:
            KeyError: an id has no known true label.
        """
        if round_index < 0:
            raise ValueError(f"round_index must be non-negative, got {round_index}")
        answers = []
        for sample_id in map(str, ids):
            if sample_id not in self._truth:
                raise KeyError(f"the oracle has no true label for id {sample_id!r}")
            label = self._truth[sample_id]
            if self.error_rate > 0:
                rng = self._rng(sample_id, round_index)
                if rng.random() < self.error_rate:
                    # Draw among the C - 1 other classes, then skip over the true one.
                    wrong = int(rng.integers(self.num_classes - 1))
                    label = wrong + (wrong >= label)
            answers.append(Answer(sample_id, label, False, "oracle"))
        return answers

    def fill_query_file(self, query_path: str | Path, answers_path: str | Path, round_index: int) -> Path:
        """Answer every id of a query file and write an answers CSV (id, expert_label as class name, comment).

        Returns:
            The answers path written (atomically).
        """
        header, rows = read_csv(query_path)
        if "id" not in header:
            raise ValueError(f"query file {query_path} has no 'id' column")
        answers = self.answer([row["id"].strip() for row in rows], round_index)
        out = (
            {"id": a.id, "expert_label": "" if a.label is None else self.class_names[a.label], "comment": a.comment}
            for a in answers
        )
        return atomic_write_csv(answers_path, out, ANSWER_COLUMNS)
