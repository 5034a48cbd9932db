"""The compiled batch-1 decode step computes what `forward.py`'s decode path computes.

Its projections are the same kernels on the same rounded activations; norms, attention and the activation differ
only in float summation order, so greedy tokens agree and logits agree closely, under plans that skip either kind of
sub-layer, scale the residual, or fill skipped attention layers' caches for a later plan. Not to round-off: a 1e-7
difference can move an activation across an int8 rounding boundary, which random tiny weights amplify (as in
test_quant_view.py), so logits and cache entries are compared by relative error.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from litestage_chain import GenerationConfig, LoadedModel, SkipPlan, generate
from litestage_chain.engine import fused_decode
from litestage_chain.engine.forward import decode_one, new_cache, prefill
from litestage_chain.engine.quant import formats, kernels
from litestage_chain.engine.quant.view import quantize_decoder_view

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(kernels.kernel_build_problem() is not None,
                       reason=f"C++ kernels cannot be built here: {kernels.kernel_build_problem()}"),
]

ELIGIBLE = ("llama", "qwen2")
"""Tiny families whose layers the compiled step runs (the others keep a feature it does not: per-head norms,
output norms, soft-capping, a sliding window or partial rotary)."""

PLANS = [
    SkipPlan(),
    SkipPlan(attention=[1, 2], mlp=[0]),
    SkipPlan(attention=[0], mlp=[3], scale=[(0, "attention", 0.9), (3, "mlp", 1.1)]),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _quantised(lm: LoadedModel, fmt: str) -> LoadedModel:
    clone = copy.copy(lm)
    clone.view = quantize_decoder_view(lm.view, fmt)  # type: ignore[arg-type]
    return clone


@pytest.fixture(params=["avx512_vnni", "avx2", "neon", "portable"])
def kernel_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every kernel path this CPU runs, forced in turn (the step calls the same dispatch as the modules)."""
    module = kernels.get_kernels()
    assert module is not None, kernels.kernels_status()
    if request.param not in module.supported_isas():
        pytest.skip(f"this CPU cannot run the {request.param} path")
    with formats.forced_path(request.param):
        yield request.param


def _decode(lm: LoadedModel, ids: list[int], plan: SkipPlan, steps: int, fused: bool, every_layer: bool):
    """Prefill `ids`, then decode `steps` greedy tokens one at a time: (tokens, logits per step, the cache)."""
    with fused_decode.enabled_as(fused):
        view = lm.view
        cache = new_cache(view, plan, 1, len(ids) + steps + 1, torch.device("cpu"), every_layer=every_layer)
        positions = torch.arange(len(ids))[None, :]
        with torch.inference_mode():
            logits = prefill(view, torch.tensor([ids]), positions, None, cache, plan)
            tokens, history = [], []
            for step in range(steps):
                token = int(logits[0].argmax())
                tokens.append(token)
                column = len(ids) + step
                logits = decode_one(view, torch.tensor([token]), torch.tensor([column]), None, cache, column, plan)
                history.append(logits)
        return tokens, torch.cat(history), cache


@pytest.mark.parametrize("family", ELIGIBLE)
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("plan", PLANS, ids=["full", "skips", "scaled"])
@pytest.mark.parametrize("every_layer", [False, True], ids=["own-layers", "every-layer"])
def test_the_compiled_step_equals_the_python_path(
    request: pytest.FixtureRequest, family: str, fmt: str, plan: SkipPlan, every_layer: bool
) -> None:
    lm = _quantised(request.getfixturevalue(f"tiny_{family}"), fmt)
    assert fused_decode.program_for(lm.view) is not None, "the compiled step should run this model"
    ids = lm.encode("the quick brown fox")
    fast_tokens, fast, fast_cache = _decode(lm, ids, plan, 8, fused=True, every_layer=every_layer)
    slow_tokens, slow, slow_cache = _decode(lm, ids, plan, 8, fused=False, every_layer=every_layer)
    assert fast_cache.fused_session is not None and slow_cache.fused_session is None  # each took the path it says
    assert fast_tokens == slow_tokens
    assert _rel(fast, slow) < 1e-2
    end = len(ids) + 8
    assert set(fast_cache.keys) == set(slow_cache.keys)
    for layer in fast_cache.keys:  # every written entry, skipped attention layers' fills included
        assert _rel(fast_cache.keys[layer][:, :, :end], slow_cache.keys[layer][:, :, :end]) < 1e-2
        assert _rel(fast_cache.values[layer][:, :, :end], slow_cache.values[layer][:, :, :end]) < 1e-2


