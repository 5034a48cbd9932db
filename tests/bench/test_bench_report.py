"""Report arithmetic on known numbers: Wilson intervals, same-question speedups, token means, the markdown table."""

from __future__ import annotations

import math

import pytest

from litestage_chain import InvalidInputError
from litestage_chain.bench.records import QuestionRecord, StageMeasure
from litestage_chain.bench.report import markdown_table, stage_table, summarise, wilson_interval


def record(point: str, qid: str, seconds: float, correct: bool, *, tokens: tuple[int, int, int] = (10, 20, 5),
           fallback: int | None = None, method: str | None = None, count: int = 0) -> QuestionRecord:
    stages = {s: StageMeasure(tokens=t, seconds=seconds / 3) for s, t in zip(("recall", "analysis", "summary"), tokens)}
    if fallback is not None:
        stages["fallback"] = StageMeasure(tokens=fallback, seconds=0.0)
    return QuestionRecord(
        key=f"{point}:{qid}", identity="i", point=point, point_key=point, method=method or point.split("@")[0],
        count=count, stage=None, skipped={"recall": count, "analysis": count, "summary": count}, early_exit=False,
        question_id=qid, gold="A", answer="A" if correct else "B", correct=correct, answer_source="summary",
        fallback_used=fallback is not None, stages=stages, seconds=seconds,
    )


def test_wilson_interval_matches_known_values() -> None:
    assert wilson_interval(7, 10) == pytest.approx((0.396778, 0.892209), abs=1e-6)
    assert wilson_interval(0, 4) == pytest.approx((0.0, 0.489891), abs=1e-6)
    assert wilson_interval(4, 4) == pytest.approx((0.510109, 1.0), abs=1e-6)
    assert wilson_interval(50, 100) == pytest.approx((0.403832, 0.596168), abs=1e-6)
    with pytest.raises(InvalidInputError, match="at least one"):
        wilson_interval(0, 0)
    with pytest.raises(InvalidInputError, match="within 0..3"):
        wilson_interval(4, 3)


def test_speedup_is_against_the_full_model_over_the_same_questions() -> None:
    records = [
        record("full", "q1", 10.0, True), record("full", "q2", 20.0, True), record("full", "q3", 30.0, False),
        record("uniform@4", "q1", 5.0, True, count=4), record("uniform@4", "q2", 10.0, False, count=4),
        record("uniform@4", "q3", 30.0, False, count=4),
        # only measured on q1 so far: its speedup uses the full model's q1 time, not the mean over all three
        record("unified@1", "q1", 2.5, True, count=1),
    ]
    rows = {row.point: row for row in summarise(records)}
    full, uniform, unified = rows["full"], rows["uniform@4"], rows["unified@1"]
    assert full.speedup == 1.0 and full.median_speedup == 1.0
    assert uniform.mean_seconds == pytest.approx(15.0) and uniform.median_seconds == 10.0
    assert uniform.speedup == pytest.approx(20.0 / 15.0)
    assert uniform.median_speedup == pytest.approx(20.0 / 10.0)
    assert unified.speedup == pytest.approx(10.0 / 2.5) and unified.questions == 1
    assert (uniform.correct, uniform.accuracy) == (1, pytest.approx(1 / 3))
    assert (uniform.ci_low, uniform.ci_high) == pytest.approx(wilson_interval(1, 3))
    assert full.accuracy == pytest.approx(2 / 3)


def test_token_and_fallback_means() -> None:
    records = [
        record("full", "q1", 1.0, True, tokens=(10, 20, 4)),
        record("full", "q2", 1.0, True, tokens=(20, 40, 6), fallback=8),
    ]
    (row,) = summarise(records)
    assert row.tokens == {"recall": 15.0, "analysis": 30.0, "summary": 5.0, "fallback": 4.0}
    assert row.fallback_rate == 0.5 and row.unanswered_rate == 0.0
    assert row.stage_seconds["recall"] == pytest.approx(1 / 3)


def test_missing_full_model_and_duplicates_are_errors() -> None:
    with pytest.raises(InvalidInputError, match="full model"):
        summarise([record("uniform@4", "q1", 1.0, True)])
    with pytest.raises(InvalidInputError, match="several records"):
        summarise([record("full", "q1", 1.0, True), record("full", "q1", 2.0, True)])
    with pytest.raises(InvalidInputError, match="shares no question"):
        summarise([record("full", "q1", 1.0, True), record("uniform@4", "q2", 1.0, True)])


def test_zero_seconds_gives_infinite_speedup_not_a_crash() -> None:
    rows = summarise([record("full", "q1", 1.0, True), record("uniform@4", "q1", 0.0, True)])
    assert math.isinf(rows[1].speedup)


def test_markdown_table_has_one_row_per_point_with_ci_speedup_and_tokens() -> None:
    records = [record("full", "q1", 10.0, True), record("full", "q2", 10.0, False),
               record("uniform@4", "q1", 5.0, True, count=4), record("uniform@4", "q2", 5.0, True, count=4)]
    table = markdown_table(summarise(records))
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[1].count("---") == lines[0].count("|") - 1
    assert "| full | full | 0/0/0 | no | 2 | 50.0 [9.5, 90.5] | reference | 10.00 | 10.00 | 1.00x | 1.00x | 10.0/20.0/5.0/0.0 |" in table
    assert "| uniform | uniform@4 | 4/4/4 | no | 2 | 100.0 [34.2, 100.0] | -50.0 +- 64.8 (0/1) | 5.00 | 5.00 | 2.00x [2.00, 2.00] | 2.00x |" in table


def test_speedup_interval_is_a_paired_bootstrap_around_the_mean_ratio() -> None:
    from litestage_chain.offline.stats import speedup_interval

    assert speedup_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == (2.0, 2.0)  # every pair 2x: no spread
    low, high = speedup_interval([10.0, 1.0, 5.0, 7.0, 2.0, 9.0], [9.0, 1.5, 5.0, 4.0, 2.5, 10.0])
    assert low < (34.0 / 32.0) < high and low > 0.5 and high < 2.0
    assert speedup_interval([1.0], [1.0]) == (None, None)
    rows = summarise([record("full", f"q{i}", 10.0 + i, True) for i in range(4)]
                     + [record("uniform@4", f"q{i}", 5.0 + i / 2, True) for i in range(4)])
    assert rows[1].speedup_ci_low == rows[1].speedup_ci_high == pytest.approx(2.0)
    assert "2.00x [2.00, 2.00]" in markdown_table(rows)


def test_stage_table_says_where_the_time_goes_and_how_many_stages_exited() -> None:
    exited = record("litestage", "q2", 6.0, True)
    exited = exited.model_copy(update={"stages": {**exited.stages, "analysis": StageMeasure(
        tokens=8, seconds=1.0, early_exited=True)}})
    rows = summarise([record("full", "q1", 9.0, True), record("full", "q2", 9.0, True),
                      record("litestage", "q1", 6.0, True), exited])
    assert rows[1].early_exits == {"recall": 0, "analysis": 1, "summary": 0}
    table = stage_table(rows)
    assert "| full | 3.00 | 3.00 | 3.00 | 0.00 | 0/0/0 of 2 | 10.0/20.0/5.0/0.0 |" in table
    assert "| litestage | 2.00 | 1.50 | 2.00 | 0.00 | 0/1/0 of 2 | 10.0/14.0/5.0/0.0 |" in table
