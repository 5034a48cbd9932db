"""Reuse across calls and plans (the context cache): shared-context stages equal an uncached recompute.

A "chain" here is three calls whose prompts extend each other: stage s+1's prompt is stage s's prompt + output + a
header. The reference is `segment_logits`: the whole final sequence recomputed in one pass with no cache, each token
under the plan of the segment it belongs to (the per-segment rule of `context_prefill`).
"""

from __future__ import annotations

import pytest
import torch

from litestage_chain import GenerationConfig, LoadedModel, SkipPlan, generate
from litestage_chain.engine.context_cache import ContextCache
from litestage_chain.engine.context_prefill import segment_logits
from litestage_chain.errors import InvalidInputError
from litestage_chain.engine.forward import all_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PREFIX = "System: think in three steps.\nExample: Q: 1+1? K: sums. A: 2.\n"
QUESTIONS = ["Q: what is red? ", "Q: a longer question about the colour of the sky at noon? "]
HEADERS = ["K:", "\nA:", "\nSo:"]
PLANS = [SkipPlan(attention=[1], mlp=[3]), SkipPlan(attention=[0, 2]), SkipPlan(mlp=[0, 1], attention=[3])]
CONFIG = GenerationConfig(max_new_tokens=6, ignore_eos=True)


def _chain(model: LoadedModel, table: ContextCache, questions: list[str], plans: list[SkipPlan]):
    """Run three stages on token prompts that extend each other; return per question (tokens, per-token plans)
    of the final sequence, each stage's generated ids and results."""
    prompts = [model.encode(PREFIX) + model.encode(q) for q in questions]
    token_plans: list[list[SkipPlan]] = [[] for _ in questions]
    outputs: list[list[list[int]]] = [[] for _ in questions]
    results = []
    for stage, (header, plan) in enumerate(zip(HEADERS, plans)):
        prompts = [p + model.encode(header) for p in prompts]
        runs = [_runs(tp) for tp in token_plans]
        done = generate(model, prompts, plan=plan, config=CONFIG, context_cache=table, prompt_plans=runs,
                        shared_prefix=model.encode(PREFIX))
        results.append(done)
        for i, result in enumerate(done):
            token_plans[i] += [plan] * (len(prompts[i]) - len(token_plans[i]))
            outputs[i].append(result.token_ids)
            if stage < len(HEADERS) - 1:
                prompts[i] = prompts[i] + result.token_ids
                token_plans[i] += [plan] * len(result.token_ids)
    return prompts, token_plans, outputs, results


def _runs(token_plans: list[SkipPlan]) -> list[tuple[int, SkipPlan]]:
    runs: list[tuple[int, SkipPlan]] = []
    for plan in token_plans:
        if runs and runs[-1][1] == plan:
            runs[-1] = (runs[-1][0] + 1, plan)
        else:
            runs.append((1, plan))
    return runs


def _check_against_reference(model, prompts, token_plans, outputs, plans, reference) -> None:
    """Teacher-force the final sequence through the reference: every generated token is its argmax."""
    for prompt, tplans, outs in zip(prompts, token_plans, outputs):
        sequence = prompt + outs[-1]
        per_token = tplans + [plans[-1]] * len(outs[-1])
        logits = reference(sequence, per_token)
        # positions whose next token was generated: each stage's outputs sit right after its prompt
        position = len(prompt)
        for generated in outs[-1]:
            assert int(logits[position - 1].argmax()) == generated
            position += 1
        # the earlier stages' tokens, where they sit in the sequence
        cursor = 0
        for stage_out in outs[:-1]:
            start = _find(sequence, stage_out, cursor)
            for offset, generated in enumerate(stage_out):
                assert int(logits[start + offset - 1].argmax()) == generated
            cursor = start + len(stage_out)


def _find(sequence: list[int], part: list[int], after: int) -> int:
    for start in range(after, len(sequence) - len(part) + 1):
        if sequence[start : start + len(part)] == part:
            return start
    raise AssertionError("stage output not found in the final sequence")


def test_full_model_chain_equals_one_uncached_recompute(tiny_model: LoadedModel) -> None:
    table = ContextCache()
    full = [SkipPlan()] * 3
    prompts, token_plans, outputs, results = _chain(tiny_model, table, QUESTIONS, full)
    with torch.inference_mode():
        _check_against_reference(
            tiny_model, prompts, token_plans, outputs, full,
            lambda seq, _plans: all_logits(tiny_model.view, torch.tensor(seq), SkipPlan()),
        )
    # the later stages prefilled only their header and the (re-fed) last token of the stage before
    for stage in (1, 2):
        for result in results[stage]:
            assert result.prompt_tokens - result.reused_tokens <= len(tiny_model.encode(HEADERS[stage])) + 1


