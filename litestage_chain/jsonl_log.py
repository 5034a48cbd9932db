"""Append-only JSONL logs that several processes may write and that repair themselves when read.

Why: the search log and the benchmark records make long runs resumable, so losing or refusing them costs hours.
Appends take a writer lock (`cache_files.locked`, released when its owner dies) and go out as one write, flushed and
fsynced, so two processes appending at once never interleave inside a line. What a crash or an older writer can
still leave is repaired on reading, and nothing is thrown away:

- a partial last line (the process died mid-write) is cut off;
- any other unreadable line (torn, invalid UTF-8, not a valid record) is moved to `<log>.damaged` and the log is
  rewritten without it; the run then simply measures that entry again.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from litestage_chain.cache_files import locked

T = TypeVar("T")


def _lock_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def damaged_path(path: Path) -> Path:
    """Where unreadable lines of `path` are set aside."""
    return path.with_name(path.name + ".damaged")


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append complete lines (without their newline) to `path` under the writer lock, in one fsynced write."""
    payload = "".join(line + "\n" for line in lines).encode("utf-8")
    if not payload:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(_lock_of(path)):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


def read_lines(path: Path, parse: Callable[[bytes], T], what: str) -> list[T]:
    """Every readable record of `path`, parsed by `parse` (which raises on a bad line), repairing the file.

    `what` names a record in the warnings ("result record", "benchmark record").
    """
    with locked(_lock_of(path)):  # no writer appends while the file is read and, if need be, rewritten
        data = path.read_bytes()
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
                stacklevel=3,
            )
        if damaged:
            _set_aside(path, damaged, kept, what)
        elif partial.strip():
            with path.open("r+b") as handle:
                handle.truncate(len(data) - len(partial))
    return records


def _set_aside(path: Path, damaged: list[tuple[int, bytes, str]], kept: list[bytes], what: str) -> None:
    """Move damaged lines to the `.damaged` file, then replace the log by its readable lines (atomically)."""
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
        stacklevel=4,
    )
