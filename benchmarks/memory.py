"""Resident memory of a loaded model per weight format: one fresh process per format.

Why separate processes: freed memory is not always returned to the OS, so only a fresh process per format gives a
clean number. Reported per format: RSS after loading, RSS after generating 32 tokens (the steady state a chat model
runs in: weights, KV cache, kernel buffers), and the process peak (ru_maxrss, which includes the float32
checkpoint pages read while a cached conversion is loaded and the float32 copies are released).

    python benchmarks/memory.py --source qwen2.5-coder-1.5b --formats float32,int8,int4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()


def rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def measure(source: str, fmt: str) -> dict[str, float]:
    """Runs inside the child process."""
    import gc

    import torch

    sys.path.insert(0, str(HERE.parent.parent))
    from litestage_chain import GenerationConfig, generate, load_model

    torch.set_num_threads(1)
    lm = load_model(source, weights=fmt)
    gc.collect()
    loaded = rss_gb()
    prompt = lm.render_chat([{"role": "user", "content": "Write a Python function that checks for primes."}])
    generate(lm, [prompt], config=GenerationConfig(max_new_tokens=32, temperature=0.0, ignore_eos=True))
    return {"after_load_gb": loaded, "after_generate_gb": rss_gb(),
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="smollm2-135m")
    parser.add_argument("--formats", default="float32,bfloat16,int8,int4")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.source, args.child)))
        return
    rows = {}
    for fmt in args.formats.split(","):
        done = subprocess.run([sys.executable, str(HERE), "--source", args.source, "--child", fmt],
                              check=True, capture_output=True, text=True)
        rows[fmt] = json.loads(done.stdout.strip().splitlines()[-1])
    base = rows.get("float32")
    print(f"model {args.source}")
    print("| format | RSS after load GB | RSS after generating GB | vs float32 | peak GB | vs float32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for fmt, r in rows.items():
        steady = f"{r['after_generate_gb'] / base['after_generate_gb']:.0%}" if base else "-"
        peak = f"{r['peak_gb'] / base['peak_gb']:.0%}" if base else "-"
        print(f"| {fmt} | {r['after_load_gb']:.2f} | {r['after_generate_gb']:.2f} | {steady} | {r['peak_gb']:.2f} | "
              f"{peak} |")


if __name__ == "__main__":
    main()
