"""Rebuild a lost or damaged relabel state from the files the rounds left behind (``alr recover``).

The state is derived data: everything it records about labels follows from phase 1's selection and the rounds'
files. Round ``k`` wrote ``queries/round_<k>.csv`` (its queried ids, in order) before the state recorded it as
pending, and every applied round's answers are kept as ``answers/round_<k>.csv`` (the oracle writes them there;
:func:`~alr_monai.relabel.state.apply_answers_file` copies an expert's file there before applying it). Replaying
those answers on the phase-1 state with the same code an uninterrupted run uses gives back the labels, trust
flags, sources, queried and skipped ids, budget and round history.

Two files the rounds wrote last tell how far the run had got, and are checked rather than trusted:
``labels_cleaned.csv`` (written just before the state, so it shows the last round applied) must equal the replay
after some round ``j``, and ``audit.csv`` must hold exactly the replay's changes of rounds 1..j (plus, for round
``j + 1``, the first rows of its changes, when a crash fell between its audit append and its labels). Anything else
(an edited file, answers changed after they were applied) is refused with the reason, and nothing is written.

A damaged ``audit.csv`` under a readable state (deleted, truncated or edited, which every command refuses to append
to, :func:`~alr_monai.relabel.state.check_audit`) is rebuilt by :func:`rebuild_audit`: the rounds the state records
are replayed from their answers files, every row of the damaged trail that records the same change is kept as it was
(time, reader, comment), the lost ones are re-derived (their time is the recovery time), and the damaged file is
kept beside it as ``audit.csv.damaged``.

Not recoverable: metrics that only the state held. Each round's metrics come back from ``rounds.csv`` as printed
there (6 significant digits: balanced accuracies, test macro-F1, errors found, pool noise rate); per-class recall,
MCC, AUROC and the label noise rate of rounds already finished are lost, so the per-class table of ``rounds.md``
lacks those rounds.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from alr_monai.csvcells import escape_dict
from alr_monai.relabel.expert import read_answers
from alr_monai.relabel.state import (
    ANSWER_SOURCES,
    ANSWERS_DIR,
    AUDIT_COLUMNS,
    QUERIES_DIR,
    AuditError,
    AuditTrail,
    RoundError,
    RoundState,
    StateMissingError,
    audit_digest,
    check_audit,
    is_label_change,
)
from alr_monai.runlock import run_lock
from alr_monai.utils import atomic_write_bytes, read_csv

__all__ = ["Recovery", "rebuild_audit", "rebuild_state", "recover_run"]

# rounds.csv columns that hold metrics recorded in the state (the others are derived from the history).
_FLOAT_METRICS = ("pool_noise_rate", "val_balanced_accuracy", "test_balanced_accuracy", "test_macro_f1")


@dataclass
class Recovery:
    """A rebuilt state and what the rebuild found; ``rebuilt`` names the file rebuilt in the relabel folder."""

    state: RoundState
    notes: list[str] = field(default_factory=list)
    rebuilt: str = "state.json"


def _query_ids(path: Path) -> list[str]:
    header, rows = read_csv(path)
    if "id" not in header:
        raise RoundError(f"cannot recover: query file {path} has no 'id' column")
    return [row["id"] for row in rows]


def _labels_rows(state: RoundState) -> list[dict[str, str]]:
    return [{key: str(value) for key, value in row.items()} for row in state.labels_cleaned_rows()]


def _change_key(row) -> tuple[str, str, str, str, str]:
    return str(row["id"]), str(row["old_label"]), str(row["new_label"]), str(row["round"]), str(row["source"])


def _round_source(round_index: int, answers, audit: list[dict], cleaned: dict[str, str]) -> str:
    """Who answered a round: the audit rows' source, else the source labels_cleaned.csv gives its answers."""
    sources = {row["source"] for row in audit if row["round"] == str(round_index)}
    if not sources:
        answered = [a.id for a in answers if not a.skipped and not a.excluded]
        sources = {cleaned[i] for i in answered if cleaned.get(i) in ANSWER_SOURCES}
    if len(sources) > 1:
        raise RoundError(f"cannot recover: round {round_index} is recorded with several sources {sorted(sources)}")
    if sources:
        return sources.pop()
    # Nothing in the outputs says (every answer was a skip or an exclusion, or the round was never applied).
    return "oracle" if answers and all(a.comment == "oracle" for a in answers) else "expert"


