"""Append-only JSONL log of evaluated search candidates, so an interrupted search resumes where it stopped.

Each line records one evaluation: the plan of every stage, the fingerprint of the question set, the
evaluator's identity (model weights, generation settings, prompts) and the result. A result is reused
only when all three match, so changing the model, the settings or the questions never serves a stale
number. Appends are locked and fsynced, and a damaged log is repaired when opened (`append_store`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.append_store import AppendStore, content_key
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import InvalidInputError, LiteStageError


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
    tokens: dict[str, list[tuple[int, ...] | None]] = Field(
        default_factory=dict,
        description="per call (stage, or the fallback re-run) and question in order: (tokens prefilled by the call, "
        "tokens generated, prompt tokens with the shared prefix), None where the call did not run; what the cost "
        "model prices",
    )


def merge_results(parts: Sequence[EvalResult]) -> EvalResult:
    """One result for the questions of several parts (search chunks, or a distributed evaluation's shards), in
    order: means weighted by the parts' question counts, answers and per-question token rows concatenated."""
    if not parts:
        raise InvalidInputError("nothing to merge")
    sizes = [len(p.answers) for p in parts]
    total = sum(sizes)

    def mean(values: Sequence[float]) -> float:
        return sum(v * n for v, n in zip(values, sizes, strict=True)) / total

    accuracy = None if any(p.accuracy is None for p in parts) else mean([p.accuracy or 0.0 for p in parts])
    stage_keys = parts[0].stage_latency_seconds.keys()
    token_keys = parts[0].generated_tokens_per_stage.keys()
    calls = parts[0].tokens.keys()
    return EvalResult(
        accuracy=accuracy,
        mean_latency_seconds=mean([p.mean_latency_seconds for p in parts]),
        stage_latency_seconds={k: mean([p.stage_latency_seconds[k] for p in parts]) for k in stage_keys},
        generated_tokens_per_stage={k: mean([p.generated_tokens_per_stage[k] for p in parts]) for k in token_keys},
        answers={qid: answer for p in parts for qid, answer in p.answers.items()},
        tokens={call: [row for p in parts for row in p.tokens.get(call, [])] for call in calls},
    )


def plans_payload(plans: Mapping[str, SkipPlan]) -> dict[str, dict[str, list[Any]]]:
    """Plans as plain, stage-sorted JSON data (the canonical form used in keys and log lines)."""
    return {stage: plans[stage].model_dump(mode="json") for stage in sorted(plans)}


def record_key(plans: Mapping[str, SkipPlan], questions_fingerprint: str, evaluator_identity: str) -> str:
    return content_key({"plans": plans_payload(plans), "questions": questions_fingerprint, "evaluator": evaluator_identity})


def _parse_line(raw: bytes) -> tuple[str, EvalResult]:
    record = json.loads(raw)
    return str(record["key"]), EvalResult.model_validate(record["result"])


class ResultsStore(AppendStore[EvalResult]):
    """Evaluation results keyed by (plans, question set, evaluator); persisted to `path` when one is given."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(path, parse=_parse_line, what="result record", error=StoreError)

    def lookup(self, plans: Mapping[str, SkipPlan], questions_fingerprint: str, evaluator_identity: str) -> EvalResult | None:
        return self.get(record_key(plans, questions_fingerprint, evaluator_identity))

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
        record = {
            "key": key,
            "plans": plans_payload(plans),
            "questions": questions_fingerprint,
            "evaluator": evaluator_identity,
            "result": result.model_dump(mode="json"),
            **extra,
        }
        self.append([(key, result, json.dumps(record, ensure_ascii=False))])
