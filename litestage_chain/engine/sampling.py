"""Choosing the next token: greedy or temperature / top-k / top-p sampling, plus the confidence early exit reads.

Sampling uses a per-call `torch.Generator`, never the global RNG, so a seeded call is reproducible even while
other threads generate.
"""

from __future__ import annotations

from typing import Optional

import torch


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability of each row ([B, V] -> [B]): the model's confidence in its top token."""
    return torch.softmax(logits, dim=-1).amax(dim=-1)


def choose_next(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: Optional[torch.Generator],
    top_k: Optional[int] = None,
) -> torch.Tensor:
    """Pick one token per row ([B, V] -> [B]). `temperature == 0` is greedy; `top_k` keeps the k likeliest tokens."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        drop = (cumulative - sorted_probs) >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, choice)[:, 0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
