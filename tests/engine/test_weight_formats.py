"""Weight formats are selectable at load time and keep the engine's guarantees (per-call plans, cache == recompute)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama

from litestage_chain import (
    GenerationConfig,
    ModelLoadError,
    SkipPlan,
    from_pretrained_objects,
    generate,
    load_model,
)
from litestage_chain.engine.forward import all_logits
from litestage_chain.engine.quant import Int4Linear, Int8Linear


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


def save_tiny(directory, arch: str, tied: bool, seed: int):
    """A 2-layer Llama or Qwen2 (random q/k/v biases) saved as a model directory; `tied` shares embedding and head,
    as both embedded models do."""
    from tiny_models import _common, byte_tokenizer
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    settings = {**_common(tokenizer, 2), "tie_word_embeddings": tied, "max_position_embeddings": 512}
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**settings))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**settings))
        with torch.no_grad():
            for layer in model.model.layers:
                for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    linear.bias.normal_(0, 0.5)
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


VARIANTS = [("int8", "llama", False), ("int4", "llama", True), ("int8", "qwen2", True), ("int4", "qwen2", False)]


@pytest.mark.parametrize("fmt, arch, tied", VARIANTS)
def test_loaded_smaller_format_releases_its_float32_projections(fmt, arch, tied, tmp_path, monkeypatch) -> None:
    """A model loaded in int8/int4 keeps no float32 copy of the converted matrices, and still answers the same.

    Its transformers model can no longer run (its projections are gone) and says so instead of failing in torch.
    """
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    directory = save_tiny(tmp_path / "tiny", arch, tied, seed=4)
    loaded = load_model(str(directory), weights=fmt)
    kept = from_pretrained_objects(*_reload(directory), name="kept", weights=fmt)  # same format, float32 kept
    layer = loaded.model.model.layers[0]
    for linear in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.up_proj, layer.mlp.down_proj):
        assert linear.weight.device.type == "meta"
    assert loaded.model.lm_head.weight.device.type == "meta"
    assert loaded.view.embed.weight.device.type == "cpu"
    assert kept.model.model.layers[0].mlp.up_proj.weight.device.type == "cpu"
    ids = loaded.encode("Released weights answer the same")
    config = GenerationConfig(max_new_tokens=8)
    plan = SkipPlan(mlp=[1])
    assert generate(loaded, [ids], plan, config)[0].token_ids == generate(kept, [ids], plan, config)[0].token_ids
    with pytest.raises(ModelLoadError, match=f"released when it was loaded as '{fmt}'"):
        loaded.model(torch.tensor([ids]))
    hidden = torch.zeros(1, 1, loaded.model.config.hidden_size)
    for inner_call in (lambda: loaded.model.model(torch.tensor([ids])), lambda: layer.mlp(hidden),
                       lambda: layer.self_attn(hidden), lambda: loaded.model.lm_head(hidden)):
        with pytest.raises(ModelLoadError, match="released"):
            inner_call()


def _reload(directory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize("fmt, arch, tied", VARIANTS)
def test_cached_conversion_loads_without_reading_float32_projections(fmt, arch, tied, tmp_path, monkeypatch) -> None:
    """With the conversion cached, a later load never builds the float32 model (peak memory stays low)."""
    from litestage_chain.engine import loading

    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    directory = save_tiny(tmp_path / "tiny", arch, tied, seed=5)
    first = load_model(str(directory), weights=fmt)  # converts and caches
    ids = first.encode("The lean path answers the same")
    config = GenerationConfig(max_new_tokens=8)
    expected = generate(first, [ids], SkipPlan(attention=[1]), config)[0].token_ids
    monkeypatch.setattr(loading, "_LOADED", {})

    def no_float_model(_directory):
        raise AssertionError("the float32 model was loaded")

    monkeypatch.setattr(loading, "_from_directory", no_float_model)
    second = load_model(str(directory), weights=fmt)
    assert second is not first
    assert (second.weights_sha256, second.eos_token_ids, second.pad_token_id) == (
        first.weights_sha256, first.eos_token_ids, first.pad_token_id
    )
    assert second.model.config.dtype == torch.float32
    assert generate(second, [ids], SkipPlan(attention=[1]), config)[0].token_ids == expected
    assert torch.equal(second.view.embed.weight, first.view.embed.weight)
    with pytest.raises(ModelLoadError, match="released"):
        second.model(torch.tensor([ids]))


def test_auto_weights_pick_the_recommended_format_per_model(tmp_path, monkeypatch) -> None:
    """"auto" resolves through the recommendation table, and to float32 where the compiled kernels are missing."""
    from tiny_models import save_tiny_long_context_llama

    from litestage_chain.chat.chat_model import ChatLiteStage
    from litestage_chain.engine import loading, sources
    from litestage_chain.engine.quant import formats

    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    directory = str(save_tiny_long_context_llama(tmp_path / "tiny", seed=6))
    assert load_model(directory, weights="auto").weights == "float32"  # no recommendation for this model
    monkeypatch.setitem(sources.RECOMMENDED_WEIGHTS, directory, "int8")
    if formats.compiled_kernels_available():
        assert load_model(directory, weights="auto").weights == "int8"
    monkeypatch.setattr(loading, "compiled_kernels_available", lambda: False)  # the name loading calls
    assert load_model(directory, weights="auto").weights == "float32"
    assert ChatLiteStage().weights == "auto"
    model, tokenizer = tiny_llama()
    assert from_pretrained_objects(model, tokenizer, weights="auto").weights == "float32"
    with pytest.raises(ModelLoadError, match="supported: auto, float32"):
        load_model(directory, weights="int3")


def test_auto_weights_pick_the_small_format_on_the_portable_path(tmp_path, monkeypatch) -> None:
    """On a CPU with only the portable kernel path, "auto" still gives the recommended format (decode runs the
    kernel, prefill dequantises on the fly), and the metadata says "portable"."""
    from tiny_models import save_tiny_long_context_llama

    from litestage_chain.engine import sources
    from litestage_chain.engine.quant import formats, kernels

    module = kernels.get_kernels()
    if module is None:
        pytest.skip(f"C++ kernels cannot be built here: {kernels.kernels_status()}")
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    directory = str(save_tiny_long_context_llama(tmp_path / "tiny", seed=7))
    monkeypatch.setitem(sources.RECOMMENDED_WEIGHTS, directory, "int8")
    with formats.forced_path("portable"):
        lm = load_model(directory, weights="auto")
        assert lm.weights == "int8" and formats.kernel_path(lm.weights) == "portable"
        ids = lm.encode("the portable path decodes")
        result = generate(lm, [ids], config=GenerationConfig(max_new_tokens=4, ignore_eos=True))[0]
        assert result.generated_tokens == 4