def _round_metrics(relabel_dir: Path) -> dict[int, dict]:
    path = relabel_dir / "rounds.csv"
    if not path.is_file():
        return {}
    header, rows = read_csv(path)
    metrics: dict[int, dict] = {}
    for row in rows:
        values: dict = {}
        if row.get("errors_found", "") != "":
            values["errors_found"] = int(float(row["errors_found"]))
        for key in _FLOAT_METRICS:
            if row.get(key, "") != "":
                values[key] = float(row[key])
        if row.get("model", "") in ("adopted", "kept"):  # the round's model choice (its reason is not recoverable)
            values["model_choice"] = row["model"]
        metrics[int(row["round"])] = values
    return metrics


def rebuild_state(
    relabel_dir: str | Path,
    ids: list[str],
    given_labels: list[int],
    trusted: list[bool],
    class_names: list[str],
) -> Recovery:
    """Replay the rounds found in ``relabel_dir`` on the phase-1 state and check the result (nothing is written).

    Args:
        relabel_dir: the relabel folder (queries/, answers/, audit.csv, labels_cleaned.csv, rounds.csv).
        ids, given_labels, trusted, class_names: phase 1's training ids, given labels, clean selection and class
            names (as for :meth:`RoundState.initial`).

    Returns:
        The rebuilt state (with a pending round if the last query has not been applied) and notes.

    Raises:
        RoundError: the files disagree with every replay (the message says which file and how).
    """
    relabel_dir = Path(relabel_dir)
    state = RoundState.initial(ids, given_labels, trusted, class_names)
    audit = AuditTrail(relabel_dir / "audit.csv").rows()
    cleaned_path = relabel_dir / "labels_cleaned.csv"
    cleaned_rows = read_csv(cleaned_path)[1] if cleaned_path.is_file() else None
    cleaned_source = {row["id"]: row["source"] for row in cleaned_rows or []}
    notes: list[str] = []

    # Replay every round that has a query, applying those that have answers: snapshots[j] is the state after j.
    snapshots = [copy.deepcopy(state)]
    changes: list[list[tuple]] = [[]]
    pending: tuple[int, list[str]] | None = None  # a queried round without answers (always the last)
    round_index = 1
    while (relabel_dir / QUERIES_DIR / f"round_{round_index}.csv").is_file():
        query_ids = _query_ids(relabel_dir / QUERIES_DIR / f"round_{round_index}.csv")
        try:
            state.begin_round(round_index, query_ids, scope="unanswered")
        except RoundError as error:
            raise RoundError(f"cannot recover: replaying round {round_index}: {error}") from error
        answers_path = relabel_dir / ANSWERS_DIR / f"round_{round_index}.csv"
        if not answers_path.is_file():
            pending = (round_index, query_ids)
            break
        answers = read_answers(answers_path, state.class_names, query_ids, state.ids)
        source = _round_source(round_index, answers, audit, cleaned_source)
        rows = state.apply_answers(round_index, answers, source)
        changes.append([_change_key(row) for row in rows if is_label_change(row)])
        snapshots.append(copy.deepcopy(state))
        round_index += 1
    if (relabel_dir / QUERIES_DIR / f"round_{round_index + 1}.csv").is_file():
        raise RoundError(
            f"cannot recover: {QUERIES_DIR}/round_{round_index + 1}.csv exists, but round {round_index} has no "
            f"answers file {ANSWERS_DIR}/round_{round_index}.csv (a later query needs the earlier answers)"
        )

    # How far the run had got: the last replay labels_cleaned.csv equals (0 if it was never written).
    applied = 0
    if cleaned_rows is not None:
        matches = [j for j, snapshot in enumerate(snapshots) if _labels_rows(snapshot) == cleaned_rows]
        if not matches:
            raise RoundError(
                f"cannot recover: {cleaned_path} matches no replay of the answers in {relabel_dir / ANSWERS_DIR} "
                f"(rounds 0-{len(snapshots) - 1}); it or an answers file was changed after the answers were applied"
            )
        applied = matches[-1]

    # The audit trail must hold exactly the replayed changes of rounds 1..applied, then at most the first rows
    # of the next round's (a crash between its audit append and its labels_cleaned.csv).
    recorded = [_change_key(row) for row in audit if is_label_change(row)]
    expected = [change for j in range(1, applied + 1) for change in changes[j]]
    if recorded[: len(expected)] != expected:
        raise RoundError(
            f"cannot recover: {relabel_dir / 'audit.csv'} does not list the changes the answers of rounds "
            f"1-{applied} make (as labels_cleaned.csv records them); the audit trail or an answers file was edited"
        )
    tail = recorded[len(expected) :]
    next_changes = changes[applied + 1] if applied + 1 < len(changes) else []
    if tail != next_changes[: len(tail)]:
        raise RoundError(
            f"cannot recover: {relabel_dir / 'audit.csv'} records changes after round {applied} that the answers "
            f"of round {applied + 1} do not make"
        )

    state = copy.deepcopy(snapshots[applied])
    next_round = applied + 1
    if next_round < len(snapshots):  # its answers exist but were not (fully) applied: the run applies them next
        state.begin_round(next_round, snapshots[next_round].queried[str(next_round)], scope="unanswered")
        notes.append(f"round {next_round} is pending; answers/round_{next_round}.csv is applied when the run goes on")
    elif pending is not None:  # pending round == len(snapshots): queried, no answers yet
        state.begin_round(next_round, pending[1], scope="unanswered")
        notes.append(f"round {next_round} is pending: its query waits for answers")

    metrics = _round_metrics(relabel_dir)
    if 0 in metrics:
        state.record_metrics(0, metrics[0])
    for j in range(1, applied + 1):
        if j in metrics:
            state.record_metrics(j, metrics[j])
    state.audit = audit_digest(relabel_dir / "audit.csv")  # checked above against the replay
    notes.append(
        f"{applied} applied round(s) rebuilt, {state.budget_spent} labels spent; round metrics restored from "
        "rounds.csv as printed there (per-class recall, MCC and AUROC of past rounds are not recoverable)"
    )
    return Recovery(state, notes)


