"""Benchmark harness: LiteStage against layer-skipping baselines on the same engine, prompts and questions.

`litestage bench` (see `cli.add_bench_subcommand`) runs every method point over a benchmark, interleaved per
question batch and resumable, and writes a results table with Wilson intervals and same-run speedups, plus plots.
"""

from litestage_chain.cli.bench import add_bench_subcommand

__all__ = ["add_bench_subcommand"]
