"""End-to-end A/B of packed prefill: the reasoning chain on benchmark questions, with and without packing.

Why: a batch of stage prompts is left-padded to its longest prompt, and a padded prefill multiplies the padding
through every projection too. `forward.prefill_packed` runs the projections over the real tokens only. What a
user sees is the chain's time per batch, so this runs the whole chain (recall, analysis, summary, full model, the
benchmarks' early-exit rule) on the same questions, alternating run by run between packed prefill and the padded
one it replaced, in one process so machine noise hits both alike; medians are reported, and the answers compared.

    python benchmarks/packed_prefill.py --model qwen2.5-coder-1.5b --benchmark obqa --questions 8 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain import EarlyExitConfig, SkipPlan, load_model  # noqa: E402
from litestage_chain.budgets.stages import STAGES  # noqa: E402
from litestage_chain.data.benchmarks import report_questions  # noqa: E402
from litestage_chain.engine import forward  # noqa: E402
from litestage_chain.engine.weight_formats import WEIGHT_CHOICES  # noqa: E402
from litestage_chain.offline.evaluator import ChainEvaluator  # noqa: E402

PACKED = forward.prefill_packed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--weights", default="auto", choices=WEIGHT_CHOICES,
                        help="weight format (default auto: the model's recommended one, as the benchmarks use)")
    parser.add_argument("--benchmark", default="obqa")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--questions", type=int, default=8, help="dev questions, decoded as one batch")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the measurements here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, weights=args.weights)
    questions = report_questions(args.benchmark, args.questions, data_dir=args.data).questions
    early_exit = EarlyExitConfig(window=8, threshold=0.3, min_tokens=16)
    plans = {stage: SkipPlan() for stage in STAGES}
    modes = {"packed": PACKED, "padded": forward.prefill_padded}  # padded: the prefill before packing
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    stages: dict[str, dict[str, list[float]]] = {mode: {stage: [] for stage in STAGES} for mode in modes}
    answers: dict[str, dict[str, Optional[str]]] = {}
    print(f"{args.model} {model.weights}, {args.benchmark} dev x{len(questions)} in one batch, "
          f"{args.threads} thread(s), medians of {args.runs} runs after a warm-up")
    for run in range(args.runs + 1):  # run 0 warms up (and fills the shared-prefix table) and is not counted
        order = list(modes) if run % 2 == 0 else list(reversed(modes))
        for mode in order:
            forward.prefill_packed = modes[mode]  # `prefill` dispatches padded batches to this name
            try:
                evaluator = ChainEvaluator(model, early_exit=early_exit, batch_size=len(questions), reuse_outputs=False)
                result = evaluator.evaluate(plans, questions)
            finally:
                forward.prefill_packed = PACKED
            answers[mode] = result.answers
            if run:
                seconds[mode].append(result.mean_latency_seconds)
                for stage in STAGES:
                    stages[mode][stage].append(result.stage_latency_seconds[stage])
                print(f"run {run} {mode}: {result.mean_latency_seconds:.2f} s per question (batch time)", flush=True)
    medians = {mode: statistics.median(values) for mode, values in seconds.items()}
    same = answers["packed"] == answers["padded"]
    print(f"packed {medians['packed']:.2f} s vs padded {medians['padded']:.2f} s: "
          f"{medians['padded'] / medians['packed']:.2f}x; same answers: {same}")
    for stage in STAGES:
        packed, padded = (statistics.median(stages[mode][stage]) for mode in ("packed", "padded"))
        print(f"  {stage}: {packed:.2f} s vs {padded:.2f} s ({padded / packed:.2f}x)")
    if args.out:
        args.out.write_text(json.dumps({
            "command": " ".join(sys.argv), "model": args.model, "weights": model.weights,
            "benchmark": args.benchmark, "questions": [q.id for q in questions], "runs": args.runs,
            "seconds": seconds, "stage_seconds": stages, "same_answers": same,
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
