"""`litestage profile`: run the LiteStage offline search into a profile file, or show a profile.

Registered into the `litestage` command by `add_profile_parser(subparsers)`.

* ``litestage profile search --benchmark csqa --data DIR --size 100 --out csqa.json`` calibrates, ranks
  sub-layers, searches per-stage budgets on a seeded slice of the train split and writes the profile.
  Every evaluation is appended to ``--log`` (default: beside ``--out``); re-running the same command
  after an interruption resumes without redoing finished evaluations.
  After the search, the chosen plans and the full model are timed side by side (``--check-rounds``, default 2
  alternating evaluations each) and the measured speedup is stored in the profile: the search's own latencies
  were taken at different times, so their ratios are only estimates.
* ``litestage profile check FILE --data DIR`` does that side-by-side timing for an existing profile, on the
  questions it was searched on, and stores it in the profile (or ``--out``).
* ``litestage profile show NAME_OR_FILE`` prints what a profile runs each stage with (no argument: the
  shipped profile names).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from litestage_chain.budgets.profile import Profile, TraceEntry, shipped_profiles
from litestage_chain.cli.bench import parse_max_tokens
from litestage_chain.cluster.cli import add_cluster_arguments, cluster_options, describe_pool, maybe_pool
from litestage_chain.cluster.search import DistributedEvaluator
from litestage_chain.data import search_questions
from litestage_chain.data.rows import describe_validation_error
from litestage_chain.data.types import question_fingerprint
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.loading import load_model
from litestage_chain.engine.weight_formats import WEIGHT_CHOICES
from litestage_chain.reasoning.shared_context import MEASURED_CONTEXT, add_context_argument, resolve_context
from litestage_chain.errors import InvalidInputError
from litestage_chain.cli.profile_cost import (
    add_cost_aware_options,
    add_predict_option,
    busy_cores_for,
    calibration_rounds,
    predicted_against_measured,
    run_cost_aware_search,
)
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.offline.pipeline import search_profile
from litestage_chain.offline.question_fit import fitting_questions
from litestage_chain.offline.search import SearchConfig
from litestage_chain.offline.speed_check import check_speed

if TYPE_CHECKING:
    from litestage_chain.budgets.profile import Profile
    from litestage_chain.data.types import QuestionSet
    from litestage_chain.engine.loading import LoadedModel


def _points(text: str) -> float:
    """Parse an epsilon given in percentage points (as the paper states it) into a fraction."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"epsilon must be a number of points, got {text!r}") from exc
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"epsilon must be between 0 and 100 points, got {value}")
    return value / 100.0


def normalise_profile_argv(argv: list[str]) -> list[str]:
    """`litestage profile --benchmark ...` means `litestage profile search --benchmark ...`."""
    if len(argv) >= 2 and argv[0] == "profile" and argv[1].startswith("--") and argv[1] != "--help":
        return [argv[0], "search", *argv[1:]]
    return argv


