"""`litestage demo`: the main job on a question a person can judge, LiteStage against the full model.

The benchmark model (Qwen2.5-Coder-1.5B-Instruct, assembled from its PyPI parts) answers with its searched
LiteStage profile, streaming the recall, analysis and summary stages; then the same question runs on the full model
(nothing skipped, no early exit), and both are timed stage by stage after an untimed first pass of each (which
computes each plan's few-shot prefix once, as steady use has it). With `--rounds N` the two alternate N times
(LiteStage first in odd rounds, the full model first in even ones) and the speed is the ratio of the medians; one
question on a shared CPU is an anecdote, the recorded runs in benchmarks/README.md are the measurement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, TextIO

from litestage_chain.budgets.coerce import as_stage_budgets
from litestage_chain.budgets.profile import Profile
from litestage_chain.budgets.stages import STAGES
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.cli.output import StagePrinter, answer_line, timing_table
from litestage_chain.data.types import Question
from litestage_chain.engine.weight_formats import WEIGHT_CHOICES
from litestage_chain.errors import InvalidInputError, LiteStageError
from litestage_chain.reasoning.chain import build_reasoning_chain, plans_context
from litestage_chain.reasoning.shared_context import resolve_context

DEMO_MODEL = "qwen2.5-coder-1.5b"
DEMO_PROFILE = "obqa"
"""The model's shipped OpenBookQA profile (for the benchmark model: `profiles/qwen2.5-coder-1.5b/obqa.json`, from
the cost-aware search on 200 train questions). The earlier 48-question profile skipped 23 attention sub-layers in
the analysis stage, which on this demo question turned its analysis into unrelated text."""
DEMO_QUESTION = "Where would you put a plate after washing it?"
DEMO_CHOICES = ("in the oven", "in the cupboard", "on the floor", "in the garden")


def add_demo_parser(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="LiteStage against the full model on one question, with per-stage timings",
        description="Answer a question with the benchmark model and its LiteStage profile (streamed), then on the "
        "full model, and print both answers, per-stage timings and the speed against the full model.",
    )
    demo.add_argument("question", nargs="?", default=DEMO_QUESTION, help="the question (default: a plate question)")
    demo.add_argument("--choice", "-c", action="append", default=[], metavar="TEXT",
                      help="an answer option (repeat; default: the plate question's four options)")
    demo.add_argument("--model", "-m", default=DEMO_MODEL, help=f"model source (default {DEMO_MODEL})")
    demo.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                      help="weight format (default auto: the format the profile was searched in)")
    demo.add_argument("--profile", "-p", default=DEMO_PROFILE, metavar="FILE",
                      help=f"the model's LiteStage profile: a shipped name or a file (default {DEMO_PROFILE!r}, "
                      "the model's own shipped profile of that name)")
    demo.add_argument("--rounds", type=int, default=1, metavar="N",
                      help="time LiteStage and the full model N times each, alternating (default 1)")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the comparison and print it (see the module docstring)."""
    out = out or sys.stdout
    if args.rounds < 1:
        raise InvalidInputError(f"--rounds must be >= 1, got {args.rounds}")
    if args.question != DEMO_QUESTION and not args.choice:
        raise InvalidInputError("give the options of your question with --choice (one per option)")
    question = Question.coerce({"question": args.question, "choices": args.choice or list(DEMO_CHOICES)})
    if not Path(args.profile).is_file() and "/" in args.profile:
        raise InvalidInputError(f"no profile file {args.profile!r}: run the demo from the repository root")
    # A searched profile file or the model's shipped profile of that name (loaded once: its budgets and its
    # side-by-side check), else a JSON file of plain stage -> plan settings.
    searched = _searched_profile(args.profile, args.model)
    profile = as_stage_budgets(searched if searched is not None else args.profile, model=args.model)
    out.write(f"Loading {args.model} (the first run assembles, converts and compiles once; progress on stderr)\n")
    out.flush()
    weights = args.weights
    if weights == "auto" and getattr(profile, "model", None) is not None:
        weights = profile.model.weights  # the format the profile's plans were searched and timed in
    model = ChatLiteStage(model=args.model, weights=weights)
    loaded = model.loaded_model()
    shipped = "" if Path(args.profile).is_file() else f" (shipped for {args.model})"
    out.write(f"model {loaded.name}, {loaded.weights} weights, LiteStage profile {args.profile}{shipped}\n")
    if searched is not None and searched.speed_check is not None:
        out.write(f"  the profile's own side-by-side check: {searched.speed_check.describe()}\n")
    out.write(f"\nQuestion: {question.question}\n")
    for choice in question.choices:
        out.write(f"  {choice.label}. {choice.text}\n")
    out.flush()
    # both chains in one format, the profile's (where its plans were measured): the comparison is the method's
    fmt = resolve_context(None, plans_context(profile))
    out.write(f"reasoning format: {fmt} (both runs)\n")
    litestage = build_reasoning_chain(model, plans=profile, context=fmt)
    full = build_reasoning_chain(model, plans=None, context=fmt)
    # Untimed first pass of each chain (the LiteStage one streamed: what the user watches). The first call of a plan
    # computes its few-shot prefix, which later calls reuse; timing that would charge whichever ran first, so the
    # timed rounds below start with both chains' prefixes computed, as in steady use (the benchmarks report the
    # prefix's one-time cost apart for the same reason).
    litestage.invoke(question, config={"callbacks": [StagePrinter(out)]})
    out.write("\n(first pass of the full model, untimed) ...\n")
    out.flush()
    full.invoke(question)
    runs: dict[str, list[Any]] = {"litestage": [], "full": []}
    for round_number in range(args.rounds):
        order = ("litestage", "full") if round_number % 2 == 0 else ("full", "litestage")
        for name in order:
            out.write(f"(timing the {'full model' if name == 'full' else 'LiteStage run'} on the same question,"
                      f" round {round_number + 1} of {args.rounds}) ...\n")
            out.flush()
            runs[name].append((litestage if name == "litestage" else full).invoke(question))
    fast, slow = runs["litestage"][0], runs["full"][0]
    out.write(f"\n\nLiteStage answer: {answer_line(fast)}\nFull model answer: {answer_line(slow)}\n")
    out.write(f"\nLiteStage (first round)\n{timing_table(fast)}\nFull model (first round)\n{timing_table(slow)}\n")
    out.write(speed_summary(runs["litestage"], runs["full"]))
    out.flush()
    return 0


def _searched_profile(source: str, model: str) -> Profile | None:
    """`source` as a searched profile (a file or `model`'s shipped name), or None for a plain plans file, which
    records neither where it came from nor a side-by-side check."""
    try:
        return Profile.load(source, model=model)
    except LiteStageError:
        return None


def speed_summary(litestage: list[Any], full: list[Any]) -> str:
    """Per-stage and total speed of LiteStage against the full model: ratios of median model seconds."""

    def median(results: list[Any], stage: str | None) -> float:
        values = [r.model_seconds if stage is None else r.stages[stage].seconds for r in results]
        return statistics.median(values)

    lines = [f"speed against the full model (median of {len(litestage)} run(s) each, model seconds):"]
    for stage in (*STAGES, None):
        fast, slow = median(litestage, stage), median(full, stage)
        ratio = f"{slow / fast:.2f}x" if fast > 0 else "n/a"
        lines.append(f"  {stage or 'total':<9} {slow:7.2f} s full, {fast:7.2f} s LiteStage: {ratio}")
    return "\n".join(lines) + "\n"
