"""Where a cost-model prediction misses: each stage call's measured prefill and decode seconds inside real chain
evaluations, beside the cost model's price of the same tokens, and every in-stage decode step beside the timer's price
of a step at that batch size and context.

Why: the search predicts a profile's latency as token counts times prices timed on synthetic prompts
(`offline/cost_model.py`). On StrategyQA it predicted 1.12-1.13x where side by side checks measured 1.19-1.25x, and
the question is which part of a stage the prices get wrong: the batch's prefill, the decode steps at the batch sizes a
batch thins to as rows finish, or something the model leaves out (storing finished rows, dropping them from the
batch). This runs `litestage profile check` (the full model and the profile's plans, alternating, every stage timed
afresh) with the engine's decode step and the chat model's generate call wrapped to record what they did, then times
the full model's reference prices in the same process (`cost_model_for`, as a search does), and prints:

- per stage call kind (by its token budget): rows, mean generated tokens, and per row the measured / predicted
  prefill seconds (the batch's) and decode seconds (its own steps);
- per active batch size: decode steps seen, their median seconds, whether they ran with a key mask, and the timer's
  price at their mean context.

Prices come from the full model's reference only, so the profile should skip nothing (caps and exit rules are fine):
a profile that skips sub-layers is reported as such and refused.

    OMP_NUM_THREADS=1 python benchmarks/stage_costs.py strategyqa --data ../shared/data --limit 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from statistics import fmean, median
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from litestage_chain import load_model  # noqa: E402
from litestage_chain.budgets.profile import Profile  # noqa: E402
from litestage_chain.budgets.stages import STAGES  # noqa: E402
from litestage_chain.chat import chat_model  # noqa: E402
from litestage_chain.cli.main import main as cli_main  # noqa: E402
from litestage_chain.engine import generation  # noqa: E402
from litestage_chain.offline.cost_model import PlanCosts, RowTokens, batch_seconds  # noqa: E402
from litestage_chain.offline.cost_pipeline import cost_model_for  # noqa: E402

MODEL = "qwen2.5-coder-1.5b"

Call = tuple[int, list[tuple[int, int, int, float, float]]]
"""One generate call: its token budget, and per row (prompt tokens, tokens whose KV came from a table, generated
tokens, prefill seconds, decode seconds)."""
Step = tuple[int, int, float, bool]
"""One decode step: active rows, its first cache column (the context), seconds, whether it ran with a key mask."""


@contextmanager
def recording() -> Iterator[tuple[list[Call], list[Step]]]:
    """The chat model's generate call and the engine's decode step wrapped, inside the block only, so that every
    run appends to the yielded lists; the originals are back afterwards (the reference timing runs unwrapped)."""
    calls: list[Call] = []
    steps: list[Step] = []
    generate = chat_model.generate
    decode_one = generation.decode_one

    def timed_generate(model: Any, prompts: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        results = generate(model, prompts, *args, **kwargs)
        calls.append((kwargs["config"].max_new_tokens, [
            (r.prompt_tokens, r.prefix_tokens, r.generated_tokens, r.prefill_seconds, r.decode_seconds)
            for r in results]))
        return results

    def timed_step(view: Any, tokens: Any, positions: Any, key_valid: Any, cache: Any, start: int, plan: Any) -> Any:
        began = time.perf_counter()
        logits = decode_one(view, tokens, positions, key_valid, cache, start, plan)
        steps.append((int(tokens.shape[0]), start, time.perf_counter() - began, key_valid is not None))
        return logits

    chat_model.generate = timed_generate  # type: ignore[assignment]
    generation.decode_one = timed_step  # type: ignore[assignment]
    try:
        yield calls, steps
    finally:
        chat_model.generate = generate  # type: ignore[assignment]
        generation.decode_one = decode_one  # type: ignore[assignment]


def stage_table(calls: Sequence[Call], costs: PlanCosts) -> list[str]:
    """Measured against predicted prefill and decode seconds per row, by the calls' token budget."""
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0] * 6)
    for budget, rows in calls:
        whole = batch_seconds(costs, [RowTokens(prefilled=p - c, generated=g, context=p) for p, c, g, _, _ in rows])
        decode = batch_seconds(costs, [RowTokens(prefilled=0, generated=g, context=p) for p, _, g, _, _ in rows])
        total = sums[budget]
        total[0] += len(rows)
        total[1] += sum(g for _, _, g, _, _ in rows)
        total[2] += sum(prefill for *_, prefill, _ in rows)
        total[3] += sum(w - d for w, d in zip(whole, decode))
        total[4] += sum(seconds for *_, seconds in rows)
        total[5] += sum(decode)
    lines = ["| token budget | rows | generated | prefill s/row, measured / predicted "
             "| decode s/row, measured / predicted |", "|---:|---:|---:|---:|---:|"]
    for budget, (n, generated, prefill, prefill_predicted, decode, decode_predicted) in sorted(sums.items()):
        lines.append(f"| {budget} | {n:.0f} | {generated / n:.1f} | {prefill / n:.2f} / {prefill_predicted / n:.2f} "
                     f"({_off(prefill_predicted, prefill)}) | {decode / n:.2f} / {decode_predicted / n:.2f} "
                     f"({_off(decode_predicted, decode)}) |")
    return lines


