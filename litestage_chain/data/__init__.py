"""Benchmark data: CSQA, OBQA and StrategyQA as one Question type, from JSONL files or the hub."""

from .benchmarks import (
    BENCHMARKS,
    DATA_DIR_ENV,
    load_benchmark,
    report_questions,
    resolve_data_dir,
    search_questions,
)
from .hub import HUB_SOURCES, HubSource, load_hub
from .jsonl import load_jsonl
from .slices import seeded_slice
from .types import (
    Choice,
    DataError,
    LoadReport,
    Question,
    QuestionSet,
    RowIssue,
    question_fingerprint,
)

__all__ = [
    "BENCHMARKS",
    "DATA_DIR_ENV",
    "HUB_SOURCES",
    "Choice",
    "DataError",
    "HubSource",
    "LoadReport",
    "Question",
    "QuestionSet",
    "RowIssue",
    "load_benchmark",
    "load_hub",
    "load_jsonl",
    "question_fingerprint",
    "report_questions",
    "resolve_data_dir",
    "search_questions",
    "seeded_slice",
]
