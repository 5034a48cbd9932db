"""`litestage bench`: LiteStage and the baselines on one benchmark, with a results table, plots and resume.

Registered into the `litestage` command by `add_bench_subcommand(subparsers)`. A run writes into ``--out``:
``run.json`` (the run's definition), ``records.jsonl`` (one line per method point and question, appended as
measured; re-running the same command resumes from it), ``results.json`` and ``results.md`` (the table), and
the PNG plots.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from litestage_chain.bench.adaskip import adaskip_joint_ranking
from litestage_chain.bench.executor import ChainExecutor
from litestage_chain.bench.methods import (
    DEFAULT_SWEEPS,
    METHODS,
    NEEDS_PROFILE,
    MethodContext,
    all_points,
    parse_method,
    parse_sweep,
)
from litestage_chain.bench.pruning import DropReason, DropRule, SlowerRule
from litestage_chain.bench.rankings import adaskip_order, litestage_ranking
from litestage_chain.bench.records import RECORDS_FILE, RecordStore
from litestage_chain.bench.report import markdown_table
from litestage_chain.bench.results import check_resumable, rebuild_report_against, write_run
from litestage_chain.bench.runner import recorded_count, run_points
from litestage_chain.budgets.profile import Profile
from litestage_chain.budgets.stages import CONTEXT_FORMATS, check_stage
from litestage_chain.cluster.bench import run_points_on_workers
from litestage_chain.cluster.cli import add_cluster_arguments, cluster_options, describe_pool, maybe_pool
from litestage_chain.data import load_benchmark, load_jsonl, seeded_slice
from litestage_chain.data.benchmarks import resolve_data_dir
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.loading import load_model
from litestage_chain.engine.quant.formats import kernel_path
from litestage_chain.engine.weight_formats import WEIGHT_CHOICES
from litestage_chain.reasoning.shared_context import (
    MEASURED_CONTEXT,
    add_context_argument,
    format_mismatch,
    resolve_context,
)
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.question_fit import fitting_questions
from litestage_chain.reasoning.chain import DEFAULT_MAX_TOKENS

RANKED = ("uniform", "uniform-exit", "stage-only")


def add_bench_subcommand(subparsers: Any) -> None:
    """Add the `bench` subcommand to the `litestage` command's subparsers."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark LiteStage against layer-skipping baselines (accuracy, latency, speedup, plots)",
        description="Run the full model, LiteStage and the baselines over a benchmark's questions, interleaved "
        "per question batch, and write a results table and plots. Re-running the same command resumes.",
    )
    bench.add_argument("--benchmark", required=True, help="benchmark name (csqa, obqa, strategyqa)")
    bench.add_argument(
        "--data", metavar="PATH",
        help="the data folder holding <benchmark>/<split>.jsonl, or one JSONL file (default: $LITESTAGE_DATA_DIR)",
    )
    bench.add_argument("--split", default="dev", help="split to benchmark when --data is a folder (default dev)")
    bench.add_argument("--limit", type=int, metavar="N", help="benchmark a seeded slice of N questions")
    bench.add_argument("--seed", type=int, default=0, help="seed of the question slices (default 0)")
    bench.add_argument(
        "--methods", nargs="+", metavar="METHOD[:FORMAT]",
        help=f"methods to run (default: all; the full model always runs). Choices: {', '.join(METHODS)}. "
        f"METHOD:FORMAT runs that method in another reasoning format than --context ({', '.join(CONTEXT_FORMATS)}), "
        "e.g. full:separate beside --context continued; the report adds a table against each full:FORMAT",
    )
    bench.add_argument(
        "--sweep", action="append", default=[], metavar="METHOD=N,N",
        help="skip counts of a swept method, e.g. uniform=4,8,12 (repeatable). Defaults: "
        + "; ".join(f"{m}={','.join(map(str, c))}" for m, c in DEFAULT_SWEEPS.items()),
    )
    bench.add_argument("--model", "-m", default="smollm2-135m", help="model source (default: smollm2-135m)")
    bench.add_argument("--weights", default="auto", choices=WEIGHT_CHOICES,
                       help="weight format (default auto: the model's recommended format)")
    bench.add_argument("--profile", "-p", metavar="P", help="searched LiteStage profile: a JSON file or shipped name")
    bench.add_argument("--out", required=True, metavar="DIR", help="results folder (created; reused to resume)")
    bench.add_argument(
        "--max-tokens", metavar="N|STAGE=N,...",
        help="cap every stage at N tokens, or set per-stage budgets, e.g. recall=32,analysis=64,summary=16",
    )
    bench.add_argument("--shots", type=int, default=2, metavar="N", help="worked examples per stage (default 2)")
    add_context_argument(bench, f"the --profile's searched format, else {MEASURED_CONTEXT}")
    bench.add_argument("--no-fallback", action="store_true", help="do not re-run unreadable summaries on the full model")
    bench.add_argument(
        "--calibration-data", metavar="FILE",
        help="JSONL questions to rank sub-layers on (default: the train split beside --data)",
    )
    bench.add_argument("--calibration-size", type=int, default=8, metavar="N", help="calibration questions (default 8)")
    bench.add_argument("--interleave", type=int, default=4, metavar="N",
                       help="questions per round; every method runs each round (default 4)")
    bench.add_argument("--batch-size", type=int, default=1, metavar="N",
                       help="questions decoded together (default 1: single-question latency)")
    bench.add_argument("--exit-window", type=int, default=4, metavar="N",
                       help="early exit of full-exit and the -exit baselines (litestage runs its profile's rules): "
                       "tokens averaged (default 4)")
    bench.add_argument("--exit-threshold", type=float, default=0.5, metavar="P",
                       help="early exit: mean confidence below which a stage stops (default 0.5)")
    bench.add_argument("--exit-min-tokens", type=int, default=8, metavar="N",
                       help="early exit: never before N tokens (default 8)")
    bench.add_argument(
        "--threads", type=int, default=1, metavar="N",
        help="torch threads (default 1; 0 keeps torch's default). On a CPU shared with other processes, "
        "several threads spin-wait on each other and decoding gets many times slower and noisier",
    )
    bench.add_argument(
        "--no-reuse", action="store_true",
        help="time every stage afresh for every method point instead of reusing identical stage runs "
        "(slower; shared stages are then not timed once under one moment's machine load)",
    )
    bench.add_argument(
        "--drop-worse", type=float, metavar="POINTS",
        help="stop running a point once the lower end of its 95%% paired loss interval against the full model is "
             "above POINTS accuracy points (after 16 questions); default: every point runs to the end",
    )
    bench.add_argument(
        "--drop-slower", type=float, metavar="FACTOR",
        help="stop running a point once it took more than FACTOR times LiteStage's seconds in every round so far "
             "(at least 2; never the full model's points, LiteStage's or its ablations'): it cannot be faster at "
             "matched accuracy, and such "
             "points are the dearest to run; default: every point runs to the end",
    )
    bench.add_argument("--new-run", action="store_true",
                       help="start this run in --out even though the folder holds another run's records (other "
                            "weights, kernel path or settings): its run.json and report then describe this run")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.add_argument("--no-plots", action="store_true", help="write the table only")
    bench.add_argument("--report-only", action="store_true",
                       help="rebuild the table and plots from the records in --out without running anything")
    add_cluster_arguments(bench)
    bench.set_defaults(handler=run_bench)


