"""Bad input gets a clear error that names the problem."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tiny_models import byte_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

from litestage_chain import (
    GenerationConfig,
    InvalidInputError,
    LoadedModel,
    ModelLoadError,
    SkipPlan,
    UnsupportedArchitectureError,
    from_pretrained_objects,
    generate,
    load_model,
)


def test_plan_out_of_range_names_the_layer(tiny_llama: LoadedModel) -> None:
    with pytest.raises(InvalidInputError, match=r"attention names layer\(s\) \[4\].*4 layers"):
        generate(tiny_llama, ["x"], plan=SkipPlan(attention=[4]))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"attention": [-1]}, ">= 0"),
        ({"mlp": ["2"]}, "integers"),
        ({"mlp": [1.5]}, "integers"),
        ({"attention": 3}, "list of layer indices"),
        ({"attention": [True]}, "integers"),
        ({"heads": [1]}, "Extra inputs are not permitted"),
    ],
)
def test_malformed_plans_are_rejected(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SkipPlan(**fields)


def test_plans_are_normalised_values() -> None:
    assert SkipPlan(attention=[3, 1, 3]) == SkipPlan(attention=(1, 3))
    assert hash(SkipPlan(mlp=[2, 1])) == hash(SkipPlan(mlp=[1, 2]))
    assert SkipPlan(attention=[1], mlp=[0, 2]).num_skipped == 3
    assert SkipPlan.from_sublayers([(2, "mlp"), (0, "attention")]) == SkipPlan(attention=[0], mlp=[2])


def test_bad_generation_inputs(tiny_llama: LoadedModel) -> None:
    with pytest.raises(InvalidInputError, match="prompt 0 is empty"):
        generate(tiny_llama, ["   "])
    with pytest.raises(InvalidInputError, match="prompts is empty"):
        generate(tiny_llama, [])
    with pytest.raises(InvalidInputError, match="list of strings"):
        generate(tiny_llama, "a bare string")
    with pytest.raises(InvalidInputError, match="outside the vocabulary"):
        generate(tiny_llama, [[1, 10**6]])
    with pytest.raises(InvalidInputError, match="does not fit"):
        generate(tiny_llama, [[5] * 300])
    with pytest.raises(ValidationError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=-1)
    with pytest.raises(ValidationError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(ValidationError, match="non-empty strings"):
        GenerationConfig(stop=[""])


def test_unknown_model_sources() -> None:
    with pytest.raises(ModelLoadError, match="unknown model source"):
        load_model("no such model")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model("/nonexistent/model.gguf")
    with pytest.raises(ModelLoadError, match="non-empty"):
        load_model("")


def test_corrupt_gguf_files(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(str(not_gguf))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)
    with pytest.raises(ModelLoadError, match="cannot read GGUF file"):
        load_model(str(truncated))
    leftovers = [p for p in (tmp_path / "cache" / "converted").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [], "a failed conversion must not leave a partial cache entry"


def test_directory_without_safetensors_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(tmp_path))


def test_unsupported_architecture() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=300))
    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture 'gpt2'"):
        from_pretrained_objects(gpt2, byte_tokenizer())
