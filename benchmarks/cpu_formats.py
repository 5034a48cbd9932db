"""Measure CPU weight formats: GEMV speed per shape, the GEMV/matmul crossover, engine decode speed.

Why: decode on CPU is bound by reading weights, so the question per format is how close a
batch-1 product gets to memory bandwidth, and whether that survives inside the real decode
loop. All timings are medians over interleaved rounds (every format runs once per round), so
noise from other work on the machine hits all formats alike and the ratios stay meaningful.

    python benchmarks/cpu_formats.py gemv [--model smollm2|qwen|all]
    python benchmarks/cpu_formats.py rows
    python benchmarks/cpu_formats.py decode --source smollm2-135m [--tokens 64]
    python benchmarks/cpu_formats.py quality --source smollm2-135m
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain.engine.quant import convert_linear, kernels_status  # noqa: E402
from litestage_chain.engine.quant.formats import WEIGHT_FORMATS  # noqa: E402

# (out, in) of every distinct Linear a decode step runs, fused as the engine fuses them
SHAPES: dict[str, list[tuple[str, int, int]]] = {
    "smollm2": [
        ("o_proj", 576, 576),
        ("k/v_proj", 192, 576),
        ("qkv fused", 960, 576),
        ("up/gate", 1536, 576),
        ("gate_up fused", 3072, 576),
        ("down", 576, 1536),
        ("lm_head", 49152, 576),
    ],
    "qwen": [
        ("o_proj", 1536, 1536),
        ("k/v_proj", 256, 1536),
        ("qkv fused", 2048, 1536),
        ("up/gate", 8960, 1536),
        ("gate_up fused", 17920, 1536),
        ("down", 1536, 8960),
        ("lm_head", 151936, 1536),
    ],
}


def _weight_bytes(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.weight.numel() * module.weight.element_size()
    return module.weight_bytes()  # type: ignore[operator]


def interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin after one warm-up round."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[name].append((time.perf_counter() - start) / reps)
    return {name: statistics.median(values) for name, values in samples.items()}


@torch.inference_mode()
def bench_gemv(models: list[str], rounds: int) -> None:
    print(f"kernels: {kernels_status()}; threads: {torch.get_num_threads()}")
    print("| model | layer | out x in | format | us/call | GB/s (weights) | speedup vs fp32 |")
    print("|---|---|---|---|---:|---:|---:|")
    for model in models:
        for label, n, k in SHAPES[model]:
            linear = nn.Linear(k, n, bias=False)
            nn.init.normal_(linear.weight, std=0.02)
            modules = {fmt: convert_linear(linear, fmt) for fmt in WEIGHT_FORMATS}  # type: ignore[arg-type]
            x = torch.randn(1, k)
            reps = max(1, int(3e7 / (n * k)))
            times = interleaved_medians({fmt: (lambda m=m: m(x)) for fmt, m in modules.items()}, rounds, reps)
            for fmt, seconds in times.items():
                gbps = _weight_bytes(modules[fmt]) / seconds / 1e9
                print(
                    f"| {model} | {label} | {n}x{k} | {fmt} | {seconds * 1e6:.0f} | {gbps:.1f} | "
                    f"{times['float32'] / seconds:.2f} |"
                )
            del modules, linear


@torch.inference_mode()
def bench_rows(rounds: int) -> None:
    """Where the compiled GEMV stops paying versus dequantise + matmul, per row count."""
    from litestage_chain.engine.quant import formats

    print(f"kernels: {kernels_status()}")
    print("| shape | format | rows | kernel us | dequant+matmul us | fp32 matmul us |")
    print("|---|---|---:|---:|---:|---:|")
    kernels = formats._fast_kernels()
    if kernels is None:
        print("no compiled VNNI kernels here: nothing to compare")
        return
    for n, k in [(3072, 576), (8960, 1536)]:
        linear = nn.Linear(k, n, bias=False)
        for fmt in ("int8", "int4"):
            module = convert_linear(linear, fmt)  # type: ignore[arg-type]
            for rows in (1, 4, 8, 16, 32, 64, 128, 256):
                x = torch.randn(rows, k)
                fns = {
                    "kernel": lambda: module._kernel(kernels, x),
                    "dequant": lambda: torch.nn.functional.linear(x, module.dequantize()),
                    "fp32": lambda: linear(x),
                }
                t = interleaved_medians(fns, rounds, 2)
                print(
                    f"| {n}x{k} | {fmt} | {rows} | {t['kernel'] * 1e6:.0f} | {t['dequant'] * 1e6:.0f} | "
                    f"{t['fp32'] * 1e6:.0f} |"
                )


def _agreement(a: list[int], b: list[int]) -> float:
    """Fraction of greedy tokens equal to the float32 run's, up to the first difference."""
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    return same / max(1, len(b))


