"""Visible progress for the one-time steps of a first run: assembling, converting, compiling.

The first load of a model converts its GGUF file, may compile the low-bit kernels and converts the weights to the
run format; each takes from seconds to minutes and happens once per machine. Without a word that looks like a
hang, so each such step says what it does on stderr, ticks its elapsed time while it runs (on a terminal) and
says when it is done. Steps served from the cache print nothing.
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
def first_run_step(message: str, stream: TextIO | None = None, tick_seconds: float = 1.0) -> Iterator[Step]:
    """Announce a one-time step on stderr, tick its elapsed time on a terminal, and report its end."""
    out = stream or sys.stderr
    step = Step(message, out)
    live = bool(getattr(out, "isatty", lambda: False)())
    out.write(f"litestage: {message} (first run only) ...\n" if not live else step.line())
    out.flush()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(tick_seconds):
            out.write("\r" + step.line())
            out.flush()

    ticker = threading.Thread(target=tick, daemon=True) if live else None
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
        seconds = time.perf_counter() - step.started
        prefix = "\r" + step.line() + "\n" if live else ""
        out.write(f"{prefix}litestage: {message}: {outcome} in {seconds:.0f} s\n")
        out.flush()
