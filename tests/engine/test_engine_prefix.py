"""Reusing a shared prompt prefix's KV entries gives the same tokens as prefilling everything."""

from __future__ import annotations

from litestage_chain import GenerationConfig, LoadedModel, SkipPlan, generate

PREFIX = "You are a careful assistant. Example: Q: 1+1? A: 2.\n"
QUESTIONS = ["Q: what is red? A:", "Q: a much longer question about the colour of the sky at noon? A:"]


def test_prefix_reuse_matches_full_prefill_in_batches_and_alone(tiny_model: LoadedModel) -> None:
    config = GenerationConfig(max_new_tokens=12)
    plan = SkipPlan(attention=[0], mlp=[2])
    prompts = [PREFIX + q for q in QUESTIONS]
    full = [r.token_ids for r in generate(tiny_model, prompts, plan=plan, config=config)]
    tiny_model.prefix_cache.clear()
    hits_before = tiny_model.prefix_cache.hits
    reused = [r.token_ids for r in generate(tiny_model, prompts, plan=plan, config=config, shared_prefix=PREFIX)]
    again = [generate(tiny_model, [p], plan=plan, config=config, shared_prefix=PREFIX)[0].token_ids for p in prompts]
    assert reused == full == again
    assert tiny_model.prefix_cache.hits - hits_before == 2, "the second and third calls reuse the stored prefix"


def test_prefix_entries_are_per_plan(tiny_model: LoadedModel) -> None:
    config = GenerationConfig(max_new_tokens=8)
    prompt = PREFIX + QUESTIONS[0]
    for plan in (SkipPlan(), SkipPlan(attention=[1, 2])):
        expected = generate(tiny_model, [prompt], plan=plan, config=config)[0].token_ids
        assert generate(tiny_model, [prompt], plan=plan, config=config, shared_prefix=PREFIX)[0].token_ids == expected


def test_prompt_not_starting_with_the_prefix_is_run_in_full(tiny_model: LoadedModel) -> None:
    config = GenerationConfig(max_new_tokens=8)
    misses = tiny_model.prefix_cache.misses
    result = generate(tiny_model, ["unrelated prompt"], config=config, shared_prefix=PREFIX)[0]
    assert result.token_ids == generate(tiny_model, ["unrelated prompt"], config=config)[0].token_ids
    assert tiny_model.prefix_cache.misses == misses
    assert result.prompt_tokens == len(tiny_model.encode("unrelated prompt"))


def test_computing_a_prefix_is_reported_apart_from_the_call_that_needed_it(tiny_model: LoadedModel, monkeypatch) -> None:
    """A call's prefill time must not depend on whether an earlier call already computed the shared prefix."""
    import time

    from litestage_chain.engine import prefix_cache

    real = prefix_cache.compute_prefix

    def slow_compute(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        time.sleep(0.3)  # a prefix far costlier than the rest of the call, as a long few-shot prefix on a CPU
        return real(*args, **kwargs)

    monkeypatch.setattr(prefix_cache, "compute_prefix", slow_compute)
    tiny_model.prefix_cache.clear()
    config = GenerationConfig(max_new_tokens=4)
    plan = SkipPlan(mlp=[1])
    first = generate(tiny_model, [PREFIX + QUESTIONS[0]], plan=plan, config=config, shared_prefix=PREFIX)[0]
    second = generate(tiny_model, [PREFIX + QUESTIONS[0]], plan=plan, config=config, shared_prefix=PREFIX)[0]
    assert first.prefix_seconds >= 0.3 and second.prefix_seconds == 0.0
    assert first.prefill_seconds < 0.3, "the one-time prefix computation is not charged to the call's prefill"
    assert first.token_ids == second.token_ids


def test_prefix_table_is_bounded_in_bytes(tiny_model: LoadedModel) -> None:
    from litestage_chain.engine.prefix_cache import PrefixCache

    plans = (SkipPlan(), SkipPlan(attention=[1]), SkipPlan(mlp=[0]))
    prefix = tiny_model.encode(PREFIX)
    table = PrefixCache(max_bytes=1)  # smaller than any entry: only the newest is kept, never none
    for plan in plans:
        found = table.lookup(tiny_model.view, plan, prefix)
        assert found.computed and found.seconds > 0 and found.entry
    assert len(table) == 1 and table.evictions == 2 and table.stored_bytes() > 0
    again = table.lookup(tiny_model.view, plans[-1], prefix)
    assert not again.computed and again.seconds == 0.0

    counted = PrefixCache(max_entries=2)
    for plan in (*plans, plans[1]):  # the first plan is evicted; the second was used most recently, so it stays
        counted.lookup(tiny_model.view, plan, prefix)
    assert len(counted) == 2 and not counted.lookup(tiny_model.view, plans[1], prefix).computed
    assert counted.lookup(tiny_model.view, plans[0], prefix).computed
    counted.clear()
    assert len(counted) == 0 and counted.stored_bytes() == 0
