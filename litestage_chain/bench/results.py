"""A results folder: `run.json` (what was asked), `records.jsonl` (what was measured), then the report and plots.

`run.json` is written before anything is measured. It names the benchmark, the question ids, the model and the
executor identity, and lists every method point. The report is always rebuilt from it and the records, so an
interrupted run can be reported as far as it got (``litestage bench ... --report-only``), and a notebook can
rebuild a committed sample without the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.plots import write_plots
from litestage_chain.bench.records import (
    RECORDS_FILE,
    QuestionRecord,
    RecordStore,
    identity_hash,
)
from litestage_chain.bench.report import PointSummary, reference_points, run_drops, summarise, write_report
from litestage_chain.errors import InvalidInputError

RUN_FILE = "run.json"


def write_run(
    out_dir: str | Path,
    meta: Mapping[str, Any],
    points: Sequence[MethodPoint],
    identity: str,
    question_ids: Sequence[str],
) -> Path:
    """Record what this run measures (before measuring), so the report can be rebuilt from the records alone."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "meta": dict(meta),
        "identity": identity_hash(identity),
        "question_ids": list(question_ids),
        "points": [{"label": p.label, "key": p.key(), **p.payload()} for p in points],
    }
    path = folder / RUN_FILE
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def read_run(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        raise InvalidInputError(f"no {RUN_FILE} in {out_dir}: it is written when `litestage bench` starts a run")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}") from error


def run_records(out_dir: str | Path, run: Mapping[str, Any] | None = None) -> list[QuestionRecord]:
    """The records of `out_dir` that belong to its run (same identity, points and questions), in point order."""
    run = run if run is not None else read_run(out_dir)
    store = RecordStore(Path(out_dir) / RECORDS_FILE)
    order = {point["key"]: index for index, point in enumerate(run["points"])}
    questions = {qid: index for index, qid in enumerate(run["question_ids"])}
    chosen = [
        r for r in store
        if r.identity == run["identity"] and r.point_key in order and r.question_id in questions
    ]
    return sorted(chosen, key=lambda r: (order[r.point_key], questions[r.question_id]))


def rebuild_report(out_dir: str | Path, *, plots: bool = True) -> tuple[list[PointSummary], list[Path]]:
    """Summarise the run's records into results.json / results.md (and the PNG plots); return rows and files."""
    rows, _, files = rebuild_report_against(out_dir, plots=plots)
    return rows, files


def rebuild_report_against(
    out_dir: str | Path, *, plots: bool = True
) -> tuple[list[PointSummary], dict[str, list[PointSummary]], list[Path]]:
    """`rebuild_report`, also returning the rows against each ``full:FORMAT`` point (by its label)."""
    run = read_run(out_dir)
    records = run_records(out_dir, run)
    if not records:
        raise InvalidInputError(f"{out_dir} has no records of its run yet")
    dropped = run_drops(run, records)
    rows = summarise(records, dropped=dropped)
    against = {label: summarise(records, full_point=label, dropped=dropped) for label in reference_points(records)}
    meta = {**run["meta"], "identity": run["identity"], "question_ids": run["question_ids"]}
    files = list(write_report(out_dir, rows, meta, run["points"], against=against))
    if plots:
        files += write_plots(rows, out_dir, str(run["meta"].get("benchmark", "benchmark")))
    return rows, against, files
