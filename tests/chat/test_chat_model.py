"""ChatLiteStage plumbing on a tiny random model: budgets, overrides, streaming, batching, usage, errors."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.runnables import ConfigurableField
from pydantic import ValidationError

from litestage_chain import EarlyExitConfig, InvalidInputError, LoadedModel, SkipPlan
from litestage_chain.budgets.stage_budgets import StageBudget, StageBudgets
from litestage_chain.chat.chat_model import ChatLiteStage


@pytest.fixture
def llm(tiny_llama: LoadedModel) -> ChatLiteStage:
    return ChatLiteStage(model=tiny_llama, max_tokens=6)


def test_usage_reports_the_reused_conversation_prefix_as_cached_input(
    llm: ChatLiteStage, tiny_llama: LoadedModel
) -> None:
    """The first call stores the earlier turns' KV entries (cache_creation), the next reuses them (cache_read)."""
    tiny_llama.prefix_cache.clear()
    conversation = [SystemMessage("be brief"), HumanMessage("hello")]
    prefix = tiny_llama.render_chat([{"role": "system", "content": "be brief"}], add_generation_prompt=False)
    size = tiny_llama.count_tokens(prefix)
    first, second = llm.invoke(conversation), llm.invoke(conversation)
    assert first.usage_metadata["input_token_details"] == {"cache_creation": size}
    assert second.usage_metadata["input_token_details"] == {"cache_read": size}
    assert first.usage_metadata["input_tokens"] == second.usage_metadata["input_tokens"] > size
    streamed = list(llm.stream(conversation))
    assert [c.usage_metadata["input_token_details"] for c in streamed if c.usage_metadata] == [{"cache_read": size}]
    # A batch computes the prefix once: one row reports creating it, the others reading it.
    tiny_llama.prefix_cache.clear()
    details = [m.usage_metadata["input_token_details"] for m in llm.batch([conversation, conversation])]
    assert details == [{"cache_creation": size}, {"cache_read": size}]
    # Without prefix reuse (or with a single message) nothing is cached, and no details are claimed.
    alone = llm.invoke("hello")
    assert "input_token_details" not in alone.usage_metadata
    unshared = llm.model_copy(update={"reuse_prefix": False}).invoke(conversation)
    assert "input_token_details" not in unshared.usage_metadata


def test_construction_is_lazy() -> None:
    # A source that does not exist: construction must not touch it, only the first call does.
    model = ChatLiteStage(model="/nonexistent/model.gguf")
    assert model.model_name == "/nonexistent/model.gguf"
    with pytest.raises(Exception, match="nonexistent"):
        model.invoke("hi")


def test_invoke_usage_and_metadata(llm: ChatLiteStage, tiny_llama: LoadedModel) -> None:
    message = llm.invoke([SystemMessage("be brief"), HumanMessage("hello")])
    assert isinstance(message, AIMessage) and isinstance(message.content, str)
    usage = message.usage_metadata
    prompt = tiny_llama.render_chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}])
    assert usage["input_tokens"] == tiny_llama.count_tokens(prompt)
    assert 1 <= usage["output_tokens"] <= 6
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    meta = message.response_metadata
    assert meta["model_name"] == "tiny-llama" and meta["stage"] is None
    assert meta["skipped"] == {"attention": [], "mlp": []} and meta["early_exit"] is False
    assert meta["prefill_seconds"] > 0 and meta["decode_seconds"] >= 0
    assert meta["finish_reason"] in {"eos", "length", "stop"}
    assert meta["weights"] == tiny_llama.weights == "float32" and meta["kernel"] == "aten"


