"""Turning one normalised row into a Question, or into a RowIssue that says what is wrong with it.

Shared by the JSONL and the `datasets` loaders so both refuse exactly the same rows for the same reasons.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from .types import DataError, LoadReport, Question, QuestionSet, RowIssue

#: Keys of the normalised schema; any other key of a row goes into Question.metadata.
CORE_KEYS = ("id", "question", "choices", "answer")


def describe_validation_error(error: ValidationError) -> str:
    """One line per pydantic error, with the field path, without pydantic's boilerplate."""
    parts = []
    for item in error.errors():
        message = str(item.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        loc = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)


def build_question(
    raw: Any, *, benchmark: str, line: int, require_answer: bool
) -> Question | RowIssue:
    """Validate a normalised row (`id`, `question`, `choices` [{label, text}], `answer`)."""
    if not isinstance(raw, Mapping):
        return RowIssue(line=line, id=None, problem=f"row is a JSON {type(raw).__name__}, not an object")
    raw_id = raw.get("id")
    row_id = str(raw_id) if raw_id not in (None, "") else None
    missing = [key for key in ("id", "question", "choices") if key not in raw]
    if missing:
        return RowIssue(line=line, id=row_id, problem=f"missing field(s) {missing}")
    answer = raw.get("answer")
    if answer in (None, ""):
        if require_answer:
            return RowIssue(line=line, id=row_id, problem="missing answer")
        answer = None
    metadata = {key: value for key, value in raw.items() if key not in CORE_KEYS}
    try:
        return Question(
            id=raw_id if isinstance(raw_id, str) else str(raw_id),
            question=raw["question"],
            choices=raw["choices"],
            answer=answer,
            benchmark=benchmark,
            metadata=metadata,
        )
    except ValidationError as error:
        return RowIssue(line=line, id=row_id, problem=describe_validation_error(error))


class RowCollector:
    """Accumulates questions and issues for one source; enforces unique ids; applies the strict flag at the end."""

    def __init__(self, *, benchmark: str, split: str, source: str, require_answer: bool) -> None:
        self.benchmark = benchmark
        self.split = split
        self.source = source
        self.require_answer = require_answer
        self.report = LoadReport(source=source)
        self._questions: list[Question] = []
        self._first_line_of: dict[str, int] = {}

    def add_issue(self, issue: RowIssue) -> None:
        self.report.rows_read += 1
        self.report.issues.append(issue)

    def add_row(self, raw: Any, line: int) -> None:
        built = build_question(raw, benchmark=self.benchmark, line=line, require_answer=self.require_answer)
        if isinstance(built, RowIssue):
            self.add_issue(built)
            return
        if built.id in self._first_line_of:
            first = self._first_line_of[built.id]
            self.add_issue(RowIssue(line=line, id=built.id, problem=f"duplicate id (first seen at line {first})"))
            return
        self._first_line_of[built.id] = line
        self.report.rows_read += 1
        self.report.rows_kept += 1
        self._questions.append(built)

    def add_rows(self, rows: Iterable[tuple[int, Any]]) -> None:
        for line, raw in rows:
            self.add_row(raw, line)

    def finish(self, *, strict: bool) -> QuestionSet:
        """Return the QuestionSet; in strict mode raise DataError listing every refused row instead."""
        if strict and self.report.issues:
            raise DataError("refusing to load with bad rows (strict=True):\n" + self.report.summary(limit=50))
        if self.report.rows_kept == 0:
            raise DataError(f"{self.source}: no usable questions\n" + self.report.summary())
        return QuestionSet(
            benchmark=self.benchmark,
            split=self.split,
            source=self.source,
            questions=tuple(self._questions),
            report=self.report,
        )
