"""Each benchmark method builds the plans it claims: same budget per stage, evenly spaced layers, the last k layers."""

from __future__ import annotations

import pytest
import torch

from litestage_chain import EarlyExitConfig, InvalidInputError, SkipPlan
from litestage_chain.bench.methods import (
    MethodContext,
    all_points,
    evenly_spaced_layers,
    last_layers_plan,
    method_points,
    parse_method,
    parse_sweep,
    unified_plan,
)
from litestage_chain.bench.adaskip import AdaSkipCalibration
from litestage_chain.budgets.profile import (
    ModelIdentity,
    Profile,
    SearchedQuestions,
    StageBudget,
)
from litestage_chain.offline.importance import rank_sublayers

STAGES = ("recall", "analysis", "summary")
LAYERS = 6
# A ranking over 6 layers: most redundant first.
RANKING = rank_sublayers(torch.tensor([[0.9 - 0.01 * i, 0.5 + 0.05 * i] for i in range(LAYERS)]))


def context(**overrides) -> MethodContext:
    values = dict(num_layers=LAYERS, ranking=RANKING, adaskip_ranking=list(reversed(RANKING)))
    return MethodContext(**{**values, **overrides})


def profile() -> Profile:
    return Profile(
        model=ModelIdentity(name="tiny", weights_sha256="ab" * 32),
        stages={
            "recall": StageBudget(plan=SkipPlan(mlp=[1])),
            "analysis": StageBudget(plan=SkipPlan(attention=[2, 3])),
            "summary": StageBudget(plan=SkipPlan(attention=[4], mlp=[5]),
                                     early_exit=EarlyExitConfig(window=2, threshold=0.3, min_tokens=1)),
        },
        epsilon=0.02, metric="accuracy", questions=SearchedQuestions(benchmark="t", split="train", size=4),
        importance=RANKING, stage_order=["analysis", "recall", "summary"], full_score=0.5, full_latency_seconds=1.0,
    )


def test_evenly_spaced_layers_are_midpoints_of_equal_segments() -> None:
    assert evenly_spaced_layers(30, 1) == [15]
    assert evenly_spaced_layers(30, 3) == [5, 15, 25]
    assert evenly_spaced_layers(30, 2) == [7, 22]
    for count in range(1, 30):
        layers = evenly_spaced_layers(30, count)
        assert len(set(layers)) == count and layers == sorted(layers)
        gaps = {b - a for a, b in zip(layers, layers[1:])}
        assert max(gaps, default=0) - min(gaps, default=0) <= 1, (count, layers)
        assert 0 <= layers[0] and layers[-1] < 30


def test_unified_skips_whole_layers_at_evenly_spaced_depths() -> None:
    plan = unified_plan(30, 3)
    assert plan.attention == plan.mlp == (5, 15, 25)
    assert unified_plan(30, 0) == SkipPlan()
    points = method_points("unified", context(num_layers=30), [1, 3])
    assert [p.count for p in points] == [1, 3]
    for point in points:
        assert all(p == unified_plan(30, point.count) for p in point.plans.values())
        assert point.skipped_sublayers == {s: 2 * point.count for s in STAGES}
        assert not point.uses_early_exit


def test_exit_depth_drops_exactly_the_last_k_layers() -> None:
    plan = last_layers_plan(30, 4)
    assert plan.attention == plan.mlp == (26, 27, 28, 29)
    for point in method_points("exit-depth", context(), [1, 2, 5]):
        kept = [layer for layer in range(LAYERS) if not point.plans["recall"].skips(layer, "attention")]
        assert kept == list(range(LAYERS - point.count))
        assert len(set(point.plans.values())) == 1
    with pytest.raises(InvalidInputError, match="at least one layer"):
        last_layers_plan(6, 6)
    with pytest.raises(InvalidInputError, match="cannot skip 7"):
        unified_plan(6, 7)


def test_uniform_applies_the_same_count_from_the_ranking_in_every_stage() -> None:
    for method in ("uniform", "uniform-exit"):
        points = method_points(method, context(), [2, 5])
        for point in points:
            plans = {point.plans[s] for s in STAGES}
            assert len(plans) == 1
            assert set(point.skipped_sublayers.values()) == {point.count}
            assert SkipPlan.from_sublayers(RANKING[: point.count]) == point.plans["recall"]
            assert point.uses_early_exit == (method == "uniform-exit")
    exit_point = method_points("uniform-exit", context(early_exit=EarlyExitConfig(threshold=0.3)), [2])[0]
    assert all(rule == EarlyExitConfig(threshold=0.3) for rule in exit_point.early_exit.values())
    with pytest.raises(InvalidInputError, match="only 12"):
        method_points("uniform", context(), [13])


