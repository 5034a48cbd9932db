"""GGUF files of the new families load through the existing path (transformers' GGUF reader, converted once to
safetensors) and the engine runs exactly what that reader built.

What a GGUF's metadata can say is transformers' reader's business: it has no key for, e.g., Qwen3's sliding
window or Gemma 3's local rotary base, and falls back to the config defaults (the released checkpoints' values).
So the reference here is the model transformers itself reads from the file, not the tiny model written to it.
Gemma is not among them: its reader always builds a sentencepiece tokenizer, which the tiny byte-level vocabulary
is not.
"""

from __future__ import annotations

import pytest
import tiny_models
import torch
from tiny_gguf import write_tiny_gguf
from transformers import AutoModelForCausalLM

from litestage_chain import GenerationConfig, SkipPlan, generate, load_model

pytest.importorskip("gguf")
BUILDS = {
    "qwen3": lambda: tiny_models.tiny_qwen3(head_dim=128),  # the reader assumes Qwen3's head_dim of 128
    "phi3": tiny_models.tiny_phi3,
}


@pytest.mark.parametrize("family", list(BUILDS))
def test_gguf_of_the_family_loads_and_runs_like_transformers_reads_it(family, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    path = write_tiny_gguf(tmp_path / f"tiny-{family}.gguf", *BUILDS[family]())
    loaded = load_model(str(path))
    assert loaded.model.config.model_type == family
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    ids = loaded.encode("GGUF files of every family")
    ours = generate(loaded, [ids], SkipPlan(), GenerationConfig(max_new_tokens=12, ignore_eos=True))[0].token_ids
    expected = reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=12, do_sample=False, min_new_tokens=12,
                                  pad_token_id=loaded.pad_token_id)[0, len(ids):].tolist()
    assert ours == expected
