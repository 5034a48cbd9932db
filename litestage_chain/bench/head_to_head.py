"""LiteStage against every other point of a run: is any of them faster at matched accuracy?

The results table answers "how does each point do against the full model". The issue's second target asks another
question: at matched accuracy, is LiteStage faster than every baseline? Reading it off two columns of speedups and
losses, each against the full model, compounds two intervals and hides the pairing. Here every point is compared
with the product point (``litestage``) directly, on the questions both ran:

* **time**: the point's engine seconds / LiteStage's (above 1: LiteStage is faster). Its 95% interval is a bootstrap
  over rounds, not questions: the rows of a batch share its prefill and decode steps, and load drifts between rounds,
  so the round is the unit whose times are comparable (`offline.stats.clustered_ratio_interval`). Below `MIN_ROUNDS`
  rounds no interval is given: a bootstrap over a handful of clusters is too narrow to trust.
* **accuracy**: paired, as everywhere else (`offline.paired_decision`), with LiteStage as the reference: questions
  LiteStage got right and the point wrong count as lost.

A time difference is called clear when its interval lies wholly outside the drift band (`DRIFT`, 5% either
way): points doing exactly LiteStage's work measured 0.92-0.98x of its seconds in the StrategyQA dev run, so a
narrower difference cannot be told from the run's own drift. An accuracy difference is clear when its 95% interval
excludes zero. "Matched accuracy" is therefore "no clear accuracy difference": at this resolution a point flipping a
third of the answers can be "matched" (its interval is then +-10 points wide; the row shows it).

* ``met``: LiteStage clearly better on one axis and not clearly worse on the other (clearly faster at an accuracy not
  clearly different, or clearly more accurate at a time not clearly different). A point the run stopped as slower
  than LiteStage by its factor in every round (``--drop-slower``) counts as clearly slower; one stopped as clearly
  worse than the full model (``--drop-worse``) as clearly less accurate, unless its comparison with LiteStage says it
  is clearly more accurate. The row says when a drop decided it.
* ``not met``: the same the other way round: the point is faster at matched accuracy, or more accurate and no slower.
* ``trade-off``: one is clearly faster, the other clearly more accurate.
* ``unresolved``: no clear difference on either axis at this number of questions and rounds.
* ``identical``: the point runs exactly LiteStage's settings (e.g. ``capped-analysis@16`` under a profile that is
  that cap); any measured difference is drift between the passes of one run, and the row shows how large it is.

The outcomes are per point, with no correction for making some thirty comparisons: read an isolated call near the
band's edge as a hint, not a finding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.bench.pruning import DropReason, SlowerComparison, paired_loss
from litestage_chain.bench.records import QuestionRecord
from litestage_chain.offline.paired_decision import PairedComparison
from litestage_chain.offline.stats import clustered_ratio_interval

PRODUCT = "litestage"
DRIFT = 0.05
"""Relative time difference a point doing LiteStage's exact work can show within one run (see the module text)."""
MIN_ROUNDS = 8
"""Fewest rounds a time interval is given on (a bootstrap over fewer clusters understates the spread)."""

Outcome = Literal["met", "not met", "trade-off", "unresolved", "identical"]
Clear = Literal["better", "worse", "unclear"]
"""A difference as LiteStage sees it: LiteStage clearly better, clearly worse, or neither at 95%."""


class HeadToHead(BaseModel):
    """One point against LiteStage on the questions both ran."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    point: str
    method: str
    questions: int = Field(ge=1, description="questions both this point and LiteStage have records for")
    rounds: int = Field(ge=1, description="rounds (batches of the run's interleave) those questions fall in")
    time_ratio: float = Field(description="this point's seconds / LiteStage's, summed over the shared questions")
    time_low: float | None = Field(None, description="2.5th percentile of the ratio, bootstrap over rounds")
    time_high: float | None = Field(None, description="97.5th percentile of the ratio, bootstrap over rounds")
    lost: int = Field(ge=0, description="labelled questions this point lost: LiteStage right, this point wrong")
    gained: int = Field(ge=0, description="labelled questions this point gained: this point right, LiteStage wrong")
    paired_questions: int = Field(ge=0, description="labelled questions of the comparison")
    accuracy_low: float | None = Field(None, description="95% lower bound of this point's accuracy - LiteStage's")
    accuracy_high: float | None = Field(None, description="95% upper bound of this point's accuracy - LiteStage's")
    identical: bool = Field(False, description="runs exactly LiteStage's plans, early exit, budgets and format")
    dropped: str | None = Field(None, description="why the run stopped this point early, if it did")
    outcome: Outcome
    reason: str = Field(description="the outcome in words")

    @property
    def accuracy_difference(self) -> float | None:
        """This point's accuracy minus LiteStage's on the paired questions (a fraction)."""
        return (self.gained - self.lost) / self.paired_questions if self.paired_questions else None

    @property
    def baseline(self) -> bool:
        """A competitor, not the full model (any format) or one of LiteStage's own ablations."""
        return self.method != "full" and not self.method.startswith("litestage")


