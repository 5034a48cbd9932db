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


def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A PYTHON that runs the script's profile check for real and writes down the bench command it is given."""
    seen = tmp_path / "argv.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nif [ "$1" = - ]; then exec "{sys.executable}" "$@"; fi\n'
                    f'printf "%s\\n" "$@" > "{seen}"\n', encoding="utf-8")
    fake.chmod(0o755)
    return fake, seen


@pytest.mark.parametrize(("setting", "expected"), [(None, ["--drop-slower", "1.25"]), ("1.5", ["--drop-slower", "1.5"]),
                                                   ("off", [])])
def test_the_every_baseline_run_drops_clearly_slower_points_unless_told_not_to(
    tmp_path: Path, setting: str | None, expected: list[str]
) -> None:
    fake, seen = fake_python(tmp_path)
    env = {**os.environ, "PYTHON": str(fake), "PROFILE": "strategyqa"}
    env.pop("DROP_SLOWER", None)
    if setting is not None:
        env["DROP_SLOWER"] = setting
    done = subprocess.run(["bash", str(SCRIPT), "all", "strategyqa", "8"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    argv = seen.read_text().split("\n")
    assert argv[:3] == ["-m", "litestage_chain.cli", "bench"] and "--drop-worse" in argv
    found = [argv[i : i + 2] for i, arg in enumerate(argv) if arg == "--drop-slower"]
    assert found == ([expected] if expected else [])
