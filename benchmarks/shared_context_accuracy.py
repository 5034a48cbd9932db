"""Accuracy of the shared-context format against the separate one: the full model, paired on the same dev questions.

Why: the shared format changes what the model reads (one few-shot prefix of complete three-stage examples and one
assistant turn, instead of a prompt per stage), so it can change answers. This runs the full-model chain in both
formats over the same dev questions (a seeded slice per benchmark, or all of a small dev split) and reports per
benchmark: accuracy with 95% Wilson intervals, how often the formats agree, and McNemar's exact test on the
questions where exactly one format is right. Every answer is appended to `--out/answers.jsonl` as it is produced, so
an interrupted run resumes where it stopped. It is a long run (hours for the 1.5B model on 2 cores):

    nohup nice python benchmarks/shared_context_accuracy.py --model qwen2.5-coder-1.5b \
        --benchmarks csqa:200 obqa:200 strategyqa:all --batch-size 8 \
        --out benchmarks/results/shared-context-accuracy-qwen &
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain import load_model  # noqa: E402
from litestage_chain.budgets.stages import STAGES  # noqa: E402
from litestage_chain.data.benchmarks import report_questions  # noqa: E402
from litestage_chain.engine.skip_plan import SkipPlan  # noqa: E402
from litestage_chain.engine.weight_formats import WEIGHT_CHOICES  # noqa: E402
from litestage_chain.offline.evaluator import ChainEvaluator  # noqa: E402
from litestage_chain.offline.stats import wilson_interval  # noqa: E402

FORMATS = ("separate", "shared")


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs against 1/2."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def report(rows: list[dict[str, Any]], benchmark: str) -> dict[str, Any]:
    by_id: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row["benchmark"] == benchmark:
            by_id.setdefault(row["id"], {})[row["format"]] = row
    paired = [pair for pair in by_id.values() if len(pair) == 2]
    n = len(paired)
    if n == 0:
        return {"benchmark": benchmark, "paired": 0}
    right = {f: sum(p[f]["correct"] for p in paired) for f in FORMATS}
    only_shared = sum(p["shared"]["correct"] and not p["separate"]["correct"] for p in paired)
    only_separate = sum(p["separate"]["correct"] and not p["shared"]["correct"] for p in paired)
    return {
        "benchmark": benchmark,
        "paired": n,
        "accuracy": {f: right[f] / n for f in FORMATS},
        "interval": {f: wilson_interval(right[f], n) for f in FORMATS},
        "agreement": sum(p["shared"]["answer"] == p["separate"]["answer"] for p in paired) / n,
        "only_shared_right": only_shared,
        "only_separate_right": only_separate,
        "mcnemar_p": mcnemar_exact(only_shared, only_separate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--weights", default="auto", choices=WEIGHT_CHOICES)
    parser.add_argument("--benchmarks", nargs="+", default=["csqa:200", "obqa:200", "strategyqa:all"],
                        help="benchmark:N (a seeded dev slice of N) or benchmark:all")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "answers.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {(r["benchmark"], r["format"], r["id"]) for r in rows}
    model = load_model(args.model, weights=args.weights)
    full = {stage: SkipPlan() for stage in STAGES}
    evaluators = {f: ChainEvaluator(model, batch_size=args.batch_size, reuse_outputs=False, context=f) for f in FORMATS}
    summaries = []
    for spec in args.benchmarks:
        benchmark, _, size = spec.partition(":")
        questions = report_questions(benchmark, None if size in ("", "all") else int(size), data_dir=args.data).questions
        for start in range(0, len(questions), args.batch_size):
            chunk = questions[start : start + args.batch_size]
            for name in FORMATS:
                todo = [q for q in chunk if (benchmark, name, q.id) not in done]
                if not todo:
                    continue
                model.context_cache.clear()  # each question's chain reuses its own stages only
                result = evaluators[name].evaluate(full, todo)
                with log.open("a", encoding="utf-8") as handle:
                    for q in todo:
                        answer = result.answers[q.id]
                        row = {"benchmark": benchmark, "format": name, "id": q.id, "answer": answer,
                               "correct": answer == q.answer, "model": args.model, "weights": model.weights}
                        rows.append(row)
                        handle.write(json.dumps(row) + "\n")
            print(f"{benchmark}: {min(start + args.batch_size, len(questions))}/{len(questions)}", flush=True)
        summaries.append(report(rows, benchmark))
        print(json.dumps(summaries[-1], indent=2), flush=True)
    (args.out / "summary.json").write_text(json.dumps({"command": " ".join(sys.argv), "results": summaries},
                                                      indent=2) + "\n")


if __name__ == "__main__":
    main()
