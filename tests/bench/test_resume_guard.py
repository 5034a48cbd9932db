"""A results folder holding another run's records is not taken over by a run with another identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from litestage_chain import InvalidInputError
from litestage_chain.bench.records import RECORDS_FILE, RecordStore
from litestage_chain.bench.results import RUN_FILE, check_resumable, read_run, write_run
from litestage_chain.bench.runner import run_points
from tests.bench.test_bench_executor import _bench, bench_setup  # noqa: F401  (the fixture)
from tests.bench.test_bench_runner import StubExecutor, points, questions

META = {"benchmark": "t", "questions": 4, "weights": "int4", "kernel": "avx512_vnni", "interleave": 2, "workers": 2}
SETTINGS = {"weights": "int4", "kernel": "avx512_vnni", "interleave": 2}


def measured(folder: Path, identity: str = "stub-v1") -> None:
    """A run of the stub in `folder`: its run.json and records."""
    stub, pts, qs = StubExecutor(identity), points()[:2], questions(4)
    write_run(folder, META, pts, stub.identity, [q.id for q in qs])
    run_points(stub, pts, qs, RecordStore(folder / RECORDS_FILE), interleave=2, progress=False)


def test_another_identity_is_refused_and_the_message_names_what_differs(tmp_path: Path) -> None:
    measured(tmp_path)
    before = (tmp_path / RUN_FILE).read_text()
    with pytest.raises(InvalidInputError) as raised:
        check_resumable(tmp_path, "stub-v2", {**SETTINGS, "kernel": "avx2"})
    message = str(raised.value)
    assert "holds 8 records of another run (kernel 'avx512_vnni' there, 'avx2' here)" in message
    assert "--new-run" in message and (tmp_path / RUN_FILE).read_text() == before


def test_the_same_identity_an_empty_folder_or_a_run_without_records_pass(tmp_path: Path) -> None:
    check_resumable(tmp_path / "absent", "stub-v2", SETTINGS)
    measured(tmp_path)
    check_resumable(tmp_path, "stub-v1", SETTINGS)
    other = tmp_path / "written-only"
    write_run(other, META, points()[:1], "stub-v1", ["q0"])
    check_resumable(other, "stub-v2", SETTINGS)


def test_the_same_identity_with_other_rounds_is_refused(tmp_path: Path) -> None:
    measured(tmp_path)
    with pytest.raises(InvalidInputError, match="interleave 2 there, 4 here"):
        check_resumable(tmp_path, "stub-v1", {**SETTINGS, "interleave": 4})


def test_a_run_json_without_the_field_says_it_was_not_recorded(tmp_path: Path) -> None:
    measured(tmp_path)
    document = json.loads((tmp_path / RUN_FILE).read_text())
    del document["meta"]["kernel"]
    (tmp_path / RUN_FILE).write_text(json.dumps(document))
    with pytest.raises(InvalidInputError, match="kernel 'not recorded' there, 'avx2' here"):
        check_resumable(tmp_path, "stub-v2", {**SETTINGS, "kernel": "avx2"})


@pytest.mark.parametrize("damage", ['{"meta": ', "[]", '{"meta": null}'])
def test_an_unreadable_run_json_blocks_only_a_run_that_would_orphan_other_records(tmp_path: Path, damage: str) -> None:
    measured(tmp_path)
    (tmp_path / RUN_FILE).write_text(damage)
    check_resumable(tmp_path, "stub-v1", SETTINGS)  # every record is this run's: its run.json is simply rewritten
    with pytest.raises(InvalidInputError, match="8 records of another run and its run.json is missing or unreadable"):
        check_resumable(tmp_path, "stub-v2", SETTINGS)


def test_the_bench_command_refuses_another_run_in_the_folder_unless_told(bench_setup: dict[str, Path]) -> None:  # noqa: F811
    base = ["bench", "--benchmark", "toy", "--data", str(bench_setup["data"]), "--model", str(bench_setup["model"]),
            "--out", str(bench_setup["out"]), "--limit", "2", "--shots", "0", "--methods", "full", "--no-progress",
            "--no-plots"]
    _bench([*base, "--max-tokens", "recall=2,analysis=2,summary=2"])
    first = read_run(bench_setup["out"])
    assert first["meta"]["kernel"] == "aten", "float32 weights: no low-bit kernel"
    with pytest.raises(InvalidInputError, match=r"max_tokens \{.*'recall': 2.*\} there, \{.*'recall': 3.*\} here"):
        _bench([*base, "--max-tokens", "recall=3,analysis=2,summary=2"])
    assert read_run(bench_setup["out"]) == first, "the folder's run is untouched"
    _bench([*base, "--max-tokens", "recall=3,analysis=2,summary=2", "--new-run"])
    assert read_run(bench_setup["out"])["identity"] != first["identity"]
