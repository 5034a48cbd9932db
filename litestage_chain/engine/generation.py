"""The decode loop: batched prompts under one `SkipPlan`, with KV cache, sampling, stop strings and early exit.

One call owns all of its state (cache, positions, RNG), so any number of threads may call `generate` on one loaded
model with different plans. Rows that finish (EOS, stop string, early exit, length) are dropped from the batch at
once, so a long answer does not make short ones pay for its extra tokens.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from litestage_chain.engine import context_prefill
from litestage_chain.engine.context_cache import ContextCache
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.forward import decode_one, new_cache, prefill
from litestage_chain.engine.kv_cache import KVCache
from litestage_chain.engine.prefix_cache import PrefixCache, load_prefix
from litestage_chain.engine.sampling import choose_next, confidence
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.engine.stopping import find_stop, safe_length
from litestage_chain.errors import GenerationCancelled, InvalidInputError

if TYPE_CHECKING:
    from litestage_chain.engine.loading import LoadedModel

FinishReason = Literal["eos", "stop", "length", "early_exit"]
Prompt = Union[str, Sequence[int]]
TokenCallback = Callable[[int, str], None]


class GenerationConfig(BaseModel):
    """How to decode: budget, sampling, stop strings and early exit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(256, ge=1, description="Most tokens to generate per prompt.")
    temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (with temperature > 0).")
    top_k: Optional[int] = Field(None, ge=1, description="Sample among the k likeliest tokens only (None: all).")
    seed: Optional[int] = Field(None, description="Seed for sampling; same seed, same output.")
    stop: tuple[str, ...] = Field((), description="Strings that end generation; the text is cut before them.")
    early_exit: Optional[EarlyExitConfig] = Field(None, description="Confidence early exit; None disables it.")
    ignore_eos: bool = Field(False, description="Keep decoding past EOS (benchmarks that need a fixed length).")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_strings(cls, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        stops = tuple(value)  # type: ignore[arg-type]
        if any(not isinstance(s, str) or s == "" for s in stops):
            raise ValueError("stop strings must be non-empty strings")
        return stops


class GenerationResult(BaseModel):
    """What one prompt produced, and what it cost."""

    text: str
    token_ids: list[int]
    confidences: list[float]
    prompt_tokens: int
    generated_tokens: int
    prefill_seconds: float
    decode_seconds: float
    early_exited: bool
    finish_reason: FinishReason
    plan: SkipPlan
    prefix_seconds: float = Field(
        0.0,
        description="computing the shared prefix's KV entries, when they were not stored for this plan; not part of "
        "prefill_seconds, so a call's time does not depend on which earlier call first used the plan and prefix",
    )
    prefix_tokens: int = Field(
        0, ge=0, description="prompt tokens whose KV entries came from the shared-prefix table instead of this "
        "call's prefill (reported as cached input tokens in chat usage metadata)",
    )
    prefix_computed: bool = Field(
        False, description="the table did not hold the prefix for this plan: this call computed and stored it",
    )
    reused_tokens: int = Field(
        0, ge=0, description="prompt tokens whose KV entries were stored before this call (by an earlier call), so "
        "this call did not compute them; prompt_tokens - reused_tokens is what this call prefilled",
    )


@dataclass
class _Row:
    """Mutable decoding state of one prompt of the batch (private to one `generate` call)."""

    index: int
    prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish: Optional[FinishReason] = None
    finished_at: float = 0.0


def _encode(model: "LoadedModel", prompts: Sequence[Prompt]) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise InvalidInputError("prompts must be a list of strings or of token-id lists")
    if len(prompts) == 0:
        raise InvalidInputError("prompts is empty: pass at least one prompt")
    encoded = []
    vocab = model.vocab_size
    for number, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InvalidInputError(f"prompt {number} is empty")
            ids = model.encode(prompt)
        else:
            ids = list(prompt)
            if not ids:
                raise InvalidInputError(f"prompt {number} has no tokens")
            if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in ids):
                raise InvalidInputError(f"prompt {number} has token ids outside the vocabulary (0..{vocab - 1})")
        encoded.append(ids)
    return encoded


