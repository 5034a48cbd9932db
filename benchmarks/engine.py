"""Decode speed of the engine against transformers' `generate`, with and without layer skipping.

Run:  .venv/bin/python benchmarks/engine.py [--model smollm2-135m] [--tokens 64] [--runs 5]

Every method decodes the same chat prompts to exactly `--tokens` new tokens (EOS ignored), greedy, on the CPU.
Methods are interleaved round by round (not one after another), so machine noise hits all of them alike; the
figures are medians over runs. Decode tokens/s excludes the prefill: for `generate` the prefill time is measured
separately (a 1-token `generate`) and subtracted.

Skip plans take sub-layers in a fixed order: most redundant first by the residual cosine similarity measured on the
first prompt. The "expected" column is the issue's floor: 0.8 / (1 - f * s), where f is the fraction of layer weight
bytes skipped and s the share of a full decode step spent in the layers (1 - time of a step that skips everything /
time of a full step).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from litestage_chain import (
    GenerationConfig,
    LoadedModel,
    SkipPlan,
    generate,
    load_model,
    sublayer_similarity,
)

PROMPTS = [
    "Tell me a story about a dragon who learns to bake bread.",
    "Explain why the sky is blue to a ten year old.",
    "List some good habits for staying healthy and say why each helps.",
]


def ranked_sublayers(model: LoadedModel, prompt_ids: list[int]) -> list[tuple[int, str]]:
    sims = sublayer_similarity(model, prompt_ids)
    pairs = [(float(sims[layer, col]), layer, kind) for layer in range(model.num_layers) for col, kind in enumerate(("attention", "mlp"))]
    return [(layer, kind) for _, layer, kind in sorted(pairs, reverse=True)]


def sublayer_bytes(model: LoadedModel, layer: int, kind: str) -> int:
    parts = model.view.attention[layer] if kind == "attention" else model.view.mlp[layer]
    modules = (parts.qkv, parts.o_proj) if kind == "attention" else (parts.gate_up, parts.down_proj)
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def engine_rate(model: LoadedModel, prompts: list[list[int]], plan: SkipPlan, tokens: int) -> float:
    config = GenerationConfig(max_new_tokens=tokens, ignore_eos=True)
    results = [generate(model, [ids], plan=plan, config=config)[0] for ids in prompts]
    return sum(r.generated_tokens for r in results) / sum(r.decode_seconds for r in results)


def hf_rate(model: LoadedModel, prompts: list[list[int]], tokens: int) -> float:
    decode_seconds = 0.0
    for ids in prompts:
        x = torch.tensor([ids])
        mask = torch.ones_like(x)
        with torch.inference_mode():
            start = time.perf_counter()
            model.model.generate(x, attention_mask=mask, max_new_tokens=1, do_sample=False)
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            model.model.generate(
                x, attention_mask=mask, max_new_tokens=tokens + 1, min_new_tokens=tokens + 1, do_sample=False
            )
            decode_seconds += time.perf_counter() - start - prefill
    return tokens * len(prompts) / decode_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    model = load_model(args.model)
    prompts = [model.encode(model.render_chat([{"role": "user", "content": p}])) for p in PROMPTS]
    order = ranked_sublayers(model, prompts[0])
    total_bytes = sum(sublayer_bytes(model, layer, kind) for layer, kind in order)
    plans: dict[str, tuple[SkipPlan, float]] = {"engine, empty plan": (SkipPlan(), 0.0)}
    for fraction in (0.10, 0.25, 0.50):
        chosen, skipped_bytes = [], 0
        for layer, kind in order:
            if skipped_bytes >= fraction * total_bytes:
                break
            chosen.append((layer, kind))
            skipped_bytes += sublayer_bytes(model, layer, kind)
        plans[f"engine, skip {fraction:.0%} of layer weights"] = (SkipPlan.from_sublayers(chosen), skipped_bytes / total_bytes)
    everything = SkipPlan(attention=range(model.num_layers), mlp=range(model.num_layers))

    methods: dict[str, Callable[[], float]] = {"transformers generate": lambda: hf_rate(model, prompts, args.tokens)}
    for name, (plan, _) in plans.items():
        methods[name] = lambda plan=plan: engine_rate(model, prompts, plan, args.tokens)
    methods["(every sub-layer skipped)"] = lambda: engine_rate(model, prompts, everything, args.tokens)

    for method in methods.values():  # warm-up
        method()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.runs):
        for name, method in methods.items():
            samples[name].append(method())
    median = {name: statistics.median(values) for name, values in samples.items()}
    layer_share = 1.0 - median["engine, empty plan"] / median["(every sub-layer skipped)"]

    print(f"model {args.model}, {args.tokens} new tokens x {len(PROMPTS)} prompts, {args.runs} runs, "
          f"torch threads {torch.get_num_threads()}; share of a decode step in the layers s = {layer_share:.2f}")
    print("| method | sub-layers skipped | weight fraction f | decode tok/s (median) | vs generate | vs empty plan | floor 0.8/(1-f*s) |")
    print("|---|---|---|---|---|---|---|")
    base, empty = median["transformers generate"], median["engine, empty plan"]
    print(f"| transformers generate | 0 | 0 | {base:.1f} | 1.00x | | |")
    for name, (plan, fraction) in plans.items():
        rate = median[name]
        floor = 0.8 / (1 - fraction * layer_share)
        print(f"| {name} | {plan.num_skipped} | {fraction:.2f} | {rate:.1f} | {rate / base:.2f}x | {rate / empty:.2f}x | {floor:.2f}x |")
    print(f"| every sub-layer skipped | {2 * model.num_layers} | 1.00 | {median['(every sub-layer skipped)']:.1f} | | | |")


if __name__ == "__main__":
    main()
