"""Load processes for timing costs under load: started, paused outside `running()`, and never left behind."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from litestage_chain import from_pretrained_objects
from litestage_chain.engine.skip_plan import SkipPlan
from litestage_chain.errors import InvalidInputError
from litestage_chain.offline.busy_cores import BusyCores, BusyCoresError, busy_command
from litestage_chain.offline.cost_model import PlanCosts
from litestage_chain.offline.cost_pipeline import cost_model_for, under_load

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process CPU time from /proc")

SPIN = [sys.executable, "-c", "print('ready', flush=True)\nwhile True: pass"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_load_runs_only_inside_running_and_is_killed_on_exit() -> None:
    with BusyCores(SPIN, 1, label="spin") as busy:
        (process,) = busy._processes
        paused = cpu_seconds(process.pid)
        time.sleep(0.3)
        assert cpu_seconds(process.pid) - paused < 0.05  # paused: no CPU time
        with busy.running():
            time.sleep(0.5)
        ran = cpu_seconds(process.pid)
        assert ran - paused > 0.2
        time.sleep(0.3)
        assert cpu_seconds(process.pid) - ran < 0.05  # paused again
    assert process.poll() is not None


def test_a_process_that_exits_before_ready_is_reported_with_its_error_output() -> None:
    command = [sys.executable, "-c", "import sys; sys.exit('no model here')"]
    with pytest.raises(BusyCoresError, match="exited with code 1 before it was ready.*no model here"):
        with BusyCores(command, 1, label="x"):
            pass


def test_a_process_that_never_gets_ready_times_out_and_is_killed() -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    started = time.monotonic()
    with pytest.raises(BusyCoresError, match="did not report ready within 0.5 s"):
        with BusyCores(command, 1, label="x", ready_timeout=0.5):
            pass
    assert time.monotonic() - started < 10


def test_a_load_process_that_died_stops_the_timing_instead_of_timing_a_quiet_machine() -> None:
    with BusyCores(SPIN, 2, label="spin") as busy:
        busy._processes[1].kill()
        busy._processes[1].wait()
        with pytest.raises(BusyCoresError, match="busy process 1 stopped"):
            with busy.running():
                pass


def test_invalid_counts_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match=">= 1"):
        BusyCores(SPIN, 0, label="x")


def test_costs_timed_under_load_are_kept_apart_from_quiet_ones(tmp_path: Path) -> None:
    from tiny_models import tiny_qwen2 as build

    tiny_qwen2 = from_pretrained_objects(*build(), name="tiny-qwen2", weights_sha256="0" * 64)
    with BusyCores(SPIN, 1, label="spin") as busy:
        quiet = cost_model_for(tiny_qwen2, 2, rounds=1, path=tmp_path / "costs.jsonl")
        loaded = cost_model_for(tiny_qwen2, 2, rounds=1, path=tmp_path / "costs.jsonl", busy=busy)
        assert loaded.identity == quiet.identity + ":busy=1xspin"
        loaded.full_costs()
        (process,) = busy._processes
        assert cpu_seconds(process.pid) > 0.0
    assert cost_model_for(tiny_qwen2, 2, rounds=1, path=tmp_path / "costs.jsonl").reference == []


def test_every_timing_runs_inside_the_load() -> None:
    seen: list[bool] = []

    class Recorder:
        count, label = 1, "fake"
        inside = False

        def running(self):  # type: ignore[no-untyped-def]
            from contextlib import contextmanager

            @contextmanager
            def block():  # type: ignore[no-untyped-def]
                self.inside = True
                yield
                self.inside = False

            return block()

    recorder = Recorder()

    def timer(plan: SkipPlan, *, context: bool = False) -> PlanCosts:
        seen.append(recorder.inside)
        return PlanCosts(prefill_token_seconds={1: 1.0}, decode_step_seconds={1: 1.0})

    wrapped = under_load(timer, recorder)  # type: ignore[arg-type]
    wrapped(SkipPlan())
    wrapped(SkipPlan(), context=True)
    assert seen == [True, True] and not recorder.inside


def test_the_engine_load_process_loads_the_model_and_decodes(real_model) -> None:
    command, label = busy_command("smollm2-135m", "float32", batch_size=2, prompt_tokens=16, decode_steps=4)
    assert label == "float32-b2-p16-s4"
    with BusyCores(command, 1, label=label, ready_timeout=300) as busy:
        (process,) = busy._processes
        before = cpu_seconds(process.pid)
        with busy.running():
            time.sleep(1.0)
        assert cpu_seconds(process.pid) - before > 0.3
