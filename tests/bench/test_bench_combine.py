"""Rows of two benchmark runs in one table: shared questions only, one full-model row, each speedup within its run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from litestage_chain import InvalidInputError
from litestage_chain.bench.combine import combined_rows
from litestage_chain.bench.pruning import DropRule
from litestage_chain.bench.records import RECORDS_FILE, RecordStore
from litestage_chain.bench.results import write_run
from litestage_chain.bench.runner import run_points
from tests.bench.test_bench_runner import StubExecutor, points, questions

pytestmark = pytest.mark.usefixtures("one_torch_thread")
META = {"benchmark": "toy", "model": "stub", "weights": "int4", "fingerprint": "f", "batch_size": 1}


def _run(folder: Path, labels: set[str], n: int, executor: StubExecutor | None = None, **meta: object) -> None:
    executor = executor or StubExecutor()
    chosen = [p for p in points() if p.label in labels]
    qs = questions(n)
    write_run(folder, {**META, **meta}, chosen, executor.identity, [q.id for q in qs])
    run_points(executor, chosen, qs, RecordStore(folder / RECORDS_FILE), progress=False)


class SlowFull(StubExecutor):
    """The stub, but its full model takes twice as long: a run measured while the machine was busier."""

    def run(self, point, qs):  # noqa: ANN001, ANN201
        outcomes = super().run(point, qs)
        if point.label != "full":
            return outcomes
        return [o.model_copy(update={"seconds": 2 * o.seconds}) for o in outcomes]


def test_rows_of_both_runs_over_the_questions_both_finished(tmp_path: Path) -> None:
    _run(tmp_path / "a", {"full", "uniform@1"}, n=3)
    _run(tmp_path / "b", {"full", "unified@1", "uniform@1"}, n=5, executor=SlowFull())
    rows, shared, meta = combined_rows([tmp_path / "a", tmp_path / "b"])
    assert shared == 3 and meta["benchmark"] == "toy"
    assert [row.point for row in rows] == ["full", "uniform@1", "unified@1"]  # one full row; a repeated point once
    assert all(row.questions == 3 for row in rows)
    assert rows[1].speedup == pytest.approx(3.0 / 2.7)  # against the full model of its own run (a)
    # unified@1 skips one layer (2 sub-layers) in each stage: 3 x 0.8 = 2.4 s against run b's full model, 6.0 s
    assert rows[2].speedup == pytest.approx(6.0 / 2.4)


def test_the_combining_script_writes_a_results_folder_the_notebook_reads(tmp_path: Path) -> None:
    from benchmarks.combine_runs import main
    from litestage_chain.bench.report import load_results, rows_of

    _run(tmp_path / "a", {"full", "uniform@1"}, n=3)
    _run(tmp_path / "b", {"full", "unified@1"}, n=3)
    assert main(["--out", str(tmp_path / "both"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    document = load_results(tmp_path / "both")
    assert [row.point for row in rows_of(document)] == ["full", "uniform@1", "unified@1"]
    assert document["meta"]["questions"] == 3 and len(document["meta"]["combined_from"]) == 2
    text = (tmp_path / "both" / "results.md").read_text()
    assert text.startswith("# Benchmark: toy (3 questions every point finished") and "Partial run" not in text


def test_a_point_without_records_or_redefined_is_refused(tmp_path: Path) -> None:
    _run(tmp_path / "a", {"full", "uniform@1"}, n=3)
    folder = tmp_path / "unstarted"
    write_run(folder, META, [p for p in points() if p.label in {"full", "unified@1"}], "stub-v1",
              [q.id for q in questions(3)])
    run_points(StubExecutor(), [p for p in points() if p.label == "full"], questions(3),
               RecordStore(folder / RECORDS_FILE), progress=False)
    with pytest.raises(InvalidInputError, match=r"\['unified@1'\] have no records"):
        combined_rows([tmp_path / "a", folder])
    renamed = tmp_path / "renamed"
    other = next(p for p in points() if p.label == "uniform@4")
    write_run(renamed, META, [next(p for p in points() if p.label == "full"), other], "stub-v1",
              [q.id for q in questions(3)])
    document = json.loads((renamed / "run.json").read_text())
    document["points"][1]["label"] = "uniform@1"  # same label, other plans
    (renamed / "run.json").write_text(json.dumps(document))
    with pytest.raises(InvalidInputError, match="not the same point"):
        combined_rows([tmp_path / "a", renamed])


def test_runs_that_are_not_one_benchmark_are_refused(tmp_path: Path) -> None:
    _run(tmp_path / "a", {"full", "uniform@1"}, n=3)
    _run(tmp_path / "other-model", {"full"}, n=3, model="other")
    with pytest.raises(InvalidInputError, match="differs .* in model"):
        combined_rows([tmp_path / "a", tmp_path / "other-model"])
    _run(tmp_path / "other-engine", {"full"}, n=3, executor=StubExecutor(identity="stub-v2"))
    with pytest.raises(InvalidInputError, match="another engine set-up"):
        combined_rows([tmp_path / "a", tmp_path / "other-engine"])

    class Contrary(StubExecutor):
        def run(self, point, qs):  # noqa: ANN001, ANN201
            return [o.model_copy(update={"answer": "B"}) for o in super().run(point, qs)]

    _run(tmp_path / "contrary", {"full"}, n=3, executor=Contrary())
    with pytest.raises(InvalidInputError, match="answered 3 question"):
        combined_rows([tmp_path / "a", tmp_path / "contrary"])


def test_a_point_its_run_dropped_keeps_its_own_row_and_does_not_shrink_the_others(tmp_path: Path) -> None:
    from benchmarks.combine_runs import main

    rule = DropRule(margin=0.05)
    _run(tmp_path / "a", {"full", "uniform@1"}, n=40)
    folder = tmp_path / "b"
    chosen = [p for p in points() if p.label in {"full", "unified@1", "uniform@4"}]  # uniform@4: always wrong
    write_run(folder, {**META, "drop_worse": rule.model_dump()}, chosen, "stub-v1", [q.id for q in questions(40)])
    run_points(StubExecutor(), chosen, questions(40), RecordStore(folder / RECORDS_FILE), interleave=4,
               progress=False, drop=rule)
    rows, shared, _ = combined_rows([tmp_path / "a", folder])
    by_point = {row.point: row for row in rows}
    assert shared == 40, "the dropped point does not restrict the shared questions to where it stopped"
    assert [row.point for row in rows] == ["full", "uniform@1", "uniform@4", "unified@1"]  # each run in its order
    assert all(by_point[label].questions == 40 and not by_point[label].dropped
               for label in ("full", "uniform@1", "unified@1"))
    worse = by_point["uniform@4"]
    assert worse.dropped and 16 <= worse.questions < 40 and worse.lost == worse.questions and worse.gained == 0
    assert main(["--out", str(tmp_path / "both"), str(tmp_path / "a"), str(folder)]) == 0
    text = (tmp_path / "both" / "results.md").read_text()
    assert "**Dropped early** by their run's `--drop-worse` rule: uniform@4." in text
    assert f"| {worse.questions} (dropped) |" in text
    # without the rule in its run.json the same records are a point cut short: it restricts the shared questions
    document = json.loads((folder / "run.json").read_text())
    del document["meta"]["drop_worse"]
    (folder / "run.json").write_text(json.dumps(document))
    _, cut_short, _ = combined_rows([tmp_path / "a", folder])
    assert cut_short == worse.questions
