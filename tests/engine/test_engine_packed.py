"""Packed prefill: a left-padded batch is prefilled without computing its padding, with the same result."""

from __future__ import annotations

import pytest
import torch

from litestage_chain import LoadedModel, SkipPlan
from litestage_chain.engine.forward import (
    decode_one,
    logits_of_last,
    new_cache,
    pack_rows,
    prefill,
    run_layers,
)
from litestage_chain.engine.generation import _left_pad

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["a", "A much longer prompt than the first one", "middle size", "A much longer prompt than the first one"]
PLANS = [SkipPlan(), SkipPlan(attention=[0, 2], mlp=[1])]


def _padded_inputs(model: LoadedModel, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-padded ids, positions and a key mask over `start` already-cached columns, laid out as `generate` does."""
    ids, valid = _left_pad([model.encode(p) for p in PROMPTS], model.pad_token_id)
    assert valid is not None, "the prompts must differ in length"
    batch, width = ids.shape
    key_valid = torch.ones((batch, start + width + 4), dtype=torch.bool)
    key_valid[:, start : start + width] = valid
    positions = start + (valid.long().cumsum(dim=1) - 1).clamp(min=0)
    return ids, positions, key_valid, width


def _fill_start(model: LoadedModel, plan: SkipPlan, caches: list, start: int) -> None:
    """The same `start` cached columns in every row of every cache (stands for a reused shared prefix)."""
    if start == 0:
        return
    ids = torch.arange(3, 3 + start)[None, :] % model.vocab_size
    reference = new_cache(model.view, plan, 1, start, ids.device)
    run_layers(model.view, model.view.embed(ids), torch.arange(start)[None, :], reference, 0, None, plan)
    for cache in caches:
        for layer in cache.keys:
            cache.keys[layer][:, :, :start] = reference.keys[layer]
            cache.values[layer][:, :, :start] = reference.values[layer]


@pytest.mark.parametrize("start", [0, 5])
@pytest.mark.parametrize("plan", PLANS, ids=["full", "skipping"])
def test_packed_prefill_gives_the_padded_prefills_logits_and_cache(
    tiny_model: LoadedModel, plan: SkipPlan, start: int
) -> None:
    ids, positions, key_valid, width = _padded_inputs(tiny_model, start)
    view = tiny_model.view
    packed_cache = new_cache(view, plan, ids.shape[0], key_valid.shape[1], ids.device)
    padded_cache = new_cache(view, plan, ids.shape[0], key_valid.shape[1], ids.device)
    _fill_start(tiny_model, plan, [packed_cache, padded_cache], start)
    with torch.inference_mode():
        packed = prefill(view, ids, positions, key_valid, packed_cache, plan, start=start)
        hidden = run_layers(view, view.embed(ids), positions, padded_cache, start, key_valid, plan)
        padded = logits_of_last(view, hidden)
    torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-4)
    for row, layout in enumerate(pack_rows(key_valid, start, width)):
        real = slice(layout.cache_start, layout.cache_end)
        for layer in packed_cache.keys:
            torch.testing.assert_close(packed_cache.keys[layer][row, :, real], padded_cache.keys[layer][row, :, real])
            torch.testing.assert_close(
                packed_cache.values[layer][row, :, real], padded_cache.values[layer][row, :, real]
            )


def test_packed_prefill_multiplies_only_the_real_tokens(tiny_model: LoadedModel) -> None:
    """The point of packing: the projections see each prompt token once, and no padding."""
    ids, positions, key_valid, width = _padded_inputs(tiny_model, 0)
    view = tiny_model.view
    seen: list[int] = []
    hook = view.mlp[0].gate_up.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:-1].numel()))
    try:
        with torch.inference_mode():
            prefill(view, ids, positions, key_valid, new_cache(view, SkipPlan(), ids.shape[0], width + 1, ids.device),
                    SkipPlan())
    finally:
        hook.remove()
    assert seen == [sum(len(tiny_model.encode(p)) for p in PROMPTS)]
    assert seen[0] < ids.numel(), "the batch must contain padding for this test to mean anything"


def test_decoding_after_a_packed_prefill_never_reads_stale_padding(tiny_model: LoadedModel) -> None:
    """Padding columns are masked, but NaN left in them by an earlier use of the memory would still poison SDPA."""
    ids, positions, key_valid, width = _padded_inputs(tiny_model, 0)
    view = tiny_model.view
    cache = new_cache(view, SkipPlan(), ids.shape[0], key_valid.shape[1], ids.device)
    for store in (cache.keys, cache.values):
        for tensor in store.values():
            tensor.fill_(float("nan"))
    with torch.inference_mode():
        logits = prefill(view, ids, positions, key_valid, cache, SkipPlan())
        tokens = logits.argmax(dim=-1)
        logits = decode_one(view, tokens, positions[:, -1] + 1, key_valid, cache, width, SkipPlan())
    assert torch.isfinite(logits).all()
