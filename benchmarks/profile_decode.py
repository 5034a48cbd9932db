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
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain import GenerationConfig, SkipPlan, generate, load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="smollm2-135m")
    parser.add_argument("--weights", default="int4")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.source, weights=args.weights)
    prompt = [lm.render_chat([{"role": "user", "content": "Write a Python function that checks for primes."}])]
    config = GenerationConfig(max_new_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    generate(lm, prompt, SkipPlan(), config)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = generate(lm, prompt, SkipPlan(), config)[0]
    per_token_ms = 1000 * result.decode_seconds / max(1, result.generated_tokens - 1)
    print(f"{args.source} {args.weights}: {result.generated_tokens} tokens, decode {per_token_ms:.1f} ms/token "
          f"under the profiler, threads {torch.get_num_threads()}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
