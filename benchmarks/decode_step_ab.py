"""The three-stage chain at batch 1 with the compiled decode step and with the Python one, paired per question.

Why: the compiled step (`engine/fused_decode.py`) computes the decoder layers in another float summation order, and
the kernels' int8 activation rounding can turn a 1e-7 difference into a different token at a near-tie. So "it is
faster" needs "and it answers as well": this runs the chain (separate format, greedy, batch 1, the full model or a
profile) on the same dev questions both ways, alternating which goes first, and reports accuracy of each with 95%
Wilson intervals, how often they agree, McNemar's exact test, and the end-to-end speedup (ratio of median model
seconds per question, 95% paired bootstrap). Answers are appended to `--out/answers.jsonl` (resumable).

    python benchmarks/decode_step_ab.py --model qwen2.5-coder-1.5b --weights int4 --benchmark csqa --questions 60 \\
        --out benchmarks/results/decode-step-ab-qwen
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from shared_context import bootstrap_ratio, unit_seconds  # noqa: E402
from shared_context_accuracy import mcnemar_exact  # noqa: E402

from litestage_chain import load_model  # noqa: E402
from litestage_chain.budgets.profile import Profile  # noqa: E402
from litestage_chain.budgets.stages import STAGES  # noqa: E402
from litestage_chain.data.benchmarks import report_questions  # noqa: E402
from litestage_chain.engine import fused_decode  # noqa: E402
from litestage_chain.engine.skip_plan import SkipPlan  # noqa: E402
from litestage_chain.engine.weight_formats import WEIGHT_CHOICES  # noqa: E402
from litestage_chain.offline.evaluator import ChainEvaluator  # noqa: E402
from litestage_chain.offline.stats import wilson_interval  # noqa: E402
from litestage_chain.reasoning.answer import extract  # noqa: E402

ARMS = ("compiled", "python")


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_id: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_id.setdefault(row["id"], {})[row["arm"]] = row
    pairs = [p for p in by_id.values() if len(p) == 2]
    n = len(pairs)
    if not n:
        return {"paired": 0}
    right = {a: sum(p[a]["correct"] for p in pairs) for a in ARMS}
    only = {a: sum(p[a]["correct"] and not p[b]["correct"] for p in pairs) for a, b in (ARMS, ARMS[::-1])}
    seconds = {a: [p[a]["seconds"] for p in pairs] for a in ARMS}
    return {
        "paired": n,
        "accuracy": {a: right[a] / n for a in ARMS},
        "interval": {a: wilson_interval(right[a], n) for a in ARMS},
        "same_answer": sum(p["compiled"]["answer"] == p["python"]["answer"] for p in pairs) / n,
        "same_text": sum(p["compiled"]["text"] == p["python"]["text"] for p in pairs) / n,
        "only_right": only,
        "mcnemar_p": mcnemar_exact(only["compiled"], only["python"]),
        "median_seconds": {a: statistics.median(seconds[a]) for a in ARMS},
        "speedup": statistics.median(seconds["python"]) / statistics.median(seconds["compiled"]),
        "speedup_interval": bootstrap_ratio(seconds["python"], seconds["compiled"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--weights", default="int4", choices=WEIGHT_CHOICES)
    parser.add_argument("--benchmark", default="csqa")
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--profile", help="a searched profile (file or shipped name); default: the full model")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "answers.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {(r["arm"], r["id"]) for r in rows}
    model = load_model(args.model, weights=args.weights)
    if fused_decode.program_for(model.view) is None:
        sys.exit(f"the compiled decode step does not run {args.model} ({args.weights}) here: nothing to compare")
    plans = {s: SkipPlan() for s in STAGES}
    early_exit = None
    if args.profile:
        profile = Profile.load(args.profile, model=args.model)
        profile.check_model(model)
        plans = {s: profile.plan_for(s) for s in STAGES}
        early_exit = {s: profile.early_exit_for(s) for s in STAGES}
    # one evaluator per arm: an evaluator keeps the stage outputs it produced, which the other arm must not reuse
    evaluators = {arm: ChainEvaluator(model, early_exit=early_exit, fallback=False, batch_size=1, reuse_outputs=False)
                  for arm in ARMS}
    questions = report_questions(args.benchmark, args.questions + 1, data_dir=args.data).questions
    warmup, questions = questions[:1], questions[1:]
    for evaluator in evaluators.values():
        evaluator.run_stages(plans, warmup)  # few-shot prefixes into their tables, untimed
    for number, question in enumerate(questions):
        order = ARMS if number % 2 == 0 else ARMS[::-1]
        for arm in order:
            if (arm, question.id) in done:
                continue
            with fused_decode.enabled_as(arm == "compiled"):
                state = evaluators[arm].run_stages(plans, [question])[0]
            answer = extract(state["summary"].text, question).label
            row = {"arm": arm, "id": question.id, "benchmark": args.benchmark, "answer": answer,
                   "correct": answer == question.answer, "seconds": unit_seconds([state]),
                   "text": "\n".join(state[s].text for s in STAGES)}
            rows.append(row)
            with log.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        print(f"{number + 1}/{len(questions)}", flush=True)
    result = {"command": " ".join(sys.argv), "model": args.model, "weights": model.weights, **summary(rows)}
    (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
