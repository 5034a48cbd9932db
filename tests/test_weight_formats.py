"""Weight formats are selectable at load time and keep the engine's guarantees (per-call plans, cache == recompute)."""

from __future__ import annotations

import pytest

from litestage_chain import GenerationConfig, ModelLoadError, SkipPlan, from_pretrained_objects, generate, load_model
from litestage_chain.forward import all_logits
from litestage_chain.quant import Int4Linear, Int8Linear
from tiny_models import tiny_llama

import torch


@pytest.mark.parametrize("fmt, module_type", [("int8", Int8Linear), ("int4", Int4Linear)])
def test_quantised_view_runs_plans_with_cache_equal_to_recompute(fmt: str, module_type: type) -> None:
    model, tokenizer = tiny_llama(seed=2)
    loaded = from_pretrained_objects(model, tokenizer, name=f"tiny-{fmt}", weights=fmt)
    assert isinstance(loaded.view.mlp[0].gate_up, module_type)
    plan = SkipPlan(attention=[0], mlp=[2])
    ids = loaded.encode("Weight formats keep the cache exact")
    result = generate(loaded, [ids], plan=plan, config=GenerationConfig(max_new_tokens=10))[0]
    assert result.generated_tokens >= 3
    recomputed = all_logits(loaded.view, torch.tensor(ids + result.token_ids), plan)[len(ids) - 1 : -1]
    assert result.token_ids == recomputed.argmax(dim=-1).tolist()


def test_unknown_weight_format_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="unknown weight format 'fp8'"):
        load_model("smollm2-135m", weights="fp8")
    model, tokenizer = tiny_llama()
    with pytest.raises(ModelLoadError, match="unknown weight format"):
        from_pretrained_objects(model, tokenizer, weights="int3")
