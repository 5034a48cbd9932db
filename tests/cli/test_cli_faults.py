"""`litestage` under faults a user can cause: one `litestage: error:` line, or a quiet stop on a broken pipe."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from litestage_chain.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import save_tiny_long_context_llama  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_long_context_llama(tmp_path_factory.mktemp("tiny-cli-faults"))


def _one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("litestage: error:"), err
    assert all(fragment in lines[0] for fragment in fragments), err


def test_a_profile_nested_100000_levels_deep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["ask", "Q?", "--profile", str(deep)]) == 2
    _one_error_line(capsys.readouterr().err, "nested too deeply")


def test_a_profile_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"recall": "\xff"}')
    assert main(["ask", "Q?", "--profile", str(bad)]) == 2
    _one_error_line(capsys.readouterr().err, "not UTF-8")


def test_a_cache_path_that_is_a_file(tmp_path: Path, monkeypatch, capsys, tiny_dir: Path) -> None:  # noqa: ANN001
    blocker = tmp_path / "cache"
    blocker.write_text("")
    monkeypatch.setenv("LITESTAGE_CACHE", str(blocker))
    assert main(["ask", "Q?", "--model", str(tiny_dir), "--weights", "int8", "--max-tokens", "2"]) == 2
    _one_error_line(capsys.readouterr().err, str(blocker), "not a directory", "LITESTAGE_CACHE")


def test_closed_standard_output(monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["ask", "Q?"]) == 2
    _one_error_line(capsys.readouterr().err, "standard output is closed")


def test_an_os_error_on_a_users_path_is_one_line(monkeypatch, capsys) -> None:  # noqa: ANN001
    def refuse(_args: object) -> int:
        raise PermissionError(13, "Permission denied", "/read-only/cache/converted")

    module = sys.modules[main.__module__]  # the module, which the package's `main` function shadows
    parser = module.build_parser()
    parser._subparsers._group_actions[0].choices["ask"].set_defaults(handler=refuse)  # noqa: SLF001
    monkeypatch.setattr(module, "build_parser", lambda: parser)
    assert main(["ask", "Q?"]) == 2
    _one_error_line(capsys.readouterr().err, "Permission denied: /read-only/cache/converted")


class _ClosingPipe(io.StringIO):
    """Standard output whose reader goes away after `lines` lines, as `| head -n lines` does."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.left = lines
        self.writes_after_close = 0

    def write(self, text: str) -> int:
        if self.left <= 0:
            self.writes_after_close += 1
            raise BrokenPipeError(32, "Broken pipe")
        self.left -= text.count("\n")
        return super().write(text)


def test_a_broken_pipe_stops_the_run_quietly(tiny_dir: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    import litestage_chain.engine.generation as generation

    steps: list[int] = []
    real = generation._advance
    monkeypatch.setattr(generation, "_advance", lambda *a, **k: (steps.append(1), real(*a, **k))[1])
    pipe = _ClosingPipe(lines=5)
    monkeypatch.setattr(sys, "stdout", pipe)
    monkeypatch.setattr(os, "dup2", lambda *_: None)  # the test's own stdout is not a real pipe
    status = main(["ask", "Q?", "--model", str(tiny_dir), "--weights", "float32", "--max-tokens", "40"])
    assert status == 141
    assert capsys.readouterr().err == ""
    assert pipe.writes_after_close == 1, "one failed write stops the run"
    assert len(steps) < 40, "the recall stage stopped at the first token it could not print"


@pytest.mark.integration
def test_ask_piped_into_head_exits_quietly() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run(
        f"{sys.executable} -m litestage_chain.cli ask 'Is the sun a star?' --max-tokens 64 | head -6",
        shell=True, capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert completed.stdout.count("\n") == 6
    assert "Error" not in completed.stderr and "Traceback" not in completed.stderr, completed.stderr


def _read_only_runner() -> list[str] | None:
    """A command prefix under which permission bits bind even for root (which otherwise writes anywhere)."""
    import shutil

    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"] if setpriv else None


@pytest.mark.parametrize("model", ["tiny", pytest.param("embedded", marks=pytest.mark.integration)])
def test_a_read_only_cache(tmp_path: Path, tiny_dir: Path, model: str) -> None:
    """A directory model still answers (nothing it needs must be written); the embedded one, which needs its
    conversion written, fails with one clear line."""
    runner = _read_only_runner()
    if runner is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    cache.chmod(0o555)
    source = str(tiny_dir) if model == "tiny" else "smollm2-135m"
    env = {**os.environ, "LITESTAGE_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [*runner, sys.executable, "-m", "litestage_chain.cli", "ask", "Q?", "--model", source, "--weights", "int8",
         "--max-tokens", "2", "--no-stream"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    if model == "tiny":
        assert done.returncode == 0 and "Answer:" in done.stdout, done.stderr
        assert "could not cache converted weights" in done.stderr
    else:
        assert done.returncode == 2
        errors = [line for line in done.stderr.splitlines() if line.startswith("litestage: error:")]
        assert len(errors) == 1 and "Permission denied" in errors[0] and "LITESTAGE_CACHE" in errors[0]
