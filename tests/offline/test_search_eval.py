"""The chain-backed evaluator, calibration texts and the whole offline phase, on a tiny random Llama."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from tiny_models import _common, byte_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from litestage_chain import (
    EarlyExitConfig,
    InvalidInputError,
    SkipPlan,
    from_pretrained_objects,
)
from litestage_chain.budgets.profile import Profile
from litestage_chain.engine import fused_decode
from litestage_chain.data import load_jsonl
from litestage_chain.data.types import Question, question_fingerprint
from litestage_chain.offline.calibration import calibration_prompts
from litestage_chain.offline.evaluator import ChainEvaluator
from litestage_chain.offline.importance import plan_for_count
from litestage_chain.offline.pipeline import search_benchmark_profile, search_profile
from litestage_chain.offline.search import SearchConfig

STAGES = ("recall", "analysis", "summary")
FULL = {stage: SkipPlan() for stage in STAGES}
TOKENS = {"recall": 4, "analysis": 4, "summary": 3}
SHA = "5e" * 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm():
    """A tiny random Llama with room for unshortened stage prompts (byte-level tokens)."""
    tokenizer = byte_tokenizer()
    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(**{**_common(tokenizer, 4), "max_position_embeddings": 4096})).eval()
    return from_pretrained_objects(model, tokenizer, name="tiny-chain", weights_sha256=SHA)


def questions(n: int = 3) -> list[Question]:
    return [
        Question(id=f"q{i}", question=f"Which word names the number {i}?", benchmark="t", answer="AB"[i % 2],
                 choices=[{"label": "A", "text": "one"}, {"label": "B", "text": "two"}, {"label": "C", "text": "three"}])
        for i in range(n)
    ]


def evaluator(lm, **kwargs) -> ChainEvaluator:
    return ChainEvaluator(lm, num_shots=0, max_tokens=TOKENS, **kwargs)


def test_evaluation_reports_answers_latency_and_tokens(lm) -> None:
    qs = questions()
    result = evaluator(lm).evaluate(FULL, qs)
    assert set(result.answers) == {"q0", "q1", "q2"}
    expected_accuracy = sum(result.answers[q.id] == q.answer for q in qs) / len(qs)
    assert result.accuracy == pytest.approx(expected_accuracy)
    assert set(result.stage_latency_seconds) == set(STAGES)
    assert all(seconds > 0 for seconds in result.stage_latency_seconds.values())
    assert result.mean_latency_seconds >= sum(result.stage_latency_seconds.values()) - 1e-9
    for stage in STAGES:
        assert 0 < result.generated_tokens_per_stage[stage] <= TOKENS[stage]
    unlabelled = [q.model_copy(update={"answer": None}) for q in qs]
    assert evaluator(lm).evaluate(FULL, unlabelled).accuracy is None


def test_unchanged_stage_outputs_are_reused(lm) -> None:
    qs = questions()
    ev = evaluator(lm, fallback=False)
    first = ev.evaluate(FULL, qs)
    assert dict(ev.generated) == {"recall": 3, "analysis": 3, "summary": 3}
    changed_summary = {**FULL, "summary": SkipPlan(attention=[1, 2])}
    second = ev.evaluate(changed_summary, qs)
    assert dict(ev.generated) == {"recall": 3, "analysis": 3, "summary": 6}, "only the changed stage is decoded"
    again = ev.evaluate(FULL, qs)
    assert again == first and sum(ev.generated.values()) == 12, "a repeated evaluation decodes nothing"
    # cached outputs are what a fresh run produces (greedy decoding is deterministic)
    fresh = evaluator(lm, fallback=False)
    assert fresh.evaluate(changed_summary, qs).answers == second.answers
    assert [s["summary"].text for s in fresh.run_stages(changed_summary, qs)] == [
        s["summary"].text for s in ev.run_stages(changed_summary, qs)
    ]
    # changing recall reruns recall, and the later stages only where recall's text changed
    changed_recall = {**FULL, "recall": SkipPlan(mlp=[2, 3])}
    before = {q.id: s["recall"].text for q, s in zip(qs, ev.run_stages(FULL, qs), strict=True)}
    states = ev.run_stages(changed_recall, qs)
    differing = sum(before[q.id] != s["recall"].text for q, s in zip(qs, states, strict=True))
    assert ev.generated["recall"] == 6
    assert ev.generated["analysis"] == 3 + differing
    assert all(s["recall"].skipped == SkipPlan(mlp=[2, 3]) for s in states)


def test_outputs_can_be_timed_afresh_in_every_evaluation(lm) -> None:
    ev = evaluator(lm, fallback=False, reuse_outputs=False)
    first = ev.evaluate(FULL, questions(2))
    second = ev.evaluate({**FULL, "summary": SkipPlan(attention=[1])}, questions(2))
    assert dict(ev.generated) == {"recall": 4, "analysis": 4, "summary": 4}
    assert first.answers.keys() == second.answers.keys()
    assert evaluator(lm, reuse_outputs=False).identity != evaluator(lm).identity


def test_an_evaluation_can_cap_a_stages_tokens(lm) -> None:
    """`max_tokens` per evaluation caps the stages it names (the search tries caps with one evaluator): the capped
    stage is decoded again, at most the cap long, the stages before it are reused."""
    ev = evaluator(lm, fallback=False)
    full = ev.run_stages(FULL, questions())
    assert max(s["analysis"].generated_tokens for s in full) > 2, "the tiny model must write past the cap"
    capped = ev.run_stages(FULL, questions(), max_tokens={"analysis": 2})
    assert all(s["analysis"].generated_tokens <= 2 for s in capped)
    assert [s["recall"].text for s in capped] == [s["recall"].text for s in full]
    assert ev.generated["recall"] == 3 and ev.generated["analysis"] == 6
    assert ev.run_stages(FULL, questions(), max_tokens={"analysis": 10**6})[0]["analysis"] == full[0]["analysis"]
    for bad in ({"analysis": 0}, {"verify": 4}, {"analysis": "8"}):
        with pytest.raises(InvalidInputError, match="cap|unknown stage"):
            ev.evaluate(FULL, questions(), max_tokens=bad)


def test_identity_tracks_what_changes_results(lm) -> None:
    base = evaluator(lm).identity
    assert evaluator(lm).identity == base
    assert ChainEvaluator(lm, num_shots=0, max_tokens={**TOKENS, "summary": 5}).identity != base
    assert evaluator(lm, early_exit=EarlyExitConfig()).identity != base
    assert evaluator(lm, early_exit={"analysis": EarlyExitConfig(threshold=0.3)}).identity != base
    assert evaluator(lm, fallback=False).identity != base
    assert ChainEvaluator(lm, num_shots=1, max_tokens=TOKENS).identity != base
    ev = evaluator(lm, early_exit={"analysis": EarlyExitConfig(threshold=0.3)})
    assert ev.early_exit_for("analysis") == EarlyExitConfig(threshold=0.3) and ev.early_exit_for("recall") is None


def test_identity_names_the_python_decode_step_of_a_low_bit_model(lm) -> None:
    low_bit = copy.copy(lm)
    low_bit.weights = "int8"
    on = evaluator(low_bit).identity
    with fused_decode.enabled_as(False):
        assert evaluator(low_bit).identity != on, "the compiled step's results are kept apart from the Python step's"
        assert evaluator(lm).identity == evaluator(lm).identity
        float_off = evaluator(lm).identity
    assert evaluator(lm).identity == float_off, "a float32 model never runs the compiled step: one key"
    assert evaluator(low_bit).identity == on


def test_identity_names_the_kernel_path_of_a_low_bit_model(lm, monkeypatch) -> None:
    """Results measured with another ISA's kernels (another summation order) are kept apart; float32 has one key."""
    import litestage_chain.offline.evaluator as evaluator_module

    low_bit = copy.copy(lm)
    low_bit.weights = "int4"
    float_key, here = evaluator(lm).identity, evaluator(low_bit).identity
    monkeypatch.setattr(evaluator_module, "kernel_path", lambda fmt: "avx2-elsewhere")
    assert evaluator(low_bit).identity != here
    assert evaluator(lm).identity == float_key


