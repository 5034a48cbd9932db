"""The cost-aware search on a stubbed chain: ranking, paired acceptance, early rejection, exit rules, resume."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple
from pathlib import Path

import pytest
import torch

from litestage_chain import EarlyExitConfig, InvalidInputError, SkipPlan
from litestage_chain.offline.cost_model import CostModel, PlanCosts
from litestage_chain.offline.cost_search import CostSearchConfig, cost_aware_ranking, search_cost_aware
from litestage_chain.offline.store import merge_results
from litestage_chain.data.types import Question
from litestage_chain.budgets.profile import ModelIdentity, Profile, SearchedQuestions
from litestage_chain.offline.store import EvalResult, ResultsStore

RANKING = [(layer, kind) for layer in range(8) for kind in ("mlp", "attention")]
QUESTIONS = [
    Question(id=f"q{i}", question=f"question {i}?", choices=[{"label": "A", "text": "x"}, {"label": "B", "text": "y"}],
             answer="A", benchmark="csqa")
    for i in range(400)
]
EXIT = EarlyExitConfig(window=4, threshold=0.5, min_tokens=8)
# fraction of the full model's right answers lost, by stage and skip count (exit rules add EXIT_DROP)
DROP = {"analysis": {0: 0, 1: 0, 2: 0, 4: 0, 8: 0.3}, "recall": {0: 0, 1: 0, 2: 0, 4: 0.05, 8: 0.3},
        "summary": {0: 0, 1: 0, 2: 0.4, 4: 0.4, 8: 0.4}}
EXIT_DROP = {"analysis": 0.0, "recall": 0.2, "summary": 0.0}
TOKENS = {"recall": 40, "analysis": 120, "summary": 20}


class StubCall(NamedTuple):
    """One evaluation the stub was asked for: skip counts per stage, how many questions, the exit rules."""

    counts: dict[str, int]
    questions: int
    rules: dict[str, EarlyExitConfig | None]


class StubChain:
    """Answers follow DROP; tokens shrink with an exit rule; every chunk evaluated is recorded."""

    identity = "stub-chain-v1"

    def __init__(self) -> None:
        self.calls: list[StubCall] = []

    def evaluate(
        self, plans: Mapping[str, SkipPlan], questions: Sequence[Question],
        early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
        max_tokens: Mapping[str, int | None] | None = None,
    ) -> EvalResult:
        counts = {stage: plan.num_skipped for stage, plan in plans.items()}
        rules = dict(early_exit or {})
        self.calls.append(StubCall(counts, len(questions), rules))
        drop = sum(DROP[s][c] + (EXIT_DROP[s] if rules.get(s) else 0.0) for s, c in counts.items())
        answers = {}
        for question in questions:
            index = int(question.id[1:])
            right_in_full = index % 10 != 9
            answers[question.id] = "A" if right_in_full and (index * 37 % 100) >= 100 * drop else "B"
        tokens = {s: [(50, max(1, int(TOKENS[s] * (0.5 if rules.get(s) else 1.0))), 400)] * len(questions) for s in plans}
        tokens["fallback"] = [None] * len(questions)
        correct = sum(a == "A" for a in answers.values())
        return EvalResult(accuracy=correct / len(questions), mean_latency_seconds=1.0, stage_latency_seconds={s: 0.3 for s in plans},
                          generated_tokens_per_stage={s: float(rows[0][1]) for s, rows in tokens.items() if rows[0]},
                          answers=answers, tokens=tokens)


def timer(plan: SkipPlan, *, context: bool = False) -> PlanCosts:
    factor = 1 - 0.05 * plan.num_skipped
    return PlanCosts(prefill_token_seconds={1: 0.001 * factor}, decode_step_seconds={1: 0.1 * factor})


CONFIG = CostSearchConfig(epsilon=0.01, tolerance=0.03, counts=(1, 2, 4, 8), exit_grid=(None, EXIT), chunk_size=100)


def test_cost_aware_ranking_weighs_importance_lost_against_weights_saved() -> None:
    similarity = torch.tensor([[0.99, 0.96], [0.98, 0.97]], dtype=torch.float64)
    weights = [(10, 80), (10, 80)]
    # lost per weight: L0 attn 0.001, L0 mlp 0.0005, L1 attn 0.002, L1 mlp 0.000375
    assert cost_aware_ranking(similarity, weights) == [(1, "mlp"), (0, "mlp"), (0, "attention"), (1, "attention")]
    with pytest.raises(InvalidInputError):
        cost_aware_ranking(similarity, weights[:1])
    with pytest.raises(InvalidInputError, match="no weights"):
        cost_aware_ranking(similarity, [(0, 80), (10, 80)])


def test_picks_the_fastest_accepted_settings_per_stage_with_searched_exit_rules() -> None:
    chain = StubChain()
    result = search_cost_aware(chain, QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), CONFIG)
    assert result.stage_order == ["analysis", "recall", "summary"]  # most predicted seconds first
    chosen = result.chosen
    counts = {s: p.num_skipped for s, p in chosen.plans.items()}
    # analysis: 4 skips lose nothing and its exit rule is free; recall: 2 skips, no exit rule (it costs 20 points);
    # summary: 1 skip (2 loses 40 points), with the free exit rule
    assert counts == {"analysis": 4, "recall": 2, "summary": 1}
    assert chosen.early_exit == {"analysis": EXIT, "recall": None, "summary": EXIT}
    assert chosen.verdict == "accept" and chosen.comparison is not None and chosen.comparison.loss == 0.0
    assert result.predicted_speedup > 1.0
    assert "loss 0.0 +- " in result.resolution()


def test_clearly_worse_candidates_stop_after_one_chunk() -> None:
    chain = StubChain()
    result = search_cost_aware(chain, QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), CONFIG)
    rejected = [c for c in result.candidates if c.verdict == "reject"]
    clearly = [c for c in rejected if c.comparison is not None and c.comparison.loss >= 0.2]
    assert clearly and all(c.comparison is not None and c.comparison.questions == 100 for c in clearly)
    # the summary sweep stops after two counts rejected with every exit rule (2 and 4), never trying 8
    assert not any(c.stage == "summary" and c.count == 8 for c in result.candidates)


def test_counts_undecided_on_the_whole_slice_end_the_sweep_like_rejected_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    # summary skips 1 and 2 lose 2 points: not clearly worse (the interval reaches below 1 point), never accepted
    monkeypatch.setitem(DROP, "summary", {0: 0, 1: 0.02, 2: 0.02, 4: 0, 8: 0})
    result = search_cost_aware(StubChain(), QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), CONFIG)
    summary = [c for c in result.candidates if c.stage == "summary"]
    assert {c.verdict for c in summary if c.count in (1, 2)} == {"undecided"}
    assert all(c.comparison is not None and c.comparison.questions == len(QUESTIONS) for c in summary if c.count)
    # two counts with nothing accepted end the sweep: count 4 (which this table would accept) is never tried
    assert max(c.count for c in summary) == 2 and result.chosen.plans["summary"].num_skipped == 0


def test_a_small_slice_accepts_nothing_and_says_so() -> None:
    chain = StubChain()
    with pytest.warns(UserWarning, match="too small to decide"):
        result = search_cost_aware(chain, QUESTIONS[:20], RANKING, CostModel(timer, "t", rounds=1),
                                   CONFIG.model_copy(update={"chunk_size": 10}))
    assert all(p.is_empty for p in result.chosen.plans.values())
    assert any(c.verdict == "undecided" and c.questions_needed > 20 for c in result.candidates)
    assert any("too small to decide" in caveat for caveat in result.caveats)


def test_resumes_from_the_store_without_evaluating_again(tmp_path: Path) -> None:
    store_path = tmp_path / "search.jsonl"
    first = search_cost_aware(StubChain(), QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), CONFIG,
                              store=ResultsStore(store_path))
    chain = StubChain()
    again = search_cost_aware(chain, QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), CONFIG,
                              store=ResultsStore(store_path))
    assert chain.calls == [] and again.evaluations == 0
    assert again.chosen.plans == first.chosen.plans


def test_profile_keeps_rules_verdicts_and_predictions() -> None:
    result = search_cost_aware(StubChain(), QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), CONFIG)
    profile = result.to_profile(
        model=ModelIdentity(name="stub", weights_sha256="0" * 64),
        questions=SearchedQuestions(benchmark="csqa", split="train", size=len(QUESTIONS)),
        context="shared",
    )
    again = Profile.from_json(profile.to_json())
    assert again.context == "shared", "the format searched in is stamped by to_profile"
    assert again.early_exit_for("recall") is None and again.early_exit_for("analysis") == EXIT
    assert [e for e in again.trace if e.chosen][0].verdict == "accept"
    assert any(e.verdict == "reject" for e in again.trace)
    assert "cost-aware search" in again.notes and "x)" in again.notes


def test_bad_settings_are_rejected_with_a_clear_message() -> None:
    with pytest.raises(InvalidInputError, match="outside 0..16"):
        search_cost_aware(StubChain(), QUESTIONS, RANKING, CostModel(timer, "t"), CONFIG.model_copy(update={"counts": (1, 40)}))
    with pytest.raises(InvalidInputError, match="at least one question"):
        search_cost_aware(StubChain(), [], RANKING, CostModel(timer, "t"), CONFIG)
    with pytest.raises(ValueError):
        CostSearchConfig(chunk_size=0)


def test_merge_results_concatenates_chunks_in_order() -> None:
    chain = StubChain()
    plans = {s: SkipPlan() for s in TOKENS}
    parts = [chain.evaluate(plans, QUESTIONS[:3]), chain.evaluate(plans, QUESTIONS[3:4])]
    merged = merge_results(parts)
    assert list(merged.answers) == ["q0", "q1", "q2", "q3"] and len(merged.tokens["recall"]) == 4
    assert merged.accuracy == pytest.approx(1.0)


def test_early_exit_alone_is_tried_where_a_stage_tolerates_no_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    # analysis loses 30 points with any skip, but its exit rule is free: the search must find "skip 0 + exit"
    monkeypatch.setitem(DROP, "analysis", {0: 0, 1: 0.3, 2: 0.3, 4: 0.3, 8: 0.3})
    result = search_cost_aware(StubChain(), QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), CONFIG)
    chosen = result.chosen
    assert chosen.plans["analysis"].is_empty and chosen.early_exit["analysis"] == EXIT
    exit_only = [c for c in result.candidates if c.stage == "analysis" and c.count == 0]
    assert [c.early_exit["analysis"] for c in exit_only] == [EXIT], "each exit rule once, not the no-exit duplicate"
    assert exit_only[0].verdict == "accept"
    assert result.predicted_speedup > 1.0
    # recall's exit rule costs 20 points: alone it is rejected, and it does not end recall's sweep of skip counts
    recall_exit_only = [c for c in result.candidates if c.stage == "recall" and c.count == 0]
    assert [c.verdict for c in recall_exit_only] == ["reject"]
    assert chosen.plans["recall"].num_skipped == 2


def test_an_exit_rule_that_cannot_fire_reuses_the_evaluation_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every summary ends after 5 tokens, before EXIT's first check (8): its rule cannot stop a row, so a summary
    # candidate with it is the candidate without it, and is taken from the store instead of evaluated again
    monkeypatch.setitem(TOKENS, "summary", 5)
    store = ResultsStore(tmp_path / "search.jsonl")
    chain = StubChain()
    result = search_cost_aware(chain, QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), CONFIG, store=store)
    summary_calls = [call for call in chain.calls if call.rules.get("summary")]
    assert summary_calls == [], "no evaluation with the summary's rule on: each was the one without it"
    with_rule = [c for c in result.candidates if c.stage == "summary" and c.early_exit["summary"] == EXIT]
    assert with_rule and any(c.count == 0 for c in with_rule) and any(c.count > 0 for c in with_rule)
    for candidate in with_rule:  # its twin: the same plans and rules, the summary's rule off
        twin = next(c for c in result.candidates if c.plans == candidate.plans
                    and c.early_exit == {**candidate.early_exit, "summary": None})
        assert candidate.result == twin.result and candidate.verdict == twin.verdict
    reused = [line for line in (tmp_path / "search.jsonl").read_text().splitlines() if '"same_as"' in line]
    assert len(reused) == sum(1 for c in with_rule for _ in range(c.comparison.questions // CONFIG.chunk_size))

    # at 8 tokens the rule can fire at the last one: evaluated as before
    monkeypatch.setitem(TOKENS, "summary", 8)
    chain = StubChain()
    search_cost_aware(chain, QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), CONFIG)
    assert any(call.rules.get("summary") for call in chain.calls)


def test_fixed_stages_keep_their_settings_and_only_the_others_are_searched() -> None:
    """Re-searching one stage of a profile (its summary in another reasoning format): the fixed stages' plans and
    rules are in every candidate, the start (fixed stages, the rest full) is evaluated and judged, and no candidate
    sweeps a fixed stage."""
    from litestage_chain.budgets.stage_budgets import StageBudget

    fixed = {"analysis": StageBudget(plan=plan_for(4), early_exit=EXIT), "recall": StageBudget(plan=plan_for(2))}
    chain = StubChain()
    config = CONFIG.model_copy(update={"fixed": fixed})
    result = search_cost_aware(chain, QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), config)
    assert result.stage_order == ["summary"]
    start = result.candidates[1]
    assert start.stage == "recall+analysis" and start.kept and start.verdict == "accept"
    assert not any(c.kept for c in result.candidates if c is not start)
    assert all(c.plans["analysis"] == fixed["analysis"].plan and c.early_exit["recall"] is None
               for c in result.candidates[1:])
    assert {c.stage for c in result.candidates[2:]} == {"summary"}
    counts = {s: p.num_skipped for s, p in result.chosen.plans.items()}
    assert counts == {"analysis": 4, "recall": 2, "summary": 1} and result.chosen.early_exit["summary"] == EXIT
    full_chunks = len(QUESTIONS) // CONFIG.chunk_size  # the full model's own evaluations come first
    assert all(call.counts["recall"] == 2 for call in chain.calls[full_chunks:]) and len(chain.calls) > full_chunks
    # fixed stages that lose too much are said to, and still kept
    lossy = CONFIG.model_copy(update={"fixed": {"recall": StageBudget(plan=plan_for(8))}})
    with pytest.warns(UserWarning, match="fixed stages alone are not accepted"):
        worse = search_cost_aware(StubChain(), QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), lossy)
    assert worse.chosen.plans["recall"].num_skipped == 8 and any("fixed stages" in c for c in worse.caveats)
    with pytest.raises(ValueError, match="nothing is left to search"):
        CostSearchConfig.model_validate({**CONFIG.model_dump(), "fixed": {s: {} for s in ("recall", "analysis", "summary")}})
    with pytest.raises(ValueError, match="not among the stages"):
        CostSearchConfig.model_validate({**CONFIG.model_dump(), "fixed": {"answer": {}}})


def plan_for(count: int) -> SkipPlan:
    from litestage_chain.offline.importance import plan_for_count

    return plan_for_count(RANKING, count)


class CappedChain(StubChain):
    """The stub with token caps: a capped stage writes at most its cap; an analysis cut below 16 tokens loses 30
    points of the full model's right answers (it stops before its reasoning reaches the options)."""

    def __init__(self) -> None:
        super().__init__()
        self.caps: list[dict[str, int | None] | None] = []

    def evaluate(
        self, plans: Mapping[str, SkipPlan], questions: Sequence[Question],
        early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
        max_tokens: Mapping[str, int | None] | None = None,
    ) -> EvalResult:
        self.caps.append(dict(max_tokens) if max_tokens is not None else None)
        caps = dict(max_tokens or {})
        analysis_cap = caps.get("analysis")
        with pytest.MonkeyPatch.context() as patch:
            if analysis_cap is not None and analysis_cap < 16:
                patch.setitem(EXIT_DROP, "analysis", 0.3)  # reuse the stub's drop table: a "rule" that costs 30
                result = super().evaluate(plans, questions, {**(early_exit or {}), "analysis": EXIT}, caps)
            else:
                result = super().evaluate(plans, questions, early_exit, caps)
        tokens = {s: [(row[0], min(row[1], caps[s]) if caps.get(s) else row[1], row[2]) if row else row for row in rows]
                  for s, rows in result.tokens.items()}
        return result.model_copy(update={"tokens": tokens})


