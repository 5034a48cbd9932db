"""The skipping engine computes exactly what it should: transformers' own output with no skips, and the same
tokens with or without the KV cache under any plan."""

from __future__ import annotations

import torch

from litestage_chain import GenerationConfig, LoadedModel, SkipPlan, generate
from litestage_chain.engine.forward import all_logits

PROMPTS = ["The quick brown fox", "Question: what is 2+2?\nAnswer:"]


def test_empty_plan_matches_transformers_generate(tiny_model: LoadedModel) -> None:
    for prompt in PROMPTS:
        ids = tiny_model.encode(prompt)
        ours = generate(tiny_model, [ids], config=GenerationConfig(max_new_tokens=24))[0]
        reference = tiny_model.model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=sorted(tiny_model.eos_token_ids),
            pad_token_id=tiny_model.pad_token_id,
        )[0, len(ids) :].tolist()
        assert ours.token_ids == reference


def _assert_cache_matches_recompute(model: LoadedModel, plan: SkipPlan) -> None:
    ids = model.encode(PROMPTS[1])
    # ignore_eos: a random model may pick EOS early under some plan, which would prove nothing
    result = generate(model, [ids], plan=plan, config=GenerationConfig(max_new_tokens=20, ignore_eos=True))[0]
    assert result.generated_tokens >= 5, "too short to prove anything"
    sequence = torch.tensor(ids + result.token_ids)
    recomputed = all_logits(model.view, sequence, plan)[len(ids) - 1 : -1].argmax(dim=-1).tolist()
    assert result.token_ids == recomputed


def test_cached_decoding_matches_recompute_with_layer0_attention_skipped(tiny_model: LoadedModel) -> None:
    _assert_cache_matches_recompute(tiny_model, SkipPlan(attention=[0, 2], mlp=[1]))


def test_cached_decoding_matches_recompute_under_various_plans(tiny_model: LoadedModel) -> None:
    for plan in [SkipPlan(), SkipPlan(attention=[3]), SkipPlan(mlp=[0, 3]), SkipPlan(attention=[0, 1, 2, 3])]:
        _assert_cache_matches_recompute(tiny_model, plan)


def test_a_plan_changes_the_output(tiny_model: LoadedModel) -> None:
    """Guards the tests above against a plan that is silently ignored."""
    ids = tiny_model.encode(PROMPTS[0])
    config = GenerationConfig(max_new_tokens=16)
    full = generate(tiny_model, [ids], config=config)[0]
    skipped = generate(tiny_model, [ids], plan=SkipPlan(attention=[0, 1], mlp=[0, 1]), config=config)[0]
    assert full.token_ids != skipped.token_ids


def test_batched_left_padding_matches_single_prompts(tiny_model: LoadedModel) -> None:
    plan = SkipPlan(attention=[1], mlp=[2])
    config = GenerationConfig(max_new_tokens=12)
    prompts = ["a", "A much longer prompt than the first one", "middle size"]
    alone = [generate(tiny_model, [p], plan=plan, config=config)[0].token_ids for p in prompts]
    together = [r.token_ids for r in generate(tiny_model, prompts, plan=plan, config=config)]
    assert together == alone


def test_result_reports_counts_timings_and_plan(tiny_model: LoadedModel) -> None:
    plan = SkipPlan(mlp=[1])
    result = generate(tiny_model, ["hello"], plan=plan, config=GenerationConfig(max_new_tokens=5))[0]
    assert result.prompt_tokens == len(tiny_model.encode("hello"))
    assert result.generated_tokens == len(result.token_ids) == len(result.confidences) == 5
    assert all(0.0 < c <= 1.0 for c in result.confidences)
    assert result.prefill_seconds > 0 and result.decode_seconds > 0
    assert result.plan == plan and result.finish_reason == "length" and not result.early_exited
