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

DEFAULT_CONTEXT: ContextFormat = "separate"
"""The format the chain, the evaluator, the benchmarks and the CLI use unless told: one constant, because which one
it is follows a measurement (the paired accuracy of the two formats on the benchmark model, benchmarks/README.md)."""

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


def check_context(context: object) -> ContextFormat:
    """`context` as a `ContextFormat`, or `InvalidInputError` naming the two formats."""
    if context not in CONTEXT_FORMATS:
        raise InvalidInputError(f"unknown context format {context!r}: expected 'separate', 'shared' or 'continued'")
    return context  # type: ignore[return-value]


def add_context_argument(parser: Any) -> None:
    """`--context shared|separate` for the commands that run the chain."""
    parser.add_argument(
        "--context", choices=CONTEXT_FORMATS, default=DEFAULT_CONTEXT,
        help="reasoning format: 'separate' gives each stage its own prompt (the paper's); 'shared' makes the stages "
        "one sequence whose KV entries each stage reuses; 'continued' is 'separate' with the summary continuing the "
        f"analysis's turn, reusing its KV entries (default {DEFAULT_CONTEXT})",
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
