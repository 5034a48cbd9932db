"""The cost model: batch arithmetic, interpolation, alternating measurement, ratios, the resumable log, real timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from litestage_chain import InvalidInputError, SkipPlan, generate
from litestage_chain.offline.cost_model import (
    CostModel,
    PlanCosts,
    RowTokens,
    SublayerCosts,
    batch_seconds,
    engine_timer,
    predict_seconds,
    sublayer_weights,
)
from litestage_chain.engine.generation import GenerationConfig

COSTS = PlanCosts(prefill_token_seconds={1: 0.01, 4: 0.005}, decode_step_seconds={1: 0.1, 4: 0.16})


def test_interpolates_between_measured_batch_sizes_and_clamps_outside() -> None:
    assert COSTS.decode(1) == pytest.approx(0.1)
    assert COSTS.decode(2) == pytest.approx(0.12)
    assert COSTS.decode(8) == pytest.approx(0.16)
    with pytest.raises(InvalidInputError):
        COSTS.decode(0)


def test_a_row_pays_the_batch_prefill_and_the_steps_until_it_finished() -> None:
    rows = [RowTokens(prefilled=10, generated=3), RowTokens(prefilled=30, generated=1), RowTokens(prefilled=20, generated=5)]
    # packed prefill of 60 tokens at batch 3 (interpolated 0.01 - 2/3 * 0.005)
    prefill = 60 * (0.01 + (3 - 1) / 3 * (0.005 - 0.01))
    # decode passes: step 0 with rows having >1 token (2 rows), step 1 (2 rows), step 2 (1 row), step 3 (1 row)
    two, one = COSTS.decode(2), COSTS.decode(1)
    assert batch_seconds(COSTS, rows) == pytest.approx([prefill + 2 * two, prefill, prefill + 2 * two + 2 * one])


def test_prediction_batches_questions_in_order_and_skips_calls_that_did_not_run() -> None:
    tokens = {"s": [RowTokens(prefilled=4, generated=2)] * 3, "fallback": [None, RowTokens(prefilled=4, generated=1), None]}
    seconds = predict_seconds(lambda call: COSTS, tokens, batch_size=2)
    first = batch_seconds(COSTS, tokens["s"][:2])
    second = batch_seconds(COSTS, tokens["s"][2:])
    fallback = batch_seconds(COSTS, [RowTokens(prefilled=4, generated=1)])
    assert seconds == pytest.approx((sum(first) + sum(second) + sum(fallback)) / 3)
    with pytest.raises(InvalidInputError, match="same questions"):
        predict_seconds(lambda call: COSTS, {"a": [None], "b": [None, None]}, 1)


class FakeTimer:
    """Full model costs `base`, a plan 1 - 0.1 per skipped sub-layer of it; `load` multiplies everything (busy CPU)."""

    def __init__(self) -> None:
        self.load = 1.0
        self.calls: list[SkipPlan] = []

    def __call__(self, plan: SkipPlan, *, context: bool = False) -> PlanCosts:
        self.calls.append(plan)
        factor = self.load * (1 - 0.1 * plan.num_skipped)
        self.load *= 1.5  # the machine gets busier with every timing
        return PlanCosts(prefill_token_seconds={1: 0.01 * factor}, decode_step_seconds={1: 0.2 * factor})


def test_plan_costs_are_ratios_to_the_full_model_measured_alternately() -> None:
    timer = FakeTimer()
    model = CostModel(timer, "m", rounds=2)
    ratios = model.ratios(SkipPlan(mlp=[1, 2]))
    full, plan = SkipPlan(), SkipPlan(mlp=[1, 2])
    assert timer.calls == [full, plan, plan, full]  # alternating: full first in even rounds
    # a busier machine does not leak into the ratio: each round's pair is measured back to back
    assert 0.5 < ratios.decode(1) < 1.0
    assert model.measurements == 1
    model.ratios(SkipPlan(mlp=[2, 1]))  # the same plan: measured once
    assert model.measurements == 1
    absolute = model.costs(plan)
    assert absolute.decode(1) == pytest.approx(model.full_costs().decode(1) * ratios.decode(1))


def test_costs_resume_from_the_log_and_ignore_other_identities(tmp_path: Path) -> None:
    log = tmp_path / "costs.jsonl"
    first = CostModel(FakeTimer(), "m", rounds=1, path=log)
    ratios = first.ratios(SkipPlan(attention=[0]))
    with log.open("a") as handle:
        handle.write('{"key": "abc", "identity"')  # an interrupted write
    timer = FakeTimer()
    with pytest.warns(UserWarning, match="partial last record"):
        again = CostModel(timer, "m", rounds=1, path=log)
    assert again.ratios(SkipPlan(attention=[0])) == ratios and timer.calls == []
    other = CostModel(FakeTimer(), "other-model", rounds=1, path=log)
    other.ratios(SkipPlan(attention=[0]))
    assert other.measurements == 1
    identities = [json.loads(line)["identity"] for line in log.read_text().splitlines()]
    assert identities == ["m", "other-model"]  # one plan each; the other identity measured its own


def test_predict_needs_a_plan_for_every_call() -> None:
    model = CostModel(FakeTimer(), "m")
    with pytest.raises(InvalidInputError, match="no plan"):
        model.predict({}, {"recall": [RowTokens(prefilled=1, generated=1)]}, 1)


def test_invalid_costs_and_rounds_are_rejected() -> None:
    with pytest.raises(ValueError):
        PlanCosts(prefill_token_seconds={}, decode_step_seconds={1: 0.1})
    with pytest.raises(ValueError):
        PlanCosts(prefill_token_seconds={0: 0.1}, decode_step_seconds={1: 0.1})
    with pytest.raises(InvalidInputError):
        CostModel(FakeTimer(), "m", rounds=0)


def test_sublayer_weights_follow_the_projection_shapes(tiny_qwen2) -> None:
    weights = sublayer_weights(tiny_qwen2)
    config = tiny_qwen2.model.config
    head = config.hidden_size // config.num_attention_heads
    q, kv = config.num_attention_heads * head, config.num_key_value_heads * head
    assert weights[0] == (config.hidden_size * (q + 2 * kv) + q * config.hidden_size,
                          3 * config.hidden_size * config.intermediate_size)
    assert len(weights) == tiny_qwen2.num_layers


def test_engine_timer_predicts_a_real_generation(tiny_qwen2) -> None:
    """The model's prediction for a real batched generation is in the right range (tiny model, noisy timer)."""
    timer = engine_timer(tiny_qwen2, [1, 2], prompt_tokens=16, decode_steps=6)
    model = CostModel(timer, "tiny", rounds=3)
    plan = SkipPlan(mlp=[0])
    prompts = [[5 + i for i in range(12)], [9 + i for i in range(8)]]
    config = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    # the fastest of three runs per row: a millisecond-long generation on a busy machine can lose a whole time slice,
    # as the timer's medians of three rounds do not
    runs = [generate(tiny_qwen2, prompts, plan=plan, config=config) for _ in range(3)]
    results = runs[0]
    rows = [RowTokens(prefilled=r.prompt_tokens, generated=r.generated_tokens) for r in results]
    predicted = batch_seconds(model.costs(plan), rows)
    measured = [min(run[i].prefill_seconds + run[i].decode_seconds for run in runs) for i in range(len(prompts))]
    assert all(m / 20 < p < m * 20 for p, m in zip(predicted, measured)), (predicted, measured)
    with pytest.raises(InvalidInputError):
        engine_timer(tiny_qwen2, [0])


