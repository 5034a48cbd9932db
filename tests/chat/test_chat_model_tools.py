"""Tool-call rendering and parsing, schema-guided filling, and structured output retries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import BaseModel, Field

from sample_tools import adder, clock

from litestage_chain import InvalidInputError, LoadedModel, SkipPlan
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.chat.guided import fill_object
from litestage_chain.chat.messages import to_chat_dicts
from litestage_chain.chat.structured import StructuredOutputError
from litestage_chain.chat.tools import (
    forced_tool_name,
    parse_tool_calls,
    tool_specs,
    tools_system_prompt,
)
from litestage_chain.engine.generation import GenerationResult




SPECS = tool_specs([adder, clock])


def test_tool_specs_and_system_prompt() -> None:
    assert [s.name for s in SPECS] == ["adder", "clock"]
    assert set(SPECS[0].parameters["properties"]) == {"a", "b"}
    prompt = tools_system_prompt(SPECS, forced="adder")
    lines = prompt.splitlines()
    assert json.loads(lines[1])["name"] == "adder" and json.loads(lines[2])["name"] == "clock"
    assert "<tool_call>" in prompt and "must call the tool adder" in prompt
    assert [s.name for s in tool_specs([adder, adder.args_schema, clock])] == ["adder", "clock"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [(None, None), ("auto", None), ("none", None), ("any", "any"), ("required", "any"), (True, "any"),
     ("clock", "clock"), ({"type": "function", "function": {"name": "adder"}}, "adder")],
)
def test_forced_tool_name(choice: Any, expected: str | None) -> None:
    assert forced_tool_name(choice, SPECS) == expected
    assert forced_tool_name("any", SPECS[:1]) == "adder"  # "any" of one tool is that tool


def test_forced_tool_name_rejects_unknown() -> None:
    with pytest.raises(InvalidInputError, match="names no bound tool"):
        forced_tool_name("subtract", SPECS)


def test_parse_tool_calls() -> None:
    parsed = parse_tool_calls('Sure.\n<tool_call>{"name": "adder", "arguments": {"a": 1, "b": 2}}</tool_call>', SPECS)
    assert parsed.content == "Sure."
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("adder", {"a": 1, "b": 2})]
    assert parsed.tool_calls[0]["id"].startswith("call_")
    # Two calls; the second is cut before its closing brace and tag (a stop string or token limit).
    two = parse_tool_calls(
        '<tool_call>{"name": "clock", "arguments": {}}</tool_call><tool_call>{"name": "adder", "arguments": {"a": 1, "b": 5}',
        SPECS,
    )
    assert [(c["name"], c["args"]) for c in two.tool_calls] == [("clock", {}), ("adder", {"a": 1, "b": 5})]
    bare = parse_tool_calls('{"name": "clock", "arguments": {}} done', SPECS)
    assert [c["name"] for c in bare.tool_calls] == ["clock"] and bare.content == "done"
    unknown = parse_tool_calls('<tool_call>{"name": "subtract", "arguments": {}}</tool_call>', SPECS)
    assert unknown.tool_calls == [] and "unknown tool 'subtract'" in unknown.invalid_tool_calls[0]["error"]
    broken = parse_tool_calls("<tool_call>not json</tool_call>", SPECS)
    assert broken.invalid_tool_calls[0]["error"] == "not a JSON object"
    plain = parse_tool_calls("Just text, {not a call}.", SPECS)
    assert plain.content == "Just text, {not a call}." and not plain.tool_calls and not plain.invalid_tool_calls


def test_tool_history_rendering() -> None:
    messages: list[BaseMessage] = [
        HumanMessage("add 1 and 2"),
        AIMessage("", tool_calls=[{"name": "adder", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}]),
        ToolMessage("3", name="adder", tool_call_id="c1"),
        ToolMessage("bad", name="adder", tool_call_id="c2", status="error"),
    ]
    turns = to_chat_dicts(messages, native_tool_role=False)
    assert turns[1] == {"role": "assistant", "content": '<tool_call>\n{"name": "adder", "arguments": {"a": 1, "b": 2}}\n</tool_call>'}
    assert turns[2]["role"] == "user" and "Tool result of adder (call c1)" in turns[2]["content"]
    assert turns[3]["content"].endswith("Error: bad")
    native = to_chat_dicts(messages, native_tool_role=True)
    assert native[2] == {"role": "tool", "content": "3"}
    listed = to_chat_dicts(
        [HumanMessage("x"), AIMessage([{"type": "text", "text": "some text"}, {"type": "tool_use", "id": "c", "name": "adder", "input": {}}])],
        native_tool_role=False,
    )
    assert listed[1]["content"] == "some text"


def _result(text: str) -> GenerationResult:
    return GenerationResult(
        text=text, token_ids=[1] * len(text), confidences=[1.0] * len(text), prompt_tokens=5,
        generated_tokens=len(text), prefill_seconds=0.1, decode_seconds=0.2, early_exited=False,
        finish_reason="stop", plan=SkipPlan(),
    )


def test_fill_object_builds_valid_json_from_values() -> None:
    schema = {
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "ok": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
            "color": {"enum": ["red", "green"]},
            "size": {"type": "number"},
        }
    }
    script = iter(["Ann Lee", " 42 years", " lots"])
    choices = iter([1, 0, 1])  # ok: not null, then true; color: the second option
    seen: list[tuple[str, list[str]]] = []
    offered: list[list[str]] = []

    def fake(continuation: str, stops: Sequence[str], max_new: int) -> GenerationResult:
        seen.append((continuation, list(stops)))
        return _result(next(script))

    def choose(continuation: str, options: Sequence[str]) -> int:
        offered.append(list(options))
        return next(choices)

    out = fill_object(fake, "", schema, budget=200, choose=choose)
    assert out.value == {"name": "Ann Lee", "age": 42, "ok": True, "color": "green", "size": "lots"}
    assert json.loads(out.text) == out.value
    assert seen[0] == ('{"name": "', ['"'])
    assert seen[1][0] == '{"name": "Ann Lee", "age": ' and seen[1][1] == [",", "}", "\n"]
    assert offered == [["null", "true"], ["true", "false"], ['"red"', '"green"']]
    assert len(out.results) == 3 and not out.truncated


def test_forced_tool_call_on_tiny_model_is_well_formed(tiny_long: LoadedModel) -> None:
    llm = ChatLiteStage(model=tiny_long, max_tokens=24)  # the reply's budget: two numbers of at most 12 tokens
    message = llm.bind_tools([adder, clock], tool_choice="adder").invoke("add 2 and 3")
    # A random model writes nonsense values, but the call itself is always a well-formed call of `adder`.
    assert [c["name"] for c in message.tool_calls] == ["adder"]
    assert set(message.tool_calls[0]["args"]) == {"a", "b"}
    assert message.usage_metadata["output_tokens"] >= 2
    empty = llm.bind_tools([clock], tool_choice="any").invoke("time?")
    assert [(c["name"], c["args"]) for c in empty.tool_calls] == [("clock", {})]
    streamed = list(llm.bind_tools([adder], tool_choice="adder").stream("add 2 and 3"))
    assert len(streamed) == 1 and streamed[0].tool_call_chunks[0]["name"] == "adder"
    with pytest.raises(InvalidInputError, match="names no bound tool"):
        llm.bind_tools([adder], tool_choice="subtract")


class Person(BaseModel):
    """A person."""

    name: str = Field(description="the person's name")
    age: int = Field(description="age in years")


class ScriptedChat(ChatLiteStage):
    """Replies from a script instead of a model, to test the retry loop deterministically."""

    replies: list[str] = Field(default_factory=list)
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        assert "response_schema" in kwargs
        self.seen.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.replies.pop(0)))])


def test_structured_output_retries_with_the_error() -> None:
    chat = ScriptedChat(replies=['{"name": "Ann", "age": "old"}', '{"name": "Ann", "age": 31}'])
    person = chat.with_structured_output(Person).invoke("Ann is 31.")
    assert person == Person(name="Ann", age=31)
    assert len(chat.seen) == 2
    system = chat.seen[0][0].content
    assert "name (string): the person's name" in system and '"age": 0' in system
    feedback = chat.seen[1][-1].content
    assert "age" in feedback and "integer" in feedback and chat.seen[1][-2].content == '{"name": "Ann", "age": "old"}'


def test_structured_output_gives_up_clearly() -> None:
    chat = ScriptedChat(replies=["nope"] * 3, max_retries=2)
    with pytest.raises(StructuredOutputError, match=r"no valid Person after 3 attempt\(s\).*not a JSON object"):
        chat.with_structured_output(Person).invoke("Ann is 31.")
    raw = ScriptedChat(replies=["nope"]  * 3).with_structured_output(Person, include_raw=True).invoke("x")
    assert raw["parsed"] is None and isinstance(raw["parsing_error"], StructuredOutputError)
    assert raw["raw"].content == "nope"


def test_structured_output_dict_schemas() -> None:
    schema = {"title": "Pet", "type": "object", "properties": {"kind": {"type": "string"}}, "required": ["kind"]}
    assert ScriptedChat(replies=['{"kind": "cat"}']).with_structured_output(schema).invoke("x") == {"kind": "cat"}
    with pytest.raises(StructuredOutputError, match="missing the required key"):
        ScriptedChat(replies=["{}"] * 3).with_structured_output(schema).invoke("x")
    with pytest.raises(InvalidInputError, match="object schema"):
        ScriptedChat().with_structured_output({"title": "Word", "type": "string"})


async def test_structured_output_async_retries() -> None:
    chat = ScriptedChat(replies=["{}", '{"name": "Bo", "age": 2}'])
    assert await chat.with_structured_output(Person).ainvoke("x") == Person(name="Bo", age=2)


def test_structured_output_on_tiny_model_is_valid_json_or_clear_error(tiny_long: LoadedModel) -> None:
    class Note(BaseModel):
        title: str
        body: str

    llm = ChatLiteStage(model=tiny_long, max_tokens=64, max_retries=0)
    raw = llm.with_structured_output(Note, include_raw=True).invoke("write a note")
    # String fields always validate: the guided fill makes the JSON well-formed even from a random model.
    assert isinstance(raw["parsed"], Note) and raw["parsing_error"] is None
    assert json.loads(raw["raw"].content) == raw["parsed"].model_dump()


def test_guided_replies_keep_their_own_prompt_out_of_the_shared_prefix_table(tiny_long: LoadedModel) -> None:
    """A guided reply's prompt is its own: it must not take room in (or evict from) the model's shared table."""

    class Note(BaseModel):
        title: str

    llm = ChatLiteStage(model=tiny_long, max_tokens=4, max_retries=0)
    tiny_long.prefix_cache.clear()
    misses = tiny_long.prefix_cache.misses
    raw = llm.with_structured_output(Note, include_raw=True).invoke("write a note")
    forced = llm.bind_tools([adder], tool_choice="adder").invoke("add 2 and 3")
    assert isinstance(raw["parsed"], Note) and [c["name"] for c in forced.tool_calls] == ["adder"]
    assert len(tiny_long.prefix_cache) == 0 and tiny_long.prefix_cache.misses == misses
    assert raw["raw"].response_metadata["prefix_seconds"] == 0.0, "its own prompt is counted as prefill"


def test_auto_tool_mode_fills_a_call_the_model_opens(tiny_long: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    import litestage_chain.chat.chat_model as module

    # The engine is scripted: a random model would never choose to open a tool call.
    script = [("Let me add.", "Let me add.<tool_call>", "stop"), (" 2", " 2,", "stop"), ("3", "3}", "stop")]
    seen: list[tuple[str, tuple[str, ...]]] = []

    def scripted_generate(model, prompts, plan=None, config=None, on_token=None, shared_prefix=None,  # type: ignore[no-untyped-def]
                          prefix_cache=None):
        seen.append((prompts[0], config.stop))
        text, raw, reason = script.pop(0)
        return [
            GenerationResult(
                text=text, token_ids=model.encode(raw), confidences=[0.9] * len(raw), prompt_tokens=7,
                generated_tokens=len(raw), prefill_seconds=0.1, decode_seconds=0.1, early_exited=False,
                finish_reason=reason, plan=plan,
            )
        ]

    monkeypatch.setattr(module, "generate", scripted_generate)
    llm = ChatLiteStage(model=tiny_long, max_tokens=8)
    message = llm.bind_tools([adder]).invoke("add 2 and 3")
    assert message.content == "Let me add."
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("adder", {"a": 2, "b": 3})]
    assert "<tool_call>" in seen[0][1]  # the model's own decision ends the free generation
    assert seen[1][0].endswith('Let me add.<tool_call>\n{"name": "adder", "arguments": {"a": ')
    assert message.usage_metadata["output_tokens"] == len("Let me add.<tool_call>") + 3 + 2

    script[:] = [("Five.", "Five.", "eos")]
    plain = llm.bind_tools([adder]).invoke("what is 2 + 3?")
    assert plain.content == "Five." and plain.tool_calls == [] and plain.invalid_tool_calls == []

    # tool_choice="none": the tools are not offered at all, so even a model that writes a call's tag calls nothing
    script[:] = [("I would call <tool_call>", "I would call <tool_call>", "eos")]
    seen.clear()
    refused = llm.bind_tools([adder], tool_choice="none").invoke("add 2 and 3")
    assert refused.tool_calls == [] and refused.content == "I would call <tool_call>"
    assert "adder" not in seen[0][0] and "<tool_call>" not in seen[0][1], "no tool described, no tag to stop at"


def test_a_guided_reply_counts_computing_its_own_prompt_as_prefill() -> None:
    """Guided steps reuse the call's own prompt as their "shared prefix": computing it is this call's prefill."""
    from dataclasses import dataclass

    from litestage_chain.chat.chat_model import _combined

    @dataclass
    class Call:
        prompt: str
        plan: SkipPlan
        loaded: Any

    class Counter:
        def count_tokens(self, text: str) -> int:
            return len(text)

    first = _result("{").model_copy(update={"prefix_seconds": 2.0})
    combined = _combined(Call("prompt", SkipPlan(), Counter()), "{}", [first, _result("}")])  # type: ignore[arg-type]
    assert combined.prefill_seconds == pytest.approx(0.1 + 2.0 + 0.1) and combined.prefix_seconds == 0.0
