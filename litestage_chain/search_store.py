"""Append-only JSONL log of evaluated search candidates, so an interrupted search resumes where it stopped.

Each line records one evaluation: the plan of every stage, the fingerprint of the question set, the
evaluator's identity (model weights, generation settings, prompts) and the result. A result is reused
only when all three match, so changing the model, the settings or the questions never serves a stale
number. Appends are locked and fsynced, and a damaged log is repaired when opened (`jsonl_log`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.errors import LiteStageError
from litestage_chain.jsonl_log import append_lines, read_lines
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


def plans_payload(plans: Mapping[str, SkipPlan]) -> dict[str, dict[str, list[int]]]:
    """Plans as plain, stage-sorted JSON data (the canonical form used in keys and log lines)."""
    return {stage: {"attention": list(plans[stage].attention), "mlp": list(plans[stage].mlp)} for stage in sorted(plans)}


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
        def parse(raw: bytes) -> tuple[str, EvalResult]:
            record = json.loads(raw)
            return str(record["key"]), EvalResult.model_validate(record["result"])

        self._results.update(read_lines(path, parse, "result record"))

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
        append_lines(self.path, [json.dumps(record, ensure_ascii=False)])
