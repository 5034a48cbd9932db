"""ChatLiteStage on the real default model (SmolLM2-135M-Instruct): the calls users make, end to end."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import (
    AIMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from pydantic import BaseModel, Field, ValidationError

from litestage_chain import InvalidInputError, LoadedModel, SkipPlan
from litestage_chain.chat.chat_model import ChatLiteStage

pytestmark = pytest.mark.integration

PLANS = {
    "recall": SkipPlan(),
    "analysis": SkipPlan(attention=[20, 24], mlp=[26]),
    "summary": SkipPlan(attention=[10, 14, 18, 22], mlp=[12, 16, 28]),
}


@pytest.fixture(scope="module")
def llm(real_model: LoadedModel) -> ChatLiteStage:
    # float32: the reference format, whose batched and single greedy texts match exactly (see the batch test)
    return ChatLiteStage(weights="float32", max_tokens=10, stage_profile=PLANS)


def test_invoke_with_system_message(llm: ChatLiteStage) -> None:
    message = llm.invoke([SystemMessage("Answer with one word."), HumanMessage("What color is the sky?")])
    assert isinstance(message, AIMessage) and message.content.strip()
    assert message.response_metadata["model_name"] == "smollm2-135m"
    usage = message.usage_metadata
    assert usage["input_tokens"] > 10 and 1 <= usage["output_tokens"] <= 10
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_stream_pieces_add_up_to_invoke(llm: ChatLiteStage) -> None:
    full = llm.invoke("Name three fruits.")
    chunks = list(llm.stream("Name three fruits."))
    assert len(chunks) > 3  # one chunk per decoded piece, plus the final usage chunk
    assert "".join(c.content for c in chunks) == full.content
    assert chunks[-1].usage_metadata == full.usage_metadata and chunks[-1].chunk_position == "last"


async def test_ainvoke_and_astream(llm: ChatLiteStage) -> None:
    full = llm.invoke("Say hello.")
    assert (await llm.ainvoke("Say hello.")).content == full.content
    assert "".join([c.content async for c in llm.astream("Say hello.")]) == full.content


def test_batch_matches_single_calls(llm: ChatLiteStage) -> None:
    prompts = ["Name a fruit.", "What is two plus two?", "Say hi."]
    singles = [llm.invoke(p) for p in prompts]
    batched = llm.batch(prompts)
    assert [m.usage_metadata["input_tokens"] for m in batched] == [m.usage_metadata["input_tokens"] for m in singles]
    # Padding changes float summation order; greedy text stays the same for these prompts.
    assert [m.content for m in batched] == [m.content for m in singles]


def test_stop_string(llm: ChatLiteStage) -> None:
    text = llm.bind(max_tokens=16).invoke("Count from one to ten in words.").content
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]
    cut = llm.bind(max_tokens=16).invoke("Count from one to ten in words.", stop=[stop])
    assert cut.content == text[: text.index(stop)] and stop not in cut.content


def test_stage_budgets_reach_the_engine(llm: ChatLiteStage) -> None:
    for stage, plan in PLANS.items():
        meta = llm.bind(stage=stage).invoke("Say hello.").response_metadata
        assert meta["stage"] == stage
        assert meta["skipped"] == {"attention": list(plan.attention), "mlp": list(plan.mlp)}
        assert meta["num_skipped"] == plan.num_skipped
        assert meta["prefill_seconds"] > 0 and meta["decode_seconds"] > 0 and meta["early_exit"] is False


def test_concurrent_calls_with_different_stage_budgets_match_one_by_one(llm: ChatLiteStage) -> None:
    prompt = "Why is the sky blue?"
    bound = {stage: llm.bind(stage=stage) for stage in PLANS}
    one_by_one = {stage: b.invoke(prompt).content for stage, b in bound.items()}

    async def concurrently() -> dict[str, str]:
        replies = await asyncio.gather(*(b.ainvoke(prompt) for b in bound.values()))
        return {stage: reply.content for stage, reply in zip(bound, replies, strict=True)}

    assert asyncio.run(concurrently()) == one_by_one
    assert one_by_one["recall"] != one_by_one["summary"]  # the budgets really differ


def test_structured_output(llm: ChatLiteStage) -> None:
    class City(BaseModel):
        """A city and its country."""

        city: str = Field(description="the city's name")
        country: str = Field(description="the country the city is in")

    result = llm.bind(max_tokens=8).with_structured_output(City).invoke("Paris is the capital of France.")
    assert isinstance(result, City) and result.city and result.country


def test_tool_call_round_trip(llm: ChatLiteStage) -> None:
    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    with_tools = llm.bind_tools([multiply], tool_choice="multiply")
    question = HumanMessage("What is 6 times 7? Use the tool.")
    call_message = with_tools.invoke([question])
    assert len(call_message.tool_calls) == 1
    call = call_message.tool_calls[0]
    assert call["name"] == "multiply" and call["args"] == {"a": 6, "b": 7}
    result = multiply.invoke(call)
    assert isinstance(result, ToolMessage) and result.content == "42"
    answer = llm.bind(max_tokens=16).invoke([question, call_message, result])
    assert isinstance(answer, AIMessage) and answer.content.strip()


def test_bad_input_errors(llm: ChatLiteStage) -> None:
    with pytest.raises(InvalidInputError, match="no messages"):
        llm.invoke([])
    with pytest.raises(InvalidInputError, match="unknown stage 'thinking'"):
        llm.bind(stage="thinking").invoke("x")
    partial = ChatLiteStage(stage_profile={"recall": SkipPlan()})
    with pytest.raises(InvalidInputError, match="'summary' is missing from the profile"):
        partial.bind(stage="summary").invoke("x")
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        llm.invoke("x", max_tokens=-3)
    with pytest.raises(ValidationError, match="max_tokens"):
        ChatLiteStage(max_tokens=-3)
    with pytest.raises(InvalidInputError, match="unsupported message type FunctionMessage"):
        llm.invoke([FunctionMessage(content="x", name="f")])
    with pytest.raises(InvalidInputError, match="model has 30 layers"):
        llm.invoke("x", skip_plan=SkipPlan(mlp=[30]))


def test_weights_are_shared_by_instances_bindings_and_rebuilds(llm: ChatLiteStage, real_model: LoadedModel) -> None:
    from langchain_core.runnables import ConfigurableField

    assert llm.loaded_model() is real_model
    assert ChatLiteStage(weights="float32", max_tokens=3, temperature=0.5).loaded_model() is real_model
    default = ChatLiteStage(max_tokens=3).loaded_model()  # weights="auto": the model's recommended format
    assert ChatLiteStage(temperature=0.5).loaded_model() is default
    assert default.weights_sha256 == real_model.weights_sha256 and default.weights in ("int4", "float32")
    configurable = llm.configurable_fields(max_tokens=ConfigurableField(id="max_tokens"))
    rebuilt = configurable.with_config(configurable={"max_tokens": 2}).invoke("Hi")
    assert rebuilt.usage_metadata["output_tokens"] <= 2
    assert llm.bind(stage="recall").bound.loaded_model() is real_model
