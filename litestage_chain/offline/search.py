"""LiteStage step 2: stage-wise search for how many sub-layers each reasoning stage may skip.

The algorithm is kept apart from how candidates are evaluated (an `Evaluator` runs the reasoning chain
with per-stage plans over the questions) so it can be tested with known numbers and reused with any
evaluator. Procedure:

1. Evaluate the full model; its metric minus `epsilon` is the target every candidate must reach.
2. Order the stages from slowest to fastest (their mean full-model latency).
3. For each stage in that order, with the stages already searched kept at their chosen budgets, sweep
   the number of skipped sub-layers (least important first, `step` at a time, up to `max_skip`).
   Keep the candidate with the lowest mean end-to-end latency whose metric reaches the target. Latency
   is not monotonic in the skip count (a damaged model may ramble and generate more tokens), which is
   why every count is measured rather than taking the largest one that passes.
4. A sweep stops early once the metric has fallen more than `collapse_margin` below the target for
   `patience` consecutive candidates: past that point the model only gets worse.

With the accuracy metric, the target only protects accuracy if the full model is measurably better than guessing
on the searched questions; when it is not (a weak model, or too few questions), any damaged plan can meet the target
by luck, and the result carries a caveat saying so (`accuracy_signal_caveat`).

Every evaluation goes through a `ResultsStore`; with a log file, an interrupted search re-run with the
same arguments reuses every finished evaluation and continues where it stopped.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from statistics import fmean
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.budgets.profile import (
    MetricName,
    ModelIdentity,
    Profile,
    SearchedQuestions,
    StageBudget,
    TraceEntry,
)
from litestage_chain.budgets.stages import ContextFormat
from litestage_chain.data.types import Question, question_fingerprint
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.importance import SubLayer, plan_for_count
from litestage_chain.offline.stats import wilson_interval
from litestage_chain.offline.store import EvalResult, ResultsStore

logger = logging.getLogger(__name__)
TOLERANCE = 1e-9  # metric comparisons: k/n - epsilon must not fail on float rounding


@runtime_checkable
class Evaluator(Protocol):
    """Runs the reasoning chain with one plan per stage over `questions` and measures it.

    `identity` must change whenever results would (model weights, generation and early-exit settings,
    prompts): it is part of the key under which results are stored and reused.
    """

    identity: str

    def evaluate(self, plans: Mapping[str, SkipPlan], questions: Sequence[Question]) -> EvalResult: ...


class SearchConfig(BaseModel):
    """Knobs of the budget search."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stages: tuple[str, ...] = Field(("recall", "analysis", "summary"), min_length=1)
    epsilon: float = Field(0.02, ge=0.0, le=1.0, description="largest allowed drop of the metric from the full model")
    metric: MetricName = "accuracy"
    step: int = Field(1, ge=1, description="skip counts tried: step, 2*step, ...")
    max_skip: int | None = Field(None, ge=1, description="largest skip count tried (default: every ranked sub-layer)")
    collapse_margin: float = Field(0.1, ge=0.0, description="how far below the target counts as collapsed")
    patience: int = Field(2, ge=1, description="consecutive collapsed candidates that end a stage's sweep")


class SearchResult(BaseModel):
    """The chosen per-stage plans and the record of how they were chosen."""

    model_config = ConfigDict(frozen=True)

    config: SearchConfig
    plans: dict[str, SkipPlan]
    skip_counts: dict[str, int]
    stage_order: list[str]
    ranking: list[SubLayer]
    full: EvalResult
    full_score: float
    target: float
    final: EvalResult
    final_score: float
    questions_fingerprint: str
    trace: list[TraceEntry]
    evaluations: int = Field(description="evaluations actually run (not served from the results store)")
    caveats: list[str] = Field(default_factory=list, description="reasons to distrust the result (see the module)")

    def to_profile(
        self,
        *,
        model: ModelIdentity,
        questions: SearchedQuestions,
        context: ContextFormat,
        early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
        notes: str = "",
    ) -> Profile:
        """A `Profile` holding the chosen plans, the early-exit settings searched with, the reasoning format searched
        in (required: a plan's accuracy holds only in that format), and the full trace."""
        early = dict(early_exit or {})
        unknown = sorted(set(early) - set(self.plans))
        if unknown:
            raise InvalidInputError(f"early-exit settings for unknown stage(s) {unknown}; stages: {sorted(self.plans)}")
        if questions.fingerprint is not None and questions.fingerprint != self.questions_fingerprint:
            raise InvalidInputError("the questions described do not match the questions the search ran on")
        return Profile(
            model=model,
            stages={stage: StageBudget(plan=plan, early_exit=early.get(stage)) for stage, plan in self.plans.items()},
            epsilon=self.config.epsilon,
            metric=self.config.metric,
            questions=questions.model_copy(update={"fingerprint": self.questions_fingerprint}),
            importance=self.ranking,
            stage_order=self.stage_order,
            full_score=self.full_score,
            full_latency_seconds=self.full.mean_latency_seconds,
            trace=self.trace,
            notes="\n".join(text for text in (notes, *self.caveats) if text),
            context=context,
        )


