"""Profile files: round trip, per-stage lookup, model identity checks, helpful errors, shipped profiles by name."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

import litestage_chain.budgets.profile as profile_module
from litestage_chain.budgets.profile import (
    ModelIdentity,
    Profile,
    ProfileError,
    ProfileMismatchError,
    SearchedQuestions,
    StageBudget,
    TraceEntry,
    shipped_profiles,
)
from litestage_chain.engine.early_exit import EarlyExitConfig
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import LiteStageError

SHA = "ab" * 32
OTHER_SHA = "cd" * 32


def make_profile() -> Profile:
    recall = SkipPlan(attention=[3, 5], mlp=[7])
    return Profile(
        model=ModelIdentity(name="smollm2-135m", weights_sha256=SHA),
        stages={
            "recall": StageBudget(plan=recall, early_exit=EarlyExitConfig(window=4, threshold=0.4, min_tokens=6)),
            "analysis": StageBudget(plan=SkipPlan(attention=[3])),
            "summary": StageBudget(),
        },
        epsilon=0.02,
        metric="accuracy",
        questions=SearchedQuestions(benchmark="csqa", split="train[n=100,seed=0]", size=100, seed=0, fingerprint="f" * 64),
        importance=[(3, "attention"), (5, "attention"), (7, "mlp"), (1, "mlp")],
        stage_order=["recall", "analysis", "summary"],
        full_score=0.5,
        full_latency_seconds=4.0,
        trace=[
            TraceEntry(stage=None, skip_count=0, plans={}, score=0.5, accuracy=0.5, mean_latency_seconds=4.0,
                       generated_tokens={"recall": 40.0}, meets_target=True),
            TraceEntry(stage="recall", skip_count=3, plans={"recall": recall}, score=0.49, accuracy=0.49,
                       mean_latency_seconds=3.1, generated_tokens={"recall": 38.5}, meets_target=True, chosen=True),
        ],
    )


def loaded(sha: str = SHA, layers: int = 30, name: str = "smollm2-135m") -> SimpleNamespace:
    return SimpleNamespace(name=name, weights_sha256=sha, num_layers=layers)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    original = make_profile()
    path = original.save(tmp_path / "nested" / "csqa.json")
    again = Profile.load(path)
    assert again == original
    assert json.loads(path.read_text())["stages"]["recall"]["plan"] == {"attention": [3, 5], "mlp": [7]}
    assert again.importance[2] == (7, "mlp")
    assert not list(path.parent.glob(".csqa.json.*")), "no temporary file left behind"


def test_a_saved_profile_is_readable_by_others_under_a_shared_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = make_profile().save(tmp_path / "csqa.json")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_plan_and_early_exit_lookup() -> None:
    profile = make_profile()
    assert profile.plan_for("recall") == SkipPlan(attention=[3, 5], mlp=[7])
    assert profile.plan_for("summary") == SkipPlan()
    assert profile.early_exit_for("recall") == EarlyExitConfig(window=4, threshold=0.4, min_tokens=6)
    assert profile.early_exit_for("analysis") is None
    with pytest.raises(ProfileError, match=r"no settings for stage 'verify'.*\['analysis', 'recall', 'summary'\]"):
        profile.plan_for("verify")
    with pytest.raises(ProfileError, match="'verify'"):
        profile.early_exit_for("verify")


def test_describe_lists_every_stage_in_search_order() -> None:
    text = make_profile().describe()
    assert text.splitlines()[0].startswith("profile for smollm2-135m (weights abababababab, float32), searched on csqa/")
    assert "  recall: skip 3 (attn[3,5] mlp[7]), early exit window=4 threshold=0.4 min_tokens=6" in text
    assert "  summary: skip 0 (full model), no early exit" in text
    assert [line.split(":")[0].strip() for line in text.splitlines()[1:]] == ["recall", "analysis", "summary"]


def test_check_model_accepts_the_same_weights_and_names_the_expected_model() -> None:
    profile = make_profile()
    profile.check_model(loaded())
    profile.check_model(loaded(name="renamed-copy"))  # identity is the sha, not the name
    with pytest.raises(ProfileMismatchError, match=r"made for model 'smollm2-135m' \(weights sha256 abababab.*loaded model is 'qwen'"):
        profile.check_model(loaded(sha=OTHER_SHA, name="qwen"))
    with pytest.raises(ProfileMismatchError, match=r"stage 'recall'.*layer\(s\) \[5\].*5 layers"):
        profile.check_model(loaded(layers=5))
    assert issubclass(ProfileMismatchError, LiteStageError)


def test_check_model_warns_when_the_weight_format_differs_from_the_searched_one() -> None:
    profile = make_profile()  # searched in float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        profile.check_model(SimpleNamespace(**vars(loaded()), weights="float32"))
    with pytest.warns(UserWarning, match="measured with float32 weights but the model is loaded in int4"):
        profile.check_model(SimpleNamespace(**vars(loaded()), weights="int4"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.json"
    path.write_text(text)
    return path


def test_malformed_json_says_where(tmp_path: Path) -> None:
    good = make_profile().to_json()
    path = write(tmp_path, good[:-20])
    with pytest.raises(ProfileError, match=r"broken.json is not valid JSON: .* at line \d+ column \d+"):
        Profile.load(path)
    with pytest.raises(ProfileError, match="must hold a JSON object, found a list"):
        Profile.load(write(tmp_path, "[1, 2]"))


def test_hand_broken_fields_are_named(tmp_path: Path) -> None:
    data = json.loads(make_profile().to_json())
    data["model"]["weights_sha256"] = "not-a-sha"
    data["stages"]["recall"]["plan"]["attention"] = [3, -1]
    data["metric"] = "f1"
    del data["epsilon"]
    data["stages"]["recall"]["early_exit"]["window"] = 0
    with pytest.raises(ProfileError) as caught:
        Profile.load(write(tmp_path, json.dumps(data)))
    message = str(caught.value)
    assert "5 problem(s)" in message
    for field in ("model.weights_sha256", "stages.recall.plan.attention", "metric", "epsilon",
                  "stages.recall.early_exit.window"):
        assert f"  {field}:" in message, field
    assert ">= 0" in message


def test_cross_field_consistency(tmp_path: Path) -> None:
    data = json.loads(make_profile().to_json())
    data["stage_order"] = ["recall", "analysis"]
    with pytest.raises(ProfileError, match="stage_order .* does not list exactly"):
        Profile.load(write(tmp_path, json.dumps(data)))
    data = json.loads(make_profile().to_json())
    data["importance"].append([3, "attention"])
    with pytest.raises(ProfileError, match=r"\(3, 'attention'\) appears twice"):
        Profile.load(write(tmp_path, json.dumps(data)))
    data = json.loads(make_profile().to_json())
    data["surprise"] = 1
    with pytest.raises(ProfileError, match="surprise: Extra inputs are not permitted"):
        Profile.load(write(tmp_path, json.dumps(data)))


def test_shipped_profiles_are_found_by_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(profile_module, "shipped_root", lambda: tmp_path)
    assert shipped_profiles() == []
    make_profile().save(tmp_path / "csqa.json")
    (tmp_path / "notes.txt").write_text("not a profile")
    assert shipped_profiles() == ["csqa"]
    assert Profile.load("csqa") == make_profile()
    with pytest.raises(ProfileError, match=r"no profile file 'obqa' and no shipped profile of that name; shipped profiles: \['csqa'\]"):
        Profile.load("obqa")
    with pytest.raises(ProfileError, match=r"no profile file 'missing/dir/x.json'; shipped"):
        Profile.load("missing/dir/x.json")


@pytest.mark.parametrize("name", shipped_profiles())
def test_every_shipped_profile_is_valid(name: str) -> None:
    profile = Profile.load(name)
    assert profile.trace, "a shipped profile keeps its search trace"
    assert any(entry.chosen for entry in profile.trace)


def test_profile_drives_the_chat_model_per_stage() -> None:
    """A saved profile plugs into ChatLiteStage as its stage budgets, and refuses other weights."""
    from tiny_models import tiny_llama

    from litestage_chain import from_pretrained_objects
    from litestage_chain.chat.chat_model import ChatLiteStage

    model, tokenizer = tiny_llama()
    lm = from_pretrained_objects(model, tokenizer, name="tiny", weights_sha256=SHA)
    profile = make_profile().model_copy(
        update={"stages": {**make_profile().stages, "recall": StageBudget(plan=SkipPlan(attention=[1], mlp=[3]))}}
    )
    chat = ChatLiteStage(model=lm, stage_profile=profile, max_tokens=3)
    message = chat.invoke("hi", stage="recall")
    assert message.response_metadata["skipped"] == {"attention": [1], "mlp": [3]}
    assert chat.invoke("hi", stage="summary").response_metadata["skipped"] == {"attention": [], "mlp": []}
    other = from_pretrained_objects(model, tokenizer, name="other", weights_sha256=OTHER_SHA)
    with pytest.raises(ProfileMismatchError, match="made for model 'smollm2-135m'"):
        ChatLiteStage(model=other, stage_profile=profile, max_tokens=3).invoke("hi", stage="recall")


def test_profile_is_selected_by_shipped_name(tmp_path: Path, monkeypatch) -> None:
    """`ChatLiteStage(profile="csqa")` and `build_reasoning_chain(plans="csqa")` load the shipped profile."""
    from tiny_models import tiny_llama

    from litestage_chain import from_pretrained_objects
    from litestage_chain.chat.chat_model import ChatLiteStage
    from litestage_chain.reasoning.chain import build_reasoning_chain

    fitted = make_profile().model_copy(
        update={"stages": {**make_profile().stages, "recall": StageBudget(plan=SkipPlan(attention=[1], mlp=[3]))}}
    )
    fitted.save(tmp_path / "csqa.json")
    monkeypatch.setattr(profile_module, "shipped_root", lambda: tmp_path)
    model, tokenizer = tiny_llama()
    lm = from_pretrained_objects(model, tokenizer, name="tiny", weights_sha256=SHA)
    chat = ChatLiteStage(model=lm, profile="csqa", max_tokens=3)
    assert chat.stage_profile == fitted.budgets()
    assert chat.invoke("hi", stage="recall").response_metadata["skipped"] == {"attention": [1], "mlp": [3]}
    assert ChatLiteStage(model=lm, stage_profile=tmp_path / "csqa.json").stage_profile == fitted.budgets()
    build_reasoning_chain(lm, plans="csqa")  # resolves the name at construction
    with pytest.raises(ProfileError, match="no shipped profile of that name"):
        ChatLiteStage(model=lm, profile="nope")


def test_shipped_profiles_are_selected_per_model_by_name() -> None:
    from litestage_chain.budgets.profile import shipped_models, shipped_profiles

    qwen = Profile.load("obqa", model="qwen2.5-coder-1.5b")
    assert qwen.model.name == "qwen2.5-coder-1.5b"
    assert Profile.load("obqa").model.name == "smollm2-135m" == Profile.load("obqa", model="smollm2-135m").model.name
    assert "qwen2.5-coder-1.5b" in shipped_models() and "obqa" in shipped_profiles("qwen2.5-coder-1.5b")
    with pytest.raises(ProfileError, match="for model 'qwen2.5-coder-1.5b'.*obqa"):
        Profile.load("nosuch", model="qwen2.5-coder-1.5b")
    # a model without shipped profiles of its own gets the default model's (its weights check then says they differ)
    assert Profile.load("obqa", model="some/other-model").model.name == "smollm2-135m"


def test_chat_model_and_chain_pick_the_profile_of_the_model_they_run() -> None:
    from litestage_chain import ChatLiteStage, build_reasoning_chain

    llm = ChatLiteStage(model="qwen2.5-coder-1.5b", profile="obqa")
    assert llm.stage_profile.model.name == "qwen2.5-coder-1.5b"
    assert ChatLiteStage(profile="obqa").stage_profile.model.name == "smollm2-135m"
    assert ChatLiteStage(model="qwen2.5-coder-1.5b", stage_profile="obqa").stage_profile.model.name == "qwen2.5-coder-1.5b"
    build_reasoning_chain(ChatLiteStage(model="qwen2.5-coder-1.5b"), plans="obqa")  # resolves without loading weights
    with pytest.raises(ProfileError, match="for model 'qwen2.5-coder-1.5b'"):
        ChatLiteStage(model="qwen2.5-coder-1.5b", profile="csqa-nonexistent")
