"""The shared-context reasoning format: recall, analysis and summary as consecutive segments of one sequence.

Today's separate format (the paper's) gives each stage a fresh few-shot prompt that repeats the question and the
earlier stages' outputs, so every stage prefills them again: on a CPU the summary stage spends nearly all its time
re-reading. Here one few-shot prefix of complete three-stage worked examples and the question are followed by one
assistant turn that the stages write in turn, each after its header:

    Key information: <recall>
    Analysis:
    <analysis>
    So the answer is option <summary>

Stage s+1's prompt is exactly stage s's prompt + output + the next header, sent as a continued assistant turn
(`continuation.py`), so with the model's context cache each stage prefills only its header and the few tokens where
the cleaned output and the generated tokens differ. Each piece carries the plan that computed it (the earlier
stage's `StageOutput.skipped`), which is what keeps a cached answer equal to a cold one.

The shared format costs accuracy on the benchmark model (its analysis, written in the same turn as the recall,
judges the options differently: benchmarks/README.md). A third format, "continued", keeps the separate format's
recall and analysis prompts, where that judgement is made, and removes only the summary's re-reading: the summary
continues the analysis's own turn,

    <analysis prompt, as in the separate format> <analysis>
    So the answer is option <summary>

so it reuses the KV entries of the analysis's prompt and output and prefills one line. In the separate format that
re-reading is a third of the full model's time per question at batch 8 (the summary prefills the question, options,
key information and analysis again for 8 generated tokens).
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.prompt_values import ChatPromptValue

from litestage_chain.chat.continuation import Segment, continuation_message
from litestage_chain.errors import InvalidInputError
from litestage_chain.budgets.stages import CONTEXT_FORMATS, ContextFormat, Stage
from litestage_chain.reasoning.stage_output import StageOutput

DEFAULT_CONTEXT: ContextFormat = "continued"
"""The format the full model's chain runs in when the caller names none (`resolve_context`).

Why "continued": on the benchmark model's dev runs (500 CSQA, 500 OBQA, 229 StrategyQA questions, side by side) it
made the full model's chain 1.65x, 1.46x and 1.44x faster than the separate format at no measured loss, and its
recall and analysis are the separate format's calls bit for bit; only the summary changes (benchmarks/README.md
section 6). A chain with skip plans runs in the format they were measured in instead (`chain.plans_context`): a
searched profile's (a summary plan that skips many sub-layers can fail in the other one), else `MEASURED_CONTEXT`."""

MEASURED_CONTEXT: ContextFormat = "separate"
"""The format the search, the benchmarks and the evaluator measure in unless told (the paper's staged chain).

Why not `DEFAULT_CONTEXT`: a measurement's default is what the recorded runs and the shipped profiles were made in,
so a re-run resumes them and a new profile compares with the old; and the continued format's summary, timed after a
reused analysis, prefills the whole chain again (`bench --no-reuse` is its fair setting), which a default must not
get wrong silently. Ask for another with `--context`."""

HEADERS: dict[Stage, str] = {"recall": "Key information:", "analysis": "\nAnalysis:\n", "summary": "\n"}
"""What precedes each stage's output in the shared turn (the summary's "So the answer is option" is its reply
prefix, so that it stays part of the summary's text, where the answer extractor reads it)."""
SUMMARY_LEAD = "So the answer is option"
SHARED_STOPS: dict[Stage, list[str]] = {
    "recall": ["\n", "Analysis:"],
    "analysis": ["\n\n", "So the answer", "Question:"],
    "summary": ["\n"],
}
"""Where each stage's segment ends in the shared turn: recall is one line, analysis one line per option."""


def format_mismatch(searched: ContextFormat, running: ContextFormat) -> str:
    """What to tell a user who runs a profile's plans in another format than the one they were searched in.

    Between the separate and continued formats only the summary differs (recall and analysis are the same prompts),
    so the warning says that only the summary's plan is unmeasured there."""
    which = ("its summary plan's accuracy" if {searched, running} == {"separate", "continued"}
             else "its plans' accuracy")
    return (f"the profile was searched in the {searched!r} format and runs here in {running!r}: {which} "
            f"was measured only in {searched!r} (search again with --context {running}, or run with --context "
            f"{searched})")


def resolve_context(
    context: object, measured: ContextFormat | None = None, *, default: ContextFormat = DEFAULT_CONTEXT
) -> ContextFormat:
    """The format to run in: `context` when given (checked), else the format the plans were `measured` in, else
    `default`: `DEFAULT_CONTEXT` (the full model's) for a chain, `MEASURED_CONTEXT` for the commands that measure."""
    if context is None:
        return measured if measured is not None else default
    return check_context(context)


def check_context(context: object) -> ContextFormat:
    """`context` as a `ContextFormat`, or `InvalidInputError` naming the two formats."""
    if context not in CONTEXT_FORMATS:
        raise InvalidInputError(f"unknown context format {context!r}: expected 'separate', 'shared' or 'continued'")
    return context  # type: ignore[return-value]


def add_context_argument(parser: Any, default: str) -> None:
    """`--context separate|shared|continued` for the commands that run the chain; `default` says in the help what
    an absent option means (the option itself defaults to None, so a command can tell "not given" apart)."""
    parser.add_argument(
        "--context", choices=CONTEXT_FORMATS, default=None,
        help="reasoning format: 'separate' gives each stage its own prompt (the paper's); 'shared' makes the stages "
        "one sequence whose KV entries each stage reuses; 'continued' is 'separate' with the summary continuing the "
        f"analysis's turn, reusing its KV entries (default: {default})",
    )


def turn_segments(stage: Stage, state: dict[str, Any]) -> list[Segment]:
    """The shared assistant turn up to `stage`'s header, piece by piece, each with the plan that computed it."""
    segments: list[Segment] = []
    for earlier in ("recall", "analysis"):
        if earlier == stage:
            break
        output: StageOutput = state[earlier]
        text = (" " if earlier == "recall" else "") + output.text
        segments += [(HEADERS[earlier], output.skipped), (text, output.skipped)]
    segments.append((HEADERS[stage], None))
    return segments


def shared_prompt(messages: list[BaseMessage], stage: Stage, state: dict[str, Any]) -> ChatPromptValue:
    """The stage's prompt: the rendered few-shot conversation and question, then the continued turn."""
    return ChatPromptValue(messages=[*messages, continuation_message(turn_segments(stage, state))])


def reads_earlier_kv(context: ContextFormat, stage: Stage) -> bool:
    """Whether `stage` reuses KV entries an earlier stage computed (so its output depends on the plans that did):
    every stage after the first in the shared format, the summary in the continued one."""
    return (context == "shared" and stage != "recall") or (context == "continued" and stage == "summary")


def reuses_context(context: ContextFormat, stage: Stage) -> bool:
    """Whether `stage`'s call reads or stores the model's context cache: every stage of the shared format; in the
    continued format the analysis (it stores what the summary continues) and the summary."""
    return context == "shared" or (context == "continued" and stage != "recall")


def continued_summary_prompt(messages: list[BaseMessage], state: dict[str, Any]) -> ChatPromptValue:
    """The continued format's summary prompt: the analysis's rendered conversation, then its turn continued (the
    analysis output, computed under the analysis's plan, and a line break; the reply starts with `SUMMARY_LEAD`)."""
    analysis: StageOutput = state["analysis"]
    segments: list[Segment] = [(analysis.text, analysis.skipped), ("\n", None)]
    return ChatPromptValue(messages=[*messages, continuation_message(segments)])
