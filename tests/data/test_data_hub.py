"""The `datasets` code path, run against an in-process stand-in for the `datasets` module.

The hub is not reachable in CI, so these tests replace `datasets.load_dataset` with a function that
returns rows in the hub's own column layout. The mapping, validation and error handling under test
are the real code.
"""

from __future__ import annotations

import sys
import types

import pytest

from litestage_chain.data import HUB_SOURCES, DataError, load_benchmark, load_hub


def fake_datasets(monkeypatch, splits: dict[tuple[str, str | None, str], list[dict]], calls: list | None = None):
    module = types.ModuleType("datasets")

    def load_dataset(repo, config=None, *, split, cache_dir=None):
        if calls is not None:
            calls.append((repo, config, split))
        try:
            return splits[(repo, config, split)]
        except KeyError:
            raise FileNotFoundError(f"no such split {repo}/{config}/{split}") from None

    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)


CSQA_ROW = {
    "id": "075e483d21c29a511267ef62bedc0461",
    "question": "The sanctions against the school were a punishing blow, and they seemed to what?",
    "question_concept": "punishing",
    "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["ignore", "enforce", "authoritarian", "yell at", "avoid"]},
    "answerKey": "A",
}


def test_csqa_hub_rows_map_to_questions(monkeypatch) -> None:
    calls: list = []
    unlabelled = dict(CSQA_ROW, id="t1", answerKey="")
    fake_datasets(monkeypatch, {("tau/commonsense_qa", None, "validation"): [CSQA_ROW],
                                ("tau/commonsense_qa", None, "test"): [unlabelled]}, calls)
    dev = load_benchmark("csqa", "dev", source="hub")
    assert calls == [("tau/commonsense_qa", None, "validation")]
    q = dev[0]
    assert q.id == CSQA_ROW["id"] and q.answer == "A" and q.benchmark == "csqa"
    assert [(c.label, c.text) for c in q.choices][:2] == [("A", "ignore"), ("B", "enforce")]
    assert q.metadata == {"question_concept": "punishing"}
    assert dev.source == "hub:tau/commonsense_qa[validation]"
    test = load_hub("csqa", "test", require_answer=False)
    assert test[0].answer is None


def test_obqa_and_strategyqa_mappings(monkeypatch) -> None:
    obqa = {"id": "7-980", "question_stem": "The sun is responsible for",
            "choices": {"text": ["puppies learning", "plants sprouting", "a rose dying", "a plant dying"],
                        "label": ["A", "B", "C", "D"]}, "answerKey": "B"}
    sqa_yes = {"qid": "q1", "term": "T", "description": "D", "question": "Is it so?", "answer": True,
               "facts": "Fact one. Fact two."}
    sqa_no = dict(sqa_yes, qid="q2", answer=False)
    fake_datasets(monkeypatch, {("allenai/openbookqa", "main", "train"): [obqa],
                                ("ChilleD/StrategyQA", None, "test"): [sqa_yes, sqa_no]})
    o = load_hub("obqa", "train")[0]
    assert o.question == "The sun is responsible for" and o.answer == "B" and len(o.choices) == 4
    s = load_hub("strategyqa", "dev")
    assert [(q.id, q.answer) for q in s] == [("q1", "A"), ("q2", "B")]
    assert [(c.label, c.text) for c in s[0].choices] == [("A", "yes"), ("B", "no")]
    assert s[0].metadata["facts"] == "Fact one. Fact two."


def test_bad_hub_rows_are_reported_by_row_number(monkeypatch) -> None:
    rows = [
        CSQA_ROW,
        dict(CSQA_ROW, id="nokey", answerKey=""),
        dict(CSQA_ROW, id="ragged", choices={"label": ["A", "B"], "text": ["x"]}),
    ]
    fake_datasets(monkeypatch, {("tau/commonsense_qa", None, "train"): rows})
    with pytest.warns(UserWarning, match="refused 2"):
        train = load_hub("csqa", "train")
    assert len(train) == 1
    assert [(i.line, i.id) for i in train.report.issues] == [(2, "nokey"), (3, "ragged")]
    assert train.report.issues[0].problem == "missing answer"
    with pytest.raises(DataError, match="row 2|line 2"):
        load_hub("csqa", "train", strict=True)
    sqa_bad = {"qid": "weird", "question": "Q?", "answer": "maybe"}
    fake_datasets(monkeypatch, {("ChilleD/StrategyQA", None, "train"): [sqa_bad]})
    with pytest.raises(DataError, match="not a boolean"):
        load_hub("strategyqa", "train")


def test_missing_datasets_package_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(DataError, match=r"needs the `datasets` package \(pip install datasets\)"):
        load_hub("obqa", "dev")


def test_unreachable_hub_is_a_clear_error(monkeypatch) -> None:
    module = types.ModuleType("datasets")

    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/openbookqa' on the Hub (LocalEntryNotFoundError)")

    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    with pytest.raises(DataError, match=r"could not load hub:allenai/openbookqa/main\[validation\].*ConnectionError.*source='jsonl'"):
        load_hub("obqa", "dev")


def test_unknown_split_or_benchmark() -> None:
    with pytest.raises(DataError, match=r"no split 'test' here; available: \['dev', 'train'\]"):
        load_hub("strategyqa", "test")
    with pytest.raises(DataError, match="no hub source known"):
        load_hub("mmlu", "dev")
    assert set(HUB_SOURCES) == {"csqa", "obqa", "strategyqa"}