def test_cached_decoding_across_plan_switches_equals_the_per_segment_recompute(tiny_model: LoadedModel) -> None:
    table = ContextCache()
    prompts, token_plans, outputs, _ = _chain(tiny_model, table, QUESTIONS, PLANS)
    with torch.inference_mode():
        _check_against_reference(
            tiny_model, prompts, token_plans, outputs, PLANS,
            lambda seq, per_token: segment_logits(tiny_model.view, torch.tensor(seq), per_token),
        )


def test_the_reference_rule_differs_from_one_plan_for_everything(tiny_model: LoadedModel) -> None:
    """The test above could not fail if the plans of earlier segments did not matter: they do."""
    ids = torch.tensor(tiny_model.encode(PREFIX + QUESTIONS[0]))
    mixed = [PLANS[0]] * (len(ids) // 2) + [PLANS[2]] * (len(ids) - len(ids) // 2)
    with torch.inference_mode():
        a = segment_logits(tiny_model.view, ids, mixed)
        b = segment_logits(tiny_model.view, ids, [PLANS[2]] * len(ids))
        one = all_logits(tiny_model.view, ids, PLANS[2])
    # the second half runs one plan in both; it differs because it reads the first half's keys and values (the
    # tokens right after the switch do, in every family: sliding windows hide the first half from the last ones)
    half = len(ids) // 2
    assert not torch.allclose(a[half:], b[half:], atol=1e-3)
    torch.testing.assert_close(b, one, rtol=1e-4, atol=1e-4)


def test_reuse_never_changes_an_output_against_a_cold_cache(tiny_model: LoadedModel) -> None:
    warm = ContextCache()
    prompts, token_plans, outputs, results = _chain(tiny_model, warm, QUESTIONS, PLANS)
    # the summary call again, alone and batched, on a cold table: the same tokens as with everything cached
    runs = [_runs(tp) for tp in token_plans]
    for index, prompt in enumerate(prompts):
        cold = generate(tiny_model, [prompt], plan=PLANS[2], config=CONFIG, context_cache=ContextCache(),
                        prompt_plans=[runs[index]])[0]
        assert cold.reused_tokens == 0 and cold.token_ids == outputs[index][-1]
    batched = generate(tiny_model, prompts, plan=PLANS[2], config=CONFIG, context_cache=ContextCache(),
                       prompt_plans=runs)
    assert [r.token_ids for r in batched] == [o[-1] for o in outputs]
    assert all(r.reused_tokens > len(tiny_model.encode(PREFIX)) for r in results[2])


def test_a_batch_prefills_what_the_previous_stage_left_uncached_together(
    tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a stage, each row misses its last generated token (never fed back), under that stage's plan. Those
    tokens run in the call's own cache, all rows in one packed prefill per plan, not one forward pass per row."""
    from litestage_chain.engine import context_prefill

    calls: dict[str, list[int]] = {"extend": [], "prefill_rows": []}
    extend, prefill_rows = context_prefill.extend, context_prefill.prefill_rows

    def counted_extend(view, table, keys, plans):  # noqa: ANN001, ANN202
        calls["extend"].append(len(keys))
        return extend(view, table, keys, plans)

    def counted_prefill_rows(view, ids, positions, rows, *args, **kwargs):  # noqa: ANN001, ANN202
        calls["prefill_rows"].append(len(rows))
        return prefill_rows(view, ids, positions, rows, *args, **kwargs)

    monkeypatch.setattr(context_prefill, "extend", counted_extend)
    monkeypatch.setattr(context_prefill, "prefill_rows", counted_prefill_rows)
    table = ContextCache()
    prompts, token_plans, outputs, results = _chain(tiny_model, table, QUESTIONS, PLANS)
    # the few-shot prefix once; then per stage: one prefill of the earlier segment's leftovers (both rows) after the
    # first stage, and the call's own prefill
    assert calls["extend"] == [len(tiny_model.encode(PREFIX))]
    assert calls["prefill_rows"] == [2, 2, 2, 2, 2]
    for stage in (1, 2):
        for result in results[stage]:
            assert result.prompt_tokens - result.prefix_tokens == len(tiny_model.encode(HEADERS[stage])) + 1
    with torch.inference_mode():
        _check_against_reference(
            tiny_model, prompts, token_plans, outputs, PLANS,
            lambda seq, per_token: segment_logits(tiny_model.view, torch.tensor(seq), per_token),
        )


def test_tokens_cached_under_another_plan_are_not_reused_for_a_different_segment_plan(tiny_model: LoadedModel) -> None:
    table = ContextCache()
    prompt = tiny_model.encode(PREFIX + QUESTIONS[0])
    generate(tiny_model, [prompt], plan=PLANS[0], config=CONFIG, context_cache=table)
    other = generate(tiny_model, [prompt], plan=PLANS[1], config=CONFIG, context_cache=table)[0]
    assert other.reused_tokens == 0
    alone = generate(tiny_model, [prompt], plan=PLANS[1], config=CONFIG)[0]
    assert other.token_ids == alone.token_ids
    again = generate(tiny_model, [prompt], plan=PLANS[1], config=CONFIG, context_cache=table)[0]
    assert again.reused_tokens == len(prompt) - 1 and again.token_ids == alone.token_ids


def test_a_conversation_under_one_plan_matches_the_engine_without_the_table(tiny_model: LoadedModel) -> None:
    table = ContextCache()
    plan = PLANS[1]
    prompt = tiny_model.encode(PREFIX + QUESTIONS[1])
    first = generate(tiny_model, [prompt], plan=plan, config=CONFIG, context_cache=table)[0]
    follow = prompt + first.token_ids + tiny_model.encode(" Next? ")
    cached = generate(tiny_model, [follow], plan=plan, config=CONFIG, context_cache=table)[0]
    plain = generate(tiny_model, [follow], plan=plan, config=CONFIG)[0]
    assert cached.token_ids == plain.token_ids
    assert cached.reused_tokens == len(prompt) + len(first.token_ids) - 1


def test_the_table_is_bounded_and_evicts_least_recently_used(tiny_model: LoadedModel) -> None:
    probe = ContextCache()
    prompt = tiny_model.encode(PREFIX + QUESTIONS[0])
    generate(tiny_model, [prompt], config=CONFIG, context_cache=probe)
    one = probe.stored_bytes()
    table = ContextCache(max_bytes=int(one * 2.5))
    for number in range(5):
        generate(tiny_model, [tiny_model.encode(f"{number} unrelated {number}") + prompt], config=CONFIG,
                 context_cache=table)
    assert table.stored_bytes() <= table.max_bytes and table.evictions >= 2
    shared = ContextCache()
    for question in QUESTIONS:
        generate(tiny_model, [tiny_model.encode(PREFIX + question)], config=CONFIG, context_cache=shared)
    # the common prefix is stored once: fewer tokens than the two sequences together
    a, b = (tiny_model.encode(PREFIX + q) for q in QUESTIONS)
    common = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert common >= len(tiny_model.encode(PREFIX))
    assert shared.stored_tokens() == len(a) + len(b) + 2 * (CONFIG.max_new_tokens - 1) - common


def test_bad_prompt_plans_are_rejected(tiny_model: LoadedModel) -> None:
    prompt = tiny_model.encode(PREFIX)
    with pytest.raises(InvalidInputError, match="covers"):
        generate(tiny_model, [prompt], context_cache=ContextCache(), prompt_plans=[[(len(prompt) + 1, SkipPlan())]])
    with pytest.raises(InvalidInputError, match="last token"):
        generate(tiny_model, [prompt], context_cache=ContextCache(), prompt_plans=[[(len(prompt), PLANS[0])]])
    with pytest.raises(InvalidInputError, match="context_cache"):
        generate(tiny_model, [prompt], prompt_plans=[[(1, PLANS[0])]])


def test_insert_past_an_evicted_prefix_stores_nothing() -> None:
    """A row is stored from where the table said its cached part ends; if that part went meanwhile, skip it."""
    table = ContextCache()
    keys = [(t, 0) for t in range(6)]
    kv = torch.zeros(2, 2, 1, 6, 4)
    table.insert(keys[:3], kv[:, :, :, :3])
    assert table.peek(keys) == 3
    table.insert(keys, kv[:, :, :, 3:], offset=3)
    assert table.peek(keys) == 6 and table.stored_tokens() == 6
    table.clear()
    table.insert(keys, kv[:, :, :, 3:], offset=3)
    assert table.peek(keys) == 0 and table.stored_bytes() == 0
    with pytest.raises(ValueError, match="entries"):
        table.insert(keys, kv[:, :, :, 1:])


def test_clear_can_keep_the_pinned_prefixes_and_drops_everything_past_them() -> None:
    """`clear(keep_pinned=True)` keeps the pinned prefixes (few-shot exemplars, per plan) with their entries and drops
    the rest, whether a prefix ends inside an edge or at a branch; a kept entry is the one stored, not a neighbour's;
    a pinned prefix no longer stored whole is forgotten, and a plain `clear()` drops the pins too."""
    table = ContextCache()
    kv = torch.arange(2 * 2 * 1 * 9 * 4, dtype=torch.float32).reshape(2, 2, 1, 9, 4)
    first = [(t, 0) for t in (1, 2, 3, 4, 5, 6)]
    second = [(t, 0) for t in (1, 2, 3, 4, 7, 8, 9, 10, 11)]
    other_plan = [(t, 1) for t in (1, 2, 3)]
    table.insert(first, kv[:, :, :, :6])
    table.insert(second, kv)  # shares 4 tokens with `first`: stored once
    table.insert(other_plan, kv[:, :, :, :3])
    full = table.stored_bytes()
    table.pin(second[:3])  # ends inside the shared edge
    table.pin(other_plan[:2])
    table.clear(keep_pinned=True)
    assert table.peek(first) == 3 and table.peek(second) == 3 and table.peek(other_plan) == 2
    assert table.stored_tokens() == 3 + 2 and 0 < table.stored_bytes() < full
    assert torch.equal(table.match(second).kv, kv[:, :, :, :3])
    assert torch.equal(table.match(other_plan).kv, kv[:, :, :, :2])
    table.insert(second, kv)
    table.insert(first, kv[:, :, :, :6])
    table.pin(first[:4])  # at the branch: both continuations go
    table.pin([(t, 0) for t in (1, 2, 9)])  # never stored whole: forgotten
    table.clear(keep_pinned=True)
    assert table.peek(first) == 4 and table.peek(second) == 4 and table.peek(other_plan) == 2
    assert torch.equal(table.match(first).kv, kv[:, :, :, :4])
    table.clear(keep_pinned=True)
    assert table.stored_tokens() == 4 + 2, "the kept prefixes stay pinned"
    table.clear()
    assert table.stored_tokens() == 0 and table.stored_bytes() == 0
    table.insert(second, kv)
    table.clear(keep_pinned=True)
    assert table.stored_tokens() == 0, "a plain clear() dropped the pins"


def test_a_plain_call_can_store_what_later_calls_continue(tiny_model: LoadedModel) -> None:
    """`store_to`: the first stage runs as a plain call (its outputs are those of the call without the table, token
    for token) and stores its prompt and output; the later stages continue them through the context cache and
    match the per-segment recompute of the whole sequence, prefilling only their header."""
    table = ContextCache()
    plans = [SkipPlan(mlp=[1, 3]), PLANS[1], PLANS[2]]  # the stored stage skips no attention layer
    prompts = [tiny_model.encode(PREFIX) + tiny_model.encode(q + HEADERS[0]) for q in QUESTIONS]
    prefix = tiny_model.encode(PREFIX)
    first = generate(tiny_model, prompts, plan=plans[0], config=CONFIG, shared_prefix=prefix, store_to=table)
    plain = generate(tiny_model, prompts, plan=plans[0], config=CONFIG, shared_prefix=prefix)
    assert [r.token_ids for r in first] == [r.token_ids for r in plain]
    assert [r.confidences for r in first] == [r.confidences for r in plain]
    token_plans = [[plans[0]] * (len(p) + len(r.token_ids)) for p, r in zip(prompts, first)]
    prompts = [p + r.token_ids for p, r in zip(prompts, first)]
    outputs: list[list[list[int]]] = [[r.token_ids] for r in first]
    for header, plan in zip(HEADERS[1:], plans[1:]):
        prompts = [p + tiny_model.encode(header) for p in prompts]
        runs = [_runs(tp) for tp in token_plans]
        done = generate(tiny_model, prompts, plan=plan, config=CONFIG, context_cache=table, prompt_plans=runs,
                        shared_prefix=prefix)
        for i, result in enumerate(done):
            assert result.prompt_tokens - result.reused_tokens <= len(tiny_model.encode(header)) + 1
            outputs[i].append(result.token_ids)
            token_plans[i] += [plan] * (len(prompts[i]) - len(token_plans[i]))
            if header != HEADERS[-1]:
                prompts[i] = prompts[i] + result.token_ids
                token_plans[i] += [plan] * len(result.token_ids)
    with torch.inference_mode():
        _check_against_reference(
            tiny_model, prompts, token_plans, outputs, plans,
            lambda seq, per_token: segment_logits(tiny_model.view, torch.tensor(seq), per_token),
        )


def test_store_to_rejects_what_it_cannot_store(tiny_model: LoadedModel) -> None:
    prompt = tiny_model.encode(PREFIX + QUESTIONS[0])
    with pytest.raises(InvalidInputError, match="skips no attention layer"):
        generate(tiny_model, [prompt], plan=SkipPlan(attention=[1]), config=CONFIG, store_to=ContextCache())
    with pytest.raises(InvalidInputError, match="not both"):
        generate(tiny_model, [prompt], config=CONFIG, store_to=ContextCache(), context_cache=ContextCache())
