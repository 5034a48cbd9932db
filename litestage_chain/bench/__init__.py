"""Benchmark harness: LiteStage against layer-skipping baselines on the same engine, prompts and questions.

`litestage bench` (`litestage_chain.cli.bench`) runs every method point over a benchmark, interleaved per question
batch and resumable, and writes a results table with Wilson intervals and same-run speedups, plus plots.
"""
