"""The torch-free kernel harness: every path this CPU runs, and the ARM NEON paths under emulation.

The NEON code cannot run on the x86 machines CI uses, so it is checked by cross-compiling the standalone
harness (quant/csrc/harness) for aarch64 and running it under qemu-user, with and without the dot-product
extension. Skipped only where the cross toolchain or qemu is not installed (Debian: g++-aarch64-linux-gnu,
qemu-user).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

import litestage_chain.engine.quant.kernels as kernels

HARNESS = kernels.SOURCE.parent / "harness"


def test_native_harness_agrees_with_the_reference_on_every_path(tmp_path: Path) -> None:
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    binary = tmp_path / "harness"
    subprocess.run([compiler, "-std=c++17", "-O2", str(HARNESS / "gemv_harness.cpp"), "-o", str(binary)], check=True)
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "portable" in run.stdout and "OK: 0 failure(s)" in run.stdout
    if platform.machine() in ("x86_64", "AMD64"):  # the SSE2 portable kernels, checked against the plain C++ ones
        assert "portable_generic" in run.stdout


def test_neon_paths_under_qemu(tmp_path: Path) -> None:
    missing = [tool for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install g++-aarch64-linux-gnu qemu-user)")
    run = subprocess.run(["bash", str(HARNESS / "run_neon_harness.sh"), str(tmp_path)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "paths checked: portable neon neon_dotprod" in run.stdout  # -cpu max: the sdot variant ran
    assert "paths checked: portable neon\n" in run.stdout  # -cpu cortex-a57: no FEAT_DotProd
    assert run.stdout.count("OK: 0 failure(s)") == 2
