"""The continued format's summary against the separate format's: answers (paired) and seconds, the full model.

Why: in the separate format the summary re-reads the question, options, key information and analysis to write one
line, a third of the full model's time per question at batch 8; the shared format removes that re-reading but costs
accuracy, because its analysis is written differently (benchmarks/README.md, section 6). The continued format
(`reasoning/shared_context.py`) keeps the separate recall and analysis prompts and lets the summary continue the
analysis's turn. Its recall and analysis are the separate format's by construction (same prompts, same greedy
decode), so the two formats differ only in the summary, and both summaries can be run on the same chain state:
each batch runs recall and analysis once (the analysis storing its KV entries for the continued summary), then both
summaries, the separate one first on even batches. Reported per benchmark: both formats' accuracy (95% Wilson), how
often they agree, McNemar's exact test on the questions exactly one gets right, and the summary's and the whole
chain's seconds per batch in each format (ratio of medians, 95% bootstrap interval over batches).

Every question's answers and seconds are appended to `--out/answers.jsonl` as a batch finishes; a re-run resumes:

    OMP_NUM_THREADS=1 nice python benchmarks/continued_summary.py --model qwen2.5-coder-1.5b --weights int4 \\
        --split train --benchmarks csqa:200 obqa:200 strategyqa:200 --out benchmarks/results/continued-summary-qwen
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain import load_model  # noqa: E402
from litestage_chain.data.benchmarks import report_questions, search_questions  # noqa: E402
from litestage_chain.data.types import Question  # noqa: E402
from litestage_chain.engine.skip_plan import SkipPlan  # noqa: E402
from litestage_chain.engine.weight_formats import WEIGHT_CHOICES  # noqa: E402
from litestage_chain.chat.chat_model import ChatLiteStage  # noqa: E402
from litestage_chain.offline.stats import wilson_interval  # noqa: E402
from litestage_chain.reasoning.answer import extract, extract_correct_option  # noqa: E402
from litestage_chain.reasoning.chain import DEFAULT_MAX_TOKENS, stage_node  # noqa: E402
from litestage_chain.reasoning.prompts import PromptSet  # noqa: E402
from litestage_chain.reasoning.stage_output import StageOutput, State  # noqa: E402
from shared_context import bootstrap_ratio  # noqa: E402
from shared_context_accuracy import mcnemar_exact  # noqa: E402

FORMATS = ("separate", "continued")


def answer_of(summary: StageOutput, state: State) -> tuple[str | None, str]:
    """The label read off a summary, else off the analysis (as the chain does without its full-model re-run)."""
    question: Question = state["question"]
    label = extract(summary.text, question).label
    if label is not None:
        return label, "summary"
    label = extract_correct_option(state["analysis"].text, question)
    return label, "analysis" if label else "none"


def stage_nodes(model: Any) -> dict[str, Any]:
    """The full model's stage nodes: recall and analysis in the continued format (the separate prompts; the analysis
    stores its KV entries), and both formats' summaries."""
    chat, prompts = ChatLiteStage(model=model, temperature=0.0), PromptSet.load()

    def node(stage: str, context: str) -> Any:
        return stage_node(chat, stage, prompts, max_tokens=DEFAULT_MAX_TOKENS[stage], skip_plan=SkipPlan(),
                          early_exit=None, context=context)

    return {"recall": node("recall", "continued"), "analysis": node("analysis", "continued"),
            "separate": node("summary", "separate"), "continued": node("summary", "continued")}


