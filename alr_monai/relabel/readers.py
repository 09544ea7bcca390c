"""Several readers per round: each reader's answers are kept, a consensus rule decides, disagreements go to an
adjudicator, and the agreement between readers is measured (Cohen's kappa for two, Fleiss' for more).

In clinical studies one reader is not ground truth: a label is settled by two or more readers and an adjudicator,
and inter-reader agreement is itself a reported number. The round's answers file (``answers/round_<k>.csv``)
that the rest of phase 2 applies is written only when the decision is complete, so the round logic, the audit
trail and ``alr recover`` work unchanged; every reader's answer is kept under ``answers/round_<k>/`` and named in
the decided row's audit comment.

Pure Python for the rules (:func:`consensus`, :func:`cohen_kappa`, :func:`fleiss_kappa`); the file flow
(:func:`submit_reader_answers`) is what ``alr answer --reader NAME`` calls when the run has more than one reader.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from alr_monai.csvcells import escape_dict
from alr_monai.relabel.expert import EXCLUDE, Answer, read_answers
from alr_monai.runlock import run_lock
from alr_monai.utils import atomic_write_bytes, atomic_write_json

__all__ = [
    "ADJUDICATOR",
    "CONSENSUS_RULES",
    "ReaderSettings",
    "ReaderVote",
    "cohen_kappa",
    "consensus",
    "fleiss_kappa",
    "read_reader_settings",
    "reader_agreement",
    "submit_reader_answers",
    "write_reader_settings",
]

CONSENSUS_RULES = ("majority", "unanimous")
ADJUDICATOR = "adjudicator"
SETTINGS_FILE = "readers.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


@dataclass(frozen=True)
class ReaderSettings:
    """How many readers answer each round and how their answers are combined."""

    readers: int = 1
    rule: str = "majority"

    def __post_init__(self) -> None:
        if self.readers < 1:
            raise ValueError(f"readers must be >= 1, got {self.readers}")
        if self.rule not in CONSENSUS_RULES:
            raise ValueError(f"consensus must be one of {CONSENSUS_RULES}, got {self.rule!r}")


def write_reader_settings(relabel_dir: str | Path, settings: ReaderSettings) -> None:
    """Record the run's reader settings beside state.json (``alr answer`` reads them)."""
    atomic_write_json(Path(relabel_dir) / SETTINGS_FILE, {"readers": settings.readers, "consensus": settings.rule})


def read_reader_settings(relabel_dir: str | Path) -> ReaderSettings:
    """The run's reader settings; one reader when none were recorded (runs from before readers existed)."""
    path = Path(relabel_dir) / SETTINGS_FILE
    if not path.is_file():
        return ReaderSettings()
    data = json.loads(path.read_text())
    return ReaderSettings(int(data["readers"]), str(data["consensus"]))


@dataclass(frozen=True)
class ReaderVote:
    """One reader's answer reduced to what is compared: a class index, "exclude", or None (skipped)."""

    reader: str
    vote: int | str | None
    comment: str = ""

    @staticmethod
    def of(answer: Answer) -> ReaderVote:
        vote: int | str | None = EXCLUDE if answer.excluded else answer.label
        return ReaderVote(answer.reader, vote, answer.comment)


def consensus(votes: Sequence[ReaderVote], readers: int, rule: str = "majority") -> int | str | None:
    """The decided answer for one sample, or None when the readers did not settle it.

    "majority": more than half of the ``readers`` gave the same answer (a skip is no answer). "unanimous": all
    ``readers`` gave the same answer. Answers are class indices or "exclude".
    """
    if rule not in CONSENSUS_RULES:
        raise ValueError(f"consensus must be one of {CONSENSUS_RULES}, got {rule!r}")
    counts = Counter(v.vote for v in votes if v.vote is not None)
    if not counts:
        return None
    answer, count = counts.most_common(1)[0]
    needed = readers if rule == "unanimous" else readers // 2 + 1
    return answer if count >= needed else None