def test_the_full_model_reference_is_timed_once_and_kept_for_a_resumed_search(tmp_path: Path) -> None:
    log = tmp_path / "costs.jsonl"
    first = CostModel(FakeTimer(), "m", rounds=2, path=log)
    plan = SkipPlan(mlp=[3])
    predicted = first.costs(plan)
    first.ratios(SkipPlan(mlp=[4]))  # later timings do not move the reference
    assert first.costs(plan) == predicted
    timer = FakeTimer()
    again = CostModel(timer, "m", rounds=2, path=log)
    assert again.full_costs() == first.full_costs() and again.costs(plan) == predicted and timer.calls == []


def test_decode_steps_are_priced_at_their_context_when_it_is_known() -> None:
    costs = PlanCosts(prefill_token_seconds={1: 0.0}, decode_step_seconds={1: 0.1}, context_tokens=100,
                      decode_context_seconds={1: 0.001})
    assert costs.decode(1) == pytest.approx(0.1) and costs.decode(1, 300) == pytest.approx(0.3)
    short = batch_seconds(costs, [RowTokens(prefilled=0, generated=5, context=100)])[0]
    long = batch_seconds(costs, [RowTokens(prefilled=0, generated=5, context=600)])[0]
    # 4 decode passes at contexts 100..103 (priced at the middle, 101.5) vs 600..603
    assert short == pytest.approx(4 * (0.1 + 0.001 * 1.5)) and long == pytest.approx(4 * (0.1 + 0.001 * 501.5))
    unknown = batch_seconds(costs, [RowTokens(prefilled=0, generated=5)])[0]
    assert unknown == pytest.approx(0.4), "without the context, steps are priced as timed"
    assert RowTokens.from_record((3, 4, 50)) == RowTokens(prefilled=3, generated=4, context=50)
    assert RowTokens.from_record((3, 4)).context is None and RowTokens.from_record(None) is None


