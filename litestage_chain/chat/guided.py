"""Schema-guided JSON: write the JSON punctuation and keys ourselves, let the model fill in only the values.

A 135M model shown a JSON schema tends to copy the schema or ramble instead of answering in JSON. Filling an
object one value at a time fixes that without touching the decoder: the prompt is extended with `{"key": "` and
the model generates until the closing quote (or, for numbers and booleans, until `,` / `}`), then the next key is
appended, and so on. The keys, quotes, brackets and braces cost nothing and are always well-formed.

Closed choices are not generated but chosen (`Choose`, by the model's likelihood of each option, see
`litestage_chain.choice`): an enum value, whether an array goes on (`,`) or ends (`]`), whether a nullable value
is `null`. Arrays of scalars and of objects, nested objects, enums and nullable (`Optional`) values are filled;
`$ref`s are resolved first.

`budget` caps the tokens generated for the whole reply, not each value: a value may use what is left of it minus one
token for each key still to come (so a long first value cannot leave the later ones empty); once it is spent, the
remaining keys are left out and the output is marked `truncated` (the caller's validation then names the missing
keys). Values are parsed by type here; whether they satisfy the schema is left to the caller's
validation (which can re-ask with the error).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from langchain_core.utils.json_schema import dereference_refs

from litestage_chain.engine.generation import GenerationResult

# (continuation prompt, stop strings, max new tokens) -> result of one engine call
Generate = Callable[[str, Sequence[str], int], GenerationResult]
# (continuation prompt, options) -> index of the option the model prefers
Choose = Callable[[str, Sequence[str]], int]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_SCALAR_STOPS = (",", "}", "\n")
_ITEM_STOPS = (",", "]", "}", "\n")
_SCALAR_TOKENS = 12  # a number or a boolean never needs more
MAX_ITEMS = 16
"""Most items an array gets when its schema sets no `maxItems` (a small model rarely knows when to stop)."""
_OPENERS = {"string": '"', "object": "{", "array": "[", "boolean": "true"}


@dataclass
class GuidedOutput:
    """The filled value, the exact text shown to the model, every engine call it took, and whether the budget ran
    out before the value was complete."""

    value: Any
    text: str
    results: list[GenerationResult] = field(default_factory=list)
    truncated: bool = False


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
            if option.get("type") not in (None, "null") or "enum" in option or "properties" in option:
                return value_type(option)
        if spec.get("properties"):
            return "object"
        if len(spec.get("allOf") or []) == 1:
            return value_type(spec["allOf"][0])
    return str(kind) if kind else "any"


def is_nullable(spec: dict[str, Any]) -> bool:
    """Whether `null` is a valid value (`Optional[X]` in pydantic: `anyOf [X, null]`, or a type list with null)."""
    kind = spec.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(option.get("type") == "null" for option in spec.get("anyOf") or spec.get("oneOf") or [])


def concrete(spec: dict[str, Any]) -> dict[str, Any]:
    """The non-null schema a property stands for (`anyOf [X, null]` -> X, a lone `allOf [X]` -> X), keeping its
    description."""
    for key in ("anyOf", "oneOf"):
        options = [o for o in spec.get(key) or [] if o.get("type") != "null"]
        if options:
            return {**concrete(options[0]), **{k: v for k, v in spec.items() if k in ("description", "title")}}
    if len(spec.get("allOf") or []) == 1:
        return {**concrete(spec["allOf"][0]), **{k: v for k, v in spec.items() if k != "allOf"}}
    if isinstance(spec.get("type"), list):
        kinds = [k for k in spec["type"] if k != "null"]
        return {**spec, "type": kinds[0] if kinds else "null"}
    return spec


def resolve_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with local `$ref`s (`#/$defs/...`) replaced by what they point to."""
    return dereference_refs(schema) if "$ref" in json.dumps(schema) else schema


