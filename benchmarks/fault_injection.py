"""Inject the cache and log faults end to end and report what each one did to the next real run.

Every case damages something a later `litestage ask` (a fresh process, the embedded model) depends on, runs it with
a timeout, and checks that it neither hung, crashed nor answered from damaged weights: its exit status, whether it
said what it repaired, and whether its answer is the one a clean cache gives. The log cases run two writer
processes at once and read back torn and invalid lines. Kernel cases recompile the C++ extension (minutes each).

    LITESTAGE_CACHE=/path/to/scratch-cache python benchmarks/fault_injection.py [--skip-kernel] [--out FILE.json]

The cache named by LITESTAGE_CACHE is damaged on purpose: never point it at a cache you use.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUESTION = "Is the sun a star?"
TIMEOUT = 1200.0


@dataclass
class Case:
    name: str
    ok: bool
    seconds: float
    detail: str


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "LITESTAGE_CACHE": str(cache), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def ask(cache: Path, *extra: str, shell_tail: str = "") -> tuple[int | None, str, str, float]:
    """One `litestage ask` process: (exit status or None on timeout, stdout, stderr, seconds). With `shell_tail`
    (a pipe) it streams, as a user piping it would see it; otherwise it prints the result as JSON."""
    shown = ("--max-tokens", "64") if shell_tail else ("--max-tokens", "8", "--no-stream", "--json")
    argv = [sys.executable, "-m", "litestage_chain.cli", "ask", QUESTION, *shown, *extra]
    started = time.perf_counter()
    command: list[str] | str = argv
    if shell_tail:
        command = " ".join(f"'{a}'" for a in argv) + shell_tail
    try:
        done = subprocess.run(command, shell=bool(shell_tail), capture_output=True, text=True, env=_env(cache),
                              timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired as expired:
        return None, str(expired.stdout or ""), str(expired.stderr or ""), time.perf_counter() - started
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - started


def stage_texts(stdout: str) -> dict[str, str] | None:
    """The stage outputs from `--json`, which a run from damaged weights would change."""
    try:
        result = json.loads(stdout[stdout.index("{\n") :])
    except ValueError:
        return None
    return {stage: output["text"] for stage, output in result["stages"].items()}


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = os.urandom(4096)
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def converted_dir(cache: Path) -> Path:
    return next(p for p in (cache / "converted").iterdir() if p.is_dir() and not p.name.startswith("."))


def kernel_dir(cache: Path) -> Path:
    return next(p for p in (cache / "cpp_ext").iterdir() if p.is_dir())


def run_after(name: str, cache: Path, fault: Callable[[], str], baseline: dict[str, str] | None,
              expect: str, *extra: str) -> Case:
    """Apply `fault`, run `ask`, and judge: exit 0, `expect` said on stderr, the clean cache's stage outputs."""
    what = fault()
    status, out, err, seconds = ask(cache, *extra)
    problems = []
    if status is None:
        problems.append(f"hung (killed after {TIMEOUT:.0f} s)")
    elif status != 0:
        problems.append(f"exit {status}" + (" (bus error)" if status in (135, -7) else "") + f": {err[-300:]}")
    if expect and expect not in err:
        problems.append(f"no {expect!r} message")
    texts = stage_texts(out)
    if baseline is not None and status == 0 and texts != baseline:
        problems.append(f"answer differs from the clean cache's: {texts}")
    said = next((line for line in err.splitlines() if expect and expect in line), "")
    detail = f"{what}; " + ("; ".join(problems) if problems else f"exit 0, same answer; said: {said[:160]}")
    return Case(name, not problems, seconds, detail)


