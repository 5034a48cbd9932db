"""Wall clock of one `litestage bench` slice on 1 vs N Ray workers (and in one process), run side by side.

Why: `--workers N` should cut a benchmark's wall clock by about N on N free cores, with identical answers. Each
mode runs the same command into a fresh folder, in ABBA order (1 worker, N workers, N workers, 1 worker, ...) so a
load change hits both alike; the medians are compared. Two times are kept per run: the whole command (model load,
Ray start, workers loading the model, the report) and the measuring phase alone (from the line announcing the
workers to the end of the run). The load average (`uptime`) before and after every run is recorded: on a shared
machine other processes take cores from the workers. The answers of every run must be identical.

    python benchmarks/workers_ab.py --workers 2 --repeats 2 --out benchmarks/results/workers-ab-smollm2.json -- \
        --benchmark csqa --data ../shared/data --split dev --limit 8 --interleave 1 --methods full uniform \
        --sweep uniform=8 --max-tokens recall=16,analysis=32,summary=8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestage_chain.bench.records import RECORDS_FILE, RecordStore  # noqa: E402


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def run(bench_args: list[str], out: Path, workers: int | None) -> dict[str, object]:
    """One `litestage bench` run; its wall clock, its measuring phase's, and its answers."""
    argv = [sys.executable, "-m", "litestage_chain.cli", "bench", *bench_args, "--out", str(out), "--no-plots",
            "--no-progress"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    before = load_average()
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    measuring_from = None
    marker = "workers:" if workers is not None else "runs already recorded"
    assert process.stdout is not None
    for line in process.stdout:
        if measuring_from is None and marker in line:
            measuring_from = time.perf_counter()
    if process.wait() != 0:
        raise SystemExit(f"bench failed: {' '.join(argv)}")
    end = time.perf_counter()
    records = RecordStore(out / RECORDS_FILE)
    return {
        "workers": workers, "wall_seconds": end - start,
        "measuring_seconds": end - (measuring_from or start), "load_before": before, "load_after": load_average(),
        "answers": {f"{r.point}|{r.question_id}": r.answer for r in records},
        "by_worker": sorted({str(r.worker) for r in records}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel mode (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode (default 2)")
    parser.add_argument("--single-process", action="store_true", help="also time the run without Ray")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the runs and the ratios")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: the `litestage bench` options")
    args = parser.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    modes: list[int | None] = [1, args.workers] + ([None] if args.single_process else [])
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for workers in (modes if repeat % 2 == 0 else list(reversed(modes))):
                result = run(bench_args, Path(scratch) / f"run{len(runs)}", workers)
                runs.append(result)
                print(f"workers={workers}: wall {result['wall_seconds']:.1f} s, measuring "
                      f"{result['measuring_seconds']:.1f} s, load {result['load_before']} -> {result['load_after']}",
                      flush=True)
    reference = runs[0]["answers"]
    identical = all(r["answers"] == reference for r in runs)

    def median_of(workers: int | None, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs if r["workers"] == workers)  # type: ignore[arg-type]

    summary = {
        key: {"one_worker": median_of(1, key), "workers": median_of(args.workers, key),
              "ratio": median_of(1, key) / median_of(args.workers, key),
              **({"single_process": median_of(None, key)} if args.single_process else {})}
        for key in ("wall_seconds", "measuring_seconds")
    }
    document = {"command": bench_args, "workers": args.workers, "identical_answers": identical,
                "summary": summary, "runs": [{k: v for k, v in r.items() if k != "answers"} for r in runs],
                "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps({"identical_answers": identical, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
