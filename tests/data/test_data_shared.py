"""The real benchmark files in the shared data folder load completely and cleanly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from litestage_chain.data import load_benchmark, search_questions

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

pytestmark = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"shared benchmark data not present at {SHARED_DATA} (it sits beside the repo on dev machines and in CI)",
)

# Row counts and label distributions as documented in the data folder's README.
EXPECTED = {
    ("csqa", "dev"): (1221, {"A": 239, "B": 255, "C": 241, "D": 251, "E": 235}),
    ("csqa", "train"): (9741, {"A": 1909, "B": 1973, "C": 1946, "D": 1985, "E": 1928}),
    ("obqa", "dev"): (500, {"A": 126, "B": 138, "C": 110, "D": 126}),
    ("obqa", "train"): (4957, {"A": 1378, "B": 1212, "C": 1146, "D": 1221}),
    ("strategyqa", "train"): (2061, {"A": 964, "B": 1097}),
    ("strategyqa", "dev"): (229, {"A": 107, "B": 122}),
}


@pytest.mark.parametrize(("bench", "split"), sorted(EXPECTED))
def test_shared_file_loads_strictly_with_documented_counts(bench: str, split: str) -> None:
    questions = load_benchmark(bench, split, data_dir=SHARED_DATA, strict=True)
    rows, labels = EXPECTED[(bench, split)]
    assert len(questions) == rows
    assert dict(Counter(q.answer for q in questions)) == labels
    assert questions.report.ok


def test_search_slice_comes_from_train_and_is_stable() -> None:
    train_ids = {q.id for q in load_benchmark("strategyqa", "train", data_dir=SHARED_DATA)}
    dev_ids = {q.id for q in load_benchmark("strategyqa", "dev", data_dir=SHARED_DATA)}
    first = search_questions("strategyqa", 50, seed=0, data_dir=SHARED_DATA)
    again = search_questions("strategyqa", 50, seed=0, data_dir=SHARED_DATA)
    assert first.fingerprint == again.fingerprint
    ids = {q.id for q in first}
    assert ids <= train_ids and not ids & dev_ids