def test_prefilled_tokens_are_priced_after_the_tokens_cached_before_them() -> None:
    costs = PlanCosts(prefill_token_seconds={1: 0.01, 2: 0.01}, decode_step_seconds={1: 0.0, 2: 0.0},
                      prefill_context_seconds={1: 0.0001, 2: 0.0001})
    assert costs.prefill(1) == pytest.approx(0.01) and costs.prefill(1, 400) == pytest.approx(0.05)
    # a stage prompt of 500 tokens, 400 of them a cached few-shot prefix: 100 prefilled at 0.01 + 400 * 0.0001 each
    rows = [RowTokens(prefilled=100, generated=1, context=500), RowTokens(prefilled=50, generated=1, context=50)]
    assert batch_seconds(costs, rows) == pytest.approx([100 * 0.05 + 50 * 0.01] * 2)
    assert batch_seconds(costs, [RowTokens(prefilled=100, generated=1)]) == pytest.approx([1.0]), "context unknown"
    assert batch_seconds(costs.model_copy(update={"prefill_context_seconds": {}}), rows[:1]) == pytest.approx([1.0])


def test_a_plan_pays_the_context_cost_of_the_attention_it_runs() -> None:
    def timer(plan: SkipPlan, *, context: bool = False) -> PlanCosts:
        return PlanCosts(prefill_token_seconds={1: 0.01}, decode_step_seconds={1: 0.1}, context_tokens=10,
                         decode_context_seconds={1: 0.002} if context else {},
                         prefill_context_seconds={1: 0.0004} if context else {})

    model = CostModel(timer, "m", rounds=1, num_layers=4)
    assert model.costs(SkipPlan()).decode_context_seconds == {1: pytest.approx(0.002)}
    assert model.costs(SkipPlan(attention=[0, 1], mlp=[3])).decode_context_seconds == {1: pytest.approx(0.001)}
    assert model.costs(SkipPlan(attention=[0, 1], mlp=[3])).prefill_context_seconds == {1: pytest.approx(0.0002)}
    assert model.costs(SkipPlan(mlp=[0, 1])).decode_context_seconds == {1: pytest.approx(0.002)}


def test_engine_timer_measures_the_context_cost_when_asked(tiny_qwen2) -> None:
    timer = engine_timer(tiny_qwen2, [1], prompt_tokens=8, decode_steps=4, long_context=64)
    before = dict(tiny_qwen2.prefix_cache._entries)
    full = timer(SkipPlan(), context=True)
    assert set(full.decode_context_seconds) == {1} and full.context_tokens == 8 + 2
    assert set(full.prefill_context_seconds) == {1}
    assert timer(SkipPlan()).decode_context_seconds == {} and timer(SkipPlan()).prefill_context_seconds == {}
    assert dict(tiny_qwen2.prefix_cache._entries) == before, "the timer's shared prefix stays out of the model's table"


