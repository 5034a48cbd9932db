"""The one cache root: `$LITESTAGE_CACHE`, else the user's cache directory. Converted weights, the compiled kernels,
the assembled benchmark model and importance measurements all live below it."""

from __future__ import annotations

import os
from pathlib import Path

from litestage_chain.cache_files import unusable_cache


def cache_root() -> Path:
    """The cache root, created on demand. `LITESTAGE_CACHE` overrides the default location.

    Raises `CacheError` (one clear line in the CLI) when the path is a file or cannot be created."""
    override = os.environ.get("LITESTAGE_CACHE")
    if override:
        root = Path(override).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "litestage_chain"
    if root.exists() and not root.is_dir():
        raise unusable_cache(root, NotADirectoryError(20, "it is a file, not a directory"))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # no permission to create it, a file where a parent folder should be
        raise unusable_cache(root, error) from error
    return root
