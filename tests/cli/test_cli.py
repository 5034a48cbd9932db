"""The `litestage` command: argument handling, clear errors, and a full `ask` run on a tiny saved model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from litestage_chain.budgets.stage_budgets import StageBudgets
from litestage_chain.cli.main import build_parser, load_plans, main
from litestage_chain.engine.quant import formats
from litestage_chain.errors import InvalidInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import save_tiny_long_context_llama  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved as a transformers model directory, loadable with `--model DIR`."""
    return save_tiny_long_context_llama(tmp_path_factory.mktemp("tiny-cli-model"))


def test_parser_has_ask_subcommand() -> None:
    parser = build_parser()
    args = parser.parse_args(["ask", "Q?", "-c", "x", "--choice", "y", "--no-stream"])
    assert args.command == "ask" and args.choice == ["x", "y"] and args.no_stream and args.model == "smollm2-135m"


def test_all_subcommands_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "ask" in out and "profile" in out and "bench" in out


def test_no_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 1
    assert "ask" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", "Q?", "-c", "only one"], "at least 2 choices"),
        (["ask", " ", "-c", "a", "-c", "b"], "question text is empty"),
        (["ask", "Q?", "--max-tokens", "0"], "--max-tokens must be >= 1"),
        (["ask", "Q?", "--profile", "/nonexistent/profile.json"], "no profile file"),
        (["ask", "Q?", "--model", "/nonexistent/model.gguf"], "not found"),
    ],
)
def test_bad_input_is_one_clear_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("litestage: error:") and message in err and "Traceback" not in err


def test_plain_plan_file(tmp_path: Path) -> None:
    path = tmp_path / "plans.json"
    path.write_text(json.dumps({"recall": {"attention": [0]}, "analysis": {}, "summary": {"mlp": [1]}}))
    plans = load_plans(str(path))
    assert isinstance(plans, StageBudgets) and plans.plan_for("recall").attention == (0,)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"recall": {"attention": [-1]}}))
    with pytest.raises(InvalidInputError, match=">= 0"):
        load_plans(str(bad))


def test_ask_streams_stages_and_prints_table(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"recall": {"attention": [0]}, "analysis": {}, "summary": {"mlp": [1]}}))
    status = main(
        ["ask", "Where is milk kept cold?", "-c", "oven", "-c", "fridge", "--model", str(tiny_dir),
         "--profile", str(plans), "--max-tokens", "4", "--no-fallback"]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert out.index("[recall]") < out.index("[analysis]") < out.index("[summary]") < out.index("Answer:")
    assert "  A. oven" in out and "  B. fridge" in out
    table = out[out.index("stage ") :].splitlines()
    assert table[1].startswith("recall") and table[1].endswith("attn[0]")
    assert table[2].startswith("analysis") and table[2].endswith("full model")
    assert table[3].startswith("summary") and table[3].endswith("mlp[1]")
    assert table[4].startswith("total")


def test_ask_no_stream_and_json(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["ask", "Can cats fly?", "--model", str(tiny_dir), "--max-tokens", "3", "--no-stream", "--json"])
    captured = capsys.readouterr()
    out = captured.err  # the human-readable text; stdout holds the JSON only, so it can be piped to jq
    assert status == 0 and "  A. yes" in out and "  B. no" in out
    result = json.loads(captured.out)
    assert set(result["stages"]) == {"recall", "analysis", "summary"}
    # A random model never writes a readable answer, so the fallback ran and is shown.
    assert result["fallback_used"] is True and "[summary (full model)]" in out and "summary*" in out


def test_ask_names_the_kernel_path_next_to_the_weight_format(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user must see whether int8 runs on a fast kernel path here or falls back to float32 speed."""
    argv = ["ask", "Can cats fly?", "--model", str(tiny_dir), "--max-tokens", "2", "--no-stream", "--no-fallback",
            "--weights", "int8"]
    assert main(argv) == 0
    kernel = formats.kernel_path("int8")
    expected = " (no fast kernel on this CPU: float32 speed)" if kernel == "float32 fallback" else f" ({kernel} kernels)"
    assert f", int8 weights{expected}" in capsys.readouterr().out
    monkeypatch.setattr(formats, "_fast", [None, None])  # the route memo: no compiled kernels
    assert main(argv) == 0
    assert ", int8 weights (no fast kernel on this CPU: float32 speed)" in capsys.readouterr().out


def test_ask_shared_context_reports_prefilled_and_reused_tokens(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ask", "Where is milk kept?", "-c", "oven", "-c", "fridge", "--model", str(tiny_dir), "--max-tokens", "3",
            "--no-stream", "--json", "--no-fallback"]
    assert main([*argv, "--context", "shared"]) == 0
    out = capsys.readouterr().out
    stages = json.loads(out[out.index("{") :])["stages"]
    for name in ("analysis", "summary"):
        stage = stages[name]
        assert stage["reused_tokens"] + stage["prefilled_tokens"] == stage["prompt_tokens"]
        assert stage["prefilled_tokens"] < stage["reused_tokens"] / 10
    assert "prefilled" in out and "reused" in out
    # the separate format re-reads every stage's prompt (few-shot prefix apart)
    assert main([*argv, "--context", "separate"]) == 0
    separate = json.loads((out := capsys.readouterr().out)[out.index("{") :])["stages"]
    assert separate["summary"]["prefilled_tokens"] > 5 * stages["summary"]["prefilled_tokens"]


def test_ask_rejects_an_unknown_context(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["ask", "Q?", "--context", "joint"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.integration
def test_ask_on_the_default_model_as_a_process() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run(
        [sys.executable, "-m", "litestage_chain.cli", "ask", "Can a fish live out of water for a week?",
         "--max-tokens", "12"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    out = completed.stdout
    assert "[recall]" in out and "[analysis]" in out and "[summary]" in out and "Answer:" in out
    assert "total" in out and "full model" in out