def rebuild_audit(
    relabel_dir: str | Path,
    state: RoundState,
    ids: list[str],
    given_labels: list[int],
    trusted: list[bool],
    class_names: list[str],
) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """The audit rows of the rounds ``state`` applied, rebuilt from their answers files (nothing is written).

    Rows of the damaged ``audit.csv`` that record the same change (id, old and new label, action, round, source)
    are kept as they are; the others are re-derived from the answers files.

    Returns:
        The rows (strings, in the trail's columns), the columns, and notes on what was kept, re-derived and dropped.

    Raises:
        RoundError: an answers file is missing, or the replay does not give the labels the state records.
    """
    relabel_dir = Path(relabel_dir)
    replay = RoundState.initial(ids, given_labels, trusted, class_names)
    derived: list[dict] = []
    for entry in state.history:
        k = int(entry["round"])
        answers_path = relabel_dir / ANSWERS_DIR / f"round_{k}.csv"
        if not answers_path.is_file():
            raise RoundError(f"cannot rebuild the audit trail: {answers_path} (round {k}'s answers) is missing")
        query_ids = state.queried[str(k)]
        replay.begin_round(k, query_ids)
        answers = read_answers(answers_path, replay.class_names, query_ids, replay.ids, allow_empty=True)
        derived += replay.apply_answers(k, answers, str(entry["source"]))
    if (replay.current_labels, replay.source) != (state.current_labels, state.source):
        raise RoundError(
            f"cannot rebuild the audit trail: replaying {relabel_dir / ANSWERS_DIR} does not give the labels "
            f"{relabel_dir / 'state.json'} records; an answers file was changed after it was applied"
        )
    path = relabel_dir / "audit.csv"
    try:
        damaged = AuditTrail(path).rows()
    except (ValueError, UnicodeDecodeError):  # a foreign header or bytes: nothing in it can be trusted
        damaged = []
    columns = list(damaged[0]) if damaged and "action" not in damaged[0] else list(AUDIT_COLUMNS)
    legacy = "action" not in columns
    recorded = {(row.get("round"), row.get("id")): row for row in damaged}
    change = ("id", "old_label", "new_label", "round", "source") + (() if legacy else ("action",))
    rows, kept = [], 0
    for row in derived:
        if legacy and not is_label_change(row):
            continue
        cells = {column: str(row[column]) for column in columns}
        old = recorded.pop((cells["round"], cells["id"]), None)
        if old is not None and all(old.get(c) == cells[c] for c in change):
            cells, kept = {column: str(old.get(column) or "") for column in columns}, kept + 1
        rows.append(cells)
    notes = [
        f"audit.csv rebuilt from the answers of rounds 1-{state.round}: {kept} row(s) kept as recorded, "
        f"{len(rows) - kept} re-derived from answers/ (their time is now; reader names given only with --reader "
        f"are not in the answers files), {len(recorded)} row(s) of the damaged file dropped (no applied answer "
        "makes them)"
    ]
    return rows, columns, notes


