"""The tables of the stage-cost diagnosis script (the run itself needs the benchmark model: benchmarks/README.md)."""

from __future__ import annotations

import pytest

from benchmarks.stage_costs import stage_table, step_table
from litestage_chain.offline.cost_model import PlanCosts, RowTokens, batch_seconds

COSTS = PlanCosts(prefill_token_seconds={1: 0.01, 2: 0.01}, decode_step_seconds={1: 0.1, 2: 0.2})


def test_stage_table_splits_each_row_into_the_batch_prefill_and_its_own_decode_steps() -> None:
    # two rows of one call: 10 and 20 tokens prefilled (none from a table), 3 and 5 generated
    whole = batch_seconds(COSTS, [RowTokens(prefilled=10, generated=3), RowTokens(prefilled=20, generated=5)])
    assert whole == pytest.approx([0.3 + 2 * 0.2, 0.3 + 2 * 0.2 + 2 * 0.1])
    exact = [(10, 0, 3, 0.3, 0.4), (20, 0, 5, 0.3, 0.6)]  # measured exactly as priced
    slow = [(10, 0, 3, 0.6, 0.4), (20, 0, 5, 0.6, 1.2)]  # prefill twice the price, the second row's decode too
    assert stage_table([(16, exact)], COSTS)[2] == "| 16 | 2 | 4.0 | 0.30 / 0.30 (+0%) | 0.50 / 0.50 (+0%) |"
    assert stage_table([(16, slow)], COSTS)[2] == "| 16 | 2 | 4.0 | 0.60 / 0.30 (-50%) | 0.80 / 0.50 (-38%) |"


def test_stage_table_groups_calls_by_budget_and_leaves_table_tokens_out_of_the_prefill() -> None:
    rows = stage_table([(64, [(30, 20, 2, 0.1, 0.2)]), (16, [(10, 0, 2, 0.1, 0.1)])], COSTS)
    assert [line.split(" | ")[0] for line in rows[2:]] == ["| 16", "| 64"]
    assert "0.10 / 0.10 (+0%)" in rows[3]  # 30 prompt tokens, 20 of them from a table: 10 prefilled


def test_step_table_prices_each_batch_size_at_its_steps_mean_context() -> None:
    costs = COSTS.model_copy(update={"context_tokens": 100, "decode_context_seconds": {1: 0.001, 2: 0.001}})
    steps = [(2, 150, 0.30, True), (2, 250, 0.20, True), (2, 200, 0.40, False), (1, 100, 0.1, False)]
    table = step_table(steps, costs)
    assert table[2] == "| 1 | 1 | 0 | 100.0 | 100 | 100.0 (+0%) |"
    assert table[3] == "| 2 | 3 | 2 | 300.0 | 200 | 300.0 (+0%) |"  # 0.2 + 0.001 * (200 - 100)


def test_recording_wraps_the_engine_only_inside_its_block() -> None:
    from benchmarks.stage_costs import recording
    from litestage_chain.chat import chat_model
    from litestage_chain.engine import generation

    originals = (chat_model.generate, generation.decode_one)
    with recording() as (calls, steps):
        assert (chat_model.generate, generation.decode_one) != originals
        assert calls == [] and steps == []
    assert (chat_model.generate, generation.decode_one) == originals
