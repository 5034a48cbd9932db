"""Budget search on a stubbed evaluator with known numbers: choice rule, stage order, early stop, metrics, resume."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from litestage_chain import InvalidInputError, SkipPlan
from litestage_chain.budgets.profile import ModelIdentity, Profile, SearchedQuestions
from litestage_chain.data.types import Question
from litestage_chain.offline.search import SearchConfig, search_budgets
from litestage_chain.append_store import damaged_path
from litestage_chain.offline.store import EvalResult, ResultsStore

RANKING = [(layer, kind) for layer in (5, 2, 7, 1, 4, 0, 6, 3) for kind in ("attention", "mlp")]
QUESTIONS = [
    Question(id=f"q{i}", question=f"question {i}?", choices=[{"label": "A", "text": "x"}, {"label": "B", "text": "y"}],
             answer="A", benchmark="csqa")
    for i in range(10)
]

# Per-stage tables indexed by skip count: (accuracy drop, stage latency in seconds).
# "analysis" is the slowest stage and its latency is NOT monotonic: at 3 and 4 skips the model rambles.
TABLES = {
    "analysis": [(0.00, 3.0), (0.00, 2.6), (0.01, 2.0), (0.01, 2.5), (0.02, 2.3), (0.10, 1.7), (0.20, 1.5),
                 (0.30, 1.4), (0.30, 1.3)],
    "recall": [(0.00, 2.0), (0.00, 1.8), (0.01, 1.6), (0.01, 1.4), (0.04, 1.2), (0.05, 1.0), (0.50, 0.9),
               (0.50, 0.8), (0.50, 0.7)],
    "summary": [(0.00, 1.0), (0.00, 0.9), (0.00, 0.8), (0.30, 0.7), (0.30, 0.6), (0.30, 0.5), (0.30, 0.4),
                (0.30, 0.3), (0.30, 0.2)],
}
FULL_ACCURACY = 0.8


def counts_of(plans: Mapping[str, SkipPlan]) -> dict[str, int]:
    """Recover each stage's skip count; the plans must be prefixes of RANKING (as the search builds them)."""
    counts = {}
    for stage, plan in plans.items():
        count = plan.num_skipped
        assert plan == SkipPlan.from_sublayers(RANKING[:count]), "plans are ranking prefixes"
        counts[stage] = count
    return counts


class TableEvaluator:
    """Accuracy = FULL_ACCURACY - the drops of every stage; latency = the sum of the stage latencies."""

    identity = "table-evaluator-v1"

    def __init__(self) -> None:
        self.calls: list[dict[str, int]] = []

    def evaluate(self, plans: Mapping[str, SkipPlan], questions: Sequence[Question]) -> EvalResult:
        counts = counts_of(plans)
        self.calls.append(counts)
        drop = sum(TABLES[stage][count][0] for stage, count in counts.items())
        stage_latency = {stage: TABLES[stage][count][1] for stage, count in counts.items()}
        accuracy = round(FULL_ACCURACY - drop, 10)
        wrong = round((1 - accuracy) * len(questions))
        answers = {q.id: ("B" if i < wrong else "A") for i, q in enumerate(questions)}
        return EvalResult(
            accuracy=accuracy,
            mean_latency_seconds=sum(stage_latency.values()),
            stage_latency_seconds=stage_latency,
            generated_tokens_per_stage={stage: 10.0 * (1 + count) for stage, count in counts.items()},
            answers=answers,
        )


CONFIG = SearchConfig(epsilon=0.02, max_skip=8, collapse_margin=0.05, patience=2)


