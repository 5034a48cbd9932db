"""`AppendStore`: records keyed by a content hash, kept in an append-only JSONL file so that long runs resume.

The budget search logs every evaluated candidate and the benchmark harness every measured question; both runs take
hours and may be killed at any moment. One mechanism serves both: each append is flushed and fsynced before it
returns, reopening the file reads every record back, and a crash can at worst leave a partial last line, which is
reported and cut off. Keys are `content_key` of what identifies a record, so a changed model, setting or question
never serves a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from litestage_chain.errors import LiteStageError

R = TypeVar("R")


def content_key(payload: Any) -> str:
    """sha256 of the canonical JSON of `payload` (sorted keys, no spaces): equal content, equal key."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class AppendStore(Generic[R]):
    """Records by key, appended to `path` (when given) as they are added; opening the file again resumes.

    `parse` turns one stored line into `(key, record)` and raises on anything else; such a line (other than a
    partial last one) raises `error` naming the file and line, because silently dropping results would redo or,
    worse, misreport work.
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        parse: Callable[[bytes], tuple[str, R]],
        what: str,
        error: type[LiteStageError],
    ) -> None:
        self.path = Path(path) if path is not None else None
        self._parse = parse
        self._what = what
        self._error = error
        self._records: dict[str, R] = {}
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __iter__(self) -> Iterator[R]:
        return iter(self._records.values())

    def get(self, key: str) -> R | None:
        return self._records.get(key)

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        *complete, partial = data.split(b"\n")  # after the last newline: empty, or a partial record
        for number, raw in enumerate(complete, start=1):
            if not raw.strip():
                continue
            try:
                key, record = self._parse(raw)
            except Exception as error:  # whatever the parser raises, the message names file and line
                raise self._error(f"{path} line {number} is not a valid {self._what}: {error}") from error
            self._records[key] = record
        if partial.strip():
            warnings.warn(
                f"{path}: dropping a partial last record ({len(partial)} bytes), left by an interrupted write",
                stacklevel=4,
            )
            with path.open("r+b") as handle:
                handle.truncate(len(data) - len(partial))

    def append(self, entries: Iterable[tuple[str, R, str]]) -> None:
        """Keep each `(key, record, line)` and append the lines to the file before returning (flushed, fsynced)."""
        batch = list(entries)
        for key, record, _ in batch:
            self._records[key] = record
        if self.path is None or not batch:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for _, _, line in batch:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
