"""The ``EDGERUN_HOME`` layout: where caches, bundles, exported artifacts, runs and the store live.

One place, so there is one run-directory root (``runs/``) and one cache root (``cache/``)::

    $EDGERUN_HOME/
      cache/              wheel cache, build trees, runner bundles (re-creatable)
      artifacts/          bench's exports, keyed by recipe identity
      runs/               one directory per run on a device or locally (raw output kept)
      results.sqlite      the results store
      devices.toml        the default device inventory
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def edgerun_home() -> Path:
    """``$EDGERUN_HOME`` if set, else a per-user data directory (XDG on Linux)."""
    env = os.environ.get("EDGERUN_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "edgerun"


def cache_dir(*parts: str) -> Path:
    """``$EDGERUN_HOME/cache/<parts>``, created."""
    path = edgerun_home().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """The one root of run directories: ``$EDGERUN_HOME/runs``."""
    return edgerun_home() / "runs"


def artifacts_dir() -> Path:
    """Where bench keeps the artifacts it exports: ``$EDGERUN_HOME/artifacts``."""
    return edgerun_home() / "artifacts"


def store_path() -> Path:
    """The default results store: ``$EDGERUN_HOME/results.sqlite``."""
    return edgerun_home() / "results.sqlite"


def inventory_path() -> Path:
    """The default device inventory: ``$EDGERUN_HOME/devices.toml``."""
    return edgerun_home() / "devices.toml"


@contextlib.contextmanager
def locked(lock_file: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created, never removed) for the ``with`` block: one
    process at a time builds or fills a cache entry, across processes and EDGERUN_HOMEs sharing it."""
    import fcntl

    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