def test_picks_fastest_candidate_meeting_the_target_per_stage() -> None:
    evaluator = TableEvaluator()
    result = search_budgets(evaluator, QUESTIONS, RANKING, CONFIG)
    assert result.full_score == pytest.approx(0.8) and result.target == pytest.approx(0.78)
    assert result.stage_order == ["analysis", "recall", "summary"]  # slowest first
    # analysis: counts 0..4 meet 0.78; fastest of them is 2 (2.0 s), not the largest passing count 4 (2.3 s).
    # recall (analysis fixed at 2, drop 0.01): counts 0..3 meet; fastest is 3 (1.4 s). Then drop is 0.02.
    # summary: counts 0..2 add no drop; fastest is 2.
    assert result.skip_counts == {"analysis": 2, "recall": 3, "summary": 2}
    assert result.plans["analysis"] == SkipPlan.from_sublayers(RANKING[:2])
    assert result.plans["recall"] == SkipPlan.from_sublayers(RANKING[:3])
    assert result.final.mean_latency_seconds == pytest.approx(2.0 + 1.4 + 0.8)
    assert result.final_score >= result.target
    chosen = [(e.stage, e.skip_count) for e in result.trace if e.chosen]
    assert chosen == [("analysis", 2), ("recall", 3), ("summary", 2)]
    assert len(set(map(lambda c: tuple(sorted(c.items())), evaluator.calls))) == len(evaluator.calls), "no repeats"
    assert result.evaluations == len(evaluator.calls)


def test_sweep_stops_after_consecutive_collapses_but_not_after_a_dip() -> None:
    evaluator = TableEvaluator()
    result = search_budgets(evaluator, QUESTIONS, RANKING, CONFIG)
    swept = {stage: [e.skip_count for e in result.trace if e.stage == stage] for stage in result.stage_order}
    # analysis: 5 (0.70) and 6 (0.60) are both > 0.05 below 0.78 -> stop before 7.
    assert swept["analysis"] == [0, 1, 2, 3, 4, 5, 6]
    # recall: 4 (0.75) and 5 (0.74) are below target but within the margin, so the sweep goes on; 6 and 7 collapse.
    assert swept["recall"] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert swept["summary"] == [0, 1, 2, 3, 4]
    evaluated_analysis = sorted({c["analysis"] for c in evaluator.calls if c["recall"] == 0 and c["summary"] == 0})
    assert evaluated_analysis == [0, 1, 2, 3, 4, 5, 6]


def test_zero_epsilon_and_step() -> None:
    result = search_budgets(TableEvaluator(), QUESTIONS, RANKING, SearchConfig(epsilon=0.0, step=2, max_skip=8))
    # epsilon 0: analysis may only use counts with no drop (0; 2 has drop 0.01); recall 2 has drop -> 0; summary 2.
    assert result.skip_counts == {"analysis": 0, "recall": 0, "summary": 2}
    assert all(e.skip_count % 2 == 0 for e in result.trace)


def test_trace_becomes_a_profile() -> None:
    result = search_budgets(TableEvaluator(), QUESTIONS, RANKING, CONFIG)
    profile = result.to_profile(
        model=ModelIdentity(name="tiny", weights_sha256="ab" * 32),
        questions=SearchedQuestions(benchmark="csqa", split="train[n=10,seed=0]", size=10, seed=0),
        context="continued",
    )
    again = Profile.from_json(profile.to_json())
    assert again.context == "continued", "the format searched in is stamped by to_profile"
    assert again.plan_for("recall") == SkipPlan.from_sublayers(RANKING[:3])
    assert again.early_exit_for("recall") is None
    assert again.stage_order == ["analysis", "recall", "summary"]
    assert [tuple(x) for x in again.importance] == RANKING
    assert again.trace == result.trace and again.epsilon == 0.02
    assert again.questions.fingerprint == result.questions_fingerprint


class AgreementEvaluator(TableEvaluator):
    """Unlabelled questions: skipping summary sub-layers flips answers of the first `count` questions."""

    identity = "agreement-evaluator"

    def evaluate(self, plans, questions):
        base = super().evaluate(plans, questions)
        flips = counts_of(plans)["summary"]
        answers = {q.id: ("B" if i < flips else None if i == 9 else "A") for i, q in enumerate(questions)}
        return base.model_copy(update={"accuracy": None, "answers": answers})


