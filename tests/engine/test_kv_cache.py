"""Dropping finished rows from a batch's KV cache: the same rows as a full re-selection, with one copy per hole."""

from __future__ import annotations

import pytest
import torch

from litestage_chain.engine.kv_cache import KVCache


def filled(batch: int) -> KVCache:
    cache = KVCache([0, 2], batch, 2, 4, 6, torch.float32, torch.device("cpu"))
    for layer in (0, 2):
        cache.keys[layer].copy_(torch.randn(batch, 2, 6, 4, generator=torch.Generator().manual_seed(layer)))
        cache.values[layer].copy_(torch.randn(batch, 2, 6, 4, generator=torch.Generator().manual_seed(layer + 1)))
    return cache


@pytest.mark.parametrize("finished", [[0], [7], [1, 4], [5, 6, 7], [0, 1, 2, 3, 4, 5, 6], [2, 3, 6]])
def test_dropped_rows_leave_exactly_the_kept_rows_in_the_returned_order(finished: list[int]) -> None:
    cache, reference = filled(8), filled(8)
    order = cache.drop_rows(finished)
    assert sorted(order) == [slot for slot in range(8) if slot not in finished]
    kept = torch.tensor(order)
    assert cache.batch_size == 8 - len(finished)
    for layer in (0, 2):
        assert torch.equal(cache.keys[layer], reference.keys[layer].index_select(0, kept))
        assert torch.equal(cache.values[layer], reference.values[layer].index_select(0, kept))
        assert cache.keys[layer].is_contiguous()
    holes = [slot for slot in finished if slot < 8 - len(finished)]
    assert sum(order[slot] != slot for slot in range(len(order))) == len(holes), "one row moved per hole, no more"


def test_dropping_a_row_outside_the_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="not all in a batch of 8"):
        filled(8).drop_rows([8])
