"""`litestage profile search --search cost-aware`: the cost-aware search's options and its run.

Kept apart from `profile_cli.py`, which registers the subcommand and dispatches here, so the plain sweep's command
stays as it was.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any, TextIO

from pydantic import ValidationError

from litestage_chain.budgets.profile import Profile
from litestage_chain.budgets.stage_budgets import StageBudget
from litestage_chain.budgets.stages import STAGES
from litestage_chain.cli.bench import parse_max_tokens
from litestage_chain.cluster.cli import cluster_options, describe_pool, maybe_pool
from litestage_chain.cluster.search import DistributedEvaluator
from litestage_chain.data import search_questions
from litestage_chain.data.rows import describe_validation_error
from litestage_chain.data.types import QuestionSet
from litestage_chain.engine.loading import LoadedModel, load_model
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.busy_cores import BusyCores, busy_command
from litestage_chain.offline.cost_model import tokens_of
from litestage_chain.offline.cost_pipeline import (
    CALIBRATION_ROUNDS,
    cost_model_for,
    describe_candidate,
    parse_cap_grid,
    parse_exit_grid,
    search_profile_cost_aware,
)
from litestage_chain.offline.cost_search import DEFAULT_COUNTS, FALLBACK, CostSearchConfig
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.offline.store import EvalResult
from litestage_chain.reasoning.shared_context import MEASURED_CONTEXT, resolve_context


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"skip counts must be integers separated by commas, got {text!r}") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"skip counts must be >= 0, got {text!r}")
    return counts


def add_cost_aware_options(search: Any) -> None:
    """Options of the cost-aware search (ignored by the plain sweep)."""
    search.add_argument("--search", choices=("sweep", "cost-aware"), default="sweep",
                        help="sweep: the original step sweep timed by its evaluations; cost-aware: paired decision "
                        "rule in chunks, latency from measured per-plan costs, both sub-layer kinds ranked by "
                        "importance lost per second saved, exit rules searched (default sweep)")
    search.add_argument("--tolerance", type=float, default=3.0, metavar="POINTS",
                        help="cost-aware: the loss's upper bound may exceed epsilon by this many points (default 3)")
    search.add_argument("--confidence", type=float, default=0.95, help="cost-aware: interval level (default 0.95)")
    search.add_argument("--counts", type=_counts, default=None, metavar="N,N,...",
                        help="cost-aware: skip counts tried per stage; 0 (nothing skipped) is always tried, and "
                        "'0' alone tries only the exit rules and caps (default 1,2,4,6,8,12,16,24,32)")
    search.add_argument("--exit-grid", default="none;8,0.3,16;4,0.5,8", metavar="RULES",
                        help="cost-aware: early-exit rules tried with every count, 'none' or WINDOW,THRESHOLD,MIN "
                        "separated by ';' (default none;8,0.3,16;4,0.5,8)")
    search.add_argument("--cap-grid", default="none", metavar="CAPS",
                        help="cost-aware: token caps tried with every exit rule and count, 'none' (the stage's own "
                        "budget) or a number of tokens, separated by ';', e.g. none;12;16;24 (default none)")
    search.add_argument("--speed-margin", type=float, default=0.0, metavar="PERCENT",
                        help="cost-aware: accepted candidates predicted within this many percent of the fastest one "
                        "count as equally fast, and the one losing the fewest answers on the slice wins (default 0: "
                        "the fastest wins)")
    search.add_argument("--chunk-size", type=int, default=25, metavar="N",
                        help="cost-aware: questions per chunk; a clearly worse candidate stops after one (default 25)")
    search.add_argument("--cost-rounds", type=int, default=2, metavar="N",
                        help="cost-aware: alternating timings of each plan and the full model (default 2)")
    add_cost_timing_options(search)
    search.add_argument("--from-profile", default=None, metavar="PROFILE",
                        help="cost-aware: keep this profile's settings (a file, or a shipped name for --model) for "
                        "every stage not in --search-stages, e.g. re-search only its summary in another --context")
    search.add_argument("--search-stages", default=None, metavar="STAGE,...",
                        help="cost-aware, with --from-profile: the stages searched (e.g. summary)")


def add_cost_timing_options(parser: Any) -> None:
    """`--cost-busy N` (time plan costs with N other processes decoding) and `--plan-costs` (how plans are priced)."""
    parser.add_argument("--plan-costs", choices=("per-sublayer", "per-plan"), default="per-sublayer",
                        help="per-sublayer: price every plan from the cost share of one attention and one MLP "
                        f"sub-layer, calibrated once ({CALIBRATION_ROUNDS} alternating rounds of two plans skipping "
                        "half the layers' sub-layers of a kind); per-plan: time every plan on its own, --cost-rounds "
                        "rounds each (noisier on a shared CPU) (default per-sublayer)")
    parser.add_argument("--cost-busy", type=int, default=0, metavar="N",
                        help="time plan costs while N other processes decode the same model, one core each: the "
                        "load of the runs the costs predict (two workers on two cores: 1), for a machine where that "
                        "load prices prefill and decoding differently (default 0: a quiet machine)")


def calibration_rounds(args: argparse.Namespace) -> int | None:
    """`--plan-costs`: the calibration rounds of per-sub-layer pricing, None to time plan by plan."""
    return None if getattr(args, "plan_costs", "per-sublayer") == "per-plan" else CALIBRATION_ROUNDS


@contextmanager
def busy_cores_for(args: argparse.Namespace, source: str, weights: str) -> Iterator[BusyCores | None]:
    """The `--cost-busy` load processes for this run, started and stopped around it (None without the option)."""
    count = getattr(args, "cost_busy", 0) or 0
    if count < 0:
        raise InvalidInputError(f"--cost-busy must be >= 0, got {count}")
    if count == 0:
        yield None
        return
    command, label = busy_command(source, weights, batch_size=args.batch_size)
    with BusyCores(command, count, label=label) as busy:
        yield busy


def run_cost_aware_search(
    args: argparse.Namespace, out: TextIO
) -> tuple[Profile, list[str], LoadedModel, QuestionSet, Path]:
    """Load the model and questions, run the cost-aware search, write the profile and print its resolution.

    Returns what `cli.profile.finish_search` needs to end it like the plain sweep (caveats, side-by-side check).
    """
    for option, value in (("--batch-size", args.batch_size), ("--calibration-size", args.calibration_size),
                          ("--chunk-size", args.chunk_size), ("--cost-rounds", args.cost_rounds)):
        if value < 1:
            raise InvalidInputError(f"{option} must be >= 1, got {value}")
    start, fixed = _fixed_stages(args)
    try:
        config = CostSearchConfig(
            epsilon=args.epsilon, tolerance=args.tolerance / 100.0, confidence=args.confidence, metric=args.metric,
            counts=args.counts or DEFAULT_COUNTS, exit_grid=tuple(parse_exit_grid(args.exit_grid)),  # type: ignore[arg-type]
            cap_grid=tuple(parse_cap_grid(args.cap_grid)),
            chunk_size=args.chunk_size, batch_size=args.batch_size, patience=args.patience, fixed=fixed,
            speed_margin=args.speed_margin / 100.0,
        )
    except ValidationError as error:
        raise InvalidInputError(f"invalid search settings: {describe_validation_error(error)}") from error
    target = Path(args.out)
    log = Path(args.log) if args.log else target.with_name(target.name + ".search.jsonl")
    cost_log = log.with_name(log.name.replace(".search.jsonl", "") + ".costs.jsonl")
    questions = search_questions(args.benchmark, args.size, seed=args.seed, data_dir=args.data,
                                 require_answer=args.metric == "accuracy")
    cluster = cluster_options(args, args.threads)
    model = load_model(args.model, weights=args.weights)
    # the format searched: the one asked for, else the kept profile's, else the measurements' default
    searched = start.context if start is not None else None
    args.context = resolve_context(args.context, searched, default=MEASURED_CONTEXT)
    settings = dict(early_exit=None, max_tokens=parse_max_tokens(args.max_tokens), num_shots=args.shots,
                    fallback=not args.no_fallback, batch_size=args.batch_size,
                    progress=not args.no_progress and cluster is None, context=args.context)
    if start is not None:
        start.check_model(model)  # its plans were searched on these weights
        out.write(f"{_kept_stages(args.from_profile, start, fixed)}; searched here in the {args.context!r} "
                  f"format: {', '.join(s for s in STAGES if s not in fixed)}\n")
    with maybe_pool(cluster, args.model, model.weights) as pool, busy_cores_for(args, args.model, model.weights) as busy:
        evaluator: Any = ChainEvaluator(model, **settings)
        if pool is not None:  # chunk evaluations split over the workers; the costs are timed here, between them
            evaluator = DistributedEvaluator(evaluator, pool, settings)
            out.write(describe_pool(pool) + "\n")
        kept = _kept_stages(args.from_profile, start, fixed, with_slice=True) if start is not None and fixed else ""
        _write_busy(out, busy)
        profile, result = _cost_aware(args, model, questions, evaluator, config, log, cost_log, out, notes=kept,
                                      busy=busy)
    profile.save(target)
    out.write(f"chosen: {result.resolution()}; predicted {result.full.predicted_seconds:.2f} s -> "
              f"{result.chosen.predicted_seconds:.2f} s per question at batch {config.batch_size} "
              f"({result.predicted_speedup:.2f}x); {result.evaluations} new chunk evaluations\n")
    return profile, result.caveats, model, questions, target


def _fixed_stages(args: argparse.Namespace) -> tuple[Profile | None, dict[str, StageBudget]]:
    """`--from-profile` and `--search-stages`: the profile, and its settings for the stages not searched."""
    if (args.from_profile is None) != (args.search_stages is None):
        raise InvalidInputError("--from-profile and --search-stages go together: the profile's settings are kept for "
                                "the stages not searched")
    if args.from_profile is None:
        return None, {}
    searched = [part.strip() for part in args.search_stages.split(",") if part.strip()]
    unknown = [stage for stage in searched if stage not in STAGES]
    if unknown or not searched:
        raise InvalidInputError(f"--search-stages takes stage names from {list(STAGES)}, got {args.search_stages!r}")
    profile = Profile.load(args.from_profile, model=args.model)
    fixed = {stage: StageBudget(plan=profile.plan_for(stage), early_exit=profile.early_exit_for(stage),
                                max_tokens=profile.max_tokens_for(stage)) for stage in STAGES if stage not in searched}
    return profile, fixed


def _kept_stages(source: str, start: Profile, fixed: Mapping[str, StageBudget], with_slice: bool = False) -> str:
    """What a partial search keeps from its source profile: one wording for the console and the profile's notes
    (the notes add the slice it was searched on, which the console has just printed for the new search)."""
    where = f"the {start.context!r} format"
    if with_slice:
        where += f" on {start.questions.benchmark}/{start.questions.split}, {start.questions.size} questions"
    return f"kept from {source} (searched in {where}): {', '.join(fixed) or 'nothing (every stage is searched)'}"


def _write_busy(out: TextIO, busy: BusyCores | None) -> None:
    """Say that plan costs were timed beside busy-loop threads, when they were (their timings read slower)."""
    if busy is not None:
        out.write(f"plan costs timed with {busy.describe()}\n")


def _cost_aware(
    args: argparse.Namespace, model: LoadedModel, questions: QuestionSet, evaluator: Any, config: CostSearchConfig,
    log: Path, cost_log: Path, out: TextIO, notes: str = "", busy: BusyCores | None = None,
) -> tuple[Profile, Any]:
    rule = config.rule()
    out.write(f"cost-aware search of {model.name} on {questions.benchmark}/{questions.split} ({len(questions)} "
              f"questions); log: {log}; costs: {cost_log}\n{rule.describe()}; {config.describe_choice()}; "
              f"resolution on this slice at zero loss: "
              f"+- {100 * rule.resolution(len(questions), 0.05):.1f} points at 5% flips, "
              f"+- {100 * rule.resolution(len(questions), 0.15):.1f} at 15%\n")
    out.flush()

    def report(candidate: Any) -> None:
        out.write(describe_candidate(candidate, args.metric) + "\n")
        out.flush()

    return search_profile_cost_aware(
        model, questions, evaluator, config, calibration_size=args.calibration_size, seed=args.seed, store_path=log,
        cost_path=cost_log, cost_rounds=args.cost_rounds, busy=busy, calibration_rounds=calibration_rounds(args),
        on_candidate=report, progress=not args.no_progress,
        notes=notes,
    )


def add_predict_option(check: Any) -> None:
    """`profile check --predict`: also predict both sides from the cost model and print the error."""
    check.add_argument("--predict", action="store_true",
                       help="also time per-plan costs (alternating with the full model) and compare the cost model's "
                       "predicted seconds per question with the measured ones")
    add_cost_timing_options(check)


def predicted_against_measured(
    model: LoadedModel, plans: Mapping[str, SkipPlan], results: Mapping[str, Sequence[EvalResult]], batch_size: int,
    rounds: int, out: TextIO, busy: BusyCores | None = None, calibration_rounds: int | None = CALIBRATION_ROUNDS,
) -> dict[str, float]:
    """The cost model's seconds per question for each side of a speed check, printed beside the measured medians."""
    costs = cost_model_for(model, batch_size, rounds=rounds, busy=busy, calibration_rounds=calibration_rounds)
    _write_busy(out, busy)
    sides = {"full": {stage: SkipPlan() for stage in plans}, "plans": dict(plans)}
    predicted: dict[str, float] = {}
    for side, side_plans in sides.items():
        result = results[side][0]
        predicted[side] = costs.predict({**side_plans, FALLBACK: SkipPlan()}, tokens_of(result.tokens), batch_size)
        measured = median(r.mean_latency_seconds for r in results[side])
        out.write(f"  {side:>5}: predicted {predicted[side]:.2f} s/question, measured {measured:.2f} "
                  f"({100 * (predicted[side] / measured - 1):+.1f}%)\n")
        tokens = tokens_of(result.tokens)
        for stage, plan in side_plans.items():  # where a miss comes from: a stage's prefill or its decoding
            stage_predicted = costs.predict({stage: plan}, {stage: tokens[stage]}, batch_size)
            stage_measured = median(r.stage_latency_seconds[stage] for r in results[side])
            if stage_measured > 0:
                out.write(f"    {stage:>8}: predicted {stage_predicted:.2f} s, measured {stage_measured:.2f} "
                          f"({100 * (stage_predicted / stage_measured - 1):+.1f}%)\n")
    if predicted["plans"] > 0:
        measured_speedup = median(r.mean_latency_seconds for r in results["full"]) / median(
            r.mean_latency_seconds for r in results["plans"])
        out.write(f"  speedup: predicted {predicted['full'] / predicted['plans']:.2f}x, measured "
                  f"{measured_speedup:.2f}x\n")
    out.flush()
    return predicted
