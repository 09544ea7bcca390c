"""Phase 2, active relabeling: expert query/answer files, the simulated oracle, and crash-safe round state."""

from __future__ import annotations

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
    apply_answers_file,
    apply_round,
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
    "RoundError",
    "RoundState",
    "apply_answers_file",
    "apply_round",
    "check_class_names",
    "read_answers",
    "start_round",
    "write_query_file",
]
