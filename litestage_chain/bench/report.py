"""Turn per-question records into the results table: accuracy with its Wilson interval, time, speedup, tokens.

Speedup is always against the full model *of the same run*, over the *same questions*: a point's speedup is
mean(full seconds) / mean(point seconds) over the questions both have (the "median speedup" uses medians).
Comparing with a full-model time from another run would fold machine load into the speedup.

Accuracy is reported twice: each point's own accuracy with its Wilson interval, and its paired loss against the
full model on the questions both answered (lost and gained questions, `offline.paired_decision`). The paired loss
is the number the accuracy target is judged by: it is several times tighter, since most questions cancel out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from statistics import fmean, median
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.bench.head_to_head import HeadToHead, head_to_head_table
from litestage_chain.bench.pruning import DropReason, DropRule, dropped_in_records, paired_loss
from litestage_chain.bench.records import QuestionRecord
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.paired_decision import PairedComparison
from litestage_chain.offline.stats import speedup_interval, wilson_interval

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_FORMAT = 1
TOKEN_COLUMNS = ("recall", "analysis", "summary", "fallback")


class PointSummary(BaseModel):
    """One row of the results table: a method point aggregated over the questions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    point: str
    method: str
    count: int
    stage: str | None
    skipped: dict[str, int]
    early_exit: bool
    questions: int
    correct: int | None
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    mean_seconds: float
    median_seconds: float
    speedup: float = Field(description="mean full-model seconds / mean seconds, over the same questions")
    median_speedup: float = Field(description="median full-model seconds / median seconds, same questions")
    speedup_ci_low: float | None = Field(None, description="2.5th percentile of the mean speedup, paired bootstrap")
    speedup_ci_high: float | None = Field(None, description="97.5th percentile of the mean speedup, paired bootstrap")
    tokens: dict[str, float] = Field(description="mean generated tokens per question, per stage and fallback")
    stage_seconds: dict[str, float] = Field(description="mean engine seconds per question, per stage and fallback")
    early_exits: dict[str, int] = Field(default_factory=dict, description="questions whose stage the confidence rule "
                                        "ended, per stage (a stage stopped by its token budget is not counted)")
    fallback_rate: float
    unanswered_rate: float
    lost: int | None = Field(None, description="questions the full model got right and this point wrong (paired)")
    gained: int | None = Field(None, description="questions this point got right and the full model wrong (paired)")
    paired_questions: int | None = Field(None, description="labelled questions both this point and the full model ran")
    loss: float | None = Field(None, description="(lost - gained) / paired_questions: the accuracy lost, a fraction")
    loss_half_width: float | None = Field(None, description="half-width of the loss's 95% paired interval")
    dropped: bool = Field(False, description="stopped before the end: clearly worse than the full model "
                          "(--drop-worse) or clearly slower than LiteStage (--drop-slower)")


def _by_point(records: Sequence[QuestionRecord]) -> dict[str, list[QuestionRecord]]:
    grouped: dict[str, list[QuestionRecord]] = {}
    for record in records:
        grouped.setdefault(record.point, []).append(record)
    return grouped