def _usable_prefix(model: "LoadedModel", shared_prefix: Optional[Prompt], encoded: list[list[int]]) -> list[int]:
    """The shared prefix's tokens if every prompt starts with them and continues past them, else []."""
    if shared_prefix is None:
        return []
    prefix = model.encode(shared_prefix) if isinstance(shared_prefix, str) else list(shared_prefix)
    size = len(prefix)
    if size == 0 or any(len(r) <= size or r[:size] != prefix for r in encoded):
        return []
    return prefix


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Left-pad to one length; the validity mask is None when no row needed padding."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        valid[i, width - len(row) :] = True
    return ids, (None if bool(valid.all()) else valid)


def generate(
    model: "LoadedModel",
    prompts: Sequence[Prompt],
    plan: Optional[SkipPlan] = None,
    config: Optional[GenerationConfig] = None,
    on_token: Optional[TokenCallback] = None,
    shared_prefix: Optional[Prompt] = None,
    prefix_cache: Optional[PrefixCache] = None,
    context_cache: Optional[ContextCache] = None,
    prompt_plans: Optional[Sequence[context_prefill.PromptPlans]] = None,
    cancel: Optional[threading.Event] = None,
    store_to: Optional[ContextCache] = None,
) -> list[GenerationResult]:
    """Generate a continuation for each prompt under one skip plan; results come back in prompt order.

    Prompts are complete texts (render chat messages with `LoadedModel.render_chat` first) or token-id lists.
    `on_token(batch_index, text_piece)` is called as text becomes final (stop strings are never emitted).
    `shared_prefix` names a beginning that every prompt shares (instructions, few-shot exemplars): its KV entries
    are computed once per plan and reused across calls and batch rows. If a prompt does not start with its tokens,
    the prefix is not reused for that call. The entries live in `prefix_cache`, by default the model's process-wide
    table; a caller whose prefix only its own few calls share (a guided reply's prompt) passes a private table, so
    that prefix takes no room from the few-shot prefixes many calls share.

    `context_cache` (e.g. the model's `context_cache`) switches to reuse across calls and plans: every prompt reuses
    the longest prefix of it that any earlier call prefilled or generated, and stores its own prompt and output for
    later calls (see `context_cache.py`). `prompt_plans[i]` then lists runs of `(token count, SkipPlan)` from prompt
    i's first token: the plans those tokens are computed under (an earlier stage's segment); the rest of the prompt
    runs under `plan`. The result depends on the tokens and their plans only, never on what was cached (exactly in
    float32; with int8/int4 weights up to the kernels' activation rounding, see `context_cache.py`).

    `store_to` (a context cache; not with `context_cache`) runs the call as a plain one and then stores each row's
    prompt and output in that table for later calls that continue them: the outputs are those of the same call
    without it, bit for bit, also with int8/int4 weights, whose activation rounding makes a call through the context
    cache's own prefill differ now and then (`context_cache.py`). Entries of a skipped attention layer are not
    computed on this path, so `plan` must skip none.

    Setting `cancel` (from any thread) stops the call before its next decoding step with `GenerationCancelled`.
    """
    plan = plan or SkipPlan()
    config = config or GenerationConfig()
    plan.check(model.num_layers)
    encoded = _encode(model, prompts)
    prefix = _usable_prefix(model, shared_prefix, encoded)
    reused = len(prefix)
    longest = max(len(r) for r in encoded)
    room = model.max_positions - longest
    if room < 1:
        number = max(range(len(encoded)), key=lambda i: len(encoded[i]))
        which = f"prompt {number} ({longest} tokens)" if len(encoded) > 1 else f"prompt of {longest} tokens"
        raise InvalidInputError(f"{which} does not fit the model's context of {model.max_positions} tokens")
    if room < config.max_new_tokens:
        warnings.warn(
            f"a prompt of {longest} tokens leaves room for {room} of the {config.max_new_tokens} new tokens asked "
            f"for in the model's context of {model.max_positions}: generation stops there (finish_reason 'length')",
            stacklevel=2,
        )
    max_new = min(config.max_new_tokens, room)
    generator = None
    if config.temperature > 0 and config.seed is not None:
        generator = torch.Generator().manual_seed(config.seed)

    view = model.view
    if context_cache is not None and store_to is not None:
        raise InvalidInputError("pass context_cache (reuse and store) or store_to (store only), not both")
    if context_cache is not None:
        return _generate_in_context(
            model, encoded, plan, config, on_token, context_cache, prompt_plans, len(prefix), max_new, generator, cancel
        )
    if prompt_plans is not None:
        raise InvalidInputError("prompt_plans needs a context_cache (the plans of tokens the call reuses)")
    if store_to is not None and plan.attention:
        raise InvalidInputError(
            "store_to needs a plan that skips no attention layer: a plain call computes no entries for skipped ones"
        )
    # Cache layout per row: [reused prefix][left padding][rest of the prompt][generated tokens].
    input_ids, prompt_valid = _left_pad([r[reused:] for r in encoded], model.pad_token_id)
    batch, suffix_width = input_ids.shape
    width = reused + suffix_width
    capacity = width + max_new
    key_valid = None
    if prompt_valid is not None:
        key_valid = torch.ones((batch, capacity), dtype=torch.bool)
        key_valid[:, reused:width] = prompt_valid
        positions = reused + (prompt_valid.long().cumsum(dim=1) - 1).clamp(min=0)
    else:
        positions = reused + torch.arange(suffix_width).expand(batch, suffix_width)
    rows = [_Row(index=i, prompt_tokens=len(r)) for i, r in enumerate(encoded)]
    next_position = positions[:, -1] + 1

    with torch.inference_mode():
        started = time.perf_counter()
        cache = new_cache(view, plan, batch, capacity, input_ids.device)
        prefix_seconds = 0.0
        prefix_computed = False
        if reused:
            table = model.prefix_cache if prefix_cache is None else prefix_cache  # an empty table is falsy (len 0)
            found = table.lookup(view, plan, prefix)
            prefix_seconds, prefix_computed = found.seconds, found.computed
            load_prefix(cache, found.entry)
        _stop_if_cancelled(cancel)
        logits = prefill(view, input_ids, positions, key_valid, cache, plan, start=reused)
        prefill_seconds = max(time.perf_counter() - started - prefix_seconds, 0.0)
        decode_started = time.perf_counter()
        finished = None
        if store_to is not None:
            plan_id = store_to.plan_id(plan)
            starts = [width - (len(r) - reused) for r in encoded]  # where each row's own prompt tokens begin

            def finished(slot: int, row: _Row) -> None:
                _store_plain(store_to, cache, slot, encoded[row.index], row.token_ids, plan_id, reused,
                             starts[row.index], width)

        _decode(model, rows, logits, cache, key_valid, next_position, width, plan, config, max_new, generator, on_token,
                finished, cancel=cancel)

    return [
        _result(
            row, plan, prefill_seconds, decode_started,
            prefix_seconds=prefix_seconds,
            prefix_tokens=reused,
            reused_tokens=0 if prefix_computed else reused,
            # computed once for the whole batch: the first row reports creating it, the others reading it
            prefix_computed=prefix_computed and row.index == 0,
        )
        for row in rows
    ]