def accuracy_signal_caveat(full_accuracy: float, questions: Sequence[Question]) -> str | None:
    """Why an accuracy target on `questions` cannot protect accuracy, or None when it can.

    The full model must be measurably better than guessing: the lower end of the 95% Wilson interval of its accuracy
    must lie above the chance rate (1 / number of choices, averaged over the questions). Otherwise a plan that
    destroys the model's reasoning still answers at chance, which the target cannot tell from the full model.
    """
    total = len(questions)
    correct = round(full_accuracy * total)
    low, high = wilson_interval(correct, total)
    chance = fmean(1.0 / len(q.choices) for q in questions)
    if low > chance:
        return None
    return (
        f"the full model's accuracy on the {total} searched questions, {full_accuracy:.3f} (95% interval "
        f"[{low:.3f}, {high:.3f}]), is not measurably above chance ({chance:.3f}): the accuracy target cannot tell a "
        "damaged plan from the full model, so the chosen plans may lose accuracy elsewhere. Search on more questions, "
        "or with the agreement metric (agreement with the full model's answers)"
    )


def score(result: EvalResult, metric: MetricName, reference: Mapping[str, str | None] | None) -> float:
    """The search metric of `result`: its accuracy, or its agreement with the full model's answers.

    Agreement counts a question when both answers are the same label, or both unreadable (None).
    """
    if metric == "accuracy":
        if result.accuracy is None:
            raise InvalidInputError(
                "metric 'accuracy' needs labelled questions; the evaluator reported no accuracy (use metric='agreement')"
            )
        return result.accuracy
    if reference is None:
        raise InvalidInputError("metric 'agreement' needs the full model's answers")
    if not reference:
        raise InvalidInputError("metric 'agreement' needs at least one reference answer")
    same = sum(1 for qid, answer in reference.items() if result.answers.get(qid, "<missing>") == answer)
    return same / len(reference)


class _Runner:
    """Evaluates plan sets through the store and writes the trace."""

    def __init__(
        self,
        evaluator: Evaluator,
        questions: Sequence[Question],
        store: ResultsStore,
        on_candidate: Callable[[TraceEntry], None] | None,
    ) -> None:
        self.evaluator = evaluator
        self.questions = questions
        self.fingerprint = question_fingerprint(questions)
        self.ids = [q.id for q in questions]
        self.store = store
        self.on_candidate = on_candidate
        self.evaluations = 0
        self.trace: list[TraceEntry] = []

    def evaluate(self, plans: Mapping[str, SkipPlan]) -> tuple[EvalResult, bool]:
        """The result for `plans` and whether it was reused from the store."""
        cached = self.store.lookup(plans, self.fingerprint, self.evaluator.identity)
        if cached is not None:
            return cached, True
        result = self.evaluator.evaluate(dict(plans), self.questions)
        missing = [qid for qid in self.ids if qid not in result.answers]
        if missing:
            raise InvalidInputError(f"the evaluator returned no answer for question(s) {missing[:5]}")
        self.evaluations += 1
        # a distributed evaluator says which worker and host measured which questions; the log line keeps it
        provenance = getattr(self.evaluator, "provenance", None) or {}
        self.store.put(plans, self.fingerprint, self.evaluator.identity, result, **provenance)
        return result, False

    def record(self, entry: TraceEntry) -> None:
        self.trace.append(entry)
        logger.info(
            "stage=%s skip=%d score=%.4f latency=%.3fs%s%s",
            entry.stage, entry.skip_count, entry.score, entry.mean_latency_seconds,
            " meets" if entry.meets_target else "", " (stored)" if entry.reused else "",
        )
        if self.on_candidate is not None:
            self.on_candidate(entry)


