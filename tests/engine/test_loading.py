"""Loading from a local transformers directory and from the embedded default model."""

from __future__ import annotations

import pytest
from tiny_models import tiny_qwen2

from litestage_chain import (
    GenerationConfig,
    LoadedModel,
    ModelLoadError,
    SkipPlan,
    generate,
    load_model,
)
from litestage_chain.engine.loading import cache_root


def test_local_directory_loads_and_generates_like_the_original(tmp_path) -> None:
    model, tokenizer = tiny_qwen2(seed=11)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.num_layers == 4 and len(loaded.weights_sha256) == 64
    assert load_model(str(tmp_path)) is loaded, "one load per process and source"
    from litestage_chain import from_pretrained_objects

    original = from_pretrained_objects(model, tokenizer)
    config = GenerationConfig(max_new_tokens=10)
    plan = SkipPlan(mlp=[1])
    assert generate(loaded, ["same"], plan, config)[0].token_ids == generate(original, ["same"], plan, config)[0].token_ids


def test_hub_id_without_network_gives_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot fetch 'someone/not-cached-model'"):
        load_model("someone/not-cached-model")


def test_cache_location_override(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "here"))
    assert cache_root() == tmp_path / "here" and (tmp_path / "here").is_dir()


@pytest.mark.integration
def test_real_default_model_answers_paris(real_model: LoadedModel) -> None:
    prompt = real_model.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    result = generate(real_model, [prompt], config=GenerationConfig(max_new_tokens=30))[0]
    assert "Paris" in result.text
    assert real_model.num_layers == 30 and real_model.name == "smollm2-135m"


@pytest.mark.integration
def test_real_default_model_conversion_is_cached(real_model: LoadedModel) -> None:
    from litestage_chain.engine.loading import _converted_gguf
    from litestage_chain.engine.sources import resolve_source

    directory, digest = _converted_gguf(__import__("pathlib").Path(resolve_source("smollm2-135m").location))
    assert digest == real_model.weights_sha256
    assert (directory / "model.safetensors").is_file() and not list(directory.glob("*.bin"))
