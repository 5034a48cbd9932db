"""Where the portable kernel path stops beating float32: projection time per row count, three ways.

Why: on a CPU with none of the SIMD paths (avx512_vnni, avx2, neon) the int8/int4 modules run the portable C++
kernel, which reads 4-6x fewer bytes than float32 but does more arithmetic per weight. With few rows (decode, small
batches) reading the weights dominates and the kernel wins; with many rows (prefill) ATen's float32 GEMM reuses
each weight for many rows and wins. This times, for each row count, the projections the engine runs per layer
(fused q/k/v, o, fused gate/up, down) of several layers (so the weights come from memory, as in decode, not from
cache) five ways: float32 ``F.linear``; the kernel on the forced path; the weight dequantised on the fly a
cache-sized tile at a time, each tile through ATen's GEMM (what the modules do above their row limit,
``formats.PORTABLE_MAX_ROWS``); the whole weight dequantised by the same compiled loop, then ``F.linear``; and the
torch-op ``dequantize()`` then ``F.linear`` (why the loop is compiled and tiled). Rounds are interleaved
across methods and row counts; medians of thread CPU time (the machine is shared: wall time would mostly measure
the other processes).

    OMP_NUM_THREADS=1 python benchmarks/portable_rows.py --model smollm2-135m --formats int8 int4 --rounds 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain.engine.quant import kernels  # noqa: E402
from litestage_chain.engine.quant.formats import convert_linear  # noqa: E402

# (hidden size, intermediate size, key/value width) of each model's layers
SHAPES = {"qwen2.5-coder-1.5b": (1536, 8960, 256), "smollm2-135m": (576, 1536, 192)}
ROWS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)


def fused_projections(model: str, layers: int) -> list[torch.nn.Linear]:
    """`layers` layers' float32 qkv, o, gate_up and down projections, as the engine's decoder view fuses them."""
    hidden, intermediate, kv = SHAPES[model]
    shapes = [(hidden, hidden + 2 * kv), (hidden, hidden), (hidden, 2 * intermediate), (intermediate, hidden)]
    return [torch.nn.Linear(i, o, bias=False) for _ in range(layers) for i, o in shapes]


def timed(run: Callable[[torch.Tensor, int], None], widths: list[int]) -> Callable[[int], float]:
    """A function returning the thread CPU seconds of `run(x, index)` over every projection for `rows` rows."""

    def call(rows: int) -> float:
        inputs = [torch.randn(rows, width) for width in widths]
        started = time.thread_time()
        for index, x in enumerate(inputs):
            run(x, index)
        return time.thread_time() - started

    return call


def methods_for(fmt: str, path: str, linears: list[torch.nn.Linear]) -> dict[str, Callable[[int], float]]:
    """float32, the kernel on `path`, and dequantise-then-``F.linear`` (compiled, torch ops) on the same projections."""
    module = kernels.get_kernels()
    converted = [convert_linear(linear, fmt) for linear in linears]  # type: ignore[arg-type]
    widths = [linear.in_features for linear in linears]

    def float32(x: torch.Tensor, i: int) -> None:
        F.linear(x, linears[i].weight)

    def kernel(x: torch.Tensor, i: int) -> None:
        q = converted[i]
        module.force_isa(path)
        try:
            if fmt == "int8":
                module.int8_blocked_gemv(x, q.qweight, q.scales, q.out_features)
            else:
                module.int4_blocked_gemv(x, q.qweight, q.params, q.out_features)
        finally:
            module.force_isa("")

    def tiled(x: torch.Tensor, i: int) -> None:
        converted[i]._tiled_linear(module, x)

    def dequantised(x: torch.Tensor, i: int) -> None:
        F.linear(x, converted[i]._dequantize_compiled(module))

    def torch_dequantised(x: torch.Tensor, i: int) -> None:
        F.linear(x, converted[i].dequantize())

    return {"float32": timed(float32, widths), f"{fmt} {path}": timed(kernel, widths),
            f"{fmt} tiles+aten": timed(tiled, widths), f"{fmt} dequantise+aten": timed(dequantised, widths),
            f"{fmt} torch dequantise+aten": timed(torch_dequantised, widths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--formats", nargs="+", choices=["int4", "int8"], default=["int8", "int4"])
    parser.add_argument("--path", default="portable", help="kernel path to force (default portable)")
    parser.add_argument("--layers", type=int, default=4, help="distinct layers, so the weights are not cache-hot")
    parser.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if kernels.get_kernels() is None:
        sys.exit(f"the compiled kernels are not available: {kernels.kernels_status()}")
    linears = fused_projections(args.model, args.layers)
    methods: dict[str, Callable[[int], float]] = {}
    for fmt in args.formats:
        methods |= methods_for(fmt, args.path, linears)
    samples: dict[str, dict[int, list[float]]] = {name: {rows: [] for rows in args.rows} for name in methods}
    with torch.no_grad():
        for call in methods.values():  # warm-up: first calls allocate
            for rows in args.rows:
                call(rows)
        for _ in range(args.rounds):
            for rows in args.rows:
                for name, call in methods.items():
                    samples[name][rows].append(call(rows))
    medians = {name: {rows: statistics.median(v) for rows, v in by_rows.items()} for name, by_rows in samples.items()}
    print(f"{args.model}: {args.layers} layers' fused projections, median thread CPU ms of {args.rounds} rounds, "
          f"1 thread; (x) = float32 time / method time")
    print("| rows | " + " | ".join(methods) + " |")
    print("|---:|" + "---:|" * len(methods))
    for rows in args.rows:
        base = medians["float32"][rows]
        cells = [f"{medians[name][rows] * 1e3:.2f} ({base / medians[name][rows]:.2f}x)" for name in methods]
        print(f"| {rows} | " + " | ".join(cells) + " |")
    if args.out:
        document = {"args": {k: str(v) for k, v in vars(args).items()}, "command": " ".join(sys.argv),
                    "median_seconds": {name: {str(r): s for r, s in m.items()} for name, m in medians.items()}}
        args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
