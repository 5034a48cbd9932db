"""Append-only JSONL log of evaluated search candidates, so an interrupted search resumes where it stopped.

Each line records one evaluation: the plan of every stage, the fingerprint of the question set, the
evaluator's identity (model weights, generation settings, prompts) and the result. A result is reused
only when all three match, so changing the model, the settings or the questions never serves a stale
number. Lines are flushed and fsynced as they are written; a crash can at worst leave a partial last
line, which is reported and cut off when the log is next opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from litestage_chain.errors import LiteStageError
from litestage_chain.skip_plan import SkipPlan


class StoreError(LiteStageError):
    """The results log exists but cannot be read back (a damaged line other than a partial last one)."""


class EvalResult(BaseModel):
    """What evaluating one set of per-stage plans on a question set measured.

    `accuracy` is against gold labels (None when the questions are unlabelled); `answers` maps each
    question id to the extracted label (None when no answer could be read); latencies and token counts
    are means per question.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    accuracy: float | None = Field(ge=0.0, le=1.0)
    mean_latency_seconds: float = Field(ge=0.0)
    stage_latency_seconds: dict[str, float] = Field(default_factory=dict)
    generated_tokens_per_stage: dict[str, float] = Field(default_factory=dict)
    answers: dict[str, str | None]
    tokens: dict[str, list[tuple[int, int] | None]] = Field(
        default_factory=dict,
        description="per call (stage, or the fallback re-run) and question in order: (tokens prefilled by the call, "
        "tokens generated), None where the call did not run; what the cost model prices",
    )


def plans_payload(plans: Mapping[str, SkipPlan]) -> dict[str, dict[str, list[Any]]]:
    """Plans as plain, stage-sorted JSON data (the canonical form used in keys and log lines)."""
    return {stage: plans[stage].model_dump(mode="json") for stage in sorted(plans)}


def record_key(plans: Mapping[str, SkipPlan], questions_fingerprint: str, evaluator_identity: str) -> str:
    payload = json.dumps(
        {"plans": plans_payload(plans), "questions": questions_fingerprint, "evaluator": evaluator_identity},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class ResultsStore:
    """Evaluation results keyed by (plans, question set, evaluator); persisted to `path` when one is given."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._results: dict[str, EvalResult] = {}
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def __len__(self) -> int:
        return len(self._results)

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        lines = data.split(b"\n")
        complete, partial = lines[:-1], lines[-1]  # after the last newline: empty, or a partial record
        for number, raw in enumerate(complete, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                self._results[str(record["key"])] = EvalResult.model_validate(record["result"])
            except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as error:
                raise StoreError(f"{path} line {number} is not a valid result record: {error}") from error
        if partial.strip():
            warnings.warn(
                f"{path}: dropping a partial last record ({len(partial)} bytes), left by an interrupted write",
                stacklevel=3,
            )
            with path.open("r+b") as handle:
                handle.truncate(len(data) - len(partial))

    def get(self, plans: Mapping[str, SkipPlan], questions_fingerprint: str, evaluator_identity: str) -> EvalResult | None:
        return self._results.get(record_key(plans, questions_fingerprint, evaluator_identity))

    def put(
        self,
        plans: Mapping[str, SkipPlan],
        questions_fingerprint: str,
        evaluator_identity: str,
        result: EvalResult,
        **extra: Any,
    ) -> None:
        """Remember `result`, and append it to the log before returning (flushed and fsynced)."""
        key = record_key(plans, questions_fingerprint, evaluator_identity)
        self._results[key] = result
        if self.path is None:
            return
        record = {
            "key": key,
            "plans": plans_payload(plans),
            "questions": questions_fingerprint,
            "evaluator": evaluator_identity,
            "result": result.model_dump(mode="json"),
            **extra,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
