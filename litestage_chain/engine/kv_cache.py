"""A static, per-call KV cache that holds entries only for the attention sub-layers a plan runs.

Each call owns its cache (nothing is stored on the model), so concurrent calls cannot see each other's keys.
Buffers are allocated once at full length (prompt + max new tokens): decoding writes in place, with no
re-allocation or concatenation per token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class KVCache:
    """Key/value buffers `[batch, kv_heads, capacity, head_dim]` for the layers that run attention."""

    def __init__(
        self,
        layers: list[int],
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (batch_size, num_kv_heads, capacity, head_dim)
        self.capacity = capacity
        self.keys = {layer: torch.empty(shape, dtype=dtype, device=device) for layer in layers}
        self.values = {layer: torch.empty(shape, dtype=dtype, device=device) for layer in layers}
        self.batch_size = batch_size
        self.dtype = dtype
        self.fused_session: object = None
        """The compiled decode step's binding of these buffers (`fused_decode.py`); dropped when they are replaced."""

    def fused_ok(self) -> bool:
        """Whether the compiled decode step can use these buffers: one row, float32, on the CPU."""
        return self.batch_size == 1 and self.dtype == torch.float32 and all(
            t.device.type == "cpu" for t in self.keys.values())

    def write(
        self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor, row: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new entries at positions `start..start+T` and return all entries up to there.

        With `row`, only that batch row is written and returned (`keys` is then [1, kv_heads, T, head_dim]).
        """
        end = start + keys.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} > capacity {self.capacity}")
        rows = slice(None) if row is None else slice(row, row + 1)
        self.keys[layer][rows, :, start:end] = keys
        self.values[layer][rows, :, start:end] = values
        return self.keys[layer][rows, :, :end], self.values[layer][rows, :, :end]

    def clear_row(self, layer: int, row: int, start: int, end: int) -> None:
        """Zero one row's columns `[start, end)` (padding that nothing writes, so it never holds NaN garbage)."""
        if end > start:
            self.keys[layer][row, :, start:end] = 0
            self.values[layer][row, :, start:end] = 0

    def drop_rows(self, finished: Sequence[int]) -> list[int]:
        """Remove the `finished` batch rows; return the old slot of every row kept, in its new order.

        Why not `index_select` on the kept rows: it copies every kept row's whole buffer, and a row's buffer is large at a few-shot
        context (about 90 MB on a 28-layer model with 1,600 columns: 60-250 ms a call on one core, as much as one
        or two decode steps, paid each time a row of the batch finishes). Here each hole below the new end is filled
        by moving one live row from above it, and the buffers are then narrowed, which copies nothing: one row
        copied per hole, none when the finished rows are the last ones. Apply the returned order to everything
        else indexed by slot (tokens, positions, key masks).
        """
        gone = set(finished)
        if not gone <= set(range(self.batch_size)):
            raise ValueError(f"rows {sorted(gone)} are not all in a batch of {self.batch_size}")
        kept = self.batch_size - len(gone)
        holes = sorted(slot for slot in gone if slot < kept)
        movers = [slot for slot in range(kept, self.batch_size) if slot not in gone]
        order = list(range(kept))
        for hole, mover in zip(holes, movers, strict=True):
            for store in (self.keys, self.values):
                for buffer in store.values():
                    buffer[hole].copy_(buffer[mover])
            order[hole] = mover
        for store in (self.keys, self.values):
            for layer in store:
                store[layer] = store[layer][:kept]
        self.batch_size = kept
        self.fused_session = None
        return order
