"""The benchmark loop with a stub executor: interleaving, resume that redoes nothing, rebuilt reports and plots."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from litestage_chain import InvalidInputError
from litestage_chain.bench.methods import MethodContext, MethodPoint, all_points
from litestage_chain.bench.pruning import DropRule, first_drop
from litestage_chain.bench.plots import (
    ACCURACY_VS_SPEEDUP,
    STAGE_SENSITIVITY,
    TOKENS_VS_SKIPPED,
    write_plots,
)
from litestage_chain.bench.records import (
    RECORDS_FILE,
    Outcome,
    RecordStore,
    StageMeasure,
)
from litestage_chain.bench.report import (
    RESULTS_JSON,
    RESULTS_MD,
    load_results,
    rows_of,
    write_report,
)
from litestage_chain.bench.results import rebuild_report, run_records, write_run
from litestage_chain.bench.runner import balanced_orders, recorded_count, round_order, run_points, to_record
from litestage_chain.cli.bench import add_bench_subcommand, parse_max_tokens
from litestage_chain.data.types import Question
from litestage_chain.offline.importance import rank_sublayers
from litestage_chain.offline.paired_decision import PairedComparison

pytestmark = pytest.mark.usefixtures("one_torch_thread")


LAYERS = 4
RANKING = rank_sublayers(torch.rand(LAYERS, 2, generator=torch.Generator().manual_seed(0)))


class StubExecutor:
    """Answers 'A' when fewer than 3 sub-layers are skipped per stage; time and tokens grow with the plan's size."""

    def __init__(self, identity: str = "stub-v1") -> None:
        self.identity = identity
        self.calls: list[tuple[str, list[str]]] = []

    def run(self, point: MethodPoint, questions: Sequence[Question]) -> list[Outcome]:
        self.calls.append((point.label, [q.id for q in questions]))
        outcomes = []
        for q in questions:
            skipped = point.skipped_sublayers
            stages = {s: StageMeasure(tokens=10 + skipped[s] - (3 if point.uses_early_exit else 0),
                                      seconds=1.0 - 0.1 * skipped[s]) for s in point.plans}
            outcomes.append(Outcome(question_id=q.id, answer="A" if max(skipped.values()) < 3 else "B",
                                    stages=stages, seconds=sum(m.seconds for m in stages.values())))
        return outcomes


def questions(n: int = 5) -> list[Question]:
    return [Question(id=f"q{i}", question=f"question {i}?", benchmark="t", answer="A",
                     choices=[{"label": "A", "text": "x"}, {"label": "B", "text": "y"}]) for i in range(n)]


def points() -> list[MethodPoint]:
    context = MethodContext(num_layers=LAYERS, ranking=RANKING, adaskip_ranking=list(reversed(RANKING)))
    return all_points(["uniform", "uniform-exit", "unified", "exit-depth", "adaskip", "stage-only"], context,
                      {"uniform": [1, 4], "uniform-exit": [1, 4], "unified": [1], "exit-depth": [1], "adaskip": [2],
                       "stage-only": [2]})