def parse_max_tokens(text: str | None) -> dict[str, int] | None:
    """``N`` (cap every stage) or ``recall=32,analysis=64,summary=16`` into per-stage budgets."""

    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        cap = int(text)
        if cap < 1:
            raise InvalidInputError(f"--max-tokens must be >= 1, got {cap}")
        return {stage: min(limit, cap) for stage, limit in DEFAULT_MAX_TOKENS.items()}
    budgets: dict[str, int] = {}
    for part in text.split(","):
        stage, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise InvalidInputError(f"--max-tokens {text!r}: expected N or STAGE=N,... with N >= 1")
        budgets[check_stage(stage.strip())] = int(value)
    return budgets


def _data_path(args: argparse.Namespace) -> Path:
    """`--data`, else $LITESTAGE_DATA_DIR (a `DataError` naming both when neither is given)."""

    return Path(args.data) if args.data is not None else resolve_data_dir(None)


def _load_questions(args: argparse.Namespace) -> Any:

    data = _data_path(args)
    if data.is_dir():
        questions = load_benchmark(args.benchmark, args.split, data_dir=data)
    elif data.is_file():
        questions = load_jsonl(data, benchmark=args.benchmark)
    else:
        raise InvalidInputError(f"--data {data}: no such file or folder")
    if args.limit is not None:
        if args.limit < 1:
            raise InvalidInputError(f"--limit must be >= 1, got {args.limit}")
        questions = seeded_slice(questions, min(args.limit, len(questions)), seed=args.seed)
    return questions


