"""Loader for the Hugging Face `datasets` copies of the benchmarks.

`datasets` is an optional dependency and is imported only when this loader runs. Each hub row is
first mapped to the normalised JSONL schema, then validated by the same code as the JSONL files, so a
question looks the same whichever source it came from.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .rows import RowCollector
from .types import DataError, QuestionSet

STRATEGYQA_CHOICES = [{"label": "A", "text": "yes"}, {"label": "B", "text": "no"}]


def _choices_from_columns(choices: Any) -> Any:
    """`datasets` stores choices column-wise ({"label": [...], "text": [...]}); turn them into rows."""
    if isinstance(choices, Mapping) and "label" in choices and "text" in choices:
        labels, texts = list(choices["label"]), list(choices["text"])
        if len(labels) != len(texts):
            return choices  # left malformed on purpose: validation reports it
        return [{"label": label, "text": text} for label, text in zip(labels, texts, strict=True)]
    return choices


def csqa_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """tau/commonsense_qa: id, question, question_concept, choices{label,text}, answerKey ("" on test)."""
    return {
        "id": row.get("id"),
        "question": row.get("question"),
        "choices": _choices_from_columns(row.get("choices")),
        "answer": row.get("answerKey"),
        "question_concept": row.get("question_concept"),
    }


def obqa_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """allenai/openbookqa "main": id, question_stem, choices{text,label}, answerKey."""
    return {
        "id": row.get("id"),
        "question": row.get("question_stem"),
        "choices": _choices_from_columns(row.get("choices")),
        "answer": row.get("answerKey"),
    }


def strategyqa_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """StrategyQA mirrors: qid, question, answer (bool), term, description, facts, decomposition.

    Mapped like the JSONL files: true -> "A" (yes), false -> "B" (no). A missing or non-boolean
    answer is left as-is so validation reports it rather than guessing.
    """
    answer = row.get("answer")
    if answer is True:
        answer = "A"
    elif answer is False:
        answer = "B"
    elif answer is not None:
        answer = f"<not a boolean: {answer!r}>"
    normalised: dict[str, Any] = {
        "id": row.get("qid", row.get("id")),
        "question": row.get("question"),
        "choices": STRATEGYQA_CHOICES,
        "answer": answer,
    }
    for key in ("term", "description", "facts", "decomposition"):
        if key in row:
            normalised[key] = row[key]
    return normalised


@dataclass(frozen=True)
class HubSource:
    """Where a benchmark lives on the hub and how its rows map to the normalised schema."""

    repo: str
    config: str | None
    splits: Mapping[str, str]  # our split name -> the hub's split name
    convert: Callable[[Mapping[str, Any]], dict[str, Any]]
    note: str = field(default="")


HUB_SOURCES: dict[str, HubSource] = {
    "csqa": HubSource("tau/commonsense_qa", None, {"train": "train", "dev": "validation", "test": "test"}, csqa_row,
                      note="test split has no labels"),
    "obqa": HubSource("allenai/openbookqa", "main", {"train": "train", "dev": "validation", "test": "test"}, obqa_row),
    "strategyqa": HubSource("ChilleD/StrategyQA", None, {"train": "train", "dev": "test"}, strategyqa_row,
                            note="a different train/test split of the 2290 labelled questions than the JSONL files"),
}


def _import_datasets() -> Any:
    try:
        return importlib.import_module("datasets")
    except ImportError as error:
        raise DataError(
            "loading from the Hugging Face hub needs the `datasets` package (pip install datasets); "
            "or load the JSONL files with source='jsonl'"
        ) from error


def load_hub(
    benchmark: str,
    split: str,
    *,
    strict: bool = False,
    require_answer: bool = True,
    source: HubSource | None = None,
    cache_dir: str | None = None,
) -> QuestionSet:
    """Load `benchmark`'s `split` ("train", "dev" or, where the hub has it, "test") through `datasets`.

    Raises DataError when `datasets` is not installed, the hub cannot be reached, or the split is
    unknown. Refused rows are reported as in `load_jsonl` (line = 1-based row index in the hub split).
    """
    if source is None:
        if benchmark not in HUB_SOURCES:
            raise DataError(f"no hub source known for benchmark {benchmark!r}; known: {sorted(HUB_SOURCES)}")
        source = HUB_SOURCES[benchmark]
    if split not in source.splits:
        raise DataError(f"{source.repo} has no split {split!r} here; available: {sorted(source.splits)}")
    datasets = _import_datasets()
    hub_split = source.splits[split]
    where = f"hub:{source.repo}" + (f"/{source.config}" if source.config else "") + f"[{hub_split}]"
    try:
        rows = datasets.load_dataset(source.repo, source.config, split=hub_split, cache_dir=cache_dir)
    except Exception as error:  # network, auth, missing dataset: all mean "use the files instead"
        raise DataError(
            f"could not load {where} ({type(error).__name__}: {error}); "
            "the hub may be unreachable: load the JSONL files with source='jsonl' and data_dir=..."
        ) from error
    collector = RowCollector(benchmark=benchmark, split=split, source=where, require_answer=require_answer)
    collector.add_rows((index + 1, source.convert(row)) for index, row in enumerate(rows))
    result = collector.finish(strict=strict)
    if result.report.issues:
        warnings.warn(result.report.summary(), stacklevel=2)
    return result