def test_only_the_reference_timings_measure_the_context_cost() -> None:
    timer = FakeTimer()
    asked: list[bool] = []
    model = CostModel(lambda plan, context=False: asked.append(context) or timer(plan), "m", rounds=2)
    model.costs(SkipPlan(mlp=[1]))
    assert sorted(asked) == [False] * 4 + [True] * 2


def test_a_plan_is_priced_from_the_shares_of_the_sublayers_it_skips() -> None:
    attention = PlanCosts(prefill_token_seconds={1: 0.96}, decode_step_seconds={1: 0.98})  # 4 skipped
    mlp = PlanCosts(prefill_token_seconds={1: 0.8}, decode_step_seconds={1: 0.72})  # 4 skipped
    shares = SublayerCosts.from_ratios(attention, 4, mlp, 4)
    ratios = shares.ratios(SkipPlan(attention=[0], mlp=[1, 2]))
    assert ratios.prefill(1) == pytest.approx(1 - 0.01 - 2 * 0.05)
    assert ratios.decode(1) == pytest.approx(1 - 0.005 - 2 * 0.07)
    assert shares.ratios(SkipPlan(mlp=list(range(30)))).decode(1) == pytest.approx(0.05), "never below 5%"


class SublayerTimer:
    """Costs fall by 1% per skipped attention and 3% per skipped MLP; every third timing is taken in a busy spell."""

    def __init__(self) -> None:
        self.calls: list[SkipPlan] = []

    def __call__(self, plan: SkipPlan, *, context: bool = False) -> PlanCosts:
        self.calls.append(plan)
        spell = 1.4 if len(self.calls) % 3 == 0 else 1.0
        factor = spell * (1 - 0.01 * len(plan.attention) - 0.03 * len(plan.mlp))
        return PlanCosts(prefill_token_seconds={1: 0.01 * factor}, decode_step_seconds={1: 0.1 * factor})


def test_calibrated_costs_time_two_plans_once_and_price_every_plan_from_them(tmp_path: Path) -> None:
    timer = SublayerTimer()
    model = CostModel(timer, "m", rounds=2, num_layers=16, path=tmp_path / "costs.jsonl", calibration_rounds=5)
    one_mlp = model.ratios(SkipPlan(mlp=[13]))
    timed = [plan for plan in timer.calls if not plan.is_empty]
    assert {(len(p.attention), len(p.mlp)) for p in timed} == {(8, 0), (0, 8)} and len(timed) == 10
    # the busy spells hit single rounds: the median of five, over eight sub-layers, is unmoved by them
    assert one_mlp.decode(1) == pytest.approx(0.97) and one_mlp.prefill(1) == pytest.approx(0.97)
    assert model.ratios(SkipPlan(attention=[1, 2], mlp=[3])).decode(1) == pytest.approx(1 - 0.02 - 0.03)
    assert len(timer.calls) == 20, "no plan is timed on its own"
    # timed plan by plan, two rounds, the same plan comes out where the spells put it
    noisy = CostModel(SublayerTimer(), "m", rounds=2, num_layers=16).ratios(SkipPlan(mlp=[13]))
    assert abs(noisy.decode(1) - 0.97) > 0.1
    again = CostModel(timer := SublayerTimer(), "m", rounds=2, num_layers=16, path=tmp_path / "costs.jsonl",
                      calibration_rounds=5)
    assert again.ratios(SkipPlan(mlp=[13])) == one_mlp and timer.calls == [], "resumed from the log"
    other = CostModel(timer, "m", rounds=2, num_layers=16, path=tmp_path / "costs.jsonl", calibration_rounds=3)
    other.ratios(SkipPlan(mlp=[13]))
    assert len(timer.calls) == 12, "calibrations of another round count are measured anew"
    with pytest.raises(InvalidInputError, match="calibration_rounds"):
        CostModel(timer, "m", calibration_rounds=0, num_layers=16)