def add_profile_parser(subparsers: Any) -> None:
    """Add the `profile` subcommand (with `search` and `show`) to the `litestage` command's subparsers."""
    profile = subparsers.add_parser(
        "profile",
        help="search per-stage layer-skipping budgets into a profile, or show a profile",
        description="LiteStage offline phase: rank sub-layers, search each stage's skip budget, write a profile.",
    )
    actions = profile.add_subparsers(dest="profile_command", metavar="ACTION")

    search = actions.add_parser(
        "search",
        help="run the budget search on a seeded slice of a benchmark's train split and write a profile",
        description="Calibrate, rank sub-layers and search per-stage budgets; re-running the same command resumes.",
    )
    search.add_argument("--benchmark", required=True, help="benchmark name (csqa, obqa, strategyqa)")
    search.add_argument("--data", metavar="DIR",
                        help="data folder holding <benchmark>/train.jsonl (default: $LITESTAGE_DATA_DIR)")
    search.add_argument("--n", "--size", dest="size", type=int, default=100, metavar="N",
                        help="questions searched on (default 100)")
    search.add_argument("--split-seed", "--seed", dest="seed", type=int, default=0,
                        help="seed of the validation slice drawn from the train split (default 0)")
    search.add_argument("--model", "-m", default="smollm2-135m", help="model source (default: smollm2-135m)")
    search.add_argument("--weights", default="auto", choices=WEIGHT_CHOICES,
                        help="weight format searched with (default auto: the model's recommended format); latencies depend on it")
    search.add_argument("--out", required=True, metavar="FILE", help="where to write the profile JSON")
    search.add_argument("--log", metavar="FILE", help="results log to resume from (default: <out>.search.jsonl)")
    search.add_argument("--epsilon", type=_points, default=0.02, metavar="POINTS",
                        help="allowed drop from the full model, in percentage points (default 2.0)")
    search.add_argument("--metric", choices=("accuracy", "agreement"), default="accuracy",
                        help="accuracy against labels, or agreement with the full model's answers")
    search.add_argument("--step", type=int, default=1, metavar="N", help="skip counts tried: N, 2N, ... (default 1)")
    search.add_argument("--max-skip", type=int, metavar="N", help="largest skip count tried (default: all sub-layers)")
    search.add_argument("--collapse-margin", type=float, default=0.1,
                        help="a candidate this far below the target counts as collapsed (default 0.1)")
    search.add_argument("--patience", type=int, default=2,
                        help="consecutive collapsed candidates (cost-aware: skip counts with no candidate "
                        "accepted) that end a stage's sweep (default 2)")
    search.add_argument("--calibration-size", type=int, default=8, metavar="N",
                        help="questions whose stage texts calibrate the importance ranking (default 8)")
    search.add_argument("--max-tokens", metavar="N|STAGE=N,...",
                        help="cap every stage at N tokens, or per-stage budgets, e.g. recall=32,analysis=64,summary=16")
    search.add_argument("--shots", type=int, default=2, metavar="N", help="worked examples per stage (default 2)")
    add_context_argument(search, f"{MEASURED_CONTEXT}; with --from-profile (cost-aware search), that profile's "
                         "searched format")
    search.add_argument("--no-fallback", action="store_true", help="do not re-run unreadable summaries on the full model")
    search.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="questions decoded together (default 1: single-question latency)")
    search.add_argument("--fresh-timings", action="store_true",
                        help="regenerate and time every stage in every evaluation instead of reusing unchanged "
                        "stages' outputs (slower; steadier comparisons on a busy machine)")
    search.add_argument("--no-early-exit", action="store_true", help="search (and profile) without early exit")
    search.add_argument("--exit-window", type=int, default=4, metavar="N", help="early exit: tokens averaged (default 4)")
    search.add_argument("--exit-threshold", type=float, default=0.5, metavar="P",
                        help="early exit: mean confidence below which a stage stops (default 0.5)")
    search.add_argument("--exit-min-tokens", type=int, default=8, metavar="N",
                        help="early exit: never before N tokens (default 8)")
    search.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: torch's choice; 1 is steadier on a busy machine)")
    search.add_argument(
        "--no-progress", action="store_true",
        help="no progress bars (one line per evaluated candidate is still printed: what a background log needs)",
    )
    search.add_argument("--check-rounds", type=int, default=2, metavar="N",
                        help="after the search, time the chosen plans and the full model side by side, N "
                        "alternating evaluations each, and store the speedup in the profile (default 2; 0 skips)")
    search.add_argument("--check-limit", type=int, metavar="N",
                        help="time the check on the first N searched questions only (default: all of them; the "
                        "check runs 2 x --check-rounds evaluations of them)")
    add_cluster_arguments(search)
    add_cost_aware_options(search)
    search.set_defaults(handler=run_profile_search)

    check = actions.add_parser(
        "check",
        help="time a profile's plans against the full model side by side and store the speedup in the profile",
        description="Evaluate the full model and the profile's plans in alternating evaluations on the questions the "
        "profile was searched on (every stage timed afresh), and store the median speedup in the profile.",
    )
    check.add_argument("profile", help="a profile JSON file (or shipped profile name, with --out)")
    check.add_argument("--data", metavar="DIR",
                       help="data folder holding <benchmark>/train.jsonl (default: $LITESTAGE_DATA_DIR)")
    check.add_argument("--out", metavar="FILE", help="write the checked profile here (default: over the profile file)")
    check.add_argument("--model", "-m", help="model source (default: the model the profile names)")
    check.add_argument("--rounds", type=int, default=2, metavar="N", help="evaluations of each side (default 2)")
    check.add_argument("--max-tokens", metavar="N|STAGE=N,...", help="stage token budgets, as given to the search")
    check.add_argument("--shots", type=int, default=2, metavar="N", help="worked examples per stage (default 2)")
    add_context_argument(check, "the format the profile was searched in")
    check.add_argument("--no-fallback", action="store_true", help="do not re-run unreadable summaries on the full model")
    check.add_argument("--batch-size", type=int, default=1, metavar="N",
                       help="questions decoded together, as in the search (default 1)")
    check.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    check.add_argument("--limit", type=int, metavar="N", help="time on the first N searched questions only")
    check.add_argument("--weights", choices=WEIGHT_CHOICES,
                       help="weight format to time in (default: the one the profile was searched in)")
    check.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_cluster_arguments(check)
    add_predict_option(check)
    check.set_defaults(handler=run_profile_check)

    show = actions.add_parser("show", help="print a profile's per-stage settings (no argument: list shipped ones)")
    show.add_argument("profile", nargs="?", help="a profile JSON file or shipped profile name")
    show.add_argument("--trace", action="store_true", help="also print every evaluated candidate")
    show.add_argument("--model", "-m", help="whose shipped profiles to list or load (default: the default model)")
    show.set_defaults(handler=run_profile_show)

    profile.set_defaults(handler=lambda args: _usage(profile))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 1