def test_bad_evaluator_input(lm) -> None:
    with pytest.raises(InvalidInputError, match=r"no plan given for stage\(s\) \['summary'\]"):
        evaluator(lm).evaluate({"recall": SkipPlan(), "analysis": SkipPlan()}, questions())
    with pytest.raises(InvalidInputError, match="layer"):
        evaluator(lm).evaluate({**FULL, "recall": SkipPlan(attention=[9])}, questions())
    with pytest.raises(InvalidInputError, match="unknown stage 'verify'"):
        evaluator(lm, early_exit={"verify": EarlyExitConfig()})
    with pytest.raises(InvalidInputError, match="batch_size"):
        evaluator(lm, batch_size=0)


def test_calibration_texts_follow_the_chain(lm) -> None:
    ev = evaluator(lm)
    qs = questions(2)
    texts = calibration_prompts(ev, qs)
    assert list(texts) == list(STAGES) and all(len(rows) == 2 for rows in texts.values())
    states = ev.run_stages(FULL, qs)
    for i, state in enumerate(states):
        recall = ev.render_prompt("recall", state)
        assert texts["recall"][i] == recall + state["recall"].text
        assert qs[i].question in recall
        analysis_prompt = ev.render_prompt("analysis", state)
        assert state["recall"].text in analysis_prompt, "stage 2 sees stage 1's output"
        assert texts["analysis"][i].startswith(analysis_prompt)
    without = calibration_prompts(ev, qs, include_output=False)
    assert without["summary"][0] == ev.render_prompt("summary", states[0])