def summarise(
    records: Sequence[QuestionRecord], full_point: str = "full", dropped: Collection[str] = ()
) -> list[PointSummary]:
    """One `PointSummary` per point, in first-seen order; raises if the full model's records are missing.

    The points labelled in `dropped` (the run's drop rule stopped them: `run_drops`) are marked so, rather than
    looking like a run cut short."""
    grouped = _by_point(records)
    if full_point not in grouped:
        raise InvalidInputError(
            f"no records of the full model ({full_point!r}): speedups are measured against it in the same run"
        )
    full_seconds = {r.question_id: r.seconds for r in grouped[full_point]}
    rows = []
    for label, group in grouped.items():
        ids = [r.question_id for r in group]
        if len(set(ids)) != len(ids):
            raise InvalidInputError(f"point {label!r} has several records for one question")
        shared = [r for r in group if r.question_id in full_seconds]
        if not shared:
            raise InvalidInputError(f"point {label!r} shares no question with the full model")
        own = [r.seconds for r in shared]
        base = [full_seconds[r.question_id] for r in shared]
        first = group[0]
        labelled = [r for r in group if r.correct is not None]
        correct = sum(1 for r in labelled if r.correct) if labelled else None
        low, high = wilson_interval(correct, len(labelled)) if labelled and correct is not None else (None, None)
        columns = sorted({name for r in group for name in r.stages} | set(TOKEN_COLUMNS[:3]), key=_column_order)
        paired = paired_loss(grouped[full_point], group) if label != full_point else None
        rows.append(PointSummary(
            point=label,
            method=first.method,
            count=first.count,
            stage=first.stage,
            skipped=first.skipped,
            early_exit=first.early_exit,
            questions=len(group),
            correct=correct,
            accuracy=(correct / len(labelled)) if labelled and correct is not None else None,
            ci_low=low,
            ci_high=high,
            mean_seconds=fmean(r.seconds for r in group),
            median_seconds=median(r.seconds for r in group),
            speedup=_ratio(fmean(base), fmean(own)),
            median_speedup=_ratio(median(base), median(own)),
            **dict(zip(("speedup_ci_low", "speedup_ci_high"), speedup_interval(base, own), strict=True)),
            tokens={c: fmean(r.stages[c].tokens if c in r.stages else 0 for r in group) for c in columns},
            stage_seconds={c: fmean(r.stages[c].seconds if c in r.stages else 0.0 for r in group) for c in columns},
            early_exits={c: sum(1 for r in group if c in r.stages and r.stages[c].early_exited) for c in columns},
            fallback_rate=fmean(1.0 if r.fallback_used else 0.0 for r in group),
            unanswered_rate=fmean(1.0 if r.answer is None else 0.0 for r in group),
            **(_paired_fields(paired) if paired is not None else {}),
            dropped=label in dropped,
        ))
    return rows


def _paired_fields(paired: PairedComparison) -> dict[str, Any]:
    return dict(lost=paired.lost, gained=paired.gained, paired_questions=paired.questions, loss=paired.loss,
                loss_half_width=paired.half_width)


def _column_order(name: str) -> tuple[int, str]:
    return (TOKEN_COLUMNS.index(name) if name in TOKEN_COLUMNS else len(TOKEN_COLUMNS), name)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.inf


# ----------------------------------------------------------------------------------------- files


