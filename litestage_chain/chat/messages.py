"""Convert LangChain messages into the `{"role", "content"}` dicts a tokenizer chat template renders.

Local chat templates only understand plain-text turns, so this is where LangChain's richer message types are
flattened: list content keeps its text blocks, an assistant's tool calls become `<tool_call>` JSON lines (the same
format the model is asked to produce, see `litestage_chain.chat.tools`), and tool results become turns the template can
show. Anything that cannot be shown faithfully (images, audio, unknown roles) is rejected with a clear error rather
than silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from litestage_chain.errors import InvalidInputError

_ROLE_ALIASES = {"human": "user", "ai": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
_SKIPPED_BLOCKS = {"tool_use", "tool_call", "function_call", "reasoning", "thinking"}


def content_text(content: str | list[Any], *, where: str) -> str:
    """The text of a message's content; list content keeps text blocks and rejects media it cannot show."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        if not isinstance(block, dict):
            raise InvalidInputError(f"{where}: unsupported content block {block!r}")
        kind = block.get("type")
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind in _SKIPPED_BLOCKS:
            continue  # tool calls are rendered from `AIMessage.tool_calls`; reasoning is not replayed
        else:
            raise InvalidInputError(f"{where}: content blocks of type {kind!r} are not supported (text only)")
    return "".join(parts)


def render_tool_call(name: str, args: dict[str, Any]) -> str:
    """One tool call in the wire format the model reads and writes."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"


ANSWER_FROM_RESULTS = "Use this result to answer my question in a sentence."


def describe_tool_call(name: str, args: dict[str, Any]) -> str:
    """An earlier tool call told in words (see `to_chat_dicts(calls_as_text=True)`)."""
    shown = ", ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in args.items())
    return f"I called the tool {name}({shown})."


def to_chat_dicts(
    messages: Sequence[BaseMessage],
    *,
    native_tool_role: bool,
    allow_system_only: bool = False,
    calls_as_text: bool = False,
) -> list[dict[str, str]]:
    """Convert messages to chat-template dicts.

    `native_tool_role`: the template knows a `tool` role; otherwise tool results are shown as user turns that say
    which call they answer (SmolLM2's template would render any role name, but the model never saw `tool`).
    Consecutive system messages are merged, and a system message that is not first is moved to the front, because
    most templates only honour one leading system turn. `allow_system_only` accepts messages with no other turn
    (token counting of a conversation's first messages); a prompt to generate from needs a user turn.
    `calls_as_text`: earlier tool calls are told in words instead of the wire format, and the results ask for the
    answer; for a reply that must answer from the results (a small model shown its own `<tool_call>` copies it).
    """
    if not messages:
        raise InvalidInputError("no messages: pass at least one message")
    system_parts: list[str] = []
    turns: list[dict[str, str]] = []
    for number, message in enumerate(messages):
        where = f"message {number} ({type(message).__name__})"
        if isinstance(message, SystemMessage):
            system_parts.append(content_text(message.content, where=where))
        elif isinstance(message, HumanMessage):
            turns.append({"role": "user", "content": content_text(message.content, where=where)})
        elif isinstance(message, AIMessage):
            text = content_text(message.content, where=where)
            render = describe_tool_call if calls_as_text else render_tool_call
            calls = [render(c["name"], c["args"]) for c in message.tool_calls]
            turns.append({"role": "assistant", "content": "\n".join(p for p in [text, *calls] if p)})
        elif isinstance(message, ToolMessage):
            text = content_text(message.content, where=where)
            if message.status == "error":
                text = f"Error: {text}" if not text.lower().startswith("error") else text
            if native_tool_role:
                turns.append({"role": "tool", "content": text})
            elif calls_as_text:
                label = f"The tool {message.name}" if message.name else "The tool"
                turns.append({"role": "user", "content": f"{label} returned: {text}\n{ANSWER_FROM_RESULTS}"})
            else:
                label = f"{message.name} " if message.name else ""
                turns.append(
                    {"role": "user", "content": f"Tool result of {label}(call {message.tool_call_id}):\n{text}"}
                )
        elif isinstance(message, ChatMessage):
            role = _ROLE_ALIASES.get(message.role.lower())
            if role is None:
                raise InvalidInputError(
                    f"{where}: unsupported chat role {message.role!r} (use system, user or assistant)"
                )
            text = content_text(message.content, where=where)
            if role == "system":
                system_parts.append(text)
            else:
                turns.append({"role": role, "content": text})
        else:
            raise InvalidInputError(
                f"{where}: unsupported message type {type(message).__name__}; use SystemMessage, HumanMessage, "
                f"AIMessage, ToolMessage or ChatMessage"
            )
    if not turns and not allow_system_only:
        raise InvalidInputError("the messages contain only system text: add a user message")
    if system_parts:
        turns.insert(0, {"role": "system", "content": "\n\n".join(p for p in system_parts if p)})
    return turns
