"""Build (once, cached) and load the C++ low-bit GEMV kernels.

Why a compiled kernel: for batch-1 decode the stock PyTorch CPU paths for int8 weights are
slower than plain float32 (see benchmarks/README.md), so the int8/int4 formats only pay off
with a GEMV that dequantises in registers. The extension is compiled on first use with the
machine's C++ compiler through ``torch.utils.cpp_extension`` (which needs ``ninja``) and
cached under the litestage cache dir keyed by a hash of the sources (``cpu_gemv.cpp`` and the
``gemv_*`` headers it includes), the torch version and the
Python version, so later processes just load the shared object.

If anything about the build fails (no compiler, no ninja, a non-x86 host with a broken
toolchain) :func:`get_kernels` returns ``None`` once with a warning and the quantised modules
fall back to dequantise-then-matmul, which is correct but slower.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from litestage_chain.cache_files import CacheError, check_manifest, locked, manifest_of, write_manifest
from litestage_chain.engine.cache_dir import cache_root
from litestage_chain.engine.progress import first_run_step

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "cpu_gemv.cpp"
DISABLE_ENV = "LITESTAGE_NO_CPU_KERNELS"

_lock = threading.Lock()
_loaded: ModuleType | None = None
_failed: str | None = None


def _build_key(source: bytes) -> str:
    digest = hashlib.sha256(source)
    digest.update(torch.__version__.encode())
    digest.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
    return digest.hexdigest()[:16]


def kernel_build_problem() -> str | None:
    """Why the kernels cannot be built here, or ``None`` if nothing obvious is missing."""
    if os.environ.get(DISABLE_ENV):
        return f"disabled by ${DISABLE_ENV}"
    if not SOURCE.is_file():
        return f"kernel source {SOURCE} is missing from the installed package"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None and shutil.which("g++") is None:
        return "no C++ compiler (c++/g++) on PATH"
    try:
        from torch.utils.cpp_extension import is_ninja_available

        if not is_ninja_available():
            return "ninja is not installed (pip install ninja)"
    except ImportError:  # pragma: no cover - torch always ships cpp_extension
        return "torch.utils.cpp_extension is unavailable"
    return None


def get_kernels() -> ModuleType | None:
    """The compiled kernel module, building it on first call; ``None`` if it cannot be had."""
    global _loaded, _failed
    if _loaded is not None or _failed is not None:
        return _loaded
    with _lock:
        if _loaded is not None or _failed is not None:
            return _loaded
        problem = kernel_build_problem()
        if problem is not None:
            _failed = problem
            logger.warning("low-bit CPU kernels unavailable (%s); using dequantise+matmul", problem)
            return None
        try:
            _loaded = _build()
        except CacheError:  # no usable cache at all: nothing else will work either, so say so once, clearly
            raise
        except Exception as exc:  # any build or load failure means: use the fallback
            _failed = f"{type(exc).__name__}: {exc}"
            logger.warning("low-bit CPU kernels failed to build (%s); using dequantise+matmul", _failed)
        return _loaded


def kernels_status() -> str:
    """Human-readable state for logs and benchmarks: the ISA in use or why there is none."""
    module = get_kernels()
    return f"compiled ({module.kernel_isa()})" if module is not None else f"fallback ({_failed})"


def _source_bytes() -> bytes:
    """The extension source and the kernel headers it includes: a change to any of them means a new build."""
    headers = sorted(SOURCE.parent.glob("*.h")) + sorted(SOURCE.parent.glob("*.inc"))
    return b"".join(path.read_bytes() for path in [SOURCE, *headers])


def _build() -> ModuleType:
    key = _build_key(_source_bytes())
    return build_extension(SOURCE, f"litestage_cpu_gemv_{key}", cache_root() / "cpp_ext" / f"cpu_gemv_{key}")


def build_extension(source: Path, name: str, build_dir: Path) -> ModuleType:
    """Compile (or load the cached build of) a version of the kernel source as module `name`.

    Also what a benchmark uses to load an earlier version beside the current one, under its own name.

    The build runs under a lock that dies with its owner (`cache_files.locked`), so a process killed while
    compiling never leaves later ones waiting: whoever holds it may remove torch's own `lock` file, which only a
    dead builder can have left. The shared object is used only if it has the size and sha256 recorded when it was
    built; a truncated or damaged one (which would crash the process when mapped) is deleted and rebuilt."""
    from torch.utils.cpp_extension import load

    with locked(build_dir.with_name(build_dir.name + ".lock")):
        built = build_dir / f"{name}.so"
        if build_dir.exists():
            problem = check_manifest(manifest_of(built)) if built.exists() else "no finished build"
            if problem is not None:  # also a build a killed process left half done: its objects may be torn
                logger.warning("compiled kernel cache %s is incomplete or damaged (%s); rebuilding it", build_dir,
                               problem)
                shutil.rmtree(build_dir)
            else:
                (build_dir / "lock").unlink(missing_ok=True)  # left by a loader that died
        build_dir.mkdir(parents=True, exist_ok=True)
        # A cached build loads in a second; compiling takes a minute or more: say so only when it is taking that long.
        with first_run_step(f"compiling the low-bit CPU kernels ({source.name})", after=3.0):
            module = load(
                name=name,
                sources=[str(source)],
                extra_cflags=["-O3", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                verbose=False,
            )
        if built.is_file() and check_manifest(manifest_of(built)) is not None:
            write_manifest(manifest_of(built), [built])
        return module
