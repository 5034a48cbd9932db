"""Every Python block of README.md runs as written.

The static check (always run) compiles each block and finds names it uses but never defines or imports; the
integration test executes each block on its own, from the repository root, on the real default model.
"""

from __future__ import annotations

import ast
import builtins
import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[int, str]]:
    """(line number, source) of each ```python block."""
    text = README.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def undefined_names(source: str) -> set[str]:
    """Names a block reads that nothing in it binds (imports, assignments, parameters, loop targets, defs)."""
    tree = ast.parse(source)
    bound: set[str] = set(dir(builtins))
    loaded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loaded - bound


def test_readme_has_python_blocks() -> None:
    assert len(python_blocks()) >= 5


@pytest.mark.parametrize(("line", "source"), python_blocks(), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_block_is_self_contained(line: int, source: str) -> None:
    compile(source, f"README.md:{line}", "exec")
    assert not undefined_names(source), f"README.md:{line} uses undefined names"


def test_the_checker_finds_what_the_issue_reported() -> None:
    assert undefined_names("results = run_batch(chain, dev)") == {"run_batch", "chain", "dev"}
    assert undefined_names("from x import y\nllm = ChatLiteStage()\ny(llm)") == {"ChatLiteStage"}
    assert undefined_names("f = lambda state, node=1: state\nf(2)") == set()


@pytest.mark.integration
@pytest.mark.parametrize(("line", "source"), python_blocks(), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_block_runs(line: int, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(README.parent)  # the blocks use paths relative to the repository (../shared/data)
    if "../shared/data" in source and not (README.parent.parent / "shared" / "data").is_dir():
        pytest.skip("the benchmark data folder ../shared/data is absent")
    # A real module, as a user's script is: pydantic and LangGraph resolve annotations through `sys.modules`.
    name = f"readme_block_{line}"
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(source, f"README.md:{line}", "exec"), module.__dict__)
