"""Structured output for a local model with no JSON mode: schema in the prompt, parse, re-ask on failure.

The keys are listed in the prompt and the reply is filled value by value (`litestage_chain.chat.guided`), so the JSON
is always well-formed; when a value does not validate (a word where a number belongs), the error is shown to the
model and it tries again (tenacity drives the attempts). After the last attempt `StructuredOutputError` says what was wrong with the
last reply, instead of returning something half-parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from litestage_chain.chat.guided import value_type
from litestage_chain.chat.tools import leading_json_object
from litestage_chain.errors import InvalidInputError, LiteStageError

if TYPE_CHECKING:
    from litestage_chain.chat.chat_model import ChatLiteStage


class StructuredOutputError(LiteStageError, OutputParserException):
    """The model did not produce a reply matching the schema within the allowed attempts."""


def structured_output_runnable(
    model: ChatLiteStage, schema: dict[str, Any] | type, *, include_raw: bool = False, method: str = "json_schema"
) -> Runnable[Any, Any]:
    """Build the runnable behind `ChatLiteStage.with_structured_output` (see the module docstring)."""
    try:
        json_schema = convert_to_json_schema(schema)
    except Exception as exc:  # noqa: BLE001 - the converter raises several types for unusable schemas
        raise InvalidInputError(f"cannot use {schema!r} as an output schema: {exc}") from exc
    properties = list((json_schema.get("properties") or {}).keys())
    if json_schema.get("type", "object") != "object" or not properties:
        raise InvalidInputError("structured output needs an object schema with at least one property")
    validate = _validator(schema, json_schema)
    bound = model.bind(
        response_schema=json_schema,
        ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
    )
    instruction = schema_instruction(json_schema)
    attempts = model.max_retries + 1
    name = str(json_schema.get("title") or "output")

    def step(raw: AIMessage) -> Any:
        return validate(parse_json_reply(raw.text))

    def invoke(value: Any, config: RunnableConfig) -> Any:
        messages = _with_instruction(model._convert_input(value).to_messages(), instruction)
        raw: AIMessage | None = None
        error: Exception | None = None
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(attempts), retry=retry_if_exception_type(OutputParserException), reraise=True
            ):
                with attempt:
                    raw = bound.invoke(messages, config)
                    try:
                        return _result(raw, step(raw), None, include_raw)
                    except OutputParserException as exc:
                        messages = [*messages, raw, HumanMessage(_feedback(exc))]
                        raise
        except OutputParserException as exc:
            error = exc
        return _give_up(name, attempts, raw, error, include_raw)

    async def ainvoke(value: Any, config: RunnableConfig) -> Any:
        messages = _with_instruction(model._convert_input(value).to_messages(), instruction)
        raw: AIMessage | None = None
        error: Exception | None = None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts), retry=retry_if_exception_type(OutputParserException), reraise=True
            ):
                with attempt:
                    raw = await bound.ainvoke(messages, config)
                    try:
                        return _result(raw, step(raw), None, include_raw)
                    except OutputParserException as exc:
                        messages = [*messages, raw, HumanMessage(_feedback(exc))]
                        raise
        except OutputParserException as exc:
            error = exc
        return _give_up(name, attempts, raw, error, include_raw)

    return RunnableLambda(invoke, afunc=ainvoke, name=f"ChatLiteStageStructuredOutput[{name}]")


def schema_instruction(json_schema: dict[str, Any]) -> str:
    """The system text describing the expected reply: one line per key, then a skeleton with every key.

    Deliberately not the raw JSON schema: a small model reads "setup (string): question to set up a joke" far
    better than nested schema JSON, and tends to copy the latter instead of answering.
    """
    properties = json_schema.get("properties") or {}
    required = set(json_schema.get("required") or [])
    lines = []
    for key, spec in properties.items():
        description = spec.get("description") or spec.get("title") or ""
        optional = "" if key in required else ", optional"
        lines.append(f"- {key} ({value_type(spec)}{optional}){': ' + description if description else ''}")
    skeleton = "{" + ", ".join(f'"{key}": {_placeholder(spec)}' for key, spec in properties.items()) + "}"
    purpose = json_schema.get("description") or json_schema.get("title") or "the answer"
    return (
        f"Reply with one JSON object: {purpose}. Its keys:\n" + "\n".join(lines) + f"\nFormat: {skeleton}"
    )


def parse_json_reply(text: str) -> Any:
    """The JSON object at the start of a reply (code fences and missing closing braces tolerated)."""
    cleaned = text.strip()
    if cleaned.startswith("```"):
        cleaned = cleaned.strip("`")
        cleaned = cleaned[cleaned.find("{") :] if "{" in cleaned else cleaned
    parsed = leading_json_object(cleaned)
    if parsed is None:
        raise OutputParserException(f"the reply is not a JSON object: {text[:200]!r}", llm_output=text)
    return parsed[0]


def _validator(schema: dict[str, Any] | type, json_schema: dict[str, Any]) -> Callable[[Any], Any]:
    """How a parsed object becomes the final output: pydantic validation for models, key checks for dicts."""
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        is_v2 = issubclass(schema, BaseModel)

        def validate_model(obj: Any) -> Any:
            try:
                return schema.model_validate(obj) if is_v2 else schema.parse_obj(obj)  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - pydantic v1 and v2 raise different ValidationError types
                raise OutputParserException(f"the JSON does not match the schema: {exc}") from exc

        return validate_model
    required = list(json_schema.get("required") or [])

    def validate_dict(obj: Any) -> Any:
        if not isinstance(obj, dict):
            raise OutputParserException(f"expected a JSON object, got {type(obj).__name__}")
        missing = [key for key in required if key not in obj]
        if missing:
            raise OutputParserException(f"the JSON object is missing the required key(s) {missing}")
        return obj

    return validate_dict


def _placeholder(spec: dict[str, Any]) -> str:
    return {"integer": "0", "number": "0.0", "boolean": "true", "array": "[]", "object": "{}"}.get(
        value_type(spec), '"..."'
    )


def _with_instruction(messages: list[BaseMessage], instruction: str) -> list[BaseMessage]:
    if messages and isinstance(messages[0], SystemMessage) and isinstance(messages[0].content, str):
        return [SystemMessage(messages[0].content + "\n\n" + instruction), *messages[1:]]
    return [SystemMessage(instruction), *messages]


def _feedback(error: Exception) -> str:
    return f"That reply could not be used: {error}\nReply again with only the corrected JSON object."


def _result(raw: AIMessage, parsed: Any, error: Exception | None, include_raw: bool) -> Any:
    return {"raw": raw, "parsed": parsed, "parsing_error": error} if include_raw else parsed


def _give_up(name: str, attempts: int, raw: AIMessage | None, error: Exception | None, include_raw: bool) -> Any:
    failure = StructuredOutputError(
        f"no valid {name} after {attempts} attempt(s); last error: {error}; last reply: "
        f"{(raw.text if raw is not None else '')[:300]!r}",
        llm_output=raw.text if raw is not None else None,
    )
    if include_raw:
        return {"raw": raw, "parsed": None, "parsing_error": failure}
    raise failure
