"""Shared context vs separate prompts: the three-stage chain's time, side by side in one process.

Why: in the separate (paper) format every stage re-prefills the question and the earlier stages' outputs; in the
shared format (`reasoning/shared_context.py`) each stage continues one sequence and reuses its KV entries from the
model's context cache. This runs the chain in both formats on the same dev questions, alternating which format goes
first from one question (batch) to the next so machine noise hits all alike, for the full model and for a searched
LiteStage profile (four arms, interleaved), at batch 1 and batch 8. Reported per arm: the median model time per
question (batch 1) or per batch (batch 8: per stage its prefill plus its slowest row's decode), wall time, each
stage's median prefill seconds and reused prompt tokens; the speedup shared vs separate and LiteStage vs full (ratio
of medians with a 95% paired-bootstrap interval over questions or batches), the summary stage's prefill ratio shared /
separate, and how often two arms give the same answer. CPU seconds of the process (one thread) are recorded beside
wall time: on a CPU shared with other jobs, wall time mostly measures the scheduler.

A few-shot prefix is computed once per plan and reported apart (`prefix_seconds`), as the benchmarks do; the context
cache is cleared before every shared-context run but for that prefix (what a long-running process keeps), so a run
reuses only its own stages and, like the separate format, never recomputes the few-shot prefix in its wall or CPU
time.

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


Arm = tuple[str, str]  # (format, plan set)


def unit_seconds(states: list[dict[str, Any]]) -> float:
    """A batch's model time: per stage its prefill plus the decode of its slowest row (the batch waits for it).
    Computing a few-shot prefix is not in it (reported apart, as the benchmarks do), nor Python between stages."""
    return sum(states[0][s].prefill_seconds + max(state[s].decode_seconds for state in states) for s in STAGES)


def run_phase(evaluators: dict[Arm, ChainEvaluator], plans: dict[str, dict[str, SkipPlan]],
              units: list[list[Any]], warmup: list[Any]) -> dict[Arm, dict[str, Any]]:
    """Time every unit (questions decoded together) in every arm, rotating which arm goes first.

    Each shared-context run starts from a context cache emptied but for the few-shot prefixes (`run_stages` does
    it): a run reuses only its own stages, never another arm's (the full model's and a profile's recall may run the
    same plan) or an earlier unit's. (Were the prefixes dropped too, each shared run would recompute them: excluded
    from the model time, as `prefix_seconds`, but inside wall and CPU time, ~3.2 s per unit on the benchmark model.)
    """
    arms = list(evaluators)
    for arm in arms:
        evaluators[arm].run_stages(plans[arm[1]], warmup)  # few-shot prefixes into their tables, untimed
    record: dict[Arm, dict[str, Any]] = {arm: {"seconds": [], "wall": [], "cpu": [], "prefill": {s: [] for s in STAGES},
                                               "tokens": [], "reused": {s: [] for s in STAGES}, "answers": [],
                                               "prefilled": {s: [] for s in STAGES}}
                                         for arm in arms}
    for number, unit in enumerate(units):
        for arm in arms[number % len(arms) :] + arms[: number % len(arms)]:
            started, cpu_started = time.perf_counter(), time.process_time()
            states = evaluators[arm].run_stages(plans[arm[1]], unit)
            row = record[arm]
            row["cpu"].append(time.process_time() - cpu_started)
            row["wall"].append(time.perf_counter() - started)
            row["seconds"].append(unit_seconds(states))
            for stage in STAGES:
                row["prefill"][stage].append(states[0][stage].prefill_seconds)  # one batch, one prefill
                row["reused"][stage].append(statistics.fmean(s[stage].reused_tokens for s in states))
                # what the batched prefill itself ran: the prompt less the entries it loaded (the few-shot prefix,
                # computed once and timed apart, and in the shared format what earlier stages left in the cache)
                row["prefilled"][stage].append(statistics.fmean(
                    s[stage].prompt_tokens - s[stage].prefix_tokens for s in states))
            row["tokens"].append(sum(s[stage].generated_tokens for s in states for stage in STAGES))
            row["answers"].extend(_answer(s) for s in states)
    return record


def _answer(state: dict[str, Any]) -> Optional[str]:
    from litestage_chain.reasoning.answer import extract

    return extract(state["summary"].text, state["question"]).label


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """How much faster arm b is than arm a: ratios of median unit model seconds and of median CPU seconds, each
    with its paired-bootstrap interval."""
    agree = sum(x == y for x, y in zip(a["answers"], b["answers"]))
    out: dict[str, Any] = {"same_answer": f"{agree}/{len(a['answers'])}"}
    for key, name in (("seconds", "speedup"), ("cpu", "cpu_speedup")):
        out[name] = statistics.median(a[key]) / statistics.median(b[key])
        out[name.replace("speedup", "interval")] = list(bootstrap_ratio(a[key], b[key]))
    return out


def summarise(record: dict[Arm, dict[str, Any]]) -> dict[str, Any]:
    arms = {f"{fmt}/{label}": row for (fmt, label), row in record.items()}
    out: dict[str, Any] = {"arms": {}}
    for name, row in arms.items():
        out["arms"][name] = {
            "units": len(row["seconds"]),
            "median_seconds": statistics.median(row["seconds"]),
            "median_wall": statistics.median(row["wall"]),
            "median_cpu": statistics.median(row["cpu"]),
            "median_prefill": {s: statistics.median(row["prefill"][s]) for s in STAGES},
            "mean_reused_tokens": {s: statistics.fmean(row["reused"][s]) for s in STAGES},
            "mean_prefilled_tokens": {s: statistics.fmean(row.get("prefilled", {}).get(s) or [0]) for s in STAGES},
            "generated_tokens": sum(row["tokens"]),
        }
    labels = sorted({label for _, label in record})
    out["shared_vs_separate"] = {}
    for label in labels:
        separate, shared = record[("separate", label)], record[("shared", label)]
        out["shared_vs_separate"][label] = {
            **compare(separate, shared),
            "summary_prefill_shared_over_separate": statistics.median(shared["prefill"]["summary"])
            / statistics.median(separate["prefill"]["summary"]),
        }
    if "litestage" in labels:
        out["litestage_vs_full"] = {fmt: compare(record[(fmt, "full")], record[(fmt, "litestage")]) for fmt in FORMATS}
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
        profile = Profile.load(args.profile, model=args.model)
        profile.check_model(model)
        plan_sets["litestage"] = (
            {s: profile.plan_for(s) for s in STAGES}, {s: profile.early_exit_for(s) for s in STAGES}
        )
    print(f"{args.model} {model.weights}, {args.benchmark} dev x{len(questions)}, {args.threads} thread(s)")
    results: dict[str, Any] = {"command": " ".join(sys.argv), "model": args.model, "weights": model.weights,
                               "benchmark": args.benchmark, "questions": len(questions), "phases": {}}
    for batch in args.batch_sizes:
        units = [questions[i : i + batch] for i in range(0, len(questions), batch)]
        evaluators = {
            (fmt, label): ChainEvaluator(model, early_exit=early_exit, fallback=False, batch_size=batch,
                                         reuse_outputs=False, context=fmt)
            for label, (_, early_exit) in plan_sets.items()
            for fmt in FORMATS
        }
        plans = {label: plan for label, (plan, _) in plan_sets.items()}
        record = run_phase(evaluators, plans, units, warmup)
        if args.out:  # the raw measurements first, so a report can be rebuilt from them
            raw = {f"{fmt}/{label}": row for (fmt, label), row in record.items()}
            args.out.with_suffix(f".batch{batch}.raw.json").write_text(json.dumps(raw) + "\n")
        summary = summarise(record)
        results["phases"][f"batch {batch}"] = summary
        for name, arm in summary["arms"].items():
            print(f"batch {batch} {name:>18}: {arm['median_seconds']:.2f} s per unit (wall {arm['median_wall']:.2f}, "
                  f"cpu {arm['median_cpu']:.2f}),"
                  f" prefill s {[round(arm['median_prefill'][s], 3) for s in STAGES]}, reused tokens "
                  f"{[round(arm['mean_reused_tokens'][s]) for s in STAGES]}, prefilled tokens "
                  f"{[round(arm['mean_prefilled_tokens'][s]) for s in STAGES]}, generated {arm['generated_tokens']}")
        for label, row in summary["shared_vs_separate"].items():
            print(f"batch {batch} {label}: shared {row['speedup']:.2f}x [{row['interval'][0]:.2f}, "
                  f"{row['interval'][1]:.2f}] faster than separate (cpu {row['cpu_speedup']:.2f}x "
                  f"[{row['cpu_interval'][0]:.2f}, {row['cpu_interval'][1]:.2f}]); summary prefill shared/separate "
                  f"{row['summary_prefill_shared_over_separate']:.3f}; same answer {row['same_answer']}")
        for fmt, row in summary.get("litestage_vs_full", {}).items():
            print(f"batch {batch} {fmt}: LiteStage {row['speedup']:.2f}x [{row['interval'][0]:.2f}, "
                  f"{row['interval'][1]:.2f}] faster than full (cpu {row['cpu_speedup']:.2f}x); same answer "
                  f"{row['same_answer']}", flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
