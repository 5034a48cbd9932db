"""Agent builders and tool loops from LangChain's and LangGraph's docs, with ChatLiteStage as the model.

Tiny random models prove the mechanics; where the model would have to choose (call a tool or answer), the engine is
scripted so that the path under test is taken deterministically.
"""

from __future__ import annotations


import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import BaseModel

from sample_tools import adder, clock

from litestage_chain import LoadedModel
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.engine.generation import GenerationResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")




class Sum(BaseModel):
    """The result of an addition."""

    total: str


class ScriptedEngine:
    """Stands in for `generate`: each call returns the next scripted text, and records the prompt and stops."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, script: list[str]) -> None:
        import litestage_chain.chat.chat_model as module

        self.script = list(script)
        self.prompts: list[str] = []
        self.stops: list[tuple[str, ...]] = []
        monkeypatch.setattr(module, "generate", self)

    def __call__(self, model, prompts, plan=None, config=None, on_token=None, shared_prefix=None,  # type: ignore[no-untyped-def]
                 prefix_cache=None) -> list[GenerationResult]:
        self.prompts.append(prompts[0])
        self.stops.append(tuple(config.stop))
        text = self.script.pop(0)
        raw = text
        reason = "eos"
        for stop in config.stop:
            if stop in text:
                text, raw, reason = text[: text.index(stop)], text[: text.index(stop) + len(stop)], "stop"
                break
        ids = model.encode(raw)
        return [GenerationResult(
            text=text, token_ids=ids, confidences=[0.9] * len(ids), prompt_tokens=7, generated_tokens=len(ids),
            prefill_seconds=0.1, decode_seconds=0.1, early_exited=False, finish_reason=reason, plan=plan,
        )]


def test_bind_tools_keeps_openai_dicts_and_accepts_provider_options(tiny_long: LoadedModel) -> None:
    llm = ChatLiteStage(model=tiny_long, max_tokens=24)
    bound = llm.bind_tools([adder, clock], tool_choice="adder", parallel_tool_calls=False, strict=True)
    tools = bound.kwargs["tools"]  # type: ignore[attr-defined]
    assert [t["type"] for t in tools] == ["function", "function"]
    assert [t["function"]["name"] for t in tools] == ["adder", "clock"] and tools[0]["function"]["strict"] is True
    message = bound.invoke("add 2 and 3")
    assert [c["name"] for c in message.tool_calls] == ["adder"]
    assert message.response_metadata["finish_reason"] == "tool_calls"


def test_forced_any_names_only_bound_tools(tiny_long: LoadedModel) -> None:
    """Before, the name was generated freely: a random (or confused) model wrote names of no bound tool."""
    llm = ChatLiteStage(model=tiny_long, max_tokens=24).bind_tools([adder, clock], tool_choice="any")
    for prompt in ("add 2 and 3", "what time is it?", "Paris", "hello there"):
        message = llm.invoke(prompt)
        assert message.invalid_tool_calls == []
        assert len(message.tool_calls) == 1 and message.tool_calls[0]["name"] in ("adder", "clock")


def test_after_a_tool_result_the_model_answers(tiny_long: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ScriptedEngine(monkeypatch, ["The sum is 5."])
    llm = ChatLiteStage(model=tiny_long, max_tokens=16).bind_tools([adder])
    history = [
        HumanMessage("add 2 and 3"),
        AIMessage("", tool_calls=[{"name": "adder", "args": {"a": 2, "b": 3}, "id": "c1", "type": "tool_call"}]),
        ToolMessage("5", name="adder", tool_call_id="c1"),
    ]
    message = llm.invoke(history)
    assert message.content == "The sum is 5." and message.tool_calls == []
    assert "<tool_call>" not in engine.stops[0], "no tool is offered for the answer"
    assert "You can call tools" not in engine.prompts[0] and "The tool adder returned: 5" in engine.prompts[0]
    assert "I called the tool adder(a=2, b=3)." in engine.prompts[0]


def test_echoed_tool_instructions_are_not_content(tiny_long: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    ScriptedEngine(monkeypatch, ["To call a tool, reply with exactly:\nIt is noon."])
    message = ChatLiteStage(model=tiny_long, max_tokens=16).bind_tools([clock]).invoke("time?")
    assert message.content == "It is noon."


def test_tool_node_loop_ends(tiny_long: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    # turn 1: the model opens a call, then writes its two arguments; turn 2 (after the result): it answers
    engine = ScriptedEngine(monkeypatch, ["<tool_call>", " 2,", " 3}", "It is 5."])
    llm = ChatLiteStage(model=tiny_long, max_tokens=16).bind_tools([adder])
    graph = StateGraph(MessagesState)
    graph.add_node("agent", lambda state: {"messages": [llm.invoke(state["messages"])]})
    graph.add_node("tools", ToolNode([adder]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    messages = graph.compile().invoke({"messages": [HumanMessage("add 2 and 3")]}, {"recursion_limit": 6})["messages"]
    assert [type(m).__name__ for m in messages] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert messages[1].tool_calls[0]["args"] == {"a": 2, "b": 3} and messages[2].content == "5"
    assert messages[-1].content == "It is 5." and engine.script == []


def test_create_react_agent_with_prebound_tools(tiny_long: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, LangGraph raised `'StructuredTool' object has no attribute 'get'` on prebound tools."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_react_agent is deprecated in favour of create_agent
        from langgraph.prebuilt import create_react_agent

    llm = ChatLiteStage(model=tiny_long, max_tokens=16)
    create_react_agent(llm.bind_tools([adder, clock], tool_choice="any"), [adder, clock])  # builds
    ScriptedEngine(monkeypatch, ["<tool_call>", " 2,", " 3}", "5."])
    agent = create_react_agent(llm.bind_tools([adder]), [adder])
    messages = agent.invoke({"messages": [("user", "add 2 and 3")]}, {"recursion_limit": 6})["messages"]
    assert messages[-1].content == "5." and messages[2].content == "5"


def test_create_agent_with_and_without_response_format(tiny_long: LoadedModel) -> None:
    """Before, `response_format` (sent because the profile declares structured output) was an unknown argument."""
    from langchain.agents import create_agent

    llm = ChatLiteStage(model=tiny_long, max_tokens=24)
    plain = create_agent(llm, [adder]).invoke({"messages": [("user", "add 2 and 3")]}, {"recursion_limit": 6})
    assert isinstance(plain["messages"][-1], AIMessage) and not plain["messages"][-1].tool_calls
    structured = create_agent(llm, [adder], response_format=Sum).invoke(
        {"messages": [("user", "add 2 and 3")]}, {"recursion_limit": 6}
    )
    assert isinstance(structured["structured_response"], Sum)


def test_response_format_with_tools_calls_or_answers_in_json(tiny_long: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "Sum", "schema": Sum.model_json_schema()}}
    llm = ChatLiteStage(model=tiny_long, max_tokens=24).bind_tools([adder], response_format=schema)
    engine = ScriptedEngine(monkeypatch, ["<tool_call>", " 2,", " 3}"])
    called = llm.invoke("add 2 and 3")
    assert called.tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert "{" in engine.stops[0] and "<tool_call>" in engine.stops[0]
    ScriptedEngine(monkeypatch, ["Sure: {", "five"])
    answered = llm.invoke("add 2 and 3")
    assert answered.tool_calls == [] and Sum.model_validate_json(answered.content) == Sum(total="five")
    with pytest.raises(Exception, match="json_object"):
        ChatLiteStage(model=tiny_long).invoke("x", response_format={"type": "json_object"})


