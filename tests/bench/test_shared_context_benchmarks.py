"""The statistics of the shared-context benchmark scripts (the runs themselves are long: see benchmarks/README.md)."""

from __future__ import annotations

import pytest

from benchmarks.shared_context import bootstrap_ratio, unit_seconds
from benchmarks.shared_context_accuracy import mcnemar_exact, report
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.reasoning.stage_output import StageOutput


def test_mcnemar_exact_matches_the_binomial_test() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 2 * 0.5**6
    assert mcnemar_exact(10, 2) == pytest.approx(mcnemar_exact(2, 10)) == pytest.approx(0.0386, abs=1e-4)


def test_paired_report_counts_only_questions_run_in_both_formats() -> None:
    rows = [
        {"benchmark": "b", "format": "separate", "id": "1", "answer": "A", "correct": True},
        {"benchmark": "b", "format": "shared", "id": "1", "answer": "A", "correct": True},
        {"benchmark": "b", "format": "separate", "id": "2", "answer": "B", "correct": False},
        {"benchmark": "b", "format": "shared", "id": "2", "answer": "C", "correct": True},
        {"benchmark": "b", "format": "shared", "id": "3", "answer": "C", "correct": True},  # unpaired
    ]
    out = report(rows, "b")
    assert out["paired"] == 2 and out["accuracy"] == {"separate": 0.5, "shared": 1.0}
    assert out["agreement"] == 0.5 and out["only_shared_right"] == 1 and out["only_separate_right"] == 0


def test_batch_time_is_each_stage_prefill_plus_its_slowest_row() -> None:
    def output(stage: str, prefill: float, decode: float) -> StageOutput:
        return StageOutput(stage=stage, text="", prompt_tokens=1, generated_tokens=1, seconds=prefill + decode,
                           prefill_seconds=prefill, decode_seconds=decode, skipped=SkipPlan(), early_exited=False,
                           finish_reason="eos")

    states = [{s: output(s, 1.0, d) for s in ("recall", "analysis", "summary")} for d in (2.0, 5.0)]
    assert unit_seconds(states) == pytest.approx(3 * (1.0 + 5.0))
    low, high = bootstrap_ratio([2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    assert low == high == 2.0
