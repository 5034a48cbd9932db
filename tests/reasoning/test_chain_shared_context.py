"""The shared-context format through the chain, the chat model and stage nodes in a LangGraph graph, and the continued
format (recall and analysis as in the separate format, the summary continuing the analysis's turn) (tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from litestage_chain import InvalidInputError, LoadedModel, SkipPlan, from_pretrained_objects
from litestage_chain.reasoning.chain import build_reasoning_chain, run_batch, stage_node
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.chat.continuation import continuation_message
from litestage_chain.reasoning.stage_output import StageOutput
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.data.types import Question

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
    return from_pretrained_objects(*tiny_long_context_llama(seed=3), name="tiny-long-shared")


def _texts(result) -> dict[str, str]:  # noqa: ANN001
    return {stage: result.stages[stage].text for stage in STAGES}


def _run_nodes(llm: ChatLiteStage, question: dict, **budget) -> dict[str, StageOutput]:  # noqa: ANN003
    state: dict = {"question": question}
    for stage in STAGES:
        state[stage] = stage_node(llm, stage, max_tokens=SHORT[stage], context="shared", **budget).invoke(state)
    return state


def test_later_stages_prefill_only_their_header(tiny_long: LoadedModel) -> None:
    tiny_long.context_cache.clear()
    chain = build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT, fallback=False, context="shared")
    result = chain.invoke(QUESTION)
    recall, analysis, summary = (result.stages[s] for s in STAGES)
    assert recall.reused_tokens == 0 and recall.prefilled_tokens == recall.prompt_tokens
    for stage in (analysis, summary):
        assert stage.reused_tokens + stage.prefilled_tokens == stage.prompt_tokens
        assert stage.prefilled_tokens < 0.05 * stage.prompt_tokens, stage
    # the separate format re-reads everything at every stage
    separate = build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT, fallback=False,
                                     context="separate").invoke(QUESTION)
    assert all(separate.stages[s].reused_tokens == 0 for s in STAGES)


def test_full_model_shared_chain_equals_stages_computed_without_reuse(tiny_long: LoadedModel) -> None:
    """With the full model everywhere, reuse changes nothing: every stage recomputing all but the few-shot prefix
    (the per-plan prefix table of the separate format) gives the same."""
    llm = ChatLiteStage(model=tiny_long)
    tiny_long.context_cache.clear()
    reused = _run_nodes(llm, QUESTION)
    plain = _run_nodes(llm, QUESTION, reuse_context=False)
    assert {s: reused[s].text for s in STAGES} == {s: plain[s].text for s in STAGES}
    few_shot = plain["summary"].reused_tokens
    assert reused["summary"].reused_tokens > few_shot and plain["summary"].prefilled_tokens > 4 * reused[
        "summary"].prefilled_tokens


def test_cached_stages_equal_a_cold_cache_under_per_stage_plans(tiny_long: LoadedModel) -> None:
    llm = ChatLiteStage(model=tiny_long, stage_profile=PLANS)
    tiny_long.context_cache.clear()
    warm = _run_nodes(llm, OTHER)
    assert warm["summary"].skipped == PLANS["summary"] and warm["summary"].reused_tokens > 0
    for stage in ("analysis", "summary"):
        tiny_long.context_cache.clear()
        cold = stage_node(llm, stage, max_tokens=SHORT[stage], context="shared").invoke(warm)
        assert cold.reused_tokens == 0 and cold.text == warm[stage].text


def test_batches_equal_single_questions(tiny_long: LoadedModel) -> None:
    chain = build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT, fallback=False, context="shared")
    questions = [QUESTION, OTHER, YESNO]
    tiny_long.context_cache.clear()
    batched = run_batch(chain, questions, batch_size=3)
    tiny_long.context_cache.clear()
    alone = [chain.invoke(q) for q in questions]
    assert [_texts(r) for r in batched] == [_texts(r) for r in alone]
    assert all(r.stages["summary"].reused_tokens > 0 for r in batched)


def test_shared_stage_nodes_in_a_langgraph_graph_match_the_chain(tiny_long: LoadedModel) -> None:
    from stage_graph import run_stage_graph

    llm = ChatLiteStage(model=tiny_long, stage_profile=PLANS)
    out = run_stage_graph(llm, QUESTION, SHORT, context="shared")
    chained = build_reasoning_chain(llm, max_tokens=SHORT, fallback=False, context="shared").invoke(QUESTION)
    assert _texts(out) == _texts(chained)
    assert out.stages["summary"].reused_tokens > 0 and out.stages["summary"].skipped == PLANS["summary"]


def test_summary_text_keeps_the_answer_line_and_fallback_runs_in_shared_form(tiny_long: LoadedModel) -> None:
    chain = build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT, context="shared")
    result = chain.invoke(QUESTION)
    assert result.stages["summary"].text.startswith("So the answer is option")
    if result.fallback_used:  # a random model rarely writes a readable label
        assert result.fallback.skipped == SkipPlan() and result.fallback.text.startswith("So the answer is option")


def test_unknown_context_and_bad_continuations_are_rejected(tiny_long: LoadedModel) -> None:
    with pytest.raises(InvalidInputError, match="context format"):
        build_reasoning_chain(tiny_long, context="joint")
    with pytest.raises(InvalidInputError, match="context format"):
        stage_node(tiny_long, "recall", context="")
    llm = ChatLiteStage(model=tiny_long, max_tokens=2)
    broken = AIMessage("abc", additional_kwargs={"litestage_segments": [{"text": "ab", "skipped": None}]})
    with pytest.raises(InvalidInputError, match="concatenation"):
        llm.invoke([HumanMessage("hi"), broken])
    with pytest.raises(InvalidInputError, match="litestage_segments"):
        llm.invoke([HumanMessage("hi"), AIMessage("x", additional_kwargs={"litestage_segments": [{"txt": "x"}]})])
    with pytest.raises(InvalidInputError, match="last token"):  # the stage's own header must be under its plan
        llm.invoke([HumanMessage("hi"), continuation_message([("K:", SkipPlan(mlp=[0]))])], reuse_context=True)
    with pytest.raises(InvalidInputError, match="reuse_context must be True, False or 'store'"):
        llm.invoke([HumanMessage("hi")], reuse_context="yes")


def test_a_stored_plain_call_is_continued_by_the_next_one(tiny_long: LoadedModel) -> None:
    """`reuse_context="store"`: the same reply as a call without the context cache, and a later call that continues
    it reuses the stored prompt whole."""
    llm = ChatLiteStage(model=tiny_long, max_tokens=3)
    tiny_long.context_cache.clear()
    stored = llm.invoke([HumanMessage("Name a fruit.")], reuse_context="store")
    assert stored.content == llm.invoke([HumanMessage("Name a fruit.")]).content
    follow = [HumanMessage("Name a fruit."), continuation_message([(stored.content, None), (" and: ", None)])]
    meta = llm.invoke(follow, reuse_context=True).response_metadata
    assert meta["reused_tokens"] >= stored.usage_metadata["input_tokens"], meta


def test_chat_model_continues_a_turn_and_reports_reuse(tiny_long: LoadedModel) -> None:
    llm = ChatLiteStage(model=tiny_long, max_tokens=3, reuse_context=True)
    tiny_long.context_cache.clear()
    first = llm.invoke([HumanMessage("Name a fruit.")])
    follow = [HumanMessage("Name a fruit."), continuation_message([("Sure: ", None)])]
    second = llm.invoke(follow)
    meta = second.response_metadata
    assert meta["reused_tokens"] > 0 and meta["reused_tokens"] + meta["prefilled_tokens"] == second.usage_metadata[
        "input_tokens"]
    assert first.response_metadata["reused_tokens"] == 0


def test_a_batch_mixing_continued_and_plain_prompts_matches_single_calls(tiny_long: LoadedModel) -> None:
    llm = ChatLiteStage(model=tiny_long, max_tokens=3, reuse_context=True)
    inputs = [[HumanMessage("Name a fruit.")], [HumanMessage("Name a fruit."), continuation_message([("Sure: ", None)])]]
    tiny_long.context_cache.clear()
    batched = [m.content for m in llm.batch(inputs)]
    tiny_long.context_cache.clear()
    assert batched == [llm.invoke(i).content for i in inputs]


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
    assert theirs.stages["summary"].prefilled_tokens > 3 * summary.prefilled_tokens, "the separate one re-reads"


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


@pytest.mark.parametrize("context", ["continued", "shared"])
def test_each_evaluation_pays_its_own_prefill(tiny_long: LoadedModel, context: str) -> None:
    """A plan run after another plan on the same questions must not find their prompts cached (the continued
    analysis's whole prompt, when the plans share it): it would be timed without that prefill. The few-shot prefixes
    stay (a serving process keeps them): the later run computes nothing of them again."""
    questions = [Question.coerce({**QUESTION, "id": "q1"}), Question.coerce({**OTHER, "id": "q2"})]
    other = {**PLANS, "summary": SkipPlan()}  # the same recall and analysis

    def run(plans: dict) -> list:  # a new evaluator each time: nothing from its stage-output cache
        return ChainEvaluator(tiny_long, max_tokens=SHORT, context=context, batch_size=2).run_stages(plans, questions)

    run(other)  # the few-shot prefixes are in the prefix table from here on, for both runs compared
    run(PLANS)
    after = run(other)
    tiny_long.context_cache.clear()
    cold = run(other)
    def timed(states: list) -> list[int]:  # what each row's timed prefill ran: its prompt less what it loaded
        return [s[stage].prompt_tokens - s[stage].prefix_tokens for s in states]

    recomputed = []
    for stage in STAGES:
        assert timed(after) == timed(cold), stage
        assert [s[stage].prefilled_tokens for s in after] == timed(after), f"{stage}: the few-shot prefix was kept"
        if [s[stage].prefilled_tokens for s in cold] != timed(cold):
            recomputed.append(stage)
    if context == "shared":  # (the continued analysis reads its prefix from the prefix table, as separate does)
        assert recomputed, "after clear() a stage computes its few-shot prefix again (else the test sees nothing kept)"


def test_a_profile_records_its_search_format_and_running_it_in_another_warns(tiny_long: LoadedModel,
                                                                             tmp_path: Path) -> None:
    from litestage_chain.budgets.profile import ModelIdentity, Profile, SearchedQuestions, StageBudget

    shipped = Profile.load("csqa")  # the default model's, written before the field existed
    assert shipped.context == "separate", "a profile written before the field was searched in the separate format"
    profile = Profile(
        model=ModelIdentity(name=tiny_long.name, weights_sha256=tiny_long.weights_sha256 or "ab" * 32),
        stages={stage: StageBudget(plan=plan) for stage, plan in PLANS.items()}, epsilon=0.01, metric="accuracy",
        questions=SearchedQuestions(benchmark="t", split="train", size=2), importance=[(0, "mlp")],
        stage_order=list(STAGES), full_score=0.5, full_latency_seconds=1.0, context="continued",
    )
    profile.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json").context == "continued"
    with pytest.warns(UserWarning, match="searched in the 'continued' format and runs here in 'separate': its "
                      "summary plan's accuracy was measured only"):  # recall and analysis: the same prompts
        build_reasoning_chain(tiny_long, plans=profile, max_tokens=SHORT, context="separate")
    with pytest.warns(UserWarning, match="runs here in 'shared': its plans' accuracy was measured only"):
        build_reasoning_chain(tiny_long, plans=profile, max_tokens=SHORT, context="shared")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_reasoning_chain(tiny_long, plans=profile, max_tokens=SHORT, context="continued")


def test_a_chain_runs_in_its_profiles_format_unless_told_and_continued_without_one() -> None:
    """No format given: a searched profile's own (its plans' accuracy was measured there), "separate" for plain skip
    plans, "continued" for the full model. The continued summary starts after the forced "So the answer is option",
    which the separate summary never writes on a random tiny model, so the summary's text tells the two apart."""
    import warnings

    tiny_long = from_pretrained_objects(*tiny_long_context_llama(seed=3), name="tiny-long-formats",
                                        weights_sha256="ab" * 32)  # a searched profile runs on known weights only

    from litestage_chain.budgets.profile import ModelIdentity, Profile, SearchedQuestions, StageBudget
    from litestage_chain.reasoning.shared_context import DEFAULT_CONTEXT, SUMMARY_LEAD

    def ran_continued(result) -> bool:  # noqa: ANN001
        return result.stages["summary"].text.startswith(SUMMARY_LEAD)

    profile = Profile(
        model=ModelIdentity(name=tiny_long.name, weights_sha256="ab" * 32),
        stages={stage: StageBudget(plan=plan) for stage, plan in PLANS.items()}, epsilon=0.01, metric="accuracy",
        questions=SearchedQuestions(benchmark="t", split="train", size=2), importance=[(0, "mlp")],
        stage_order=list(STAGES), full_score=0.5, full_latency_seconds=1.0, context="separate",
    )
    assert DEFAULT_CONTEXT == "continued"
    assert profile.budgets().context == "separate" and ChatLiteStage(
        model=tiny_long, stage_profile=PLANS).stage_profile.context is None, "plain plans name no format"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the profile's own format: nothing to warn about
        full = build_reasoning_chain(tiny_long, max_tokens=SHORT, fallback=False).invoke(QUESTION)
        plain = build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT, fallback=False).invoke(QUESTION)
        skipping = ChatLiteStage(model=tiny_long, skip_plan=SkipPlan(mlp=[0]))
        skipping_model = build_reasoning_chain(skipping, max_tokens=SHORT, fallback=False).invoke(QUESTION)
        told = build_reasoning_chain(tiny_long, plans=PLANS, max_tokens=SHORT, fallback=False, context="continued")
        plain_told = told.invoke(QUESTION)  # plain plans were searched nowhere: no warning
        searched = build_reasoning_chain(tiny_long, plans=profile, max_tokens=SHORT, fallback=False).invoke(QUESTION)
        llm = ChatLiteStage(model=tiny_long, stage_profile=profile)
        through_model = build_reasoning_chain(llm, max_tokens=SHORT, fallback=False).invoke(QUESTION)
        node = stage_node(llm, "summary", max_tokens=SHORT["summary"]).invoke(
            {"question": QUESTION, "recall": searched.stages["recall"], "analysis": searched.stages["analysis"]})
    assert ran_continued(full) and ran_continued(plain_told)
    assert not any(ran_continued(r) for r in (plain, skipping_model, searched, through_model))
    assert not node.text.startswith(SUMMARY_LEAD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        told = build_reasoning_chain(tiny_long, plans=profile, max_tokens=SHORT, fallback=False, context="continued")
    assert [str(w.message)[:60] for w in caught] == [
        "the profile was searched in the 'separate' format and runs h"], "one warning per chain, not one per node"
    assert ran_continued(told.invoke(QUESTION))
    from litestage_chain.budgets.stage_budgets import StageBudgets
    from litestage_chain.reasoning.chain import plans_context

    assert plans_context(None) is None and plans_context(StageBudgets.from_plans({s: SkipPlan() for s in STAGES})) is None
    assert plans_context(StageBudgets.from_plans(PLANS)) == "separate" == plans_context(profile.budgets())
    assert plans_context(None, SkipPlan(mlp=[0])) == "separate"
    with pytest.warns(UserWarning, match="give every node of the graph the same context="):
        stage_node(tiny_long, "analysis", skip_plan=SkipPlan(attention=[0]))  # the model's plans say: full model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stage_node(tiny_long, "analysis", skip_plan=SkipPlan(attention=[0]), context="continued")  # told: as told
        stage_node(llm, "analysis", skip_plan=SkipPlan(attention=[0]))  # the model's plans: separate already


@pytest.mark.parametrize("context", ["shared", "continued"])
def test_token_counts_for_the_cost_model_do_not_depend_on_reused_stage_outputs(tiny_long: LoadedModel,
                                                                                context: str) -> None:
    """The search keeps earlier stages' outputs and reruns only the stage it searches; a reused output leaves no KV
    entries, so that stage's call prefills the whole chain so far. The token counts the cost model prices must still
    be those of a chain that ran every stage (what the plans cost in use; that they are exactly what such a chain
    prefills is checked on the real model, whose text re-encodes as generated: `test_chain_integration.py`)."""
    questions = [Question.coerce({**QUESTION, "id": "q1"}), Question.coerce({**OTHER, "id": "q2"})]
    other = {**PLANS, "summary": SkipPlan(mlp=[1])}

    def evaluator(reuse: bool) -> ChainEvaluator:
        return ChainEvaluator(tiny_long, max_tokens=SHORT, context=context, batch_size=2, reuse_outputs=reuse)

    searching = evaluator(True)
    searching.evaluate(PLANS, questions)
    reused = searching.evaluate(other, questions)  # recall and analysis come from the stage-output cache
    assert searching.generated["summary"] == 4 and searching.generated["analysis"] == 2, "the test needs reuse"
    assert reused.tokens == evaluator(False).evaluate(other, questions).tokens


def test_continued_recall_and_analysis_equal_the_separate_format_with_int4_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The continued analysis runs as a plain call and then stores its entries, so with int8/int4 weights too its
    outputs are the separate format's (through the context cache's own prefill the kernels' activation rounding
    made some differ: 8 of 16 OBQA analyses on SmolLM2 int4; this tiny model happens to show none, so the test also
    checks which engine path the analysis took), while the summary still continues them."""
    import litestage_chain.chat.chat_model as chat_module

    paths: list[str] = []
    real = chat_module.generate

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        paths.append("store" if "store_to" in kwargs else "context" if "context_cache" in kwargs else "plain")
        return real(*args, **kwargs)

    monkeypatch.setattr(chat_module, "generate", spy)
    model = from_pretrained_objects(*tiny_long_context_llama(seed=5), name="tiny-long-int4", weights="int4")
    questions = [Question.coerce({**q, "id": f"q{i}"}) for i, q in enumerate((QUESTION, OTHER, YESNO, QUESTION))]
    budget = {"recall": 8, "analysis": 24, "summary": 4}
    plans = {"recall": SkipPlan(), "analysis": SkipPlan(mlp=[1]), "summary": SkipPlan()}
    out = {}
    for context in ("separate", "continued"):
        model.context_cache.clear()
        chain = build_reasoning_chain(model, plans=plans, max_tokens=budget, fallback=False, context=context)
        out[context] = run_batch(chain, questions, batch_size=4)
        if context == "continued":
            assert paths == ["plain"] * 3 + ["plain", "store", "context"], paths  # separate's calls, then these
    for stage in ("recall", "analysis"):
        assert [r.stages[stage].text for r in out["continued"]] == [r.stages[stage].text for r in out["separate"]]
    for result in out["continued"]:
        summary = result.stages["summary"]
        assert summary.reused_tokens > 0.9 * summary.prompt_tokens, "the summary continues the stored analysis"


def test_resolve_context_prefers_the_given_then_the_measured_then_the_callers_default() -> None:
    from litestage_chain.reasoning.shared_context import DEFAULT_CONTEXT, MEASURED_CONTEXT, resolve_context

    assert resolve_context("shared", "separate", default="continued") == "shared"
    assert resolve_context(None, "shared", default=MEASURED_CONTEXT) == "shared"
    assert resolve_context(None, None, default=MEASURED_CONTEXT) == MEASURED_CONTEXT
    assert resolve_context(None) == DEFAULT_CONTEXT
    with pytest.raises(InvalidInputError, match="unknown context format 'joined'"):
        resolve_context("joined", "separate")


def test_a_chain_runs_its_profiles_token_caps() -> None:
    """A searched cap bounds its stage in the chain (the nodes name their stage), whatever budget the chain gives it;
    an explicit early_exit= for the chain sets how every stage stops, so the caps go with the profile's rules."""
    from litestage_chain.budgets.profile import ModelIdentity, Profile, SearchedQuestions, StageBudget
    from litestage_chain.engine.early_exit import EarlyExitConfig

    tiny = from_pretrained_objects(*tiny_long_context_llama(seed=3), name="tiny-long-caps", weights_sha256="cd" * 32)
    profile = Profile(
        model=ModelIdentity(name=tiny.name, weights_sha256="cd" * 32),
        stages={**{stage: StageBudget() for stage in STAGES}, "analysis": StageBudget(max_tokens=2)}, epsilon=0.01,
        metric="accuracy", questions=SearchedQuestions(benchmark="t", split="train", size=2),
        importance=[(0, "mlp")], stage_order=list(STAGES), full_score=0.5, full_latency_seconds=1.0,
        context="continued",
    )
    budgets = {**SHORT, "analysis": 6}
    capped = build_reasoning_chain(tiny, plans=profile, max_tokens=budgets, fallback=False).invoke(QUESTION)
    assert capped.stages["analysis"].generated_tokens == 2
    ruled = build_reasoning_chain(tiny, plans=profile, max_tokens=budgets, fallback=False,
                                  early_exit=EarlyExitConfig(window=64, threshold=0.01, min_tokens=64)).invoke(QUESTION)
    assert ruled.stages["analysis"].generated_tokens > 2
