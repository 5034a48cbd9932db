"""Two small tools the tool-calling tests bind."""

from __future__ import annotations

from langchain_core.tools import tool


@tool
def adder(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def clock() -> str:
    """Tell the time."""
    return "noon"