def test_agreement_metric_for_unlabelled_questions() -> None:
    unlabelled = [q.model_copy(update={"answer": None}) for q in QUESTIONS]
    config = SearchConfig(stages=("summary",), metric="agreement", epsilon=0.1, max_skip=8, collapse_margin=0.0)
    result = search_budgets(AgreementEvaluator(), unlabelled, RANKING, config)
    assert result.full_score == 1.0  # the full model agrees with itself, including its unreadable answer
    # agreement = 1 - count/10 >= 0.9 -> counts 0 and 1; 1 is faster.
    assert result.skip_counts == {"summary": 1}
    with pytest.raises(InvalidInputError, match="needs every question labelled"):
        search_budgets(AgreementEvaluator(), unlabelled, RANKING, SearchConfig(metric="accuracy"))


class CrashingEvaluator(TableEvaluator):
    def __init__(self, crash_after: int) -> None:
        super().__init__()
        self.crash_after = crash_after

    def evaluate(self, plans, questions):
        if len(self.calls) == self.crash_after:
            raise RuntimeError("simulated crash")
        return super().evaluate(plans, questions)


def test_resume_after_a_crash_redoes_nothing(tmp_path: Path) -> None:
    uninterrupted = TableEvaluator()
    expected = search_budgets(uninterrupted, QUESTIONS, RANKING, CONFIG)
    log = tmp_path / "runs" / "search.jsonl"

    crashing = CrashingEvaluator(crash_after=9)
    with pytest.raises(RuntimeError, match="simulated crash"):
        search_budgets(crashing, QUESTIONS, RANKING, CONFIG, store=ResultsStore(log))
    assert len(log.read_text().splitlines()) == 9

    resumed_evaluator = TableEvaluator()
    resumed = search_budgets(resumed_evaluator, QUESTIONS, RANKING, CONFIG, store=ResultsStore(log))
    first_run = {tuple(sorted(c.items())) for c in crashing.calls}
    second_run = {tuple(sorted(c.items())) for c in resumed_evaluator.calls}
    assert not first_run & second_run, "nothing finished before the crash is evaluated again"
    assert len(crashing.calls) + len(resumed_evaluator.calls) == len(uninterrupted.calls)
    assert resumed.evaluations == len(uninterrupted.calls) - 9
    assert resumed.plans == expected.plans and resumed.skip_counts == expected.skip_counts
    assert sum(e.reused for e in resumed.trace if e.skip_count) == 9 - 1  # minus the full-model baseline

    # A finished search re-run from the log evaluates nothing at all.
    third = TableEvaluator()
    search_budgets(third, QUESTIONS, RANKING, CONFIG, store=ResultsStore(log))
    assert third.calls == []


def test_stored_results_are_not_reused_for_other_questions_or_evaluators(tmp_path: Path) -> None:
    log = tmp_path / "search.jsonl"
    search_budgets(TableEvaluator(), QUESTIONS, RANKING, CONFIG, store=ResultsStore(log))
    fewer = TableEvaluator()
    search_budgets(fewer, QUESTIONS[:5], RANKING, CONFIG, store=ResultsStore(log))
    assert fewer.calls, "a different question set is evaluated afresh"

    class Renamed(TableEvaluator):
        identity = "table-evaluator-v2"

    renamed = Renamed()
    search_budgets(renamed, QUESTIONS, RANKING, CONFIG, store=ResultsStore(log))
    assert renamed.calls, "a different evaluator identity is evaluated afresh"


def test_partial_last_line_is_dropped_and_damaged_lines_are_set_aside(tmp_path: Path) -> None:
    log = tmp_path / "search.jsonl"
    search_budgets(TableEvaluator(), QUESTIONS, RANKING, CONFIG, store=ResultsStore(log))
    complete = log.read_text()
    count = len(complete.splitlines())
    log.write_text(complete + '{"key": "abc", "resu')
    with pytest.warns(UserWarning, match="dropping a partial last record"):
        store = ResultsStore(log)
    assert len(store) == count and log.read_text() == complete
    lines = complete.splitlines()
    lines[3] = lines[3][:40]
    log.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"1 unreadable result record\(s\) \(line 4;"):
        repaired = ResultsStore(log)
    assert len(repaired) == count - 1
    assert damaged_path(log).read_text() == lines[3] + "\n", "the damaged line is set aside, not lost"
    record = json.loads(complete.splitlines()[0])
    assert set(record) >= {"key", "plans", "questions", "evaluator", "result"}


