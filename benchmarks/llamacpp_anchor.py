"""llama.cpp decode speed on the same GGUF files: the anchor the engine's numbers are read against.

Why: "fast" only means something next to the standard CPU runtime on the same machine,
weights and thread count. Runs greedy decoding of a chat prompt for a fixed number of new
tokens (EOS ignored, so every run decodes the same count), one warm-up then the median of N.

Runs in a separate environment with llama-cpp-python (it is not a project dependency):

    python3 -m venv /work/llamacpp-venv
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \\
      -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" \\
      /work/llamacpp-venv/bin/pip install llama-cpp-python==0.3.36
    /work/llamacpp-venv/bin/python benchmarks/llamacpp_anchor.py MODEL.gguf [MODEL2.gguf ...]

(-DGGML_NATIVE=OFF with explicit ISA flags: the default native build died with "Illegal
instruction" on the benchmark VM.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

PROMPT = "Write a Python function that checks whether a number is prime."


def render_prompt(llm: Llama) -> str:
    """The user message through the GGUF's own chat template, with the generation prompt."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    eos = llm.detokenize([llm.token_eos()]).decode("utf-8", "ignore")
    bos = llm.detokenize([llm.token_bos()]).decode("utf-8", "ignore") if llm.token_bos() >= 0 else ""
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
    return formatter(messages=[{"role": "user", "content": PROMPT}]).prompt


def one_run(llm: Llama, prompt_tokens: list[int], new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) for one greedy run from an empty KV cache."""
    llm.reset()
    start = time.perf_counter()
    produced = 0
    first_at = start
    for _token in llm.generate(prompt_tokens, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        produced += 1
        if produced == 1:
            first_at = time.perf_counter()
        if produced >= new_tokens:
            break
    end = time.perf_counter()
    return first_at - start, (produced - 1) / (end - first_at)


def bench(path: Path, threads: int, new_tokens: int, runs: int) -> dict[str, object]:
    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)
    prompt = render_prompt(llm)
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    one_run(llm, tokens, 8)  # warm-up: page the weights in, size the buffers
    results = [one_run(llm, tokens, new_tokens) for _ in range(runs)]
    rates = [rate for _, rate in results]
    return {
        "model": path.name,
        "threads": threads,
        "prompt_tokens": len(tokens),
        "new_tokens": new_tokens,
        "decode_tok_s_median": round(statistics.median(rates), 2),
        "decode_tok_s_runs": [round(r, 2) for r in rates],
        "prefill_s_median": round(statistics.median(p for p, _ in results), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rows = [bench(path, args.threads, args.tokens, args.runs) for path in args.gguf]
    print("| model | threads | prompt tokens | new tokens | decode tok/s (median) | runs | prefill s |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['threads']} | {r['prompt_tokens']} | {r['new_tokens']} | "
            f"{r['decode_tok_s_median']} | {r['decode_tok_s_runs']} | {r['prefill_s_median']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
