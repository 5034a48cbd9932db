"""Other cores kept decoding while plan costs are timed, so the cost model prices tokens under the load runs have.

Why: the cost model times its plans between chunk evaluations, on a quiet machine, but the runs it predicts (a side
by side check, a dev run) keep every core busy with one process each. Cores share caches and memory bandwidth, so on
some machines the load could price prefill and decoding differently; timing under the same load rules that out
instead of guessing. (On the 2-core AMD EPYC the benchmarks ran on it did not: a second decoding process moved the
full model's prices by under 2%, and OBQA's prediction miss had another cause, benchmarks/README.md section 2.)

`BusyCores` starts `count` processes that load the same model and decode batches in a loop. They are paused
(SIGSTOP) except while a timing runs (`running()`), so they never slow the search's own evaluations. POSIX only:
pausing a process needs its signals.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO

import torch

from litestage_chain.engine.generation import GenerationConfig, generate
from litestage_chain.engine.loading import load_model
from litestage_chain.errors import InvalidInputError, LiteStageError

READY = "ready"


class BusyCoresError(LiteStageError):
    """A load process could not start, or stopped while it was needed."""


class BusyCores:
    """`count` load processes running `command`, paused except inside `running()`; a context manager.

    `command` must print one line "ready" on stdout once it is loaded and warm, then keep the CPU busy until it is
    killed (`busy_command` builds the engine's). `label` names the load in the cost model's identity, so costs timed
    under another load are never mixed with these.
    """

    def __init__(
        self, command: Sequence[str], count: int, *, label: str, ready_timeout: float = 900.0,
        env: dict[str, str] | None = None,
    ) -> None:
        if count < 1:
            raise InvalidInputError(f"the number of busy processes must be >= 1, got {count}")
        if not hasattr(signal, "SIGSTOP"):
            raise InvalidInputError("timing costs on busy cores needs a POSIX system: the load is paused between "
                                    "timings with SIGSTOP, which this platform does not have")
        self.command = list(command)
        self.count = count
        self.label = f"{count}x{label}"
        self.ready_timeout = ready_timeout
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self._processes: list[subprocess.Popen[str]] = []
        self._errors: list[IO[bytes]] = []

    def __enter__(self) -> BusyCores:
        try:
            for _ in range(self.count):
                errors = tempfile.TemporaryFile()
                self._errors.append(errors)
                self._processes.append(subprocess.Popen(
                    self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True,
                    env=self.env,
                ))
            deadline = time.monotonic() + self.ready_timeout
            for index, process in enumerate(self._processes):
                self._wait_ready(index, process, deadline)
                os.kill(process.pid, signal.SIGSTOP)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait_ready(self, index: int, process: subprocess.Popen[str], deadline: float) -> None:
        assert process.stdout is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BusyCoresError(f"busy process {index} did not report ready within {self.ready_timeout:g} s: "
                                     f"{self._describe(index)}")
            readable, _, _ = select.select([process.stdout], [], [], min(left, 1.0))
            if readable:
                line = process.stdout.readline()
                if line.strip() == READY:
                    return
                if line == "":  # end of output: it exited
                    process.wait()
                    raise BusyCoresError(f"busy process {index} exited with code {process.returncode} before it was "
                                         f"ready: {self._describe(index)}")
            elif process.poll() is not None:
                raise BusyCoresError(f"busy process {index} exited with code {process.returncode} before it was "
                                     f"ready: {self._describe(index)}")

    def _describe(self, index: int) -> str:
        errors = self._errors[index]
        errors.seek(0)
        tail = errors.read()[-1500:].decode("utf-8", "replace").strip()
        return f"command {' '.join(self.command)!r}" + (f"; its error output ends:\n{tail}" if tail else "")

    def describe(self) -> str:
        """What the timings ran beside, for logs and a profile's notes."""
        return f"{self.count} other process(es) decoding ({self.label})"

    @contextmanager
    def running(self) -> Iterator[None]:
        """The load runs inside this block (resumed on entry, paused on exit)."""
        if not self._processes:
            raise BusyCoresError("the busy processes are not started: use BusyCores as a context manager")
        for index, process in enumerate(self._processes):
            if process.poll() is not None:
                raise BusyCoresError(f"busy process {index} stopped (exit code {process.returncode}), so costs "
                                     f"would be timed on a quieter machine than asked: {self._describe(index)}")
        for process in self._processes:
            os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.05)  # let them get back on a core before the timing starts
        try:
            yield
        finally:
            for process in self._processes:
                if process.poll() is None:
                    os.kill(process.pid, signal.SIGSTOP)

    def close(self) -> None:
        """Kill every load process (SIGKILL ends a paused one too) and free its files."""
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        for errors in self._errors:
            errors.close()
        self._processes, self._errors = [], []


def busy_command(source: str, weights: str, *, batch_size: int = 8, prompt_tokens: int = 256,
                 decode_steps: int = 32) -> tuple[list[str], str]:
    """The command of one engine load process and its label: batches of `batch_size` rows, each a `prompt_tokens`
    prefill then `decode_steps` decode steps, what a worker running a staged chain does (both kinds of work)."""
    command = [sys.executable, "-m", "litestage_chain.offline.busy_cores", "--model", source, "--weights", weights,
               "--batch-size", str(batch_size), "--prompt-tokens", str(prompt_tokens), "--decode-steps",
               str(decode_steps), "--parent", str(os.getpid())]
    return command, f"{weights}-b{batch_size}-p{prompt_tokens}-s{decode_steps}"


def _die_with_parent(parent: int) -> None:
    """A paused load process must not outlive its parent: ask Linux to kill it then (SIGKILL ends it even paused)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent ended before the request above
        sys.exit(0)


def main(argv: Sequence[str] | None = None) -> None:
    """The load process: load the model, decode once, say ready, then decode the same batch until killed."""
    parser = argparse.ArgumentParser(description="keep one core busy decoding (for timing costs under load)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--parent", type=int, default=os.getppid())
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    torch.set_num_threads(1)
    model = load_model(args.model, weights=args.weights)
    length = max(1, min(args.prompt_tokens, model.max_positions - args.decode_steps - 1))
    prompt = [(11 + 37 * i) % model.vocab_size for i in range(length)]
    config = GenerationConfig(max_new_tokens=args.decode_steps, ignore_eos=True)
    generate(model, [prompt] * args.batch_size, config=config)
    print(READY, flush=True)
    while True:
        generate(model, [prompt] * args.batch_size, config=config)


if __name__ == "__main__":
    main()