def test_bad_search_inputs() -> None:
    with pytest.raises(InvalidInputError, match="exceeds the 16 ranked"):
        search_budgets(TableEvaluator(), QUESTIONS, RANKING, SearchConfig(max_skip=17))
    with pytest.raises(InvalidInputError, match="at least one question"):
        search_budgets(TableEvaluator(), [], RANKING)
    with pytest.raises(InvalidInputError, match="ranking is empty"):
        search_budgets(TableEvaluator(), QUESTIONS, [])

    class NoLatency(TableEvaluator):
        def evaluate(self, plans, questions):
            return super().evaluate(plans, questions).model_copy(update={"stage_latency_seconds": {}})

    with pytest.raises(InvalidInputError, match=r"no latency for stage\(s\) \['recall', 'analysis', 'summary'\]"):
        search_budgets(NoLatency(), QUESTIONS, RANKING, CONFIG)

    class Forgetful(TableEvaluator):
        def evaluate(self, plans, questions):
            result = super().evaluate(plans, questions)
            return result.model_copy(update={"answers": {"q0": "A"}})

    with pytest.raises(InvalidInputError, match=r"no answer for question\(s\) \['q1'"):
        search_budgets(Forgetful(), QUESTIONS, RANKING, CONFIG)


class FixedAccuracyEvaluator:
    """Every plan scores the same accuracy: only the full model's signal matters here."""

    identity = "fixed-accuracy-v1"

    def __init__(self, accuracy: float) -> None:
        self.accuracy = accuracy

    def evaluate(self, plans: Mapping[str, SkipPlan], questions: Sequence[Question]) -> EvalResult:
        right = round(self.accuracy * len(questions))
        return EvalResult(
            accuracy=self.accuracy, mean_latency_seconds=1.0 + sum(p.num_skipped for p in plans.values()),
            stage_latency_seconds={stage: 1.0 for stage in plans},
            answers={q.id: ("A" if i < right else "B") for i, q in enumerate(questions)},
        )


def _questions(count: int, choices: int) -> list[Question]:
    labels = "ABCDE"[:choices]
    return [Question(id=f"c{i}", question=f"question {i}?", answer="A", benchmark="csqa",
                     choices=[{"label": label, "text": label.lower()} for label in labels]) for i in range(count)]


def test_a_full_model_at_chance_makes_the_result_carry_a_caveat() -> None:
    """48 yes/no questions at 50%: a plan that wrecks the model would still 'meet' the accuracy target."""
    config = SearchConfig(step=4, max_skip=4)
    with pytest.warns(UserWarning, match=r"not measurably above chance \(0.500\)"):
        result = search_budgets(FixedAccuracyEvaluator(0.5), _questions(48, 2), RANKING, config)
    assert len(result.caveats) == 1 and "agreement metric" in result.caveats[0]
    profile = result.to_profile(
        model=ModelIdentity(name="m", weights_sha256="a" * 64),
        questions=SearchedQuestions(benchmark="csqa", split="train", size=48), notes="searched by a test",
        context="separate",
    )
    assert profile.notes.startswith("searched by a test\nthe full model's accuracy on the 48 searched questions")


def test_a_full_model_clearly_above_chance_gives_no_caveat(recwarn: pytest.WarningsRecorder) -> None:
    config = SearchConfig(step=4, max_skip=4)
    result = search_budgets(FixedAccuracyEvaluator(0.5), _questions(48, 5), RANKING, config)  # chance 0.2
    assert result.caveats == [] and not [w for w in recwarn if "chance" in str(w.message)]
    agreement = search_budgets(FixedAccuracyEvaluator(0.5), _questions(48, 2), RANKING,
                               SearchConfig(step=4, max_skip=4, metric="agreement"))
    assert agreement.caveats == [], "agreement with the full model does not depend on the model beating chance"