def _entry(
    stage: str | None, count: int, plans: Mapping[str, SkipPlan], result: EvalResult, value: float,
    meets: bool, reused: bool,
) -> TraceEntry:
    return TraceEntry(
        stage=stage,
        skip_count=count,
        plans=dict(plans),
        score=value,
        accuracy=result.accuracy,
        mean_latency_seconds=result.mean_latency_seconds,
        generated_tokens=dict(result.generated_tokens_per_stage),
        meets_target=meets,
        reused=reused,
    )


def search_budgets(
    evaluator: Evaluator,
    questions: Sequence[Question],
    ranking: Sequence[SubLayer],
    config: SearchConfig | None = None,
    *,
    store: ResultsStore | None = None,
    on_candidate: Callable[[TraceEntry], None] | None = None,
) -> SearchResult:
    """Find per-stage skip plans: the fastest candidate per stage meeting `metric >= full - epsilon`."""
    config = config or SearchConfig()
    if not questions:
        raise InvalidInputError("the search needs at least one question")
    if not ranking:
        raise InvalidInputError("the importance ranking is empty")
    max_skip = config.max_skip if config.max_skip is not None else len(ranking)
    if max_skip > len(ranking):
        raise InvalidInputError(f"max_skip={max_skip} exceeds the {len(ranking)} ranked sub-layers")
    if config.metric == "accuracy" and any(q.answer is None for q in questions):
        raise InvalidInputError("metric 'accuracy' needs every question labelled; use metric='agreement'")

    runner = _Runner(evaluator, questions, store if store is not None else ResultsStore(), on_candidate)
    fixed: dict[str, SkipPlan] = {stage: SkipPlan() for stage in config.stages}
    full, reused = runner.evaluate(fixed)
    reference = full.answers if config.metric == "agreement" else None
    full_score = score(full, config.metric, reference)
    target = full_score - config.epsilon
    runner.record(_entry(None, 0, fixed, full, full_score, True, reused))
    caveats = []
    if config.metric == "accuracy":
        caveat = accuracy_signal_caveat(full_score, questions)
        if caveat is not None:
            warnings.warn(caveat, UserWarning, stacklevel=2)
            caveats.append(caveat)

    missing = [stage for stage in config.stages if stage not in full.stage_latency_seconds]
    if missing:
        raise InvalidInputError(f"the full-model evaluation reported no latency for stage(s) {missing}")
    order = sorted(config.stages, key=lambda stage: -full.stage_latency_seconds[stage])  # stable: ties keep order

    counts: dict[str, int] = {stage: 0 for stage in config.stages}
    current, current_score = full, full_score
    for stage in order:
        # Skipping nothing more in this stage is the configuration already chosen: always a valid fallback.
        candidates: list[tuple[int, EvalResult, float, int]] = []
        runner.record(_entry(stage, 0, fixed, current, current_score, current_score >= target - TOLERANCE, True))
        candidates.append((0, current, current_score, len(runner.trace) - 1))
        collapsed = 0
        for count in range(config.step, max_skip + 1, config.step):
            plans = {**fixed, stage: plan_for_count(ranking, count)}
            result, reused = runner.evaluate(plans)
            value = score(result, config.metric, reference)
            meets = value >= target - TOLERANCE
            runner.record(_entry(stage, count, plans, result, value, meets, reused))
            candidates.append((count, result, value, len(runner.trace) - 1))
            collapsed = collapsed + 1 if value < target - config.collapse_margin - TOLERANCE else 0
            if collapsed >= config.patience:
                logger.info("stage=%s: metric collapsed for %d candidates, sweep stopped at %d", stage, collapsed, count)
                break
        passing = [c for c in candidates if c[2] >= target - TOLERANCE]
        count, result, value, index = min(passing, key=lambda c: (c[1].mean_latency_seconds, -c[2], c[0]))
        runner.trace[index] = runner.trace[index].model_copy(update={"chosen": True})
        counts[stage] = count
        fixed[stage] = plan_for_count(ranking, count)
        current, current_score = result, value

    return SearchResult(
        config=config,
        plans=fixed,
        skip_counts=counts,
        stage_order=order,
        ranking=list(ranking),
        full=full,
        full_score=full_score,
        target=target,
        final=current,
        final_score=current_score,
        questions_fingerprint=runner.fingerprint,
        trace=runner.trace,
        evaluations=runner.evaluations,
        caveats=caveats,
    )
