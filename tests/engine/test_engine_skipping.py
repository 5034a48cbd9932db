"""A skipped sub-layer runs no compute, and plans are per call: concurrent calls do not interfere."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import torch

from litestage_chain import GenerationConfig, LoadedModel, SkipPlan, generate


def _count_module_calls(model: LoadedModel) -> tuple[Counter, list]:
    counts: Counter = Counter()
    handles = []
    for layer in range(model.num_layers):
        attention, mlp = model.view.attention[layer], model.view.mlp[layer]
        watched = {
            ("attention", layer, "qkv"): attention.qkv,
            ("attention", layer, "o_proj"): attention.o_proj,
            ("attention", layer, "norm"): attention.norm,
            ("mlp", layer, "gate_up"): mlp.gate_up,
            ("mlp", layer, "down_proj"): mlp.down_proj,
            ("mlp", layer, "norm"): mlp.norm,
        }
        for key, module in watched.items():
            handles.append(module.register_forward_hook(lambda *_, key=key: counts.update([key])))
    return counts, handles


def test_skipped_sublayers_run_no_module(tiny_llama: LoadedModel) -> None:
    plan = SkipPlan(attention=[0, 2], mlp=[1, 2])
    counts, handles = _count_module_calls(tiny_llama)
    try:
        generate(tiny_llama, ["count me"], plan=plan, config=GenerationConfig(max_new_tokens=6))
    finally:
        for handle in handles:
            handle.remove()
    for (kind, layer, part), _ in counts.items():
        assert not plan.skips(layer, kind), f"{kind} sub-layer {layer} ({part}) ran although skipped"
    steps = 6  # one prefill + five decode steps (the sixth token needs no further forward)
    for layer in (1, 3):
        assert counts[("attention", layer, "qkv")] == steps
    for layer in (0, 3):
        assert counts[("mlp", layer, "down_proj")] == steps


def test_skipped_sublayer_reads_no_weight(tiny_llama: LoadedModel) -> None:
    """Poison a skipped sub-layer's weights with NaN: the output must stay finite and unchanged."""
    plan = SkipPlan(attention=[1], mlp=[2])
    config = GenerationConfig(max_new_tokens=8)
    before = generate(tiny_llama, ["poison"], plan=plan, config=config)[0]
    weights = [tiny_llama.view.attention[1].qkv.weight, tiny_llama.view.mlp[2].down_proj.weight]
    saved = [w.detach().clone() for w in weights]
    try:
        for w in weights:
            w.data.fill_(float("nan"))
        after = generate(tiny_llama, ["poison"], plan=plan, config=config)[0]
        assert after.token_ids == before.token_ids
        assert all(c == c for c in after.confidences)  # no NaN
    finally:
        for w, s in zip(weights, saved):
            w.data.copy_(s)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_concurrent_calls_with_different_plans_equal_sequential(tiny_model: LoadedModel, temperature: float) -> None:
    plans = [SkipPlan(), SkipPlan(attention=[0, 1]), SkipPlan(mlp=[2, 3]), SkipPlan(attention=[3], mlp=[0])]
    prompts = ["first thread", "second thread prompt", "third", "fourth one here"]
    config = GenerationConfig(max_new_tokens=30, temperature=temperature, seed=7)
    sequential = [generate(tiny_model, [p], plan=plan, config=config)[0].token_ids for p, plan in zip(prompts, plans)]
    results: dict[int, list[int]] = {}
    barrier = threading.Barrier(len(plans))

    def work(index: int) -> None:
        barrier.wait()
        for _ in range(3):
            out = generate(tiny_model, [prompts[index]], plan=plans[index], config=config)[0].token_ids
            assert results.setdefault(index, out) == out

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(len(plans))] == sequential


def test_sampling_is_reproducible_with_a_seed_and_varies_without(tiny_llama: LoadedModel) -> None:
    config = GenerationConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=123)
    first = generate(tiny_llama, ["sample"], config=config)[0].token_ids
    again = generate(tiny_llama, ["sample"], config=config)[0].token_ids
    other = generate(tiny_llama, ["sample"], config=config.model_copy(update={"seed": 124}))[0].token_ids
    assert first == again
    assert first != other


def test_top_p_keeps_only_the_nucleus() -> None:
    from litestage_chain.engine.sampling import choose_next

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    picks = {int(choose_next(logits, 1.0, 0.5, generator)) for _ in range(200)}
    assert picks == {0}
    picks = {int(choose_next(logits, 1.0, 0.85, generator)) for _ in range(400)}
    assert picks == {0, 1}
