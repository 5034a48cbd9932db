"""The new families load from a model directory like Llama and Qwen2 do: in float32, and in int8/int4 with their
float32 projections released (Phi-3's fused ones included) and, once converted, without reading them at all."""

from __future__ import annotations

import pytest
import torch
import tiny_models

from litestage_chain import GenerationConfig, ModelLoadError, SkipPlan, from_pretrained_objects, generate, load_model

VARIANTS = [("qwen3", "int8"), ("mistral", "int4"), ("phi3", "int8"), ("gemma2", "int4"), ("gemma3", "int8")]
PROMPT = "Loading keeps every family's answer"


def _save(directory, family: str):
    model, tokenizer = getattr(tiny_models, f"tiny_{family}")(seed=3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def _tokens(model, plan: SkipPlan) -> list[int]:
    return generate(model, [PROMPT], plan, GenerationConfig(max_new_tokens=10, ignore_eos=True))[0].token_ids


@pytest.mark.parametrize("family, fmt", VARIANTS)
def test_family_loads_from_a_directory_in_float32_and_smaller_formats(family, fmt, tmp_path, monkeypatch) -> None:
    from litestage_chain.engine import loading
    from litestage_chain.engine.quant import get_kernels

    get_kernels()  # load the compiled kernels from the usual cache before pointing the cache at tmp_path
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    original, tokenizer = _save(tmp_path / family, family)
    plan = SkipPlan(attention=[1], mlp=[2])
    loaded = load_model(str(tmp_path / family))
    assert _tokens(loaded, plan) == _tokens(from_pretrained_objects(original, tokenizer), plan)

    small = load_model(str(tmp_path / family), weights=fmt)  # converts and caches, then releases float32
    expected = _tokens(from_pretrained_objects(*_save(tmp_path / "again", family), weights=fmt), plan)
    assert _tokens(small, plan) == expected
    attention = small.model.model.layers[0].self_attn
    projection = attention.qkv_proj if family == "phi3" else attention.q_proj
    assert projection.weight.device.type == "meta"
    with pytest.raises(ModelLoadError, match="released"):
        small.model(torch.tensor([small.encode(PROMPT)]))

    monkeypatch.setattr(loading, "_LOADED", {})

    def no_float_model(_directory):
        raise AssertionError("the float32 model was loaded")

    monkeypatch.setattr(loading, "_from_directory", no_float_model)
    lean = load_model(str(tmp_path / family), weights=fmt)
    assert lean is not small and lean.float_weights == "absent"
    assert _tokens(lean, plan) == expected
