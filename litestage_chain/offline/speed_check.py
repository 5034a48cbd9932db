"""Time a profile's plans against the full model side by side, after the search chose them.

Why: the search compares each candidate's latency with latencies measured earlier, possibly much earlier, when
the machine may have been busier or quieter (on a shared 2-core machine a search reported 2.33x for a plan that
measured 1.33x in alternating rounds). Its choice is still the best it could make, but the speedup it implies is
not a measurement. This check evaluates the full model and the chosen plans in alternating evaluations (full
first in even rounds, the plans first in odd ones), every stage regenerated and timed afresh, and reports the
ratio of the medians: a number taken under the same conditions for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import median
from typing import Callable, Protocol

from litestage_chain.budgets.profile import SpeedCheck
from litestage_chain.data.types import Question
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.store import EvalResult


class FreshEvaluator(Protocol):
    """Evaluates plans over questions, timing every stage afresh (a `ChainEvaluator` with reuse_outputs=False)."""

    reuse_outputs: bool

    def evaluate(
        self, plans: Mapping[str, SkipPlan], questions: Sequence[Question],
        early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
        max_tokens: Mapping[str, int | None] | None = None,
    ) -> EvalResult: ...


def check_speed(
    evaluator: FreshEvaluator,
    plans: Mapping[str, SkipPlan],
    questions: Sequence[Question],
    rounds: int = 2,
    on_evaluation: Callable[[str, EvalResult], None] | None = None,
    early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
    max_tokens: Mapping[str, int | None] | None = None,
) -> SpeedCheck:
    """Evaluate the full model and `plans` `rounds` times each, alternating which goes first, and compare medians.

    The plans run with their `early_exit` rules and the full model with none, whatever rules the evaluator was
    built with: the full model is what a speedup is measured against, and a check that let it exit early too
    would measure only what the skipped sub-layers add (a CSQA check once said 1.03x for a 1.25x plan that way).
    Likewise the plans' token caps (`max_tokens`, per stage) apply to the plans' side only.
    """
    if rounds < 1:
        raise InvalidInputError(f"the speed check needs at least one round, got {rounds}")
    if not questions:
        raise InvalidInputError("the speed check needs at least one question")
    if evaluator.reuse_outputs:
        raise InvalidInputError("the speed check needs an evaluator that times every stage afresh (reuse_outputs=False)")
    sides: dict[str, tuple[Mapping[str, SkipPlan], dict[str, EarlyExitConfig | None], dict[str, int | None] | None]]
    sides = {
        "full": ({stage: SkipPlan() for stage in plans}, {stage: None for stage in plans}, None),
        "plans": (plans, {stage: (early_exit or {}).get(stage) for stage in plans},
                  dict(max_tokens) if max_tokens and any(v is not None for v in max_tokens.values()) else None),
    }
    results: dict[str, list[EvalResult]] = {"full": [], "plans": []}
    for round_number in range(rounds):
        order = ("full", "plans") if round_number % 2 == 0 else ("plans", "full")
        for side in order:
            side_plans, rules, caps = sides[side]
            result = (evaluator.evaluate(side_plans, questions, rules, caps) if caps is not None
                      else evaluator.evaluate(side_plans, questions, rules))
            results[side].append(result)
            if on_evaluation is not None:
                on_evaluation(side, result)
    full_seconds = [r.mean_latency_seconds for r in results["full"]]
    plan_seconds = [r.mean_latency_seconds for r in results["plans"]]
    if median(plan_seconds) <= 0.0:
        raise InvalidInputError("the plans' evaluations reported no time; cannot compute a speedup")
    return SpeedCheck(
        rounds=rounds,
        full_seconds=full_seconds,
        plan_seconds=plan_seconds,
        speedup=median(full_seconds) / median(plan_seconds),
        full_accuracy=results["full"][0].accuracy,
        plan_accuracy=results["plans"][0].accuracy,
        questions=len(questions),
    )
