"""What some decoder families add to plain causal attention: sliding windows and soft-capped scores.

Kept apart from `forward.py` so the common path (Llama, Qwen2) stays one SDPA call; `forward.py` asks this module
for a layer's mask and attention only when the layer's `AttentionParts` says it has a window or a soft cap.

Windows are over token positions, not cache columns: in a batch, a row's cache can hold left padding between a
shared prefix and its prompt, so the distance between two columns is not the distance between their tokens. A key's
position is the number of valid columns before it, which is exactly how `generation.generate` numbers positions.
"""

from __future__ import annotations

from typing import Optional

import torch

from litestage_chain.engine.architecture import AttentionParts


def key_positions(key_valid: Optional[torch.Tensor], total: int) -> torch.Tensor:
    """Token position of each of the first `total` cache columns ([B or 1, total]); padding columns get the
    position of the last real token before them (they are masked anyway)."""
    if key_valid is None:
        return torch.arange(total)[None, :]
    return key_valid[:, :total].long().cumsum(dim=1) - 1


def window_mask(
    mask: Optional[torch.Tensor],
    key_valid: Optional[torch.Tensor],
    query_positions: torch.Tensor,
    start: int,
    window: int,
) -> torch.Tensor:
    """The boolean mask [B, 1, T, start+T] of a sliding-window layer: `mask` (the full-attention mask of the call;
    None means plain causal) further limited to keys less than `window` positions behind each query, as
    transformers' sliding-window masks do (key position > query position - window).

    A query always keeps itself, so a padding query never gets an all-False row (SDPA would emit NaN there).
    """
    length = query_positions.shape[1]
    total = start + length
    keys = key_positions(key_valid, total)[:, None, None, :]
    queries = query_positions[:, None, :, None]
    inside = keys > queries - window
    columns = torch.arange(total)[None, :]
    diagonal = (columns == torch.arange(start, total)[:, None])[None, None]
    if mask is None:
        mask = keys <= queries  # no padding: columns are positions, so this is the causal mask
    return mask & (inside | diagonal)


def softcapped_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: Optional[torch.Tensor], causal: bool,
    scale: float, softcap: float,
) -> torch.Tensor:
    """Attention whose scores are soft-capped (softcap * tanh(scores / softcap)) before masking, as Gemma 2 does;
    SDPA has no such option. q [B, H, T, d], keys/values [B, KV, S, d]; returns [B, H, T, d]."""
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:
        keys = keys.repeat_interleave(groups, dim=1)
        values = values.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, keys.transpose(2, 3)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if causal:
        length, total = q.shape[2], keys.shape[2]
        mask = torch.ones(length, total, dtype=torch.bool).tril(total - length)[None, None]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, values)


def layer_mask(
    parts: AttentionParts,
    mask: Optional[torch.Tensor],
    causal: bool,
    key_valid: Optional[torch.Tensor],
    query_positions: torch.Tensor,
    start: int,
    memo: dict[int, Optional[torch.Tensor]],
) -> tuple[Optional[torch.Tensor], bool]:
    """The (mask, is_causal) pair a layer attends with: the call's own for full-attention layers, a window mask
    (built once per window size and call, kept in `memo`) for sliding-window layers.

    A window longer than every query's position excludes nothing, so such calls keep the plain mask (and SDPA's
    causal fast path): with Mistral's or Phi-3's windows of 2-4k tokens that is nearly every call.
    """
    if parts.window is None:
        return mask, causal
    if parts.window not in memo:
        bites = int(query_positions.max()) >= parts.window
        memo[parts.window] = window_mask(mask, key_valid, query_positions, start, parts.window) if bites else None
    window = memo[parts.window]
    return (mask, causal) if window is None else (window, False)
