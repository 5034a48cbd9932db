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

from litestage_chain.bench.head_to_head import head_to_head, same_settings
from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.plots import write_plots
from litestage_chain.bench.records import (
    RECORDS_FILE,
    QuestionRecord,
    RecordStore,
    identity_hash,
)
from litestage_chain.bench.report import (
    PointSummary,
    reference_points,
    run_drop_reasons,
    summarise,
    write_report,
)
from litestage_chain.cache_files import atomic_write_text
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
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")  # a killed write leaves the old one whole
    return path


def check_resumable(out_dir: str | Path, identity: str, settings: Mapping[str, Any]) -> None:
    """Raise `InvalidInputError` when continuing in `out_dir` would orphan the records of the run it holds.

    Why: a run resumes by its identity (model weights, kernel path, prompts, budgets, ...), and starting a run with
    another identity in the folder replaces its run.json: the records measured so far stay in records.jsonl, but no
    report can be rebuilt from them. The common cause is resuming on another kind of machine (an int4 run measured
    with the AVX-512 VNNI kernels cannot be continued with the AVX2 ones: their sums differ, so would the answers and
    times). A resume with another round size (`interleave`) is refused too: the drop rules and the report replay the
    records round by round. `settings` are the run.json fields that describe the identity and the rounds; the error
    names those that differ. A folder whose run.json cannot be read is refused only when it holds other records."""
    records = Path(out_dir) / RECORDS_FILE
    if not records.is_file():
        return
    mine = identity_hash(identity)
    try:
        old: Any = read_run(out_dir)
    except InvalidInputError:
        old = None
    store = RecordStore(records)
    if not isinstance(old, dict) or not isinstance(old.get("meta"), dict):
        others = sum(1 for record in store if record.identity != mine)
        if others:
            raise InvalidInputError(
                f"{out_dir} holds {others} records of another run and its {RUN_FILE} is missing or unreadable: "
                "continuing here would leave them without a run definition. Pass another --out, or --new-run to "
                "start this run in the folder anyway (the old records stay in records.jsonl)")
        return
    theirs = sum(1 for record in store if record.identity == old.get("identity"))
    recorded = old["meta"]
    same_rounds = recorded.get("interleave", settings.get("interleave")) == settings.get("interleave")
    if not theirs or (old.get("identity") == mine and same_rounds):
        return
    differences = [f"{key} {recorded.get(key, 'not recorded')!r} there, {value!r} here"
                   for key, value in settings.items() if recorded.get(key, "not recorded") != value]
    shown = "; ".join(differences) if differences else "settings the run.json does not record (prompts, stops)"
    raise InvalidInputError(
        f"{out_dir} holds {theirs} records of another run ({shown}): continuing here would replace its run.json. "
        "Resume it with the same settings on the same kind of machine, or pass another --out (--new-run starts a "
        "new run in this folder; the old records stay in records.jsonl)"
    )


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
    """Summarise the run's records into results.json / results.md (and the PNG plots); return rows and files.

    With a ``litestage`` point, the report also compares it with every other point (`head_to_head`)."""
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
    reasons = run_drop_reasons(run, records)
    dropped = set(reasons)
    rows = summarise(records, dropped=dropped)
    against = {label: summarise(records, full_point=label, dropped=dropped) for label in reference_points(records)}
    meta = {**run["meta"], "identity": run["identity"], "question_ids": run["question_ids"]}
    interleave = int(run["meta"].get("interleave", 4))
    versus = head_to_head(records, run["question_ids"], interleave, identical=same_settings(run["points"]),
                          dropped=reasons)
    files = list(write_report(out_dir, rows, meta, run["points"], against=against, versus=versus))
    if plots:
        files += write_plots(rows, out_dir, str(run["meta"].get("benchmark", "benchmark")))
    return rows, against, files