def run_batch(model: Any, nodes: dict[str, Any], batch: Sequence[Question], index: int) -> list[dict]:
    """One batch: recall and analysis once, then both summaries (the separate one first on even batches)."""
    model.context_cache.clear()  # each batch reuses only what its own analysis stored
    config = {"max_concurrency": len(batch)}
    states: list[State] = [{"question": q} for q in batch]
    for stage in ("recall", "analysis"):
        states = [{**state, stage: out} for state, out in zip(states, nodes[stage].batch(states, config), strict=True)]
    order = FORMATS if index % 2 == 0 else tuple(reversed(FORMATS))
    summaries = {name: nodes[name].batch(states, config) for name in order}
    rows = []
    for i, state in enumerate(states):
        question: Question = state["question"]
        row: dict[str, Any] = {"id": question.id, "gold": question.answer, "batch": index,
                               "recall_seconds": state["recall"].seconds, "analysis_seconds": state["analysis"].seconds}
        for name in FORMATS:
            summary = summaries[name][i]
            label, source = answer_of(summary, state)
            row[name] = {"answer": label, "source": source, "correct": label == question.answer,
                         "summary_seconds": summary.seconds, "prefilled": summary.prefilled_tokens,
                         "reused": summary.reused_tokens, "text": summary.text}
        rows.append(row)
    return rows


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired accuracy and per-batch seconds of the two formats."""
    n = len(rows)
    right = {f: sum(r[f]["correct"] for r in rows) for f in FORMATS}
    only = {f: sum(r[f]["correct"] and not r[other]["correct"] for r in rows)
            for f, other in (("separate", "continued"), ("continued", "separate"))}
    batches: dict[int, list[dict]] = {}
    for row in rows:
        batches.setdefault(row["batch"], []).append(row)
    per_batch = {f: {"summary": [], "chain": []} for f in FORMATS}
    for group in batches.values():  # a row's stage seconds are its batch's: take the batch's mean row
        for f in FORMATS:
            summary = sum(r[f]["summary_seconds"] for r in group) / len(group)
            head = sum(r["recall_seconds"] + r["analysis_seconds"] for r in group) / len(group)
            per_batch[f]["summary"].append(summary)
            per_batch[f]["chain"].append(head + summary)
    speed = {
        part: {
            "separate_median_s": median(per_batch["separate"][part]),
            "continued_median_s": median(per_batch["continued"][part]),
            "speedup": median(per_batch["separate"][part]) / median(per_batch["continued"][part]),
            "interval": list(bootstrap_ratio(per_batch["separate"][part], per_batch["continued"][part])),
        }
        for part in ("summary", "chain")
    }
    return {
        "questions": n,
        "batches": len(batches),
        "accuracy": {f: right[f] / n for f in FORMATS},
        "interval": {f: wilson_interval(right[f], n) for f in FORMATS},
        "agreement": sum(r["separate"]["answer"] == r["continued"]["answer"] for r in rows) / n,
        "only_separate_right": only["separate"],
        "only_continued_right": only["continued"],
        "mcnemar_p": mcnemar_exact(only["separate"], only["continued"]),
        "answer_sources": {f: {s: sum(r[f]["source"] == s for r in rows) for s in ("summary", "analysis", "none")}
                           for f in FORMATS},
        "summary_tokens": {f: {"prefilled": sum(r[f]["prefilled"] for r in rows) / n,
                               "reused": sum(r[f]["reused"] for r in rows) / n} for f in FORMATS},
        "seconds_per_batch": speed,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--weights", default="auto", choices=WEIGHT_CHOICES)
    parser.add_argument("--benchmarks", nargs="+", default=["csqa:200", "obqa:200", "strategyqa:200"],
                        help="benchmark:N (a seeded slice of N) or benchmark:all (dev only)")
    parser.add_argument("--split", choices=("train", "dev"), default="train",
                        help="train: the search's seeded slice (seed 0); dev: the reporting split")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "answers.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    model = load_model(args.model, weights=args.weights)
    nodes = stage_nodes(model)
    summaries = {}
    for spec in args.benchmarks:
        benchmark, _, size = spec.partition(":")
        if args.split == "train":
            if size in ("", "all"):
                parser.error("--split train takes benchmark:N (the search's seeded slice of N)")
            questions = search_questions(benchmark, int(size), data_dir=args.data).questions
        else:
            questions = report_questions(benchmark, None if size in ("", "all") else int(size),
                                         data_dir=args.data).questions
        mine = [r for r in rows if r["benchmark"] == benchmark and r["split"] == args.split]
        done = {r["id"] for r in mine}
        for index, start in enumerate(range(0, len(questions), args.batch_size)):
            batch = [q for q in questions[start : start + args.batch_size] if q.id not in done]
            if not batch:
                continue
            made = [{"benchmark": benchmark, "split": args.split, **row}
                    for row in run_batch(model, nodes, batch, index)]
            with log.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in made)
            mine += made
            print(f"{benchmark}: {min(start + args.batch_size, len(questions))}/{len(questions)}", flush=True)
        summaries[benchmark] = report(mine)
        print(json.dumps({benchmark: summaries[benchmark]}, indent=2), flush=True)
    (args.out / "summary.json").write_text(json.dumps({"command": " ".join(sys.argv), "results": summaries},
                                                      indent=2) + "\n")


if __name__ == "__main__":
    main()