def step_table(steps: Sequence[Step], costs: PlanCosts) -> list[str]:
    """Median in-stage decode step per active batch size against the timer's price at the steps' mean context."""
    by_size: dict[int, list[Step]] = defaultdict(list)
    for step in steps:
        by_size[step[0]].append(step)
    lines = ["| rows | steps | masked | median step ms | mean context | timer's price ms |",
             "|---:|---:|---:|---:|---:|---:|"]
    for size, seen in sorted(by_size.items()):
        measured = median(s[2] for s in seen)
        context = fmean(s[1] for s in seen)
        price = costs.decode(size, context)
        lines.append(f"| {size} | {len(seen)} | {sum(s[3] for s in seen)} | {1000 * measured:.1f} | {context:.0f} | "
                     f"{1000 * price:.1f} ({_off(price, measured)}) |")
    return lines


def _off(predicted: float, measured: float) -> str:
    return f"{100 * (predicted / measured - 1):+.0f}%" if measured > 0 else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="a shipped profile of the benchmark model that skips nothing (e.g. strategyqa)")
    parser.add_argument("--data", required=True, help="data folder holding <benchmark>/train.jsonl")
    parser.add_argument("--limit", type=int, default=32, help="the first N searched questions (default 32)")
    parser.add_argument("--rounds", type=int, default=1, help="evaluations of each side (default 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    profile = Profile.load(args.profile, model=MODEL)
    skipping = [stage for stage in STAGES if not profile.plan_for(stage).is_empty]
    if skipping:
        raise SystemExit(f"profile {args.profile!r} skips sub-layers in {', '.join(skipping)}: this script prices "
                         "every call at the full model's reference, so it takes only profiles that skip nothing")
    with recording() as (calls, steps), tempfile.TemporaryDirectory() as scratch:  # the checked profile is unused
        status = cli_main(["profile", "check", args.profile, "--model", MODEL, "--data", args.data, "--out",
                           f"{scratch}/checked.json", "--rounds", str(args.rounds), "--batch-size",
                           str(args.batch_size), "--limit", str(args.limit), "--threads", "1", "--no-progress"])
    if status:
        raise SystemExit(status)
    model = load_model(MODEL, weights=profile.model.weights)
    costs = cost_model_for(model, args.batch_size).full_costs()  # the reference a search times first
    print(f"\nper stage call ({len(calls)} calls), prices timed after the evaluations in this process")
    print("\n".join(stage_table(calls, costs)))
    print(f"\nper decode step ({len(steps)} steps)")
    print("\n".join(step_table(steps, costs)))


if __name__ == "__main__":
    main()
