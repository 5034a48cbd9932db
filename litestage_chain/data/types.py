"""The one question type every benchmark loader maps to, and the report of rows it refused.

Both the JSONL loader and the `datasets` loader produce `Question`s, so the reasoning chain, the
importance calibration and the budget search never see a benchmark's raw format.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from litestage_chain.errors import InvalidInputError


class DataError(InvalidInputError):
    """A data file or data source cannot be used as asked (bad rows in strict mode, missing file, no hub)."""


QuestionKind = Literal["mcq", "yesno"]
_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Choice(BaseModel):
    """One answer option: its label (A, B, ...; stripped and upper-cased) and its text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str = Field(min_length=1, max_length=3)
    text: str = Field(min_length=1)

    @field_validator("label", mode="before")
    @classmethod
    def _normalise_label(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


class Question(BaseModel):
    """A multiple-choice or yes/no question: what a benchmark row becomes and what the reasoning chain reads.

    `answer` is the gold label, or None for unlabelled data (searched with the "agreement" metric) and for questions a
    person types. `id` and `benchmark` are set by the data loaders. `metadata` keeps benchmark-specific extras (CSQA's
    `question_concept`, StrategyQA's `facts`, ...) so nothing from the source is lost, but nothing downstream depends
    on them. `choices` also accepts a list of plain strings (labelled A, B, ... in order) or a mapping label -> text,
    because that is how people type questions at a prompt or in a notebook.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    question: str
    choices: tuple[Choice, ...]
    answer: str | None = None
    id: str | None = Field(None, min_length=1)
    benchmark: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("question")
    @classmethod
    def _question_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question text is empty")
        return value

    @field_validator("choices", mode="before")
    @classmethod
    def _coerce_choices(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return [{"label": k, "text": v} for k, v in value.items()]
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            if len(value) > len(_LABELS):
                raise ValueError(f"at most {len(_LABELS)} choices are supported, got {len(value)}")
            return [{"label": _LABELS[i], "text": text} for i, text in enumerate(value)]
        return value

    @field_validator("answer", mode="before")
    @classmethod
    def _normalise_answer(cls, value: Any) -> Any:
        """A label typed as " b" means "B"; anything longer than a label is left for the error to quote as is."""
        return value.strip().upper() if isinstance(value, str) and len(value.strip()) <= 3 else value

    @model_validator(mode="after")
    def _choices_and_answer_agree(self) -> Question:
        if len(self.choices) < 2:
            raise ValueError(f"a question needs at least 2 choices, got {len(self.choices)}")
        labels = [c.label for c in self.choices]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"duplicate choice labels {duplicates}: labels must be unique")
        if self.answer is not None and self.answer not in labels:
            raise ValueError(f"answer {self.answer!r} is not among the choice labels {labels}")
        return self

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.choices]

    @property
    def kind(self) -> QuestionKind:
        """`yesno` when the choices are exactly yes and no (StrategyQA style), else `mcq`."""
        texts = sorted(c.text.strip().lower() for c in self.choices)
        return "yesno" if texts == ["no", "yes"] else "mcq"

    @property
    def options_text(self) -> str:
        """The choices as one line, `A. text, B. text, ...`, the way the templates and exemplars show them."""
        return ", ".join(f"{c.label}. {c.text}" for c in self.choices)

    def text_of(self, label: str | None) -> str | None:
        """Text of the option with `label`, or None when there is no such option."""
        for choice in self.choices:
            if choice.label == label:
                return choice.text
        return None

    def choice_text(self, label: str) -> str:
        """Text of the option with `label`; KeyError names the valid labels."""
        text = self.text_of(label)
        if text is None:
            raise KeyError(f"question {self.id!r} has no option {label!r} (options: {self.labels})")
        return text

    @classmethod
    def coerce(cls, value: Any) -> Question:
        """A `Question` from a `Question` or a mapping (a chain input or a data row; keys other than the fields are
        ignored, as a row's extras are), raising `InvalidInputError` with what is wrong."""
        if isinstance(value, Question):
            return value
        if not isinstance(value, Mapping):
            raise InvalidInputError(
                f"a question must be a mapping with 'question' and 'choices' keys, got {type(value).__name__}"
            )
        try:
            return cls.model_validate({k: v for k, v in value.items() if k in cls.model_fields})
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise InvalidInputError(f"invalid question: {exc}") from exc


class RowIssue(BaseModel):
    """Why one source row was not turned into a Question. `line` is 1-based for files, the row index for hub splits."""

    model_config = ConfigDict(frozen=True)

    line: int
    id: str | None
    problem: str

    def __str__(self) -> str:
        where = f"line {self.line}"
        if self.id is not None:
            where += f" (id {self.id!r})"
        return f"{where}: {self.problem}"


class LoadReport(BaseModel):
    """What a loader read, kept and refused. Refused rows are listed, never silently dropped."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    issues: list[RowIssue] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def summary(self, limit: int = 10) -> str:
        """Human-readable account of the refused rows (first `limit` of them)."""
        head = f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept}, refused {len(self.issues)}"
        if not self.issues:
            return head
        lines = [head] + [f"  {issue}" for issue in self.issues[:limit]]
        if len(self.issues) > limit:
            lines.append(f"  ... and {len(self.issues) - limit} more")
        return "\n".join(lines)


class QuestionSet(BaseModel):
    """Questions of one benchmark split (or a slice of one) plus the report of how they were loaded."""

    model_config = ConfigDict(frozen=True)

    benchmark: str
    split: str
    source: str
    questions: tuple[Question, ...]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self) -> Iterator[Question]:  # type: ignore[override]
        return iter(self.questions)

    def __getitem__(self, index: int) -> Question:
        return self.questions[index]

    @property
    def labelled(self) -> bool:
        """True when every question has a gold answer (so the "accuracy" metric applies)."""
        return all(q.answer is not None for q in self.questions)

    @property
    def fingerprint(self) -> str:
        """Content hash of the questions; keys search results so a changed set never reuses stale ones."""
        return question_fingerprint(self.questions)


def question_fingerprint(questions: Sequence[Question]) -> str:
    """sha256 over the ids, texts, choices and answers, in order. Metadata is left out: it never reaches a prompt."""
    digest = hashlib.sha256()
    for q in questions:
        record = [q.benchmark, q.id, q.question, [[c.label, c.text] for c in q.choices], q.answer]
        digest.update(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
