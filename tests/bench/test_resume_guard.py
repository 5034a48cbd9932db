"""A results folder holding another run's records is not taken over by a run with another identity."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from litestage_chain import InvalidInputError
from litestage_chain.bench.records import RECORDS_FILE, RecordStore
from litestage_chain.bench.results import RUN_FILE, check_resumable, write_run
from litestage_chain.bench.runner import run_points
from litestage_chain.cli.bench import add_bench_subcommand
from tests.bench.test_bench_runner import StubExecutor, points, questions

META = {"benchmark": "t", "questions": 4, "weights": "int4", "kernel": "avx512_vnni", "workers": 2}


def measured(folder: Path, identity: str = "stub-v1") -> None:
    """A run of the stub in `folder`: its run.json and records."""
    stub, pts, qs = StubExecutor(identity), points()[:2], questions(4)
    write_run(folder, META, pts, stub.identity, [q.id for q in qs])
    run_points(stub, pts, qs, RecordStore(folder / RECORDS_FILE), interleave=2, progress=False)


def test_another_identity_is_refused_and_the_message_names_what_differs(tmp_path: Path) -> None:
    measured(tmp_path)
    before = (tmp_path / RUN_FILE).read_text()
    with pytest.raises(InvalidInputError) as raised:
        check_resumable(tmp_path, "stub-v2", {**META, "kernel": "avx2", "workers": 1})
    message = str(raised.value)
    assert "holds 8 records of another run (kernel 'avx512_vnni' there, 'avx2' here)" in message
    assert "workers" not in message, "a resume may use another number of workers"
    assert "--new-run" in message and (tmp_path / RUN_FILE).read_text() == before


def test_the_same_identity_an_empty_folder_or_a_run_without_records_pass(tmp_path: Path) -> None:
    check_resumable(tmp_path / "absent", "stub-v2", META)
    measured(tmp_path)
    check_resumable(tmp_path, "stub-v1", {**META, "workers": 1})
    other = tmp_path / "written-only"
    write_run(other, META, points()[:1], "stub-v1", ["q0"])
    check_resumable(other, "stub-v2", META)


def test_a_run_json_without_the_field_says_it_was_not_recorded(tmp_path: Path) -> None:
    measured(tmp_path)
    document = json.loads((tmp_path / RUN_FILE).read_text())
    del document["meta"]["kernel"]
    (tmp_path / RUN_FILE).write_text(json.dumps(document))
    with pytest.raises(InvalidInputError, match="kernel 'not recorded' there, 'avx2' here"):
        check_resumable(tmp_path, "stub-v2", {**META, "kernel": "avx2"})


def test_the_cli_has_the_override() -> None:
    parser = argparse.ArgumentParser()
    add_bench_subcommand(parser.add_subparsers())
    args = parser.parse_args(["bench", "--benchmark", "t", "--out", "o", "--new-run"])
    assert args.new_run is True
