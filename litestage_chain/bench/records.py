"""Per-question benchmark records and the append-only JSONL file that makes a benchmark run resumable.

A record is what one method point measured on one question: the answer, whether it is right, and the tokens
and seconds of every stage. Records hold ids, labels and measurements only, never question or generated text,
so a results folder can be shared without redistributing a dataset.

A record's key hashes the point (its plans and early-exit rules), the executor's identity (model weights,
prompts, token budgets) and the question's content: a re-run reuses exactly the records it would recompute,
and anything that changes the result changes the key. Appends are locked and fsynced, and a damaged file is
repaired when opened (`append_store`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.append_store import AppendStore, content_key
from litestage_chain.data.types import Question, question_fingerprint
from litestage_chain.errors import LiteStageError

RECORDS_FILE = "records.jsonl"


class RecordsError(LiteStageError):
    """The records file exists but a line other than a partial last one cannot be read back."""


class StageMeasure(BaseModel):
    """One stage's cost on one question: generated tokens and engine seconds (prefill + decode)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: int = Field(ge=0)
    seconds: float = Field(ge=0.0)
    early_exited: bool = False


class Outcome(BaseModel):
    """What running one point on one question produced (before it is keyed and stored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    question_id: str
    answer: str | None
    answer_source: str | None = None
    fallback_used: bool = False
    stages: dict[str, StageMeasure] = Field(description="per stage, plus 'fallback' when the summary was re-run")
    seconds: float = Field(ge=0.0, description="engine seconds over all stages and the fallback")


class QuestionRecord(BaseModel):
    """One stored measurement: a point's outcome on one question, with what identifies it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    identity: str = Field(description="hash of the executor identity the record was measured under")
    point: str = Field(description="the point's label, e.g. 'uniform@8'")
    point_key: str = Field(description="hash of the point's plans and early-exit rules")
    method: str
    count: int
    stage: str | None
    skipped: dict[str, int] = Field(description="sub-layers skipped per stage")
    early_exit: bool
    question_id: str
    gold: str | None
    answer: str | None
    correct: bool | None
    answer_source: str | None
    fallback_used: bool
    stages: dict[str, StageMeasure]
    seconds: float = Field(ge=0.0)
    worker: str | None = Field(None, description="distributed runs: the worker process that measured this record")
    host: str | None = Field(None, description="distributed runs: the host that worker ran on")

    @property
    def tokens(self) -> int:
        return sum(measure.tokens for measure in self.stages.values())


def identity_hash(identity: str) -> str:
    """A short stable hash of an executor identity string (identities can be long)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def record_key(point_key: str, identity: str, question: Question) -> str:
    return content_key({"point": point_key, "identity": identity_hash(identity), "question": question_fingerprint([question])})


def _parse_line(raw: bytes) -> tuple[str, QuestionRecord]:
    record = QuestionRecord.model_validate_json(raw)
    return record.key, record


class RecordStore(AppendStore[QuestionRecord]):
    """Records by key, appended to `path` (when given) as they are made; reopening the file resumes a run."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(path, parse=_parse_line, what="benchmark record", error=RecordsError)

    def add(self, records: Iterable[QuestionRecord]) -> None:
        """Keep `records` and append them to the file before returning (flushed and fsynced)."""
        self.append((record.key, record, record.model_dump_json()) for record in records)
