"""LangChain conventions a user relies on when swapping ChatLiteStage in for another provider."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages
from pydantic import BaseModel

from litestage_chain import InvalidInputError, LoadedModel
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.engine.generation import GenerationConfig, generate
from litestage_chain.engine.sampling import choose_next

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_hub_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """langchain-core's fallback counts with GPT-2's tokenizer from the hub: make reaching for it fail loudly."""
    import langchain_core.language_models.base as base

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("fell back to GPT-2's tokenizer from the hub")

    monkeypatch.setattr(base, "get_tokenizer", refuse)
    monkeypatch.setattr(base, "_get_token_ids_default_method", refuse)


def test_token_counting_uses_the_models_own_tokenizer(tiny_llama: LoadedModel, no_hub_tokenizer: None) -> None:
    llm = ChatLiteStage(model=tiny_llama)
    assert llm.get_token_ids("héllo") == tiny_llama.encode("héllo")
    assert llm.get_num_tokens("héllo") == 6  # the tiny tokenizer has one token per byte
    messages = [SystemMessage("Be brief."), HumanMessage("Name a fruit."), AIMessage("Apple.")]
    rendered = tiny_llama.render_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."},
         {"role": "assistant", "content": "Apple."}],
        add_generation_prompt=False,
    )
    assert llm.get_num_tokens_from_messages(messages) == tiny_llama.count_tokens(rendered)
    assert llm.get_num_tokens_from_messages([SystemMessage("Be brief.")]) > 0  # a beginning with no user turn
    assert llm.get_num_tokens_from_messages([]) == 0
    assert llm.get_num_tokens_from_messages([("system", "Be brief."), ("user", "Name a fruit."), ("ai", "Apple.")]) == (
        llm.get_num_tokens_from_messages(messages)
    )

    from langchain_core.tools import tool

    @tool
    def clock() -> str:
        """Tell the time."""
        return "noon"

    with_tools = llm.get_num_tokens_from_messages(messages, tools=[clock])
    assert with_tools > llm.get_num_tokens_from_messages(messages), "the tool instructions are part of the prompt"


def test_trim_messages_with_the_model_as_counter(tiny_llama: LoadedModel, no_hub_tokenizer: None) -> None:
    llm = ChatLiteStage(model=tiny_llama)
    history = [SystemMessage("Be brief.")]
    for turn in range(6):
        history += [HumanMessage(f"question {turn} " + "x" * 40), AIMessage(f"answer {turn} " + "y" * 40)]
    history.append(HumanMessage("last question"))
    budget = llm.get_num_tokens_from_messages(history) // 2
    trimmed = trim_messages(history, max_tokens=budget, token_counter=llm, strategy="last", include_system=True,
                            start_on="human")
    assert 2 <= len(trimmed) < len(history), "a budget of half the tokens drops messages"
    assert isinstance(trimmed[0], SystemMessage) and trimmed[-1].content == "last question"
    assert llm.get_num_tokens_from_messages(trimmed) <= budget


def test_top_k_and_aliases(tiny_llama: LoadedModel) -> None:
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0]] * 200)
    picks = choose_next(logits, 1.0, 1.0, torch.Generator().manual_seed(0), top_k=2)
    assert set(picks.tolist()) == {0, 1}, "top_k=2 samples only the two likeliest tokens"
    one = generate(tiny_llama, ["hello"], config=GenerationConfig(max_new_tokens=6, temperature=5.0, top_k=1, seed=3))
    greedy = generate(tiny_llama, ["hello"], config=GenerationConfig(max_new_tokens=6))
    assert one[0].token_ids == greedy[0].token_ids, "top_k=1 is greedy whatever the temperature"

    llm = ChatLiteStage(model=tiny_llama, max_tokens=6)
    sampled = llm.invoke("hello", temperature=5.0, top_k=1)
    assert sampled.content == llm.invoke("hello").content
    assert ChatLiteStage(model=tiny_llama, max_tokens=6, top_k=1, temperature=2.0).invoke("hello").content == sampled.content
    for alias in ("max_new_tokens", "num_predict", "max_completion_tokens"):
        assert llm.invoke("hello", **{alias: 2}).usage_metadata["output_tokens"] <= 2
        assert ChatLiteStage(model=tiny_llama, **{alias: 3}).max_tokens == 3
    with pytest.raises(InvalidInputError, match="conflicts with max_tokens"):
        llm.invoke("hello", max_tokens=2, num_predict=3)
    with pytest.raises(InvalidInputError, match="invalid generation settings"):
        llm.invoke("hello", top_k=0)


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


class AsyncTokens(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


async def test_invoke_reports_tokens_to_callbacks(tiny_llama: LoadedModel) -> None:
    llm = ChatLiteStage(model=tiny_llama, max_tokens=8)
    handler = Tokens()
    message = llm.invoke("hello", config={"callbacks": [handler]})
    assert handler.tokens and "".join(handler.tokens) == message.content
    async_handler = AsyncTokens()
    amessage = await llm.ainvoke("hello", config={"callbacks": [async_handler]})
    assert "".join(async_handler.tokens) == amessage.content == message.content


def test_finish_reasons_are_langchains(tiny_llama: LoadedModel) -> None:
    from litestage_chain.chat.call_options import FINISH_REASONS

    llm = ChatLiteStage(model=tiny_llama, max_tokens=3)
    cut = llm.invoke("hello").response_metadata
    assert cut["finish_reason"] == "length" and cut["engine_finish_reason"] == "length"
    stopped = llm.invoke("hello", stop=[cut and llm.invoke("hello").text[1:2] or "x"]).response_metadata
    assert stopped["finish_reason"] == "stop" and stopped["engine_finish_reason"] == "stop"
    assert set(FINISH_REASONS.values()) == {"stop", "length"} and FINISH_REASONS["eos"] == "stop"
    streamed = None
    for chunk in llm.stream("hello"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and streamed.response_metadata["finish_reason"] == "length"


def test_structured_output_rejects_unknown_methods(tiny_llama: LoadedModel) -> None:
    class Pet(BaseModel):
        kind: str

    llm = ChatLiteStage(model=tiny_llama)
    with pytest.raises(InvalidInputError, match="unknown method 'bogus'"):
        llm.with_structured_output(Pet, method="bogus")  # type: ignore[arg-type]
    for method in ("json_schema", "function_calling", "json_mode"):
        llm.with_structured_output(Pet, method=method)  # type: ignore[arg-type]
