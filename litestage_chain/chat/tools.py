"""Tool calling for local models whose chat template may know nothing about tools.

Wire format (documented so prompts and parsers agree, and users can read a raw transcript):

* the tools are listed in the system prompt as one JSON object per line,
  `{"name": ..., "description": ..., "parameters": <JSON schema>}`;
* the model calls a tool by writing `<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>`
  (one block per call); a bare JSON object with `name` and `arguments` is accepted too, since small models often
  drop the tags.

When the tokenizer's chat template does render tools itself (it mentions `tools`), the tools go through the
template instead and only parsing is done here. A forced `tool_choice` is enforced by starting the assistant turn
with the call's opening text ("prefilling"), which is what makes a 135M model produce a well-formed call.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from litestage_chain.errors import InvalidInputError

ToolLike = dict[str, Any] | type | Callable[..., Any] | BaseTool
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolSpec:
    """One tool as the model sees it."""

    name: str
    description: str
    parameters: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def as_openai(self) -> dict[str, Any]:
        """The `{"type": "function", "function": {...}}` form HF chat templates take as `tools`."""
        return {"type": "function", "function": self.as_json()}


def tool_specs(tools: Sequence[ToolLike]) -> list[ToolSpec]:
    """Normalise LangChain tools, pydantic models, functions and JSON/OpenAI schemas to `ToolSpec`s (by name)."""
    specs = []
    for tool in tools:
        try:
            function = convert_to_openai_tool(tool)["function"]
        except Exception as exc:  # noqa: BLE001 - convert_to_openai_tool raises many types
            raise InvalidInputError(f"cannot use {tool!r} as a tool: {exc}") from exc
        specs.append(
            ToolSpec(
                name=function["name"],
                description=function.get("description", ""),
                parameters=function.get("parameters") or {"type": "object", "properties": {}},
            )
        )
    # The same tool given twice (e.g. a pydantic model and its JSON schema) is one tool to the model: keep the first.
    unique: dict[str, ToolSpec] = {}
    for spec in specs:
        unique.setdefault(spec.name, spec)
    return list(unique.values())


def openai_tools(tools: Sequence[ToolLike], *, strict: bool | None = None) -> list[dict[str, Any]]:
    """Tools in OpenAI's `{"type": "function", "function": {...}}` form, as `bind_tools` keeps them.

    Bound tools are plain dicts, as every LangChain provider keeps them: LangGraph's `create_react_agent` reads the
    names of prebound tools with `tool["function"]["name"]`-style lookups, and dicts survive copying and tracing.
    """
    converted = []
    for tool in tools:
        try:
            converted.append(convert_to_openai_tool(tool, strict=strict))
        except Exception as exc:  # noqa: BLE001 - convert_to_openai_tool raises many types
            raise InvalidInputError(f"cannot use {tool!r} as a tool: {exc}") from exc
    return converted


def strip_echoed_instructions(content: str, instructions: str) -> str:
    """`content` without the lines that repeat the tool instructions verbatim.

    Offered tools but left to decide, a small model sometimes answers by copying the instructions ("To call a tool,
    reply with exactly: ..."); those lines are the prompt, not an answer.
    """
    if not instructions or not content:
        return content
    taught = {line.strip() for line in instructions.splitlines() if line.strip()}
    kept = [line for line in content.splitlines() if line.strip() not in taught]
    return "\n".join(kept).strip()


def forced_tool_name(tool_choice: Any, specs: Sequence[ToolSpec]) -> str | None:
    """Which tool a `tool_choice` forces: a name, `"any"` (some tool) or `None` (the model decides).

    Accepts the values LangChain passes around: `None`/`"auto"`/`"none"`, `"any"`/`"required"`/`True`, a tool
    name, or `{"type": "function", "function": {"name": ...}}`. (`"none"` forces nothing here; the chat model
    does not offer the tools at all for it.)
    """
    names = [s.name for s in specs]
    if tool_choice in (None, False, "auto", "none"):
        return None
    if tool_choice in (True, "any", "required"):
        return names[0] if len(names) == 1 else "any"
    if isinstance(tool_choice, dict):
        tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if isinstance(tool_choice, str) and tool_choice in names:
        return tool_choice
    raise InvalidInputError(f"tool_choice {tool_choice!r} names no bound tool (bound: {', '.join(names)})")


def tools_system_prompt(specs: Sequence[ToolSpec], forced: str | None) -> str:
    """The system-prompt text that teaches the wire format (used when the template has no tool support)."""
    lines = [
        "You can call tools. The available tools, one JSON object per line:",
        *(json.dumps(s.as_json(), ensure_ascii=False) for s in specs),
        "",
        "To call a tool, reply with exactly:",
        '<tool_call>{"name": "<tool name>", "arguments": {<arguments as JSON>}}</tool_call>',
    ]
    if forced == "any":
        lines.append("You must call one of the tools.")
    elif forced is not None:
        lines.append(f"You must call the tool {forced}.")
    else:
        lines.append("When a tool can answer the request, call it; otherwise answer normally.")
    return "\n".join(lines)


TOOL_CALL_OPEN = "<tool_call>"


def call_prefix(forced: str | None, specs: Sequence[ToolSpec]) -> str:
    """Text the assistant turn starts with so that a forced call comes out well-formed (the arguments follow)."""
    if forced is None:
        return ""
    if forced == "any":
        return '<tool_call>\n{"name": "'
    return '<tool_call>\n{"name": "' + forced + '", "arguments": '


@dataclass(frozen=True)
class ParsedToolCalls:
    """The text left after removing tool calls, and the calls found (valid and invalid)."""

    content: str
    tool_calls: list[ToolCall]
    invalid_tool_calls: list[InvalidToolCall]


def parse_tool_calls(text: str, specs: Sequence[ToolSpec]) -> ParsedToolCalls:
    """Find `<tool_call>` blocks (or a bare JSON call) in model text.

    A call naming an unknown tool or with arguments that are not a JSON object is reported in
    `invalid_tool_calls` with the reason, never dropped silently.
    """
    names = {s.name for s in specs}
    blocks = [m.group(1) for m in _TOOL_CALL_BLOCK.finditer(text)]
    content = _TOOL_CALL_BLOCK.sub("", text).strip()
    if not blocks:
        bare = leading_json_object(text.strip())
        if bare is not None and isinstance(bare[0], dict) and "name" in bare[0]:
            blocks = [bare[1]]
            content = text.strip()[len(bare[1]) :].strip()
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in blocks:
        call_id = "call_" + uuid.uuid4().hex[:12]
        parsed = leading_json_object(raw)
        if parsed is None or not isinstance(parsed[0], dict):
            invalid.append(InvalidToolCall(name=None, args=raw, id=call_id, error="not a JSON object", type="invalid_tool_call"))
            continue
        obj = parsed[0]
        name = obj.get("name")
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if name not in names:
            invalid.append(
                InvalidToolCall(
                    name=str(name) if name is not None else None,
                    args=json.dumps(args) if not isinstance(args, str) else args,
                    id=call_id,
                    error=f"unknown tool {name!r} (bound: {', '.join(sorted(names))})",
                    type="invalid_tool_call",
                )
            )
        elif not isinstance(args, dict):
            invalid.append(
                InvalidToolCall(name=name, args=str(args), id=call_id, error="arguments are not a JSON object", type="invalid_tool_call")
            )
        else:
            calls.append(ToolCall(name=name, args=args, id=call_id, type="tool_call"))
    return ParsedToolCalls(content=content, tool_calls=calls, invalid_tool_calls=invalid)


def leading_json_object(text: str) -> tuple[Any, str] | None:
    """Decode the JSON value at the start of `text` (after whitespace), repairing missing closing braces.

    Returns the value and the exact source text it came from; `None` if no JSON object starts there.
    """
    start = text.find("{")
    if start < 0 or text[:start].strip():
        return None
    decoder = json.JSONDecoder()
    try:
        value, end = decoder.raw_decode(text, start)
        return value, text[start:end]
    except json.JSONDecodeError:
        pass
    # Small models often stop before the final braces (or a stop string cut them): close what is open.
    candidate = text[start:].rstrip()
    for extra in range(1, 4):
        try:
            value, _ = decoder.raw_decode(candidate + "}" * extra)
            return value, candidate
        except json.JSONDecodeError:
            continue
    return None
