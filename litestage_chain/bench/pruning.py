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

A second, optional test looks at latency (``--drop-slower FACTOR``): a point slower than the product point
(``litestage``) by more than FACTOR in every round so far, at least `min_rounds` of them, stops too. Why: the issue's
question is whether any baseline is faster than LiteStage at matched accuracy, and a point several times slower
cannot be, whatever its accuracy; yet such points (a skip plan that makes the model ramble to its token budget) are
the dearest to run: in the first rounds of the StrategyQA dev run, eleven of 32 points took 1.7-3.9 times
LiteStage's seconds, half the run's compute. The unit is the round (one batch per point at batch 8: its rows share
the batch's prefill and decode steps), and "every round" is deliberately blunt: a point that is ever within FACTOR
of LiteStage runs on to the end and gets its intervals, and identical work drifts only a few percent between the
rounds of one run. Points of the full model (in any format), the product point and its ablations (``litestage-*``)
are never dropped by it: they are what the others are measured against, not competitors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.records import QuestionRecord, RecordStore
from litestage_chain.data.types import Question
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.paired_decision import PairedComparison, compare_answers, flip


class SlowerRule(BaseModel):
    """Drop a point slower than the point labelled `than` by more than `factor` in each of its rounds so far."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    factor: float = Field(gt=1.0, description="seconds ratio (point / `than`) every round must exceed")
    than: str = Field("litestage", min_length=1, description="the label of the point latency is compared with")
    min_rounds: int = Field(2, ge=1, description="never drop on fewer rounds than this")

    def describe(self) -> str:
        return (f"a point stops once it took more than {self.factor:g}x {self.than}'s seconds in every round so far "
                f"(at least {self.min_rounds})")


class SlowerComparison(BaseModel):
    """A point's seconds against the `than` point's, round by round (sums over the questions both ran)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    than: str
    ratios: tuple[float, ...] = Field(description="per round: the point's seconds / the `than` point's")
    questions: int = Field(ge=1, description="questions in those rounds that both ran")

    def describe(self) -> str:
        """E.g. 'slower than litestage in every round: 1.62x, 1.84x (16 questions)'."""
        shown = ", ".join(f"{ratio:.2f}x" for ratio in self.ratios)
        return f"slower than {self.than} in every round: {shown} ({self.questions} questions)"


DropReason = PairedComparison | SlowerComparison
"""Why a point was dropped: its paired loss against the full model, or its seconds against the product point's."""


class DropRule(BaseModel):
    """When a point stops early: its paired loss against the full model is, at `confidence`, above `margin`; or
    (with `slower`) it is clearly slower than the product point. At least one of the two is set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    margin: float | None = Field(None, ge=0.0, le=1.0,
                                 description="loss (fraction, 0.05 = 5 points) the lower bound must exceed")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    min_questions: int = Field(16, ge=1, description="never drop on fewer shared questions than this")
    slower: SlowerRule | None = Field(None, description="the latency test (None: none)")

    @model_validator(mode="after")
    def _some_test(self) -> DropRule:
        if self.margin is None and self.slower is None:
            raise ValueError("a drop rule needs a loss margin, a latency test or both")
        return self

    def drops(self, comparison: PairedComparison | None) -> bool:
        if self.margin is None or comparison is None or comparison.questions < self.min_questions:
            return False
        return comparison.interval[0] > self.margin

    def describe(self) -> str:
        tests = []
        if self.margin is not None:
            tests.append(f"a point stops once the lower end of its {100 * self.confidence:.0f}% paired loss interval "
                         f"is above {100 * self.margin:.1f} points (after at least {self.min_questions} questions)")
        if self.slower is not None:
            tests.append(self.slower.describe())
        return "; or ".join(tests)


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


def first_slower(
    rule: SlowerRule,
    reference: Mapping[str, QuestionRecord],
    point: Mapping[str, QuestionRecord],
    order: Sequence[str],
    interleave: int,
) -> SlowerComparison | None:
    """The comparison at the first round boundary where `rule` drops `point`, or None (it never did).

    `reference` holds the `rule.than` point's records by question id. At each boundary the rounds before it are
    looked at, each over the questions both points have records for (a round neither has is passed over)."""
    if interleave < 1:
        raise InvalidInputError(f"interleave must be >= 1, got {interleave}")
    ratios: list[float] = []
    questions = 0
    for start in range(0, len(order), interleave):
        if len(ratios) >= rule.min_rounds and all(ratio > rule.factor for ratio in ratios):
            return SlowerComparison(than=rule.than, ratios=tuple(ratios), questions=questions)
        shared = [qid for qid in order[start : start + interleave] if qid in reference and qid in point]
        theirs = sum(reference[qid].seconds for qid in shared)
        if shared and theirs > 0:
            ratios.append(sum(point[qid].seconds for qid in shared) / theirs)
            questions += len(shared)
    return None


def exempt(label: str, method: str, rule: SlowerRule) -> bool:
    """Whether the latency test spares a point: the full model (any format), the point it compares with, and the
    product's ablations (``litestage-noexit``, ...), which explain LiteStage's time rather than compete with it."""
    return label == rule.than or method == "full" or method.startswith("litestage")


def dropped_in_records(
    rule: DropRule, records: Sequence[QuestionRecord], order: Sequence[str], interleave: int, reference: str = "full"
) -> dict[str, DropReason]:
    """The points of a run's `records` that `rule` dropped, each with the comparison that dropped it (a replay).

    A point both tests drop is reported with its loss; the latency test spares the points `exempt` names."""
    by_point: dict[str, dict[str, QuestionRecord]] = {}
    methods: dict[str, str] = {}
    for record in records:
        by_point.setdefault(record.point, {})[record.question_id] = record
        methods[record.point] = record.method
    full = by_point.get(reference, {})
    slower = rule.slower
    found: dict[str, DropReason] = {}
    for label, mine in by_point.items():
        if label == reference:
            continue
        worse = first_drop(rule, full, mine, order, interleave) if rule.margin is not None else None
        if worse is not None:
            found[label] = worse
        elif slower is not None and not exempt(label, methods[label], slower) and slower.than in by_point:
            verdict = first_slower(slower, by_point[slower.than], mine, order, interleave)
            if verdict is not None:
                found[label] = verdict
    return found


def check_rule(rule: DropRule, points: Sequence[MethodPoint]) -> None:
    """Raise `InvalidInputError` when the points lack what `rule` compares with (the full model for the loss test,
    the reference point for the latency test)."""
    if rule.margin is not None:
        full_label(points)
    if rule.slower is not None and rule.slower.than not in {p.label for p in points}:
        raise InvalidInputError(f"dropping clearly slower points compares them with {rule.slower.than!r}, which is "
                                "not among the method points (add it to --methods)")


def dropped_points(
    rule: DropRule,
    points: Sequence[MethodPoint],
    questions: Sequence[Question],
    keys: Mapping[tuple[str, str], str],
    store: RecordStore,
    interleave: int,
) -> dict[str, DropReason]:
    """The points `rule` drops given the records so far in `store`, each with the comparison that dropped it.

    `points` are those still running (the full model among them: it is never dropped); the latency test's
    reference is read from the store whether it is among them or not."""
    labels = [point.label for point in points]
    if rule.slower is not None and rule.slower.than not in labels:
        labels.append(rule.slower.than)
    found = (store.get(keys[(label, q.id)]) for label in labels for q in questions if (label, q.id) in keys)
    records = [record for record in found if record is not None]
    reference = full_label(points) if rule.margin is not None else "full"
    return dropped_in_records(rule, records, [q.id for q in questions], interleave, reference)