def test_every_kernel_path_gives_the_python_paths_tokens(tiny_qwen2: LoadedModel, kernel_path: str) -> None:
    lm = _quantised(tiny_qwen2, "int4")
    ids = lm.encode("kernel paths")
    fast_tokens, fast, _ = _decode(lm, ids, PLANS[1], 6, fused=True, every_layer=True)
    slow_tokens, slow, _ = _decode(lm, ids, PLANS[1], 6, fused=False, every_layer=True)
    assert fast_tokens == slow_tokens
    assert _rel(fast, slow) < 1e-2


def test_generate_gives_the_same_answers_with_and_without_it(tiny_llama: LoadedModel) -> None:
    """Through `generate`: one prompt uses the step, a batch of two does not (and drops to one row as it finishes)."""
    lm = _quantised(tiny_llama, "int4")
    prompt = lm.render_chat([{"role": "user", "content": "hello"}])
    config = GenerationConfig(max_new_tokens=12, temperature=0.0)
    results = {}
    for fused in (True, False):
        with fused_decode.enabled_as(fused):
            results[fused] = [r.token_ids for r in generate(lm, [prompt], plan=PLANS[1], config=config)] + [
                r.token_ids for r in generate(lm, [prompt, prompt + " and more"], plan=PLANS[1], config=config)]
    assert results[True] == results[False]


def test_a_batch_that_shrinks_to_one_row_continues_on_the_compiled_step(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two prompts of one length (no padding): when a stop string ends one row, the other goes on alone through the
    compiled step, and both rows' tokens equal the Python path's."""
    from litestage_chain.engine import forward

    lm = _quantised(tiny_llama, "int4")
    prompts: dict[int, list[str]] = {}
    for word in ("hello", "world", "apple", "house", "green", "river", "stone", "cloud"):
        prompt = lm.render_chat([{"role": "user", "content": word}])
        prompts.setdefault(len(lm.encode(prompt)), []).append(prompt)
    pair = next(group[:2] for group in prompts.values() if len(group) >= 2)
    config = GenerationConfig(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    texts = [r.text for r in generate(lm, pair, plan=PLANS[1], config=config)]
    # a piece of the first row's first half that the second row never writes: it ends the first row early
    # (printable ASCII: a random model's text has partial UTF-8 sequences, decoded as U+FFFD in both rows)
    pieces = list(texts[0][: 2 * len(texts[0]) // 3])
    stop = next(p for p in pieces if p.strip() and all(c.isascii() and c.isprintable() for c in p)
                and p not in texts[1])
    config = config.model_copy(update={"stop": (stop,)})
    compiled_steps = []
    step = forward.decode_one_fused

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        logits = step(*args, **kwargs)
        compiled_steps.append(logits is not None)
        return logits

    monkeypatch.setattr(forward, "decode_one_fused", counting)
    results = {}
    for fused in (True, False):
        with fused_decode.enabled_as(fused):
            results[fused] = generate(lm, pair, plan=PLANS[1], config=config)
    assert results[True][0].finish_reason == "stop" and results[True][1].finish_reason == "length"
    assert sum(compiled_steps) > 0, "the remaining row should have run on the compiled step"
    assert [r.token_ids for r in results[True]] == [r.token_ids for r in results[False]]


def test_a_float_model_never_builds_the_kernels(tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled step is for int8/int4 models: a float32 model's batch-1 decode must not reach the kernels (their
    first use compiles them, which needs a compiler and a writable cache)."""

    def no_kernels() -> None:
        raise AssertionError("a float32 model asked for the low-bit kernels")

    monkeypatch.setattr(fused_decode, "_route", no_kernels)
    config = GenerationConfig(max_new_tokens=4, temperature=0.0)
    prompt = tiny_llama.render_chat([{"role": "user", "content": "hello"}])
    assert len(generate(tiny_llama, [prompt], config=config)[0].token_ids) > 0
    assert fused_decode.program_for(tiny_llama.view) is None


@pytest.mark.parametrize("family", ["qwen3", "mistral", "phi3", "gemma2", "gemma3"])
def test_models_with_other_layers_keep_the_python_path(family: str, tiny_family_models: dict[str, LoadedModel]) -> None:
    import tiny_models

    from litestage_chain import from_pretrained_objects

    if family not in tiny_family_models:
        model, tokenizer = getattr(tiny_models, f"tiny_{family}")()
        tiny_family_models[family] = from_pretrained_objects(model, tokenizer, name=f"tiny-{family}")
    lm = _quantised(tiny_family_models[family], "int4")
    _, _, cache = _decode(lm, lm.encode("other layers"), SkipPlan(), 4, fused=True, every_layer=False)
    assert cache.fused_session is None
    assert fused_decode.program_for(lm.view) is None


def test_float_models_and_batches_keep_the_python_path(tiny_llama: LoadedModel) -> None:
    assert fused_decode.program_for(tiny_llama.view) is None  # float32 projections: no compiled kernels to call
    lm = _quantised(tiny_llama, "int8")
    cache = new_cache(lm.view, SkipPlan(), 2, 8, torch.device("cpu"))
    assert not cache.fused_ok()
    cache.drop_rows([0])
    assert cache.fused_ok() and cache.fused_session is None


def test_concurrent_calls_each_get_their_own_answer(tiny_qwen2: LoadedModel) -> None:
    """The step releases the GIL while it runs: calls on other threads interleave with it, each on its own cache."""
    from concurrent.futures import ThreadPoolExecutor

    lm = _quantised(tiny_qwen2, "int4")
    config = GenerationConfig(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    prompts = [lm.render_chat([{"role": "user", "content": text}]) for text in ("one", "two words", "three more words")]
    alone = [generate(lm, [p], plan=PLANS[1], config=config)[0].token_ids for p in prompts]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda p: generate(lm, [p], plan=PLANS[1], config=config)[0].token_ids, prompts * 2))
    assert together == alone * 2