def _calibration_questions(args: argparse.Namespace) -> Any:

    if args.calibration_data:
        path = Path(args.calibration_data)
    else:
        data = _data_path(args)
        path = (data / args.benchmark / "train.jsonl") if data.is_dir() else data.with_name("train.jsonl")
        if not data.is_dir() and path.resolve() == data.resolve():
            raise InvalidInputError("--data is the train split; pass --calibration-data with other questions")
    if not path.is_file():
        raise InvalidInputError(
            f"no calibration questions at {path}: pass --calibration-data FILE (questions to rank sub-layers on, "
            "not the benchmarked ones)"
        )
    if args.calibration_size < 1:
        raise InvalidInputError(f"--calibration-size must be >= 1, got {args.calibration_size}")
    pool = load_jsonl(path, benchmark=args.benchmark)
    return seeded_slice(pool, min(args.calibration_size, len(pool)), seed=args.seed).questions


def _chosen_methods(args: argparse.Namespace, out: TextIO) -> list[str]:
    if args.methods:
        names = [parse_method(text)[0] for text in args.methods]  # a clear error for a bad one, before anything loads
        missing = [m for m, name in zip(args.methods, names) if name in NEEDS_PROFILE] if not args.profile else []
        if missing:
            raise InvalidInputError(f"method(s) {missing} need a searched profile: pass --profile FILE")
        return list(dict.fromkeys(args.methods))
    methods = list(METHODS)
    if not args.profile:
        out.write(f"note: no --profile, so {', '.join(NEEDS_PROFILE)} are not run\n")
        methods = [m for m in methods if m not in NEEDS_PROFILE]
    return methods


def _drop_rule(points: float | None, methods: Sequence[str], slower: float | None = None) -> DropRule | None:
    """`--drop-worse POINTS` and `--drop-slower FACTOR` as one rule (None when neither is given), checked before
    anything loads."""
    if points is None and slower is None:
        return None
    if points is not None and not 0 <= points <= 100:
        raise InvalidInputError(f"--drop-worse takes accuracy points from 0 to 100, got {points}")
    if points is not None and "full" not in methods:
        raise InvalidInputError("--drop-worse compares every point with the full model: add 'full' to --methods")
    if slower is not None and not slower > 1:
        raise InvalidInputError(f"--drop-slower takes a seconds ratio above 1 (e.g. 1.25), got {slower}")
    if slower is not None and "litestage" not in methods:
        raise InvalidInputError("--drop-slower compares every point's seconds with LiteStage's: add 'litestage' to "
                                "--methods (with --profile)")
    return DropRule(margin=None if points is None else points / 100,
                    slower=None if slower is None else SlowerRule(factor=slower, than="litestage"))


