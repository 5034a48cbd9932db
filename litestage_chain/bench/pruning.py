"""Stop running a method point once it is clearly worse than the full model (``litestage bench --drop-worse``).

Why: a dev run compares about thirty points on over a thousand questions, and most baseline points collapse on a
model that can reason (in the first dev runs, 24 of 27 baseline points lost 8 points or more; uniform@16, rambling,
took 2.3-2.9 times the full model's time). Running a collapsed point to the end buys a tighter interval on a number
nobody needs: "is it at matched accuracy?" is answered after a few dozen questions. A point that loses less needs
hundreds of questions to be told apart and runs on, so the saving is the collapsed points, about a third of a run.

The test is the search's paired one (`offline.paired_decision`): the point's answers against the full model's on the
questions both have records for; the point is dropped when the lower end of its loss interval is above `margin`.
The margin is meant to be several points above the accuracy target, so a point near it always runs to the end.
The full model itself is never dropped. The decision is recomputed from the records before every round, so a
resumed run drops the same points (the records are all it depends on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.records import QuestionRecord, RecordStore
from litestage_chain.data.types import Question
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.paired_decision import PairedComparison, compare_answers


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


def dropped_points(
    rule: DropRule,
    points: Sequence[MethodPoint],
    questions: Sequence[Question],
    keys: Mapping[tuple[str, str], str],
    store: RecordStore,
) -> dict[str, PairedComparison]:
    """The points `rule` drops given the records so far, each with the comparison that dropped it."""
    reference = full_label(points)

    def recorded(label: str) -> list[QuestionRecord]:
        found = (store.get(keys[(label, q.id)]) for q in questions)
        return [record for record in found if record is not None]

    full = recorded(reference)
    dropped: dict[str, PairedComparison] = {}
    for point in points:
        if point.label == reference:
            continue
        comparison = paired_loss(full, recorded(point.label), rule.confidence)
        if comparison is not None and rule.drops(comparison):
            dropped[point.label] = comparison
    return dropped