def test_stage_only_skips_in_one_stage_and_runs_the_others_full() -> None:
    points = method_points("stage-only", context(), [3])
    assert [p.stage for p in points] == list(STAGES)
    for point in points:
        assert point.plans[point.stage] == SkipPlan.from_sublayers(RANKING[:3])
        assert all(point.plans[s].is_empty for s in STAGES if s != point.stage)
        assert point.label == f"stage-only/{point.stage}@3"


def test_litestage_uses_the_profile_with_and_without_early_exit() -> None:
    fallback_rule = EarlyExitConfig(window=3, threshold=0.4, min_tokens=2)
    ctx = context(profile=profile(), early_exit=fallback_rule)
    (with_exit,) = method_points("litestage", ctx)
    (without,) = method_points("litestage-noexit", ctx)
    for stage in STAGES:
        assert with_exit.plans[stage] == without.plans[stage] == profile().plan_for(stage)
    assert with_exit.early_exit["summary"] == profile().early_exit_for("summary")
    assert with_exit.early_exit["recall"] is None, "a stage the profile runs without exit is not lent the default"
    assert fallback_rule not in with_exit.early_exit.values()
    assert all(rule is None for rule in without.early_exit.values())
    assert with_exit.key() != without.key()
    (no_skip,) = method_points("litestage-noskip", ctx)
    assert all(no_skip.plans[stage].is_empty for stage in STAGES) and no_skip.count == 0
    assert no_skip.early_exit == with_exit.early_exit, "the profile's searched rules, none where it has none"
    assert len({with_exit.key(), without.key(), no_skip.key()}) == 3
    with pytest.raises(InvalidInputError, match="needs a searched profile"):
        method_points("litestage", context())
    with pytest.raises(InvalidInputError, match="names layer"):
        method_points("litestage", context(num_layers=3, profile=profile()))


def test_litestage_runs_the_profiles_token_caps_with_its_exit_rules() -> None:
    base = profile()
    capped = base.model_copy(update={"stages": {**base.stages, "analysis": base.stages["analysis"].model_copy(
        update={"max_tokens": 16})}})
    ctx = context(profile=capped, max_tokens={"recall": 64, "analysis": 160, "summary": 12})
    (with_exit,) = method_points("litestage", ctx)
    (no_skip,) = method_points("litestage-noskip", ctx)
    (without,) = method_points("litestage-noexit", ctx)
    assert with_exit.max_tokens == no_skip.max_tokens == {"recall": 64, "analysis": 16, "summary": 12}
    assert without.max_tokens is None, "no exit rules, no caps: both say when a stage stops"
    assert method_points("litestage", context(profile=capped, max_tokens={**ctx.max_tokens, "analysis": 8}))[
        0].max_tokens["analysis"] == 8, "a run's budget below the cap stays"
    # a profile without caps gives the points (and keys) it gave before caps existed
    assert method_points("litestage", context(profile=base))[0].max_tokens is None


def test_adaskip_points_carry_the_joint_ranking_and_norm_ratio_compensation() -> None:
    calibration = AdaSkipCalibration(similarity=[(0.9, 0.5)] * LAYERS,
                                     norm_ratio=[(1.0 + 0.1 * i, 2.0 + 0.1 * i) for i in range(LAYERS)], prompts=1)
    ctx = context(adaskip=calibration)
    point = method_points("adaskip", ctx, [3])[0]
    plan = point.plans["recall"]
    expected = list(reversed(RANKING))[:3]
    assert SkipPlan(attention=plan.attention, mlp=plan.mlp) == SkipPlan.from_sublayers(expected)
    assert {(layer, kind): factor for layer, kind, factor in plan.scale} == {
        (layer, kind): calibration.norm_ratio[layer][0 if kind == "attention" else 1] for layer, kind in expected
    }
    plain = method_points("adaskip", context(), [3])[0].plans["recall"]
    assert plain.scale == () and plain.attention == plan.attention


def test_every_baseline_has_an_early_exit_variant_with_the_same_plans() -> None:
    rule = EarlyExitConfig(window=3, threshold=0.4, min_tokens=5)
    ctx = context(early_exit=rule)
    for method in ("uniform", "adaskip", "unified", "exit-depth"):
        plain = method_points(method, ctx, [2])[0]
        with_exit = method_points(f"{method}-exit", ctx, [2])[0]
        assert with_exit.plans == plain.plans and with_exit.label == f"{method}-exit@2"
        assert set(with_exit.early_exit.values()) == {rule} and set(plain.early_exit.values()) == {None}
        assert with_exit.key() != plain.key()
    full_exit = method_points("full-exit", ctx)[0]
    assert full_exit.label == "full-exit" and all(p.is_empty for p in full_exit.plans.values())


