"""Schema-guided JSON: write the JSON punctuation and keys ourselves, let the model fill in only the values.

A 135M model shown a JSON schema tends to copy the schema or ramble instead of answering in JSON. Filling an
object one value at a time fixes that without touching the decoder: the prompt is extended with `{"key": "` and
the model generates until the closing quote (or, for numbers and booleans, until `,` / `}`), then the next key is
appended, and so on. Each value costs one engine call; the keys, quotes and braces cost nothing and are always
well-formed. Values are parsed by type here; whether they satisfy the schema is left to the caller's validation
(which can re-ask with the error).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from litestage_chain.engine.generation import GenerationResult

# (continuation prompt, stop strings, max new tokens) -> result of one engine call
Generate = Callable[[str, Sequence[str], int], GenerationResult]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_SCALAR_STOPS = (",", "}", "\n")


@dataclass
class GuidedOutput:
    """The filled value, the exact text shown to the model, and every engine call it took."""

    value: Any
    text: str
    results: list[GenerationResult] = field(default_factory=list)


def value_type(spec: dict[str, Any]) -> str:
    """The JSON type a property schema asks for (`anyOf [X, null]` counts as X; unknown -> "any")."""
    if "enum" in spec:
        return "enum"
    kind = spec.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if kinds else None
    if kind is None:
        for option in spec.get("anyOf") or spec.get("oneOf") or []:
            if option.get("type") not in (None, "null"):
                return value_type(option)
    return str(kind) if kind else "any"


def fill_object(
    generate: Generate, prompt: str, schema: dict[str, Any], *, budget: int, opened: bool = False
) -> GuidedOutput:
    """Fill a JSON object with the schema's properties, in order, starting after `prompt`.

    `opened`: `prompt` already ends with the object's `{`. `budget` caps the tokens of each value.
    """
    properties: dict[str, Any] = schema.get("properties") or {}
    text = "" if opened else "{"
    value: dict[str, Any] = {}
    results: list[GenerationResult] = []
    for number, (key, spec) in enumerate(properties.items()):
        text += ("" if number == 0 else ", ") + json.dumps(key) + ": "
        filled = fill_value(generate, prompt + text, spec, budget=budget)
        value[key] = filled.value
        text += filled.text
        results.extend(filled.results)
    text += "}"
    return GuidedOutput(value=value, text=text, results=results)


def fill_value(generate: Generate, prompt: str, spec: dict[str, Any], *, budget: int) -> GuidedOutput:
    """Generate one value of the type `spec` asks for, continuing `prompt`."""
    kind = value_type(spec)
    if kind == "object" and spec.get("properties"):
        return fill_object(generate, prompt, spec, budget=budget)
    if kind in ("string", "enum"):
        result = generate(prompt + '"', ['"'], budget)
        raw = result.text.strip()
        if kind == "enum":
            raw = _closest(raw, [str(v) for v in spec["enum"]])
        return GuidedOutput(value=raw, text=json.dumps(raw, ensure_ascii=False), results=[result])
    result = generate(prompt, list(_SCALAR_STOPS), min(budget, 12) if kind != "any" else budget)
    value = _scalar(result.text.strip(), kind)
    # Unparseable text stays a JSON string, so the object is always valid JSON and validation names the field.
    return GuidedOutput(value=value, text=json.dumps(value, ensure_ascii=False), results=[result])


def _scalar(raw: str, kind: str) -> Any:
    """Parse a generated scalar by its schema type; unparseable text is returned as is, for validation to flag."""
    if kind in ("integer", "number"):
        match = _NUMBER.search(raw)
        if match:
            number = float(match.group())
            return int(number) if kind == "integer" and number.is_integer() else number
        return raw
    if kind == "boolean":
        lowered = raw.lower()
        if lowered.startswith(("true", "yes")):
            return True
        if lowered.startswith(("false", "no")):
            return False
        return raw
    if kind == "null":
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _closest(raw: str, options: list[str]) -> str:
    if raw in options:
        return raw
    match = difflib.get_close_matches(raw, options, n=1, cutoff=0.0)
    return match[0] if match else raw


def closest_name(raw: str, names: Sequence[str]) -> str | None:
    """The tool name a generated name most plausibly means (exact, then fuzzy); `None` if nothing is close."""
    if raw in names:
        return raw
    match = difflib.get_close_matches(raw, list(names), n=1, cutoff=0.6)
    return match[0] if match else None
