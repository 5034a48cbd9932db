"""`bench` and `profile` with a question that cannot be run: it is named and skipped, the run goes on, and a
re-run does the same instead of failing again."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from litestage_chain import LoadedModel, SkipPlan
from litestage_chain.bench.methods import MethodPoint
from litestage_chain.bench.records import RECORDS_FILE, Outcome, RecordStore
from litestage_chain.bench.runner import run_points
from litestage_chain.data.types import Question
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.question_fit import fitting_questions
from litestage_chain.offline.evaluator import ChainEvaluator

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_bench_runner import StubExecutor, points, questions  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class OneBadQuestion(StubExecutor):
    """Fails any batch holding question `bad`, as the engine fails a batch with one over-long prompt."""

    def __init__(self, bad: str) -> None:
        super().__init__()
        self.bad = bad

    def run(self, point: MethodPoint, questions: Sequence[Question]) -> list[Outcome]:
        if any(q.id == self.bad for q in questions):
            self.calls.append((point.label, [q.id for q in questions]))
            raise InvalidInputError("prompt 1 (9000 tokens) does not fit the model's context of 8192 tokens")
        return super().run(point, questions)


def test_one_failing_question_is_skipped_for_every_point_and_named(tmp_path: Path) -> None:
    path = tmp_path / RECORDS_FILE
    executor = OneBadQuestion("q2")
    failures: dict[str, str] = {}
    with pytest.warns(UserWarning, match="question q2 skipped"):
        records = run_points(executor, points()[:3], questions(5), RecordStore(path), interleave=4, progress=False,
                             failures=failures)
    assert set(failures) == {"q2"} and "does not fit" in failures["q2"]
    assert {r.question_id for r in records} == {"q0", "q1", "q3", "q4"} and len(records) == 3 * 4
    tried_alone = [ids for _, ids in executor.calls if ids == ["q2"]]
    assert len(tried_alone) == 1, "after failing once it is not run for the other points"

    again = OneBadQuestion("q2")
    with pytest.warns(UserWarning, match="question q2 skipped"):
        rerun = run_points(again, points()[:3], questions(5), RecordStore(path), interleave=4, progress=False)
    assert len(rerun) == 12 and all(ids == ["q2"] for _, ids in again.calls), "the re-run only retries q2"


@pytest.fixture(scope="module")
def long_context() -> LoadedModel:
    from tiny_models import tiny_long_context_llama

    from litestage_chain import from_pretrained_objects

    return from_pretrained_objects(*tiny_long_context_llama(), name="tiny-long")


@pytest.fixture(params=["separate", "continued", "shared"])
def evaluator(long_context: LoadedModel, request: pytest.FixtureRequest) -> ChainEvaluator:
    """In every reasoning format: the continued summary's prompt is rendered from the analysis's turn."""
    return ChainEvaluator(long_context, max_tokens={"recall": 4, "analysis": 4, "summary": 4}, num_shots=0,
                          context=request.param)


def _question(qid: str, text: str) -> Question:
    return Question(id=qid, question=text, benchmark="t", answer="A",
                    choices=[{"label": "A", "text": "x"}, {"label": "B", "text": "y"}])


def test_a_question_too_long_for_the_context_is_named_before_the_run(evaluator: ChainEvaluator) -> None:
    short = _question("short", "Is ice cold?")
    long = _question("long", "word " * 900)  # the tiny model's context is 4096 byte tokens
    with pytest.warns(UserWarning, match=r"skipping 1 of 2 question\(s\).*long: its recall prompt"):
        kept, skipped = fitting_questions(evaluator, [long, short])
    assert [q.id for q in kept] == ["short"] and list(skipped) == ["long"]


def test_questions_that_pass_the_check_run_through_every_stage(evaluator: ChainEvaluator) -> None:
    """The check is an upper bound: a question just under it runs through all stages without an error."""
    longest = None
    for words in range(700, 900, 4):
        question = _question(f"w{words}", "word " * words)
        kept, _ = fitting_questions(evaluator, [question])
        if not kept:
            break
        longest = question
    assert longest is not None
    result = evaluator.evaluate({s: SkipPlan() for s in ("recall", "analysis", "summary")}, [longest])
    assert set(result.answers) == {longest.id}
