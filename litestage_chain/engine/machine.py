"""The CPU a measurement ran on, for keys of stored timings.

Why: the kernel path (AVX-512 VNNI, AVX2, portable) does not name the machine, and two machines on the same path
price tokens differently: the OBQA search's full-model reference, timed on another machine of the same kernel path,
had decode steps 1.4x dearer against prefill tokens than this one's, and every later prediction inherited that.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"), or the architecture when
    the system does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
