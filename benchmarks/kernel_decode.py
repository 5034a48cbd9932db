"""Engine decode speed per weight format and kernel path, side by side in one process.

Why: the kernel paths (avx512_vnni, avx2, neon, portable) are meant to make int8/int4 decode faster than
the float32 engine on every CPU; this measures exactly that ratio on one machine. Every round runs every
method once on the same chat prompt (greedy, exactly `--tokens` new tokens), in the same process and thread
count; medians over rounds after a warm-up round. Two clocks: wall time (what a user waits) and CPU time
of the process (on a machine shared with other work, wall time mostly measures the other processes; CPU
time still counts memory stalls, so it is not contention-free either). Decode CPU time is the CPU time of
the `--tokens` run minus that of a 1-token run (the prefill). With `--prefill-tokens N` every method also
prefills one prompt of exactly N tokens (a 1-token generation; wall: its prefill time, CPU: the whole call).

A path is forced with `force_isa` and the modules then route calls as they would on a CPU whose best path that
is: on `portable`, calls of more than `formats.PORTABLE_MAX_ROWS` rows (prefill) go through the tiled
dequantise-then-ATen product, not the kernel.

With `--fused both` every format and path runs twice, decoding through the compiled decode step
(`engine/fused_decode.py`, the default where a model allows it) and through the Python step, and the script says
whether the two produced the same greedy tokens.

    python benchmarks/kernel_decode.py --source smollm2-135m --threads 1 --tokens 64 --rounds 5 \\
        [--paths avx2,portable] [--prefill-tokens 300] [--fused both] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from litestage_chain import GenerationConfig, SkipPlan, generate, load_model  # noqa: E402
from litestage_chain.engine import fused_decode  # noqa: E402
from litestage_chain.engine.quant import formats, get_kernels, kernels_status  # noqa: E402

PROMPT = "Write a Python function that checks whether a number is prime."


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def decode_rates(lm, ids: list[int], tokens: int) -> tuple[float, float]:  # noqa: ANN001
    """(wall tok/s of the decode, tok/s per CPU-second of the decode) for one greedy run."""
    start = time.process_time()
    generate(lm, [ids], plan=SkipPlan(), config=GenerationConfig(max_new_tokens=1, ignore_eos=True))
    prefill_cpu = time.process_time() - start
    start = time.process_time()
    result = generate(lm, [ids], plan=SkipPlan(), config=GenerationConfig(max_new_tokens=tokens, ignore_eos=True))[0]
    decode_cpu = time.process_time() - start - prefill_cpu
    return result.generated_tokens / result.decode_seconds, result.generated_tokens / max(decode_cpu, 1e-9)


def prefill_rates(lm, ids: list[int]) -> tuple[float, float]:  # noqa: ANN001
    """(wall prompt tok/s of the prefill, prompt tok per CPU-second of the whole 1-token call) for one prompt."""
    start = time.process_time()
    result = generate(lm, [ids], plan=SkipPlan(), config=GenerationConfig(max_new_tokens=1, ignore_eos=True))[0]
    cpu = time.process_time() - start
    if result.reused_tokens:
        raise RuntimeError("the prefill reused cached tokens: it would not measure the projections")
    return len(ids) / result.prefill_seconds, len(ids) / max(cpu, 1e-9)


def long_prompt(lm, tokens: int) -> list[int]:  # noqa: ANN001
    """A chat prompt of exactly `tokens` tokens (the benchmark prompt repeated, cut to length)."""
    text = " ".join([PROMPT] * (tokens // 8 + 1))
    ids = lm.encode(lm.render_chat([{"role": "user", "content": text}]))
    if len(ids) < tokens:
        raise ValueError(f"could not build a {tokens}-token prompt")
    return ids[:tokens]


def print_table(title: str, samples: dict[str, list[tuple[float, float]]]) -> None:
    """One markdown table of wall and CPU rates per method, with medians of per-round ratios to float32."""
    base = samples["engine, float32"]
    print(title)
    print("| method | tok/s wall (median) | runs | vs float32 wall (median of per-round ratios) "
          "| tok per CPU-s (median) | vs float32 CPU |")
    print("|---|---:|---|---:|---:|---:|")
    for name, values in samples.items():
        wall = [v[0] for v in values]
        cpu = [v[1] for v in values]
        ratio_wall = statistics.median(w / b[0] for w, b in zip(wall, base))
        ratio_cpu = statistics.median(c / b[1] for c, b in zip(cpu, base))
        print(f"| {name} | {statistics.median(wall):.1f} | {[round(v, 1) for v in wall]} | {ratio_wall:.2f}x "
              f"| {statistics.median(cpu):.1f} | {ratio_cpu:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="smollm2-135m")
    parser.add_argument("--formats", default="int8,int4")
    parser.add_argument("--paths", default="", help="kernel paths to run the formats on (default: the active one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefill-tokens", type=int, default=0, help="also time a prefill of this many tokens")
    parser.add_argument("--fused", choices=("on", "off", "both"), default="on",
                        help="decode steps through the compiled step (on), the Python one (off), or each in turn")
    parser.add_argument("--json", type=Path, help="also write the samples here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = get_kernels()
    if kernels is None:
        sys.exit(f"the compiled kernels are not available: {kernels_status()}")
    paths = [p for p in args.paths.split(",") if p] or [kernels.kernel_isa()]

    reference = load_model(args.source)
    ids = reference.encode(reference.render_chat([{"role": "user", "content": PROMPT}]))
    long_ids = long_prompt(reference, args.prefill_tokens) if args.prefill_tokens else []

    def measure(lm) -> tuple[float, ...]:  # noqa: ANN001
        prefill = prefill_rates(lm, long_ids) if long_ids else ()
        return (*decode_rates(lm, ids, args.tokens), *prefill)

    methods: dict[str, Callable[[], tuple[float, ...]]] = {"engine, float32": lambda: measure(reference)}
    same: dict[str, list[Callable[[], list[int]]]] = defaultdict(list)

    def greedy(lm, path: str, fused: bool) -> list[int]:  # noqa: ANN001
        with formats.forced_path(path), fused_decode.enabled_as(fused):
            config = GenerationConfig(max_new_tokens=args.tokens, ignore_eos=True)
            return generate(lm, [ids], plan=SkipPlan(), config=config)[0].token_ids
    for fmt in args.formats.split(","):
        lm = load_model(args.source, weights=fmt)
        gc.collect()
        for path in paths:
            for fused in {"on": [True], "off": [False], "both": [True, False]}[args.fused]:

                def run(lm=lm, path=path, fused=fused) -> tuple[float, ...]:  # noqa: ANN001
                    # the modules route calls as on a CPU whose best path this is
                    with formats.forced_path(path), fused_decode.enabled_as(fused):
                        return measure(lm)

                step = "" if args.fused != "both" else (", compiled step" if fused else ", python step")
                methods[f"engine, {fmt} ({path}{step})"] = run
                if args.fused == "both":
                    same[f"{fmt} ({path})"].append(lambda lm=lm, path=path, fused=fused: greedy(lm, path, fused))
    for method in methods.values():  # warm-up round
        method()
    samples: dict[str, list[tuple[float, ...]]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, method in methods.items():
            samples[name].append(method())
    print(f"model {args.source}; cpu {_cpu_name()}; {args.tokens} new tokens, greedy; threads {args.threads}; "
          f"{args.rounds} rounds after a warm-up; kernels {kernels_status()}; "
          f"portable path: kernel up to {formats.PORTABLE_MAX_ROWS} rows")
    print_table("decode", {name: [v[:2] for v in values] for name, values in samples.items()})
    if long_ids:
        print_table(f"prefill of {len(long_ids)} tokens (prompt tok/s)",
                    {name: [v[2:] for v in values] for name, values in samples.items()})
    agreement = {name: runs[0]() == runs[1]() for name, runs in same.items()}
    for name, equal in agreement.items():
        print(f"{name}: compiled and python steps give {'the same' if equal else 'DIFFERENT'} {args.tokens} tokens")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "samples": samples,
                                         "same_tokens": agreement}, indent=1))


if __name__ == "__main__":
    main()
