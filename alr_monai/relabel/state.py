"""Crash-safe state of the active relabeling rounds, the audit trail, and the cleaned-label file.

A round has two steps, each of which may be killed at any moment and simply rerun:

1. :func:`start_round` records the queried ids as the pending round and writes the query CSV. The query file
   is written before the state, and :func:`~alr_monai.relabel.expert.write_query_file` accepts identical
   content, so a rerun after a crash recomputes the same query and carries on.
2. :func:`apply_round` (or :func:`apply_answers_file` for a human's CSV) applies the answers: audit rows are
   appended (idempotently), ``labels_cleaned.csv`` is rewritten, and the state is written LAST. Until that last
   atomic write the state still says the round is pending, so a rerun applies the same answers again to the same
   old state, the audit append skips the rows it already holds, and every file ends identical to an
   uninterrupted run. Once the state is written, applying the round again raises: no answer is applied twice.

Rounds are numbered from 1; ``RoundState.round`` is the number of rounds applied, so the next round is
``round + 1``. Every function here that writes holds the run folder's lock (:mod:`alr_monai.runlock`; re-entrant,
so phase 2's handler calls them under the lock its command already holds): a second process that tries to apply
answers to the same run is refused with the holder's pid and command instead of duplicating audit rows.

The state file is the one record of which rounds were applied. If it is missing or unreadable while the relabel
folder already holds outputs (queries, answers, audit.csv, labels_cleaned.csv), every function refuses
(:class:`StateMissingError`) instead of silently starting over from round 0; ``alr recover`` rebuilds it
(:mod:`alr_monai.relabel.recover`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alr_monai.csvcells import escape_dict, unescape_dict
from alr_monai.relabel.expert import Answer, check_class_names, read_answers, write_query_file
from alr_monai.runlock import run_lock
from alr_monai.utils import append_bytes, atomic_write_bytes, atomic_write_csv, atomic_write_json, refuse_symlink

STATE_FORMAT_VERSION = 1
SOURCES = ("given", "expert", "oracle", "excluded")
POOL_SCOPES = ("suspected", "unverified")
ANSWER_SOURCES = ("expert", "oracle")
EXCLUDED_LABEL = -1
EXCLUDED_NAME = "excluded"
AUDIT_COLUMNS = ["id", "old_label", "new_label", "action", "round", "source", "reader", "comment", "time"]
# audit trails written before readers and confirmations were recorded: read as they are, appended in their columns
LEGACY_AUDIT_COLUMNS = ["id", "old_label", "new_label", "round", "source", "time"]
AUDIT_ACTIONS = ("changed", "confirmed", "excluded")
QUERIES_DIR = "queries"
ANSWERS_DIR = "answers"
LABELS_CLEANED_COLUMNS = ["id", "label", "label_index", "source"]

__all__ = [
    "ANSWERS_DIR",
    "QUERIES_DIR",
    "ANSWER_SOURCES",
    "AUDIT_COLUMNS",
    "EXCLUDED_LABEL",
    "LABELS_CLEANED_COLUMNS",
    "SOURCES",
    "STATE_FORMAT_VERSION",
    "AuditError",
    "AuditTrail",
    "Phase1FrozenError",
    "RoundError",
    "RoundState",
    "StateMissingError",
    "answer_summary",
    "apply_answers_file",
    "apply_round",
    "audit_digest",
    "check_audit",
    "open_state",
    "refuse_phase1_rerun",
    "relabel_outputs",
    "start_round",
]


class RoundError(ValueError):
    """A round cannot be started or applied in the current state (wrong round, already applied, ...)."""


class StateMissingError(RoundError):
    """The relabel state file is missing or unreadable while the relabel folder holds outputs of past rounds."""


class AuditError(RoundError):
    """audit.csv is not what the state recorded after the last append: deleted, truncated or edited."""


def relabel_outputs(relabel_dir: str | Path) -> list[str]:
    """Files in ``relabel_dir`` that only exist once a relabel round was queried or applied (relative paths).

    These are what a state file must account for: audit.csv, labels_cleaned.csv, queries/*.csv, answers/*.csv.
    """
    relabel_dir = Path(relabel_dir)
    found = [name for name in ("audit.csv", "labels_cleaned.csv") if (relabel_dir / name).is_file()]
    for sub in (QUERIES_DIR, ANSWERS_DIR):
        if (relabel_dir / sub).is_dir():
            found += sorted(f"{sub}/{p.name}" for p in (relabel_dir / sub).glob("*.csv"))
    return found


def _run_dir_of(state_path: str | Path) -> Path:
    """The run folder whose lock guards a state file: the parent of its ``relabel`` folder (else its own folder)."""
    folder = Path(state_path).resolve().parent
    return folder.parent if folder.name == "relabel" else folder


def _recovery_hint(state_path: Path) -> str:
    return (
        f"Rebuild it from the rounds' query, answers and audit files with `alr recover --run_dir "
        f"{_run_dir_of(state_path)}` (it refuses if they disagree), or move the folder {state_path.parent} away to "
        "start phase 2 over"
    )


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RoundState:
    """Everything phase 2 must remember between rounds; saved as JSON after every step.

    Attributes:
        ids: sample ids of the training set.
        given_labels: labels as given (noisy), by sample.
        current_labels: labels training should use now; -1 marks a sample the expert excluded.
        trusted: samples whose label is trusted (phase-1 clean selection, or answered by the expert).
        source: where each current label comes from: "given", "expert", "oracle" or "excluded".
        class_names: class names by index.
        round: number of rounds whose answers were applied (rounds are numbered from 1).
        pending_round: the round whose query was written and awaits answers, or None.
        queried: ids queried, by round number as a string.
        budget_spent: labels answered so far (exclusions count, skipped samples do not).
        skipped: ids left blank by the expert, by round number as a string; they stay in the pool.
        rng_state: opaque JSON-able data the caller needs for reproducible random acquisition.
        history: one entry per applied round (round, source, queried, labels_spent, labels_changed, excluded,
            skipped, budget_spent, metrics).
        baseline_metrics: metrics of the phase-1 model before any round (``record_metrics(0, ...)``).
        pool_scope: "suspected" (the pool is what phase 1 did not trust) or "unverified" (phase 1 trusted every
            sample, e.g. one network trained with plain CE, so every sample the expert has not answered is in
            the pool).
        audit: what audit.csv held after the last append (:func:`audit_digest`: rows, bytes, sha256), checked by
            :func:`check_audit` before anything is appended; None in a state written before it was recorded.
    """

    ids: list[str]
    given_labels: list[int]
    current_labels: list[int]
    trusted: list[bool]
    source: list[str]
    class_names: list[str]
    round: int = 0
    pending_round: int | None = None
    queried: dict[str, list[str]] = field(default_factory=dict)
    budget_spent: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    rng_state: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    baseline_metrics: dict[str, Any] = field(default_factory=dict)
    pool_scope: str = "suspected"
    audit: dict[str, Any] | None = None

    @classmethod
    def initial(
        cls, ids: Sequence[str], given_labels: Sequence[int], trusted: Sequence[bool], class_names: Sequence[str]
    ) -> RoundState:
        """The state after phase 1: given labels everywhere, ``trusted`` = samples phase 1 selected as clean.

        When phase 1 trusted every sample it made no selection, and every unanswered sample is a candidate.
        """
        state = cls(
            ids=[str(i) for i in ids],
            given_labels=[int(label) for label in given_labels],
            current_labels=[int(label) for label in given_labels],
            trusted=[bool(t) for t in trusted],
            source=["given"] * len(ids),
            class_names=check_class_names(class_names),
            pool_scope="unverified" if len(trusted) and all(trusted) else "suspected",
            audit=audit_digest(b""),
        )
        state._validate("initial relabel state")
        if EXCLUDED_LABEL in state.given_labels:
            raise ValueError("given labels must be class indices; -1 (excluded) only comes from an expert")
        return state

    # ----------------------------------------------------------------------------------------------- checks
    def _validate(self, where: str) -> None:
        """Raise ValueError (prefixed by ``where``) unless the fields are mutually consistent."""
        n = len(self.ids)
        problems = []
        for name in ("given_labels", "current_labels", "trusted", "source"):
            if len(getattr(self, name)) != n:
                problems.append(f"{name} has {len(getattr(self, name))} entries for {n} ids")
        if len(set(self.ids)) != n:
            problems.append("ids are not unique")
        k = len(self.class_names)
        if any(type(v) is not int or not 0 <= v < k for v in self.given_labels):
            problems.append(f"given_labels must be class indices in 0-{k - 1}")
        if any(type(v) is not int or not -1 <= v < k for v in self.current_labels):
            problems.append(f"current_labels must be class indices in 0-{k - 1} or -1 (excluded)")
        if any(type(v) is not bool for v in self.trusted):
            problems.append("trusted must hold booleans")
        if any(s not in SOURCES for s in self.source):
            problems.append(f"source entries must be one of {SOURCES}")
        if self.pool_scope not in POOL_SCOPES:
            problems.append(f"pool_scope must be one of {POOL_SCOPES}, got {self.pool_scope!r}")
        if not problems:
            for i in range(n):
                excluded = self.current_labels[i] == EXCLUDED_LABEL
                if excluded != (self.source[i] == "excluded") or (excluded and self.trusted[i]):
                    problems.append(f"sample {self.ids[i]!r}: label, source and trusted disagree about exclusion")
                    break
        if type(self.round) is not int or self.round < 0:
            problems.append(f"round must be a non-negative integer, got {self.round!r}")
        if self.pending_round is not None and self.pending_round != self.round + 1:
            problems.append(f"pending_round {self.pending_round} is not the next round {self.round + 1}")
        if self.pending_round is not None and str(self.pending_round) not in self.queried:
            problems.append(f"pending round {self.pending_round} has no queried ids")
        if problems:
            raise ValueError(f"{where}: " + "; ".join(problems))

    def _index(self) -> dict[str, int]:
        return {sample_id: i for i, sample_id in enumerate(self.ids)}

    # ------------------------------------------------------------------------------------------------ queries
    def pool_indices(self) -> list[int]:
        """Indices of the samples the expert may be asked about.

        Scope "suspected": not trusted and not excluded. Scope "unverified": not yet answered (nor excluded).
        """
        if self.pool_scope == "unverified":
            return [i for i, source in enumerate(self.source) if source == "given"]
        return [
            i
            for i, (t, label) in enumerate(zip(self.trusted, self.current_labels, strict=True))
            if not t and label >= 0
        ]

    @property
    def next_round(self) -> int:
        """The number of the round to query next (or the pending one)."""
        return self.round + 1

    def begin_round(self, round_index: int, ids: Sequence[str], replace: bool = False, scope: str = "pool") -> None:
        """Mark ``ids`` as the query of the pending round ``round_index`` (in memory; call :meth:`save`).

        Beginning the same pending round with the same ids again is a no-op, so a rerun after a crash is fine.
        ``scope`` "pool" asks only pool samples (:meth:`pool_indices`); "unanswered" any sample not yet answered
        nor excluded, trusted ones too (the random audit of the trusted set, and a trusted set re-cut since).

        Raises:
            RoundError: ``round_index`` is not the next round, the ids are empty, repeated, unknown or outside
                the pool, or the round is already pending with other ids and ``replace`` is False.
        """
        if round_index != self.next_round:
            raise RoundError(f"the next round is {self.next_round} ({self.round} applied), not {round_index}")
        ids = [str(i) for i in ids]
        if not ids:
            raise RoundError(f"round {round_index}: no ids to query")
        if len(set(ids)) != len(ids):
            raise RoundError(f"round {round_index}: the query repeats ids")
        index = self._index()
        unknown = [i for i in ids if i not in index]
        if unknown:
            raise RoundError(f"round {round_index}: unknown ids {unknown[:5]}")
        if scope not in ("pool", "unanswered"):
            raise ValueError(f"scope must be 'pool' or 'unanswered', got {scope!r}")
        if scope == "pool":
            pool = set(self.pool_indices())
        else:
            pool = {i for i, source in enumerate(self.source) if source == "given"}
        outside = [i for i in ids if index[i] not in pool]
        if outside:
            raise RoundError(
                f"round {round_index}: ids outside the pool (already trusted, answered or excluded): {outside[:5]}"
            )
        key = str(round_index)
        if self.pending_round == round_index and self.queried.get(key) != ids and not replace:
            raise RoundError(
                f"round {round_index} is already pending with a different query (an expert may be answering it); "
                "pass replace=True to replace it"
            )
        self.pending_round = round_index
        self.queried[key] = ids

    def pending_ids(self) -> list[str]:
        """Ids queried in the pending round ([] if none is pending)."""
        return [] if self.pending_round is None else list(self.queried[str(self.pending_round)])

    def _check_can_apply(self, round_index: int) -> None:
        if round_index <= self.round or any(entry.get("round") == round_index for entry in self.history):
            raise RoundError(
                f"round {round_index} was already applied ({self.round} rounds applied); "
                "its answers are in the audit trail and are never applied twice"
            )
        if self.pending_round is None:
            raise RoundError(f"no query is pending, so round {round_index} has no answers to apply")
        if round_index != self.pending_round:
            raise RoundError(f"round {round_index} is not the pending round {self.pending_round}")

    # ------------------------------------------------------------------------------------------------ answers
    def apply_answers(self, round_index: int, answers: Sequence[Answer], source: str) -> list[dict[str, Any]]:
        """Apply a round's answers in memory (no files are written) and return its audit rows.

        Answered samples become trusted with source ``source``; an answer equal to the current label changes
        nothing but still trusts the sample and spends a label. Excluded samples get label -1, source
        "excluded", and leave training. Skipped (blank) and unanswered queried samples stay in the pool.
        Everything is validated before anything changes, so on error the state is untouched.

        Args:
            round_index: the pending round.
            answers: answers for ids queried in that round (from ``read_answers`` or the oracle).
            source: "expert" or "oracle".

        Returns:
            Audit rows (id, old_label, new_label, action, round, source, reader, comment, time) for every answered
            sample, in query order, labels as class names (new_label "excluded" for an exclusion); ``action`` is
            "changed", "confirmed" (the answer equals the current label) or "excluded".

        Raises:
            RoundError: the round is not pending, was already applied, or an answer is for an id not queried
                in it, repeats an id, or has a label outside the class set.
        """
        if source not in ANSWER_SOURCES:
            raise ValueError(f"source must be one of {ANSWER_SOURCES}, got {source!r}")
        self._check_can_apply(round_index)
        key = str(round_index)
        queried = self.queried[key]
        queried_set = set(queried)
        by_id: dict[str, Answer] = {}
        k = len(self.class_names)
        for answer in answers:
            if answer.id not in queried_set:
                raise RoundError(f"round {round_index}: answer for id {answer.id!r}, which was not queried")
            if answer.id in by_id:
                raise RoundError(f"round {round_index}: two answers for id {answer.id!r}")
            if answer.label is not None and not 0 <= answer.label < k:
                raise RoundError(f"round {round_index}: label {answer.label} of {answer.id!r} is not in 0-{k - 1}")
            by_id[answer.id] = answer

        index = self._index()
        now = _utc_now()
        rows: list[dict[str, Any]] = []
        skipped: list[str] = []
        spent = changed = excluded = 0
        for sample_id in queried:  # query order, so results never depend on the order answers came in
            answer = by_id.get(sample_id)
            if answer is None or answer.skipped:
                skipped.append(sample_id)
                continue
            i = index[sample_id]
            old = self.current_labels[i]
            spent += 1
            if answer.excluded:
                new, self.trusted[i], self.source[i] = EXCLUDED_LABEL, False, "excluded"
                excluded += 1
            else:
                new, self.trusted[i], self.source[i] = int(answer.label), True, source  # type: ignore[arg-type]
                changed += int(new != old)
            self.current_labels[i] = new
            action = "excluded" if answer.excluded else ("changed" if new != old else "confirmed")
            rows.append(
                {
                    "id": sample_id,
                    "old_label": self._label_name(old),
                    "new_label": self._label_name(new),
                    "action": action,
                    "round": round_index,
                    "source": source,
                    "reader": answer.reader,
                    "comment": answer.comment,
                    "time": now,
                }
            )
        self.budget_spent += spent
        self.skipped[key] = skipped
        self.round = round_index
        self.pending_round = None
        self.history.append(
            {
                "round": round_index,
                "source": source,
                "queried": len(queried),
                "labels_spent": spent,
                "labels_changed": changed,
                "excluded": excluded,
                "skipped": len(skipped),
                "budget_spent": self.budget_spent,
                "metrics": {},
            }
        )
        return rows

    def record_metrics(self, round_index: int, metrics: Mapping[str, Any]) -> None:
        """Add metrics (JSON-able) to an applied round's history entry, or round 0 for the phase-1 baseline.

        In memory only: call :meth:`save` afterwards.
        """
        if round_index == 0:
            self.baseline_metrics.update(metrics)
            return
        for entry in self.history:
            if entry["round"] == round_index:
                entry.setdefault("metrics", {}).update(metrics)
                return
        raise RoundError(f"round {round_index} has not been applied, so it has no history entry for metrics")

    def _label_name(self, label: int) -> str:
        return EXCLUDED_NAME if label == EXCLUDED_LABEL else self.class_names[label]

    # --------------------------------------------------------------------------------------------- outputs
    def labels_cleaned_rows(self) -> list[dict[str, Any]]:
        """One row per sample: id, label (class name, "" if excluded), label_index (-1 if excluded), source."""
        return [
            {
                "id": sample_id,
                "label": "" if label == EXCLUDED_LABEL else self.class_names[label],
                "label_index": label,
                "source": source,
            }
            for sample_id, label, source in zip(self.ids, self.current_labels, self.source, strict=True)
        ]

    def write_labels_cleaned(self, path: str | Path) -> Path:
        """Write :meth:`labels_cleaned_rows` as a CSV atomically."""
        return atomic_write_csv(path, self.labels_cleaned_rows(), LABELS_CLEANED_COLUMNS)

    # ----------------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the state as JSON atomically (with ``format_version``)."""
        return atomic_write_json(path, {"format_version": STATE_FORMAT_VERSION, **asdict(self)}, private=True)

    @classmethod
    def load(cls, path: str | Path) -> RoundState:
        """Read a state written by :meth:`save`.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not valid JSON, has another format version, or is inconsistent.
        """
        path = Path(path)
        if not path.is_file():
            outputs = relabel_outputs(path.parent)
            if outputs:
                raise StateMissingError(
                    f"relabel state file {path} is missing, but {path.parent} holds outputs of relabel rounds "
                    f"({', '.join(outputs[:6])}{', ...' if len(outputs) > 6 else ''}); starting over would reset "
                    f"labels_cleaned.csv and rounds.csv while audit.csv keeps every change. {_recovery_hint(path)}."
                )
            raise FileNotFoundError(
                f"relabel state file {path} does not exist; it is created once after phase 1 by "
                "RoundState.initial(ids, given_labels, trusted, class_names).save(path)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise StateMissingError(
                f"relabel state file {path} is corrupt (not valid JSON: {error}). {_recovery_hint(path)}."
            ) from error
        if not isinstance(data, dict):
            raise StateMissingError(
                f"relabel state file {path} is corrupt (expected a JSON object). {_recovery_hint(path)}."
            )
        if data.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(
                f"relabel state file {path} has format_version {data.get('format_version')!r}; "
                f"this version of alr_monai reads {STATE_FORMAT_VERSION}"
            )
        names = [f.name for f in fields(cls)]
        data.setdefault("pool_scope", "suspected")  # states written before the field existed
        data.setdefault("audit", None)  # states written before the audit digest: checked from the next append on
        missing = [name for name in names if name not in data]
        if missing:
            raise StateMissingError(
                f"relabel state file {path} is corrupt (missing {missing}). {_recovery_hint(path)}."
            )
        for name in names:
            problem = _field_problem(name, data[name])
            if problem:  # named by file and key, before any arithmetic on a wrong type fails without context
                shown = repr(data[name])
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                raise StateMissingError(
                    f"relabel state file {path} is corrupt: key {name!r} {problem}, got {shown}. {_recovery_hint(path)}."
                )
        state = cls(**{name: data[name] for name in names})
        state._validate(f"relabel state file {path} is inconsistent")
        return state


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass, and not a count


def _is_id_lists(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) for i in v) for k, v in value.items()
    )


# What each key of state.json must hold (its meaning is in RoundState's docstring); rng_state is opaque.
_FIELD_CHECKS: dict[str, tuple[str, Any]] = {
    "ids": ("must be a list of strings", lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v)),
    "given_labels": ("must be a list of integers", lambda v: isinstance(v, list) and all(_is_int(i) for i in v)),
    "current_labels": ("must be a list of integers", lambda v: isinstance(v, list) and all(_is_int(i) for i in v)),
    "trusted": ("must be a list of true/false", lambda v: isinstance(v, list) and all(type(i) is bool for i in v)),
    "source": ("must be a list of strings", lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v)),
    "class_names": ("must be a list of strings", lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v)),
    "round": ("must be a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "pending_round": ("must be a positive integer or null", lambda v: v is None or (_is_int(v) and v > 0)),
    "queried": ("must map round numbers to lists of ids", _is_id_lists),
    "budget_spent": ("must be a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "skipped": ("must map round numbers to lists of ids", _is_id_lists),
    "history": ("must be a list of objects", lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v)),
    "baseline_metrics": ("must be an object", lambda v: isinstance(v, dict)),
    "pool_scope": (f"must be one of {POOL_SCOPES}", lambda v: v in POOL_SCOPES),
}


def _field_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` as state.json's ``name`` (None if nothing, or if the key is opaque)."""
    check = _FIELD_CHECKS.get(name)
    return None if check is None or check[1](value) else check[0]


class AuditTrail:
    """Append-only CSV of every answer: id, old_label, new_label, action (changed, confirmed, excluded), round,
    source, reader, comment, time.

    Labels are class names, or "excluded". A trail written before confirmations, readers and comments were
    recorded keeps its six columns: it is read as it is and appended in its own columns (label changes and
    exclusions only), so an old run goes on without a mixed file. Appends are idempotent per (round, id) and fsynced, and a torn last
    line left by a crash during an append is dropped before the next append (its rows are re-derived by the
    rerun), so the trail holds each change exactly once.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _complete_bytes(self) -> tuple[bytes, bool]:
        """The file's bytes up to the last complete line, and whether a torn tail was cut off."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            return data[: data.rfind(b"\n") + 1], True
        return data, False

    def _parse(self, data: bytes) -> list[dict[str, str]]:
        if not data:
            return []
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline=""))
        if reader.fieldnames not in (AUDIT_COLUMNS, LEGACY_AUDIT_COLUMNS):
            raise ValueError(f"audit trail {self.path} has columns {reader.fieldnames}, expected {AUDIT_COLUMNS}")
        return [unescape_dict(row) for row in reader]

    def _columns(self) -> list[str]:
        """The columns this trail is written in: the legacy six for a trail that already has them."""
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, newline="", encoding="utf-8-sig") as handle:
                if next(csv.reader(handle), None) == LEGACY_AUDIT_COLUMNS:
                    return LEGACY_AUDIT_COLUMNS
        return AUDIT_COLUMNS

    def rows(self) -> list[dict[str, str]]:
        """All complete rows (string values); [] if the file does not exist yet."""
        if not self.path.exists():
            return []
        return self._parse(self._complete_bytes()[0])

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append rows whose (round, id) is not yet in the trail; returns how many were written.

        Raises:
            ValueError: a row lacks a column, or a (round, id) already recorded (or repeated in ``rows``) has a
                different change, which means the answers changed after a partly applied round.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        refuse_symlink(self.path)  # before the torn-tail truncate below, which would follow a link
        created = not self.path.exists()
        existing: dict[tuple[str, str], dict[str, str]] = {}
        if not created:
            data, torn = self._complete_bytes()
            if torn:
                os.truncate(self.path, len(data))
            existing = {(row["round"], row["id"]): row for row in self._parse(data)}
        columns = self._columns()
        new: list[dict[str, str]] = []
        for row in rows:
            missing = [column for column in AUDIT_COLUMNS if column not in row]
            if missing:
                raise ValueError(f"audit row {dict(row)} lacks {missing}")
            if columns is LEGACY_AUDIT_COLUMNS and not is_label_change(row):
                continue
            cells = {column: str(row[column]) for column in columns}
            key = (cells["round"], cells["id"])
            if key in existing:
                if _change(existing[key]) != _change(cells):
                    raise ValueError(
                        f"audit trail {self.path} records round {key[0]} id {key[1]!r} as {_change(existing[key])}, "
                        f"but now {_change(cells)}: the answers changed after the round was partly applied"
                    )
                continue  # already recorded by an earlier, interrupted attempt
            existing[key] = cells
            new.append(cells)
        if not new and not created:
            return 0
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        if created or self.path.stat().st_size == 0:
            writer.writeheader()
        writer.writerows(escape_dict(row) for row in new)
        append_bytes(self.path, buffer.getvalue().encode("utf-8"), private=True)
        return len(new)


def audit_digest(data: bytes | str | Path) -> dict[str, Any]:
    """What the state records about audit.csv: its data rows, bytes and sha256 (of a path, or of its bytes), up to
    its last complete line (a torn line left by a crash is dropped by the next append)."""
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes() if Path(data).exists() else b""
    data = data[: data.rfind(b"\n") + 1]
    rows = len(list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))) - 1 if data else 0
    return {"rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def check_audit(state: RoundState, audit_path: str | Path, state_path: str | Path = "state.json") -> None:
    """Refuse to go on when audit.csv is not what ``state`` recorded after the last append.

    The recorded bytes must still be there, unchanged; after them only complete rows of the pending round may
    follow (a crash fell between their append and the state write, and the rerun re-derives them) and a torn last
    line (dropped by the next append). A state without a record (written by an older version) is legacy: it is
    accepted with a message and checked from its next append on.

    Raises:
        AuditError: naming the file and what is wrong (deleted, truncated, edited, rows added), and how to go on.
    """
    audit_path = Path(audit_path)
    recorded = state.audit
    if recorded is None:
        if audit_path.exists() and audit_path.resolve() not in _LEGACY_WARNED:
            _LEGACY_WARNED.add(audit_path.resolve())
            logging.getLogger("alr_monai").warning(
                f"{state_path} records no digest of {audit_path} (a run of an older version): edits made to it "
                "before now cannot be detected; it is checked from the next append on"
            )
        return
    try:
        rows, size, digest = int(recorded["rows"]), int(recorded["bytes"]), str(recorded["sha256"])
    except (KeyError, TypeError, ValueError):
        raise AuditError(
            f"{state_path}: key 'audit' is {recorded!r}, not the audit trail's digest (rows, bytes, sha256); it was "
            f"edited. {_audit_hint(state_path)}"
        ) from None
    what = f"{rows} rows, {size} bytes, as {state_path} recorded after round {state.round}"
    if not audit_path.exists():
        if size:
            raise AuditError(f"audit trail {audit_path} is missing, but it held {what}. {_audit_hint(state_path)}")
        return
    data = audit_path.read_bytes()
    if len(data) < size:
        raise AuditError(
            f"audit trail {audit_path} holds {len(data)} bytes, but it held {what}: it was truncated (rows at its "
            f"end deleted). {_audit_hint(state_path)}"
        )
    if hashlib.sha256(data[:size]).hexdigest() != digest:
        raise AuditError(
            f"audit trail {audit_path} was edited: its first {size} bytes ({what}) no longer have the recorded "
            f"sha256 (or the digest in {state_path} was edited). {_audit_hint(state_path)}"
        )
    if len(data) > size:
        complete = data[: data.rfind(b"\n") + 1]
        extra = AuditTrail(audit_path)._parse(complete)[rows:] if complete else []
        pending = str(state.pending_round) if state.pending_round is not None else None
        foreign = [row for row in extra if row.get("round") != pending]
        if foreign:
            raise AuditError(
                f"audit trail {audit_path} has {len(foreign)} row(s) after the {what} that no interrupted append of "
                f"the pending round wrote (first: id {foreign[0].get('id')!r}, round {foreign[0].get('round')!r}): "
                f"rows were added by hand. {_audit_hint(state_path)}"
            )


_LEGACY_WARNED: set[Path] = set()  # a legacy trail is named once per process, not at every check


def _audit_hint(state_path: str | Path) -> str:
    return (
        f"Nothing was changed. Restore the file from a backup, or rebuild it from the kept answers files with "
        f"`alr recover --run_dir {_run_dir_of(state_path)}` (it keeps every intact row and says what it re-derived)"
    )


def answer_summary(entry: Mapping[str, Any]) -> str:
    """A round's answers in words: ``"8 answers (5 changed, 2 confirmed, 1 excluded, 92 skipped)"``.

    Every answer is counted once: changed + confirmed (the expert agreed with the current label) + excluded is the
    number of answers; skipped samples (blank) are not answers and stay in the pool.
    """
    spent, changed, excluded = int(entry["labels_spent"]), int(entry["labels_changed"]), int(entry["excluded"])
    confirmed = spent - changed - excluded
    noun = "answer" if spent == 1 else "answers"
    return f"{spent} {noun} ({changed} changed, {confirmed} confirmed, {excluded} excluded, {entry['skipped']} skipped)"


def is_label_change(row: Mapping[str, Any]) -> bool:
    """Whether an audit row changed a label or excluded a sample (a legacy row always did; a confirmation not)."""
    return str(row.get("action", "changed")) != "confirmed"


def _change(row: Mapping[str, str]) -> tuple[str, str, str]:
    return row["old_label"], row["new_label"], row["source"]


def start_round(
    state_path: str | Path,
    query_path: str | Path,
    round_index: int,
    rows: Sequence[Mapping[str, object]],
    rng_state: Any = None,
    overwrite: bool = False,
    scope: str = "pool",
) -> RoundState:
    """Record a round's query in the state and write the query CSV for the expert.

    The query file is written before the state: if a crash falls between them, a rerun recomputes the same
    query, the identical query file is accepted, and the state is written. If the round is already pending
    with the same ids and its query file exists, nothing is touched (the expert may be filling it in).

    Args:
        state_path: the state JSON.
        query_path: the query CSV to write.
        round_index: must be the next round.
        rows: query rows as for :func:`~alr_monai.relabel.expert.write_query_file`, most informative first.
        rng_state: if not None, stored in the state with the pending round (e.g. the advanced RNG state).
        overwrite: replace a different pending query and its file.
        scope: which samples may be asked (:meth:`RoundState.begin_round`).

    Returns:
        The saved state.
    """
    with run_lock(_run_dir_of(state_path), "relabel", create=False):
        state = RoundState.load(state_path)
        check_audit(state, Path(state_path).parent / "audit.csv", state_path)  # no new round on a damaged trail
        query_path = Path(query_path)
        ids = [str(row["id"]) for row in rows]
        if state.pending_round == round_index and state.queried.get(str(round_index)) == ids and query_path.exists():
            return state
        state.begin_round(round_index, ids, replace=overwrite, scope=scope)
        if rng_state is not None:
            state.rng_state = rng_state
        write_query_file(query_path, rows, state.class_names, overwrite=overwrite)
        state.save(state_path)
        return state


def apply_round(
    state_path: str | Path,
    audit_path: str | Path,
    labels_cleaned_path: str | Path,
    round_index: int,
    answers: Sequence[Answer],
    source: str,
) -> RoundState:
    """Apply a round's answers to the saved state, crash-safely.

    Order: load the state; apply the answers in memory (all validation happens here, before any write); append
    the audit rows (idempotent per (round, id)); write labels_cleaned.csv (atomic); write the state (atomic)
    LAST. A crash at any point before the last write leaves the state saying the round is pending, so rerunning
    with the same answers re-derives the same rows from the same old state, the audit append skips rows it
    already holds, labels_cleaned.csv is rewritten with the same content, and the result is identical to an
    uninterrupted run. A crash after the last write leaves the round applied; a rerun raises instead of
    applying it twice.

    Returns:
        The new state (already saved).

    Raises:
        RoundError: the round is not pending or was already applied, an answer is invalid, or the audit trail
            already records a change for this round that these answers do not make.
    """
    with run_lock(_run_dir_of(state_path), "answer", create=False):
        state = RoundState.load(state_path)
        check_audit(state, audit_path, state_path)  # before anything is appended to a damaged trail
        rows = state.apply_answers(round_index, answers, source)
        trail = AuditTrail(audit_path)
        computed = {(str(row["round"]), row["id"]) for row in rows}
        stray = [
            row
            for row in trail.rows()
            if row["round"] == str(round_index) and (row["round"], row["id"]) not in computed
        ]
        if stray:
            raise RoundError(
                f"audit trail {trail.path} records round {round_index} changes these answers do not make "
                f"(ids {[row['id'] for row in stray[:5]]}): the answers changed after the round was partly applied"
            )
        try:
            trail.append(rows)
        except ValueError as error:
            raise RoundError(str(error)) from error
        state.audit = audit_digest(trail.path)
        state.write_labels_cleaned(labels_cleaned_path)
        state.save(state_path)  # last: until this lands, the round is still pending and a rerun is safe
        return state


def apply_answers_file(
    state_path: str | Path,
    audit_path: str | Path,
    labels_cleaned_path: str | Path,
    answers_path: str | Path,
    round_index: int | None = None,
    source: str = "expert",
    allow_empty: bool = False,
    reader: str = "",
) -> RoundState:
    """Read an expert's answers CSV for the pending round and apply it with :func:`apply_round`.

    The file is fully validated first; on any problem an :class:`~alr_monai.relabel.expert.AnswerError` lists
    them all and no file is touched. A file from elsewhere is first copied to ``answers/round_<k>.csv`` next to
    the state, so the run folder keeps every answer it applied (``alr recover`` replays them); if that file
    already holds different answers the call is refused. The run folder's lock is held throughout, so two
    processes answering the same run cannot both apply.

    Args:
        round_index: the round answered; defaults to the pending round.
        allow_empty: accept a file with no answer at all (see :func:`~alr_monai.relabel.expert.read_answers`).
        reader: the reader recorded for rows without a ``reader`` cell.
    """
    with run_lock(_run_dir_of(state_path), "answer", create=False):
        state = RoundState.load(state_path)
        if round_index is None:
            if state.pending_round is None:
                raise RoundError(f"no query is pending in {state_path} ({state.round} rounds applied)")
            round_index = state.pending_round
        state._check_can_apply(round_index)
        check_audit(state, audit_path, state_path)  # before the answers file is kept
        answers = read_answers(
            answers_path, state.class_names, state.queried[str(round_index)], state.ids, allow_empty, reader
        )
        kept = Path(state_path).parent / ANSWERS_DIR / f"round_{round_index}.csv"
        if not kept.exists() or not kept.samefile(answers_path):
            data = Path(answers_path).read_bytes()
            if kept.exists() and kept.read_bytes() != data:
                raise RoundError(
                    f"{kept} already holds other answers for round {round_index}; apply that file "
                    f"(alr answer {kept} ...), or move it away to apply {answers_path} instead"
                )
            atomic_write_bytes(kept, data, private=True)
        return apply_round(state_path, audit_path, labels_cleaned_path, round_index, answers, source)


def open_state(
    state_path: str | Path,
    ids: Sequence[str],
    given_labels: Sequence[int],
    trusted: Sequence[bool],
    class_names: Sequence[str],
) -> RoundState:
    """Load the relabel state, or create and save the initial one (after phase 1) if the relabel folder is new.

    Raises:
        StateMissingError: the state file is missing or unreadable while the relabel folder already holds
            outputs of rounds; the message says how to recover.
    """
    state_path = Path(state_path)
    with run_lock(_run_dir_of(state_path), "relabel"):
        if not state_path.exists() and not relabel_outputs(state_path.parent):
            RoundState.initial(ids, given_labels, trusted, class_names).save(state_path)
        return RoundState.load(state_path)


class Phase1FrozenError(RoundError):
    """Phase 1 of a run cannot be trained again once relabel rounds exist on top of it."""


def refuse_phase1_rerun(run_dir: str | Path) -> None:
    """Raise if ``run_dir`` holds relabel rounds (a state file or round outputs): their queries, answers and audit
    rest on phase 1's selection.csv and model, so retraining phase 1 there would change them silently.

    Call it before anything is written (the bundle's train.json calls it first in ``initialize``). Rounds kept in
    another subfolder (``relabel#dir``, e.g. the benchmark's ``relabel_<acquisition>``) count too.

    Raises:
        Phase1FrozenError: the message names the run folder, what was found, and how to start a new run.
    """
    run_dir = Path(run_dir)
    others = sorted(p.parent for p in run_dir.glob("*/state.json") if p.parent.name != "relabel")
    for relabel_dir in [run_dir / "relabel", *others]:
        found = (["state.json"] if (relabel_dir / "state.json").exists() else []) + relabel_outputs(relabel_dir)
        if found:
            break
    else:
        return
    raise Phase1FrozenError(
        f"phase 1 of run folder {run_dir} is frozen: relabel rounds exist there ({relabel_dir}: "
        f"{', '.join(found[:4])}{', ...' if len(found) > 4 else ''}), and training phase 1 again would change "
        "selection.csv and the model under the rounds already asked and answered. Nothing was written. To train "
        "phase 1 with other settings, start a new run: alr train --output_dir <new folder> ...; to go on with "
        f"the rounds, run: alr query --run_dir {run_dir}"
    )