def write_questions(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for q in questions(n):
            handle.write(json.dumps({"id": q.id, "question": q.question, "answer": q.answer,
                                     "choices": [c.model_dump() for c in q.choices]}) + "\n")
    return path


def test_offline_search_writes_a_usable_profile_and_resumes(lm, tmp_path: Path) -> None:
    qs = load_jsonl(write_questions(tmp_path / "train.jsonl", 3), benchmark="csqa")
    config = SearchConfig(epsilon=0.34, max_skip=2, metric="accuracy")
    store = tmp_path / "search.jsonl"
    seen = []
    ev = evaluator(lm, early_exit={"summary": EarlyExitConfig()})
    profile, result, importance = search_profile(
        lm, qs, config=config, evaluator=ev,
        calibration_size=2, store_path=store, importance_cache_dir=tmp_path / "imp", on_candidate=seen.append,
    )
    assert importance.prompts_per_stage == {"recall": 2, "analysis": 2, "summary": 2}
    assert len(importance.ranking) == 8
    assert profile.importance == importance.ranking
    for stage in STAGES:
        assert profile.plan_for(stage) == plan_for_count(importance.ranking, result.skip_counts[stage])
    assert profile.early_exit_for("summary") == EarlyExitConfig() and profile.early_exit_for("recall") is None
    assert result.evaluations == 1 + 3 * 2 and len(store.read_text().splitlines()) == 7
    assert seen == [e.model_copy(update={"chosen": False}) for e in result.trace]  # reported as evaluated
    assert sum(e.chosen for e in result.trace) == 3
    assert profile.questions.size == 3 and profile.questions.fingerprint == qs.fingerprint
    profile.check_model(lm)
    saved = Profile.load(profile.save(tmp_path / "csqa.json"))
    assert saved == profile

    # the same search again, from the log: nothing is evaluated afresh, the same plans come out
    # (an evaluator with the same settings has the same identity, so the log's results apply to it)
    assert evaluator(lm, early_exit={"summary": EarlyExitConfig()}).identity == ev.identity
    again, result2, _ = search_profile(
        lm, qs, config=config, evaluator=ev,
        calibration_size=2, store_path=store, importance_cache_dir=tmp_path / "imp",
    )
    assert result2.evaluations == 0 and again.stages == profile.stages


def test_benchmark_entry_point_slices_train_and_saves(lm, tmp_path: Path) -> None:
    write_questions(tmp_path / "data" / "obqa" / "train.jsonl", 5)
    profile = search_benchmark_profile(
        lm, "obqa", size=2, seed=1, data_dir=tmp_path / "data", profile_path=tmp_path / "out" / "obqa.json",
        config=SearchConfig(epsilon=1.0, max_skip=1, metric="agreement"), evaluator=evaluator(lm),
        calibration_size=1, importance_cache_dir=tmp_path / "imp",
    )
    assert Profile.load(tmp_path / "out" / "obqa.json") == profile
    assert profile.questions.benchmark == "obqa" and profile.questions.split == "train[n=2,seed=1]"
    assert profile.questions.seed == 1 and profile.metric == "agreement"
    # epsilon 1.0 accepts anything, so every stage takes its fastest measured candidate
    for stage in STAGES:
        entries = [e for e in profile.trace if e.stage == stage]
        chosen = next(e for e in entries if e.chosen)
        assert chosen.mean_latency_seconds == min(e.mean_latency_seconds for e in entries)


def test_profiles_need_an_identified_model(lm, tmp_path: Path) -> None:
    anonymous = from_pretrained_objects(lm.model, lm.tokenizer, name="anon")
    qs = load_jsonl(write_questions(tmp_path / "train.jsonl", 2), benchmark="csqa")
    with pytest.raises(InvalidInputError, match="'anon' has no weights sha256"):
        search_profile(anonymous, qs)
    with pytest.raises(InvalidInputError, match="different model"):
        search_profile(lm, qs, evaluator=evaluator(anonymous))


def test_identity_depends_on_the_weight_format(lm, tmp_path, monkeypatch) -> None:
    """Outputs and times differ between formats, so stored results of one must never be reused for another."""
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))  # the int8 conversion is cached there
    int8 = from_pretrained_objects(lm.model, lm.tokenizer, name="tiny-chain", weights_sha256=SHA, weights="int8")
    assert int8.weights == "int8"
    assert ChainEvaluator(lm).identity != ChainEvaluator(int8).identity