def test_points_are_interleaved_per_question_batch_in_balanced_orders() -> None:
    stub, pts = StubExecutor(), points()
    records = run_points(stub, pts, questions(5), RecordStore(), interleave=2, progress=False)
    assert len(records) == len(pts) * 5
    assert [r.point for r in records[:5]] == ["full"] * 5, "returned point-major in the given order"
    batches = [ids for _, ids in stub.calls]
    assert batches == [["q0", "q1"]] * len(pts) + [["q2", "q3"]] * len(pts) + [["q4"]] * len(pts)
    rounds = [[label for label, _ in stub.calls[i * len(pts) : (i + 1) * len(pts)]] for i in range(3)]
    assert rounds == [[p.label for p in round_order(pts, i)] for i in range(3)]
    assert rounds[0][0] == "full" and len({r[0] for r in rounds}) == 3, "each round starts with another point"


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 8])
def test_round_orders_balance_first_places_and_predecessors(count: int) -> None:
    """Over one cycle of rows every point runs first equally often and directly after every other point equally
    often: a plain rotation fails the second (each point always follows the same one)."""
    from collections import Counter

    rows = balanced_orders(count)
    assert all(sorted(row) == list(range(count)) for row in rows)
    assert len(rows) == (count if count % 2 == 0 else 2 * count)
    firsts = Counter(row[0] for row in rows)
    assert set(firsts.values()) == {len(rows) // count}
    pairs = Counter((a, b) for row in rows for a, b in zip(row, row[1:]))
    if count > 1:
        assert len(pairs) == count * (count - 1) and len(set(pairs.values())) == 1
    rotation = [[(i + shift) % count for i in range(count)] for shift in range(count)]
    rotation_pairs = Counter((a, b) for row in rotation for a, b in zip(row, row[1:]))
    assert count < 3 or len(rotation_pairs) < count * (count - 1), "a rotation leaves predecessors unbalanced"
    with pytest.raises(InvalidInputError):
        balanced_orders(0)


def test_resume_redoes_nothing_and_finishes_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / RECORDS_FILE
    first = StubExecutor()
    run_points(first, points()[:3], questions(4), RecordStore(path), interleave=2, progress=False)
    assert len(first.calls) == 6
    again = StubExecutor()
    done = run_points(again, points()[:3], questions(4), RecordStore(path), interleave=2, progress=False)
    assert again.calls == [], "a re-run with everything recorded measures nothing"
    assert [r.question_id for r in done[:4]] == ["q0", "q1", "q2", "q3"]
    more = StubExecutor()
    run_points(more, points()[:4], questions(5), RecordStore(path), interleave=2, progress=False)
    new = {(label, tuple(ids)) for label, ids in more.calls}
    assert all(label == points()[3].label or ids == ("q4",) for label, ids in new), new
    assert len(RecordStore(path)) == 4 * 5
    assert recorded_count(points()[:4], questions(5), "stub-v1", RecordStore(path)) == 4 * 5
    assert recorded_count(points()[:5], questions(6), "stub-v1", RecordStore(path)) == 4 * 5
    assert recorded_count(points()[:4], questions(5), "stub-v2", RecordStore(path)) == 0, "other settings' records"
    other = StubExecutor(identity="stub-v2")
    run_points(other, points()[:1], questions(2), RecordStore(path), progress=False)
    assert other.calls, "a changed executor identity is never served old records"


def test_a_partial_last_line_is_dropped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / RECORDS_FILE
    run_points(StubExecutor(), points()[:1], questions(2), RecordStore(path), progress=False)
    with path.open("a") as handle:
        handle.write('{"key": "trunc')
    with pytest.warns(UserWarning, match="partial last record"):
        store = RecordStore(path)
    assert len(store) == 2 and path.read_text().endswith("\n")
    path.write_text('{"nonsense": 1}\n' + path.read_text())
    with pytest.warns(UserWarning, match=r"1 unreadable benchmark record\(s\) \(line 1;"):
        assert len(RecordStore(path)) == 2
    assert path.with_name(path.name + ".damaged").read_text() == '{"nonsense": 1}\n'


def test_bad_runs_are_refused() -> None:
    stub = StubExecutor()
    with pytest.raises(InvalidInputError, match="no questions"):
        run_points(stub, points(), [], RecordStore(), progress=False)
    with pytest.raises(InvalidInputError, match="duplicate question ids"):
        run_points(stub, points(), questions(2) * 2, RecordStore(), progress=False)
    with pytest.raises(InvalidInputError, match="duplicate method points"):
        run_points(stub, points()[:2] * 2, questions(2), RecordStore(), progress=False)
    with pytest.raises(InvalidInputError, match="interleave"):
        run_points(stub, points(), questions(2), RecordStore(), interleave=0, progress=False)


def _recorded_run(folder: Path, executor: StubExecutor | None = None) -> None:
    executor = executor or StubExecutor()
    qs = questions(4)
    write_run(folder, {"benchmark": "toy", "questions": 4, "model": "stub"}, points(), executor.identity,
              [q.id for q in qs])
    run_points(executor, points(), qs, RecordStore(folder / RECORDS_FILE), progress=False)


def test_report_is_rebuilt_from_the_run_records_with_tables_and_plots(tmp_path: Path) -> None:
    _recorded_run(tmp_path)
    # a record from another executor identity in the same file must not leak into the report
    stray = StubExecutor(identity="other")
    run_points(stray, points()[:1], questions(4), RecordStore(tmp_path / RECORDS_FILE), progress=False)
    rows, files = rebuild_report(tmp_path)
    assert len(rows) == len(points()) and all(r.questions == 4 for r in rows)
    names = {path.name for path in files}
    assert {RESULTS_JSON, RESULTS_MD, ACCURACY_VS_SPEEDUP, STAGE_SENSITIVITY, TOKENS_VS_SKIPPED} <= names
    for name in (ACCURACY_VS_SPEEDUP, STAGE_SENSITIVITY, TOKENS_VS_SKIPPED):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_point = {row.point: row for row in rows}
    assert by_point["uniform@1"].accuracy == 1.0 and by_point["uniform@4"].accuracy == 0.0
    # stub seconds: full 3.0, uniform@1 3 x 0.9 = 2.7
    assert by_point["uniform@1"].speedup == pytest.approx(3.0 / 2.7)
    assert by_point["uniform-exit@4"].tokens["recall"] == 11 and by_point["uniform@4"].tokens["recall"] == 14
    document = load_results(tmp_path)
    assert rows_of(document) == rows and document["meta"]["benchmark"] == "toy"
    assert len(run_records(tmp_path)) == len(points()) * 4
    text = (tmp_path / RESULTS_MD).read_text()
    assert "stage-only/analysis@2" in text and "95% Wilson" in text and "Partial run" not in text
    write_report(tmp_path / "stopped", rows[:2] + [rows[2].model_copy(update={"questions": 3})], {"questions": 6})
    assert "**Partial run:** 6 questions planned, points recorded on 3-4 (column n)" in (
        tmp_path / "stopped" / RESULTS_MD).read_text()


def test_plots_skip_figures_without_data(tmp_path: Path) -> None:
    _recorded_run(tmp_path)
    rows = [row for row in rebuild_report(tmp_path, plots=False)[0] if row.method in ("full", "unified")]
    written = write_plots(rows, tmp_path / "only", "toy")
    assert [p.name for p in written] == [ACCURACY_VS_SPEEDUP]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="litestage")
    add_bench_subcommand(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_command_report_only_rebuilds_without_a_model(tmp_path: Path) -> None:
    _recorded_run(tmp_path)
    args = _parse(["bench", "--benchmark", "toy", "--data", str(tmp_path), "--out", str(tmp_path), "--report-only"])
    out = io.StringIO()
    assert args.handler(args, out) == 0
    assert "| full | full |" in out.getvalue() and "wrote" in out.getvalue()
    assert json.loads((tmp_path / RESULTS_JSON).read_text())["format"] == 1


def test_command_names_bad_options(tmp_path: Path) -> None:
    data = tmp_path / "dev.jsonl"
    data.write_text("")
    base = ["bench", "--benchmark", "csqa", "--data", str(data), "--out", str(tmp_path / "o")]
    for extra, message in (
        (["--methods", "litestage"], "need a searched profile"),
        (["--sweep", "full=3"], "has no sweep"),
        (["--max-tokens", "recall=0"], "N >= 1"),
        (["--max-tokens", "planning=3"], "unknown stage"),
        (["--interleave", "0"], "--interleave must be >= 1"),
    ):
        args = _parse(base + extra)
        with pytest.raises(InvalidInputError, match=message):
            args.handler(args, io.StringIO())
    args = _parse(["bench", "--benchmark", "csqa", "--data", str(tmp_path / "absent"), "--out", str(tmp_path)])
    with pytest.raises(InvalidInputError, match="no such file or folder"):
        args.handler(args, io.StringIO())
    with pytest.raises(InvalidInputError, match="no run.json"):
        rebuild_report(tmp_path / "empty")


def test_command_takes_the_data_folder_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from litestage_chain.cli.bench import _data_path

    args = _parse(["bench", "--benchmark", "csqa", "--out", str(tmp_path)])
    monkeypatch.delenv("LITESTAGE_DATA_DIR", raising=False)
    with pytest.raises(InvalidInputError, match="LITESTAGE_DATA_DIR"):
        _data_path(args)
    monkeypatch.setenv("LITESTAGE_DATA_DIR", str(tmp_path))
    assert _data_path(args) == tmp_path
    assert _data_path(_parse(["bench", "--benchmark", "csqa", "--data", "x.jsonl", "--out", "o"])) == Path("x.jsonl")


def test_max_tokens_caps_or_sets_per_stage_budgets() -> None:
    assert parse_max_tokens(None) is None
    assert parse_max_tokens("32") == {"recall": 32, "analysis": 32, "summary": 24}
    assert parse_max_tokens("recall=8,summary=4") == {"recall": 8, "summary": 4}


def test_a_clearly_worse_point_is_dropped_and_a_resume_drops_it_again(tmp_path: Path) -> None:
    path = tmp_path / RECORDS_FILE
    pts = [p for p in points() if p.label in ("full", "uniform@1", "uniform@4")]  # uniform@4: always wrong
    rule = DropRule(margin=0.05)
    stub, dropped = StubExecutor(), {}
    records = run_points(stub, pts, questions(40), RecordStore(path), interleave=4, progress=False, drop=rule,
                         dropped=dropped)
    ran = {label: sum(len(ids) for name, ids in stub.calls if name == label) for label, _ in stub.calls}
    assert ran["full"] == ran["uniform@1"] == 40, "the reference and a point as good as it run to the end"
    assert 16 <= ran["uniform@4"] < 40, ran
    assert set(dropped) == {"uniform@4"} and dropped["uniform@4"].interval[0] > 0.05
    assert dropped["uniform@4"].questions == ran["uniform@4"] and dropped["uniform@4"].lost == ran["uniform@4"]
    assert len(records) == 80 + ran["uniform@4"]
    # the smallest number of wrong answers that already bounds the loss above 5 points: no round later
    first = next(n for n in range(16, 41, 4) if rule.drops(paired(n)))
    assert ran["uniform@4"] == first
    again = StubExecutor()
    run_points(again, pts, questions(40), RecordStore(path), interleave=4, progress=False, drop=rule)
    assert again.calls == [], "a resumed run drops the same point from its records alone"
    loose = StubExecutor()
    run_points(loose, pts, questions(40), RecordStore(path), interleave=4, progress=False)
    assert {label for label, _ in loose.calls} == {"uniform@4"}, "without the rule the point is finished"


def paired(n: int) -> PairedComparison:
    return PairedComparison(questions=n, lost=n, gained=0, confidence=0.95)


def test_a_point_within_the_margin_is_never_dropped() -> None:
    rule = DropRule(margin=0.05)
    assert not rule.drops(None) and not rule.drops(paired(15)), "never on fewer than 16 questions"
    assert rule.drops(paired(16))
    assert not rule.drops(PairedComparison(questions=200, lost=20, gained=14, confidence=0.95)), "3 points: kept"
    assert rule.drops(PairedComparison(questions=200, lost=40, gained=10, confidence=0.95)), "15 points: dropped"


def test_dropping_needs_the_full_model() -> None:
    with pytest.raises(InvalidInputError, match="needs the full model"):
        run_points(StubExecutor(), points()[1:3], questions(2), RecordStore(), progress=False,
                   drop=DropRule(margin=0.05))


def test_the_report_marks_dropped_points_and_shows_the_paired_loss(tmp_path: Path) -> None:
    pts = [p for p in points() if p.label in ("full", "uniform@1", "uniform@4")]
    qs = questions(40)
    meta = {"benchmark": "toy", "questions": 40, "model": "stub", "interleave": 4,
            "drop_worse": DropRule(margin=0.05).model_dump()}
    write_run(tmp_path, meta, pts, "stub-v1", [q.id for q in qs])
    run_points(StubExecutor(), pts, qs, RecordStore(tmp_path / RECORDS_FILE), interleave=4, progress=False,
               drop=DropRule(margin=0.05))
    rows = {row.point: row for row in rebuild_report(tmp_path, plots=False)[0]}
    assert rows["uniform@4"].dropped and not rows["uniform@1"].dropped and not rows["full"].dropped
    assert rows["uniform@4"].loss == 1.0 and rows["uniform@4"].lost == rows["uniform@4"].questions < 40
    assert rows["uniform@1"].loss == 0.0 and rows["uniform@1"].paired_questions == 40
    text = (tmp_path / RESULTS_MD).read_text()
    assert "**Dropped early**" in text and "Partial run" not in text, "a dropped point is not a cut-short run"
    assert f"| {rows['uniform@4'].questions} (dropped) |" in text and "+100.0 +- " in text


class LateWrong(StubExecutor):
    """The stub, but uniform@1 answers the last 8 of 40 questions wrong: its interval crosses a 5-point margin only
    once the last round is in (8 lost of 40: lower end 6.3 points; 4 of 36 before that round: -0.5)."""

    def run(self, point: MethodPoint, questions: Sequence[Question]) -> list[Outcome]:
        outcomes = super().run(point, questions)
        if point.label != "uniform@1":
            return outcomes
        return [o.model_copy(update={"answer": "B"}) if int(o.question_id[1:]) >= 32 else o for o in outcomes]


def test_a_point_that_crosses_the_margin_only_in_its_last_round_ran_to_the_end_and_is_not_dropped(
    tmp_path: Path,
) -> None:
    pts = [p for p in points() if p.label in ("full", "uniform@1")]
    qs, rule = questions(40), DropRule(margin=0.05)
    meta = {"benchmark": "toy", "questions": 40, "model": "stub", "interleave": 4, "drop_worse": rule.model_dump()}
    write_run(tmp_path, meta, pts, "stub-v1", [q.id for q in qs])
    dropped: dict[str, PairedComparison] = {}
    run_points(LateWrong(), pts, qs, RecordStore(tmp_path / RECORDS_FILE), interleave=4, progress=False, drop=rule,
               dropped=dropped)
    assert rule.drops(PairedComparison(questions=40, lost=8, gained=0, confidence=0.95)), "the set-up crosses it"
    assert dropped == {}, "no check after the last round: it finished"
    rows = {row.point: row for row in rebuild_report(tmp_path, plots=False)[0]}
    assert rows["uniform@1"].questions == 40 and rows["uniform@1"].lost == 8 and not rows["uniform@1"].dropped


def test_the_drop_is_replayed_at_round_boundaries_in_question_order() -> None:
    rule = DropRule(margin=0.05)
    order = [q.id for q in questions(48)]
    wrong = StubExecutor().run(next(p for p in points() if p.label == "uniform@4"), questions(48))
    right = StubExecutor().run(next(p for p in points() if p.label == "full"), questions(48))
    full = {q.id: to_record(points()[0], "stub-v1", q, o) for q, o in zip(questions(48), right, strict=True)}
    point = next(p for p in points() if p.label == "uniform@4")
    mine = {q.id: to_record(point, "stub-v1", q, o) for q, o in zip(questions(48), wrong, strict=True)}
    first = first_drop(rule, full, mine, order, interleave=8)
    assert first is not None and first.questions == 16 and first.lost == 16, "the first boundary with 16 questions"
    assert first_drop(rule, full, dict(list(mine.items())[:16]), order, interleave=8) == first, "later records or not"
    assert first_drop(rule, full, dict(list(mine.items())[:15]), order, interleave=8) is None, "never on 15"
    assert first_drop(rule, full, mine, order[:16], interleave=8) is None, "no check after the last round"
    with pytest.raises(InvalidInputError, match="interleave"):
        first_drop(rule, full, mine, order, interleave=0)


def test_command_refuses_a_bad_drop_margin(tmp_path: Path) -> None:
    data = tmp_path / "dev.jsonl"
    data.write_text("")
    base = ["bench", "--benchmark", "csqa", "--data", str(data), "--out", str(tmp_path / "o")]
    for extra, message in ((["--drop-worse", "120"], "from 0 to 100"),
                           (["--drop-worse", "5", "--methods", "uniform"], "add 'full'")):
        args = _parse([*base, *extra])
        with pytest.raises(InvalidInputError, match=message):
            args.handler(args, io.StringIO())
