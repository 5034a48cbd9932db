"""The one cache root: `$LITESTAGE_CACHE`, else the user's cache directory. Converted weights, the compiled kernels,
the assembled benchmark model and importance measurements all live below it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache root, created on demand. `LITESTAGE_CACHE` overrides the default location."""
    override = os.environ.get("LITESTAGE_CACHE")
    if override:
        root = Path(override).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "litestage_chain"
    root.mkdir(parents=True, exist_ok=True)
    return root
