"""`--drop-slower`: a point clearly slower than the product point in every round stops; everything else runs on."""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from litestage_chain import InvalidInputError
from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.pruning import DropRule, SlowerComparison, SlowerRule, check_rule, first_slower
from litestage_chain.bench.records import RECORDS_FILE, Outcome, RecordStore
from litestage_chain.bench.report import RESULTS_MD
from litestage_chain.bench.results import rebuild_report, write_run
from litestage_chain.bench.runner import run_points, to_record
from litestage_chain.cli.bench import add_bench_subcommand
from litestage_chain.data.types import Question
from tests.bench.test_bench_runner import StubExecutor, points, questions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

THAN = "uniform@1"  # the stub run has no profile: a baseline point stands in for LiteStage


class SlowStub(StubExecutor):
    """The stub, with the points in `slow` taking `slow[label]` times their seconds (on the questions `where` allows)."""

    def __init__(self, slow: dict[str, float], where: Sequence[str] | None = None) -> None:
        super().__init__()
        self.slow, self.where = slow, None if where is None else set(where)

    def run(self, point: MethodPoint, questions: Sequence[Question]) -> list[Outcome]:
        outcomes = super().run(point, questions)
        factor = self.slow.get(point.label)
        if factor is None:
            return outcomes
        return [o.model_copy(update={"seconds": o.seconds * factor})
                if self.where is None or o.question_id in self.where else o for o in outcomes]


def chosen(*labels: str) -> list[MethodPoint]:
    found = [p for p in points() if p.label in labels]
    assert len(found) == len(labels), "the stub run has these points"
    return found


def ran(stub: StubExecutor) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label, ids in stub.calls:
        counts[label] = counts.get(label, 0) + len(ids)
    return counts


def rule(factor: float = 1.25, min_rounds: int = 2) -> DropRule:
    return DropRule(slower=SlowerRule(factor=factor, than=THAN, min_rounds=min_rounds))


def test_a_point_slower_in_every_round_stops_after_the_minimum_and_a_resume_agrees(tmp_path: Path) -> None:
    pts = chosen("full", THAN, "unified@1", "exit-depth@1")
    # unified@1 and exit-depth@1 skip 2 sub-layers a stage against uniform@1's 1: 0.8/0.9 of its seconds alone
    stub = SlowStub({"unified@1": 2.0, "exit-depth@1": 1.1})
    path = tmp_path / RECORDS_FILE
    dropped: dict = {}
    run_points(stub, pts, questions(40), RecordStore(path), interleave=4, progress=False, drop=rule(),
               dropped=dropped)
    counts = ran(stub)
    assert counts["full"] == counts[THAN] == counts["exit-depth@1"] == 40, "0.98x: runs to the end"
    assert counts["unified@1"] == 8, "1.78x in each of the first two rounds: stops before the third"
    verdict = dropped["unified@1"]
    assert isinstance(verdict, SlowerComparison) and set(dropped) == {"unified@1"}
    assert verdict.questions == 8 and verdict.ratios == pytest.approx((2.0 * 0.8 / 0.9,) * 2)
    assert "slower than uniform@1 in every round: 1.78x, 1.78x (8 questions)" == verdict.describe()
    again = SlowStub({"unified@1": 2.0, "exit-depth@1": 1.1})
    run_points(again, pts, questions(40), RecordStore(path), interleave=4, progress=False, drop=rule())
    assert again.calls == [], "a resumed run drops the same point from its records alone"


def test_the_full_model_and_the_reference_are_never_dropped_for_their_seconds() -> None:
    pts = chosen("full", THAN, "unified@1")
    stub = SlowStub({"full": 5.0})
    dropped: dict = {}
    run_points(stub, pts, questions(24), RecordStore(), interleave=4, progress=False, drop=rule(), dropped=dropped)
    assert dropped == {} and set(ran(stub).values()) == {24}