def cohen_kappa(first: Sequence[object], second: Sequence[object]) -> float:
    """Cohen's kappa of two readers' answers on the same samples: (p_o - p_e) / (1 - p_e)."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} and {len(second)} answers: the readers must answer the same samples")
    n = len(first)
    if n == 0:
        return float("nan")
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    a_counts, b_counts = Counter(first), Counter(second)
    expected = sum(a_counts[c] * b_counts[c] for c in set(a_counts) | set(b_counts)) / n**2
    return 1.0 if expected == 1.0 else (observed - expected) / (1.0 - expected)


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from a subjects x categories table of rating counts (every subject rated by the same n)."""
    rows = [list(map(int, row)) for row in table]
    if not rows:
        return float("nan")
    n = sum(rows[0])
    if n < 2 or any(sum(row) != n for row in rows):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings for every subject")
    subjects = len(rows)
    p_j = [sum(row[j] for row in rows) / (subjects * n) for j in range(len(rows[0]))]
    p_i = [(sum(c * c for c in row) - n) / (n * (n - 1)) for row in rows]
    p_bar, p_e = sum(p_i) / subjects, sum(p * p for p in p_j)
    return 1.0 if p_e == 1.0 else (p_bar - p_e) / (1.0 - p_e)


def reader_agreement(votes_by_reader: Mapping[str, Mapping[str, ReaderVote]]) -> dict:
    """Per-reader answer counts and the agreement on the samples every reader answered (kappa: Cohen's for two
    readers, Fleiss' for more; ``kappa_kind`` says which)."""
    names = sorted(votes_by_reader)
    counts = {name: sum(v.vote is not None for v in votes_by_reader[name].values()) for name in names}
    common = set.intersection(*(set(k for k, v in votes_by_reader[n].items() if v.vote is not None) for n in names))
    common_ids = sorted(common)
    summary: dict = {"reader_counts": counts, "agreement_samples": len(common_ids)}
    if len(names) < 2 or not common_ids:
        return summary
    columns = [[votes_by_reader[name][i].vote for i in common_ids] for name in names]
    summary["percent_agreement"] = sum(len({col[k] for col in columns}) == 1 for k in range(len(common_ids))) / len(
        common_ids
    )
    if len(names) == 2:
        summary.update(kappa=cohen_kappa(columns[0], columns[1]), kappa_kind="cohen")
    else:
        categories = sorted({str(v) for col in columns for v in col})
        table = [[sum(str(col[k]) == c for col in columns) for c in categories] for k in range(len(common_ids))]
        summary.update(kappa=fleiss_kappa(table), kappa_kind="fleiss")
    return summary


