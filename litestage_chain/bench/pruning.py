"""Stop running a method point once it is clearly worse than the full model (``litestage bench --drop-worse``).

Why: a dev run compares about thirty points on over a thousand questions, and most baseline points collapse on a
model that can reason (in the first dev runs, 24 of 27 baseline points lost 8 points or more; uniform@16, rambling,
took 2.3-2.9 times the full model's time). Running a collapsed point to the end buys a tighter interval on a number
nobody needs: "is it at matched accuracy?" is answered after a few dozen questions. A point that loses less needs
hundreds of questions to be told apart and runs on, so the saving is the collapsed points, about a third of a run.

The test is the search's paired one (`offline.paired_decision`): the point's answers against the full model's on the
questions both have records for; the point is dropped when the lower end of its loss interval is above `margin`.
The margin is meant to be several points above the accuracy target. The test is repeated before every round with no
correction for the repeated looks, so a point whose true loss is just under the margin is dropped now and then (a
few percent of runs at one point under it); one well inside the target is not. The full model is never dropped.

The decision is a replay of the records in the run's question order: a point is dropped at the first round boundary
(before round 2, 3, ...) where the rule holds on the questions of the earlier rounds. So the runner, a resumed run
and a report rebuilt from the records agree on which points were dropped and where, and a point whose interval only
crosses the margin in its last round, or that has fewer records than the full model because a question failed for
it, ran to the end and is not called dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.records import QuestionRecord, RecordStore
from litestage_chain.data.types import Question
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.paired_decision import PairedComparison, compare_answers, flip


class DropRule(BaseModel):
    """Drop a point whose paired loss against the full model is, at `confidence`, above `margin`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    margin: float = Field(ge=0.0, le=1.0, description="loss (fraction, 0.05 = 5 points) the lower bound must exceed")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    min_questions: int = Field(16, ge=1, description="never drop on fewer shared questions than this")

    def drops(self, comparison: PairedComparison | None) -> bool:
        if comparison is None or comparison.questions < self.min_questions:
            return False
        return comparison.interval[0] > self.margin

    def describe(self) -> str:
        return (f"a point stops once the lower end of its {100 * self.confidence:.0f}% paired loss interval is above "
                f"{100 * self.margin:.1f} points (after at least {self.min_questions} questions)")


def paired_loss(
    full: Sequence[QuestionRecord], point: Sequence[QuestionRecord], confidence: float = 0.95
) -> PairedComparison | None:
    """A point's answers against the full model's on the labelled questions both ran (None: none shared)."""
    answers = {r.question_id: r.answer for r in full if r.correct is not None}
    mine = {r.question_id: r.answer for r in point if r.correct is not None}
    ids = [qid for qid in answers if qid in mine]
    if not ids:
        return None
    return compare_answers(answers, mine, {r.question_id: r.gold for r in full}, ids, confidence=confidence)


def full_label(points: Sequence[MethodPoint]) -> str:
    """The label of the reference point; dropping needs one to compare with."""
    labels = [p.label for p in points if p.method == "full"]
    if not labels:
        raise InvalidInputError("dropping clearly worse points needs the full model among the methods (add 'full')")
    return labels[0]


def first_drop(
    rule: DropRule,
    full: Mapping[str, QuestionRecord],
    point: Mapping[str, QuestionRecord],
    order: Sequence[str],
    interleave: int,
) -> PairedComparison | None:
    """The comparison at the first round boundary where `rule` drops `point`, or None (it never did).

    `full` and `point` map question ids to records; `order` is the run's question order, `interleave` its round
    size. At each boundary the comparison covers the labelled questions of the earlier rounds both have records for.
    """
    if interleave < 1:
        raise InvalidInputError(f"interleave must be >= 1, got {interleave}")
    lost = gained = shared = 0
    for index, qid in enumerate(order):
        if index and index % interleave == 0 and shared:
            comparison = PairedComparison(questions=shared, lost=lost, gained=gained, confidence=rule.confidence)
            if rule.drops(comparison):
                return comparison
        reference, mine = full.get(qid), point.get(qid)
        if reference is None or mine is None or reference.correct is None or mine.correct is None:
            continue
        lost_one, gained_one = flip(reference.answer, mine.answer, reference.gold)
        lost, gained, shared = lost + lost_one, gained + gained_one, shared + 1
    return None


def dropped_in_records(
    rule: DropRule, records: Sequence[QuestionRecord], order: Sequence[str], interleave: int, reference: str = "full"
) -> dict[str, PairedComparison]:
    """The points of a run's `records` that `rule` dropped, each with the comparison that dropped it (a replay)."""
    by_point: dict[str, dict[str, QuestionRecord]] = {}
    for record in records:
        by_point.setdefault(record.point, {})[record.question_id] = record
    full = by_point.get(reference, {})
    found = {label: first_drop(rule, full, mine, order, interleave)
             for label, mine in by_point.items() if label != reference}
    return {label: comparison for label, comparison in found.items() if comparison is not None}


def dropped_points(
    rule: DropRule,
    points: Sequence[MethodPoint],
    questions: Sequence[Question],
    keys: Mapping[tuple[str, str], str],
    store: RecordStore,
    interleave: int,
) -> dict[str, PairedComparison]:
    """The points `rule` drops given the records so far in `store`, each with the comparison that dropped it."""
    found = (store.get(keys[(point.label, q.id)]) for point in points for q in questions)
    records = [record for record in found if record is not None]
    return dropped_in_records(rule, records, [q.id for q in questions], interleave, full_label(points))
