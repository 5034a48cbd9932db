"""One table and one accuracy-vs-speedup plot from several `litestage bench` runs over the same questions.

Kept for the runs recorded before `litestage bench --workers N` existed, which split their methods over two
processes by hand; a new run on several cores uses `--workers` and needs no combining. See
`litestage_chain/bench/combine.py` for what is checked.

    python benchmarks/combine_runs.py --out benchmarks/results/csqa-qwen-dev-combined \\
        benchmarks/results/csqa-qwen-dev benchmarks/results/csqa-qwen-dev-baselines
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from litestage_chain.bench.combine import combined_rows
from litestage_chain.bench.plots import plot_accuracy_vs_speedup, plot_tokens_vs_skipped
from litestage_chain.bench.report import write_report
from litestage_chain.errors import InvalidInputError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="`litestage bench --out` folders (first: its full row)")
    parser.add_argument("--out", required=True, type=Path, help="folder for results.json, results.md and the plots")
    args = parser.parse_args(argv)
    try:
        rows, shared, meta = combined_rows(args.folders)
    except InvalidInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    sources = ", ".join(f"`{folder}`" for folder in args.folders)
    header = (
        f"# Benchmark: {meta.get('benchmark')} ({shared} questions every point finished, model {meta.get('model')}, "
        f"{meta.get('weights')} weights)\n\nCombined from {sources}. Each speedup is against the full model measured "
        "in alternating rounds *within its own run*; all rows are over the same questions; the full model answered "
        "them identically in every run.\n\n"
    )
    stopped = [row.point for row in rows if row.dropped]
    if stopped:
        header += (
            f"**Dropped early** by their run's `--drop-worse` rule: {', '.join(stopped)}. Their n is where they "
            "stopped; their loss and speedup are over those questions, against their own run's full model.\n\n"
        )
    combined_meta = {**meta, "questions": shared, "combined_from": [str(folder) for folder in args.folders]}
    _, md_path = write_report(args.out, rows, combined_meta, intro=header)  # results.json too, for the notebook
    name = str(meta.get("benchmark"))
    plot_accuracy_vs_speedup(rows, args.out / "accuracy_vs_speedup.png", f"{name}: accuracy vs speedup ({shared} q)")
    plot_tokens_vs_skipped(rows, args.out / "tokens_vs_skipped.png", f"{name}: generated tokens vs skipped sub-layers")
    print(md_path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
