"""The chat model and the engine under bad inputs: per-input errors in batches, real cancellation, and the same
validation at every entry point."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
from pydantic import ValidationError

import litestage_chain.engine.generation as generation
from litestage_chain import ChatLiteStage, GenerationConfig, InvalidInputError, LoadedModel, generate
from litestage_chain.errors import GenerationCancelled

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOO_LONG = "word " * 80  # 400 bytes: beyond the tiny model's 256 positions


@pytest.fixture
def llm(tiny_llama: LoadedModel) -> ChatLiteStage:
    return ChatLiteStage(model=tiny_llama, max_tokens=5, cache=False)


def test_one_over_long_input_fails_only_itself_in_a_batch(llm: ChatLiteStage) -> None:
    inputs = ["hello", TOO_LONG, "name a fruit"]
    outputs = llm.batch(inputs, return_exceptions=True)
    assert isinstance(outputs[1], InvalidInputError) and "does not fit the model's context" in str(outputs[1])
    assert [o.content for i, o in enumerate(outputs) if i != 1] == [llm.invoke(t).content for t in ("hello", "name a fruit")]
    with pytest.raises(InvalidInputError, match="does not fit"):
        llm.batch(inputs)


async def test_one_over_long_input_fails_only_itself_in_abatch(llm: ChatLiteStage) -> None:
    outputs = await llm.abatch(["hello", TOO_LONG], return_exceptions=True)
    assert not isinstance(outputs[0], Exception) and isinstance(outputs[1], InvalidInputError)


def test_the_engine_names_the_prompt_that_does_not_fit(tiny_llama: LoadedModel) -> None:
    with pytest.raises(InvalidInputError, match=r"prompt 1 \(\d+ tokens\) does not fit"):
        generate(tiny_llama, ["hi", TOO_LONG], config=GenerationConfig(max_new_tokens=2))


def _slow_steps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every decoding step takes 20 ms and is recorded, so a test can see whether decoding goes on."""
    steps: list[float] = []
    real = generation._advance

    def slow(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        time.sleep(0.02)
        steps.append(time.perf_counter())
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "_advance", slow)
    return steps


@pytest.mark.parametrize("call", ["ainvoke", "abatch"])
async def test_cancelling_an_async_call_stops_the_generation_thread(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    steps = _slow_steps(monkeypatch)
    llm = ChatLiteStage(model=tiny_llama, max_tokens=200, cache=False)
    work = llm.ainvoke("count to a hundred") if call == "ainvoke" else llm.abatch(["one", "two"])
    task = asyncio.create_task(work)
    while len(steps) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    at_cancel = len(steps)
    await asyncio.sleep(0.5)
    assert len(steps) <= at_cancel + 2, f"decoding went on after the cancel: {len(steps) - at_cancel} more steps"
    assert len(steps) < 50


def test_the_engine_stops_when_its_cancel_event_is_set(tiny_llama: LoadedModel) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelled):
        generate(tiny_llama, ["hi"], config=GenerationConfig(max_new_tokens=3), cancel=cancel)


@pytest.mark.parametrize("value", [math.inf, math.nan, -1.0])
def test_temperature_must_be_finite_and_non_negative(llm: ChatLiteStage, value: float) -> None:
    with pytest.raises(ValidationError):
        GenerationConfig(temperature=value)
    with pytest.raises(ValidationError):
        ChatLiteStage(temperature=value)
    with pytest.raises(InvalidInputError, match="temperature"):
        llm.invoke("hi", temperature=value)


@pytest.mark.parametrize("text", ["", "   \n"])
def test_an_empty_user_message_is_refused_like_an_empty_prompt(llm: ChatLiteStage, tiny_llama, text: str) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInputError, match="is empty"):
        generate(tiny_llama, [text])
    with pytest.raises(InvalidInputError, match=r"message 0 \(HumanMessage\) is empty"):
        llm.invoke(text)
    assert isinstance(llm.batch(["hi", text], return_exceptions=True)[1], InvalidInputError)


def test_a_prompt_that_leaves_too_little_room_warns(tiny_llama: LoadedModel) -> None:
    prompt = "x" * (tiny_llama.max_positions - 11)  # the byte tokenizer: one token per character
    with pytest.warns(UserWarning, match="leaves room for 11 of the 32 new tokens"):
        result = generate(tiny_llama, [prompt], config=GenerationConfig(max_new_tokens=32, ignore_eos=True))[0]
    assert result.generated_tokens == 11 and result.finish_reason == "length"


def test_closing_a_stream_ends_its_decode_before_returning(tiny_llama: LoadedModel, monkeypatch) -> None:  # noqa: ANN001
    steps = _slow_steps(monkeypatch)
    llm = ChatLiteStage(model=tiny_llama, max_tokens=200, cache=False)
    stream = llm.stream("count to a hundred")
    next(stream)
    stream.close()  # the consumer goes away (a closed pipe, a break out of the loop)
    at_close = len(steps)
    time.sleep(0.3)
    assert len(steps) == at_close and at_close < 50