def test_enabled_as_restores_the_setting_it_found() -> None:
    """Under LITESTAGE_FUSED_DECODE=0 an A/B block must leave the step off afterwards, not turn it back on."""
    previous = fused_decode.set_enabled(False)
    try:
        with fused_decode.enabled_as(True):
            assert fused_decode.enabled()
        assert not fused_decode.enabled()
    finally:
        fused_decode.set_enabled(previous)


def _layer(bits: int, hidden: int = 64, heads: int = 2, kv_heads: int = 1, head_dim: int = 32, inter: int = 96) -> list:
    """`DecodeProgram.add_layer`'s arguments for one random layer in the blocked int8/int4 layout."""
    make = formats.Int8Linear if bits == 8 else formats.Int4Linear
    projections = [((heads + 2 * kv_heads) * head_dim, hidden), (hidden, heads * head_dim), (2 * inter, hidden),
                   (hidden, inter)]
    linears = [fused_decode._linear_args(make.from_linear(torch.nn.Linear(k, n, bias=False))) for n, k in projections]
    norm = torch.ones(hidden)
    return [norm, 1e-6, *linears[0], *linears[1], norm, 1e-6, *linears[2], *linears[3]]


def test_the_program_rejects_a_mismatched_layout_and_layers_added_after_a_session() -> None:
    module = kernels.get_kernels()
    program = module.DecodeProgram(64, 2, 1, 32, 96, 32 ** -0.5)
    int4 = _layer(4)
    wrong = _layer(8)
    wrong[4] = int4[4]  # the qkv projection's int4 (scale, min) beside its int8 codes
    with pytest.raises(RuntimeError, match="parameters must be"):
        program.add_layer(*wrong)
    truncated = _layer(8)
    truncated[3] = truncated[3][:, :, :8].contiguous()  # half a block of rows
    with pytest.raises(RuntimeError, match="blocked weights must be"):
        program.add_layer(*truncated)
    assert program.num_layers == 0, "a rejected layer is not kept"
    with pytest.raises(RuntimeError, match="no layers"):
        module.DecodeSession(program, [], [], [], [], [], [])
    program.add_layer(*int4)
    cache = torch.zeros(1, 1, 8, 32)
    module.DecodeSession(program, [cache], [cache.clone()], [False], [False], [1.0], [1.0])
    with pytest.raises(RuntimeError, match="after a DecodeSession"):
        program.add_layer(*_layer(8))
    assert program.num_layers == 1
