"""Decode speed side by side: llama.cpp, transformers `generate`, and this engine in every weight format.

Why one script: speed claims are ratios, and on a shared machine only numbers measured in the same run, in
alternating rounds, compare. Every round runs every method once on the same chat prompt ("Write a Python function
that checks whether a number is prime."), greedy, exactly `--tokens` new tokens (EOS ignored), with the same thread
count; the table reports medians over rounds after one warm-up round. llama.cpp runs the very GGUF file the engine
converted, in its own environment (llama-cpp-python is a benchmark-only dependency), one fresh process per round.

Methods: llama.cpp (GGUF as shipped); transformers `generate` float32; the engine in each format; the engine in each
integer format with a LiteStage plan that skips 25% of the sub-layers (most redundant first by residual cosine
similarity on the prompt, measured on float32).

`--kernel-paths avx512_vnni,avx2` runs each integer format on each named kernel path (forced, as on a CPU whose
best path that is); `--python-step` adds, per integer format and path, the engine with its compiled batch-1 decode
step switched off (`engine/fused_decode.py`).

    python benchmarks/speed_table.py --source smollm2-135m --threads 1 --tokens 100 --rounds 3 \\
        --llamacpp-python /work/llamacpp-venv/bin/python
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from engine import engine_rate, hf_rate, ranked_sublayers  # noqa: E402

from litestage_chain import SkipPlan, load_model  # noqa: E402
from litestage_chain.engine import fused_decode  # noqa: E402
from litestage_chain.engine.quant import formats, get_kernels  # noqa: E402
from litestage_chain.engine.sources import resolve_source  # noqa: E402

PROMPT = "Write a Python function that checks whether a number is prime."


def llamacpp_rate(python: str, gguf: str, threads: int, tokens: int) -> float:
    """One fresh llama.cpp process: its own warm-up, then one timed run."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [python, str(HERE / "llamacpp_anchor.py"), gguf, "--threads", str(threads), "--tokens", str(tokens),
             "--runs", "1", "--json", out.name],
            check=True, capture_output=True,
        )
        return float(json.loads(Path(out.name).read_text())[0]["decode_tok_s_median"])


def _on_path(path: str, fused: bool, run: Callable[[], float]) -> float:
    """`run()` with the kernels forced onto `path` ("" = the best) and the compiled decode step on or off."""
    forced = formats.forced_path(path) if path and get_kernels() is not None else nullcontext()
    with forced, fused_decode.enabled_as(fused):
        return run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="smollm2-135m")
    parser.add_argument("--formats", default="float32,bfloat16,int8,int4")
    parser.add_argument("--skip-formats", default="int8,int4", help="formats also run with the 25%% skip plan")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--llamacpp-python", help="python of an environment with llama-cpp-python")
    parser.add_argument("--json", type=Path, help="also write the samples here")
    parser.add_argument("--no-transformers", action="store_true",
                        help="leave out transformers float32 (slow on the 1.5B model; engine vs llama.cpp only)")
    parser.add_argument("--kernel-paths", default="", help="kernel paths for the integer formats (default: the best)")
    parser.add_argument("--python-step", action="store_true",
                        help="also run the integer formats without the compiled decode step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    reference = load_model(args.source)
    prompt = [reference.encode(reference.render_chat([{"role": "user", "content": PROMPT}]))]
    order = ranked_sublayers(reference, prompt[0])
    quarter = SkipPlan.from_sublayers(order[: round(0.25 * len(order))])
    methods: dict[str, Callable[[], float]] = {}
    if args.llamacpp_python:
        gguf = resolve_source(args.source).location
        methods["llama.cpp (GGUF as shipped)"] = lambda: llamacpp_rate(args.llamacpp_python, gguf, args.threads,
                                                                       args.tokens)
    if not args.no_transformers:
        methods["transformers generate, float32"] = lambda: hf_rate(reference, prompt, args.tokens)
    for fmt in args.formats.split(","):
        lm = reference if fmt == "float32" else load_model(args.source, weights=fmt)
        gc.collect()
        if fmt not in ("int8", "int4") or not args.kernel_paths:
            variants = [("", "", True)] + ([("", ", python step", False)] if args.python_step and fmt in ("int8", "int4")
                                           else [])
        else:
            variants = [(path, f" ({path}{step})", fused) for path in args.kernel_paths.split(",")
                        for step, fused in [("", True)] + ([(", python step", False)] if args.python_step else [])]
        for path, label, fused in variants:
            methods[f"engine, {fmt}{label}"] = lambda lm=lm, path=path, fused=fused: _on_path(
                path, fused, lambda: engine_rate(lm, prompt, SkipPlan(), args.tokens))
            if fmt in args.skip_formats.split(","):
                methods[f"engine, {fmt}{label} + skip 25% ({quarter.num_skipped} sub-layers)"] = (
                    lambda lm=lm, path=path, fused=fused: _on_path(
                        path, fused, lambda: engine_rate(lm, prompt, quarter, args.tokens))
                )
    for method in methods.values():  # warm-up round
        method()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, method in methods.items():
            samples[name].append(method())
    median = {name: statistics.median(values) for name, values in samples.items()}
    base = median.get("transformers generate, float32")
    anchor_name = "llama.cpp (GGUF as shipped)"
    anchor = median.get(anchor_name)
    print(f"model {args.source}; {args.tokens} new tokens, greedy; torch threads {torch.get_num_threads()}; "
          f"{args.rounds} rounds after a warm-up")
    print("| method | decode tok/s (median) | runs | vs transformers float32 | vs llama.cpp (median of per-round ratios) |")
    print("|---|---:|---|---:|---:|")
    for name, rate in median.items():
        versus = "-"
        if anchor:  # per-round ratios: both measured minutes apart at most, under the same load
            versus = f"{statistics.median(v / a for v, a in zip(samples[name], samples[anchor_name])):.2f}x"
        versus_hf = f"{rate / base:.2f}x" if base else "-"
        print(f"| {name} | {rate:.1f} | {[round(v, 1) for v in samples[name]]} | {versus_hf} | {versus} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
