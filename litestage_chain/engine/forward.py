"""The skipping forward pass: run a decoder sub-layer by sub-layer, leaving out the ones a `SkipPlan` names.

Positions and the attention mask are passed explicitly (never derived from the cache), so a skipped attention
sub-layer, even in layer 0, changes nothing but the residual stream. A skipped sub-layer runs no module at all:
no matmul, no weight read.

The functions are small and pure in the gpt-fast style: `prefill` (whole prompt, fills the cache),
`decode_one` (one token per row), and `sublayer_cosines` (importance measurement on the full model).
A batch of prompts of different lengths is prefilled packed (`prefill_packed`): the projections, which are nearly
all of a prefill's work, see each real token once and no padding.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from litestage_chain.engine.architecture import AttentionParts, DecoderView, MlpParts
from litestage_chain.engine.attention_variants import layer_mask, softcapped_attention
from litestage_chain.engine.fused_decode import decode_one_fused
from litestage_chain.engine.kv_cache import KVCache
from litestage_chain.engine.skip_plan import SkipPlan

# observer(layer, kind, residual_before, residual_after): lets importance measurement see each sub-layer.
SubLayerObserver = Callable[[int, str, torch.Tensor, torch.Tensor], None]


def new_cache(
    view: DecoderView,
    plan: SkipPlan,
    batch_size: int,
    capacity: int,
    device: torch.device,
    every_layer: bool = False,
) -> KVCache:
    """A cache with buffers only for the attention sub-layers that `plan` runs.

    With `every_layer`, it has a buffer for every layer, and the forward pass fills the skipped attention layers'
    keys and values too (k/v projections only, no attention): what a later call under another plan reads.
    """
    parts = view.attention[0]
    skipped = set() if every_layer else set(plan.attention)
    layers = [layer for layer in range(view.num_layers) if layer not in skipped]
    dtype = view.embed.weight.dtype
    return KVCache(layers, batch_size, parts.num_kv_heads, parts.head_dim, capacity, dtype, device)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary positions on the first `cos.shape[-1]` dims of each head (all of them but with partial rotary)."""
    dims = cos.shape[-1]
    if dims == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rotated, kept = x[..., :dims], x[..., dims:]
    return torch.cat((rotated * cos + _rotate_half(rotated) * sin, kept), dim=-1)