def _decode(
    model: "LoadedModel",
    rows: list[_Row],
    logits: torch.Tensor,
    cache: KVCache,
    key_valid: Optional[torch.Tensor],
    next_position: torch.Tensor,
    width: int,
    plan: SkipPlan,
    config: GenerationConfig,
    max_new: int,
    generator: Optional[torch.Generator],
    on_token: Optional[TokenCallback],
    on_finish: Optional[Callable[[int, _Row], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> None:
    """The decode loop: pick a token per active row, finish rows, drop them from the batch, feed the rest.

    `on_finish(slot, row)` sees a row as it finishes, while its cache entries are still at `slot` of the batch.
    """
    active = list(range(len(rows)))
    for step in range(max_new):
        _stop_if_cancelled(cancel)
        confidences = confidence(logits).tolist()
        tokens = choose_next(logits, config.temperature, config.top_p, generator, config.top_k)
        token_list = tokens.tolist()
        now_finished = []
        for slot, row_index in enumerate(active):
            row = rows[row_index]
            _advance(model, row, token_list[slot], confidences[slot], config, step + 1 == max_new, on_token)
            if row.finish is not None:
                row.finished_at = time.perf_counter()
                now_finished.append(slot)
                if on_finish is not None:
                    on_finish(slot, row)
        if now_finished:
            if len(now_finished) == len(active):
                break
            keep = cache.drop_rows(now_finished)  # the kept rows' old slots, in their new order
            keep_index = torch.tensor(keep, dtype=torch.long)
            active = [active[slot] for slot in keep]
            tokens = tokens.index_select(0, keep_index)
            next_position = next_position.index_select(0, keep_index)
            if key_valid is not None:
                key_valid = key_valid.index_select(0, keep_index)
        logits = decode_one(model.view, tokens, next_position, key_valid, cache, width + step, plan)
        next_position = next_position + 1


def _store_plain(
    table: ContextCache, cache: KVCache, slot: int, prompt: list[int], generated: list[int], plan_id: int,
    reused: int, start: int, width: int,
) -> None:
    """Store one row of a plain call (cache layout `[prefix][padding][own prompt][generated]`, now at `slot`): its
    prompt and the generated tokens that went through the model (all but the last one)."""
    fed = generated[:-1]
    keys = [(token, plan_id) for token in [*prompt, *fed]]
    cached = table.peek(keys)
    if cached >= len(keys):
        return
    columns = ((0, reused), (start, width), (width, width + len(fed)))
    kv = torch.cat([context_prefill.row_entries(cache, slot, lo, hi) for lo, hi in columns], dim=3)
    table.insert(keys, kv[:, :, :, cached:], offset=cached)


def _generate_in_context(
    model: "LoadedModel",
    encoded: list[list[int]],
    plan: SkipPlan,
    config: GenerationConfig,
    on_token: Optional[TokenCallback],
    table: ContextCache,
    prompt_plans: Optional[Sequence[context_prefill.PromptPlans]],
    prefix_length: int,
    max_new: int,
    generator: Optional[torch.Generator],
    cancel: Optional[threading.Event] = None,
) -> list[GenerationResult]:
    """`generate` on top of the context cache: the same decode loop, each row stored in the table as it ends."""
    view = model.view
    rows = [_Row(index=i, prompt_tokens=len(r)) for i, r in enumerate(encoded)]
    with torch.inference_mode():
        setup = context_prefill.prepare(view, table, encoded, plan, prompt_plans, prefix_length, max_new)
        cache, key_valid, next_position, logits = setup.cache, setup.key_valid, setup.positions, setup.logits
        decode_started = time.perf_counter()

        def finished(slot: int, row: _Row) -> None:
            context_prefill.store(setup, table, slot, row.index, row.token_ids)

        _decode(model, rows, logits, cache, key_valid, next_position, setup.width, plan, config, max_new, generator,
                on_token, finished, cancel=cancel)
    return [
        _result(
            row, plan, setup.prefill_seconds, decode_started,
            prefix_seconds=setup.prefix_seconds,
            prefix_tokens=setup.loaded[row.index],
            prefix_computed=setup.prefix_computed and row.index == 0,
            reused_tokens=setup.reused[row.index],
        )
        for row in rows
    ]


def _result(row: _Row, plan: SkipPlan, prefill_seconds: float, decode_started: float, **reuse: Any) -> GenerationResult:
    """One row's result; `reuse` holds the prefix and reuse fields."""
    return GenerationResult(
        text=row.text,
        token_ids=row.token_ids,
        confidences=row.confidences,
        prompt_tokens=row.prompt_tokens,
        generated_tokens=len(row.token_ids),
        prefill_seconds=prefill_seconds,
        decode_seconds=max(row.finished_at - decode_started, 0.0),
        early_exited=row.finish == "early_exit",
        finish_reason=row.finish or "length",
        plan=plan,
        **reuse,
    )


def _stop_if_cancelled(cancel: Optional[threading.Event]) -> None:
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled("generation was cancelled")


def _advance(
    model: "LoadedModel",
    row: _Row,
    token: int,
    token_confidence: float,
    config: GenerationConfig,
    last_step: bool,
    on_token: Optional[TokenCallback],
) -> None:
    """Append one token to a row, update its text, and decide whether (and why) it is finished."""
    row.token_ids.append(token)
    row.confidences.append(token_confidence)
    if token in model.eos_token_ids and not config.ignore_eos:
        row.finish = "eos"
    else:
        text = model.decode([t for t in row.token_ids if t not in model.eos_token_ids])
        if config.stop:
            cut = find_stop(text, config.stop, max(0, len(row.text) - max(map(len, config.stop))))
            if cut >= 0:
                text = text[:cut]
                row.finish = "stop"
        row.text = text
        if row.finish is None and config.early_exit is not None and config.early_exit.should_exit(row.confidences):
            row.finish = "early_exit"
        if row.finish is None and last_step:
            row.finish = "length"
    if on_token is not None:
        end = len(row.text) if row.finish is not None else safe_length(row.text, config.stop)
        if end > row.emitted:
            on_token(row.index, row.text[row.emitted : end])
            row.emitted = end
