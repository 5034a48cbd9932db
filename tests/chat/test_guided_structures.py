"""Schema-guided filling of arrays, nested objects, enums and nullable values, and the reply-wide token budget."""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import Enum
from typing import Optional

import pytest
import torch
from pydantic import BaseModel, Field

from litestage_chain import LoadedModel, SkipPlan
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.engine.forward import all_logits
from litestage_chain.engine.generation import GenerationResult
from litestage_chain.chat.guided import fill_object
from litestage_chain.engine.prefix_cache import PrefixCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Pet(BaseModel):
    kind: str
    legs: int


class Owner(BaseModel):
    """Someone and their pets."""

    name: str
    tags: list[str]
    pets: list[Pet] = Field(description="their pets")
    nick: Optional[str] = None
    best: Pet


def _result(text: str, tokens: int | None = None) -> GenerationResult:
    count = len(text) if tokens is None else tokens
    return GenerationResult(
        text=text, token_ids=[1] * count, confidences=[1.0] * count, prompt_tokens=5, generated_tokens=count,
        prefill_seconds=0.1, decode_seconds=0.2, early_exited=False, finish_reason="stop", plan=SkipPlan(),
    )


class Script:
    """A scripted engine: generated values and chosen options in order, with what was asked."""

    def __init__(self, values: list[str], choices: list[int]) -> None:
        self.values, self.choices = list(values), list(choices)
        self.asked: list[tuple[str, int]] = []
        self.offered: list[list[str]] = []

    def generate(self, continuation: str, stops: Sequence[str], max_new: int) -> GenerationResult:
        self.asked.append((continuation, max_new))
        return _result(self.values.pop(0))

    def choose(self, continuation: str, options: Sequence[str]) -> int:
        self.offered.append(list(options))
        return self.choices.pop(0)


def test_arrays_nested_objects_and_null() -> None:
    from langchain_core.utils.function_calling import convert_to_json_schema

    script = Script(
        values=["Ann", "kind", "tall", "cat", " 4", "dog", " 3"],
        # tags: open, go on, stop; pets: open, stop; nick: null
        choices=[1, 1, 0, 1, 0, 0],
    )
    out = fill_object(script.generate, "", convert_to_json_schema(Owner), budget=200, choose=script.choose)
    assert Owner.model_validate(out.value) == Owner(
        name="Ann", tags=["kind", "tall"], pets=[Pet(kind="cat", legs=4)], nick=None, best=Pet(kind="dog", legs=3)
    )
    assert json.loads(out.text) == out.value and not out.truncated
    assert script.offered == [["]", '"'], ["]", ', "'], ["]", ', "'], ["]", "{"], ["]", ", {"], ["null", '"']]
    assert script.values == [] and script.choices == []


def test_refs_enums_and_empty_arrays() -> None:
    class Color(str, Enum):
        RED = "red"
        GREEN = "green"

    class Shirt(BaseModel):
        color: Color
        sizes: list[int]
        note: Optional[Pet] = None

    schema = Shirt.model_json_schema()  # with $defs and $ref, as ProviderStrategy passes it
    assert "$defs" in schema
    script = Script(values=[], choices=[1, 0, 0])  # "green"; sizes: empty; note: null
    out = fill_object(script.generate, "", schema, budget=50, choose=script.choose)
    assert Shirt.model_validate(out.value) == Shirt(color=Color.GREEN, sizes=[], note=None)
    assert script.offered[0] == ['"red"', '"green"'] and script.offered[2] == ["null", "{"]


def test_max_tokens_caps_the_whole_reply() -> None:
    schema = {"properties": {"a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"}}}
    lengths = iter([6, 3, 9])

    def generate(continuation: str, stops: Sequence[str], max_new: int) -> GenerationResult:
        asked.append(max_new)
        return _result("w", tokens=min(next(lengths), max_new))

    asked: list[int] = []
    out = fill_object(generate, "", schema, budget=10)
    # a gets all but one token per later key; b what is left but one; c the rest; then the budget is spent
    assert asked == [8, 3, 1] and out.value == {"a": "w", "b": "w", "c": "w"}
    asked.clear()
    lengths = iter([5, 5])
    cut = fill_object(generate, "", schema, budget=2)
    assert asked == [1, 1] and cut.truncated and set(cut.value) == {"a", "b"}, "budget spent: the last key is left out"
    assert json.loads(cut.text) == cut.value


def test_option_scores_match_a_full_recompute(tiny_llama: LoadedModel) -> None:
    from litestage_chain.engine.choice import choose_option, option_log_probs

    prompt, options = "The colour is ", ["red", "green", "blue sky"]
    table = PrefixCache(max_entries=1)
    scores = option_log_probs(tiny_llama, prompt, options, SkipPlan(attention=[1]), shared_prefix="The col",
                              prefix_cache=table)
    assert len(table) == 1
    for option, score in zip(options, scores, strict=True):
        ids = tiny_llama.encode(prompt) + tiny_llama.encode(option)
        logits = all_logits(tiny_llama.view, torch.tensor(ids), SkipPlan(attention=[1]))
        start = len(tiny_llama.encode(prompt))
        expected = sum(
            float(torch.log_softmax(logits[t - 1], -1)[ids[t]]) for t in range(start, len(ids))
        )
        assert score == pytest.approx(expected, abs=1e-4)
    best = max(range(3), key=lambda i: scores[i])
    assert choose_option(tiny_llama, prompt, options, SkipPlan(attention=[1])) == best


def test_structured_output_with_lists_on_a_tiny_model(tiny_long: LoadedModel) -> None:
    """Before, any list field failed after every attempt: the filler had no arrays."""

    class Note(BaseModel):
        title: str
        tags: list[str]
        mood: Optional[str] = None
        parts: list[Pet] = Field(max_length=2)

    class Short(BaseModel):
        words: list[str]

    llm = ChatLiteStage(model=tiny_long, max_tokens=60, max_retries=0)
    raw = llm.with_structured_output(Short, include_raw=True).invoke("three words")
    assert raw["parsing_error"] is None and isinstance(raw["parsed"], Short)
    assert json.loads(raw["raw"].content) == raw["parsed"].model_dump()
    anything = llm.with_structured_output(Note, include_raw=True).invoke("a note")
    assert json.loads(anything["raw"].content)  # always well-formed JSON, valid or not
    assert anything["raw"].response_metadata["finish_reason"] in ("stop", "length")
