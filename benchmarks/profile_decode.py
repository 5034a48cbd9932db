"""Where a decode step's time goes: torch.profiler over greedy decoding, ops sorted by self CPU time.

Why: on a small model the weights are read in a few milliseconds per token, so anything else the decode loop does
(norms, rotary, reshapes, Python) decides the speed. This prints the operators that cost the most, per format.

    python benchmarks/profile_decode.py --source smollm2-135m --weights int4 --tokens 32 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain import GenerationConfig, SkipPlan, generate, load_model  # noqa: E402
from litestage_chain.engine.quant.formats import Int4Linear, Int8Linear  # noqa: E402


def label_kernel_calls() -> None:
    """Make the compiled int8/int4 GEMV calls visible to the profiler (pybind calls are not ATen ops)."""
    for cls in (Int8Linear, Int4Linear):
        kernel = cls._kernel

        def labelled(self, kernels, x2, kernel=kernel):  # noqa: ANN001, ANN202
            with record_function(f"litestage::{type(self).__name__}_gemv"):
                return kernel(self, kernels, x2)

        cls._kernel = labelled  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="smollm2-135m")
    parser.add_argument("--weights", default="int4")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    label_kernel_calls()
    lm = load_model(args.source, weights=args.weights)
    prompt = [lm.render_chat([{"role": "user", "content": "Write a Python function that checks for primes."}])]
    config = GenerationConfig(max_new_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    generate(lm, prompt, SkipPlan(), config)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = generate(lm, prompt, SkipPlan(), config)[0]
    per_token_ms = 1000 * result.decode_seconds / max(1, result.generated_tokens - 1)
    events = prof.key_averages()
    total_ms = sum(e.self_cpu_time_total for e in events) / 1000
    print(f"{args.source} {args.weights}: {result.generated_tokens} tokens, decode {per_token_ms:.1f} ms/token "
          f"under the profiler, threads {torch.get_num_threads()}; profiled self CPU {total_ms:.0f} ms, wall "
          f"{1000 * (result.prefill_seconds + result.decode_seconds):.0f} ms (the gap: Python between ops)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