def same_settings(points: Sequence[Mapping[str, Any]], reference: str = PRODUCT) -> set[str]:
    """The labels of the points (run.json's point list) that run exactly what `reference` runs: the same plans,
    early-exit rules, token budgets and format, under another method name."""
    def settings(point: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in point.items() if k not in ("label", "key", "method", "count", "stage")}

    chosen = [p for p in points if p["label"] == reference]
    if not chosen:
        return set()
    target = settings(chosen[0])
    return {p["label"] for p in points if p["label"] != reference and settings(p) == target}


def head_to_head(
    records: Sequence[QuestionRecord],
    order: Sequence[str],
    interleave: int,
    *,
    identical: Sequence[str] | set[str] = (),
    dropped: Mapping[str, DropReason] | None = None,
    reference: str = PRODUCT,
    confidence: float = 0.95,
) -> list[HeadToHead]:
    """Every point of `records` against `reference`, in first-seen order ([] when the run has no such point).

    `order` is the run's question order and `interleave` its round size; `identical` names the points with the
    reference's settings (`same_settings`) and `dropped` the points the run stopped, with why (`report.run_drop_reasons`).
    """
    by_point: dict[str, dict[str, QuestionRecord]] = {}
    for record in records:
        by_point.setdefault(record.point, {})[record.question_id] = record
    if reference not in by_point:
        return []
    theirs = by_point[reference]
    round_of = {qid: index // interleave for index, qid in enumerate(order)}
    rows = []
    for label, mine in by_point.items():
        shared = [qid for qid in order if qid in mine and qid in theirs]
        if label == reference or not shared:
            continue
        rows.append(_compare(label, mine, theirs, shared, round_of, label in identical,
                             (dropped or {}).get(label), confidence))
    return rows


def _compare(
    label: str,
    mine: Mapping[str, QuestionRecord],
    theirs: Mapping[str, QuestionRecord],
    shared: Sequence[str],
    round_of: Mapping[str, int],
    identical: bool,
    dropped: DropReason | None,
    confidence: float,
) -> HeadToHead:
    own: dict[int, float] = {}
    base: dict[int, float] = {}
    for qid in shared:
        own[round_of[qid]] = own.get(round_of[qid], 0.0) + mine[qid].seconds
        base[round_of[qid]] = base.get(round_of[qid], 0.0) + theirs[qid].seconds
    rounds = sorted(own)
    total = sum(base.values())
    ratio = sum(own.values()) / total if total > 0 else float("inf")
    low, high = (None, None)
    if len(rounds) >= MIN_ROUNDS:
        low, high = clustered_ratio_interval([own[r] for r in rounds], [base[r] for r in rounds])
    paired = paired_loss([theirs[qid] for qid in shared], [mine[qid] for qid in shared], confidence)
    accuracy: tuple[float | None, float | None] = (None, None)
    if paired is not None:
        loss_low, loss_high = paired.interval
        accuracy = (-loss_high, -loss_low)
    time_side = _time_clear(low, high)
    accuracy_side = _accuracy_clear(*accuracy)
    if isinstance(dropped, SlowerComparison):
        time_side = "better"
    elif isinstance(dropped, PairedComparison) and accuracy_side != "worse":
        accuracy_side = "better"
    outcome, reason = _outcome(time_side, accuracy_side, identical)
    why_dropped = _drop_note(dropped)
    if why_dropped is not None and not identical:
        reason += f" ({why_dropped})"
    first = mine[shared[0]]
    return HeadToHead(
        point=label, method=first.method, questions=len(shared), rounds=len(rounds), time_ratio=ratio,
        time_low=low, time_high=high, lost=paired.lost if paired else 0, gained=paired.gained if paired else 0,
        paired_questions=paired.questions if paired else 0,
        accuracy_low=accuracy[0], accuracy_high=accuracy[1], identical=identical, dropped=why_dropped,
        outcome=outcome, reason=reason,
    )


def _time_clear(low: float | None, high: float | None) -> Clear:
    """LiteStage's side of the time comparison: 'better' when the point is clearly slower (beyond the drift band)."""
    if low is None or high is None:
        return "unclear"
    if low > 1.0 + DRIFT:
        return "better"
    if high < 1.0 / (1.0 + DRIFT):
        return "worse"
    return "unclear"


def _accuracy_clear(low: float | None, high: float | None) -> Clear:
    """LiteStage's side of the accuracy comparison: 'better' when the point's accuracy is clearly lower."""
    if low is None or high is None:
        return "unclear"
    if high < 0.0:
        return "better"
    if low > 0.0:
        return "worse"
    return "unclear"


def _outcome(time: Clear, accuracy: Clear, identical: bool) -> tuple[Outcome, str]:
    if identical:
        return "identical", "runs LiteStage's exact settings: the measured difference is drift within the run"
    if time == "better" and accuracy != "worse":
        return "met", "LiteStage faster" + ("" if accuracy == "unclear" else " and more accurate")
    if accuracy == "better" and time != "worse":
        return "met", "LiteStage more accurate at no clear difference in time"
    if time == "worse" and accuracy != "better":
        return "not met", "point faster" + ("" if accuracy == "unclear" else " and more accurate")
    if accuracy == "worse" and time != "better":
        return "not met", "point more accurate at no clear difference in time"
    if time != "unclear":  # each clearly better on one axis
        return "trade-off", f"LiteStage {'faster' if time == 'better' else 'slower'}, " \
            f"{'less' if accuracy == 'worse' else 'more'} accurate"
    return "unresolved", "no clear difference in time or accuracy at this number of questions and rounds"


def _drop_note(dropped: DropReason | None) -> str | None:
    if isinstance(dropped, SlowerComparison):
        return f"stopped by the run: {dropped.describe()}"
    if isinstance(dropped, PairedComparison):
        return f"stopped by the run as worse than the full model: {dropped.describe()}"
    return None


def outcome_counts(rows: Sequence[HeadToHead]) -> dict[str, int]:
    """How many baselines (not the full model, not LiteStage's ablations) ended in each outcome."""
    counts: dict[str, int] = {}
    for row in rows:
        if row.baseline:
            counts[row.outcome] = counts.get(row.outcome, 0) + 1
    return counts


def head_to_head_table(rows: Sequence[HeadToHead], reference: str = PRODUCT) -> str:
    """The comparison as a GitHub markdown section (heading, how to read it, counts, table)."""
    counts = outcome_counts(rows)
    shown = ", ".join(f"{name} {counts[name]}" for name in ("met", "not met", "trade-off", "unresolved", "identical")
                      if name in counts) or "none"
    lines = [
        "## LiteStage against every point\n",
        f"Each point against `{reference}` on the questions both ran. Time: the point's seconds / {reference}'s "
        f"(above 1: {reference} is faster), 95% interval a bootstrap over rounds (none below {MIN_ROUNDS} rounds); "
        f"a difference counts as clear beyond {100 * DRIFT:.0f}% either way, the drift of identical work within a "
        f"run. Accuracy: the point's minus {reference}'s in points, paired, 95% interval, with the questions the "
        f"point lost / gained against {reference}. Outcome for the target \"at matched accuracy, LiteStage is faster "
        "than every baseline\", where matched means no clear difference: met (LiteStage clearly better on one axis, "
        "not clearly worse on the other), not met (the same for the point), trade-off (each clearly better on one "
        "axis), unresolved (no clear difference at this n), identical (the same settings: the row measures drift). "
        "No correction for the number of rows: an isolated call near a boundary is a hint.\n",
        f"Baselines (not the full model, not LiteStage's ablations): {shown}.\n",
        "| point | n | rounds | time / LiteStage [95%] | accuracy vs LiteStage, points [95%] (lost/gained) "
        "| outcome | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        known = row.time_low is not None and row.time_high is not None
        interval = f" [{row.time_low:.2f}, {row.time_high:.2f}]" if known else ""
        if row.accuracy_low is not None and row.accuracy_high is not None and row.accuracy_difference is not None:
            accuracy = (f"{100 * row.accuracy_difference:+.1f} [{100 * row.accuracy_low:+.1f}, "
                        f"{100 * row.accuracy_high:+.1f}] ({row.lost}/{row.gained})")
        else:
            accuracy = "n/a (unlabelled)"
        lines.append(f"| {row.point} | {row.questions} | {row.rounds} | {row.time_ratio:.2f}x{interval} | {accuracy} "
                     f"| {row.outcome} | {row.reason} |")
    return "\n".join(lines) + "\n"
