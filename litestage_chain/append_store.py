"""`AppendStore`: records keyed by a content hash, kept in an append-only JSONL file so that long runs resume.

The budget search logs every evaluated candidate and the benchmark harness every measured question; both runs take
hours and may be killed at any moment, and losing or refusing the file costs those hours. One mechanism serves both:

- appends lock the file itself (`cache_files.locked_open`, released when its owner dies) and go out as one write,
  flushed and fsynced, so two processes appending at once never interleave inside a line;
- reopening the file reads every record back and repairs what a crash or an older writer left, losing nothing: a
  partial last line (the process died mid-write) is cut off; any other unreadable line (torn, invalid UTF-8, not a
  valid record) is moved to `<file>.damaged` with a warning naming its line, and its entry is simply measured again.

Keys are `content_key` of what identifies a record, so a changed model, setting or question never serves a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from litestage_chain.cache_files import locked_open
from litestage_chain.errors import LiteStageError

R = TypeVar("R")
T = TypeVar("T")


def content_key(payload: Any) -> str:
    """sha256 of the canonical JSON of `payload` (sorted keys, no spaces): equal content, equal key."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class AppendStore(Generic[R]):
    """Records by key, appended to `path` (when given) as they are added; opening the file again resumes.

    `parse` turns one stored line into `(key, record)` and raises on anything else; such a line is set aside in
    `<file>.damaged` with a warning naming the file and line (see the module docstring). A file that cannot be
    read or repaired at all raises `error` naming it.
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
        try:
            lines = read_lines(path, self._parse, self._what)
        except OSError as error:  # a folder where the file should be, no permission: say which file
            raise self._error(f"cannot read or repair {path}: {error.strerror or error}") from error
        for key, record in lines:
            self._records[key] = record

    def append(self, entries: Iterable[tuple[str, R, str]]) -> None:
        """Keep each `(key, record, line)` and append the lines to the file before returning (locked, fsynced)."""
        batch = list(entries)
        for key, record, _ in batch:
            self._records[key] = record
        if self.path is not None and batch:
            append_lines(self.path, [line for _, _, line in batch])


def damaged_path(path: Path) -> Path:
    """Where unreadable lines of `path` are set aside."""
    return path.with_name(path.name + ".damaged")


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append complete lines (without their newline) to `path` under the writer lock, in one fsynced write."""
    payload = "".join(line + "\n" for line in lines).encode("utf-8")
    if not payload:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked_open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) as fd:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)


def read_lines(path: Path, parse: Callable[[bytes], T], what: str) -> list[T]:
    """Every readable record of `path`, parsed by `parse` (which raises on a bad line), repairing the file.

    `what` names a record in the warnings ("result record", "benchmark record").
    """
    with locked_open(path, os.O_RDONLY) as fd:  # no writer appends while the file is read and, if need be, rewritten
        data = _read_all(fd)
        *complete, partial = data.split(b"\n")  # after the last newline: empty, or a partial record
        records: list[T] = []
        kept: list[bytes] = []
        damaged: list[tuple[int, bytes, str]] = []
        for number, raw in enumerate(complete, start=1):
            if not raw.strip():
                continue
            try:
                records.append(parse(raw))
            except Exception as error:  # noqa: BLE001 - any unreadable line is set aside, whatever the parser raised
                damaged.append((number, raw, f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"))
                continue
            kept.append(raw)
        if partial.strip():
            warnings.warn(
                f"{path}: dropping a partial last record ({len(partial)} bytes), left by an interrupted write",
                stacklevel=4,
            )
        if damaged:
            _set_aside(path, damaged, kept, what)
        elif partial.strip():
            with path.open("r+b") as handle:
                handle.truncate(len(data) - len(partial))
    return records


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _set_aside(path: Path, damaged: list[tuple[int, bytes, str]], kept: list[bytes], what: str) -> None:
    """Move damaged lines to the `.damaged` file, then replace the file by its readable lines (atomically)."""
    aside = damaged_path(path)
    with aside.open("ab") as handle:
        for _, raw, _ in damaged:
            handle.write(raw + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as handle:
            handle.write(b"".join(raw + b"\n" for raw in kept))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    first = damaged[0]
    warnings.warn(
        f"{path}: {len(damaged)} unreadable {what}(s) (line {', '.join(str(n) for n, _, _ in damaged[:5])}"
        f"{', ...' if len(damaged) > 5 else ''}; line {first[0]}: {first[2]}) moved to {aside}; "
        "they will be measured again",
        stacklevel=5,
    )
