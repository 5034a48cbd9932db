"""The `litestage` command. `litestage ask` runs the three-stage reasoning chain and streams it to the terminal.

Subcommands are argparse subparsers registered in `SUBCOMMANDS`, so `profile` and `bench` can be added as
`add_<name>_parser(subparsers)` functions without touching `ask`. Failures a user can cause (bad question, missing
model or profile) print one `litestage: error: ...` line and exit with status 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from litestage_chain.budgets.coerce import as_stage_budgets
from litestage_chain.budgets.stage_budgets import StageBudgets
from litestage_chain.budgets.stages import STAGES
from litestage_chain.chat.chat_model import ChatLiteStage
from litestage_chain.cli.bench import add_bench_subcommand
from litestage_chain.cli.demo import add_demo_parser
from litestage_chain.cli.output import StagePrinter, answer_line, timing_table
from litestage_chain.cli.profile import add_profile_parser, normalise_profile_argv
from litestage_chain.data.types import Question
from litestage_chain.engine.quant.formats import kernel_path
from litestage_chain.engine.weight_formats import WEIGHT_CHOICES
from litestage_chain.reasoning.shared_context import add_context_argument
from litestage_chain.errors import InvalidInputError, LiteStageError
from litestage_chain.reasoning.chain import DEFAULT_MAX_TOKENS, build_reasoning_chain


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `litestage` console script; returns the process exit status."""
    parser = build_parser()

    args = parser.parse_args(normalise_profile_argv(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 1
    if sys.stdout is None:  # started with standard output closed (`litestage ... >&-`)
        return fail("standard output is closed; redirect it to a file or /dev/null")
    try:
        return int(args.handler(args) or 0)
    except LiteStageError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("litestage: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return quiet_broken_pipe()
    except OSError as exc:  # a path the user gave: missing, a folder, not writable, disk full, closed output
        where = f": {exc.filename}" if exc.filename else ""
        return fail(f"{exc.strerror or type(exc).__name__}{where}")
    except RecursionError:
        return fail("an input file is nested too deeply to be read")


def fail(message: str) -> int:
    """Print the one `litestage: error:` line of a failure the user can fix; the exit status is 2."""
    print(f"litestage: error: {message}", file=sys.stderr)
    return 2


def quiet_broken_pipe() -> int:
    """The reader of standard output went away (`litestage ask ... | head -1`): stop without a traceback.

    Standard output is pointed at /dev/null so that the interpreter's final flush does not fail again; the exit
    status is the shell's for a process ended by SIGPIPE."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litestage",
        description="LiteStage: multi-stage reasoning with a small local model and per-stage layer skipping.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


# ----------------------------------------------------------------------------------------------- ask


def add_ask_parser(subparsers: Any) -> None:
    ask = subparsers.add_parser(
        "ask",
        help="answer a multiple-choice or yes/no question with the recall -> analysis -> summary chain",
        description="Answer a question step by step, streaming each stage, then print the answer and timings. "
        "Without --choice the question is a yes/no question.",
    )
    ask.add_argument("question", help="the question text")
    ask.add_argument(
        "--choice", "-c", action="append", default=[], metavar="TEXT",
        help="an answer option (repeat for each option; labelled A, B, C, ... in order)",
    )
    ask.add_argument("--model", "-m", default="smollm2-135m", help="model source (default: the embedded smollm2-135m)")
    ask.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                     help="weight format the engine runs in (default auto: the model's recommended format)")
    ask.add_argument(
        "--profile", "-p", metavar="FILE",
        help="per-stage budgets: a profile JSON file or shipped profile name, or a JSON file mapping stage -> "
        '{"attention": [...], "mlp": [...]}',
    )
    ask.add_argument("--max-tokens", type=int, metavar="N", help="cap every stage at N generated tokens")
    ask.add_argument("--shots", type=int, default=2, metavar="N", help="worked examples per stage (default 2)")
    add_context_argument(ask, "a searched --profile's format; plain plans: separate; the full model: continued")
    ask.add_argument("--no-fallback", action="store_true", help="do not re-run the summary on the full model")
    ask.add_argument("--no-stream", action="store_true", help="print each stage when done instead of streaming")
    ask.add_argument("--json", action="store_true",
                     help="print the full result as JSON on stdout, and the human-readable text on stderr")
    ask.set_defaults(handler=run_ask)


def run_ask(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Build the chain, run the question, stream or print each stage, then the answer and the timing table.

    With `--json`, `out` (stdout) gets the JSON result only, so it can be piped (`| jq .answer`); the stages, the
    answer and the table go to stderr.
    """

    data = out or sys.stdout
    out = sys.stderr if args.json else data
    if args.max_tokens is not None and args.max_tokens < 1:
        raise InvalidInputError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    choices = args.choice or ["yes", "no"]
    question = Question.coerce({"question": args.question, "choices": choices})
    plans = load_plans(args.profile, model=args.model) if args.profile else None
    max_tokens = (
        {stage: min(limit, args.max_tokens) for stage, limit in DEFAULT_MAX_TOKENS.items()}
        if args.max_tokens
        else None
    )
    model = ChatLiteStage(model=args.model, weights=getattr(args, "weights", "auto"))
    chain = build_reasoning_chain(
        model, plans=plans, max_tokens=max_tokens, num_shots=args.shots, fallback=not args.no_fallback,
        context=getattr(args, "context", None),
    )
    out.write(f"Question: {question.question}\n")
    for choice in question.choices:
        out.write(f"  {choice.label}. {choice.text}\n")
    out.flush()
    printer = StagePrinter(out)
    logging.getLogger("langchain_core.callbacks.manager").addFilter(printer.quiet_own_errors)
    result = chain.invoke(question, config={"callbacks": [printer]} if not args.no_stream else None)
    if args.no_stream:
        for stage in STAGES:
            printer.header(stage)
            out.write(result.stages[stage].text)
        if result.fallback is not None:
            printer.header("summary (full model)")
            out.write(result.fallback.text)
    out.write("\n\n")
    out.write(f"Answer: {answer_line(result)}\n\n")
    loaded = model.loaded_model()
    profile_note = f", profile {args.profile}" if args.profile else ""
    kernel = kernel_path(loaded.weights)
    kernel_note = {"aten": "", "float32 fallback": " (no fast kernel on this CPU: float32 speed)"}.get(
        kernel, f" ({kernel} kernels)"
    )
    out.write(f"model {loaded.name}, {loaded.weights} weights{kernel_note}{profile_note}\n")
    out.write(timing_table(result))
    out.flush()
    if args.json:
        data.write(result.model_dump_json(indent=2) + "\n")
        data.flush()
    return 0


def load_plans(source: str, model: str | None = None) -> StageBudgets:
    """Read per-stage budgets: a searched `Profile` (file, or `model`'s shipped profile by name), else a plain
    stage -> plan JSON file."""
    budgets = as_stage_budgets(source, model=model)
    assert budgets is not None
    return budgets


SUBCOMMANDS: list[Callable[[Any], None]] = [add_ask_parser, add_demo_parser, add_profile_parser, add_bench_subcommand]
"""Registration functions of the subcommands, in the order `litestage --help` lists them."""
