"""A LangGraph graph whose nodes are the three reasoning stages and the answer step (as the README shows)."""

from __future__ import annotations

from typing import Any, TypedDict

from litestage_chain.reasoning.chain import ReasoningResult, answer_node, stage_node
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.reasoning.stage_output import StageOutput


class GraphState(TypedDict, total=False):
    question: dict
    recall: StageOutput
    analysis: StageOutput
    summary: StageOutput
    result: ReasoningResult


def run_stage_graph(llm: ChatLiteStage, question: dict, budgets: dict[str, int], **options: Any) -> ReasoningResult:
    """Build the graph (each stage node bound to its budget, `options` passed to every node) and run it once."""
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(GraphState)
    previous = START
    for stage in ("recall", "analysis", "summary"):
        node = stage_node(llm, stage, max_tokens=budgets[stage], **options)
        graph.add_node(stage, lambda state, node=node, stage=stage: {stage: node.invoke(state)})
        graph.add_edge(previous, stage)
        previous = stage
    answer = answer_node(llm, fallback=False, **options)
    graph.add_node("answer", lambda state: {"result": answer.invoke(state)})
    graph.add_edge("summary", "answer")
    graph.add_edge("answer", END)
    return graph.compile().invoke({"question": question})["result"]