def test_token_caps_are_searched_beside_the_exit_rules(tmp_path: Path) -> None:
    """With counts (0,) and a cap grid, the analysis is tried at each cap with nothing skipped: the smallest cap
    that keeps accuracy wins and is written into the profile; a cap above every row's length reuses the uncapped
    evaluation; chunks without caps keep the store identity they had before caps existed."""
    from litestage_chain.budgets.stage_budgets import StageBudget
    from litestage_chain.offline.cost_search import exit_rules_key

    fixed = {"recall": StageBudget(), "summary": StageBudget()}
    config = CONFIG.model_copy(update={"counts": (0,), "exit_grid": (None,), "cap_grid": (None, 8, 16, 32, 400),
                                       "fixed": fixed})
    chain = CappedChain()
    store_path = tmp_path / "search.jsonl"
    result = search_cost_aware(chain, QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), config,
                               store=ResultsStore(store_path))
    analysis = {c.max_tokens.get("analysis"): c for c in result.candidates if c.stage == "analysis"}
    assert set(analysis) == {8, 16, 32, 400} and all(c.count == 0 for c in analysis.values())
    assert analysis[8].verdict == "reject" and analysis[16].verdict == "accept" and analysis[32].verdict == "accept"
    assert result.chosen.max_tokens == {"analysis": 16} and result.chosen.plans["analysis"].is_empty
    assert result.predicted_speedup > 1.0
    # the cap of 400 is above the analysis's 120 tokens: the evaluation without it is reused, not run again
    assert {400} & {c.get("analysis") for c in chain.caps if c} == set()
    assert analysis[400].result == result.candidates[1].result
    # uncapped evaluations are asked with no stage capped and stored under the identity they always had
    assert chain.caps[0] == {}
    lines = store_path.read_text().splitlines()
    plain = f'"{StubChain.identity}:{exit_rules_key({s: None for s in TOKENS})}"'
    assert any(plain in line for line in lines) and any(":caps-" in line for line in lines)

    profile = result.to_profile(model=ModelIdentity(name="stub", weights_sha256="0" * 64),
                                questions=SearchedQuestions(benchmark="csqa", split="train", size=len(QUESTIONS)),
                                context="continued")
    again = Profile.from_json(profile.to_json())
    assert again.max_tokens_for("analysis") == 16 and again.max_tokens_for("recall") is None
    assert "at most 16 tokens" in again.describe()
    assert [e.max_tokens for e in again.trace if e.chosen] == [{"analysis": 16}]
    # the budgets a chain runs with carry the cap: a call's budget is the smaller of its own and the cap
    budgets = again.budgets()
    assert budgets.capped("analysis", 160) == 16 and budgets.capped("analysis", 10) == 10
    assert budgets.capped("summary", 24) == 24
    with pytest.raises(ValueError, match=">= 1"):
        CostSearchConfig(cap_grid=(0,))
    # "no cap" written out and left out are one evaluation under one key
    from litestage_chain.offline.cost_search import caps_key, set_caps

    assert set_caps({"analysis": None, "recall": 16}) == {"recall": 16} and set_caps(None) == {}
    assert caps_key({"analysis": None, "recall": 16}) == caps_key({"recall": 16})


