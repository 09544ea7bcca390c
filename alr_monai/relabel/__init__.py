"""Phase 2, active relabeling: expert query/answer files, the simulated oracle, crash-safe round state, the
phase-1 handoff and the round driver."""

from __future__ import annotations

from alr_monai.relabel.driver import RelabelDriver, RoundOutcome, TrainingTarget
from alr_monai.relabel.expert import (
    ANSWER_COLUMNS,
    EXCLUDE,
    QUERY_COLUMNS,
    REQUIRED_ANSWER_COLUMNS,
    Answer,
    AnswerError,
    OracleExpert,
    check_class_names,
    read_answers,
    write_query_file,
)
from alr_monai.relabel.phase1 import (
    Phase1Mismatch,
    Phase1Outputs,
    load_phase1_model,
    phase1_forget_rate,
    read_phase1,
)
from alr_monai.relabel.state import (
    ANSWER_SOURCES,
    AUDIT_COLUMNS,
    EXCLUDED_LABEL,
    LABELS_CLEANED_COLUMNS,
    SOURCES,
    STATE_FORMAT_VERSION,
    AuditTrail,
    RoundError,
    RoundState,
    StateMissingError,
    apply_answers_file,
    apply_round,
    open_state,
    start_round,
)

__all__ = [
    "ANSWER_COLUMNS",
    "ANSWER_SOURCES",
    "AUDIT_COLUMNS",
    "EXCLUDE",
    "EXCLUDED_LABEL",
    "LABELS_CLEANED_COLUMNS",
    "QUERY_COLUMNS",
    "REQUIRED_ANSWER_COLUMNS",
    "SOURCES",
    "STATE_FORMAT_VERSION",
    "Answer",
    "AnswerError",
    "AuditTrail",
    "OracleExpert",
    "Phase1Mismatch",
    "Phase1Outputs",
    "RelabelDriver",
    "RoundError",
    "RoundOutcome",
    "RoundState",
    "StateMissingError",
    "TrainingTarget",
    "apply_answers_file",
    "apply_round",
    "check_class_names",
    "load_phase1_model",
    "open_state",
    "phase1_forget_rate",
    "read_answers",
    "read_phase1",
    "start_round",
    "write_query_file",
]
