"""Every supported decoder family is read and run exactly: transformers' own logits and residual stream, each
family feature actually exercised by its tiny model, the importance measurement, and clear errors for the rest.

The generation-level proofs (greedy `generate` equality, cached == recompute under plans, packed and prefix
prefill, weight formats) are the `tiny_model` tests of the other engine test files, which run once per family.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from tiny_models import byte_tokenizer, tiny_gemma2, tiny_gemma3, tiny_mistral, tiny_phi3, tiny_qwen3
from transformers import (
    Gemma3Config,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    Phi3Config,
    Phi3ForCausalLM,
    PhiConfig,
    PhiForCausalLM,
)

from litestage_chain import LoadedModel, SkipPlan, from_pretrained_objects
from litestage_chain.engine.architecture import check_supported
from litestage_chain.errors import UnsupportedArchitectureError
from litestage_chain.engine.forward import all_logits, new_cache, run_layers
from litestage_chain.offline.importance import compute_importance

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPT = "Question: what is 2+2?\nAnswer:"  # 30 byte tokens: longer than the tiny models' sliding window of 8


def _ids(model: LoadedModel) -> torch.Tensor:
    return torch.tensor(model.encode(PROMPT))


def test_logits_at_every_position_equal_transformers_forward(tiny_model: LoadedModel) -> None:
    """Stronger than greedy equality: soft-capping and scaling leave the argmax alone but not the logits."""
    ids = _ids(tiny_model)
    with torch.inference_mode():
        reference = tiny_model.model(ids[None]).logits[0].float()
    torch.testing.assert_close(all_logits(tiny_model.view, ids, SkipPlan()), reference, rtol=1e-4, atol=1e-4)


def test_qwen2_with_sliding_window_layers_equals_transformers() -> None:
    """Qwen2 with `use_sliding_window` (windows on the layers from `max_window_layers` on) runs, where it used to be
    refused."""
    from tiny_models import _common
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = byte_tokenizer()
    torch.manual_seed(1)
    config = Qwen2Config(**_common(tokenizer, 4), use_sliding_window=True, sliding_window=8, max_window_layers=1)
    lm = from_pretrained_objects(Qwen2ForCausalLM(config).eval(), tokenizer)
    assert [a.window for a in lm.view.attention] == [None, 8, 8, 8]
    ids = _ids(lm)
    with torch.inference_mode():
        reference = lm.model(ids[None]).logits[0].float()
    torch.testing.assert_close(all_logits(lm.view, ids, SkipPlan()), reference, rtol=1e-4, atol=1e-4)
    assert (all_logits(_without(lm.view, window=None), ids, SkipPlan()) - reference).abs().max() > 0.05


def test_residual_stream_after_each_layer_equals_transformers(tiny_model: LoadedModel) -> None:
    """What importance measures (the residual before and after each sub-layer) is the model's real residual."""
    ids = _ids(tiny_model)[None]
    with torch.inference_mode():
        states = tiny_model.model(ids, output_hidden_states=True).hidden_states
    after_layer: dict[int, torch.Tensor] = {}

    def observe(layer: int, kind: str, before: torch.Tensor, after: torch.Tensor) -> None:
        if kind == "mlp":
            after_layer[layer] = after

    view = tiny_model.view
    with torch.inference_mode():
        run_layers(view, view.embed(ids), torch.arange(ids.shape[1])[None], new_cache(view, SkipPlan(), 1,
                   ids.shape[1], ids.device), 0, None, SkipPlan(), observer=observe)
    for layer in range(view.num_layers - 1):  # transformers' last entry has the final norm applied
        torch.testing.assert_close(after_layer[layer], states[layer + 1], rtol=1e-4, atol=1e-4)


def test_importance_runs_on_every_family(tiny_model: LoadedModel) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # in-memory models have no weights hash, so nothing is cached
        importance = compute_importance(tiny_model, {"recall": [PROMPT], "summary": [PROMPT + " 4"]})
    for stage in ("recall", "summary"):
        scores = importance.stage_tensor(stage)  # mean cosines
        assert scores.shape == (tiny_model.num_layers, 2)
        assert bool(((scores >= -1.0) & (scores <= 1.0 + 1e-5)).all())
    assert len(importance.ranking) == 2 * tiny_model.num_layers


def _without(view, **changes):
    """The view with a per-layer feature removed from every attention sub-layer."""
    return dataclasses.replace(view, attention=tuple(dataclasses.replace(a, **changes) for a in view.attention))


