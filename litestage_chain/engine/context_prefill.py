"""Set up a batched call on top of the context cache: load each row's longest cached prefix, prefill the rest.

The per-segment rule that defines a call's result (and that `segment_logits` recomputes without any cache): every
prompt token is computed under the plan its segment names (`prompt_plans`; tokens past the named segments, and every
generated token, under the call's plan). A token's residual stream runs only the sub-layers of its own plan; at every
layer it contributes keys and values computed from its residual stream entering that layer, whether its own plan runs
attention there or not; a token whose plan runs attention at layer l attends to the keys and values of all earlier
tokens and itself at layer l. With one plan for every token this is the ordinary forward pass under that plan.

Layout of a row in the call's cache: [left padding][cached prefix][prefilled rest of the prompt][generated tokens].
Rows start their prefill at different columns (their cached prefixes differ), so the rest of every prompt is packed
into one sequence and each row written at its own offset (`forward.prefill_rows`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from litestage_chain.engine.architecture import DecoderView
from litestage_chain.engine.attention_variants import layer_mask
from litestage_chain.engine.context_cache import ContextCache, Key
from litestage_chain.errors import InvalidInputError
from litestage_chain.engine.forward import (
    PackedRow,
    _attend,
    _mlp,
    _output,
    _project_qkv,
    new_cache,
    prefill_rows,
    run_layers,
)
from litestage_chain.engine.kv_cache import KVCache
from litestage_chain.engine.skip_plan import SkipPlan

PromptPlans = Sequence[tuple[int, SkipPlan]]  # runs of (token count, plan) from a prompt's first token


@dataclass
class ContextSetup:
    """A call's cache after its prompts are in, with what the decode loop and the results need."""

    cache: KVCache
    key_valid: Optional[torch.Tensor]
    positions: torch.Tensor  # [B] position of each row's next token
    logits: torch.Tensor
    width: int  # the column of the first generated token
    pads: list[int]
    keys: list[list[Key]]
    reused: list[int]  # prompt tokens whose entries were cached before this call
    loaded: list[int]  # prompt tokens loaded from the table (the shared prefix this call computed included)
    prefix_seconds: float
    prefix_computed: bool
    prefill_seconds: float
    plan_key: int


def token_keys(
    table: ContextCache, rows: list[list[int]], plan: SkipPlan, prompt_plans: Optional[Sequence[PromptPlans]]
) -> tuple[list[list[Key]], dict[int, SkipPlan]]:
    """Each row's (token, plan id) keys, and the plans by id; raises `InvalidInputError` for bad segments."""
    plans = {table.plan_id(plan): plan}
    if prompt_plans is not None and len(prompt_plans) != len(rows):
        raise InvalidInputError(f"prompt_plans has {len(prompt_plans)} entries for {len(rows)} prompts")
    keyed = []
    for number, tokens in enumerate(rows):
        tags: list[int] = []
        for count, segment_plan in (prompt_plans[number] if prompt_plans is not None else ()):
            if not isinstance(segment_plan, SkipPlan) or isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise InvalidInputError(f"prompt_plans[{number}] must hold (token count >= 0, SkipPlan) pairs")
            ident = table.plan_id(segment_plan)
            plans[ident] = segment_plan
            tags.extend([ident] * count)
        if len(tags) > len(tokens):
            raise InvalidInputError(f"prompt_plans[{number}] covers {len(tags)} tokens; the prompt has {len(tokens)}")
        tags.extend([table.plan_id(plan)] * (len(tokens) - len(tags)))
        if tags[-1] != table.plan_id(plan):
            raise InvalidInputError(
                f"prompt {number}: its last token must be computed under the call's plan (it gives the first "
                "generated token); end prompt_plans before it or give it the call's plan"
            )
        keyed.append(list(zip(tokens, tags)))
    return keyed, plans


def extend(view: DecoderView, table: ContextCache, keys: Sequence[Key], plans: dict[int, SkipPlan]) -> None:
    """Make `keys` cached: compute the tokens past their longest cached prefix (one row, run by run, each under
    its own plan) and store the whole sequence."""
    found = table.match(keys)
    if found.length == len(keys):
        return
    cache = new_cache(view, SkipPlan(), 1, len(keys), torch.device("cpu"), every_layer=True)
    _load(cache, 0, 0, found.pieces)
    start = found.length
    while start < len(keys):
        tag = keys[start][1]
        end = start
        while end < len(keys) and keys[end][1] == tag:
            end += 1
        ids = torch.tensor([[token for token, _ in keys[start:end]]])
        run_layers(view, view.embed(ids), torch.arange(start, end)[None, :], cache, start, None, plans[tag])
        start = end
    table.insert(keys, row_entries(cache, 0, 0, len(keys)))


