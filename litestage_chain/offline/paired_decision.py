"""The search's decision rule: is a candidate within epsilon of the full model, judged question by question?

Why paired: a candidate and the full model answer the *same* questions, so most questions cancel out (both right,
or both wrong). Only the flips carry information: `lost` questions the full model got right and the candidate got
wrong, `gained` ones the other way round. The accuracy loss is (lost - gained) / n, and its uncertainty depends on
how many flips there are, not on the accuracy itself. That is far tighter than comparing two accuracies with their
own (unpaired) intervals, and it says how much a slice can resolve.

The interval is the Agresti-Min adjusted Wald interval for a paired difference of proportions (half a question
added to each discordant cell): it stays honest with few flips, where the plain Wald interval collapses to a point.

Decision, at the stated confidence:

* **reject** as soon as the lower end of the loss interval is above epsilon: the candidate is clearly worse. The
  search evaluates in chunks and stops a candidate at the first chunk that rejects it.
* **accept** only on the whole slice, when the estimated loss is at most epsilon *and* the upper end of the
  interval is at most epsilon + `tolerance`: the loss bound allows it.
* otherwise **undecided**: the slice is too small to tell this candidate from one that loses more than allowed.
  The search treats it as not accepted and says how many questions would resolve it.

With the agreement metric (no labels), every changed answer counts as lost and none as gained: the loss is the
rate of disagreement with the full model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from litestage_chain.errors import InvalidInputError

Verdict = Literal["accept", "reject", "undecided"]


class PairedComparison(BaseModel):
    """Flips of a candidate against the full model on the same questions, and the loss interval they give."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    questions: int = Field(ge=1)
    lost: int = Field(ge=0, description="questions the full model got right (or agreed on) and the candidate not")
    gained: int = Field(ge=0, description="questions the candidate got right and the full model not")
    confidence: float = Field(gt=0.0, lt=1.0)

    @property
    def loss(self) -> float:
        """Estimated loss (a fraction; positive = the candidate is worse)."""
        return (self.lost - self.gained) / self.questions

    @property
    def half_width(self) -> float:
        """Half-width of the two-sided interval of the loss (Agresti-Min: half a question added to each flip cell)."""
        n = self.questions + 2
        p_lost = (self.lost + 0.5) / n
        p_gained = (self.gained + 0.5) / n
        variance = (p_lost + p_gained - (p_lost - p_gained) ** 2) / n
        return _z(self.confidence) * math.sqrt(max(variance, 0.0))

    @property
    def interval(self) -> tuple[float, float]:
        centre = self._adjusted_loss()
        return centre - self.half_width, centre + self.half_width

    def _adjusted_loss(self) -> float:
        return ((self.lost + 0.5) - (self.gained + 0.5)) / (self.questions + 2)

    def describe(self) -> str:
        """E.g. 'loss 1.3 +- 2.1 points at 95% (4 lost, 2 gained of 150)'."""
        return (f"loss {100 * self.loss:.1f} +- {100 * self.half_width:.1f} points at {100 * self.confidence:.0f}% "
                f"({self.lost} lost, {self.gained} gained of {self.questions})")


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def compare_answers(
    full: Mapping[str, str | None],
    candidate: Mapping[str, str | None],
    gold: Mapping[str, str | None] | None,
    ids: Sequence[str],
    confidence: float = 0.95,
) -> PairedComparison:
    """Count the flips of `candidate` against `full` on `ids`: by correctness with `gold`, else by agreement."""
    if not ids:
        raise InvalidInputError("a paired comparison needs at least one question")
    missing = [qid for qid in ids if qid not in full or qid not in candidate]
    if missing:
        raise InvalidInputError(f"no answer of both the full model and the candidate for question(s) {missing[:5]}")
    lost = gained = 0
    for qid in ids:
        if gold is not None and (qid not in gold or gold[qid] is None):
            raise InvalidInputError(f"question {qid!r} has no gold label; use the agreement metric")
        lost_one, gained_one = flip(full[qid], candidate[qid], None if gold is None else gold[qid])
        lost += lost_one
        gained += gained_one
    return PairedComparison(questions=len(ids), lost=lost, gained=gained, confidence=confidence)


def flip(full: str | None, candidate: str | None, gold: str | None) -> tuple[bool, bool]:
    """(lost, gained) on one question: by correctness against `gold`, or by agreement when there is none."""
    if gold is None:
        return candidate != full, False
    label = str(gold).upper()
    right_full = full is not None and str(full).upper() == label
    right_candidate = candidate is not None and str(candidate).upper() == label
    return right_full and not right_candidate, right_candidate and not right_full


class DecisionRule(BaseModel):
    """Accept a candidate whose loss against the full model is at most `epsilon`, with a bound the slice supports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epsilon: float = Field(ge=0.0, le=1.0, description="largest allowed loss (fraction, 0.01 = 1 point)")
    tolerance: float = Field(0.03, ge=0.0, le=1.0, description="how far above epsilon the upper bound may reach")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)

    def decide(self, comparison: PairedComparison, *, final: bool) -> Verdict:
        """`final`: the comparison covers the whole slice (acceptance is only decided there)."""
        low, high = comparison.interval
        if low > self.epsilon:
            return "reject"
        if not final:
            return "undecided"
        if comparison.loss <= self.epsilon + 1e-12 and high <= self.epsilon + self.tolerance + 1e-12:
            return "accept"
        return "undecided"

    def questions_needed(self, comparison: PairedComparison) -> int:
        """About how many questions would make the upper bound reach epsilon + tolerance, at this flip rate and loss.

        Zero when the candidate is estimated to lose more than epsilon (more questions cannot make it acceptable).
        """
        if comparison.loss > self.epsilon:
            return 0
        room = self.epsilon + self.tolerance - comparison.loss
        flip_rate = max((comparison.lost + comparison.gained) / comparison.questions, 1.0 / comparison.questions)
        variance = flip_rate - comparison.loss**2
        return math.ceil((_z(self.confidence) ** 2) * variance / (room**2))

    def resolution(self, questions: int, flip_rate: float) -> float:
        """Half-width (fraction) of the loss interval on `questions` questions at `flip_rate` flips and zero loss."""
        if questions < 1:
            raise InvalidInputError(f"the resolution needs at least one question, got {questions}")
        flips = flip_rate * questions
        comparison = PairedComparison(
            questions=questions, lost=round(flips / 2), gained=round(flips / 2), confidence=self.confidence
        )
        return comparison.half_width

    def describe(self) -> str:
        return (f"accept when loss <= {100 * self.epsilon:.1f} points with its {100 * self.confidence:.0f}% upper "
                f"bound <= {100 * (self.epsilon + self.tolerance):.1f}; reject when the lower bound > "
                f"{100 * self.epsilon:.1f}")
