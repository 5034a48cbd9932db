"""Append-only logs (search log, benchmark records) under concurrent writers, torn lines and bad bytes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from litestage_chain.append_store import append_lines, damaged_path, read_lines
from litestage_chain.offline.store import EvalResult, ResultsStore, StoreError
from litestage_chain.engine.skip_plan import SkipPlan

PLANS = {"recall": SkipPlan(), "analysis": SkipPlan(), "summary": SkipPlan()}


def _result(index: int) -> EvalResult:
    # long answers make every record several write buffers long, where unlocked appends interleave
    return EvalResult(accuracy=0.5, mean_latency_seconds=float(index),
                      answers={f"q{i}": "A" * 40 for i in range(400)})


def _writer(path: str, worker: int, count: int) -> None:
    store = ResultsStore(path)
    for index in range(count):
        plans = {**PLANS, "recall": SkipPlan(attention=[worker, 30 + index])}
        store.put(plans, "questions", "evaluator", _result(index))


def test_two_processes_appending_to_one_search_log_leave_every_line_whole(tmp_path: Path) -> None:
    log = tmp_path / "search.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(log), w, 15)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 31
    assert all(json.loads(line)["key"] for line in lines[:-1])
    assert len(ResultsStore(log)) == 30


def test_a_torn_middle_line_is_set_aside_and_the_search_resumes(tmp_path: Path) -> None:
    log = tmp_path / "search.jsonl"
    store = ResultsStore(log)
    for index in range(3):
        store.put({**PLANS, "summary": SkipPlan(mlp=[index])}, "q", "e", _result(index))
    lines = log.read_text().splitlines()
    torn = lines[1][: len(lines[1]) // 2]  # what two unlocked writers interleaving leave
    log.write_text("\n".join([lines[0], torn, lines[2]]) + "\n")
    with pytest.warns(UserWarning, match=r"line 2;.*moved to"):
        resumed = ResultsStore(log)
    assert len(resumed) == 2
    assert damaged_path(log).read_text() == torn + "\n"
    assert log.read_text() == lines[0] + "\n" + lines[2] + "\n"
    resumed.put({**PLANS, "summary": SkipPlan(mlp=[1])}, "q", "e", _result(1))  # measured again, appended
    assert len(ResultsStore(log)) == 3


def test_invalid_utf8_in_a_log_is_set_aside_not_a_decode_error(tmp_path: Path) -> None:
    log = tmp_path / "records.jsonl"
    append_lines(log, ['{"a": 1}', '{"a": 2}'])
    log.write_bytes(log.read_bytes().replace(b'{"a": 2}', b'{"a": "\xff\xfe"}'))
    with pytest.warns(UserWarning, match="UnicodeDecodeError"):
        records = read_lines(log, json.loads, "record")
    assert records == [{"a": 1}]
    assert damaged_path(log).read_bytes() == b'{"a": "\xff\xfe"}\n'


def test_reading_and_appending_leave_nothing_beside_the_log(tmp_path: Path) -> None:
    """The lock is on the log itself: reading a committed results folder writes nothing into it."""
    log = tmp_path / "records.jsonl"
    append_lines(log, ['{"a": 1}'])
    assert read_lines(log, json.loads, "record") == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]


def test_a_log_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "search.jsonl").mkdir()  # a folder where the log should be
    with pytest.raises(StoreError, match="cannot read or repair .*search.jsonl"):
        ResultsStore(tmp_path / "search.jsonl")