def run_bench(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Load model, questions and rankings, run every point (resuming), then write the report and plots."""

    out = out or sys.stdout
    if args.report_only:
        _print_done(out, *rebuild_report_against(args.out, plots=not args.no_plots))
        return 0
    sweeps = dict(parse_sweep(text) for text in args.sweep)
    max_tokens = parse_max_tokens(args.max_tokens)
    for name, value, low in (("--interleave", args.interleave, 1), ("--batch-size", args.batch_size, 1),
                             ("--shots", args.shots, 0), ("--threads", args.threads, 0)):
        if value < low:
            raise InvalidInputError(f"{name} must be >= {low}, got {value}")
    methods = _chosen_methods(args, out)
    specs = [parse_method(m) for m in methods]  # (method, format or None)
    drop = _drop_rule(args.drop_worse, methods, args.drop_slower)
    cluster = cluster_options(args, args.threads)  # checked before the model loads: a bad option fails at once
    questions = _load_questions(args)

    try:
        early_exit = EarlyExitConfig(window=args.exit_window, threshold=args.exit_threshold,
                                     min_tokens=args.exit_min_tokens)
    except ValueError as error:
        raise InvalidInputError(f"early-exit options: {error}") from error
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = Profile.load(args.profile, model=args.model) if args.profile else None
    model = load_model(args.model, weights=args.weights)
    # one format for the run unless a point names its own: the profile's (where its plans were measured)
    searched = profile.context if profile is not None else None
    args.context = resolve_context(args.context, searched, default=MEASURED_CONTEXT)
    if profile is not None:
        profile.check_model(model)
        for fmt in sorted({fmt or args.context for name, fmt in specs if name in NEEDS_PROFILE} - {profile.context}):
            out.write(f"warning: {format_mismatch(profile.context, fmt)}\n")
    progress = not args.no_progress
    settings = dict(max_tokens=max_tokens, num_shots=args.shots, fallback=not args.no_fallback,
                    batch_size=args.batch_size, reuse_outputs=not args.no_reuse, progress=False,
                    context=args.context)  # one bar: the runner's
    executor = ChainExecutor(model, **settings)
    recorded = {  # what run.json records of the executor identity (and the rounds), checked before any calibration
        "model": model.name, "weights_sha256": model.weights_sha256, "weights": model.weights,
        "kernel": kernel_path(model.weights), "max_tokens": executor.base.max_tokens, "shots": args.shots,
        "fallback": not args.no_fallback, "batch_size": args.batch_size, "reuse_outputs": not args.no_reuse,
        "interleave": args.interleave,
    }
    if not args.new_run:
        check_resumable(args.out, executor.identity, recorded)
    fitting, skipped = fitting_questions(executor.base, questions.questions)
    for qid, reason in skipped.items():
        out.write(f"skipping question {qid}: {reason}\n")
    if not fitting:
        raise InvalidInputError(f"none of the {len(questions)} questions fits the model's context")
    questions = questions.model_copy(update={"questions": tuple(fitting)})
    needs_ranking = profile is None and any(name in RANKED for name, _ in specs)
    wants_adaskip = any(name.startswith("adaskip") for name, _ in specs)
    calibration = _calibration_questions(args) if needs_ranking or wants_adaskip else ()
    calibration = tuple(fitting_questions(executor.base, calibration)[0]) if calibration else ()
    ranking = (
        litestage_ranking(executor.base, calibration, profile=profile, benchmarked=questions.questions,
                          progress=progress)
        if profile is not None or needs_ranking
        else []
    )
    adaskip_calibration = (
        adaskip_order(executor.base, calibration, benchmarked=questions.questions) if wants_adaskip else None
    )
    adaskip = adaskip_joint_ranking(torch.tensor(adaskip_calibration.similarity)) if adaskip_calibration else None
    context = MethodContext(num_layers=model.num_layers, ranking=ranking, adaskip_ranking=adaskip,
                            adaskip=adaskip_calibration, profile=profile, early_exit=early_exit,
                            max_tokens=dict(executor.base.max_tokens))
    points = all_points(methods, context, sweeps)
    if not args.no_reuse and any((p.context or args.context) == "continued" for p in points):
        out.write("warning: points run in the continued format while stage outputs are reused (no --no-reuse): a "
                  "summary continuing a reused analysis prefills its turn again, so its seconds are too high\n")
    meta = {
        **recorded, "benchmark": args.benchmark, "split": questions.split, "questions": len(questions),
        "fingerprint": questions.fingerprint, "seed": args.seed, "profile": args.profile, "methods": methods,
        "threads": args.threads, "early_exit": early_exit.model_dump(), "drop_worse": drop.model_dump() if drop else None,
        "workers": cluster.workers if cluster else None, "ray_address": cluster.address if cluster else None,
        "calibration_ids": [q.id for q in calibration], "ranking": [list(s) for s in ranking],
        "adaskip_ranking": [list(s) for s in adaskip] if adaskip else None,
        "adaskip_norm_ratio": adaskip_calibration.norm_ratio if adaskip_calibration else None,
    }
    write_run(args.out, meta, points, executor.identity, [q.id for q in questions])
    store = RecordStore(Path(args.out) / RECORDS_FILE)
    done = recorded_count(points, questions.questions, executor.identity, store)
    other = len(store) - done
    kept = f" ({other} other records kept: other settings or points)" if other else ""
    out.write(f"{len(points)} method points x {len(questions)} questions; {done} of {len(points) * len(questions)}"
              f" runs already recorded in {args.out}{kept}\n")
    out.flush()
    failures: dict[str, str] = {}
    dropped: dict[str, DropReason] = {}
    with maybe_pool(cluster, args.model, model.weights) as pool:
        if pool is None:
            run_points(executor, points, questions.questions, store, interleave=args.interleave, progress=progress,
                       failures=failures, drop=drop, dropped=dropped)
        else:
            out.write(describe_pool(pool) + "\n")
            out.flush()
            run_points_on_workers(pool, settings, executor.identity, points, questions.questions, store,
                                  interleave=args.interleave, progress=progress, failures=failures, drop=drop,
                                  dropped=dropped)
    for qid, reason in failures.items():
        out.write(f"skipped question {qid}: {reason}\n")
    for label, comparison in dropped.items():
        out.write(f"dropped {label} after {comparison.questions} questions: {comparison.describe()}\n")
    _print_done(out, *rebuild_report_against(args.out, plots=not args.no_plots))
    return 0


def _print_done(out: TextIO, rows: Sequence[Any], against: Mapping[str, Sequence[Any]], files: Sequence[Path]) -> None:
    out.write(markdown_table(rows))
    for label, table in against.items():
        out.write(f"\nagainst {label}:\n" + markdown_table(table, label))
    for path in files:
        out.write(f"wrote {path}\n")
    out.flush()