def markdown_table(rows: Sequence[PointSummary], reference: str = "full") -> str:
    """The results table in GitHub markdown; accuracy as a percentage with its 95% Wilson interval; losses and
    speedups are against the point labelled `reference` (what `summarise` was given as `full_point`)."""
    header = (
        "| method | point | skipped sub-layers (R/A/S) | early exit | n | accuracy % [95% CI] "
        f"| loss vs {reference}, paired (lost/gained) | mean s/question "
        "| median s | speedup (mean) [95% CI] | speedup (median) | tokens R/A/S/fallback |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        skipped = "/".join(str(row.skipped.get(s, 0)) for s in TOKEN_COLUMNS[:3])
        accuracy = (
            f"{100 * row.accuracy:.1f} [{100 * (row.ci_low or 0):.1f}, {100 * (row.ci_high or 0):.1f}]"
            if row.accuracy is not None
            else "n/a (unlabelled)"
        )
        tokens = _tokens(row)
        lines.append(
            f"| {row.method} | {row.point} | {skipped} | {'yes' if row.early_exit else 'no'} | {row.questions}"
            f"{' (dropped)' if row.dropped else ''} "
            f"| {accuracy} | {_loss(row, reference)} | {row.mean_seconds:.2f} | {row.median_seconds:.2f} "
            f"| {row.speedup:.2f}x{_interval(row, reference)} "
            f"| {row.median_speedup:.2f}x | {tokens} |"
        )
    return "\n".join(lines) + "\n"


def stage_table(rows: Sequence[PointSummary]) -> str:
    """Where each point's time goes: mean engine seconds per question in each stage and the fallback, and how many
    questions each stage's early-exit rule ended (what a speedup is made of, without re-reading the records)."""
    header = ("| point | recall s | analysis s | summary s | fallback s | early exits R/A/S | tokens R/A/S/fallback |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        seconds = " | ".join(f"{row.stage_seconds.get(c, 0.0):.2f}" for c in TOKEN_COLUMNS)
        exits = "/".join(f"{row.early_exits.get(c, 0)}" for c in TOKEN_COLUMNS[:3])
        tokens = _tokens(row)
        lines.append(f"| {row.point} | {seconds} | {exits} of {row.questions} | {tokens} |")
    return "\n".join(lines) + "\n"


def _tokens(row: PointSummary) -> str:
    """Mean generated tokens as 'recall/analysis/summary/fallback', the column both tables show."""
    return "/".join(f"{row.tokens.get(c, 0.0):.1f}" for c in TOKEN_COLUMNS)


def _loss(row: PointSummary, reference: str) -> str:
    """E.g. '+0.5 +- 1.9 (2/1)': points lost (negative: gained) with the 95% half-width; 'reference' for the
    reference point, '' for unlabelled questions."""
    if row.point == reference:
        return "reference"
    if row.loss is None or row.loss_half_width is None:
        return ""
    return f"{100 * row.loss:+.1f} +- {100 * row.loss_half_width:.1f} ({row.lost}/{row.gained})"


def _interval(row: PointSummary, reference: str) -> str:
    if row.point == reference or row.speedup_ci_low is None or row.speedup_ci_high is None:
        return ""
    return f" [{row.speedup_ci_low:.2f}, {row.speedup_ci_high:.2f}]"


def write_report(
    out_dir: str | Path,
    rows: Sequence[PointSummary],
    meta: Mapping[str, Any],
    points: Sequence[Mapping[str, Any]] = (),
    intro: str | None = None,
    against: Mapping[str, Sequence[PointSummary]] | None = None,
    versus: Sequence[HeadToHead] = (),
) -> tuple[Path, Path]:
    """Write `results.json` (metadata, point definitions, table rows) and `results.md`; return both paths.

    `intro` replaces the markdown's default title (e.g. for a table combined from several runs). `against` maps
    the label of another full-model point (``full:separate``: `reference_points`) to the rows summarised against
    it; each becomes a table of its own after the main one (and ``against`` in the JSON). `versus` is LiteStage
    against every point (`head_to_head`): a section after the main table (``head_to_head`` in the JSON)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "format": RESULTS_FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "meta": dict(meta),
        "points": list(points),
        "summary": [row.model_dump(mode="json") for row in rows],
    }
    if against:
        document["against"] = {
            label: [row.model_dump(mode="json") for row in table] for label, table in against.items()
        }
    if versus:
        document["head_to_head"] = [row.model_dump(mode="json") for row in versus]
    json_path = folder / RESULTS_JSON
    json_path.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    title = intro if intro is not None else (
        f"# Benchmark: {meta.get('benchmark', '?')} ({meta.get('questions', '?')} questions, "
        f"model {meta.get('model', '?')})\n\n" + partial_run_note(rows, meta.get("questions"), drop_rule(meta))
    )
    notes = (
        "Speedup: mean (or median) engine seconds per question of the full model divided by the point's, over "
        "the same questions in the same run; its interval is a 95% paired bootstrap over questions. Accuracy "
        "interval: 95% Wilson score interval. Loss vs full: accuracy points lost against the full model on the "
        "questions both answered, with the half-width of its 95% paired (Agresti-Min) interval and the questions "
        "lost / gained. Tokens: mean generated "
        "tokens per question in the recall / analysis / summary stages and the full-model summary re-run.\n\n"
    )
    md_path = folder / RESULTS_MD
    others = "".join(
        f"\n## Against {label}\n\nThe same records, every loss and speedup taken against `{label}` (the full model "
        f"in that reasoning format) on the questions a point shares with it.\n\n" + markdown_table(table, label)
        for label, table in (against or {}).items()
    )
    per_stage = "\n## Per stage\n\nMean engine seconds per question in each stage (batched rows: each row's prefill and " \
        "decoding until it finished), and the questions whose stage ended by its early-exit rule.\n\n" + stage_table(rows)
    compared = "\n" + head_to_head_table(versus) if versus else ""
    md_path.write_text(title + notes + markdown_table(rows) + compared + per_stage + others, encoding="utf-8")
    return json_path, md_path


def reference_points(records: Sequence[QuestionRecord]) -> list[str]:
    """The labels of the full model run in a named reasoning format (``full:separate``), in first-seen order: the
    other references a run's report is summarised against."""
    return list(dict.fromkeys(r.point for r in records if r.method == "full" and r.point.startswith("full:")))


def drop_rule(meta: Mapping[str, Any]) -> DropRule | None:
    """The run's `--drop-worse` rule as its run.json records it (None: every point ran to the end)."""
    recorded = meta.get("drop_worse")
    return DropRule.model_validate(recorded) if recorded else None


def run_drops(run: Mapping[str, Any], records: Sequence[QuestionRecord]) -> set[str]:
    """The labels of the points a run's drop rule stopped (`run_drop_reasons`)."""
    return set(run_drop_reasons(run, records))


def run_drop_reasons(run: Mapping[str, Any], records: Sequence[QuestionRecord]) -> dict[str, DropReason]:
    """The points of a run (its run.json) that its drop rule stopped, each with the comparison that stopped it,
    replayed from its records as the runner decided them (`pruning.py`): the same answer before and after a resume,
    and no point that ran to the end."""
    rule = drop_rule(run["meta"])
    if rule is None:
        return {}
    interleave = int(run["meta"].get("interleave", 4))  # every run with a rule records it; 4 is the CLI's default
    return dropped_in_records(rule, records, run["question_ids"], interleave)


def partial_run_note(rows: Sequence[PointSummary], planned: Any, drop: DropRule | None = None) -> str:
    """A warning paragraph when points were recorded on fewer or different numbers of questions than planned, and
    a note naming the points the run's `drop` rule stopped early.

    A stopped run's points can stand at different counts (a round in progress); their accuracies are then over
    different questions, which the title's planned count would hide."""
    note = ""
    stopped = [row.point for row in rows if row.dropped]
    if stopped:
        note = (f"**Dropped early** ({drop.describe() if drop else 'clearly worse than the full model'}): "
                f"{', '.join(stopped)}; their n is where they stopped, their loss and speedup are over those "
                "questions.\n\n")
    counts = sorted({row.questions for row in rows if not row.dropped})
    if not counts or counts == [planned]:
        return note
    if len(counts) == 1:
        return note + f"**Partial run:** {planned} questions planned, every point recorded on the same {counts[0]}.\n\n"
    return note + (
        f"**Partial run:** {planned} questions planned, points recorded on {counts[0]}-{counts[-1]} (column n). "
        "Accuracies of points with different n are over different questions; each speedup is over the questions "
        "a point shares with the full model.\n\n"
    )


def load_results(folder: str | Path) -> dict[str, Any]:
    """Read a results folder's `results.json`, with an error naming the folder when it is absent or unreadable."""
    path = Path(folder) / RESULTS_JSON
    if not path.is_file():
        raise InvalidInputError(f"no {RESULTS_JSON} in {folder}: run `litestage bench ... --out {folder}` first")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}") from error
    if document.get("format") != RESULTS_FORMAT:
        raise InvalidInputError(f"{path} has results format {document.get('format')!r}, expected {RESULTS_FORMAT}")
    return document


def rows_of(document: Mapping[str, Any]) -> list[PointSummary]:
    return [PointSummary.model_validate(row) for row in document["summary"]]
