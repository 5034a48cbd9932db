"""A conversation as the model reads it: chat-template turns plus the tool instructions, in one place.

The chat model renders its prompts from this and token counting (`get_num_tokens_from_messages`) counts the very
same text, so a `trim_messages(token_counter=llm)` budget means what the model will actually be fed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from langchain_core.messages import BaseMessage

from litestage_chain.chat.messages import to_chat_dicts
from litestage_chain.chat.tools import ToolSpec, tools_system_prompt

if TYPE_CHECKING:
    from litestage_chain.engine.loading import LoadedModel


@dataclass(frozen=True)
class Conversation:
    """Template turns, the tool instructions added to the system turn ("" if none) and the template's tools."""

    chat: list[dict[str, str]]
    instructions: str
    template_tools: Optional[list[dict[str, Any]]]


def template_has_tools(loaded: "LoadedModel") -> bool:
    """Whether the tokenizer's chat template renders a `tools` list itself."""
    template = getattr(loaded.tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and "tools" in template


def build_conversation(
    loaded: "LoadedModel",
    messages: Sequence[BaseMessage],
    specs: Sequence[ToolSpec] = (),
    forced: Optional[str] = None,
    *,
    allow_system_only: bool = False,
    answering: bool = False,
) -> Conversation:
    """Turn messages (and the tools offered) into what the chat template renders.

    Tools go through the template when it knows them, else as instructions appended to the system turn.
    `allow_system_only`: accept messages with no user turn (counting tokens of a conversation's beginning).
    `answering`: the reply answers from tool results (earlier calls are told in words, see `to_chat_dicts`).
    """
    native = template_has_tools(loaded)
    chat = to_chat_dicts(
        messages, native_tool_role=native, allow_system_only=allow_system_only, calls_as_text=answering
    )
    instructions = ""
    if specs and not native:
        instructions = tools_system_prompt(specs, forced)
        if chat and chat[0]["role"] == "system":
            chat[0] = {"role": "system", "content": chat[0]["content"] + "\n\n" + instructions}
        else:
            chat.insert(0, {"role": "system", "content": instructions})
    template_tools = [s.as_openai() for s in specs] if specs and native else None
    return Conversation(chat=chat, instructions=instructions, template_tools=template_tools)


def count_message_tokens(
    loaded: "LoadedModel", messages: Sequence[BaseMessage], specs: Sequence[ToolSpec] = ()
) -> int:
    """Tokens of `messages` rendered by the model's own chat template (tools included), without a reply turn."""
    if not messages:
        return 0
    conversation = build_conversation(loaded, messages, specs, allow_system_only=True)
    text = loaded.render_chat(conversation.chat, tools=conversation.template_tools, add_generation_prompt=False)
    return loaded.count_tokens(text)
