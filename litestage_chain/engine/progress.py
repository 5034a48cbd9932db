"""Visible progress for the one-time steps of a first run: assembling, converting, compiling.

The first load of a model converts its GGUF file, may compile the low-bit kernels and converts the weights to the
run format; each takes from seconds to minutes and happens once per machine. Without a word that looks like a
hang, so each such step says what it does on stderr, ticks its elapsed time while it runs (on a terminal) and
says when it is done. Steps served from the cache print nothing; a step that may or may not have work to do (the
kernels: loading a cached build, or compiling) passes `after` and speaks only if it takes longer than that.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Step:
    """A running step; `fraction` (0..1) is shown when the step knows how far it got."""

    message: str
    stream: TextIO
    started: float = field(default_factory=time.perf_counter)
    fraction: float | None = None

    def update(self, fraction: float) -> None:
        self.fraction = min(max(fraction, 0.0), 1.0)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        done = f" {self.fraction * 100:3.0f}%" if self.fraction is not None else ""
        return f"litestage: {self.message} ...{done} {elapsed:4.0f} s"


@contextmanager
def first_run_step(
    message: str, stream: TextIO | None = None, tick_seconds: float = 1.0, after: float = 0.0
) -> Iterator[Step]:
    """Announce a one-time step on stderr (once it has run `after` seconds), tick its elapsed time on a terminal,
    and report its end."""
    out = stream or sys.stderr
    step = Step(message, out)
    live = bool(getattr(out, "isatty", lambda: False)())
    announced = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()

    def announce() -> None:
        with lock:
            out.write(step.line() if live else f"litestage: {message} (first run only) ...\n")
            out.flush()
            announced.set()

    def tick() -> None:
        if after > 0 and stop.wait(after):
            return
        if not announced.is_set():
            announce()
        while live and not stop.wait(tick_seconds):
            with lock:
                out.write("\r" + step.line())
                out.flush()

    if after <= 0:
        announce()
    ticker = threading.Thread(target=tick, daemon=True) if (live or after > 0) else None
    if ticker is not None:
        ticker.start()
    outcome = "failed"
    try:
        yield step
        outcome = "done"
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
        if announced.is_set():
            seconds = time.perf_counter() - step.started
            prefix = "\r" + step.line() + "\n" if live else ""
            out.write(f"{prefix}litestage: {message}: {outcome} in {seconds:.0f} s\n")
            out.flush()
