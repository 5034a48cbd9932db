"""`litestage demo` on a tiny saved model, and the first-run progress messages."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from litestage_chain.cli import main
from litestage_chain.cli.demo import speed_summary
from litestage_chain.errors import InvalidInputError
from litestage_chain.engine.progress import first_run_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import save_tiny_long_context_llama  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_long_context_llama(tmp_path_factory.mktemp("tiny-demo-model"))


def test_demo_compares_litestage_with_the_full_model(tiny_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"recall": {"attention": [0]}, "analysis": {"mlp": [1]}, "summary": {}}))
    status = main(["demo", "--model", str(tiny_dir), "--profile", str(plans), "--rounds", "2"])
    out = capsys.readouterr().out
    assert status == 0
    assert "Where would you put a plate after washing it?" in out and "  B. in the cupboard" in out
    assert "[recall]" in out and "[analysis]" in out, "the LiteStage run is streamed"
    assert "LiteStage answer: " in out and "Full model answer: " in out
    tables = out[out.index("LiteStage (first round)"):]
    assert "attn[0]" in tables and "full model" in tables
    speed = out[out.index("speed against the full model (median of 2 run(s) each"):].splitlines()
    assert [line.split()[0] for line in speed[1:5]] == ["recall", "analysis", "summary", "total"]
    assert all(line.rstrip().endswith("x") or line.rstrip().endswith("n/a") for line in speed[1:5])


def test_demo_rejects_bad_arguments(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "Is it?", "--model", str(tiny_dir)]) == 2
    assert "--choice" in capsys.readouterr().err
    assert main(["demo", "--rounds", "0"]) == 2
    assert main(["demo", "--profile", "no/such/profile.json", "--model", str(tiny_dir)]) == 2
    assert "no profile file" in capsys.readouterr().err


def test_speed_summary_is_a_ratio_of_medians() -> None:
    class Stage:
        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

    class Result:
        def __init__(self, seconds: float) -> None:
            self.stages = {s: Stage(seconds) for s in ("recall", "analysis", "summary")}
            self.model_seconds = 3 * seconds

    text = speed_summary([Result(1.0), Result(2.0), Result(9.0)], [Result(4.0), Result(4.0), Result(1.0)])
    assert "total       12.00 s full,    6.00 s LiteStage: 2.00x" in text


def test_first_run_steps_say_what_they_do() -> None:
    out = io.StringIO()
    with first_run_step("converting x", stream=out) as step:
        step.update(0.5)
    lines = out.getvalue().splitlines()
    assert lines[0] == "litestage: converting x (first run only) ..."
    assert lines[1].startswith("litestage: converting x: done in ")
    failed = io.StringIO()
    with pytest.raises(InvalidInputError), first_run_step("compiling", stream=failed):
        raise InvalidInputError("boom")
    assert "compiling: failed in" in failed.getvalue()

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    live = Terminal()
    with first_run_step("joining", stream=live, tick_seconds=0.01) as step:
        step.update(0.25)
        import time

        time.sleep(0.05)
    assert "\rlitestage: joining ...  25%" in live.getvalue() and "joining: done in" in live.getvalue()
    quick = io.StringIO()
    with first_run_step("loading a cached build", stream=quick, after=5.0):
        pass
    assert quick.getvalue() == "", "a step faster than `after` says nothing"
    slow = io.StringIO()
    with first_run_step("compiling", stream=slow, after=0.01):
        time.sleep(0.1)
    assert slow.getvalue().startswith("litestage: compiling (first run only) ...\n") and "compiling: done" in slow.getvalue()


def test_the_default_profile_is_the_demo_models_own_shipped_one() -> None:
    """The demo resolves its default profile name among the benchmark model's shipped profiles (searched on that
    model), not the default model's profile of the same name nor an older file in the repository."""
    from litestage_chain.budgets.coerce import as_stage_budgets
    from litestage_chain.budgets.profile import Profile, shipped_folder
    from litestage_chain.cli.demo import DEMO_MODEL, DEMO_PROFILE

    own = shipped_folder(DEMO_MODEL).joinpath(f"{DEMO_PROFILE}.json")
    assert own.is_file(), f"{DEMO_MODEL} ships no {DEMO_PROFILE!r} profile"
    resolved = as_stage_budgets(DEMO_PROFILE, model=DEMO_MODEL)
    expected = Profile.from_json(own.read_text(encoding="utf-8")).budgets()
    assert resolved == expected
    assert resolved != as_stage_budgets(DEMO_PROFILE), "the default model's profile of that name was used"
