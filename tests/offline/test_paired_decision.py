"""The paired decision rule: flip counting, the Agresti-Min interval, accept / reject / undecided, stated resolution."""

from __future__ import annotations

import math

import pytest

from litestage_chain import InvalidInputError
from litestage_chain.offline.paired_decision import DecisionRule, PairedComparison, compare_answers

IDS = [f"q{i}" for i in range(10)]
GOLD = {qid: "A" for qid in IDS}


def test_flips_are_counted_by_correctness_against_gold() -> None:
    full = {qid: "A" for qid in IDS} | {"q9": "B"}            # 9 right
    candidate = {qid: "A" for qid in IDS} | {"q0": "B", "q1": None}  # q0, q1 lost; q9 gained
    comparison = compare_answers(full, candidate, GOLD, IDS)
    assert (comparison.lost, comparison.gained, comparison.questions) == (2, 1, 10)
    assert comparison.loss == pytest.approx(0.1)


def test_agreement_counts_every_changed_answer_as_lost() -> None:
    full = {qid: "A" for qid in IDS} | {"q9": None}
    candidate = {qid: "A" for qid in IDS} | {"q0": "B", "q9": "C"}
    comparison = compare_answers(full, candidate, None, IDS)
    assert (comparison.lost, comparison.gained) == (2, 0)


def test_missing_answers_and_labels_are_named() -> None:
    with pytest.raises(InvalidInputError, match="q3"):
        compare_answers({"q3": "A"}, {}, GOLD, ["q3"])
    with pytest.raises(InvalidInputError, match="gold label"):
        compare_answers({"x": "A"}, {"x": "A"}, {"x": None}, ["x"])
    with pytest.raises(InvalidInputError, match="at least one"):
        compare_answers({}, {}, GOLD, [])


def test_interval_matches_agresti_min_by_hand() -> None:
    comparison = PairedComparison(questions=150, lost=6, gained=3, confidence=0.95)
    n = 152
    p12, p21 = 6.5 / n, 3.5 / n
    expected = 1.959963984540054 * math.sqrt((p12 + p21 - (p12 - p21) ** 2) / n)
    assert comparison.half_width == pytest.approx(expected)
    low, high = comparison.interval
    assert high - low == pytest.approx(2 * expected)
    assert comparison.loss == pytest.approx(0.02)
    assert "loss 2.0 +- " in comparison.describe() and "at 95%" in comparison.describe()


def test_more_flips_or_fewer_questions_widen_the_interval() -> None:
    few = PairedComparison(questions=150, lost=2, gained=2, confidence=0.95).half_width
    many = PairedComparison(questions=150, lost=10, gained=10, confidence=0.95).half_width
    small = PairedComparison(questions=50, lost=2, gained=2, confidence=0.95).half_width
    assert few < many and few < small


RULE = DecisionRule(epsilon=0.01, tolerance=0.03)


def test_identical_answers_on_enough_questions_are_accepted() -> None:
    assert RULE.decide(PairedComparison(questions=150, lost=0, gained=0, confidence=0.95), final=True) == "accept"


def test_clearly_worse_is_rejected_before_the_slice_ends() -> None:
    comparison = PairedComparison(questions=25, lost=9, gained=0, confidence=0.95)
    assert comparison.interval[0] > 0.01
    assert RULE.decide(comparison, final=False) == "reject"


def test_acceptance_waits_for_the_whole_slice() -> None:
    comparison = PairedComparison(questions=150, lost=0, gained=0, confidence=0.95)
    assert RULE.decide(comparison, final=False) == "undecided"


def test_loss_estimate_above_epsilon_is_not_accepted_even_if_not_clearly_worse() -> None:
    comparison = PairedComparison(questions=150, lost=4, gained=1, confidence=0.95)  # 2 points, interval wide
    assert comparison.interval[0] <= 0.01
    assert RULE.decide(comparison, final=True) == "undecided"
    assert RULE.questions_needed(comparison) == 0  # more questions cannot make a 2-point loss acceptable


def test_a_small_slice_is_too_small_to_decide_and_says_how_many_questions_would() -> None:
    comparison = PairedComparison(questions=48, lost=3, gained=3, confidence=0.95)  # zero loss, six flips
    assert comparison.loss == 0.0
    assert RULE.decide(comparison, final=True) == "undecided"
    needed = RULE.questions_needed(comparison)
    assert needed > 48
    bigger = PairedComparison(questions=needed * 2, lost=needed // 8, gained=needed // 8, confidence=0.95)
    assert RULE.decide(bigger, final=True) == "accept"


def test_resolution_shrinks_with_the_slice() -> None:
    assert RULE.resolution(600, 0.1) < RULE.resolution(150, 0.1) < RULE.resolution(48, 0.1)
    with pytest.raises(InvalidInputError):
        RULE.resolution(0, 0.1)


def test_rule_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        DecisionRule(epsilon=-0.1)
    with pytest.raises(ValueError):
        DecisionRule(epsilon=0.01, confidence=1.0)
