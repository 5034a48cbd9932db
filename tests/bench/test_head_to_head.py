"""LiteStage against every point: time over rounds, paired accuracy, and the outcome both give."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from litestage_chain.bench.head_to_head import (
    MIN_ROUNDS,
    HeadToHead,
    head_to_head,
    head_to_head_table,
    outcome_counts,
    same_settings,
)
from litestage_chain.bench.pruning import SlowerComparison
from litestage_chain.bench.records import RECORDS_FILE, QuestionRecord, RecordStore, StageMeasure
from litestage_chain.bench.report import RESULTS_JSON, RESULTS_MD
from litestage_chain.bench.results import rebuild_report
from litestage_chain.offline.paired_decision import PairedComparison
from litestage_chain.offline.stats import clustered_ratio_interval

IDENTITY = "i" * 32


def record(point: str, qid: str, seconds: float, correct: bool, method: str | None = None) -> QuestionRecord:
    return QuestionRecord(
        key=f"{point}/{qid}", identity=IDENTITY, point=point, point_key=f"k-{point}",
        method=method or point.split("@")[0], count=0, stage=None, skipped={}, early_exit=False, question_id=qid,
        gold="A", answer="A" if correct else "B", correct=correct, answer_source="summary", fallback_used=False,
        stages={"summary": StageMeasure(tokens=1, seconds=seconds)}, seconds=seconds,
    )


def run_of(
    times: dict[str, float], wrong: dict[str, set[int]], n: int, *, noise: float = 0.0, seed: int = 0,
    methods: dict[str, str] | None = None,
) -> list[QuestionRecord]:
    """Records of each point on n questions: seconds `times[point]` per question (times a per-round load factor
    shared by every point, and independent noise of relative size `noise`), wrong on the question indices given."""
    generator = random.Random(seed)
    load = [generator.uniform(0.7, 1.5) for _ in range(n)]
    records = []
    for point, seconds in times.items():
        for i in range(n):
            jitter = 1.0 + generator.uniform(-noise, noise)
            records.append(record(point, f"q{i}", seconds * load[i // 8] * jitter, i not in wrong.get(point, set()),
                                  (methods or {}).get(point)))
    return records


def order(n: int) -> list[str]:
    return [f"q{i}" for i in range(n)]


def by_point(rows: Sequence[HeadToHead]) -> dict[str, HeadToHead]:
    return {row.point: row for row in rows}


def test_the_cluster_interval_resamples_rounds_and_is_none_below_two() -> None:
    assert clustered_ratio_interval([2.0, 4.0], [1.0, 2.0]) == (2.0, 2.0), "every round 2x: no spread"
    assert clustered_ratio_interval([2.0], [1.0]) == (None, None)
    low, high = clustered_ratio_interval([1.0, 3.0, 2.0, 2.5], [2.0, 2.0, 2.0, 2.0])
    assert low is not None and high is not None and 0.5 <= low < 1.06 < high <= 1.5
    with pytest.raises(Exception, match="differ in length"):
        clustered_ratio_interval([1.0], [1.0, 2.0])


def test_a_clearly_faster_point_at_matched_accuracy_is_not_met_and_a_slower_one_met() -> None:
    n = 160
    rows = by_point(head_to_head(run_of({"litestage": 1.0, "capped@25": 0.8, "adaskip@8": 1.3},
                                        {"litestage": {3}, "capped@25": {5}, "adaskip@8": {3}}, n, noise=0.1),
                                 order(n), 8))
    fast, slow = rows["capped@25"], rows["adaskip@8"]
    assert fast.rounds == 20 and fast.questions == n
    assert fast.time_ratio == pytest.approx(0.8, rel=0.03) and fast.time_high is not None and fast.time_high < 1
    assert (fast.lost, fast.gained) == (1, 1) and fast.accuracy_difference == 0.0
    assert fast.outcome == "not met" and fast.reason == "point faster"
    assert slow.time_low is not None and slow.time_low > 1 and slow.outcome == "met"
    assert slow.reason == "LiteStage faster"


def test_a_round_is_the_unit_so_rows_of_one_batch_are_not_treated_as_independent() -> None:
    # batched rows share a batch's steps, so which row a second is charged to is arbitrary: here every round of the
    # point costs exactly 1.1x LiteStage's, spread over its rows in reverse. Over rounds the interval is a point; a
    # bootstrap over questions would see ratios from 0.2x to 6x and a wide interval.
    n = 96
    records = []
    for i in range(n):
        mirror = 8 * (i // 8) + 7 - i % 8
        records.append(record("litestage", f"q{i}", 0.5 + i % 8, True))
        records.append(record("unified@2", f"q{i}", 1.1 * (0.5 + mirror % 8), True))
    row = by_point(head_to_head(records, order(n), 8))["unified@2"]
    assert row.time_low == pytest.approx(1.1) and row.time_high == pytest.approx(1.1)
    assert row.outcome == "met"


def test_accuracy_decides_when_time_does_not_and_both_give_a_trade_off() -> None:
    n = 160
    many = set(range(0, 160, 5))  # 32 more questions wrong than LiteStage
    rows = by_point(head_to_head(run_of({"litestage": 1.0, "unified@6": 1.0, "uniform@16": 0.7, "capped@75": 1.3},
                                        {"unified@6": many, "uniform@16": many, "litestage": many}, n, noise=0.05),
                                 order(n), 8))
    assert rows["unified@6"].outcome == "unresolved", "same answers, no clear time difference"
    rows = by_point(head_to_head(run_of({"litestage": 1.0, "unified@6": 1.0, "uniform@16": 0.7, "capped@75": 1.3},
                                        {"unified@6": many, "uniform@16": many, "capped@75": set()}, n, noise=0.05),
                                 order(n), 8))
    assert rows["unified@6"].outcome == "met" and rows["unified@6"].reason.startswith("LiteStage more accurate")
    assert rows["unified@6"].accuracy_high is not None and rows["unified@6"].accuracy_high < 0
    assert rows["uniform@16"].outcome == "trade-off" and rows["uniform@16"].reason == "LiteStage slower, more accurate"
    assert rows["capped@75"].outcome == "met" and rows["capped@75"].reason == "LiteStage faster"
    rows = by_point(head_to_head(run_of({"litestage": 1.0, "unified@6": 1.0, "uniform@16": 0.7, "capped@75": 1.3},
                                        {"litestage": many}, n, noise=0.05), order(n), 8))
    assert rows["unified@6"].outcome == "not met"
    assert rows["unified@6"].reason == "point more accurate at no clear difference in time"
    assert rows["uniform@16"].reason == "point faster and more accurate"
    assert rows["capped@75"].outcome == "trade-off" and rows["capped@75"].reason == "LiteStage faster, less accurate"


def test_below_the_minimum_rounds_there_is_no_time_interval_and_no_time_verdict() -> None:
    n = 8 * (MIN_ROUNDS - 1)
    row = by_point(head_to_head(run_of({"litestage": 1.0, "capped@25": 0.5}, {}, n), order(n), 8))["capped@25"]
    assert row.rounds == MIN_ROUNDS - 1 and row.time_low is None and row.time_high is None
    assert row.time_ratio == pytest.approx(0.5) and row.outcome == "unresolved"


def test_identical_and_dropped_points_say_so() -> None:
    n = 80
    records = run_of({"litestage": 1.0, "litestage-noskip": 0.9, "adaskip@16": 2.0, "uniform@8": 1.0}, {}, n)
    records = [r for r in records if r.point not in ("adaskip@16", "uniform@8") or int(r.question_id[1:]) < 16]
    slower = SlowerComparison(than="litestage", ratios=(2.0, 2.0), questions=16)
    worse = PairedComparison(questions=16, lost=9, gained=0, confidence=0.95)
    rows = by_point(head_to_head(records, order(n), 8, identical={"litestage-noskip"},
                                 dropped={"adaskip@16": slower, "uniform@8": worse}))
    assert rows["litestage-noskip"].outcome == "identical" and rows["litestage-noskip"].time_ratio < 1
    assert rows["adaskip@16"].outcome == "met" and rows["adaskip@16"].rounds == 2
    assert rows["adaskip@16"].time_low is None, "two rounds: no interval, the drop decides the time"
    assert rows["adaskip@16"].reason == ("LiteStage faster (stopped by the run: slower than litestage in every "
                                         "round: 2.00x, 2.00x (16 questions))")
    assert rows["uniform@8"].outcome == "met", "worse than the full model: not at matched accuracy"
    assert rows["uniform@8"].reason.startswith("LiteStage more accurate at no clear difference in time (stopped")
    assert not rows["litestage-noskip"].baseline and rows["uniform@8"].baseline
    assert outcome_counts(list(rows.values())) == {"met": 2}, "ablations and the full model are not baselines"


def test_a_drop_does_not_hide_what_the_point_measured_on_the_other_axis() -> None:
    n = 64
    wrong = {"litestage": set(range(0, 64, 2))}  # LiteStage wrong on half: any point right on all is clearly better
    records = run_of({"litestage": 1.0, "adaskip@16": 2.0, "uniform@8": 0.5}, wrong, n)
    slower = SlowerComparison(than="litestage", ratios=(2.0, 2.0), questions=16)
    worse = PairedComparison(questions=16, lost=9, gained=0, confidence=0.95)
    rows = by_point(head_to_head(records, order(n), 8, dropped={"adaskip@16": slower, "uniform@8": worse}))
    assert rows["adaskip@16"].outcome == "trade-off", "stopped as slower, but clearly more accurate than LiteStage"
    assert rows["adaskip@16"].reason.startswith("LiteStage faster, less accurate (stopped by the run")
    assert rows["uniform@8"].outcome == "not met", "stopped as worse than the full model, yet more accurate than "
    "LiteStage and clearly faster"


def test_a_time_difference_inside_the_drift_band_is_not_clear() -> None:
    n = 96
    rows = by_point(head_to_head(run_of({"litestage": 1.0, "full-exit": 1.04, "capped@25": 0.96, "unified@2": 1.07},
                                        {}, n), order(n), 8))
    for label, ratio in (("full-exit", 1.04), ("capped@25", 0.96)):
        row = rows[label]
        assert row.time_low == pytest.approx(ratio) and row.time_high == pytest.approx(ratio), "no spread"
        assert row.outcome == "unresolved", f"{label}: a {ratio}x difference is within the drift of identical work"
    assert rows["unified@2"].outcome == "met"


def test_the_markdown_shows_the_points_own_lost_and_gained_as_the_json_does() -> None:
    n = 64
    rows = head_to_head(run_of({"litestage": 1.0, "capped@25": 0.5}, {"capped@25": {1, 2, 3}, "litestage": {9}}, n),
                        order(n), 8)
    assert (rows[0].lost, rows[0].gained) == (3, 1)
    assert "| capped@25 | 64 | 8 | 0.50x [0.50, 0.50] | -3.1 [" in head_to_head_table(rows)
    assert "] (3/1) | not met | point faster |" in head_to_head_table(rows)


def test_no_product_point_no_rows_and_the_full_model_is_compared_but_not_counted() -> None:
    n = 16
    assert head_to_head(run_of({"full": 1.0, "uniform@4": 0.9}, {}, n), order(n), 8) == []
    rows = head_to_head(run_of({"litestage": 1.0, "full": 1.6, "full:separate": 2.0}, {}, n,
                               methods={"full:separate": "full"}), order(n), 8)
    assert [row.point for row in rows] == ["full", "full:separate"] and not any(row.baseline for row in rows)
    assert "Baselines (not the full model, not LiteStage's ablations): none." in head_to_head_table(rows)


def test_same_settings_ignores_the_name_but_not_the_plans() -> None:
    base = {"plans": {"analysis": {"attention": [], "mlp": []}}, "early_exit": {"analysis": None},
            "max_tokens": {"analysis": 16}}
    points = [
        {"label": "litestage", "key": "a", "method": "litestage", "count": 0, "stage": None, **base},
        {"label": "capped-analysis@16", "key": "b", "method": "capped-analysis", "count": 16, "stage": None, **base},
        {"label": "litestage-noexit", "key": "c", "method": "litestage-noexit", "count": 0, "stage": None,
         **{**base, "max_tokens": None}},
        {"label": "uniform@1", "key": "d", "method": "uniform", "count": 1, "stage": None,
         **{**base, "plans": {"analysis": {"attention": [], "mlp": [3]}}}},
    ]
    assert same_settings(points) == {"capped-analysis@16"}
    assert same_settings(points[1:]) == set(), "no product point: nothing is identical to it"


def test_the_report_has_the_section_and_the_json_the_rows(tmp_path: Path) -> None:
    n = 80
    records = run_of({"full": 1.2, "litestage": 1.0, "capped@25": 1.5}, {"capped@25": {1, 2}}, n, noise=0.05)
    run = {"meta": {"benchmark": "t", "questions": n, "interleave": 8}, "identity": IDENTITY,
           "question_ids": order(n),
           "points": [{"label": p, "key": f"k-{p}", "method": p.split("@")[0], "count": 0, "stage": None,
                       "plans": {}, "early_exit": {}, "max_tokens": {"analysis": 10 + i}}
                      for i, p in enumerate(("full", "litestage", "capped@25"))]}
    (tmp_path / "run.json").write_text(json.dumps(run))
    RecordStore(tmp_path / RECORDS_FILE).add(records)
    rebuild_report(tmp_path, plots=False)
    text = (tmp_path / RESULTS_MD).read_text()
    assert "## LiteStage against every point" in text and "| capped@25 | 80 | 10 | 1.50x [" in text
    assert "Baselines (not the full model, not LiteStage's ablations): met 1." in text
    document = json.loads((tmp_path / RESULTS_JSON).read_text())
    assert [row["point"] for row in document["head_to_head"]] == ["full", "capped@25"]
    assert document["head_to_head"][1]["outcome"] == "met" and document["head_to_head"][1]["lost"] == 2
