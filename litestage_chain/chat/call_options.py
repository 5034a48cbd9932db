"""The names LangChain users pass for per-call options, mapped to this model's own, and provider conventions.

People move code between ChatOllama, ChatHuggingFace and OpenAI-style models, so the common spellings of the
token budget are accepted (`max_new_tokens` from transformers, `num_predict` from Ollama, `max_completion_tokens`
from OpenAI) rather than rejected as typos. `response_format` is OpenAI's structured-output request, which
`langchain.agents.create_agent` sends to models whose profile declares native structured output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.utils.function_calling import convert_to_json_schema

from litestage_chain.errors import InvalidInputError

MAX_TOKENS_ALIASES = ("max_new_tokens", "num_predict", "max_completion_tokens")
"""Other names of `max_tokens` accepted per call and at construction."""
ALIASES = {name: "max_tokens" for name in MAX_TOKENS_ALIASES}

FINISH_REASONS = {"eos": "stop", "stop": "stop", "early_exit": "stop", "length": "length"}
"""Engine finish reasons -> the values LangChain providers report (`stop`, `length`; `tool_calls` is set by the
chat model). The engine's own reason stays in `response_metadata["engine_finish_reason"]`."""


def canonical_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` with aliases renamed to this model's names; two spellings of one option must agree."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        name = ALIASES.get(key, key)
        if name in out and out[name] != value:
            raise InvalidInputError(f"{key}={value!r} conflicts with {name}={out[name]!r}: pass one of them")
        out[name] = value
    return out


def response_format_schema(value: Any) -> dict[str, Any] | None:
    """The JSON schema an OpenAI-style `response_format` asks for (`None` for plain text).

    Accepts `{"type": "json_schema", "json_schema": {"schema": {...}}}`, `{"type": "text"}`, and a pydantic model,
    TypedDict or JSON schema dict given directly.
    """
    if value is None:
        return None
    if isinstance(value, Mapping) and value.get("type") == "text":
        return None
    if isinstance(value, Mapping) and value.get("type") == "json_schema":
        spec = value.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise InvalidInputError("response_format of type json_schema needs json_schema.schema (a JSON schema)")
        return dict(schema)
    if isinstance(value, Mapping) and value.get("type") == "json_object":
        raise InvalidInputError(
            "response_format {'type': 'json_object'} gives no schema to fill; pass a json_schema response_format "
            "or use with_structured_output(schema)"
        )
    try:
        return convert_to_json_schema(value)
    except Exception as exc:  # noqa: BLE001 - the converter raises several types for unusable schemas
        raise InvalidInputError(f"cannot use {value!r} as a response_format: {exc}") from exc
