"""One table from several `litestage bench` runs over the same questions, each speedup kept within its own run.

Why: before `litestage bench --workers N`, the methods of one benchmark on a 2-core machine were run as two
processes side by side (the baselines while the LiteStage profile was still being searched, then LiteStage); the
recorded runs in benchmarks/README.md were made that way. New runs use `--workers` instead. Each run measures its own full
model in alternating rounds with its methods, so every speedup stays a ratio measured side by side *within its
run*; only the rows are put together. All rows are restricted to the questions every point of every run has
finished, so accuracies compare on the same questions, and the full model's answers must agree across runs (they
are greedy and batched alike: a difference means the runs do not measure one benchmark).

A point its run's `--drop-worse` rule stopped early is the exception: it never finishes, so counting it would shrink
the shared questions to where it stopped. It keeps its own row over the questions it ran (marked dropped, its loss
paired with its own run's full model there) and does not restrict the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from litestage_chain.bench.records import QuestionRecord
from litestage_chain.bench.report import PointSummary, run_drops, summarise
from litestage_chain.bench.results import read_run, run_records
from litestage_chain.errors import InvalidInputError

#: Run settings that must be equal for rows of two runs to share a table.
SAME_SETTINGS = ("benchmark", "model", "weights_sha256", "weights", "fingerprint", "batch_size", "max_tokens", "shots")


def common_questions(runs: Sequence[Sequence[QuestionRecord]], labels: Sequence[Sequence[str]]) -> set[str]:
    """Question ids that every listed point of every run (as its run.json lists them) has a record for."""
    common: set[str] | None = None
    for records, points in zip(runs, labels, strict=True):
        by_point: dict[str, set[str]] = {label: set() for label in points}
        for record in records:
            if record.point in by_point:
                by_point[record.point].add(record.question_id)
        empty = [label for label, ids in by_point.items() if not ids]
        if empty:
            raise InvalidInputError(f"point(s) {empty} have no records yet: nothing to compare them on")
        for ids in by_point.values():
            common = set(ids) if common is None else common & ids
    return common or set()


def dropped_rows(records: Sequence[QuestionRecord], run: Mapping[str, Any]) -> dict[str, PointSummary]:
    """The rows of the points a run's `--drop-worse` rule stopped, over the questions each ran, by label."""
    stopped = run_drops(run, records)
    return {row.point: row for row in summarise(records, dropped=stopped) if row.point in stopped}


def check_full_answers_agree(
    runs: Sequence[Sequence[QuestionRecord]], names: Sequence[str], shared: set[str]
) -> None:
    """The full model answered every shared question the same in every run, or the runs do not compare."""
    reference = {r.question_id: r.answer for r in runs[0] if r.point == "full" and r.question_id in shared}
    for records, name in zip(runs[1:], names[1:], strict=True):
        differ = [r.question_id for r in records
                  if r.point == "full" and r.question_id in reference and reference[r.question_id] != r.answer]
        if differ:
            raise InvalidInputError(
                f"the full model answered {len(differ)} question(s) differently in {name} than in {names[0]} "
                f"(e.g. {differ[:3]}): different settings or weights, not one benchmark"
            )


def combined_rows(folders: Sequence[Path]) -> tuple[list[PointSummary], int, dict[str, object]]:
    """Rows of every run over the shared questions (the first run's full-model row only) and the first run's meta.

    A point in several runs must be the same point (same plans and settings, by key); its first run's row is used.
    """
    definitions = [read_run(folder) for folder in folders]
    runs = [run_records(folder, run) for folder, run in zip(folders, definitions, strict=True)]
    first = definitions[0]
    for run, folder in zip(definitions[1:], folders[1:], strict=True):
        if run["identity"] != first["identity"]:
            raise InvalidInputError(
                f"{folder} was measured by another engine set-up than {folders[0]} (model, format, prompts, budgets, "
                "fallback or timing version differ): not one benchmark"
            )
        for key in SAME_SETTINGS:
            if run["meta"].get(key) != first["meta"].get(key):
                raise InvalidInputError(f"{folder} differs from {folders[0]} in {key}: not one benchmark")
    keys: dict[str, str] = {}
    for run, folder in zip(definitions, folders, strict=True):
        for point in run["points"]:
            if keys.setdefault(point["label"], point["key"]) != point["key"]:
                raise InvalidInputError(
                    f"point {point['label']!r} of {folder} is not the same point as in an earlier run (other plans "
                    "or settings, e.g. another ranking): rename or drop one"
                )
    dropped = [dropped_rows(records, run) for records, run in zip(runs, definitions, strict=True)]
    finishing = [[p["label"] for p in run["points"] if p["label"] not in stopped]
                 for run, stopped in zip(definitions, dropped, strict=True)]
    shared = common_questions(runs, finishing)
    if not shared:
        raise InvalidInputError("the runs share no question that all their points have finished")
    check_full_answers_agree(runs, [str(f) for f in folders], shared)
    rows: list[PointSummary] = []
    seen: set[str] = set()
    for records, run, stopped in zip(runs, definitions, dropped, strict=True):
        kept = [r for r in records if r.question_id in shared and r.point not in stopped]
        by_label = {row.point: row for row in summarise(kept)} | stopped
        for label in [p["label"] for p in run["points"]]:
            if label in seen or label not in by_label:
                continue  # the full model (its answers agree) or a point two runs both measured: the first run's row
            seen.add(label)
            rows.append(by_label[label])
    return rows, len(shared), dict(first["meta"])