def _answers_csv(rows: Sequence[Mapping[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "expert_label", "comment", "reader"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(escape_dict(row) for row in rows)
    return buffer.getvalue().encode("utf-8")


def _vote_text(vote: int | str | None, class_names: Sequence[str]) -> str:
    if vote is None:
        return "skip"
    return EXCLUDE if vote == EXCLUDE else class_names[int(vote)]


def submit_reader_answers(
    relabel_dir: str | Path,
    round_index: int,
    queried_ids: Sequence[str],
    known_ids: Sequence[str],
    class_names: Sequence[str],
    answers_file: str | Path,
    reader: str,
    settings: ReaderSettings,
    allow_empty: bool = False,
) -> dict:
    """Keep one reader's answers for a round and, once every reader is in, decide the round.

    The file is validated like any answers file, then kept as ``answers/round_<k>/<reader>.csv`` (atomically;
    a reader may replace their own file until the round is decided). With all ``settings.readers`` files in, the
    consensus rule decides each sample; undecided samples are written to ``queries/round_<k>_adjudication.csv``
    (with every reader's answer) for the reader named "adjudicator". When nothing is left undecided (or the
    adjudicator's file is in), ``answers/round_<k>.csv`` is written: decided labels, with every reader's answer in
    the comment, and the reader column naming who decided. That file is then applied as any round's answers.

    Returns:
        ``status``: "waiting" (readers missing: ``missing``), "adjudication" (``adjudication_file``, ``disputed``) or
        "decided" (``answers_file``); plus the agreement summary (:func:`reader_agreement`) once all are in.

    Raises:
        RunLockedError: another process holds the run folder's lock (another alr command writing the run
            refuses this one).
    """
    # the whole submission holds the run folder's lock: a reader's file and the round's decision change together
    with run_lock(Path(relabel_dir).resolve().parent, "answer", create=False):
        if not _NAME.match(reader):
            raise ValueError(
                f"reader name {reader!r}: use letters, digits, spaces, '.', '_' or '-' (up to 64), e.g. --reader dr_lee"
            )
        relabel_dir = Path(relabel_dir)
        folder = relabel_dir / "answers" / f"round_{round_index}"
        final = relabel_dir / "answers" / f"round_{round_index}.csv"
        if final.exists():
            raise ValueError(f"round {round_index} is already decided ({final}); its readers' files are in {folder}")
        read_answers(answers_file, class_names, queried_ids, known_ids, allow_empty, reader)  # refuse a bad file
        atomic_write_bytes(folder / f"{reader}.csv", Path(answers_file).read_bytes(), private=True)

        readers_in = sorted(p.stem for p in folder.glob("*.csv") if p.stem != ADJUDICATOR)
        votes = {
            name: {
                a.id: ReaderVote.of(a)
                for a in read_answers(folder / f"{name}.csv", class_names, queried_ids, known_ids, True, name)
            }
            for name in readers_in
        }
        result: dict = {"readers_in": readers_in}
        if len(readers_in) < settings.readers:
            result.update(status="waiting", missing=settings.readers - len(readers_in))
            return result
        result.update(reader_agreement(votes))
        atomic_write_json(folder / "agreement.json", {k: v for k, v in result.items() if k != "readers_in"})
        decided: dict[str, int | str | None] = {}
        disputed: list[str] = []
        for sample_id in queried_ids:
            sample_votes = [votes[name][sample_id] for name in readers_in if sample_id in votes[name]]
            decision = consensus(sample_votes, len(readers_in), settings.rule)
            if decision is None and any(v.vote is not None for v in sample_votes):
                disputed.append(sample_id)
            decided[sample_id] = decision
        adjudication = relabel_dir / "queries" / f"round_{round_index}_adjudication.csv"
        adjudicator_file = folder / f"{ADJUDICATOR}.csv"
        if disputed and not adjudicator_file.exists():
            rows = [
                {
                    "id": i,
                    **{
                        f"reader_{n}": _vote_text(votes[n][i].vote if i in votes[n] else None, class_names)
                        for n in readers_in
                    },
                    "expert_label": "",
                    "comment": "",
                }
                for i in disputed
            ]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(escape_dict(row) for row in rows)
            atomic_write_bytes(adjudication, buffer.getvalue().encode("utf-8"), private=True)
            result.update(status="adjudication", adjudication_file=str(adjudication), disputed=len(disputed))
            return result
        adjudicated = (
            {a.id: a for a in read_answers(adjudicator_file, class_names, disputed, known_ids, True, ADJUDICATOR)}
            if disputed
            else {}
        )
        rows = []
        for sample_id in queried_ids:
            said = "; ".join(
                f"{n}: {_vote_text(votes[n][sample_id].vote, class_names)}"
                + (f" ({votes[n][sample_id].comment})" if votes[n][sample_id].comment else "")
                for n in readers_in
                if sample_id in votes[n]
            )
            if sample_id in adjudicated:
                answer = adjudicated[sample_id]
                label = _vote_text(ReaderVote.of(answer).vote, class_names) if not answer.skipped else ""
                comment = f"adjudicated; {said}" + (f"; adjudicator: {answer.comment}" if answer.comment else "")
                rows.append({"id": sample_id, "expert_label": label, "comment": comment, "reader": ADJUDICATOR})
            else:
                vote = decided[sample_id]
                label = "" if vote is None else _vote_text(vote, class_names)
                rows.append(
                    {
                        "id": sample_id,
                        "expert_label": label,
                        "comment": f"{settings.rule}; {said}",
                        "reader": "consensus",
                    }
                )
        atomic_write_bytes(final, _answers_csv(rows), private=True)
        result.update(status="decided", answers_file=str(final), disputed=len(disputed))
        return result