def test_shared_context_evaluator_reruns_later_stages_when_an_earlier_plan_changes(lm) -> None:
    """A shared-context stage reads the KV entries the earlier stages' plans wrote: its cached output is keyed by
    them, even where the earlier texts happen to be the same."""
    qs = questions()
    ev = evaluator(lm, fallback=False, context="shared")
    ev.evaluate(FULL, qs)
    assert dict(ev.generated) == {"recall": 3, "analysis": 3, "summary": 3}
    ev.evaluate({**FULL, "recall": SkipPlan(mlp=[3])}, qs)
    assert dict(ev.generated) == {"recall": 6, "analysis": 6, "summary": 6}
    assert ev.identity != evaluator(lm, fallback=False).identity
    assert "Key information:" in ev.render_prompt("analysis", ev.run_stages(FULL, qs)[0])


def test_a_question_too_long_for_the_context_is_skipped_by_the_search_and_named(lm, tmp_path: Path) -> None:
    path = write_questions(tmp_path / "train.jsonl", 3)
    rows = path.read_text().splitlines()
    long = json.loads(rows[1])
    long["question"] = "word " * 900  # over the tiny model's 4096 byte tokens
    path.write_text("\n".join([rows[0], json.dumps(long), rows[2]]) + "\n")
    qs = load_jsonl(path, benchmark="csqa")
    with pytest.warns(UserWarning, match=r"skipping 1 of 3 question\(s\).*q1: its recall prompt"):
        profile, result, _ = search_profile(
            lm, qs, config=SearchConfig(epsilon=0.34, max_skip=1, metric="accuracy"), evaluator=evaluator(lm),
            calibration_size=2, store_path=tmp_path / "search.jsonl", importance_cache_dir=tmp_path / "imp",
        )
    assert set(result.full.answers) == {"q0", "q2"}
    assert "skipped (too long for the context): q1" in profile.notes
    kept = [q for q in qs.questions if q.id != "q1"]
    assert profile.questions.size == 3 and profile.questions.fingerprint == question_fingerprint(kept)
