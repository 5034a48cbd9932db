"""End-to-end A/B of a kernel change: batched greedy decoding through the current kernels and another build.

Why: `kernel_rows.py` times the projections alone; what a user sees is a whole decode step (attention, norms, the
output head, the Python loop). One process loads the model once and alternates, run by run, between the current
`cpu_gemv.cpp` and a baseline version of it, so machine noise hits both alike; medians are reported.

    git show HEAD~1:litestage_chain/engine/quant/csrc/cpu_gemv.cpp > /tmp/cpu_gemv_before.cpp
    python benchmarks/kernel_ab.py --baseline-source /tmp/cpu_gemv_before.cpp --model qwen2.5-coder-1.5b \
        --batch 8 --tokens 32 --runs 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import PROMPTS as ENGINE_PROMPTS  # noqa: E402
from kernel_rows import build_baseline  # noqa: E402

from litestage_chain import GenerationConfig, generate, load_model  # noqa: E402
from litestage_chain.engine.quant import formats, kernels  # noqa: E402

PROMPTS = [  # the engine benchmark's prompts, and more so that a batch of 8 holds different ones
    *ENGINE_PROMPTS,
    "What should I pack for a week of hiking in the mountains?",
    "Describe how a bicycle works.",
    "Why do cats purr?",
    "Give me three ideas for a birthday party.",
    "How do plants make food from sunlight?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-source", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--weights", default="int4", choices=["int4", "int8"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    builds = {"current": kernels.get_kernels(), "baseline": build_baseline(args.baseline_source)}
    if builds["current"] is None or builds["current"].kernel_isa() != "avx512_vnni":
        sys.exit("needs the compiled AVX-512 VNNI kernels")
    model = load_model(args.model, weights=args.weights)
    config = GenerationConfig(max_new_tokens=args.tokens, ignore_eos=True)
    print(f"{args.model} {args.weights}, {args.tokens} tokens, {args.threads} thread(s), medians of {args.runs} runs")
    for batch in args.batch:
        prompts = [model.render_chat([{"role": "user", "content": p}]) for p in (PROMPTS * 4)[:batch]]
        decode: dict[str, list[float]] = {name: [] for name in builds}
        outputs: dict[str, list[list[int]]] = {}
        for run in range(args.runs + 1):  # run 0 warms both up and is not counted
            for name, module in builds.items():
                formats._fast[:] = [module, None]  # this build at every row count
                results = generate(model, prompts, config=config)
                if run:
                    decode[name].append(max(r.decode_seconds for r in results))
                outputs[name] = [r.token_ids for r in results]
        current, baseline = (statistics.median(decode[n]) for n in ("current", "baseline"))
        same = outputs["current"] == outputs["baseline"]
        print(f"batch {batch}: decode {current:.2f} s (current) vs {baseline:.2f} s (baseline): "
              f"{baseline / current:.2f}x; same tokens: {same}")
    formats._fast.clear()


if __name__ == "__main__":
    main()