class _Filler:
    """One reply's filling state: the engine, the chooser and the tokens left of the reply's budget."""

    def __init__(self, generate: Generate, choose: Optional[Choose], budget: int) -> None:
        self.generate = generate
        self.choose = choose or _choose_by_generation(generate)
        self.remaining = budget
        self.reserved = 0  # one token held back for every value still to come, so a long value cannot starve them
        self.results: list[GenerationResult] = []

    def run(self, prompt: str, stops: Sequence[str], cap: Optional[int] = None) -> GenerationResult:
        available = max(1, self.remaining - self.reserved)
        limit = available if cap is None else min(cap, available)
        result = self.generate(prompt, stops, max(1, limit))
        self.results.append(result)
        self.remaining -= result.generated_tokens
        return result

    @property
    def spent(self) -> bool:
        return self.remaining <= 0

    def fill_object(self, prompt: str, schema: dict[str, Any], opened: bool) -> tuple[Any, str, bool]:
        properties: dict[str, Any] = schema.get("properties") or {}
        text = "" if opened else "{"
        value: dict[str, Any] = {}
        for number, (key, spec) in enumerate(properties.items()):
            if self.spent:
                return value, text + "}", True
            text += ("" if number == 0 else ", ") + json.dumps(key) + ": "
            later = len(properties) - number - 1
            self.reserved += later
            item, item_text, cut = self.fill_value(prompt + text, spec)
            self.reserved -= later
            value[key] = item
            text += item_text
            if cut:
                return value, text + "}", True
        return value, text + "}", False

    def fill_value(self, prompt: str, spec: dict[str, Any]) -> tuple[Any, str, bool]:
        base = concrete(spec)
        kind = value_type(base)
        if is_nullable(spec) and kind in _OPENERS | {"enum": ""}:
            opener = _OPENERS.get(kind) or json.dumps((base.get("enum") or [""])[0])
            if self.choose(prompt, ["null", opener]) == 0:
                return None, "null", False
        if kind == "object" and base.get("properties"):
            return self.fill_object(prompt, base, opened=False)
        if kind == "array":
            return self.fill_array(prompt, base)
        if kind == "enum":
            options = list(base["enum"])
            chosen = options[self.choose(prompt, [json.dumps(o, ensure_ascii=False) for o in options])]
            return chosen, json.dumps(chosen, ensure_ascii=False), False
        if kind == "string":
            result = self.run(prompt + '"', ['"'])
            raw = result.text.strip()
            return raw, json.dumps(raw, ensure_ascii=False), result.finish_reason == "length" and self.spent
        if kind == "boolean":
            chosen = self.choose(prompt, ["true", "false"]) == 0
            return chosen, json.dumps(chosen), False
        result = self.run(prompt, _SCALAR_STOPS, _SCALAR_TOKENS if kind != "any" else None)
        value = _scalar(result.text.strip(), kind, nullable=is_nullable(spec))
        # Unparseable text stays a JSON string, so the object is always valid JSON and validation names the field.
        return value, json.dumps(value, ensure_ascii=False), False

    def fill_array(self, prompt: str, spec: dict[str, Any]) -> tuple[Any, str, bool]:
        items_spec = concrete(spec.get("items") or {})
        kind = value_type(items_spec)
        least = int(spec.get("minItems") or 0)
        most = int(spec.get("maxItems") or MAX_ITEMS)
        text = "["
        values: list[Any] = []
        while len(values) < most and not self.spent:
            if len(values) >= least:
                opener = "" if not values else ", "
                first = _OPENERS.get(kind) or json.dumps((items_spec.get("enum") or [None])[0])
                if kind in ("integer", "number", "any"):
                    first = "1" if kind != "any" else '"'
                if self.choose(prompt + text, ["]", opener + first]) == 0:
                    break
            if values:
                text += ", "
            item, item_text, cut = self.fill_value(prompt + text, items_spec)
            values.append(item)
            text += item_text
            if cut:
                return values, text + "]", True
        return values, text + "]", self.spent and len(values) < least


def fill_object(
    generate: Generate,
    prompt: str,
    schema: dict[str, Any],
    *,
    budget: int,
    opened: bool = False,
    choose: Optional[Choose] = None,
) -> GuidedOutput:
    """Fill a JSON object with the schema's properties, in order, starting after `prompt`.

    `opened`: `prompt` already ends with the object's `{`. `budget` caps the tokens generated for the whole object.
    `choose` picks among closed options (enum values, `,`/`]`, `null`); without it the model's free text picks.
    """
    filler = _Filler(generate, choose, budget)
    value, text, cut = filler.fill_object(prompt, resolve_refs(schema), opened)
    return GuidedOutput(value=value, text=text, results=filler.results, truncated=cut)


def fill_value(
    generate: Generate, prompt: str, spec: dict[str, Any], *, budget: int, choose: Optional[Choose] = None
) -> GuidedOutput:
    """Generate one value of the type `spec` asks for, continuing `prompt`."""
    filler = _Filler(generate, choose, budget)
    value, text, cut = filler.fill_value(prompt, resolve_refs(spec))
    return GuidedOutput(value=value, text=text, results=filler.results, truncated=cut)


def _choose_by_generation(generate: Generate) -> Choose:
    """A chooser for engines that cannot score options: let the model write a few tokens, take the closest option."""

    def choose(prompt: str, options: Sequence[str]) -> int:
        written = generate(prompt, list(_ITEM_STOPS), 8).text.strip()
        plain = [o.strip().strip('"') for o in options]
        for index, option in enumerate(options):
            if option.strip() and written.startswith(option.strip()):
                return index
        return plain.index(_closest(written.strip('"'), plain))

    return choose


def _scalar(raw: str, kind: str, *, nullable: bool = False) -> Any:
    """Parse a generated scalar by its schema type; unparseable text is returned as is, for validation to flag."""
    if nullable and raw.lower().startswith(("null", "none")):
        return None
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
