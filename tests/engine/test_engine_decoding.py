"""Early exit, stop strings and streaming behave as documented."""

from __future__ import annotations

import torch
from tiny_models import tiny_llama

from litestage_chain import (
    EarlyExitConfig,
    GenerationConfig,
    LoadedModel,
    from_pretrained_objects,
    generate,
)


def test_early_exit_rule() -> None:
    rule = EarlyExitConfig(window=3, threshold=0.5, min_tokens=4)
    assert not rule.should_exit([0.1, 0.1, 0.1])  # fewer than min_tokens
    assert rule.should_exit([0.9, 0.1, 0.1, 0.1])
    assert not rule.should_exit([0.1, 0.9, 0.9, 0.9])
    assert not rule.should_exit([0.9, 0.6, 0.5, 0.5])  # mean exactly at threshold is not below it


def test_early_exit_fires_on_low_confidence_and_not_on_high() -> None:
    model, tokenizer = tiny_llama(seed=3)
    unsure = from_pretrained_objects(model, tokenizer, name="unsure")
    rule = EarlyExitConfig(window=4, threshold=0.5, min_tokens=6)
    config = GenerationConfig(max_new_tokens=40, early_exit=rule)
    low = generate(unsure, ["ramble on"], config=config)[0]
    assert max(low.confidences) < 0.5, "the random model should be unsure (test premise)"
    assert low.early_exited and low.finish_reason == "early_exit"
    assert low.generated_tokens == 6

    confident_model, tokenizer = tiny_llama(seed=3)
    with torch.no_grad():
        confident_model.lm_head.weight.mul_(2000.0)  # sharpen every distribution towards its argmax
    sure = from_pretrained_objects(confident_model, tokenizer, name="sure")
    high = generate(sure, ["ramble on"], config=config)[0]
    assert min(high.confidences) > 0.9
    assert not high.early_exited


def test_early_exit_is_off_by_default(tiny_llama: LoadedModel) -> None:
    result = generate(tiny_llama, ["ramble on"], config=GenerationConfig(max_new_tokens=30))[0]
    assert not result.early_exited and result.generated_tokens == 30


def ascii_llama() -> LoadedModel:
    """A tiny model that only ever emits printable ASCII (other rows of its output head are zeroed far below)."""
    model, tokenizer = tiny_llama(seed=8)
    with torch.no_grad():
        for token in range(len(tokenizer)):
            piece = tokenizer.decode([token])
            if not (len(piece) == 1 and 32 <= ord(piece) < 127):
                model.lm_head.weight[token].zero_()
        model.lm_head.weight.mul_(5.0)
    return from_pretrained_objects(model, tokenizer, name="ascii")


def test_multi_token_stop_string_cuts_text_and_is_never_streamed() -> None:
    model = ascii_llama()
    prompt = "Stop me"
    free = generate(model, [prompt], config=GenerationConfig(max_new_tokens=40))[0]
    assert len(free.text) == 40 and free.text.isprintable(), "test premise: 40 ASCII characters"
    stop = free.text[20:23]  # three characters = three byte tokens of the tiny tokenizer
    assert len(model.encode(stop)) == 3
    pieces: list[str] = []
    stopped = generate(
        model,
        [prompt],
        config=GenerationConfig(max_new_tokens=40, stop=[stop, "never-appears"]),
        on_token=lambda index, piece: pieces.append(piece),
    )[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]
    assert "".join(pieces) == stopped.text
    assert stopped.token_ids == free.token_ids[: stopped.generated_tokens]
    assert len(stopped.text) <= 20


def test_streaming_callback_reassembles_each_row(tiny_llama: LoadedModel) -> None:
    prompts = ["one", "two prompts in a batch"]
    streamed: dict[int, str] = {0: "", 1: ""}

    def collect(index: int, piece: str) -> None:
        streamed[index] += piece

    results = generate(tiny_llama, prompts, config=GenerationConfig(max_new_tokens=15), on_token=collect)
    assert [streamed[0], streamed[1]] == [r.text for r in results]


def test_eos_ends_generation_and_is_not_in_text(tiny_llama: LoadedModel) -> None:
    eos = next(iter(tiny_llama.eos_token_ids))
    model, tokenizer = tiny_llama_with_forced_token(eos)
    forced = from_pretrained_objects(model, tokenizer, name="forced-eos")
    result = generate(forced, ["anything"], config=GenerationConfig(max_new_tokens=10))[0]
    assert result.finish_reason == "eos" and result.token_ids == [eos] and result.text == ""


def tiny_llama_with_forced_token(token: int):
    model, tokenizer = tiny_llama(seed=5)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[token].fill_(1.0)
        model.model.norm.weight.fill_(1.0)
    return model, tokenizer
