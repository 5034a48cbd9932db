"""AdaSkip as its reference code does it: prefill statistics, one joint ranking, norm-ratio compensation in the engine."""

from __future__ import annotations

import pytest
import torch

from litestage_chain import InvalidInputError, SkipPlan
from litestage_chain.bench.adaskip import (
    AdaSkipCalibration,
    adaskip_calibration,
    adaskip_joint_ranking,
    adaskip_plan,
    prefill_statistics,
)
from litestage_chain.engine.forward import all_logits, sublayer_cosines

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_joint_ranking_sorts_raw_similarities_of_both_kinds_together() -> None:
    similarity = torch.tensor([[0.97, 0.50], [0.99, 0.80], [0.98, 0.995], [0.96, 0.70]])
    assert adaskip_joint_ranking(similarity)[:4] == [(2, "mlp"), (1, "attention"), (2, "attention"), (0, "attention")]
    with pytest.raises(InvalidInputError, match=r"\[num_layers, 2\]"):
        adaskip_joint_ranking(torch.zeros(3))


def test_prefill_statistics_match_the_importance_cosine_and_measure_norm_ratios(tiny_qwen2) -> None:
    ids = [3, 14, 15, 92, 65, 35, 89, 79]
    similarity, ratio = prefill_statistics(tiny_qwen2, ids)
    assert torch.allclose(similarity.float(), sublayer_cosines(tiny_qwen2.view, torch.tensor(ids)), atol=1e-5)
    assert ratio.shape == (tiny_qwen2.num_layers, 2) and bool((ratio > 0).all())
    with pytest.raises(InvalidInputError, match="empty"):
        prefill_statistics(tiny_qwen2, [])


def test_calibration_averages_over_prompts_and_builds_compensated_plans(tiny_qwen2) -> None:
    calibration = adaskip_calibration(tiny_qwen2, {"recall": ["abc def", "ghi"], "summary": ["jkl mno pqr"]})
    assert calibration.prompts == 3 and len(calibration.norm_ratio) == tiny_qwen2.num_layers
    plan = adaskip_plan(calibration, 3)
    ranking = adaskip_joint_ranking(torch.tensor(calibration.similarity))
    assert SkipPlan(attention=plan.attention, mlp=plan.mlp) == SkipPlan.from_sublayers(ranking[:3])
    assert len(plan.scale) == 3
    for layer, kind, factor in plan.scale:
        assert factor == pytest.approx(calibration.norm_ratio[layer][0 if kind == "attention" else 1])
    assert adaskip_plan(calibration, 3, compensate=False).scale == ()
    with pytest.raises(InvalidInputError, match="cannot skip"):
        adaskip_plan(calibration, 10_000)
    with pytest.raises(InvalidInputError, match="at least one prompt"):
        adaskip_calibration(tiny_qwen2, {"recall": []})
    with pytest.raises(ValueError, match="layers"):
        AdaSkipCalibration(similarity=[(1.0, 1.0)], norm_ratio=[(1.0, 1.0)] * 2, prompts=1)


def test_the_engine_multiplies_the_residual_where_a_compensated_sub_layer_is_skipped(tiny_qwen2) -> None:
    ids = torch.tensor([5, 6, 7, 8, 9])
    skipped = SkipPlan(mlp=[1])
    neutral = SkipPlan(mlp=[1], scale=[(1, "mlp", 1.0)])
    scaled = SkipPlan(mlp=[1], scale=[(1, "mlp", 1.7)])
    base = all_logits(tiny_qwen2.view, ids, skipped)
    assert torch.allclose(all_logits(tiny_qwen2.view, ids, neutral), base, atol=1e-6)
    assert not torch.allclose(all_logits(tiny_qwen2.view, ids, scaled), base, atol=1e-3)


def test_scale_must_name_skipped_sub_layers_and_positive_factors() -> None:
    with pytest.raises(ValueError, match="does not skip"):
        SkipPlan(mlp=[1], scale=[(2, "mlp", 1.0)])
    with pytest.raises(ValueError, match="> 0"):
        SkipPlan(mlp=[1], scale=[(1, "mlp", 0.0)])
    plan = SkipPlan(attention=[2], scale=[(2, "attention", 0.9)])
    assert plan.scale_for(2, "attention") == 0.9 and plan.scale_for(2, "mlp") is None
    assert "scale" not in SkipPlan(attention=[2]).model_dump(mode="json"), "unscaled plans keep their old form"
    assert SkipPlan.model_validate(plan.model_dump(mode="json")) == plan
    assert plan != SkipPlan(attention=[2])