def kill_during_compile(cache: Path) -> Case:
    """kill -9 the process group of a first run while the kernel compiles, then run again."""
    for folder in (cache / "cpp_ext").glob("*"):
        if folder.is_dir():
            subprocess.run(["rm", "-rf", str(folder)], check=True)
    argv = [sys.executable, "-m", "litestage_chain.cli", "ask", QUESTION, "--max-tokens", "2", "--no-stream"]
    victim = subprocess.Popen(argv, env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 300
    lock = None
    while time.time() < deadline and lock is None:
        lock = next(iter((cache / "cpp_ext").glob("*/lock")), None) if (cache / "cpp_ext").is_dir() else None
        time.sleep(0.2)
    time.sleep(3)  # well into the compile
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    left = f"killed pid {victim.pid} mid-compile, torch lock left: {bool(lock and lock.exists())}"
    return run_after("kernel: killed during first compile", cache, lambda: left, None, "rebuilding")


def log_cases() -> list[Case]:
    """Two writers at once, a torn middle line and invalid UTF-8, on a search log in a scratch folder."""
    cases = []
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "search.jsonl"
        writer = (
            "import sys\nfrom litestage_chain.offline.store import EvalResult, ResultsStore\n"
            "from litestage_chain.engine.skip_plan import SkipPlan\nstore = ResultsStore(sys.argv[1])\n"
            "for i in range(40):\n"
            "    plans = {'recall': SkipPlan(attention=[int(sys.argv[2]), 30 + i]), 'analysis': SkipPlan(),"
            " 'summary': SkipPlan()}\n"
            "    store.put(plans, 'q', 'e', EvalResult(accuracy=0.5, mean_latency_seconds=1.0,"
            " answers={f'q{j}': 'A' * 40 for j in range(400)}))\n"
        )
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", writer, str(log), str(w)], env=_env(Path(scratch)))
                 for w in range(2)]
        codes = [p.wait() for p in procs]
        lines = log.read_bytes().split(b"\n")[:-1]
        whole = sum(1 for line in lines if _parses(line))
        cases.append(Case("log: two processes appending at once", codes == [0, 0] and whole == len(lines) == 80,
                          time.perf_counter() - started, f"{whole} of {len(lines)} lines whole (80 written)"))

        text = log.read_text().splitlines()
        log.write_text("\n".join([text[0], text[1][: len(text[1]) // 2], *text[2:]]) + "\n")
        cases.append(_reopen("log: torn middle line", log, 79))
        log.write_bytes(log.read_bytes().replace(b'"A', b'"\xff', 1))
        cases.append(_reopen("log: invalid UTF-8", log, 78))
    return cases


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _reopen(name: str, log: Path, expected: int) -> Case:
    started = time.perf_counter()
    code = ("import sys, warnings\nwarnings.simplefilter('always')\n"
            "from litestage_chain.offline.store import ResultsStore\nprint(len(ResultsStore(sys.argv[1])))")
    done = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True,
                          env=_env(log.parent), check=False)
    count = done.stdout.strip()
    ok = done.returncode == 0 and count == str(expected) and "moved to" in done.stderr
    said = next((line for line in done.stderr.splitlines() if "moved to" in line), done.stderr[-200:])
    return Case(name, ok, time.perf_counter() - started, f"resumed with {count} of {expected} records; {said[-200:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-kernel", action="store_true", help="leave out the cases that recompile the kernel")
    parser.add_argument("--out", help="also write the cases as JSON here")
    args = parser.parse_args()
    if not os.environ.get("LITESTAGE_CACHE"):
        parser.error("set LITESTAGE_CACHE to a scratch cache: the cases damage it on purpose")
    cache = Path(os.environ["LITESTAGE_CACHE"])
    cases: list[Case] = []

    def report(case: Case) -> None:
        cases.append(case)
        print(f"{'ok  ' if case.ok else 'FAIL'} {case.name:<42} {case.seconds:7.1f} s  {case.detail}", flush=True)

    if not args.skip_kernel:
        report(kill_during_compile(cache))
    status, out, err, seconds = ask(cache)
    baseline = stage_texts(out)
    report(Case("clean run (baseline)", status == 0 and baseline is not None, seconds, f"exit {status}"))
    status, out, _, seconds = ask(cache, "--weights", "int4")
    baseline_int4 = stage_texts(out)
    report(Case("clean int4 run (baseline)", status == 0 and baseline_int4 is not None, seconds, f"exit {status}"))
    if not args.skip_kernel:
        def stale_lock() -> str:
            (kernel_dir(cache) / "lock").touch()
            return "torch lock file left beside a good build"

        report(run_after("kernel: stale lock beside a good build", cache, stale_lock, baseline, ""))

        def torn_so() -> str:
            target = next(kernel_dir(cache).glob("*.so"))
            truncate(target)
            return f"{target.name} truncated to half"

        report(run_after("kernel: truncated .so", cache, torn_so, baseline, "rebuilding"))

    def float_file() -> Path:
        return converted_dir(cache) / "model.safetensors"

    def int4_file() -> Path:
        return next((cache / "converted").glob("*-int4-*.safetensors"))

    for label, pick, extra, base in (("float32", float_file, (), baseline),
                                     ("int4", int4_file, ("--weights", "int4"), baseline_int4)):
        for kind, fault in (("random bytes inside", damage), ("truncated", truncate)):
            def apply(pick: Callable[[], Path] = pick, fault: Callable[[Path], None] = fault,
                      kind: str = kind) -> str:
                target = pick()
                fault(target)
                return f"{target.name}: {kind}"

            report(run_after(f"{label} cache: {kind}", cache, apply, base, "again", *extra))

    blocker = Path(tempfile.mkstemp()[1])
    status, _, err, seconds = ask(blocker)
    errors = [line for line in err.splitlines() if line.startswith("litestage: error:")]  # --json: text on stderr
    report(Case("cache path is a file", status == 2 and len(errors) == 1 and "Traceback" not in err,
                seconds, f"exit {status}: {' '.join(errors)[:160]}"))
    blocker.unlink()
    status, out, err, seconds = ask(cache, shell_tail=" | head -6")
    report(Case("ask | head -6 (pipe closes mid-stream)", "Traceback" not in err and "Error" not in err, seconds,
                f"stderr {err.strip()[:160]!r}"))
    for case in log_cases():
        report(case)
    if args.out:
        Path(args.out).write_text(json.dumps([asdict(c) for c in cases], indent=1) + "\n")
    failed = [c.name for c in cases if not c.ok]
    print(f"{len(cases) - len(failed)} of {len(cases)} cases ok" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
