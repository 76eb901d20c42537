"""edgerun's own version, read from the installed distribution's metadata (no import of the hall)."""

from __future__ import annotations

import functools
from importlib import metadata


@functools.lru_cache(maxsize=1)
def edgerun_version() -> str:
    try:
        return metadata.version("edgerun")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0+source"


#: the name other modules may prefer
version = edgerun_version