class NearTieChain(StubChain):
    """The stub where the analysis's exit rule saves one token of 120 (under 1% of the stage) and costs two of the
    full model's right answers (q0 and q100): accepted by the rule, but not measurably faster."""

    def evaluate(
        self, plans: Mapping[str, SkipPlan], questions: Sequence[Question],
        early_exit: Mapping[str, EarlyExitConfig | None] | None = None,
        max_tokens: Mapping[str, int | None] | None = None,
    ) -> EvalResult:
        result = super().evaluate(plans, questions, {}, max_tokens)
        if not (early_exit or {}).get("analysis"):
            return result
        answers = {qid: "B" if qid in ("q0", "q100") else answer for qid, answer in result.answers.items()}
        tokens = {**result.tokens, "analysis": [(row[0], row[1] - 1, row[2]) for row in result.tokens["analysis"]]}
        return result.model_copy(update={"answers": answers, "tokens": tokens})


@pytest.mark.parametrize(("margin", "wins"), [(0.0, "exit"), (0.001, "exit"), (0.02, "full")])
def test_a_speed_margin_prefers_fewer_lost_answers_among_candidates_about_as_fast(margin: float, wins: str) -> None:
    """Without a margin (the recorded searches' rule) a plan predicted under 1% faster wins at two answers lost; with
    a 2% margin the full analysis, as fast within the cost model's error and losing nothing, wins; a margin smaller
    than the gap changes nothing."""
    from litestage_chain.offline.cost_search import choose, net_lost

    config = CONFIG.model_copy(update={"stages": ("analysis",), "counts": (0,), "speed_margin": margin})
    result = search_cost_aware(NearTieChain(), QUESTIONS, RANKING, CostModel(timer, "t", rounds=1), config)
    exit_candidate = next(c for c in result.candidates if c.stage == "analysis")
    assert exit_candidate.verdict == "accept" and net_lost(exit_candidate) == 2
    gap = result.full.predicted_seconds / exit_candidate.predicted_seconds - 1
    assert 0.001 < gap < 0.02, "the stub's exit rule is predicted faster by under 2%, over 0.1%"
    assert result.chosen is (exit_candidate if wins == "exit" else result.full)
    profile = result.to_profile(model=ModelIdentity(name="stub", weights_sha256="0" * 64),
                                questions=SearchedQuestions(benchmark="csqa", split="train", size=len(QUESTIONS)),
                                context="continued")
    assert config.describe_choice() in profile.notes
    assert ("within 2%" in profile.notes) == (margin == 0.02)
    with pytest.raises(InvalidInputError, match="no candidate"):
        choose([], margin)
    with pytest.raises(ValueError, match="speed_margin"):
        CostSearchConfig(speed_margin=-0.01)
