"""Reasoning-chain wiring on a tiny random model: stage order, budgets, batching, fallback, LCEL composition."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda, RunnableParallel

from litestage_chain import (
    EarlyExitConfig,
    InvalidInputError,
    LoadedModel,
    SkipPlan,
    from_pretrained_objects,
)
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.reasoning.chain import (
    ReasoningResult,
    build_reasoning_chain,
    run_batch,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import tiny_long_context_llama  # noqa: E402

QUESTION = {"question": "Where is milk kept cold?", "choices": ["oven", "fridge", "bag"]}
YESNO = {"id": "y1", "question": "Can cats fly?", "choices": [{"label": "A", "text": "yes"}, {"label": "B", "text": "no"}], "answer": "B"}
SHORT = {"recall": 4, "analysis": 4, "summary": 4}
PLANS = {"recall": SkipPlan(attention=[0]), "analysis": SkipPlan(), "summary": SkipPlan(mlp=[1])}


@pytest.fixture(scope="module")
def tiny_long() -> LoadedModel:
    """A tiny random Llama with a long context: few-shot stage prompts are long in byte tokens."""
    return from_pretrained_objects(*tiny_long_context_llama(), name="tiny-long")


class Recorder(ChatLiteStage):
    """Answers each stage from a script and records what each stage was asked (no model needed)."""

    replies: dict[str, list[str]]
    asked: list[tuple[str, str, Any]] = []

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        from langchain_core.outputs import ChatGeneration, ChatResult

        stage = kwargs["stage"]
        plan, early = self.resolve_budget(stage, **{k: kwargs[k] for k in ("skip_plan", "early_exit") if k in kwargs})
        self.asked.append((stage, messages[0].content + "\n" + messages[-1].content, plan))
        text = self.replies[stage].pop(0)
        meta = {"skipped": {"attention": list(plan.attention), "mlp": list(plan.mlp)}, "prefill_seconds": 0.5,
                "decode_seconds": 1.0, "early_exit": early is not None, "finish_reason": "eos"}
        usage = {"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text, response_metadata=meta, usage_metadata=usage))])

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        from langchain_core.messages import AIMessageChunk
        from langchain_core.outputs import ChatGenerationChunk

        message = self._generate(messages, stop, run_manager, **kwargs).generations[0].message
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content=message.content, response_metadata=message.response_metadata,
                usage_metadata=message.usage_metadata, chunk_position="last",
            )
        )


def scripted(summary: list[str], **extra: Any) -> Recorder:
    return Recorder(
        model="unused",
        replies={
            "recall": ["Key information: milk spoils when warm."] * 4,
            "analysis": ["A is incorrect. Because hot.\nB is correct. Because cold.\nC is incorrect. Because bags."] * 4,
            "summary": summary,
        },
        asked=[],
        **extra,
    )


def test_stages_feed_each_other_and_result_is_complete() -> None:
    model = scripted(["So the answer is option B."])
    result = build_reasoning_chain(model, plans=PLANS).invoke(QUESTION)
    assert isinstance(result, ReasoningResult)
    assert [stage for stage, _, _ in model.asked] == ["recall", "analysis", "summary"]
    recall_prompt, analysis_prompt, summary_prompt = (asked for _, asked, _ in model.asked)
    assert "Where is milk kept cold?" in recall_prompt and "A. oven, B. fridge, C. bag" in recall_prompt
    assert "multiple-choice" in recall_prompt
    assert "Key information: milk spoils when warm." in analysis_prompt  # recall output, label stripped once
    assert "B is correct. Because cold." in summary_prompt
    assert [plan for _, _, plan in model.asked] == [PLANS["recall"], PLANS["analysis"], PLANS["summary"]]
    assert result.answer == "B" and result.answer_text == "fridge" and result.answer_source == "summary"
    assert result.stages["recall"].text == "milk spoils when warm."
    assert result.stages["summary"].skipped == PLANS["summary"] and result.stages["recall"].seconds == 1.5
    assert result.generated_tokens == 30 and result.model_seconds == 4.5
    assert result.fallback_used is False and result.fallback is None and result.correct is None
    assert result.total_seconds > 0


def test_questions_from_the_benchmark_loader_are_accepted_as_they_are() -> None:
    """`load_benchmark` gives `data.types.Question`s; the chain takes them without conversion, gold answer and all."""
    from litestage_chain.data.types import Question as BenchmarkQuestion

    row = BenchmarkQuestion(id="q1", question=QUESTION["question"], benchmark="csqa", answer="B",
                            choices=[{"label": "A", "text": "oven"}, {"label": "B", "text": "fridge"},
                                     {"label": "C", "text": "bag"}], metadata={"concept": "milk"})
    result = build_reasoning_chain(scripted(["So the answer is option B."]), plans=PLANS).invoke(row)
    assert (result.answer, result.correct) == ("B", True)


def test_fallback_reruns_summary_on_full_model() -> None:
    model = scripted(["I do not know.", "So the answer is option B."])
    result = build_reasoning_chain(model, plans=PLANS).invoke(QUESTION)
    assert result.fallback_used and result.answer == "B" and result.answer_source == "fallback"
    stage, _, plan = model.asked[-1]
    assert stage == "summary" and plan == SkipPlan()  # the re-run uses the full model
    assert result.fallback is not None and result.fallback.skipped == SkipPlan()
    assert result.stages["summary"].text == "I do not know."


def test_answer_from_analysis_when_fallback_also_fails() -> None:
    result = build_reasoning_chain(scripted(["hmm", "still hmm"])).invoke(QUESTION)
    assert result.fallback_used and result.answer == "B" and result.answer_source == "analysis"
    no_fallback = build_reasoning_chain(scripted(["hmm"]), fallback=False).invoke(QUESTION)
    assert not no_fallback.fallback_used and no_fallback.answer_source == "analysis"


def test_yes_no_questions_use_yes_no_prompts() -> None:
    model = scripted(["So the answer is option B."])
    result = build_reasoning_chain(model).invoke(YESNO)
    assert result.question.kind == "yesno"
    assert all("yes/no questions" in asked for _, asked, _ in model.asked)
    assert result.correct is True and result.question.id == "y1"


def test_early_exit_per_stage_binding() -> None:
    exit_rule = EarlyExitConfig(window=2, threshold=0.3, min_tokens=2)
    model = scripted(["So the answer is option B."])
    # The scripted model reports early_exit=True when a rule was in force for the stage.
    result = build_reasoning_chain(model, early_exit={"analysis": exit_rule}).invoke(QUESTION)
    assert [result.stages[s].early_exited for s in ("recall", "analysis", "summary")] == [False, True, False]
    with pytest.raises(InvalidInputError, match="unknown stage"):
        build_reasoning_chain(model, early_exit={"thinking": exit_rule})


def test_bad_questions_and_plans() -> None:
    chain = build_reasoning_chain(scripted([]))
    with pytest.raises(InvalidInputError, match="at least 2 choices"):
        chain.invoke({"question": "Q?", "choices": ["one"]})
    with pytest.raises(InvalidInputError, match="mapping"):
        chain.invoke("just text")
    partial = build_reasoning_chain(scripted([]), plans={"recall": SkipPlan()})
    with pytest.raises(InvalidInputError, match="'analysis' is missing from the profile"):
        partial.invoke(QUESTION)
    with pytest.raises(InvalidInputError, match="unknown stage"):
        build_reasoning_chain(scripted([]), plans={"planning": SkipPlan()})


def test_chain_on_tiny_model_batches_stage_by_stage(tiny_long: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    import litestage_chain.chat.chat_model as module

    batches: list[tuple[int, SkipPlan]] = []
    real = module.generate

    def spy(model, prompts, **kwargs):  # type: ignore[no-untyped-def]
        batches.append((len(prompts), kwargs["plan"]))
        return real(model, prompts, **kwargs)

    monkeypatch.setattr(module, "generate", spy)
    chain = build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT, fallback=False)
    questions = [QUESTION, YESNO, {"question": "Pick one", "choices": ["x", "y", "z", "w"]}]
    results = run_batch(chain, questions, batch_size=3)
    assert batches == [(3, PLANS["recall"]), (3, PLANS["analysis"]), (3, PLANS["summary"])]
    single = [chain.invoke(q) for q in questions]
    for batched, alone in zip(results, single, strict=True):
        for stage in ("recall", "analysis", "summary"):
            assert batched.stages[stage].skipped == PLANS[stage]
            assert batched.stages[stage].prompt_tokens == alone.stages[stage].prompt_tokens
            assert 1 <= batched.stages[stage].generated_tokens <= SHORT[stage]
    batches.clear()
    run_batch(chain, questions, batch_size=2)
    assert [size for size, _ in batches] == [2, 2, 2, 1, 1, 1]


def test_fallback_is_batched_over_the_unanswered(tiny_long: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    import litestage_chain.chat.chat_model as module

    batches: list[tuple[int, SkipPlan]] = []
    real = module.generate
    monkeypatch.setattr(module, "generate", lambda m, p, **k: batches.append((len(p), k["plan"])) or real(m, p, **k))
    chain = build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT)
    results = chain.batch([QUESTION, YESNO])
    # A random model never writes a readable answer: both summaries are re-run together on the full model.
    assert batches[-1] == (2, SkipPlan())
    assert all(r.fallback_used and r.fallback.skipped == SkipPlan() for r in results)


def test_chain_composes_in_lcel(tiny_long: LoadedModel) -> None:
    chain = build_reasoning_chain(tiny_long, max_tokens=SHORT, fallback=False)
    both = RunnableParallel(full=chain, label=RunnableLambda(lambda q: q["question"]))
    out = both.invoke(QUESTION)
    assert isinstance(out["full"], ReasoningResult) and out["label"] == QUESTION["question"]
    piped = chain | RunnableLambda(lambda r: r.stages["recall"].generated_tokens)
    assert piped.invoke(QUESTION) >= 1


async def test_astream_events_show_each_stage(tiny_long: LoadedModel) -> None:
    chain = build_reasoning_chain(tiny_long, max_tokens=SHORT, fallback=False)
    stages_streamed: list[str] = []
    final = None
    async for event in chain.astream_events(QUESTION, version="v2"):
        if event["event"] == "on_chat_model_stream":
            stage = event["metadata"]["litestage_stage"]
            if not stages_streamed or stages_streamed[-1] != stage:
                stages_streamed.append(stage)
        if event["event"] == "on_chain_end" and event["name"] == "LiteStageReasoning":
            final = event["data"]["output"]
    assert stages_streamed == ["recall", "analysis", "summary"]
    assert isinstance(final, ReasoningResult)
    assert isinstance(await chain.ainvoke(QUESTION), ReasoningResult)
    assert len(await chain.abatch([QUESTION, YESNO])) == 2


def test_chain_as_langgraph_node(tiny_long: LoadedModel) -> None:
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class GraphState(TypedDict, total=False):
        question: dict
        result: ReasoningResult

    chain = build_reasoning_chain(tiny_long, max_tokens=SHORT, fallback=False)
    graph = StateGraph(GraphState)
    graph.add_node("reason", lambda state: {"result": chain.invoke(state["question"])})
    graph.add_edge(START, "reason")
    graph.add_edge("reason", END)
    out = graph.compile().invoke({"question": QUESTION})
    assert isinstance(out["result"], ReasoningResult)


def test_stages_as_separate_langgraph_nodes_match_the_chain(tiny_long: LoadedModel) -> None:
    """Each stage its own graph node, with its own budget: the same texts and answer as the composed chain."""
    from stage_graph import run_stage_graph

    plans = {"recall": SkipPlan(), "analysis": SkipPlan(attention=[1]), "summary": SkipPlan(mlp=[0, 1])}
    llm = ChatLiteStage(model=tiny_long, stage_profile=plans)
    budgets = SHORT
    out = run_stage_graph(llm, QUESTION, budgets)

    chained = build_reasoning_chain(llm, max_tokens=budgets, fallback=False).invoke(QUESTION)
    assert {s: o.text for s, o in out.stages.items()} == {s: o.text for s, o in chained.stages.items()}
    assert out.stages["analysis"].skipped == SkipPlan(attention=[1])
    assert out.stages["summary"].skipped == SkipPlan(mlp=[0, 1])
    assert out.answer == chained.answer and out.total_seconds == pytest.approx(out.model_seconds)


def test_stage_node_names_a_missing_earlier_stage(tiny_long: LoadedModel) -> None:
    from litestage_chain import answer_node, stage_node

    llm = ChatLiteStage(model=tiny_long)
    with pytest.raises(InvalidInputError, match="needs the output of recall"):
        stage_node(llm, "analysis").invoke({"question": QUESTION})
    with pytest.raises(InvalidInputError, match="'question'"):
        stage_node(llm, "recall").invoke({"recall": None})
    with pytest.raises(InvalidInputError, match="recall, analysis, summary"):
        answer_node(llm).invoke({"question": QUESTION})
    with pytest.raises(InvalidInputError, match="unknown stage"):
        stage_node(llm, "answer")
    with pytest.raises(InvalidInputError, match="the question text alone"):  # the chain's input given to a node
        stage_node(llm, "recall").invoke(QUESTION)
    # A model source or a loaded model works as in build_reasoning_chain.
    recall = stage_node(tiny_long, "recall", max_tokens=2).invoke({"question": QUESTION})
    assert recall.stage == "recall" and recall.generated_tokens <= 2


def test_run_batch_rejects_bad_batch_size() -> None:
    with pytest.raises(InvalidInputError, match="batch_size"):
        run_batch(build_reasoning_chain(scripted([])), [QUESTION], batch_size=0)


def test_concurrent_chains_with_different_plans(tiny_long: LoadedModel) -> None:
    fast = build_reasoning_chain(tiny_long, plans={s: SkipPlan(attention=[0, 1]) for s in ("recall", "analysis", "summary")}, max_tokens=SHORT, fallback=False)
    full = build_reasoning_chain(tiny_long, max_tokens=SHORT, fallback=False)
    alone = [fast.invoke(QUESTION), full.invoke(QUESTION)]

    async def together() -> list[ReasoningResult]:
        return list(await asyncio.gather(fast.ainvoke(QUESTION), full.ainvoke(QUESTION)))

    both = asyncio.run(together())
    assert [r.stages["analysis"].text for r in both] == [r.stages["analysis"].text for r in alone]
    assert both[0].stages["recall"].skipped == SkipPlan(attention=[0, 1])
