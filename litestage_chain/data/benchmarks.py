"""Benchmark-level entry points: which file or hub split to read, and which split serves which purpose.

Searching uses seeded slices of the *train* split; reporting uses the *dev* split. Keeping that
rule in one place stops a search from ever being tuned on the questions it is reported on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from .hub import load_hub
from .jsonl import load_jsonl
from .slices import seeded_slice
from .types import DataError, QuestionSet

BENCHMARKS: tuple[str, ...] = ("csqa", "obqa", "strategyqa")
DATA_DIR_ENV = "LITESTAGE_DATA_DIR"
Source = Literal["jsonl", "hub"]


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """`data_dir`, else $LITESTAGE_DATA_DIR; the folder holding `<benchmark>/<split>.jsonl`."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if chosen is None:
        raise DataError(
            f"no data folder given: pass data_dir=... or set ${DATA_DIR_ENV} to the folder holding "
            "<benchmark>/<split>.jsonl (e.g. csqa/train.jsonl)"
        )
    path = Path(chosen)
    if not path.is_dir():
        raise DataError(f"data folder does not exist: {path}")
    return path


def load_benchmark(
    benchmark: str,
    split: str,
    *,
    source: Source = "jsonl",
    data_dir: str | Path | None = None,
    strict: bool = False,
    require_answer: bool = True,
) -> QuestionSet:
    """Load one split of a benchmark from the JSONL files (`data_dir/<benchmark>/<split>.jsonl`) or the hub."""
    if benchmark not in BENCHMARKS:
        raise DataError(f"unknown benchmark {benchmark!r}; known: {list(BENCHMARKS)}")
    if source == "hub":
        return load_hub(benchmark, split, strict=strict, require_answer=require_answer)
    if source != "jsonl":
        raise DataError(f"unknown source {source!r}; use 'jsonl' or 'hub'")
    file = resolve_data_dir(data_dir) / benchmark / f"{split}.jsonl"
    if not file.is_file():
        available = sorted(p.stem for p in file.parent.glob("*.jsonl")) if file.parent.is_dir() else []
        raise DataError(f"no {split!r} split for {benchmark}: {file} not found (available: {available})")
    return load_jsonl(file, benchmark=benchmark, split=split, strict=strict, require_answer=require_answer)


def search_questions(
    benchmark: str,
    size: int,
    *,
    seed: int = 0,
    source: Source = "jsonl",
    data_dir: str | Path | None = None,
    strict: bool = False,
    require_answer: bool = True,
) -> QuestionSet:
    """The validation slice a budget search evaluates on: `size` seeded questions from the train split.

    `require_answer=False` keeps unlabelled questions (for the agreement metric, which needs no labels)."""
    train = load_benchmark(benchmark, "train", source=source, data_dir=data_dir, strict=strict,
                           require_answer=require_answer)
    return seeded_slice(train, size, seed=seed)


def report_questions(
    benchmark: str,
    size: int | None = None,
    *,
    seed: int = 0,
    source: Source = "jsonl",
    data_dir: str | Path | None = None,
    strict: bool = False,
) -> QuestionSet:
    """The dev split used to report results (all of it, or a seeded slice of `size`)."""
    dev = load_benchmark(benchmark, "dev", source=source, data_dir=data_dir, strict=strict)
    return dev if size is None else seeded_slice(dev, size, seed=seed)
