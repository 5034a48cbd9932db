"""Shared context vs separate prompts: the three-stage chain's time, side by side in one process.

Why: in the separate (paper) format every stage re-prefills the question and the earlier stages' outputs; in the
shared format (`reasoning/shared_context.py`) each stage continues one sequence and reuses its KV entries from the
model's context cache. This runs the chain in both formats on the same dev questions, alternating which format goes
first from one question (batch) to the next so machine noise hits both alike, for the full model and for a searched
LiteStage profile, at batch 1 and batch 8. Reported: medians of the end-to-end wall time per question (batch 1) or
per batch (batch 8), the ratio separate / shared with a 95% paired-bootstrap interval over questions or batches,
each stage's median prefill seconds, the summary stage's prefill ratio shared / separate, generated tokens and how
often the two formats give the same answer.

The few-shot prefixes are computed before timing (one untimed warm-up question per phase), as the benchmarks report
them apart; the context cache is cleared at the start of each phase, so a phase never reuses another's outputs.
Each question is run once per format: a question never finds its own earlier run in the cache.

    python benchmarks/shared_context.py --model smollm2-135m --benchmark obqa --questions 16 \
        --profile obqa --out benchmarks/results/shared-context-smollm2.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain import load_model  # noqa: E402
from litestage_chain.budgets.profile import Profile  # noqa: E402
from litestage_chain.budgets.stages import STAGES  # noqa: E402
from litestage_chain.data.benchmarks import report_questions  # noqa: E402
from litestage_chain.engine.skip_plan import SkipPlan  # noqa: E402
from litestage_chain.engine.weight_formats import WEIGHT_CHOICES  # noqa: E402
from litestage_chain.offline.evaluator import ChainEvaluator  # noqa: E402

FORMATS = ("separate", "shared")


def bootstrap_ratio(a: list[float], b: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of median(a) / median(b) over units resampled in pairs."""
    rng = random.Random(seed)
    n = len(a)
    ratios = []
    for _ in range(rounds):
        pick = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(a[i] for i in pick) / statistics.median(b[i] for i in pick))
    ratios.sort()
    return ratios[int(0.025 * rounds)], ratios[int(0.975 * rounds) - 1]


def run_phase(model: Any, evaluators: dict[str, ChainEvaluator], plans: dict[str, SkipPlan], units: list[list[Any]],
              warmup: list[Any]) -> dict[str, Any]:
    """Time every unit (a list of questions decoded together) in both formats, alternating which goes first."""
    model.context_cache.clear()
    for name in FORMATS:
        evaluators[name].run_stages(plans, warmup)  # few-shot prefixes into their tables, untimed
    record: dict[str, Any] = {name: {"seconds": [], "prefill": {s: [] for s in STAGES}, "tokens": [],
                                     "reused": {s: [] for s in STAGES}, "answers": []} for name in FORMATS}
    for number, unit in enumerate(units):
        order = FORMATS if number % 2 == 0 else tuple(reversed(FORMATS))
        for name in order:
            started = time.perf_counter()
            states = evaluators[name].run_stages(plans, unit)
            seconds = time.perf_counter() - started
            row = record[name]
            row["seconds"].append(seconds)
            for stage in STAGES:
                row["prefill"][stage].append(states[0][stage].prefill_seconds)  # one batch, one prefill
                row["reused"][stage].append(statistics.fmean(s[stage].reused_tokens for s in states))
            row["tokens"].append(sum(s[stage].generated_tokens for s in states for stage in STAGES))
            row["answers"].extend(_answer(s) for s in states)
    return record


def _answer(state: dict[str, Any]) -> Optional[str]:
    from litestage_chain.reasoning.answer import extract

    return extract(state["summary"].text, state["question"]).label


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    separate, shared = record["separate"], record["shared"]
    low, high = bootstrap_ratio(separate["seconds"], shared["seconds"])
    agree = sum(a == b for a, b in zip(separate["answers"], shared["answers"]))
    out = {
        "units": len(shared["seconds"]),
        "median_seconds": {name: statistics.median(record[name]["seconds"]) for name in FORMATS},
        "speedup_shared": statistics.median(separate["seconds"]) / statistics.median(shared["seconds"]),
        "speedup_interval": [low, high],
        "median_prefill": {name: {s: statistics.median(record[name]["prefill"][s]) for s in STAGES} for name in FORMATS},
        "mean_reused_tokens": {name: {s: statistics.fmean(record[name]["reused"][s]) for s in STAGES} for name in FORMATS},
        "generated_tokens": {name: sum(record[name]["tokens"]) for name in FORMATS},
        "same_answer": f"{agree}/{len(shared['answers'])}",
    }
    out["summary_prefill_shared_over_separate"] = (
        out["median_prefill"]["shared"]["summary"] / out["median_prefill"]["separate"]["summary"]
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--weights", default="auto", choices=WEIGHT_CHOICES)
    parser.add_argument("--benchmark", default="obqa")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--questions", type=int, default=16, help="dev questions per batch size (after one warm-up)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--profile", help="a searched profile (file or shipped name) for the LiteStage rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the measurements here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, weights=args.weights)
    pool = report_questions(args.benchmark, args.questions + 1, data_dir=args.data).questions
    warmup, questions = pool[:1], pool[1:]
    plan_sets: dict[str, tuple[dict[str, SkipPlan], Any]] = {"full": ({s: SkipPlan() for s in STAGES}, None)}
    if args.profile:
        profile = Profile.load(args.profile)
        profile.check_model(model)
        plan_sets["litestage"] = (
            {s: profile.plan_for(s) for s in STAGES}, {s: profile.early_exit_for(s) for s in STAGES}
        )
    print(f"{args.model} {model.weights}, {args.benchmark} dev x{len(questions)}, {args.threads} thread(s)")
    results: dict[str, Any] = {"command": " ".join(sys.argv), "model": args.model, "weights": model.weights,
                               "benchmark": args.benchmark, "questions": len(questions), "phases": {}}
    for batch in args.batch_sizes:
        units = [questions[i : i + batch] for i in range(0, len(questions), batch)]
        for label, (plans, early_exit) in plan_sets.items():
            evaluators = {
                name: ChainEvaluator(model, early_exit=early_exit, fallback=False, batch_size=batch,
                                     reuse_outputs=False, context=name)
                for name in FORMATS
            }
            summary = summarise(run_phase(model, evaluators, plans, units, warmup))
            results["phases"][f"{label}@{batch}"] = summary
            print(f"{label:>9} batch {batch}: separate {summary['median_seconds']['separate']:.2f} s, shared "
                  f"{summary['median_seconds']['shared']:.2f} s, speedup {summary['speedup_shared']:.2f}x "
                  f"[{summary['speedup_interval'][0]:.2f}, {summary['speedup_interval'][1]:.2f}], summary prefill "
                  f"shared/separate {summary['summary_prefill_shared_over_separate']:.3f}, tokens "
                  f"{summary['generated_tokens']}, same answer {summary['same_answer']}", flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
