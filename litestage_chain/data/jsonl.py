"""Loader for the normalised JSONL benchmark files (one question object per line)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from .rows import RowCollector
from .types import DataError, QuestionSet, RowIssue

_BOM = b"\xef\xbb\xbf"


def load_jsonl(
    path: str | Path,
    *,
    benchmark: str,
    split: str | None = None,
    strict: bool = False,
    require_answer: bool = True,
) -> QuestionSet:
    """Read `path` into a QuestionSet.

    Every refused row (malformed JSON, missing answer, answer not among the choices, fewer than two
    choices, duplicate id, ...) is listed in `result.report.issues` with its line number and id, and a
    warning is emitted; with `strict=True` a DataError listing them is raised instead. Blank lines are
    skipped; a UTF-8 byte-order mark at the start is ignored. `require_answer=False` accepts unlabelled rows (answer None).
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data file not found: {file}")
    collector = RowCollector(
        benchmark=benchmark,
        split=split if split is not None else file.stem,
        source=str(file),
        require_answer=require_answer,
    )
    with file.open("rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line_number == 1 and line.startswith(_BOM):  # editors on Windows save UTF-8 with a byte-order mark
                line = line[len(_BOM) :]
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:  # one bad byte refuses its row, not the whole file
                collector.add_issue(RowIssue(line=line_number, id=None, problem=f"invalid UTF-8 at byte {error.start + 1}"))
                continue
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as error:
                collector.add_issue(RowIssue(line=line_number, id=None, problem=f"malformed JSON: {error.msg} (column {error.colno})"))
                continue
            collector.add_row(raw, line_number)
    result = collector.finish(strict=strict)
    if result.report.issues:
        warnings.warn(result.report.summary(), stacklevel=2)
    return result
