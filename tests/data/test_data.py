"""Data loaders: JSONL parsing, bad-row reporting, strict mode, seeded slices, benchmark entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from litestage_chain.data import (
    DataError,
    Question,
    load_benchmark,
    load_jsonl,
    question_fingerprint,
    report_questions,
    search_questions,
    seeded_slice,
)
from litestage_chain.errors import LiteStageError

CHOICES = [{"label": "A", "text": "bank"}, {"label": "B", "text": "library"}, {"label": "C", "text": "mall"}]


def row(qid: str, answer: str | None = "A", **extra) -> dict:
    record = {"id": qid, "question": f"Question {qid}?", "choices": CHOICES, "answer": answer}
    record.update(extra)
    return record


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line if isinstance(line, str) else json.dumps(line))
            handle.write("\n")
    return path


def test_good_file_loads_every_row_in_order(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [row("q1", "A", question_concept="x"), row("q2", "C")])
    questions = load_jsonl(path, benchmark="csqa")
    assert [q.id for q in questions] == ["q1", "q2"]
    assert questions.split == "train" and questions.benchmark == "csqa"
    first = questions[0]
    assert first.answer == "A" and first.labels == ["A", "B", "C"] and first.choice_text("B") == "library"
    assert first.metadata == {"question_concept": "x"}
    assert questions.report.ok and questions.report.rows_read == 2 and questions.report.rows_kept == 2
    assert questions.labelled


def test_every_kind_of_bad_row_is_reported_with_line_and_id(tmp_path: Path) -> None:
    lines = [
        row("good1"),
        row("noanswer", None),  # line 2
        row("wrong", "Z"),  # line 3
        {"id": "onechoice", "question": "Q?", "choices": [{"label": "A", "text": "x"}], "answer": "A"},  # 4
        '{"id": "broken", "question": ',  # line 5: malformed JSON
        "",  # blank line 6: skipped, not an issue
        row("good1"),  # line 7: duplicate id
        ["not", "an", "object"],  # line 8
        {"id": "nochoices", "question": "Q?", "answer": "A"},  # line 9
        {"id": "dup-labels", "question": "Q?", "choices": [{"label": "A", "text": "x"}] * 2, "answer": "A"},  # 10
        row("good2", "B"),  # line 11
    ]
    path = write_jsonl(tmp_path / "dev.jsonl", lines)
    with pytest.warns(UserWarning, match="refused 8"):
        questions = load_jsonl(path, benchmark="csqa")
    assert [q.id for q in questions] == ["good1", "good2"]
    report = questions.report
    assert report.rows_read == 10 and report.rows_kept == 2
    by_line = {issue.line: issue for issue in report.issues}
    assert sorted(by_line) == [2, 3, 4, 5, 7, 8, 9, 10]
    assert by_line[2].id == "noanswer" and by_line[2].problem == "missing answer"
    assert "'Z' is not among the choice labels" in by_line[3].problem
    assert "at least 2 choices" in by_line[4].problem and by_line[4].id == "onechoice"
    assert by_line[5].problem.startswith("malformed JSON") and by_line[5].id is None
    assert "duplicate id (first seen at line 1)" in by_line[7].problem
    assert "not an object" in by_line[8].problem
    assert "missing field(s) ['choices']" in by_line[9].problem
    assert "duplicate choice labels ['A']" in by_line[10].problem
    assert "line 3 (id 'wrong')" in report.summary()


def test_strict_mode_raises_listing_the_bad_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [row("ok"), row("bad", "Q"), "{nope"])
    with pytest.raises(DataError) as caught:
        load_jsonl(path, benchmark="obqa", strict=True)
    message = str(caught.value)
    assert "line 2 (id 'bad')" in message and "line 3: malformed JSON" in message
    assert isinstance(caught.value, LiteStageError)


def test_unlabelled_rows_accepted_only_when_asked(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", [row("u1", None), row("u2", "")])
    unlabelled = load_jsonl(path, benchmark="csqa", require_answer=False, strict=True)
    assert [q.answer for q in unlabelled] == [None, None] and not unlabelled.labelled
    with pytest.raises(DataError, match="no usable questions") as caught:
        load_jsonl(path, benchmark="csqa")
    assert "line 1 (id 'u1'): missing answer" in str(caught.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_jsonl(tmp_path / "absent.jsonl", benchmark="csqa")


def test_question_model_rejects_inconsistent_answers() -> None:
    with pytest.raises(ValueError, match="not among the choice labels"):
        Question(id="x", question="Q?", choices=CHOICES, answer="D", benchmark="csqa")
    with pytest.raises(KeyError, match="no option 'D'"):
        Question(id="x", question="Q?", choices=CHOICES, answer="A", benchmark="csqa").choice_text("D")


def make_set(tmp_path: Path, n: int, name: str = "train"):
    return load_jsonl(write_jsonl(tmp_path / f"{name}.jsonl", [row(f"q{i}") for i in range(n)]), benchmark="csqa")


def test_seeded_slices_are_reproducible_nested_and_seed_dependent(tmp_path: Path) -> None:
    questions = make_set(tmp_path, 200)
    a = seeded_slice(questions, 20, seed=1)
    assert [q.id for q in a] == [q.id for q in seeded_slice(questions, 20, seed=1)]
    assert a.split == "train[n=20,seed=1]" and len(a) == 20
    positions = [int(q.id[1:]) for q in a]
    assert positions == sorted(positions), "slice keeps source order"
    bigger = {q.id for q in seeded_slice(questions, 50, seed=1)}
    assert {q.id for q in a} <= bigger
    assert {q.id for q in a} != {q.id for q in seeded_slice(questions, 20, seed=2)}
    assert a.fingerprint != seeded_slice(questions, 20, seed=2).fingerprint
    with pytest.raises(DataError, match="only 200"):
        seeded_slice(questions, 201)
    with pytest.raises(DataError, match="positive"):
        seeded_slice(questions, 0)


def test_fingerprint_changes_with_content_not_metadata() -> None:
    base = Question(id="x", question="Q?", choices=CHOICES, answer="A", benchmark="csqa")
    same = base.model_copy(update={"metadata": {"facts": ["f"]}})
    other = base.model_copy(update={"answer": "B"})
    assert question_fingerprint([base]) == question_fingerprint([same])
    assert question_fingerprint([base]) != question_fingerprint([other])


def test_benchmark_entry_points_use_train_for_search_and_dev_for_report(tmp_path: Path, monkeypatch) -> None:
    write_jsonl(tmp_path / "obqa" / "train.jsonl", [row(f"t{i}") for i in range(30)])
    write_jsonl(tmp_path / "obqa" / "dev.jsonl", [row(f"d{i}") for i in range(10)])
    search = search_questions("obqa", 5, seed=3, data_dir=tmp_path)
    assert len(search) == 5 and all(q.id.startswith("t") for q in search)
    assert len(report_questions("obqa", data_dir=tmp_path)) == 10
    assert len(report_questions("obqa", 4, data_dir=tmp_path)) == 4
    write_jsonl(tmp_path / "obqa" / "train.jsonl", [row(f"t{i}", answer=None) for i in range(30)])
    with pytest.raises(DataError, match="line 1 \\(id 't0'\\): missing answer"):  # bad rows for accuracy...
        search_questions("obqa", 5, seed=3, data_dir=tmp_path)
    unlabelled = search_questions("obqa", 5, seed=3, data_dir=tmp_path, require_answer=False)  # ...not for agreement
    assert len(unlabelled) == 5 and all(q.answer is None for q in unlabelled)
    monkeypatch.setenv("LITESTAGE_DATA_DIR", str(tmp_path))
    assert len(load_benchmark("obqa", "dev")) == 10
    with pytest.raises(DataError, match=r"no 'test' split for obqa.*available: \['dev', 'train'\]"):
        load_benchmark("obqa", "test")
    with pytest.raises(DataError, match="unknown benchmark 'mmlu'"):
        load_benchmark("mmlu", "dev")
    monkeypatch.delenv("LITESTAGE_DATA_DIR")
    with pytest.raises(DataError, match="LITESTAGE_DATA_DIR"):
        load_benchmark("obqa", "dev")


def test_an_invalid_utf8_byte_refuses_only_its_row_with_its_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dev.jsonl", [row("q1"), row("q2"), row("q3")])
    path.write_bytes(path.read_bytes().replace(b"Question q2?", b"Question q2\xff?"))
    with pytest.warns(UserWarning):
        questions = load_jsonl(path, benchmark="csqa")
    assert [q.id for q in questions] == ["q1", "q3"]
    (issue,) = questions.report.issues
    assert issue.line == 2 and "invalid UTF-8 at byte" in issue.problem


def test_a_utf8_byte_order_mark_is_not_a_malformed_first_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dev.jsonl", [row("q1"), row("q2")])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    questions = load_jsonl(path, benchmark="csqa")
    assert [q.id for q in questions] == ["q1", "q2"] and questions.report.ok