def test_a_point_within_the_factor_in_any_round_runs_to_the_end() -> None:
    pts = chosen("full", THAN, "unified@1")
    stub = SlowStub({"unified@1": 3.0}, where=[f"q{i}" for i in range(4, 24)])  # round 1 at 0.89x, then 2.7x
    dropped: dict = {}
    run_points(stub, pts, questions(24), RecordStore(), interleave=4, progress=False, drop=rule(), dropped=dropped)
    assert dropped == {} and ran(stub)["unified@1"] == 24


def test_the_replay_is_by_round_boundary_and_never_after_the_last_round() -> None:
    qs = questions(24)
    order = [q.id for q in qs]
    stub = SlowStub({"unified@1": 2.0})
    records = {label: {q.id: to_record(p, "stub-v1", q, o) for q, o in zip(qs, stub.run(p, qs), strict=True)}
               for label, p in ((p.label, p) for p in chosen(THAN, "unified@1"))}
    reference, mine = records[THAN], records["unified@1"]
    first = first_slower(rule().slower, reference, mine, order, interleave=8)  # type: ignore[arg-type]
    assert first is not None and first.questions == 16 and len(first.ratios) == 2
    assert first_slower(rule().slower, reference, dict(list(mine.items())[:16]), order, 8) == first, \
        "later records or not"
    assert first_slower(rule(min_rounds=3).slower, reference, mine, order, 8) is None, "3 rounds: only after the last"
    assert first_slower(rule(min_rounds=1).slower, reference, mine, order, 8).questions == 8  # type: ignore[union-attr]
    assert first_slower(rule(factor=1.8).slower, reference, mine, order, 8) is None, "1.78x is not above 1.8x"
    with pytest.raises(InvalidInputError, match="interleave"):
        first_slower(rule().slower, reference, mine, order, interleave=0)  # type: ignore[arg-type]


def test_a_rule_needs_a_test_and_its_reference_point() -> None:
    with pytest.raises(ValidationError, match="needs a loss margin, a latency test or both"):
        DropRule()
    with pytest.raises(ValidationError):
        SlowerRule(factor=1.0)
    with pytest.raises(InvalidInputError, match="'litestage', which is not among the method points"):
        check_rule(DropRule(slower=SlowerRule(factor=1.3)), chosen("full", THAN))
    with pytest.raises(InvalidInputError, match="needs the full model"):
        check_rule(DropRule(margin=0.05, slower=SlowerRule(factor=1.3, than=THAN)), chosen(THAN))
    check_rule(DropRule(slower=SlowerRule(factor=1.3, than=THAN)), chosen(THAN, "unified@1"))  # no full needed


def test_the_report_names_the_latency_test_and_marks_the_point(tmp_path: Path) -> None:
    pts = chosen("full", THAN, "unified@1")
    qs = questions(24)
    both = DropRule(margin=0.05, slower=SlowerRule(factor=1.25, than=THAN))
    meta = {"benchmark": "toy", "questions": 24, "model": "stub", "interleave": 4, "drop_worse": both.model_dump()}
    write_run(tmp_path, meta, pts, "stub-v1", [q.id for q in qs])
    run_points(SlowStub({"unified@1": 2.0}), pts, qs, RecordStore(tmp_path / RECORDS_FILE), interleave=4,
               progress=False, drop=both)
    rows = {row.point: row for row in rebuild_report(tmp_path, plots=False)[0]}
    assert rows["unified@1"].dropped and rows["unified@1"].questions == 8 and not rows[THAN].dropped
    text = (tmp_path / RESULTS_MD).read_text()
    assert "more than 1.25x uniform@1's seconds in every round so far (at least 2)" in text
    assert "| 8 (dropped) |" in text


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="litestage")
    add_bench_subcommand(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_command_refuses_a_bad_slower_factor_or_no_litestage(tmp_path: Path) -> None:
    data = tmp_path / "dev.jsonl"
    data.write_text("")
    base = ["bench", "--benchmark", "csqa", "--data", str(data), "--out", str(tmp_path / "o")]
    for extra, message in ((["--drop-slower", "1"], "ratio above 1"),
                           (["--drop-slower", "1.3", "--methods", "full", "uniform"], "add 'litestage'")):
        args = _parse([*base, *extra])
        with pytest.raises(InvalidInputError, match=message):
            args.handler(args, io.StringIO())
