"""Sub-layer importance on the real default model (SmolLM2-135M-Instruct) with real stage prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from litestage_chain.data import load_benchmark
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.offline.importance import compute_importance, plan_for_count

pytestmark = pytest.mark.integration


def test_real_model_ranking_has_the_expected_shape(real_model, shared_data: Path, tmp_path: Path) -> None:
    questions = load_benchmark("csqa", "dev", data_dir=shared_data).questions[:2]
    evaluator = ChainEvaluator(real_model, num_shots=1)
    prompts = [evaluator.render_prompt("recall", {"question": q}) for q in questions]
    importance = compute_importance(real_model, {"recall": prompts}, cache_dir=tmp_path)
    ranking = importance.ranking
    assert len(ranking) == 2 * real_model.num_layers == 60
    values = importance.stage_tensor("recall")
    assert float(values.min()) > -1.0 and float(values.max()) < 1.0
    # The first MLP rewrites the embeddings almost entirely: it must be the least redundant sub-layer.
    assert ranking[-1] == (0, "mlp")
    # Attention is far more redundant than MLP in this model (as LiteStage reports for small models).
    assert sum(kind == "attention" for _, kind in ranking[:10]) >= 8
    assert plan_for_count(ranking, 4).num_skipped == 4
    # the cache hit returns the identical result
    assert compute_importance(real_model, {"recall": prompts}, cache_dir=tmp_path) == importance
