"""The side-by-side speed check: alternating order, medians, and clear errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from litestage_chain.budgets.profile import Profile
from litestage_chain.data.types import Question
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.speed_check import SpeedCheck, check_speed
from litestage_chain.offline.store import EvalResult

QUESTIONS = [Question(id="q1", benchmark="csqa", question="Pick?", answer="A",
                      choices=[{"label": "A", "text": "x"}, {"label": "B", "text": "y"}])]
PLANS = {"recall": SkipPlan(), "analysis": SkipPlan(attention=[1, 2]), "summary": SkipPlan()}


class ScriptedEvaluator:
    """Returns the next scripted time for each side and records the order it was asked in."""

    def __init__(self, full: list[float], plans: list[float], reuse_outputs: bool = False) -> None:
        self.times = {"full": list(full), "plans": list(plans)}
        self.reuse_outputs = reuse_outputs
        self.order: list[str] = []
        self.rules: dict[str, list[dict[str, EarlyExitConfig | None]]] = {"full": [], "plans": []}

    def evaluate(
        self, plans: Mapping[str, SkipPlan], questions: Sequence[Question],
        early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
    ) -> EvalResult:
        side = "full" if all(plan == SkipPlan() for plan in plans.values()) else "plans"
        self.order.append(side)
        self.rules[side].append(dict(early_exit or {}))
        return EvalResult(accuracy=1.0 if side == "full" else 0.0, mean_latency_seconds=self.times[side].pop(0),
                          answers={q.id: "A" for q in questions})


def test_sides_alternate_and_the_speedup_is_the_ratio_of_medians() -> None:
    evaluator = ScriptedEvaluator(full=[10.0, 30.0, 12.0], plans=[5.0, 6.0, 100.0])
    seen: list[str] = []
    check = check_speed(evaluator, PLANS, QUESTIONS, rounds=3, on_evaluation=lambda side, result: seen.append(side))
    assert evaluator.order == seen == ["full", "plans", "plans", "full", "full", "plans"]
    assert check.full_seconds == [10.0, 30.0, 12.0] and check.plan_seconds == [5.0, 6.0, 100.0]
    assert check.speedup == pytest.approx(12.0 / 6.0)  # one slow outlier per side does not move a median
    assert check.full_accuracy == 1.0 and check.plan_accuracy == 0.0
    assert "2.00x" in check.describe()


def test_only_the_plans_exit_early_the_full_model_never() -> None:
    rule = EarlyExitConfig(window=4, threshold=0.5, min_tokens=8)
    evaluator = ScriptedEvaluator(full=[10.0, 10.0], plans=[8.0, 8.0])
    check_speed(evaluator, PLANS, QUESTIONS, rounds=2, early_exit={"analysis": rule})
    assert evaluator.rules["full"] == [{"recall": None, "analysis": None, "summary": None}] * 2
    assert evaluator.rules["plans"] == [{"recall": None, "analysis": rule, "summary": None}] * 2


def test_bad_uses_are_clear_errors() -> None:
    with pytest.raises(InvalidInputError, match="at least one round"):
        check_speed(ScriptedEvaluator([1.0], [1.0]), PLANS, QUESTIONS, rounds=0)
    with pytest.raises(InvalidInputError, match="afresh"):
        check_speed(ScriptedEvaluator([1.0], [1.0], reuse_outputs=True), PLANS, QUESTIONS, rounds=1)
    with pytest.raises(InvalidInputError, match="at least one question"):
        check_speed(ScriptedEvaluator([1.0], [1.0]), PLANS, [], rounds=1)
    with pytest.raises(ValueError, match="expected 2 times per side"):
        SpeedCheck(rounds=2, full_seconds=[1.0], plan_seconds=[1.0, 2.0], speedup=1.0)


def test_profiles_without_a_check_still_load() -> None:
    profile = Profile.load("csqa")
    assert profile.speed_check is None or profile.speed_check.rounds >= 1
    assert "side by side" not in Profile.load("csqa").model_copy(update={"speed_check": None}).describe()
