"""How a decoder layer's projection time grows with the rows it multiplies at once (batch rows x tokens).

Why: batched decoding multiplies every weight into one row per prompt of the batch, and self-speculative decoding
(draft with a layer-skipped model, verify the drafted tokens in one full-model forward) into several rows per
prompt. Either is cheap only while the kernel's time is set by reading the weights, not by the rows. This times one
layer's seven projections (q, k, v, o, gate, up, down) of Qwen2.5-1.5B or SmolLM2-135M through the compiled int8 /
int4 kernels for each row count, in rounds interleaved across row counts (and across kernel builds), and reports
medians.

    python benchmarks/kernel_rows.py --model qwen2.5-coder-1.5b --formats int4 int8 --threads 1 \
        --out benchmarks/results/kernel-rows-qwen.json
    # A/B a kernel change in one process: the same calls through another version of cpu_gemv.cpp, alternated
    git show HEAD~1:litestage_chain/engine/quant/csrc/cpu_gemv.cpp > /tmp/cpu_gemv_before.cpp
    python benchmarks/kernel_rows.py --baseline-source /tmp/cpu_gemv_before.cpp --formats int4 int8
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain.engine.quant import kernels  # noqa: E402
from litestage_chain.engine.quant.formats import convert_linear  # noqa: E402

# (hidden size, intermediate size, key/value width) of each model's layers
SHAPES = {"qwen2.5-coder-1.5b": (1536, 8960, 256), "smollm2-135m": (576, 1536, 192)}
ROWS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 40)


def layer_projections(model: str, fmt: str) -> list[torch.nn.Module]:
    """One decoder layer's q, k, v, o, gate, up and down projections in the given weight format."""
    hidden, intermediate, kv = SHAPES[model]
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
              (hidden, intermediate), (hidden, intermediate), (intermediate, hidden)]
    return [convert_linear(torch.nn.Linear(i, o, bias=False), fmt) for i, o in shapes]


def layer_call(module: ModuleType, fmt: str, projections: list[torch.nn.Module]) -> Callable[[int], float]:
    """A function timing one pass of every projection over `rows` rows through `module`'s kernel."""

    def run(rows: int) -> float:
        inputs = [torch.randn(rows, p.padded_in_features) for p in projections]
        started = time.perf_counter()
        for p, x in zip(projections, inputs):
            if fmt == "int8":
                module.int8_blocked_gemv(x, p.qweight, p.scales, p.out_features)
            else:
                module.int4_blocked_gemv(x, p.qweight, p.params, p.out_features)
        return time.perf_counter() - started

    return run


def build_baseline(source: Path) -> ModuleType:
    """Compile another version of the kernel source as a module of its own name (both can be loaded at once)."""
    key = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    root = Path(tempfile.gettempdir())
    # The build names its object after the source file, so the copy keeps the name; it lives outside the build
    # directory, which `build_extension` deletes and recreates when it holds no finished build.
    sources = root / f"litestage_kernel_baseline_{key}_src"
    sources.mkdir(exist_ok=True)
    copy = sources / "cpu_gemv.cpp"
    copy.write_bytes(source.read_bytes())
    return kernels.build_extension(copy, f"litestage_kernel_baseline_{key}", root / f"litestage_kernel_baseline_{key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), default="qwen2.5-coder-1.5b")
    parser.add_argument("--formats", nargs="+", choices=["int4", "int8"], default=["int4", "int8"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline-source", type=Path, help="another cpu_gemv.cpp to time alongside, alternated")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    current = kernels.get_kernels()
    if current is None:
        sys.exit(f"the compiled kernels are not available: {kernels.kernels_status()}")
    builds = {"current": current}
    if args.baseline_source:
        builds["baseline"] = build_baseline(args.baseline_source)
    results: dict[str, dict[str, dict[int, float]]] = {}
    for fmt in args.formats:
        projections = layer_projections(args.model, fmt)
        calls = {name: layer_call(module, fmt, projections) for name, module in builds.items()}
        samples = {name: {rows: [] for rows in ROWS} for name in builds}
        for name, call in calls.items():  # warm-up: first calls allocate
            for rows in ROWS:
                call(rows)
        for _ in range(args.rounds):
            for rows in ROWS:
                for name, call in calls.items():
                    samples[name][rows].append(call(rows))
        results[fmt] = {name: {r: statistics.median(v) for r, v in by_rows.items()} for name, by_rows in samples.items()}
        print(f"{args.model} {fmt}: one layer's projections, median ms of {args.rounds} rounds, {args.threads} thread(s)")
        header = "".join(f" {name + ' ms':>12} {'x 1 row':>8}" for name in builds)
        print(f"{'rows':>5}{header}" + (f" {'baseline/current':>17}" if "baseline" in builds else ""))
        for rows in ROWS:
            line = f"{rows:>5}"
            for name in builds:
                seconds = results[fmt][name][rows]
                line += f" {seconds * 1e3:>12.3f} {seconds / results[fmt][name][1]:>8.2f}"
            if "baseline" in builds:
                line += f" {results[fmt]['baseline'][rows] / results[fmt]['current'][rows]:>16.2f}x"
            print(line)
    if args.out:
        document = {
            "model": args.model, "threads": args.threads, "rounds": args.rounds,
            "command": " ".join(sys.argv),
            "median_seconds": {
                fmt: {name: {str(r): s for r, s in by_rows.items()} for name, by_rows in per_build.items()}
                for fmt, per_build in results.items()
            },
        }
        args.out.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