def bench_decode(source: str, tokens: int, rounds: int, formats: list[str]) -> None:
    """Decode tokens/s through the engine per format: one warm-up each, then ``rounds``
    interleaved rounds (every format once per round) so load changes hit all formats alike."""
    from litestage_chain import GenerationConfig, generate, load_model
    from litestage_chain.engine.quant.view import quantize_decoder_view, view_linears

    lm = load_model(source)
    prompt = lm.render_chat([{"role": "user", "content": "Write a Python function that checks whether a number is prime."}])
    cfg = GenerationConfig(max_new_tokens=tokens, temperature=0.0)
    print(f"model: {lm.name}; kernels: {kernels_status()}; threads: {torch.get_num_threads()}; new tokens: {tokens}")
    variants = {}
    for fmt in formats:
        variant = copy.copy(lm)
        start = time.perf_counter()
        variant.view = quantize_decoder_view(lm.view, fmt, weights_id=lm.weights_sha256)  # type: ignore[arg-type]
        print(f"{fmt}: convert/load {time.perf_counter() - start:.1f}s")
        generate(variant, [prompt], config=GenerationConfig(max_new_tokens=4, temperature=0.0))  # warm-up
        variants[fmt] = variant
    runs: dict[str, list] = {fmt: [] for fmt in formats}
    for _ in range(rounds):
        for fmt, variant in variants.items():
            runs[fmt].append(generate(variant, [prompt], config=cfg)[0])
    print("| format | decode tok/s (median) | runs | prefill s | weight MB read/token | greedy prefix match vs first |")
    print("|---|---:|---|---:|---:|---:|")
    reference = runs[formats[0]][0].token_ids
    for fmt in formats:
        rates = [r.generated_tokens / r.decode_seconds for r in runs[fmt] if r.decode_seconds > 0]
        mb = sum(_weight_bytes(m) for m in view_linears(variants[fmt].view).values()) / 1e6
        print(
            f"| {fmt} | {statistics.median(rates):.1f} | {[round(r, 1) for r in rates]} | "
            f"{statistics.median(r.prefill_seconds for r in runs[fmt]):.2f} | {mb:.0f} | "
            f"{_agreement(runs[fmt][0].token_ids, reference):.2f} |"
        )


QUALITY_TEXT = (
    "def is_prime(n: int) -> bool:\n"
    '    """Return True if n is a prime number."""\n'
    "    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n"
    "        if n % i == 0:\n            return False\n        i += 1\n    return True\n\n"
    "The function above checks divisors up to the square root of n, because any factor larger than the "
    "square root must pair with one smaller than it. Layer skipping trades a little accuracy for speed: "
    "a small language model running on a laptop CPU spends most of each decoding step reading its weights "
    "from memory, so storing them in fewer bits makes every token cheaper. The capital of France is Paris, "
    "and the largest planet in the solar system is Jupiter. Water boils at 100 degrees Celsius at sea level."
)


@torch.inference_mode()
def bench_quality(source: str) -> None:
    """Next-token agreement with float32 over a fixed text, per format and arithmetic path.

    "kernel" is the compiled path (int8-rounded activations); "float-act" is the no-kernel
    fallback (dequantised weights, float activations: weight rounding only).
    """
    import torch.nn.functional as F

    from litestage_chain import SkipPlan, load_model
    from litestage_chain.engine.forward import all_logits
    from litestage_chain.engine.quant import formats
    from litestage_chain.engine.quant.view import quantize_decoder_view

    lm = load_model(source)
    ids = torch.tensor(lm.encode(QUALITY_TEXT))
    ref = all_logits(lm.view, ids, SkipPlan())
    ref_logp = F.log_softmax(ref, dim=-1)
    targets = ids[1:]

    def row(label: str, logits: torch.Tensor) -> None:
        logp = F.log_softmax(logits, dim=-1)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean().item()
        top1 = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
        ppl = torch.exp(-logp[:-1].gather(1, targets[:, None]).mean()).item()
        print(f"| {label} | {kl:.4f} | {top1:.3f} | {ppl:.2f} |")

    print(f"model: {lm.name}; {len(ids)} tokens; kernels: {kernels_status()}")
    print("| format / path | mean KL vs fp32 (nats) | top-1 agreement | perplexity |")
    print("|---|---:|---:|---:|")
    row("float32", ref)
    compiled = formats._fast_kernels()
    try:
        for fmt in ("bfloat16", "int8", "int4"):
            view = quantize_decoder_view(lm.view, fmt, weights_id=lm.weights_sha256)  # type: ignore[arg-type]
            paths = [("", compiled)] if fmt == "bfloat16" else [(" kernel", compiled), (" float-act", None)]
            for suffix, kernels in paths:
                if suffix == " kernel" and kernels is None:
                    continue
                formats._fast[:] = [kernels, None]  # this module at every row count
                row(fmt + suffix, all_logits(view, ids, SkipPlan()))
    finally:
        formats._fast.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gemv")
    g.add_argument("--model", choices=["smollm2", "qwen", "all"], default="all")
    g.add_argument("--rounds", type=int, default=9)
    r = sub.add_parser("rows")
    r.add_argument("--rounds", type=int, default=5)
    d = sub.add_parser("decode")
    d.add_argument("--source", default="smollm2-135m")
    d.add_argument("--tokens", type=int, default=64)
    d.add_argument("--rounds", type=int, default=3)
    d.add_argument("--formats", default=",".join(WEIGHT_FORMATS))
    q = sub.add_parser("quality")
    q.add_argument("--source", default="smollm2-135m")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cmd == "gemv":
        bench_gemv(["smollm2", "qwen"] if args.model == "all" else [args.model], args.rounds)
    elif args.cmd == "rows":
        bench_rows(args.rounds)
    elif args.cmd == "quality":
        bench_quality(args.source)
    else:
        bench_decode(args.source, args.tokens, args.rounds, args.formats.split(","))


if __name__ == "__main__":
    main()
