"""One GEMV per kernel path on this CPU, side by side with float32: which paths beat the float32 matmul.

Why: each path (avx512_vnni, avx2, neon, portable) is only worth using where it is faster than the
float32 ATen product it replaces; ``formats.FAST_ISAS`` lists the ones that were. Every round runs
every method once (float32, then each format on each path, forced with ``force_isa``), so machine
noise hits all alike; the table gives medians and the ratio to float32.

    python benchmarks/kernel_isas.py [--shapes 1536x8960 8960x1536 576x1536] [--rows 1] [--rounds 15]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain.engine.quant import convert_linear, get_kernels, kernels_status  # noqa: E402


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _time(fn, reps: int, clock) -> float:  # noqa: ANN001
    start = clock()
    for _ in range(reps):
        fn()
    return (clock() - start) / reps


def bench_shape(out_f: int, in_f: int, rows: int, rounds: int, isas: list[str], clock) -> list[tuple[str, float]]:  # noqa: ANN001
    kernels = get_kernels()
    lin = nn.Linear(in_f, out_f, bias=False)
    x = torch.randn(rows, in_f)
    mods = {fmt: convert_linear(lin, fmt) for fmt in ("int8", "int4")}
    methods: dict[str, object] = {"float32": lambda: torch.nn.functional.linear(x, lin.weight)}
    for isa in isas:
        for fmt, mod in mods.items():
            if fmt == "int8":
                call = lambda m=mod: kernels.int8_blocked_gemv(x, m.qweight, m.scales, out_f)  # noqa: E731
            else:
                call = lambda m=mod: kernels.int4_blocked_gemv(x, m.qweight, m.params, out_f)  # noqa: E731
            methods[f"{fmt} {isa}"] = (isa, call)
    reps = max(3, int(2e8 / (out_f * in_f * 4 * max(rows, 1))))
    times: dict[str, list[float]] = {name: [] for name in methods}
    with torch.no_grad():
        for _ in range(rounds):
            for name, method in methods.items():
                if isinstance(method, tuple):
                    kernels.force_isa(method[0])
                    fn = method[1]
                else:
                    fn = method
                fn()
                times[name].append(_time(fn, reps, clock))
    kernels.force_isa("")
    return [(name, statistics.median(t)) for name, t in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["1536x8960", "8960x1536", "576x1536", "3072x576"],
                        help="OUTxIN of each Linear")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: process CPU time (default; on a shared machine wall time mostly measures the other "
                             "processes); wall: elapsed time (use it with --threads > 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = get_kernels()
    if kernels is None:
        sys.exit(f"the compiled kernels are not available: {kernels_status()}")
    isas = list(kernels.supported_isas())
    print(f"kernels: {kernels_status()}; paths: {isas}; threads: {torch.get_num_threads()}; rows: {args.rows}; "
          f"cpu: {platform.processor() or platform.machine()}")
    for shape in args.shapes:
        out_f, in_f = (int(v) for v in shape.split("x"))
        results = bench_shape(out_f, in_f, args.rows, args.rounds, isas, CLOCKS[args.clock])
        base = dict(results)["float32"]
        print(f"\n{out_f}x{in_f} (median of {args.rounds} rounds, {args.clock} time)")
        for name, seconds in results:
            print(f"  {name:22s} {seconds * 1e6:9.1f} us   {base / seconds:5.2f}x float32")


if __name__ == "__main__":
    main()
