"""Sub-layer importance: identity sub-layers rank first, per-stage values, ranking -> plans, on-disk cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import tiny_llama

import litestage_chain.engine.similarity as similarity_module
from litestage_chain import InvalidInputError, SkipPlan, from_pretrained_objects
from litestage_chain.offline.importance import (
    Importance,
    compute_importance,
    plan_for_count,
    rank_sublayers,
)

PROMPTS = {
    "recall": ["Question: where do you keep a fox?\nKey information:", "Q: what is blue?"],
    "analysis": ["Question: where do you keep a fox?\nKey information: foxes live in forests.\nAnalysis:"],
    "summary": ["Q: x\nAnalysis: A is correct.\nSo the answer is"],
}


def model_with_identity_sublayers(weights_sha256: str = ""):
    """A tiny Llama whose layer-2 attention and layer-1 MLP add exactly nothing to the residual stream."""
    model, tokenizer = tiny_llama(layers=4, seed=1)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    return from_pretrained_objects(model, tokenizer, name="tiny-identity", weights_sha256=weights_sha256)


def test_identity_sublayers_rank_as_most_redundant() -> None:
    lm = model_with_identity_sublayers()
    importance = compute_importance(lm, PROMPTS, cache=False)
    assert importance.stages == ["recall", "analysis", "summary"]
    assert importance.prompts_per_stage == {"recall": 2, "analysis": 1, "summary": 1}
    for stage in importance.stages:
        values = importance.stage_tensor(stage)
        assert values.shape == (4, 2)
        assert values[2, 0].item() == pytest.approx(1.0, abs=1e-5)  # zeroed o_proj: identity attention
        assert values[1, 1].item() == pytest.approx(1.0, abs=1e-5)  # zeroed down_proj: identity MLP
        others = [values[i, j].item() for i in range(4) for j in range(2) if (i, j) not in {(2, 0), (1, 1)}]
        assert max(others) < 0.9999
        assert set(importance.stage_ranking(stage)[:2]) == {(2, "attention"), (1, "mlp")}
    ranking = importance.ranking
    assert ranking[:2] == [(1, "mlp"), (2, "attention")] or ranking[:2] == [(2, "attention"), (1, "mlp")]
    assert sorted(ranking) == sorted((layer, kind) for layer in range(4) for kind in ("attention", "mlp"))
    assert plan_for_count(ranking, 2) == SkipPlan(attention=[2], mlp=[1])


def test_stage_mean_is_the_mean_over_its_prompts(monkeypatch) -> None:
    lm = model_with_identity_sublayers()
    seen: list[list[int]] = []

    def fake_similarity(model, ids):
        seen.append(list(ids))
        return torch.full((model.num_layers, 2), float(len(seen)))  # 1.0 for the first prompt, 2.0 for the second ...

    monkeypatch.setattr(similarity_module, "sublayer_similarity", fake_similarity)
    importance = compute_importance(lm, {"recall": ["a", "bb"], "summary": [[5, 6, 7]]}, cache=False)
    assert seen == [lm.encode("a"), lm.encode("bb"), [5, 6, 7]]
    assert importance.per_stage["recall"][0] == (1.5, 1.5)
    assert importance.per_stage["summary"][3] == (3.0, 3.0)
    assert importance.accumulated()[0, 0].item() == pytest.approx(4.5)


def test_ranking_accumulates_over_stages_and_breaks_ties_deterministically() -> None:
    scores = torch.tensor([[0.5, 0.9], [0.9, 0.1]], dtype=torch.float64)
    assert rank_sublayers(scores) == [(0, "mlp"), (1, "attention"), (0, "attention"), (1, "mlp")]
    # stage A prefers layer 0 MLP slightly, stage B prefers layer 1 attention strongly: the sum decides.
    importance = Importance(
        model_name="m", weights_sha256="", prompt_hash="h", num_layers=2,
        prompts_per_stage={"a": 1, "b": 1},
        per_stage={"a": [(0.1, 0.95), (0.9, 0.2)], "b": [(0.1, 0.5), (0.99, 0.2)]},
    )
    assert importance.ranking[:2] == [(1, "attention"), (0, "mlp")]
    assert importance.stage_ranking("a")[0] == (0, "mlp")
    with pytest.raises(InvalidInputError, match="no importance measured for stage 'c'"):
        importance.stage_tensor("c")


def test_plan_for_count_bounds() -> None:
    ranking = [(3, "mlp"), (0, "attention"), (3, "attention")]
    assert plan_for_count(ranking, 0) == SkipPlan()
    assert plan_for_count(ranking, 3) == SkipPlan(attention=[0, 3], mlp=[3])
    with pytest.raises(InvalidInputError, match="only 3"):
        plan_for_count(ranking, 4)
    with pytest.raises(InvalidInputError, match=">= 0"):
        plan_for_count(ranking, -1)


def test_bad_calibration_input_names_the_stage() -> None:
    lm = model_with_identity_sublayers()
    with pytest.raises(InvalidInputError, match="stage 'analysis' has no calibration prompts"):
        compute_importance(lm, {"recall": ["x"], "analysis": []}, cache=False)
    with pytest.raises(InvalidInputError, match="stage 'recall': expected a list of prompts"):
        compute_importance(lm, {"recall": "just a string"}, cache=False)
    with pytest.raises(InvalidInputError, match="stage 'recall', prompt 1: empty prompt"):
        compute_importance(lm, {"recall": ["x", ""]}, cache=False)
    with pytest.raises(InvalidInputError, match="stage_prompts is empty"):
        compute_importance(lm, {}, cache=False)


def test_results_are_cached_by_model_and_prompts(tmp_path: Path, monkeypatch) -> None:
    lm = model_with_identity_sublayers(weights_sha256="12" * 32)
    calls = []
    real = similarity_module.sublayer_similarity

    def counting(model, ids):
        calls.append(1)
        return real(model, ids)

    monkeypatch.setattr(similarity_module, "sublayer_similarity", counting)
    first = compute_importance(lm, PROMPTS, cache_dir=tmp_path)
    assert len(calls) == 4 and len(list(tmp_path.glob("*.json"))) == 1
    again = compute_importance(lm, PROMPTS, cache_dir=tmp_path)
    assert len(calls) == 4, "second run is served from the cache"
    assert again == first
    changed = dict(PROMPTS, summary=["a different summary prompt"])
    compute_importance(lm, changed, cache_dir=tmp_path)
    assert len(calls) == 8 and len(list(tmp_path.glob("*.json"))) == 2
    other_model = model_with_identity_sublayers(weights_sha256="34" * 32)
    compute_importance(other_model, PROMPTS, cache_dir=tmp_path)
    assert len(calls) == 12 and len(list(tmp_path.glob("*.json"))) == 3
    # a corrupted cache file is reported and recomputed, not trusted
    for file in tmp_path.glob("*.json"):
        file.write_text("{broken")
    with pytest.warns(UserWarning, match="ignoring unreadable importance cache"):
        assert compute_importance(lm, PROMPTS, cache_dir=tmp_path) == first


def test_models_without_identity_are_not_cached(tmp_path: Path) -> None:
    lm = model_with_identity_sublayers(weights_sha256="")
    with pytest.warns(UserWarning, match="no weights sha256"):
        compute_importance(lm, {"recall": ["x"]}, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())