def _keep_aside(path: Path, suffix: str) -> Path:
    """Move ``path`` to ``path<suffix>`` (``<suffix>.2``, ... if taken); returns the new name."""
    target, number = path.with_name(path.name + suffix), 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}{suffix}.{number}")
    os.replace(path, target)
    return target


def _phase1_inputs(run_dir: Path) -> tuple[list[str], list[int], list[bool], list[str]]:
    selection, classes = run_dir / "selection.csv", run_dir / "classes.json"
    for path in (selection, classes):
        if not path.is_file():
            raise FileNotFoundError(f"cannot recover: {path} (written by phase 1) not found")
    header, rows = read_csv(selection)
    missing = [c for c in ("id", "given_label", "trusted") if c not in header]
    if missing:
        raise ValueError(f"cannot recover: {selection} lacks columns {missing}")
    class_names = json.loads(classes.read_text(encoding="utf-8"))["class_names"]
    return (
        [row["id"] for row in rows],
        [int(row["given_label"]) for row in rows],
        [row["trusted"] == "1" for row in rows],
        [str(name) for name in class_names],
    )


def _recover_audit(run_dir: Path, state: RoundState, state_path: Path, problem: str) -> Recovery:
    """Rebuild a damaged audit.csv (the lock is held), keep the damaged file aside, and record the new digest."""
    relabel_dir = state_path.parent
    rows, columns, notes = rebuild_audit(relabel_dir, state, *_phase1_inputs(run_dir))
    path = relabel_dir / "audit.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(escape_dict(row) for row in rows)
    notes.insert(0, problem.split(" Nothing was changed.")[0])
    if path.exists():
        notes.append(f"the damaged trail was kept as {_keep_aside(path, '.damaged').name}")
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))
    state.audit = audit_digest(path)
    state.save(state_path)
    return Recovery(state, notes, rebuilt="audit.csv")


def recover_run(run_dir: str | Path) -> Recovery:
    """Rebuild ``<run_dir>/relabel/state.json`` when it is missing or unreadable, or ``audit.csv`` when the state is
    readable but the trail is damaged (:func:`rebuild_audit`), holding the run's lock.

    An unreadable state file is kept as ``state.json.unreadable``, a damaged trail as ``audit.csv.damaged``. Nothing is written unless the rebuild passes
    every check (see the module docstring).

    Raises:
        RoundError: there is nothing to recover (the state file is readable and the audit trail intact, or phase 2
            never started), or the rounds' files disagree.
        FileNotFoundError: phase 1's selection.csv or classes.json is missing.
    """
    run_dir = Path(run_dir)
    relabel_dir = run_dir / "relabel"
    state_path = relabel_dir / "state.json"
    if not relabel_dir.is_dir():
        raise RoundError(f"nothing to recover: {relabel_dir} does not exist (phase 2 never started in {run_dir})")
    with run_lock(run_dir, "recover", create=False):
        try:
            state = RoundState.load(state_path)
        except StateMissingError:
            pass  # missing with outputs, or unreadable: what recovery is for
        except FileNotFoundError:
            raise RoundError(f"nothing to recover: {relabel_dir} holds no relabel round yet") from None
        else:
            try:
                check_audit(state, relabel_dir / "audit.csv", state_path)
            except AuditError as error:
                return _recover_audit(run_dir, state, state_path, str(error))
            raise RoundError(f"nothing to recover: {state_path} is readable and audit.csv is intact")
        recovery = rebuild_state(relabel_dir, *_phase1_inputs(run_dir))
        if state_path.exists():
            os.replace(state_path, state_path.with_name(state_path.name + ".unreadable"))
            recovery.notes.append(f"the unreadable state was kept as {state_path.name}.unreadable")
        recovery.state.save(state_path)
    return recovery