def _last_run_start(keys: Sequence[Key], plan_key: int) -> int:
    """Where the last run of `keys` (the tokens under the call's own plan) starts."""
    start = len(keys) - 1
    while start > 0 and keys[start - 1][1] == plan_key:
        start -= 1
    return start


@dataclass
class _Segment:
    """Rows' uncached tokens of one earlier segment plan, packed for one `prefill_rows`."""

    rows: list[PackedRow] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)


def _prefill_earlier_runs(
    view: DecoderView, cache: KVCache, key_valid: torch.Tensor, keys: Sequence[Sequence[Key]], starts: Sequence[int],
    last_runs: Sequence[int], pads: Sequence[int], plans: dict[int, SkipPlan],
) -> None:
    """Prefill each row's tokens `[start, last_run)` into `cache`, run by run, each run under its own plan.

    Round after round, every row's next run goes into one packed prefill per plan, the rows side by side (after a
    stage of a batch each row misses one run: the previous stage's last generated token and its stop text)."""
    starts = list(starts)
    while True:
        segments: dict[int, _Segment] = {}
        for index, (row_keys, last_run) in enumerate(zip(keys, last_runs)):
            start = end = starts[index]
            if start >= last_run:
                continue
            tag = row_keys[start][1]
            while end < last_run and row_keys[end][1] == tag:
                end += 1
            segment = segments.setdefault(tag, _Segment())
            lo = len(segment.ids)
            segment.rows.append(PackedRow(index, lo, lo + end - start, pads[index] + start, pads[index] + end))
            segment.ids.extend(token for token, _ in row_keys[start:end])
            segment.positions.extend(range(start, end))
            starts[index] = end
        if not segments:
            return
        for tag, segment in segments.items():
            prefill_rows(view, torch.tensor(segment.ids), torch.tensor(segment.positions), segment.rows, key_valid,
                         cache, plans[tag], pad_start=None)


def prepare(
    view: DecoderView,
    table: ContextCache,
    rows: list[list[int]],
    plan: SkipPlan,
    prompt_plans: Optional[Sequence[PromptPlans]],
    prefix_length: int,
    max_new: int,
) -> ContextSetup:
    """Load each row's cached prefix and prefill the rest of its prompt under the per-segment rule.

    `prefix_length` > 0 names a prefix every row shares (few-shot exemplars): it is made cached first, once, and the
    seconds that took are reported apart (`prefix_seconds`), as `generate` does for its shared-prefix table. It is
    pinned: `ContextCache.clear(keep_pinned=True)` keeps it.
    """
    keys, plans = token_keys(table, rows, plan, prompt_plans)
    plan_key = keys[0][-1][1]
    reused = [table.peek(k, len(k) - 1) for k in keys]
    prefix_seconds, prefix_computed = 0.0, False
    if prefix_length and all(k[:prefix_length] == keys[0][:prefix_length] for k in keys):
        if table.peek(keys[0], prefix_length) < prefix_length:
            started = time.perf_counter()
            extend(view, table, keys[0][:prefix_length], plans)
            prefix_seconds, prefix_computed = time.perf_counter() - started, True
        table.pin(keys[0][:prefix_length])  # a benchmark clearing the table between questions keeps it
    started = time.perf_counter()
    matches = [table.match(k, len(k) - 1) for k in keys]  # the last token always runs: it gives the first logits
    width = max(len(r) for r in rows)
    batch = len(rows)
    cache = new_cache(view, plan, batch, width + max_new, torch.device("cpu"), every_layer=True)
    pads = [width - len(r) for r in rows]
    key_valid = torch.ones((batch, width + max_new), dtype=torch.bool)
    for index, found in enumerate(matches):
        key_valid[index, : pads[index]] = False
        for layer in cache.keys:
            cache.clear_row(layer, index, 0, pads[index])
        _load(cache, index, pads[index], found.pieces)
    # The tokens before each row's last run (the call's own plan) that are not cached belong to earlier segments
    # and run under their plans first, so that the batched prefill below runs one plan.
    last_runs = [_last_run_start(row_keys, plan_key) for row_keys in keys]
    starts = [found.length for found in matches]
    _prefill_earlier_runs(view, cache, key_valid, keys, starts, last_runs, pads, plans)
    starts = [max(start, last_run) for start, last_run in zip(starts, last_runs)]
    packed, ids, positions, lo = [], [], [], 0
    for index, (tokens, start) in enumerate(zip(rows, starts)):
        rest = len(tokens) - start
        packed.append(PackedRow(index, lo, lo + rest, pads[index] + start, width))
        ids.extend(tokens[start:])
        positions.extend(range(start, len(tokens)))
        lo += rest
    logits = prefill_rows(
        view, torch.tensor(ids), torch.tensor(positions), packed, key_valid, cache, plan, pad_start=None
    )
    return ContextSetup(
        cache=cache,
        key_valid=None if all(p == 0 for p in pads) else key_valid,
        positions=torch.tensor([len(r) for r in rows]),
        logits=logits,
        width=width,
        pads=pads,
        keys=keys,
        reused=reused,
        loaded=[m.length for m in matches],
        prefix_seconds=prefix_seconds,
        prefix_computed=prefix_computed,
        prefill_seconds=time.perf_counter() - started,
        plan_key=plan_key,
    )