FEATURES = {
    "qwen3 q/k norms": (tiny_qwen3, lambda v: _without(v, q_norm=None, k_norm=None)),
    "qwen3 sliding window": (tiny_qwen3, lambda v: _without(v, window=None)),
    "mistral sliding window": (tiny_mistral, lambda v: _without(v, window=None)),
    "phi3 sliding window": (tiny_phi3, lambda v: _without(v, window=None)),
    "gemma2 sliding window": (tiny_gemma2, lambda v: _without(v, window=None)),
    "gemma2 attention soft-cap": (tiny_gemma2, lambda v: _without(v, softcap=None)),
    "gemma2 logit soft-cap": (tiny_gemma2, lambda v: dataclasses.replace(v, logit_softcap=None)),
    "gemma2 post-norms": (tiny_gemma2, lambda v: dataclasses.replace(
        _without(v, out_norm=None), mlp=tuple(dataclasses.replace(m, out_norm=None) for m in v.mlp))),
    "gemma3 q/k norms": (tiny_gemma3, lambda v: _without(v, q_norm=None, k_norm=None)),
    "gemma3 local rotary base": (tiny_gemma3, lambda v: _without(v, rope="full_attention")),
    "gemma3 sliding window": (tiny_gemma3, lambda v: _without(v, window=None)),
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_each_family_feature_changes_the_logits(feature: str) -> None:
    """Guards the equality tests: each family's feature bites in its tiny model, so leaving it out would fail them."""
    build, remove = FEATURES[feature]
    lm = from_pretrained_objects(*build(), name=feature)
    ids = _ids(lm)
    full = all_logits(lm.view, ids, SkipPlan())
    changed = all_logits(remove(lm.view), ids, SkipPlan())
    assert (full - changed).abs().max() > 0.05


def test_views_record_each_familys_layout() -> None:
    qwen3 = from_pretrained_objects(*tiny_qwen3()).view
    assert [a.window for a in qwen3.attention] == [None, None, 8, 8]  # max_window_layers=2
    phi3_model, tokenizer = tiny_phi3()
    phi3 = from_pretrained_objects(phi3_model, tokenizer).view
    assert phi3.attention[0].qkv is phi3_model.model.layers[0].self_attn.qkv_proj  # already fused: used as is
    assert phi3.mlp[0].gate_up is phi3_model.model.layers[0].mlp.gate_up_proj
    gemma2 = from_pretrained_objects(*tiny_gemma2()).view
    assert gemma2.logit_softcap == 3.0 and {a.softcap for a in gemma2.attention} == {2.0}
    assert [a.window for a in gemma2.attention] == [8, None, 8, None]
    gemma3 = from_pretrained_objects(*tiny_gemma3()).view
    assert [a.rope for a in gemma3.attention] == ["sliding_attention", "full_attention"] * 2


def test_longrope_context_is_the_original_one() -> None:
    """Past `original_max_position_embeddings` LongRoPE switches every position's frequencies; the engine stops
    before it instead of silently mixing two rotations in one cache."""
    tokenizer = byte_tokenizer()
    half = 4  # head_dim 16, full rotary: 8 frequencies
    config = Phi3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        original_max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                        rope_scaling={"type": "longrope", "short_factor": [1.0] * 2 * half,
                                      "long_factor": [4.0] * 2 * half})
    lm = from_pretrained_objects(Phi3ForCausalLM(config).eval(), tokenizer)
    assert lm.max_positions == 64


@pytest.mark.parametrize(
    "config, message",
    [
        (GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300), "unsupported architecture 'gpt2'"),
        (PhiConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                   vocab_size=300), "unsupported architecture 'phi'"),
        (Gemma3Config(), "multimodal Gemma 3.*gemma3_text"),
        (LlamaConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "dynamic rotary scaling"),
    ],
    ids=["gpt2", "phi-2", "gemma3-multimodal", "dynamic-rope"],
)
def test_other_architectures_get_a_clear_error(config, message: str) -> None:
    with pytest.raises(UnsupportedArchitectureError, match=message) as raised:
        check_supported(config)
    assert "Gemma 3" in str(raised.value) and "Phi-3" in str(raised.value)  # names what does run


def test_unsupported_models_are_refused_before_any_work() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300))
    with pytest.raises(UnsupportedArchitectureError):
        from_pretrained_objects(gpt2, byte_tokenizer())
    phi2 = PhiForCausalLM(PhiConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                    intermediate_size=64, vocab_size=300))
    with pytest.raises(UnsupportedArchitectureError, match="'phi'"):
        from_pretrained_objects(phi2, byte_tokenizer())


def test_a_window_longer_than_the_context_keeps_the_plain_causal_path() -> None:
    """Mistral's and Phi-3's windows (2-4k tokens) exclude nothing in shorter calls: no mask is built for them."""
    from litestage_chain.engine.attention_variants import layer_mask

    parts = from_pretrained_objects(*tiny_mistral()).view.attention[0]
    positions = torch.arange(8)[None, :]  # the tiny window is 8: positions 0..7 see everything before them
    assert layer_mask(parts, None, True, None, positions, 0, {}) == (None, True)
    mask, causal = layer_mask(parts, None, True, None, torch.arange(9)[None, :], 0, {})
    assert not causal and mask is not None and not bool(mask[0, 0, 8, 0]) and bool(mask[0, 0, 8, 1])
