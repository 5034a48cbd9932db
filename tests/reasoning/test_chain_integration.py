"""The reasoning chain on the real default model, with small per-stage budgets to keep CI fast."""

from __future__ import annotations

import pytest

from litestage_chain import LoadedModel, SkipPlan
from litestage_chain.budgets.stages import STAGES
from litestage_chain.data.types import Question
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.reasoning.chain import (
    ReasoningResult,
    build_reasoning_chain,
    run_batch,
)

pytestmark = pytest.mark.integration

PLANS = {"recall": SkipPlan(), "analysis": SkipPlan(attention=[22]), "summary": SkipPlan(attention=[12], mlp=[20])}
BUDGET = {"recall": 24, "analysis": 40, "summary": 12}
QUESTIONS = [
    {"id": "q1", "question": "What do people use to cut paper?", "choices": ["scissors", "spoon", "pillow", "water"], "answer": "A"},
    {"id": "q2", "question": "Can a cat fly without help?", "choices": ["yes", "no"], "answer": "B"},
]


def test_chain_answers_in_the_stage_format(real_model: LoadedModel) -> None:
    chain = build_reasoning_chain(plans=PLANS, max_tokens=BUDGET)
    result = chain.invoke(QUESTIONS[0])
    assert isinstance(result, ReasoningResult)
    for stage, output in result.stages.items():
        assert output.text, stage
        assert 1 <= output.generated_tokens <= BUDGET[stage]
        assert output.skipped == PLANS[stage] and output.seconds > 0
    assert "is correct" in result.stages["analysis"].text or "is incorrect" in result.stages["analysis"].text
    # The model follows the demonstrated summary line, so the answer comes straight from the summary.
    assert result.answer in {"A", "B", "C", "D"} and result.answer_source == "summary" and not result.fallback_used


def test_batch_runs_stage_by_stage_like_single_runs(real_model: LoadedModel) -> None:
    # float32: exact batch == single equality is a float32 property. The int8/int4 kernels round activations to int8,
    # where the last-bit differences of a padded batch can cross a rounding step and change a later token.
    chain = build_reasoning_chain(real_model, plans=PLANS, max_tokens=BUDGET)
    batched = run_batch(chain, QUESTIONS, batch_size=2)
    assert [r.question.id for r in batched] == ["q1", "q2"]
    single = chain.invoke(QUESTIONS[1])
    assert batched[1].stages["recall"].prompt_tokens == single.stages["recall"].prompt_tokens
    assert batched[1].stages["recall"].text == single.stages["recall"].text
    assert all(r.correct is not None for r in batched)


def test_unreadable_summary_falls_back_to_the_full_model(real_model: LoadedModel) -> None:
    # In the separate format one summary token ("So") can never name an option, so the fallback must run and be
    # recorded (the continued summary starts after "So the answer is option": its first token is the answer).
    chain = build_reasoning_chain(plans=PLANS, max_tokens={**BUDGET, "summary": 1}, context="separate")
    result = chain.invoke(QUESTIONS[1])
    assert result.fallback_used and result.fallback is not None
    assert result.fallback.skipped == SkipPlan() and result.stages["summary"].skipped == PLANS["summary"]
    assert result.answer_source in {"analysis", None}


@pytest.mark.parametrize("name", __import__("litestage_chain.budgets.profile", fromlist=["x"]).shipped_profiles())
def test_shipped_profile_fits_the_default_model_and_drives_the_chain(name: str, real_model: LoadedModel) -> None:
    """Every shipped profile loads by name, matches the embedded model in its default format, and sets each
    stage's skipped sub-layers in the chain."""
    from litestage_chain.budgets.profile import Profile

    profile = Profile.load(name)
    chain = build_reasoning_chain(plans=name, max_tokens=BUDGET)
    result = chain.invoke(QUESTIONS[0])
    for stage, output in result.stages.items():
        assert output.skipped == profile.plan_for(stage)
    assert result.answer in {"A", "B", "C", "D"}


@pytest.mark.parametrize("context", ["continued", "shared"])
def test_priced_tokens_are_what_a_chain_prefills(real_model: LoadedModel, context: str) -> None:
    """The cost model prices a stage that continues an earlier one by the chain's structure (the earlier stage's
    prompt and output are cached), not by what its call loaded (a reused output leaves nothing to load): on a chain
    that ran every stage the two agree token for token."""
    questions = [Question.coerce(q) for q in QUESTIONS]
    evaluator = ChainEvaluator(real_model, max_tokens={"recall": 12, "analysis": 16, "summary": 8}, context=context,
                               batch_size=2, reuse_outputs=False)
    plans = {stage: SkipPlan() for stage in STAGES}
    priced = evaluator.evaluate(plans, questions).tokens
    states = evaluator.run_stages(plans, questions)
    for stage in STAGES:
        assert [row[0] for row in priced[stage]] == [s[stage].prompt_tokens - s[stage].prefix_tokens for s in states]