def store(setup: ContextSetup, table: ContextCache, slot: int, row: int, generated: Sequence[int]) -> None:
    """Store batch row `row` (now at `slot` of the shrinking batch): its prompt and the generated tokens that went
    through the model (all but the last one)."""
    fed = list(generated[:-1])
    keys = setup.keys[row] + [(token, setup.plan_key) for token in fed]
    start = setup.pads[row]
    cached = table.peek(keys)  # only the entries past what is stored are copied out of the call's cache
    if cached < len(keys):
        table.insert(keys, row_entries(setup.cache, slot, start + cached, start + len(keys)), offset=cached)


def row_entries(cache: KVCache, slot: int, start: int, end: int) -> torch.Tensor:
    """One row's entries of columns [start, end) as `[layers, 2, kv_heads, tokens, head_dim]`."""
    return torch.stack(
        [torch.stack((cache.keys[layer][slot, :, start:end], cache.values[layer][slot, :, start:end]))
         for layer in sorted(cache.keys)]
    )


def _load(cache: KVCache, row: int, start: int, pieces: Sequence[torch.Tensor]) -> None:
    """Write a match's entries into `row` of `cache` from column `start`, piece by piece (no joined copy)."""
    for kv in pieces:
        length = kv.shape[3]
        for layer in sorted(cache.keys):
            cache.keys[layer][row, :, start : start + length] = kv[layer, 0]
            cache.values[layer][row, :, start : start + length] = kv[layer, 1]
        start += length


def segment_logits(view: DecoderView, input_ids: torch.Tensor, plans: Sequence[SkipPlan]) -> torch.Tensor:
    """Logits at every position of one sequence ([T] -> [T, V]) under the per-segment rule (module docstring),
    recomputed in one pass with no cache: the reference that cached decoding across plan switches is tested against.

    Every token's keys and values come from the fused q/k/v projection of its residual stream; a sub-layer a token's
    plan skips adds nothing to that token's residual stream.
    """
    if len(plans) != input_ids.shape[0]:
        raise InvalidInputError(f"{len(plans)} plans for {input_ids.shape[0]} tokens")
    ids = input_ids[None, :]
    hidden = view.embed(ids)
    positions = torch.arange(ids.shape[1])[None, :]
    rotations = view.rotations(hidden, positions)
    windows: dict[int, Optional[torch.Tensor]] = {}
    for layer in range(view.num_layers):
        runs_attention = torch.tensor([layer not in p.attention for p in plans])[None, :, None]
        runs_mlp = torch.tensor([layer not in p.mlp for p in plans])[None, :, None]
        parts = view.attention[layer]
        q, k, v = _project_qkv(parts, hidden, *rotations[parts.rope])
        mask, causal = layer_mask(parts, None, True, None, positions, 0, windows)  # sliding windows, where used
        update = _output(parts.out_norm, parts.o_proj(_attend(parts, q, k, v, mask, causal)))
        hidden = torch.where(runs_attention, hidden + update, hidden)
        hidden = torch.where(runs_mlp, hidden + _mlp(view.mlp[layer], hidden), hidden)
    return view.logits(hidden)[0]
