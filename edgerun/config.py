"""Where edgerun keeps its caches, bundles and results: ``EDGERUN_HOME``."""

from __future__ import annotations

import os
from pathlib import Path


def edgerun_home() -> Path:
    """``$EDGERUN_HOME`` if set, else a per-user data directory (XDG on Linux)."""
    env = os.environ.get("EDGERUN_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "edgerun"


def cache_dir(*parts: str) -> Path:
    path = edgerun_home().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
