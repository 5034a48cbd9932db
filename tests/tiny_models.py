"""Tiny randomly initialised Llama and Qwen2 models with a byte-level tokenizer, built offline in milliseconds."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
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
