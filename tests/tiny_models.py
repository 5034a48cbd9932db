"""Tiny randomly initialised models of every supported family with a byte-level tokenizer, built offline in
milliseconds from each family's own transformers config.

Where a family has a feature the engine must reproduce, the tiny config makes it bite on the tests' short prompts:
sliding windows of 8 tokens (prompts and answers are 10-60 byte tokens), attention soft-capping low enough to
clip real scores, and a bias or partial rotary where the family allows one. Norm weights are randomised too: Gemma
initialises them to zero, which would make its (1 + w) RMSNorm indistinguishable from a plain one."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per byte, no merges) with ChatML special tokens and a chat template."""
    vocab = {symbol: index for index, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _common(tokenizer: PreTrainedTokenizerFast, layers: int) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,  # peaky logits, so greedy decoding has clear winners
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )


def tiny_llama(layers: int = 4, seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**_common(tokenizer, layers)))
    return model.eval(), tokenizer


def tiny_qwen2(layers: int = 4, seed: int = 0) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**_common(tokenizer, layers)))
    return model.eval(), tokenizer


WINDOW = 8
"""Sliding window of the tiny windowed families, far shorter than the tests' prompts plus answers."""


def _build(model_class: type, config: object, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):  # exercise each family's own norm formula, not just weight 1
                parameter.copy_(torch.empty_like(parameter).uniform_(-0.3, 0.3) + (0.0 if "gemma" in
                                config.model_type else 1.0))
        if "gemma" in config.model_type and config.tie_word_embeddings:
            # Gemma multiplies embeddings by sqrt(hidden) and ties them to the output: at the shared random scale
            # the input token then dominates every logit and greedy decoding repeats one byte.
            model.model.embed_tokens.weight.div_(config.hidden_size**0.5)
    return model.eval()


def tiny_qwen3(layers: int = 4, seed: int = 0, head_dim: int = 24) -> tuple[Qwen3ForCausalLM, PreTrainedTokenizerFast]:
    """Qwen3: RMSNorm on every query and key head; here also a q/k/v bias and sliding windows on layers 2-3.
    (transformers' GGUF reader assumes the real models' head_dim of 128.)"""
    tokenizer = byte_tokenizer()
    config = Qwen3Config(**_common(tokenizer, layers), head_dim=head_dim, attention_bias=True, use_sliding_window=True,
                         sliding_window=WINDOW, max_window_layers=2)
    return _build(Qwen3ForCausalLM, config, seed), tokenizer


def tiny_mistral(layers: int = 4, seed: int = 0) -> tuple[MistralForCausalLM, PreTrainedTokenizerFast]:
    """Mistral: Llama's layer with a sliding window on every layer."""
    tokenizer = byte_tokenizer()
    config = MistralConfig(**_common(tokenizer, layers), sliding_window=WINDOW)
    return _build(MistralForCausalLM, config, seed), tokenizer


def tiny_phi3(layers: int = 4, seed: int = 0) -> tuple[Phi3ForCausalLM, PreTrainedTokenizerFast]:
    """Phi-3: fused qkv and gate_up projections; here with Phi-4-mini's partial rotary and a sliding window."""
    tokenizer = byte_tokenizer()
    config = Phi3Config(**_common(tokenizer, layers), sliding_window=WINDOW, partial_rotary_factor=0.75,
                        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    return _build(Phi3ForCausalLM, config, seed), tokenizer


def _gemma_common(tokenizer: PreTrainedTokenizerFast, layers: int) -> dict:
    """Gemma 2 and 3: embeddings scaled by sqrt(hidden), (1 + w) norms around both sub-layers, GELU, query
    scaling by `query_pre_attn_scalar`, and local (sliding) layers alternating with global ones."""
    common = _common(tokenizer, layers)
    common.update(head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW,
                  layer_types=["sliding_attention", "full_attention"] * (layers // 2))
    return common


def tiny_gemma2(layers: int = 4, seed: int = 0) -> tuple[Gemma2ForCausalLM, PreTrainedTokenizerFast]:
    """Gemma 2: soft-capped attention scores and final logits (caps low enough to bind on these weights); its
    output head is untied here, so the final logits are large enough for their cap to matter."""
    tokenizer = byte_tokenizer()
    config = Gemma2Config(**_gemma_common(tokenizer, layers), attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
    return _build(Gemma2ForCausalLM, config, seed), tokenizer


def tiny_gemma3(layers: int = 4, seed: int = 0) -> tuple[Gemma3ForCausalLM, PreTrainedTokenizerFast]:
    """Gemma 3 (text): q/k head norms, local layers with their own rotary base, and the output head tied to the
    embedding as in the real checkpoints."""
    tokenizer = byte_tokenizer()
    config = Gemma3TextConfig(**{**_gemma_common(tokenizer, layers), "tie_word_embeddings": True},
                              rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                               "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}})
    return _build(Gemma3ForCausalLM, config, seed), tokenizer


def tiny_long_context_llama(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A smaller 2-layer Llama with a 4096-token context: few-shot stage, tool and schema prompts are long in
    byte tokens."""
    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def save_tiny_long_context_llama(directory, seed: int = 0):
    """Save `tiny_long_context_llama` as a transformers model directory (loadable by path) and return the path."""
    model, tokenizer = tiny_long_context_llama(seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
