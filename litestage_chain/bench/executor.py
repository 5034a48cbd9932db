"""The real executor: a method point run through the recall -> analysis -> summary chain on the loaded model.

It composes the search's `ChainEvaluator` (same prompts, stop strings, token budgets and greedy decoding as
the offline search and `litestage ask`) and the chain's `FinalizeStep` (answer extraction and the full-model
summary re-run), so every method is measured on exactly the pipeline LiteStage is searched and served on.

By default stage outputs are reused between points: decoding is greedy, so a stage's output depends only on its
plan, its early-exit rule and its inputs. When two points run an identical stage computation (e.g. every
``stage-only`` point of the summary stage reuses the full model's recall and analysis), the output and the
seconds measured when it was first produced are reused. An identical computation therefore gets an identical
time in every method, and the run is much shorter. The price: a shared stage is timed once, under whatever load
the machine had then. With ``reuse_outputs=False`` every point times every stage afresh (slower, but each
point's seconds are all measured in its own turn of the interleaved loop).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.records import Outcome, StageMeasure
from litestage_chain.budgets.stages import STAGES, ContextFormat
from litestage_chain.data.types import Question
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.loading import LoadedModel
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.reasoning.chain import FinalizeStep, ReasoningResult, stage_node
from litestage_chain.reasoning.shared_context import MEASURED_CONTEXT

FALLBACK = "fallback"


def outcome_of(result: ReasoningResult, question_id: str) -> Outcome:
    """Per-stage tokens and seconds (plus the fallback re-run, if any) of one chain result."""
    stages = {
        stage: StageMeasure(tokens=output.generated_tokens, seconds=output.seconds, early_exited=output.early_exited)
        for stage, output in result.stages.items()
    }
    if result.fallback is not None:
        stages[FALLBACK] = StageMeasure(tokens=result.fallback.generated_tokens, seconds=result.fallback.seconds)
    return Outcome(
        question_id=question_id,
        answer=result.answer,
        answer_source=result.answer_source,
        fallback_used=result.fallback_used,
        stages=stages,
        seconds=result.model_seconds,
    )


class ChainExecutor:
    """Runs method points through the reasoning chain; one `ChainEvaluator` (and stage cache) per early-exit rule.

    Args mirror `ChainEvaluator`: per-stage `max_tokens`, `num_shots`, `prompts_dir`, `fallback` (re-run the
    summary on the full model when no answer can be read), `batch_size` (1 = single-question latency),
    `reuse_outputs` (see the module docstring) and `context` (the reasoning format of every point that names
    none).
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_tokens: Mapping[str, int] | None = None,
        num_shots: int = 2,
        prompts_dir: str | None = None,
        fallback: bool = True,
        batch_size: int = 1,
        reuse_outputs: bool = True,
        progress: bool = False,
        context: ContextFormat = MEASURED_CONTEXT,
    ) -> None:
        self.model = model
        self.reuse_outputs = reuse_outputs
        self._settings = dict(
            max_tokens=dict(max_tokens) if max_tokens else None, num_shots=num_shots, prompts_dir=prompts_dir,
            fallback=fallback, batch_size=batch_size, reuse_outputs=reuse_outputs, progress=progress, context=context,
        )
        self.fallback = fallback
        self._evaluators: dict[str, ChainEvaluator] = {}
        self.base = self.evaluator({stage: None for stage in STAGES})
        self.identity = "bench-v1:" + self.base.identity

    def evaluator(
        self,
        early_exit: Mapping[str, EarlyExitConfig | None],
        max_tokens: Mapping[str, int] | None = None,
        context: ContextFormat | None = None,
    ) -> ChainEvaluator:
        """The evaluator (with its stage-output cache) for one per-stage early-exit setting, token budgets and
        reasoning format (None: the executor's). Formats never share a cache: a stage's prompt differs by format."""
        fmt = context or self._settings["context"]
        key = json.dumps({"exit": {s: (r.model_dump() if r else None) for s, r in sorted(early_exit.items())},
                          "max_tokens": dict(max_tokens) if max_tokens else None, "context": fmt}, sort_keys=True)
        if key not in self._evaluators or not self.reuse_outputs:  # a new evaluator starts with an empty cache
            settings = dict(self._settings, context=fmt)
            if max_tokens:
                settings["max_tokens"] = dict(max_tokens)
            self._evaluators[key] = ChainEvaluator(self.model, early_exit=dict(early_exit), **settings)  # type: ignore[arg-type]
        return self._evaluators[key]

    def run(self, point: MethodPoint, questions: Sequence[Question]) -> list[Outcome]:
        if not questions:
            raise InvalidInputError("no questions to run")
        evaluator = self.evaluator(point.early_exit, point.max_tokens, point.context)
        states = evaluator.run_stages(point.plans, questions)
        fallback = (
            stage_node(
                evaluator.chat, "summary", evaluator.prompts, num_shots=evaluator.num_shots,
                max_tokens=evaluator.max_tokens["summary"], skip_plan=SkipPlan(), early_exit=None,
                name="summary_fallback", context=evaluator.context,
            )
            if self.fallback
            else None
        )
        results: list[ReasoningResult] = FinalizeStep(fallback).batch(states)
        return [outcome_of(result, question.id) for result, question in zip(results, questions, strict=True)]
