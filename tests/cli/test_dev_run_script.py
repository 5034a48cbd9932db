"""`scripts/run-dev-qwen`'s profile checks: a missing or broken profile stops the run with one line, before any
model loads (the runs it starts take hours, so a typo in PROFILE must not surface after the first point)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "run-dev-qwen"


def run_script(*args: str, profile: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "PROFILE": profile}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["batch1-caps", "all"])
def test_a_missing_profile_is_named(kind: str) -> None:
    done = run_script(kind, "strategyqa", profile="no-such-profile")
    assert done.returncode == 2
    assert done.stderr.strip() == "no no-such-profile profile for the benchmark model"


@pytest.mark.parametrize("kind", ["batch1-caps", "formats", "all"])
def test_a_broken_profile_file_is_one_line_error(tmp_path: Path, kind: str) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    done = run_script(kind, "strategyqa", profile=str(broken))
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: ") and "not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr
