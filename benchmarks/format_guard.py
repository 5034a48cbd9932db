"""Accuracy guard for the CPU weight formats: does a cheaper format change what the model answers?

Why: a weight format is only a speed-up if it leaves the answers alone. For each format this measures, against
float32 on the same model:

* greedy agreement on a fixed prompt set (share of float32's generated tokens reproduced before the first
  difference, and the share of prompts whose whole output is identical);
* the three-stage chain on N benchmark dev questions (full model, no skipping, no early exit, greedy):
  accuracy, the share of questions answered exactly as float32 answered them, and mean seconds per question.

A format that loses more than 1 accuracy point against float32 must not be a model's default format.
Every format's result is written to ``OUT/<format>.json`` as soon as it is done; a re-run skips finished formats.

    python benchmarks/format_guard.py --source smollm2-135m --data ../shared/data --n 100 --out DIR
    python benchmarks/format_guard.py --source qwen2.5-coder-1.5b --formats float32,int8,int4 --out DIR
    # as a CPU with only the portable kernel path would run it (float32 results can be copied from a normal run)
    python benchmarks/format_guard.py --source smollm2-135m --formats int8,int4 --kernel-path portable --out DIR
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain import GenerationConfig, SkipPlan, generate, load_model  # noqa: E402
from litestage_chain.budgets.stages import STAGES  # noqa: E402
from litestage_chain.data import report_questions  # noqa: E402
from litestage_chain.engine import loading  # noqa: E402
from litestage_chain.engine.quant import formats  # noqa: E402
from litestage_chain.engine.quant.kernels import get_kernels, kernels_status  # noqa: E402
from litestage_chain.offline.evaluator import ChainEvaluator  # noqa: E402

PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "Explain in two sentences why the sky is blue.",
    "List three uses of a paperclip.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "Give a short recipe for pancakes.",
    "Why do we need sleep?",
    "Translate 'good morning, how are you?' into French and Spanish.",
]


def prefix_match(tokens: list[int], reference: list[int]) -> float:
    """Share of the reference's tokens reproduced before the first difference."""
    if not reference:
        return 1.0
    same = 0
    for a, b in zip(tokens, reference):
        if a != b:
            break
        same += 1
    return same / len(reference)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.inference_mode()
def run_format(source: str, fmt: str, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    lm = load_model(source, weights=fmt)
    load_seconds = time.perf_counter() - start
    prompts = [lm.render_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    config = GenerationConfig(max_new_tokens=args.tokens, temperature=0.0)
    greedy = [r.token_ids for r in generate(lm, prompts, SkipPlan(), config)]
    questions = report_questions(args.benchmark, args.n, seed=args.seed, data_dir=args.data)
    evaluator = ChainEvaluator(lm, early_exit=None, batch_size=args.batch_size, progress=not args.no_progress)
    started = time.perf_counter()
    result = evaluator.evaluate({stage: SkipPlan() for stage in STAGES}, questions.questions)
    chain_seconds = time.perf_counter() - started
    correct = round((result.accuracy or 0.0) * len(questions.questions))
    return {
        "source": source, "model": lm.name, "weights_sha256": lm.weights_sha256, "format": fmt,
        "kernels": kernels_status(), "threads": torch.get_num_threads(), "load_seconds": round(load_seconds, 1),
        "greedy_tokens": greedy, "benchmark": args.benchmark, "split": questions.split,
        "fingerprint": questions.fingerprint, "n": len(questions.questions), "correct": correct,
        "accuracy": result.accuracy, "answers": result.answers, "chain_seconds": round(chain_seconds, 1),
        "mean_latency_seconds": result.mean_latency_seconds,
        "generated_tokens_per_stage": result.generated_tokens_per_stage,
    }


def table(results: dict[str, dict]) -> str:
    reference = results.get("float32")
    lines = [
        "| format | accuracy (95% CI) | vs float32 | same answer as float32 | greedy prefix match | identical greedy "
        "outputs | chain s/question (batched) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for fmt, r in results.items():
        low, high = wilson(r["correct"], r["n"])
        acc = f"{r['accuracy']:.3f} ({low:.2f}-{high:.2f}), n={r['n']}"
        if reference is None:
            delta = same = match = identical = "-"
        else:
            delta = f"{100 * (r['accuracy'] - reference['accuracy']):+.1f} pt"
            ids = reference["answers"]
            same = f"{sum(r['answers'].get(k) == v for k, v in ids.items()) / len(ids):.2f}"
            pairs = list(zip(r["greedy_tokens"], reference["greedy_tokens"]))
            match = f"{sum(prefix_match(a, b) for a, b in pairs) / len(pairs):.2f}"
            identical = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
        lines.append(f"| {fmt} | {acc} | {delta} | {same} | {match} | {identical} | {r['mean_latency_seconds']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="smollm2-135m")
    parser.add_argument("--formats", default="float32,bfloat16,int8,int4")
    parser.add_argument("--benchmark", default="csqa")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--n", type=int, default=100, help="dev questions (seeded slice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=48, help="greedy tokens per fixed prompt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--kernel-path", default="", help="force a kernel path (e.g. portable); the modules then "
                        "route calls as on a CPU whose best path it is")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.kernel_path and get_kernels() is None:
        sys.exit(f"the compiled kernels are not available: {kernels_status()}")
    with formats.forced_path(args.kernel_path) if args.kernel_path else nullcontext():
        measure_formats(args)


def measure_formats(args: argparse.Namespace) -> None:
    """Each format's accuracy and chain time (resumed from `args.out`), then the table."""
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for fmt in args.formats.split(","):
        path = args.out / f"{fmt}.json"
        if path.is_file():
            results[fmt] = json.loads(path.read_text())
            print(f"{fmt}: already measured ({path})", flush=True)
            continue
        results[fmt] = run_format(args.source, fmt, args)
        path.write_text(json.dumps(results[fmt], indent=1))
        loading._LOADED.clear()  # one format in memory at a time (a 1.5B model is 6+ GB in float32)
        gc.collect()
        r = results[fmt]
        print(f"{fmt}: accuracy {r['accuracy']:.3f}, chain {r['chain_seconds']:.0f} s", flush=True)
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
