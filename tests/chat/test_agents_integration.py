"""The issue's LangChain patterns on the real default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import time
from typing import Optional

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage, trim_messages
from langchain_core.tools import tool
from pydantic import BaseModel

from litestage_chain.chat.chat_model import ChatLiteStage

pytestmark = pytest.mark.integration


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny in {city}."


@tool
def get_time(timezone: str) -> str:
    """Get the current time in a timezone."""
    return "12:00"


@pytest.fixture(scope="module")
def llm(real_model) -> ChatLiteStage:  # type: ignore[no-untyped-def]
    return ChatLiteStage(model=real_model, max_tokens=48)


def test_forced_call_picks_the_right_bound_tool(llm: ChatLiteStage) -> None:
    bound = llm.bind_tools([get_weather, get_time], tool_choice="any")
    weather = bound.invoke("What is the weather in Paris?")
    assert weather.invalid_tool_calls == []
    assert [(c["name"], c["args"]) for c in weather.tool_calls] == [("get_weather", {"city": "Paris"})]
    when = bound.invoke("What time is it in Tokyo?")
    assert [c["name"] for c in when.tool_calls] == ["get_time"]


def test_tool_loop_ends_with_an_answer(llm: ChatLiteStage) -> None:
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    bound = llm.bind_tools([get_weather, get_time])
    graph = StateGraph(MessagesState)
    graph.add_node("agent", lambda state: {"messages": [bound.invoke(state["messages"])]})
    graph.add_node("tools", ToolNode([get_weather, get_time]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    history = [
        HumanMessage("What is the weather in Paris?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1", "type": "tool_call"}]),
        ToolMessage("It is sunny in Paris.", name="get_weather", tool_call_id="c1"),
    ]
    messages = graph.compile().invoke({"messages": history}, {"recursion_limit": 4})["messages"]
    assert len(messages) == 4 and isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls
    assert "sunny" in messages[-1].text.lower()


def test_structured_lists_and_optional_fields(llm: ChatLiteStage) -> None:
    class Fruits(BaseModel):
        names: list[str]

    class Person(BaseModel):
        name: str
        age: int
        nickname: Optional[str] = None

    fruits = llm.with_structured_output(Fruits).invoke("Name three fruits.")
    assert 1 <= len(fruits.names) <= 16 and all(fruits.names)
    assert llm.with_structured_output(Person).invoke("Ann is 31 years old. She has no nickname.") == Person(
        name="Ann", age=31, nickname=None
    )


def test_token_counting_is_offline_and_fast(llm: ChatLiteStage) -> None:
    llm.loaded_model()
    history = [SystemMessage("You are brief.")]
    for turn in range(10):
        history += [HumanMessage(f"Tell me fact number {turn} about cats."), AIMessage("Cats sleep a lot. " * 5)]
    started = time.perf_counter()
    total = llm.get_num_tokens_from_messages(history)
    trimmed = trim_messages(history, max_tokens=total // 3, token_counter=llm, strategy="last", include_system=True)
    assert time.perf_counter() - started < 5.0
    assert total > 100 and 1 < len(trimmed) < len(history)