def run_profile_search(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Load the model and questions, run the offline search, write the profile and print its summary."""
    from pydantic import ValidationError

    out = out or sys.stdout
    _set_threads(args.threads)
    if args.check_rounds < 0:
        raise InvalidInputError(f"--check-rounds must be >= 0, got {args.check_rounds}")
    if args.check_limit is not None and args.check_limit < 1:
        raise InvalidInputError(f"--check-limit must be >= 1, got {args.check_limit}")
    if getattr(args, "search", "sweep") == "cost-aware":
        profile, caveats, model, questions, target = run_cost_aware_search(args, out)
        return finish_search(profile, caveats, model, questions, args, target, out)
    try:
        config = SearchConfig(
            epsilon=args.epsilon, metric=args.metric, step=args.step, max_skip=args.max_skip,
            collapse_margin=args.collapse_margin, patience=args.patience,
        )
        early_exit = None if args.no_early_exit else EarlyExitConfig(
            window=args.exit_window, threshold=args.exit_threshold, min_tokens=args.exit_min_tokens
        )
    except ValidationError as error:
        raise InvalidInputError(f"invalid search settings: {describe_validation_error(error)}") from error
    for option, value in (("--batch-size", args.batch_size), ("--calibration-size", args.calibration_size)):
        if value < 1:  # checked before the model loads, not minutes later
            raise InvalidInputError(f"{option} must be >= 1, got {value}")
    target = Path(args.out)
    log = Path(args.log) if args.log else target.with_name(target.name + ".search.jsonl")
    # the agreement metric scores against the full model's answers: unlabelled questions are searched on too
    questions = search_questions(args.benchmark, args.size, seed=args.seed, data_dir=args.data,
                                 require_answer=args.metric == "accuracy")
    cluster = cluster_options(args, args.threads)
    model = load_model(args.model, weights=args.weights)
    settings = dict(early_exit=early_exit, max_tokens=parse_max_tokens(args.max_tokens), num_shots=args.shots,
                    fallback=not args.no_fallback, batch_size=args.batch_size, reuse_outputs=not args.fresh_timings,
                    progress=not args.no_progress and cluster is None,
                    context=resolve_context(args.context, default=MEASURED_CONTEXT))
    with maybe_pool(cluster, args.model, model.weights) as pool:
        return _search(args, model, questions, ChainEvaluator(model, **settings), settings, pool, config, log,
                       target, out)


def _search(
    args: argparse.Namespace, model: LoadedModel, questions: QuestionSet, evaluator: Any, settings: dict[str, Any],
    pool: Any, config: Any, log: Path, target: Path, out: TextIO,
) -> int:
    """The search and its side-by-side check, on `pool`'s workers when there is one (else in this process)."""
    if pool is not None:
        evaluator = DistributedEvaluator(evaluator, pool, settings)
        out.write(describe_pool(pool) + "\n")
    out.write(f"searching {model.name} on {questions.benchmark}/{questions.split}; log: {log}\n")
    out.flush()

    def report(entry: TraceEntry) -> None:
        stage = entry.stage or "full model"
        mark = "meets target" if entry.meets_target else "below target"
        stored = ", from log" if entry.reused else ""
        out.write(f"  {stage:>10} skip {entry.skip_count:>2}: {args.metric} {entry.score:.3f}, "
                  f"{entry.mean_latency_seconds:.2f} s/question, {mark}{stored}\n")
        out.flush()

    profile, result, _ = search_profile(
        model, questions, config=config, evaluator=evaluator, calibration_size=args.calibration_size,
        seed=args.seed, store_path=log, on_candidate=report, progress=not args.no_progress,
    )
    profile.save(target)
    speedup = result.full.mean_latency_seconds / result.final.mean_latency_seconds if result.final.mean_latency_seconds else 0.0
    out.write(
        f"{args.metric}: full {result.full_score:.3f} -> {result.final_score:.3f}; latency as searched "
        f"{result.full.mean_latency_seconds:.2f} s -> {result.final.mean_latency_seconds:.2f} s per question "
        f"({speedup:.2f}x, measured at different times); {result.evaluations} new evaluations\n"
    )
    return finish_search(profile, result.caveats, model, questions, args, target, out, pool)


def finish_search(
    profile: Profile, caveats: list[str], model: LoadedModel, questions: QuestionSet, args: argparse.Namespace,
    target: Path, out: TextIO, pool: Any = None,
) -> int:
    """Print a finished search's caveats, time its plans side by side (`--check-rounds`) and print the profile."""
    for caveat in caveats:
        out.write(f"caveat: {caveat}\n")
    if args.check_rounds:
        profile = _check_and_save(profile, model, questions, args, args.check_rounds, target, out, pool)
    out.write(profile.describe() + f"\nwrote {target}\n")
    out.flush()
    return 0


def run_profile_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Time an existing profile's plans against the full model side by side and store the result in the profile."""

    out = out or sys.stdout
    _set_threads(args.threads)
    if args.rounds < 1:
        raise InvalidInputError(f"--rounds must be >= 1, got {args.rounds}")
    if getattr(args, "cost_busy", 0) and not getattr(args, "predict", False):
        raise InvalidInputError("--cost-busy sets the load the costs of --predict are timed under: give --predict too")
    if args.out is None and not Path(args.profile).is_file():
        raise InvalidInputError(f"{args.profile!r} is not a profile file: give --out to write the checked profile")
    profile = Profile.load(args.profile, model=args.model)
    searched = profile.questions
    questions = search_questions(searched.benchmark, searched.size, seed=searched.seed or 0, data_dir=args.data,
                                 require_answer=profile.metric == "accuracy")
    cluster = cluster_options(args, args.threads)
    if getattr(args, "limit", None) is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {args.limit}")
    model = load_model(args.model or profile.model.name, weights=getattr(args, "weights", None) or profile.model.weights)
    profile.check_model(model)
    target = Path(args.out or args.profile)
    with maybe_pool(cluster, args.model or profile.model.name, model.weights) as pool:
        profile = _check_and_save(profile, model, questions, args, args.rounds, target, out, pool)
    out.write(profile.describe() + f"\nwrote {target}\n")
    return 0


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise InvalidInputError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def _check_and_save(
    profile: Profile, model: LoadedModel, questions: QuestionSet, args: argparse.Namespace, rounds: int,
    target: Path, out: TextIO, pool: Any = None,
) -> Profile:
    """Time the profile's plans and the full model side by side, every stage afresh; save the profile with it."""

    if args.batch_size < 1:
        raise InvalidInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    rules = {stage: profile.early_exit_for(stage) for stage in profile.stages}  # the plans' side only
    settings = dict(early_exit=None, max_tokens=parse_max_tokens(args.max_tokens), num_shots=args.shots, fallback=not args.no_fallback,
                    batch_size=args.batch_size, reuse_outputs=False, progress=not args.no_progress and pool is None,
                    context=resolve_context(args.context, profile.context))  # the format its plans were searched in
    base = ChainEvaluator(model, **settings)
    evaluator: Any = base
    if pool is not None:  # every side's evaluation split over the workers, the same shards for both sides
        evaluator = DistributedEvaluator(base, pool, settings)
    out.write(f"timing the plans against the full model side by side ({rounds} evaluations each)\n")
    out.flush()

    results: dict[str, list[Any]] = {"full": [], "plans": []}

    def report(side: str, result: Any) -> None:
        results[side].append(result)
        out.write(f"  {side:>5}: {result.mean_latency_seconds:.2f} s/question\n")
        out.flush()

    plans = {stage: profile.plan_for(stage) for stage in profile.stages}
    fitting, _ = fitting_questions(base, questions.questions)  # the ones the search skipped, skipped again
    searched = profile.questions.fingerprint
    if searched is not None and question_fingerprint(fitting) != searched:
        raise InvalidInputError(
            f"the questions drawn now ({profile.questions.benchmark} train, {profile.questions.size} with seed "
            f"{profile.questions.seed}) are not the ones the profile was searched on: the data file changed, or the "
            "search used another slice or other token budgets"
        )
    limit = getattr(args, "limit", None) or getattr(args, "check_limit", None)  # `check --limit`, `search --check-limit`
    if limit is not None:
        fitting = fitting[:limit]
    caps = {stage: profile.max_tokens_for(stage) for stage in profile.stages}  # likewise
    check = check_speed(evaluator, plans, fitting, rounds=rounds, on_evaluation=report, early_exit=rules,
                        max_tokens=caps)
    if getattr(args, "predict", False):
        with busy_cores_for(args, args.model or profile.model.name, model.weights) as busy:
            predicted_against_measured(model, plans, results, args.batch_size, rounds, out, busy=busy,
                                       calibration_rounds=calibration_rounds(args))
    checked = profile.model_copy(update={"speed_check": check})
    checked.save(target)
    return checked


def run_profile_show(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print a profile's summary (and trace), or the shipped profile names."""

    out = out or sys.stdout
    model = getattr(args, "model", None)
    if not args.profile:
        names = shipped_profiles(model)
        owner = f" for {model}" if model else ""
        out.write((f"shipped profiles{owner}: " + ", ".join(names)) if names else f"no shipped profiles{owner}")
        out.write("\n")
        return 0
    profile = Profile.load(args.profile, model=model)
    out.write(profile.describe() + "\n")
    if args.trace:
        for entry in profile.trace:
            flags = "".join((" chosen" if entry.chosen else "", " (below target)" if not entry.meets_target else ""))
            tokens = " ".join(f"{stage} {count:.0f}" for stage, count in entry.generated_tokens.items() if count)
            out.write(f"  {entry.stage or 'full':>10} skip {entry.skip_count:>2}: score {entry.score:.3f}, "
                      f"{entry.mean_latency_seconds:.2f} s, tokens/question: {tokens}{flags}\n")
    return 0