def _project_qkv(
    parts: AttentionParts, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries [B, H, T, d], and keys and values [B, KV, T, d], with rotary positions applied."""
    batch, length, _ = hidden.shape
    qkv = parts.qkv(parts.norm(hidden))
    q_size = parts.num_heads * parts.head_dim
    kv_size = parts.num_kv_heads * parts.head_dim
    qk, v = qkv.split((q_size + kv_size, kv_size), dim=-1)
    # rotary on q and k heads together: one set of elementwise ops instead of two (same values)
    qk = qk.view(batch, length, parts.num_heads + parts.num_kv_heads, parts.head_dim)
    if parts.q_norm is not None:  # per-head RMSNorm before rotary (Qwen3, Gemma 3)
        qk = torch.cat((parts.q_norm(qk[:, :, : parts.num_heads]), parts.k_norm(qk[:, :, parts.num_heads :])), dim=2)
    qk = qk.transpose(1, 2)
    qk = _rotate(qk, cos, sin)
    q, k = qk.split((parts.num_heads, parts.num_kv_heads), dim=1)
    v = v.view(batch, length, parts.num_kv_heads, parts.head_dim).transpose(1, 2)
    return q, k, v


def _project_kv(
    parts: AttentionParts, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [B, KV, T, d] alone, for an attention layer the plan skips: the k/v rows of the fused
    projection only (under grouped-query attention a fraction of q/k/v/o), no attention and no output projection."""
    batch, length, _ = hidden.shape
    kv_size = parts.num_kv_heads * parts.head_dim
    kv = _kv_rows(parts)(parts.norm(hidden))
    k, v = kv[..., -2 * kv_size :].split((kv_size, kv_size), dim=-1)
    k = k.view(batch, length, parts.num_kv_heads, parts.head_dim)
    if parts.k_norm is not None:  # per-head RMSNorm before rotary, as in `_project_qkv`
        k = parts.k_norm(k)
    k = _rotate(k.transpose(1, 2), cos, sin)
    v = v.view(batch, length, parts.num_kv_heads, parts.head_dim).transpose(1, 2)
    return k, v


_KV_ROWS: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()


def _kv_rows(parts: AttentionParts) -> nn.Module:
    """A module computing only the k/v outputs of the fused q/k/v projection.

    A plain linear gets a linear over views of its last rows (no copy); a quantised projection has no cheap row
    view, so it runs whole and the caller keeps its last columns (the q rows are then computed and dropped).
    """
    fused = parts.qkv
    cached = _KV_ROWS.get(fused)
    if cached is None:
        cached = fused
        if type(fused) is nn.Linear:
            rows = 2 * parts.num_kv_heads * parts.head_dim
            cached = nn.Linear(fused.in_features, rows, bias=fused.bias is not None, device="meta")
            cached.weight = nn.Parameter(fused.weight[-rows:], requires_grad=False)
            if fused.bias is not None:
                cached.bias = nn.Parameter(fused.bias[-rows:], requires_grad=False)
        _KV_ROWS[fused] = cached
    return cached


def _attend(
    parts: AttentionParts,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: Optional[torch.Tensor],
    causal: bool,
) -> torch.Tensor:
    """Attention of `q` over the cached `keys`/`values`, as [B, T, H * d] ready for the output projection."""
    batch, _, length, _ = q.shape
    if parts.softcap is not None:
        out = softcapped_attention(q, keys, values, mask, causal, parts.scaling, parts.softcap)
    else:
        out = F.scaled_dot_product_attention(
            q,
            keys,
            values,
            attn_mask=mask,
            is_causal=causal,
            scale=parts.scaling,
            enable_gqa=parts.num_kv_heads != parts.num_heads,
        )
    return out.transpose(1, 2).reshape(batch, length, parts.num_heads * parts.head_dim)


def _attention(
    parts: AttentionParts,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    layer: int,
    cache: KVCache,
    start: int,
    mask: Optional[torch.Tensor],
    causal: bool,
) -> torch.Tensor:
    q, k, v = _project_qkv(parts, hidden, cos, sin)
    keys, values = cache.write(layer, start, k, v)
    return _output(parts.out_norm, parts.o_proj(_attend(parts, q, keys, values, mask, causal)))


def _output(out_norm: Optional[torch.nn.Module], update: torch.Tensor) -> torch.Tensor:
    """A sub-layer's update to the residual stream, normalised first in families that do (Gemma 2/3)."""
    return update if out_norm is None else out_norm(update)


def _mlp(parts: MlpParts, hidden: torch.Tensor) -> torch.Tensor:
    gate, up = parts.gate_up(parts.norm(hidden)).split(parts.intermediate_size, dim=-1)
    return _output(parts.out_norm, parts.down_proj(parts.act(gate) * up))


def _attention_mask(key_valid: Optional[torch.Tensor], start: int, length: int) -> Optional[torch.Tensor]:
    """Boolean mask [B, 1, T, start+T] (True = attend) for padded batches; None when no row is padded.

    Every query may attend to itself, so a padding query never sees an all-False row (which makes SDPA emit NaN);
    padding positions are never attended by real tokens, so their values do not matter.
    """
    if key_valid is None:
        return None
    total = start + length
    keys = key_valid[:, None, None, :total]
    if length == 1:
        return keys
    query_pos = torch.arange(start, total, device=key_valid.device)[:, None]
    key_pos = torch.arange(total, device=key_valid.device)[None, :]
    causal = key_pos <= query_pos
    diagonal = key_pos == query_pos
    return (keys & causal[None, None]) | diagonal[None, None]


def _run_sublayers(
    view: DecoderView,
    hidden: torch.Tensor,
    plan: SkipPlan,
    attention: Callable[[int, torch.Tensor], torch.Tensor],
    observer: Optional[SubLayerObserver],
    fill: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """The residual stream through every sub-layer `plan` keeps; `attention(layer, hidden)` gives a layer's update.

    `fill(layer, hidden)`, when given, is called at each skipped attention layer (to store its keys and values).
    """
    skip_attention = set(plan.attention)
    skip_mlp = set(plan.mlp)
    scales = {(layer, kind): factor for layer, kind, factor in plan.scale}
    for layer in range(view.num_layers):
        if layer in skip_attention and fill is not None:
            fill(layer, hidden)
        if layer not in skip_attention:
            update = attention(layer, hidden)
            if observer is not None:
                observer(layer, "attention", hidden, hidden + update)
            hidden = hidden + update
        elif (layer, "attention") in scales:
            hidden = hidden * scales[(layer, "attention")]
        if layer not in skip_mlp:
            update = _mlp(view.mlp[layer], hidden)
            if observer is not None:
                observer(layer, "mlp", hidden, hidden + update)
            hidden = hidden + update
        elif (layer, "mlp") in scales:
            hidden = hidden * scales[(layer, "mlp")]
    return hidden


def run_layers(
    view: DecoderView,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    cache: KVCache,
    start: int,
    key_valid: Optional[torch.Tensor],
    plan: SkipPlan,
    observer: Optional[SubLayerObserver] = None,
) -> torch.Tensor:
    """Run every decoder layer on `hidden` ([B, T, d]) at cache offset `start`, skipping what `plan` names."""
    length = hidden.shape[1]
    rotations = view.rotations(hidden, positions)
    mask = _attention_mask(key_valid, start, length)
    causal = mask is None and start == 0 and length > 1
    if mask is None and start > 0 and length > 1:
        # A multi-token chunk after cached tokens: causal within the chunk, full view of the past.
        mask = _attention_mask(torch.ones(hidden.shape[0], start + length, dtype=torch.bool), start, length)
    windows: dict[int, Optional[torch.Tensor]] = {}

    def attention(layer: int, states: torch.Tensor) -> torch.Tensor:
        parts = view.attention[layer]
        layer_masks = layer_mask(parts, mask, causal, key_valid, positions, start, windows)
        return _attention(parts, states, *rotations[parts.rope], layer, cache, start, *layer_masks)

    def fill(layer: int, states: torch.Tensor) -> None:
        if layer in cache.keys:
            parts = view.attention[layer]
            cache.write(layer, start, *_project_kv(parts, states, *rotations[parts.rope]))

    return _run_sublayers(view, hidden, plan, attention, observer, fill)


@dataclass(frozen=True)
class PackedRow:
    """Where one prompt of a left-padded batch sits in the packed prefill sequence and in the cache.

    Its real tokens are positions `[lo, hi)` of the packed sequence and go to columns `[cache_start, cache_end)` of
    cache row `row`; the columns between the call's start and `cache_start` are its left padding.
    """

    row: int
    lo: int
    hi: int
    cache_start: int
    cache_end: int


def pack_rows(key_valid: torch.Tensor, start: int, length: int) -> list[PackedRow]:
    """The packing of a left-padded chunk (columns `[start, start + length)` of `key_valid`), row after row."""
    rows = []
    lo = 0
    for row, real in enumerate(key_valid[:, start : start + length].sum(dim=1).tolist()):
        rows.append(PackedRow(row, lo, lo + real, start + length - real, start + length))
        lo += real
    return rows


def _attention_packed(
    parts: AttentionParts,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    layer: int,
    cache: KVCache,
    rows: list[PackedRow],
    masks: list[torch.Tensor],
    pad_start: Optional[int],
) -> torch.Tensor:
    """Attention for a packed sequence ([1, S, d]): projections over all rows at once, attention row by row
    (`masks` holds each row's mask for this layer). `pad_start`: where each row's left padding starts (it is
    zeroed); None when the caller cleared it already."""
    q, k, v = _project_qkv(parts, hidden, cos, sin)
    outputs = []
    for packed, mask in zip(rows, masks):
        span = slice(packed.lo, packed.hi)
        # Padding columns are never attended, but an uninitialised NaN there would still poison the softmax.
        if pad_start is not None:
            cache.clear_row(layer, packed.row, pad_start, packed.cache_start)
        keys, values = cache.write(layer, packed.cache_start, k[:, :, span], v[:, :, span], row=packed.row)
        outputs.append(_attend(parts, q[:, :, span], keys, values, mask, False))
    return _output(parts.out_norm, parts.o_proj(torch.cat(outputs, dim=1)))


def prefill_packed(
    view: DecoderView,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    key_valid: torch.Tensor,
    cache: KVCache,
    plan: SkipPlan,
    start: int = 0,
) -> torch.Tensor:
    """`prefill` for a left-padded batch without computing the padding: the same logits [B, V] and cache.

    The rows' real tokens are packed into one sequence, so every matrix multiply runs over exactly the prompt tokens
    (a batch whose prompts differ in length wastes a fifth or more of a padded prefill on padding); attention, which
    is cheap next to the projections, runs row by row against that row's cache.
    """
    rows = pack_rows(key_valid, start, input_ids.shape[1])
    # a row's real tokens are its last ones: they start after its padding, `cache_start - start` columns in
    ids = torch.cat([input_ids[packed.row, packed.cache_start - start :] for packed in rows])
    packed_positions = torch.cat([positions[packed.row, packed.cache_start - start :] for packed in rows])
    return prefill_rows(view, ids, packed_positions, rows, key_valid, cache, plan, pad_start=start)


def prefill_rows(
    view: DecoderView,
    ids: torch.Tensor,
    positions: torch.Tensor,
    rows: list[PackedRow],
    key_valid: torch.Tensor,
    cache: KVCache,
    plan: SkipPlan,
    pad_start: Optional[int] = None,
) -> torch.Tensor:
    """Prefill packed tokens (`ids`, `positions`: [S], row after row as `rows` says) into each row's own cache
    columns, every row starting where it stands; return each row's next-token logits [B, V].

    Rows may start at different columns (after a reused prefix of their own length): each attends to its cache
    columns before `cache_end` that `key_valid` marks. `pad_start`: see `_attention_packed`.
    """
    ids, packed_positions = ids[None, :], positions[None, :]
    masks = [
        _attention_mask(key_valid[packed.row : packed.row + 1], packed.cache_start, packed.hi - packed.lo)
        for packed in rows
    ]
    hidden = view.embed(ids)
    rotations = view.rotations(hidden, packed_positions)
    windows: list[dict[int, Optional[torch.Tensor]]] = [{} for _ in rows]

    def attention(layer: int, states: torch.Tensor) -> torch.Tensor:
        parts = view.attention[layer]
        layer_masks = [
            layer_mask(parts, mask, False, key_valid[packed.row : packed.row + 1],
                       packed_positions[:, packed.lo : packed.hi], packed.cache_start, memo)[0]
            for packed, mask, memo in zip(rows, masks, windows)
        ]
        return _attention_packed(parts, states, *rotations[parts.rope], layer, cache, rows, layer_masks, pad_start)

    def fill(layer: int, states: torch.Tensor) -> None:
        if layer in cache.keys:
            parts = view.attention[layer]
            k, v = _project_kv(parts, states, *rotations[parts.rope])
            for packed in rows:
                span = slice(packed.lo, packed.hi)
                cache.write(layer, packed.cache_start, k[:, :, span], v[:, :, span], row=packed.row)

    hidden = _run_sublayers(view, hidden, plan, attention, None, fill)
    last = torch.tensor([packed.hi - 1 for packed in rows])
    return logits_of_last(view, hidden[0, last][:, None, :])


def logits_of_last(view: DecoderView, hidden: torch.Tensor) -> torch.Tensor:
    """Project only the last position of each row to the vocabulary ([B, V], float32)."""
    return view.logits(hidden[:, -1:, :])[:, 0, :]


def prefill(
    view: DecoderView,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    key_valid: Optional[torch.Tensor],
    cache: KVCache,
    plan: SkipPlan,
    start: int = 0,
) -> torch.Tensor:
    """Run the prompt ([B, T]) through the model from cache offset `start` (after a reused prefix), filling `cache`;
    return next-token logits [B, V]. A left-padded batch goes through `prefill_packed`, which skips the padding."""
    length = input_ids.shape[1]
    if key_valid is not None and length > 1 and not bool(key_valid[:, start : start + length].all()):
        return prefill_packed(view, input_ids, positions, key_valid, cache, plan, start)
    return prefill_padded(view, input_ids, positions, key_valid, cache, plan, start)


def prefill_padded(
    view: DecoderView,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    key_valid: Optional[torch.Tensor],
    cache: KVCache,
    plan: SkipPlan,
    start: int = 0,
) -> torch.Tensor:
    """`prefill` with every row at the batch's full width, padding included (the path for unpadded batches, and
    what `prefill_packed` is compared against)."""
    hidden = run_layers(view, view.embed(input_ids), positions, cache, start, key_valid, plan)
    return logits_of_last(view, hidden)


def decode_one(
    view: DecoderView,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    key_valid: Optional[torch.Tensor],
    cache: KVCache,
    start: int,
    plan: SkipPlan,
) -> torch.Tensor:
    """Run one new token per row ([B]) at cache offset `start`; return next-token logits [B, V].

    One row of a Llama-shaped int8/int4 model goes through the compiled decode step (`fused_decode.py`)."""
    fused = decode_one_fused(view, tokens, positions, key_valid, cache, start, plan)
    if fused is not None:
        return fused
    hidden = view.embed(tokens[:, None])
    hidden = run_layers(view, hidden, positions[:, None], cache, start, key_valid, plan)
    return logits_of_last(view, hidden)


def all_logits(view: DecoderView, input_ids: torch.Tensor, plan: SkipPlan) -> torch.Tensor:
    """Logits at every position of one unpadded sequence ([T] -> [T, V]), recomputed with a fresh cache.

    The reference that KV-cached decoding is tested against.
    """
    ids = input_ids[None, :]
    length = ids.shape[1]
    cache = new_cache(view, plan, 1, length, ids.device)
    positions = torch.arange(length, device=ids.device)[None, :]
    hidden = run_layers(view, view.embed(ids), positions, cache, 0, None, plan)
    return view.logits(hidden)[0]


def sublayer_cosines(view: DecoderView, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of cos(residual before, residual after) for every sub-layer of the full model.

    Returns [num_layers, 2] (column 0 attention, column 1 MLP). High similarity means the sub-layer barely changes
    the residual stream: it is redundant and a candidate to skip (LiteStage step 1).
    """
    sims = torch.zeros(view.num_layers, 2, dtype=torch.float64)

    def observe(layer: int, kind: str, before: torch.Tensor, after: torch.Tensor) -> None:
        cos = F.cosine_similarity(before.float(), after.float(), dim=-1)
        sims[layer, 0 if kind == "attention" else 1] = cos.mean().double()

    ids = input_ids[None, :]
    length = ids.shape[1]
    cache = new_cache(view, SkipPlan(), 1, length, ids.device)
    positions = torch.arange(length, device=ids.device)[None, :]
    with torch.inference_mode():
        run_layers(view, view.embed(ids), positions, cache, 0, None, SkipPlan(), observer=observe)
    return sims.float()