def test_capped_control_is_the_full_model_with_cut_token_budgets() -> None:
    ctx = context(max_tokens={"recall": 64, "analysis": 160, "summary": 24})
    point = method_points("capped", ctx, [50])[0]
    assert point.label == "capped@50" and all(p.is_empty for p in point.plans.values())
    assert point.max_tokens == {"recall": 32, "analysis": 80, "summary": 12}
    assert "max_tokens" in point.payload() and "max_tokens" not in method_points("uniform", ctx, [2])[0].payload()
    with pytest.raises(InvalidInputError, match="percent"):
        method_points("capped", ctx, [150])


def test_analysis_cap_cuts_only_the_analysis_to_a_number_of_tokens() -> None:
    ctx = context(max_tokens={"recall": 64, "analysis": 160, "summary": 24})
    points = method_points("capped-analysis", ctx, [10, 8])
    assert [p.label for p in points] == ["capped-analysis@8", "capped-analysis@10"]
    assert points[1].max_tokens == {"recall": 64, "analysis": 10, "summary": 24}
    assert all(p.is_empty for p in points[1].plans.values()) and not points[1].uses_early_exit
    assert points[0].key() != points[1].key() != method_points("capped", ctx, [10])[0].key()
    with pytest.raises(InvalidInputError, match="budget of 160 tokens, got 161"):
        method_points("capped-analysis", ctx, [161])
    with pytest.raises(InvalidInputError, match="needs the analysis stage"):
        method_points("capped-analysis", context(stages=("recall", "summary")), [8])
    # the default sweep (8, 16, 32) keeps the caps that cut the run's budget; an asked-for sweep is checked as given
    small = context(max_tokens={"recall": 64, "analysis": 20, "summary": 24})
    assert [p.count for p in method_points("capped-analysis", small)] == [8, 16]
    with pytest.raises(InvalidInputError, match="budget of 4 tokens, got 8"):
        method_points("capped-analysis", context(max_tokens={"recall": 64, "analysis": 4, "summary": 24}))


def test_all_points_puts_the_full_model_first_and_has_unique_labels() -> None:
    points = all_points(["uniform", "unified", "full", "stage-only"], context(), {"uniform": [2], "unified": [1],
                                                                                   "stage-only": [2]})
    labels = [p.label for p in points]
    assert labels[0] == "full" and labels.count("full") == 1
    assert labels == ["full", "uniform@2", "unified@1", "stage-only/recall@2", "stage-only/analysis@2",
                      "stage-only/summary@2"]
    with pytest.raises(InvalidInputError, match="without a sweep"):
        all_points(["full"], context(), {"litestage": [1]})
    with pytest.raises(InvalidInputError, match="unknown method"):
        method_points("magic", context())
    with pytest.raises(InvalidInputError, match=">= 1"):
        method_points("uniform", context(), [0])


def test_parse_sweep_accepts_counts_and_names_bad_input() -> None:
    assert parse_sweep("uniform=4,8, 12") == ("uniform", [4, 8, 12])
    for bad, message in (("uniform", "expected METHOD"), ("full=1", "has no sweep"), ("unified=a,b", "integers")):
        with pytest.raises(InvalidInputError, match=message):
            parse_sweep(bad)


def test_a_method_can_name_its_reasoning_format() -> None:
    points = all_points(["full:separate", "uniform:continued", "uniform"], context(), {"uniform": [2]})
    assert [p.label for p in points] == ["full", "full:separate", "uniform@2:continued", "uniform@2"]
    full, separate, continued, plain = points
    assert full.context is None and plain.context is None, "no format named: the run's"
    assert separate.context == "separate" and separate.plans == full.plans and separate.early_exit == full.early_exit
    assert continued.plans == plain.plans
    assert "context" not in full.payload(), "points without a format keep their recorded keys"
    assert separate.key() != full.key() and continued.key() != plain.key()
    assert parse_method("litestage:continued") == ("litestage", "continued")
    for bad, message in (("full:merged", "unknown reasoning format 'merged'"),
                         ("fast:separate", "unknown method 'fast'")):
        with pytest.raises(InvalidInputError, match=message):
            parse_method(bad)
