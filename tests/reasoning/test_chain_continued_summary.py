"""The continued format: recall and analysis as in the separate format, the summary continuing the analysis's turn
(tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from litestage_chain import LoadedModel, SkipPlan, from_pretrained_objects
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.data.types import Question
from litestage_chain.reasoning.chain import build_reasoning_chain, run_batch, stage_node

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import tiny_long_context_llama  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION = {"question": "Where is milk kept cold?", "choices": ["oven", "fridge", "bag"]}
OTHER = {"question": "What cuts paper?", "choices": ["scissors", "spoon", "pillow", "water"]}
YESNO = {"question": "Can cats fly?", "choices": ["yes", "no"]}
SHORT = {"recall": 6, "analysis": 6, "summary": 4}
PLANS = {"recall": SkipPlan(attention=[0]), "analysis": SkipPlan(mlp=[0]), "summary": SkipPlan(attention=[1])}
STAGES = ("recall", "analysis", "summary")


@pytest.fixture(scope="module")
def tiny_long() -> LoadedModel:
    return from_pretrained_objects(*tiny_long_context_llama(seed=3), name="tiny-long-continued")


def _texts(result) -> dict[str, str]:  # noqa: ANN001
    return {stage: result.stages[stage].text for stage in STAGES}


def test_recall_and_analysis_are_the_separate_formats_and_the_summary_prefills_one_line(tiny_long: LoadedModel) -> None:
    tiny_long.context_cache.clear()
    continued = build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT, fallback=False, context="continued")
    separate = build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT, fallback=False, context="separate")
    mine, theirs = continued.invoke(QUESTION), separate.invoke(QUESTION)
    for stage in ("recall", "analysis"):
        assert mine.stages[stage].text == theirs.stages[stage].text, "the stages that judge are unchanged"
        assert mine.stages[stage].prompt_tokens == theirs.stages[stage].prompt_tokens
    summary, analysis = mine.stages["summary"], mine.stages["analysis"]
    assert summary.text.startswith("So the answer is option") and summary.skipped == PLANS["summary"]
    assert summary.reused_tokens + summary.prefilled_tokens == summary.prompt_tokens
    assert summary.reused_tokens >= analysis.prompt_tokens, "the analysis's prompt (and output) are not read again"
    assert summary.prefilled_tokens < 0.05 * summary.prompt_tokens, summary
    assert theirs.stages["summary"].prefilled_tokens > 10 * summary.prefilled_tokens


def test_the_summary_equals_a_cold_cache_and_batches_equal_single_questions(tiny_long: LoadedModel) -> None:
    llm = ChatLiteStage(model=tiny_long, stage_profile=PLANS)
    state: dict = {"question": OTHER}
    tiny_long.context_cache.clear()
    for stage in STAGES:
        state[stage] = stage_node(llm, stage, max_tokens=SHORT[stage], context="continued").invoke(state)
    assert state["summary"].reused_tokens > 0
    tiny_long.context_cache.clear()
    cold = stage_node(llm, "summary", max_tokens=SHORT["summary"], context="continued").invoke(state)
    assert cold.reused_tokens == 0 and cold.text == state["summary"].text, "the analysis's KV under its own plan"
    chain = build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT, fallback=False, context="continued")
    questions = [QUESTION, OTHER, YESNO]
    tiny_long.context_cache.clear()
    batched = run_batch(chain, questions, batch_size=3)
    tiny_long.context_cache.clear()
    assert [_texts(r) for r in batched] == [_texts(chain.invoke(q)) for q in questions]
    assert all(r.stages["summary"].reused_tokens > 0 for r in batched)


def test_the_evaluator_runs_the_continued_format_and_keeps_its_results_apart(tiny_long: LoadedModel) -> None:
    questions = [Question.coerce({**QUESTION, "id": "q1", "answer": "B"}), Question.coerce({**OTHER, "id": "q2",
                                                                                            "answer": "A"})]
    made = {context: ChainEvaluator(tiny_long, max_tokens=SHORT, context=context, batch_size=2)
            for context in ("separate", "continued")}
    assert made["separate"].identity != made["continued"].identity
    tiny_long.context_cache.clear()
    states = made["continued"].run_stages(PLANS, questions)
    chained = run_batch(build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT, fallback=False,
                                              context="continued"), questions, batch_size=2)
    assert [{s: st[s].text for s in STAGES} for st in states] == [_texts(r) for r in chained]
    prompt = made["continued"].render_prompt("summary", states[0])
    assert prompt.endswith(states[0]["analysis"].text + "\nSo the answer is option")


def test_a_profile_records_its_search_format_and_running_it_in_another_warns(tiny_long: LoadedModel,
                                                                             tmp_path: Path) -> None:
    from litestage_chain.budgets.profile import ModelIdentity, Profile, SearchedQuestions, StageBudget

    shipped = Profile.load("csqa", model="qwen2.5-coder-1.5b")
    assert shipped.context == "separate", "a profile written before the field was searched in the separate format"
    profile = Profile(
        model=ModelIdentity(name=tiny_long.name, weights_sha256=tiny_long.weights_sha256 or "ab" * 32),
        stages={stage: StageBudget(plan=plan) for stage, plan in PLANS.items()}, epsilon=0.01, metric="accuracy",
        questions=SearchedQuestions(benchmark="t", split="train", size=2), importance=[(0, "mlp")],
        stage_order=list(STAGES), full_score=0.5, full_latency_seconds=1.0, context="continued",
    )
    profile.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json").context == "continued"
    with pytest.warns(UserWarning, match="searched in the 'continued' format and runs here in 'separate'"):
        build_reasoning_chain(tiny_long, plans=profile, max_tokens=SHORT, context="separate")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_reasoning_chain(tiny_long, plans=profile, max_tokens=SHORT, context="continued")
