"""The package's layers, checked: each folder imports only from the folders below it, at module level.

The README lists the layers; this test is what keeps the list true when code moves (an upward import is how a flat
package grew a 15-level import graph with cycles hidden in function-local imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "litestage_chain"
# Lowest first. A module may import from its own layer and the layers before it in this list.
LAYERS = [
    "errors", "cache_files", "append_store", "data", "engine", "budgets", "chat", "reasoning", "offline", "bench",
    "cluster", "cli",
]
# Function-local imports of the package's own modules that a real cycle forces, with the reason.
ALLOWED_LOCAL = {
    ("litestage_chain.chat.chat_model", "litestage_chain.chat.structured"),  # structured output wraps the chat model
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import of the package's own modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_checking = {
        id(inner)
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    top = {id(node) for node in tree.body}
    name = _module_name(path)
    found = []
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                targets = [".".join(base + ([node.module] if node.module else []))]
            else:
                targets = [node.module or ""]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found.extend((t, node.lineno, id(node) in top) for t in targets if t.startswith("litestage_chain"))
    return found


def test_every_module_belongs_to_a_layer() -> None:
    strays = [
        _module_name(p) for p in PACKAGE.rglob("*.py")
        if _module_name(p) != "litestage_chain" and _layer(_module_name(p)) is None
    ]
    assert not strays, f"modules outside the layers {LAYERS}: {strays}"


def test_imports_point_down_and_sit_at_module_level() -> None:
    upward, local = [], []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        for target, line, at_top in _imports(path):
            mine, theirs = _layer(name), _layer(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{name}:{line} imports {target}")
            if not at_top and (name, target) not in ALLOWED_LOCAL:
                local.append(f"{name}:{line} imports {target} inside a function")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)
    assert not local, "function-local imports (hoist them, or name the cycle in ALLOWED_LOCAL):\n" + "\n".join(local)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The test above can fail: a module of the engine that imports the chat model is reported."""
    engine = tmp_path / "litestage_chain" / "engine"
    engine.mkdir(parents=True)
    module = engine / "bad.py"
    module.write_text("def f():\n    from litestage_chain.chat.chat_model import ChatLiteStage\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "litestage_chain"
    try:
        imports = _imports(module)
        assert imports == [("litestage_chain.chat.chat_model", 2, False)]
        assert _layer(_module_name(module)) < _layer(imports[0][0])
    finally:
        PACKAGE = saved