def test_stream_matches_invoke(llm: ChatLiteStage) -> None:
    full = llm.invoke("hello")
    chunks = list(llm.stream("hello"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[-1].chunk_position == "last"
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert merged.content == full.content
    assert merged.usage_metadata == full.usage_metadata
    # Usage is reported once, on the final chunk.
    assert sum(1 for c in chunks if c.usage_metadata) == 1


async def test_astream_and_ainvoke_match_invoke(llm: ChatLiteStage) -> None:
    full = llm.invoke("hello")
    assert (await llm.ainvoke("hello")).content == full.content
    pieces = [chunk.content async for chunk in llm.astream("hello")]
    assert "".join(pieces) == full.content


async def test_async_calls_do_not_block_the_event_loop(llm: ChatLiteStage) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await llm.bind(max_tokens=20).ainvoke("hello there")
    task.cancel()
    assert ticks > 3


def test_stop_strings_cut_output(llm: ChatLiteStage) -> None:
    text = llm.bind(max_tokens=12).invoke("hello").content
    assert len(text) >= 3, text
    stop = text[2:4]
    cut = llm.bind(max_tokens=12).invoke("hello", stop=[stop])
    assert cut.content == text[: text.index(stop)]
    assert cut.response_metadata["finish_reason"] == "stop"
    # The instance-level stop field works the same way.
    assert ChatLiteStage(model=llm.model, max_tokens=12, stop=[stop]).invoke("hello").content == cut.content


def test_skip_plan_overrides_change_the_computation(llm: ChatLiteStage) -> None:
    plan = SkipPlan(attention=[0, 1, 2, 3], mlp=[0, 1, 2, 3])
    full = llm.bind(max_tokens=12).invoke("hello")
    skipped = llm.bind(max_tokens=12, skip_plan=plan).invoke("hello")
    assert skipped.response_metadata["skipped"] == {"attention": [0, 1, 2, 3], "mlp": [0, 1, 2, 3]}
    assert skipped.response_metadata["num_skipped"] == 8
    assert skipped.content != full.content
    # Same plan as an instance field gives the same output as the per-call override.
    assert ChatLiteStage(model=llm.model, max_tokens=12, skip_plan=plan).invoke("hello").content == skipped.content


def test_stage_profile_resolution(tiny_llama: LoadedModel) -> None:
    profile = {"recall": SkipPlan(attention=[1]), "summary": SkipPlan(mlp=[2, 3])}
    llm = ChatLiteStage(model=tiny_llama, max_tokens=3, stage_profile=profile, skip_plan=SkipPlan(mlp=[0]))
    assert isinstance(llm.stage_profile, StageBudgets)
    assert llm.bind(stage="recall").invoke("x").response_metadata["skipped"] == {"attention": [1], "mlp": []}
    summary = llm.bind(stage="summary").invoke("x").response_metadata
    assert summary["stage"] == "summary" and summary["skipped"] == {"attention": [], "mlp": [2, 3]}
    # No stage: the instance plan. Explicit skip_plan beats the stage's plan.
    assert llm.invoke("x").response_metadata["skipped"] == {"attention": [], "mlp": [0]}
    explicit = llm.bind(stage="recall", skip_plan=SkipPlan()).invoke("x").response_metadata
    assert explicit["skipped"] == {"attention": [], "mlp": []}
    with pytest.raises(InvalidInputError, match="'analysis' is missing from the profile"):
        llm.bind(stage="analysis").invoke("x")
    with pytest.raises(InvalidInputError, match="unknown stage 'reasoning'"):
        llm.bind(stage="reasoning").invoke("x")


def test_a_profiles_token_cap_bounds_its_stage_calls(tiny_llama: LoadedModel) -> None:
    """A searched cap goes with the profile's early exit: the call gets the smaller of its budget and the cap, other
    stages keep theirs, and a call that sets its own early exit sets how it stops (no cap)."""
    budgets = StageBudgets(stages={"recall": StageBudget(), "analysis": StageBudget(max_tokens=3)})
    llm = ChatLiteStage(model=tiny_llama, max_tokens=10, stage_profile=budgets)

    def generated(**call: object) -> int:
        return llm.bind(**call).invoke("hello").usage_metadata["output_tokens"]

    uncapped = generated(stage="recall")
    assert uncapped > 3, "the tiny model must write past the cap for this test to see it"
    assert generated(stage="analysis") == 3
    assert generated(stage="analysis", max_tokens=2) == 2, "a smaller budget than the cap still wins"
    assert generated(stage="analysis", early_exit=None) == uncapped
    with pytest.raises(ValueError):
        StageBudget(max_tokens=0)


def test_profile_object_plugs_in(tiny_llama: LoadedModel) -> None:
    class Budget:
        def plan_for(self, stage: str) -> SkipPlan:
            return SkipPlan(attention=[{"recall": 0, "analysis": 1, "summary": 2}[stage]])

        def early_exit_for(self, stage: str) -> EarlyExitConfig | None:
            return EarlyExitConfig(window=1, threshold=1.0, min_tokens=1) if stage == "analysis" else None

    llm = ChatLiteStage(
        model=tiny_llama, max_tokens=8, stage_profile=Budget(), early_exit=EarlyExitConfig(window=1, threshold=1.0, min_tokens=1)
    )
    recall = llm.bind(stage="recall").invoke("x").response_metadata
    analysis = llm.bind(stage="analysis").invoke("x").response_metadata
    assert recall["skipped"]["attention"] == [0] and analysis["skipped"]["attention"] == [1]
    # threshold 1.0 with window 1: any token below certainty exits at min_tokens; the profile's None means off.
    assert analysis["early_exit"] is True and analysis["finish_reason"] == "stop"
    assert analysis["engine_finish_reason"] == "early_exit"
    assert recall["early_exit"] is False
    # A per-call early_exit=None disables it even where the profile enables it.
    assert llm.bind(stage="analysis", early_exit=None).invoke("x").response_metadata["early_exit"] is False


def test_configurable_fields_and_with_config(llm: ChatLiteStage) -> None:
    configurable = llm.configurable_fields(
        stage=ConfigurableField(id="stage"), skip_plan=ConfigurableField(id="skip_plan")
    )
    message = configurable.with_config(
        configurable={"skip_plan": SkipPlan(mlp=[1])}
    ).invoke("hello")
    assert message.response_metadata["skipped"] == {"attention": [], "mlp": [1]}


def test_batch_is_one_batched_decode_and_matches_single_calls(
    llm: ChatLiteStage, monkeypatch: pytest.MonkeyPatch
) -> None:
    import litestage_chain.chat.chat_model as module

    prompts = ["hello", "a longer prompt here", "x"]
    singles = [llm.invoke(p) for p in prompts]
    calls: list[int] = []
    real = module.generate

    def counting(model, batch, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        return real(model, batch, **kwargs)

    monkeypatch.setattr(module, "generate", counting)
    batched = llm.batch(prompts)
    assert calls == [3]
    assert [m.content for m in batched] == [m.content for m in singles]
    assert [m.usage_metadata for m in batched] == [m.usage_metadata for m in singles]
    calls.clear()
    # max_concurrency caps the batch size.
    llm.batch(prompts, config={"max_concurrency": 2})
    assert calls == [2, 1]
    calls.clear()
    asyncio.run(llm.abatch(prompts))
    assert calls == [3]


def test_batch_fires_callbacks_per_input(llm: ChatLiteStage) -> None:
    class Recorder(BaseCallbackHandler):
        def __init__(self) -> None:
            self.starts = 0
            self.ends = 0

        def on_chat_model_start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.starts += 1

        def on_llm_end(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.ends += 1

    recorder = Recorder()
    llm.batch(["a", "b"], config={"callbacks": [recorder]})
    assert (recorder.starts, recorder.ends) == (2, 2)


def test_concurrent_calls_with_different_budgets_match_sequential(llm: ChatLiteStage) -> None:
    plans = [SkipPlan(), SkipPlan(attention=[0, 2]), SkipPlan(mlp=[1, 3]), SkipPlan(attention=[3], mlp=[0])]
    bound = [llm.bind(skip_plan=p, max_tokens=10) for p in plans]
    sequential = [b.invoke("hello") .content for b in bound]

    async def together() -> list[str]:
        results = await asyncio.gather(*(b.ainvoke("hello") for b in bound))
        return [r.content for r in results]

    assert asyncio.run(together()) == sequential
    assert len(set(sequential)) > 1  # the plans really differ


def test_bad_input_errors_are_clear(llm: ChatLiteStage) -> None:
    with pytest.raises(InvalidInputError, match="no messages"):
        llm.invoke([])
    with pytest.raises(InvalidInputError, match="unsupported message type FunctionMessage"):
        llm.invoke([FunctionMessage(content="x", name="f")])
    with pytest.raises(InvalidInputError, match="unsupported chat role 'wizard'"):
        llm.invoke([ChatMessage(role="wizard", content="x")])
    with pytest.raises(InvalidInputError, match="image"):
        llm.invoke([HumanMessage(content=[{"type": "image", "url": "http://x"}])])
    with pytest.raises(InvalidInputError, match="only system text"):
        llm.invoke([SystemMessage("x")])
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        llm.invoke("x", max_tokens=-1)
    with pytest.raises(InvalidInputError, match="unknown argument"):
        llm.invoke("x", temprature=0.5)
    with pytest.raises(InvalidInputError, match="model has 4 layers"):
        llm.invoke("x", skip_plan=SkipPlan(attention=[40]))
    with pytest.raises(InvalidInputError, match="invalid skip_plan"):
        llm.invoke("x", skip_plan={"attention": [-1]})
    with pytest.raises(ValidationError, match="max_tokens"):
        ChatLiteStage(max_tokens=-5)
    with pytest.raises(ValidationError, match="stage"):
        ChatLiteStage(stage="planning")
    with pytest.raises(ValidationError, match="unknown stage"):
        ChatLiteStage(stage_profile={"planning": SkipPlan()})
    with pytest.raises(ValidationError, match="temprature"):
        ChatLiteStage(temprature=0.2)


def test_sampling_is_seeded(llm: ChatLiteStage) -> None:
    sampler = llm.bind(temperature=1.5, seed=7, max_tokens=10)
    assert sampler.invoke("hi").content == sampler.invoke("hi").content


def test_ls_params_and_identifying_params(llm: ChatLiteStage) -> None:
    params = llm._get_ls_params(stop=["x"])
    assert params["ls_provider"] == "litestage" and params["ls_model_name"] == "tiny-llama"
    assert params["ls_max_tokens"] == 6 and params["ls_stop"] == ["x"]
    assert llm._get_ls_params(model="other")["ls_model_name"] == "other"
    assert llm._identifying_params["skip_plan"] == {"attention": [], "mlp": []}


def test_llm_cache_keeps_apart_models_that_differ_only_in_their_stage_profile(tiny_llama: LoadedModel) -> None:
    """A cached full-model reply must never be served to a call that runs with a profile's skipped plan."""
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import get_llm_cache, set_llm_cache

    previous, cache = get_llm_cache(), InMemoryCache()
    set_llm_cache(cache)
    try:
        profiles = [{"summary": SkipPlan()}, {"summary": SkipPlan(attention=[0, 1, 2, 3], mlp=[1, 2])}]
        replies = [ChatLiteStage(model=tiny_llama, max_tokens=4, stage_profile=p).bind(stage="summary").invoke("x")
                   for p in profiles]
        assert [r.response_metadata["skipped"]["attention"] for r in replies] == [[], [0, 1, 2, 3]]
        assert len(cache._cache) == 2
        again = ChatLiteStage(model=tiny_llama, max_tokens=4, stage_profile=profiles[1]).bind(stage="summary")
        assert again.invoke("x").content == replies[1].content and len(cache._cache) == 2, "same profile: a hit"
    finally:
        set_llm_cache(previous)


def test_batch_with_per_input_configs_is_still_one_decode(
    llm: ChatLiteStage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LCEL sequences hand each step one config per input (each with its own child callbacks).
    import litestage_chain.chat.chat_model as module

    calls: list[int] = []
    real = module.generate
    monkeypatch.setattr(module, "generate", lambda m, b, **k: calls.append(len(b)) or real(m, b, **k))
    chain = llm.bind(max_tokens=3) | (lambda message: message.content)
    outputs = chain.batch(["a", "b", "c"])
    assert calls == [3] and len(outputs) == 3


def test_batch_errors_per_input(llm: ChatLiteStage) -> None:
    outputs = llm.batch(["fine", []], return_exceptions=True)
    assert isinstance(outputs[0], AIMessage) and isinstance(outputs[1], InvalidInputError)
    with pytest.raises(InvalidInputError, match="no messages"):
        llm.batch(["fine", []])


def test_profile_keyword_is_an_alias_for_stage_budgets(tiny_llama: LoadedModel) -> None:
    llm = ChatLiteStage(model=tiny_llama, max_tokens=2, profile={"recall": SkipPlan(mlp=[3])})
    assert isinstance(llm.stage_profile, StageBudgets)
    assert llm.profile is not None and llm.profile.get("tool_calling") is True  # capabilities stay intact
    assert llm.bind(stage="recall").invoke("x").response_metadata["skipped"]["mlp"] == [3]
    capabilities = ChatLiteStage(model=tiny_llama, profile={"max_input_tokens": 100})
    assert capabilities.stage_profile is None and capabilities.profile == {"max_input_tokens": 100}


def test_prefix_reuse_passes_the_history_and_keeps_outputs(llm: ChatLiteStage, monkeypatch: pytest.MonkeyPatch) -> None:
    import litestage_chain.chat.chat_model as module

    conversation = [SystemMessage("be brief"), HumanMessage("hi"), AIMessage("hello"), HumanMessage("how are you")]
    without = llm.model_copy(update={"reuse_prefix": False}).bind(max_tokens=8).invoke(conversation).content
    prefixes: list[str | None] = []
    real = module.generate

    def spy(model, prompts, **kwargs):  # type: ignore[no-untyped-def]
        prefixes.append(kwargs.get("shared_prefix"))
        return real(model, prompts, **kwargs)

    monkeypatch.setattr(module, "generate", spy)
    first = llm.bind(max_tokens=8).invoke(conversation).content
    again = llm.bind(max_tokens=8).invoke(conversation).content  # now served from the prefix cache
    assert first == again == without
    history = llm.loaded_model().render_chat(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "hello"}],
        add_generation_prompt=False,
    )
    assert prefixes == [history, history]
