"""`litestage profile search` / `show` end to end, on a tiny model saved as a local model folder."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import pytest
import torch
from tiny_models import _common, byte_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from litestage_chain.budgets.profile import Profile, ProfileError
from litestage_chain.cli.profile import add_profile_parser
from litestage_chain.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = byte_tokenizer()
    torch.manual_seed(5)
    model = LlamaForCausalLM(LlamaConfig(**{**_common(tokenizer, 4), "max_position_embeddings": 4096}))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="litestage")
    add_profile_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def write_data(root: Path, n: int = 4) -> Path:
    (root / "csqa").mkdir(parents=True)
    with (root / "csqa" / "train.jsonl").open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"id": f"t{i}", "question": f"Pick option {i}?", "answer": "A",
                                     "choices": [{"label": "A", "text": "red"}, {"label": "B", "text": "blue"}]}) + "\n")
    return root


def test_search_writes_a_profile_resumes_and_shows(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    data = write_data(tmp_path / "data")
    target = tmp_path / "profiles" / "csqa.json"
    argv = ["profile", "search", "--benchmark", "csqa", "--data", str(data), "--size", "2", "--model", str(model_dir),
            "--out", str(target), "--max-skip", "1", "--epsilon", "1.0", "--calibration-size", "1",
            "--max-tokens", "recall=3,analysis=3,summary=2", "--shots", "0", "--no-progress", "--threads", "1",
            "--check-limit", "1"]
    out = io.StringIO()
    args = parse(argv)
    assert args.handler(args, out=out) == 0
    text = out.getvalue()
    assert "wrote" in text and "4 new evaluations" in text
    candidates = [line for line in text.splitlines() if " skip " in line and "s/question" in line]
    # one line per candidate, progress bars or not: the 4 evaluated plus each stage's "skip 0", the plan before it
    assert sum("from log" not in line for line in candidates) == 4 and len(candidates) == 7
    profile = Profile.load(target)
    assert profile.questions.size == 2 and profile.questions.split == "train[n=2,seed=0]"
    assert profile.early_exit_for("recall") is not None, "early exit is on unless --no-early-exit"
    log = target.with_name("csqa.json.search.jsonl")
    assert len(log.read_text().splitlines()) == 4
    check = profile.speed_check
    assert check is not None and check.rounds == 2 and len(check.full_seconds) == len(check.plan_seconds) == 2
    assert check.questions == 1, "--check-limit 1 times the first searched question only"
    assert "side by side" in text and sum("s/question" in line for line in text.splitlines()) == 7 + 2 * 2
    assert "caveat: the full model's accuracy on the 2 searched questions" in text  # 2 questions cannot show skill

    again = io.StringIO()
    args = parse(argv)
    assert args.handler(args, out=again) == 0
    assert "0 new evaluations" in again.getvalue()
    assert Profile.load(target).stages == profile.stages

    shown = io.StringIO()
    args = parse(["profile", "show", str(target), "--trace"])
    assert args.handler(args, out=shown) == 0
    lines = shown.getvalue().splitlines()
    assert lines[0].startswith("profile for ") and sum("chosen" in line and "score" in line for line in lines) == 3
    assert any(line.startswith("  note: the full model's accuracy") for line in lines), "the caveat is kept"


def test_check_times_an_existing_profile_side_by_side(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    data = write_data(tmp_path / "data")
    searched = tmp_path / "searched.json"
    args = parse(["profile", "search", "--benchmark", "csqa", "--data", str(data), "--size", "2", "--model",
                  str(model_dir), "--out", str(searched), "--max-skip", "1", "--epsilon", "1.0",
                  "--calibration-size", "1", "--max-tokens", "3", "--shots", "0", "--no-progress",
                  "--check-rounds", "0"])
    assert args.handler(args, out=io.StringIO()) == 0
    assert Profile.load(searched).speed_check is None, "--check-rounds 0 skips the check"

    checked = tmp_path / "checked.json"
    out = io.StringIO()
    args = parse(["profile", "check", str(searched), "--data", str(data), "--model", str(model_dir), "--out",
                  str(checked), "--rounds", "3", "--max-tokens", "3", "--shots", "0", "--no-progress"])
    assert args.handler(args, out=out) == 0
    profile = Profile.load(checked)
    assert profile.speed_check is not None and profile.speed_check.rounds == 3
    assert profile.model_copy(update={"speed_check": None}) == Profile.load(searched)
    assert "side by side (3 alternating evaluations of 2 questions each" in out.getvalue()

    predicted = io.StringIO()
    args = parse(["profile", "check", str(searched), "--data", str(data), "--model", str(model_dir), "--out",
                  str(checked), "--rounds", "1", "--max-tokens", "3", "--shots", "0", "--no-progress", "--predict",
                  "--limit", "1", "--weights", "float32"])
    assert args.handler(args, out=predicted) == 0
    text = predicted.getvalue()
    assert "full: predicted" in text and "plans: predicted" in text and "speedup: predicted" in text
    per_stage = r"^ +(recall|analysis|summary): predicted [\d.]+ s, measured [\d.]+ \([+-][\d.]+%\)$"
    assert len(re.findall(per_stage, text, flags=re.MULTILINE)) == 6, "each stage of both sides"
    assert Profile.load(checked).speed_check.questions == 1
    loaded = io.StringIO()  # the costs timed while another process decodes the same model directory
    args = parse(["profile", "check", str(searched), "--data", str(data), "--model", str(model_dir), "--out",
                  str(checked), "--rounds", "1", "--max-tokens", "3", "--shots", "0", "--no-progress", "--predict",
                  "--limit", "1", "--weights", "float32", "--batch-size", "2", "--cost-busy", "1"])
    assert args.handler(args, out=loaded) == 0
    assert "plan costs timed with 1 other process(es) decoding (1xfloat32-b2-p256-s32)" in loaded.getvalue()
    assert "speedup: predicted" in loaded.getvalue()
    args = parse(["profile", "check", str(searched), "--data", str(data), "--out", str(checked), "--cost-busy", "1"])
    with pytest.raises(InvalidInputError, match="give --predict too"):
        args.handler(args, out=io.StringIO())
    args = parse(["profile", "check", str(searched), "--data", str(data), "--limit", "0"])
    with pytest.raises(InvalidInputError, match="--limit must be >= 1"):
        args.handler(args, out=io.StringIO())

    args = parse(["profile", "check", "csqa", "--data", str(data)])
    with pytest.raises(InvalidInputError, match="give --out"):
        args.handler(args, out=io.StringIO())
    args = parse(["profile", "check", str(searched), "--data", str(data), "--rounds", "0"])
    with pytest.raises(InvalidInputError, match="--rounds must be >= 1"):
        args.handler(args, out=io.StringIO())
    changed = write_data(tmp_path / "changed")
    train = changed / "csqa" / "train.jsonl"
    train.write_text(train.read_text().replace("Pick option", "Choose option"))  # same ids, edited questions
    args = parse(["profile", "check", str(searched), "--data", str(changed), "--model", str(model_dir)])
    with pytest.raises(InvalidInputError, match="not the ones the profile was searched on"):
        args.handler(args, out=io.StringIO())


def test_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data")
    base = ["profile", "search", "--benchmark", "csqa", "--data", str(data), "--out", str(tmp_path / "p.json")]
    with pytest.raises(SystemExit):  # epsilon is in points: 0..100
        parse(base + ["--epsilon", "200"])
    args = parse(base + ["--size", "9"])
    with pytest.raises(InvalidInputError, match="asked for 9 questions but csqa/train has only 4"):
        args.handler(args, out=io.StringIO())
    args = parse(base + ["--check-limit", "0"])
    with pytest.raises(InvalidInputError, match="--check-limit must be >= 1, got 0"):
        args.handler(args, out=io.StringIO())
    args = parse(base + ["--threads", "0"])
    with pytest.raises(InvalidInputError, match="--threads"):
        args.handler(args, out=io.StringIO())
    for option in ("--batch-size", "--calibration-size"):
        args = parse(base + ["--model", str(tmp_path / "no-model.gguf"), option, "0"])
        with pytest.raises(InvalidInputError, match=f"{option} must be >= 1, got 0"):  # before the model loads
            args.handler(args, out=io.StringIO())


def test_show_lists_shipped_profiles_or_fails_clearly(tmp_path: Path) -> None:
    out = io.StringIO()
    args = parse(["profile", "show"])
    assert args.handler(args, out=out) == 0
    assert "shipped profiles" in out.getvalue()
    args = parse(["profile", "show", "no-such-profile"])
    with pytest.raises(ProfileError, match="no profile file 'no-such-profile'"):
        args.handler(args, out=io.StringIO())


def test_issue_spelling_of_the_profile_command_is_accepted() -> None:
    """`litestage profile --benchmark ... --n ... --split-seed ... --epsilon POINTS` is `profile search`."""
    from litestage_chain.cli.main import build_parser
    from litestage_chain.cli.profile import normalise_profile_argv

    argv = ["profile", "--benchmark", "csqa", "--data", "d", "--n", "7", "--split-seed", "3", "--epsilon", "1.0",
            "--out", "p.json"]
    args = build_parser().parse_args(normalise_profile_argv(argv))
    assert (args.profile_command, args.size, args.seed, args.epsilon) == ("search", 7, 3, 0.01)
    assert normalise_profile_argv(["profile", "show", "csqa"]) == ["profile", "show", "csqa"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(normalise_profile_argv(["profile", "--benchmark", "x", "--epsilon", "-1"]))


def test_cost_aware_search_writes_a_profile_with_its_resolution_and_resumes(
    model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "cache"))
    data = write_data(tmp_path / "data", n=4)
    target = tmp_path / "profiles" / "csqa.json"
    argv = ["profile", "search", "--search", "cost-aware", "--benchmark", "csqa", "--data", str(data), "--size", "4",
            "--model", str(model_dir), "--out", str(target), "--counts", "1,2", "--exit-grid", "none;4,0.5,2",
            "--epsilon", "1.0", "--tolerance", "100", "--chunk-size", "2", "--calibration-size", "1",
            "--cost-rounds", "1", "--metric", "agreement",
            "--max-tokens", "recall=3,analysis=3,summary=2", "--shots", "0", "--no-progress", "--threads", "1",
            "--check-rounds", "0"]
    out = io.StringIO()
    args = parse(argv)
    assert args.handler(args, out=out) == 0
    text = out.getvalue()
    assert "resolution on this slice" in text and "predicted" in text and "chosen:" in text
    profile = Profile.load(target)
    assert "cost-aware search" in profile.notes
    assert "plans priced from per-sub-layer shares (one attention sub-layer" in profile.notes
    assert any(entry.verdict is not None for entry in profile.trace)
    assert (tmp_path / "profiles" / "csqa.json.costs.jsonl").is_file()
    again = io.StringIO()
    assert args.handler(args, out=again) == 0
    assert "0 new chunk evaluations" in again.getvalue()
    assert "the fastest accepted candidate wins" in text
    # another choice rule re-decides from the stored evaluations alone
    margin = io.StringIO()
    args_margin = parse([*argv, "--speed-margin", "5"])
    assert args_margin.handler(args_margin, out=margin) == 0
    assert "0 new chunk evaluations" in margin.getvalue() and "within 5% of the fastest" in margin.getvalue()
    assert "within 5% of the fastest" in Profile.load(target).notes
    # its summary re-searched in the continued format, recall and analysis kept as searched
    summary_only = tmp_path / "profiles" / "csqa-continued.json"
    flags = ["--from-profile", str(target), "--search-stages", "summary", "--context", "continued"]
    out = io.StringIO()
    args = parse([*argv[: argv.index("--out")], "--out", str(summary_only), *argv[argv.index("--out") + 2 :], *flags,
                  "--cost-busy", "1", "--plan-costs", "per-plan"])
    assert args.handler(args, out=out) == 0
    assert "searched here in the 'continued' format: summary" in out.getvalue()
    assert "plan costs timed with 1 other process(es) decoding" in out.getvalue()
    cost_lines = (tmp_path / "profiles" / "csqa-continued.json.costs.jsonl").read_text().splitlines()
    assert cost_lines and all(":busy=1xfloat32-b1-" in json.loads(line)["identity"] for line in cost_lines)
    assert "recall+analysis as kept, the rest full:" in out.getvalue()
    kept = Profile.load(summary_only)
    assert "plans priced from their own timings, 1 alternating round(s) each, timed with 1 other process" in kept.notes
    assert kept.context == "continued"
    assert re.search(r"^kept from \S+ \(searched in the 'separate' format on csqa/train\S*, \d+ questions\): "
                     r"recall, analysis$", kept.notes, re.MULTILINE), kept.notes
    assert {s: (kept.plan_for(s), kept.early_exit_for(s)) for s in ("recall", "analysis")} == {
        s: (profile.plan_for(s), profile.early_exit_for(s)) for s in ("recall", "analysis")}
    assert {entry.stage for entry in kept.trace} == {None, "recall+analysis", "summary"}
    # every stage searched again in another format: nothing kept, and the notes do not claim otherwise
    every = tmp_path / "profiles" / "csqa-every.json"
    out = io.StringIO()
    every_flags = ["--from-profile", str(target), "--search-stages", "recall,analysis,summary",
                   "--context", "continued"]
    args = parse([*argv[: argv.index("--out")], "--out", str(every), *argv[argv.index("--out") + 2 :], *every_flags])
    assert args.handler(args, out=out) == 0
    assert "nothing (every stage is searched)" in out.getvalue()
    assert "kept from" not in Profile.load(every).notes
    for bad, message in ((flags[:2], "go together"), ([*flags[:2], "--search-stages", "answer"], "stage names")):
        args = parse([*argv, *bad])
        with pytest.raises(InvalidInputError, match=message):
            args.handler(args, out=io.StringIO())


def test_cost_aware_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse(["profile", "search", "--benchmark", "csqa", "--out", "x.json", "--counts", "-1,2"])
    assert parse(["profile", "search", "--benchmark", "csqa", "--out", "x.json", "--counts", "0"]).counts == (0,)
    args = parse(["profile", "search", "--search", "cost-aware", "--benchmark", "csqa", "--out",
                  str(tmp_path / "x.json"), "--exit-grid", "8,0.3"])
    with pytest.raises(InvalidInputError, match="WINDOW,THRESHOLD,MIN_TOKENS"):
        args.handler(args, out=io.StringIO())
    problems = (("none;0", r"token caps must be >= 1.*got \[0\]"), ("16;x", "whole number"), (";", "names no cap"))
    for grid, problem in problems:
        args = parse(["profile", "search", "--search", "cost-aware", "--benchmark", "csqa", "--out",
                      str(tmp_path / "x.json"), "--cap-grid", grid])
        with pytest.raises(InvalidInputError, match=problem):
            args.handler(args, out=io.StringIO())
    for margin in ("-1", "100"):  # percent: a margin of 100% or more would call every candidate as fast as the fastest
        args = parse(["profile", "search", "--search", "cost-aware", "--benchmark", "csqa", "--out",
                      str(tmp_path / "x.json"), "--speed-margin", margin])
        with pytest.raises(InvalidInputError, match="speed_margin"):
            args.handler(args, out=io.StringIO())


def test_show_picks_a_models_shipped_profiles() -> None:
    out = io.StringIO()
    args = parse(["profile", "show", "--model", "qwen2.5-coder-1.5b"])
    assert args.handler(args, out=out) == 0
    assert out.getvalue().startswith("shipped profiles for qwen2.5-coder-1.5b: ") and "obqa" in out.getvalue()
    shown = io.StringIO()
    args = parse(["profile", "show", "obqa", "--model", "qwen2.5-coder-1.5b"])
    assert args.handler(args, out=shown) == 0
    assert shown.getvalue().startswith("profile for qwen2.5-coder-1.5b")
