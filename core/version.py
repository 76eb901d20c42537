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


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` in this interpreter, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def base_site_packages() -> list[str]:
    """This interpreter's site-packages (purelib first when it is not among them): what a venv of its own
    (the Arm toolchain's, the peers benchmark's) adds through a ``.pth`` to borrow edgerun's torch."""
    import site
    import sysconfig
    from pathlib import Path

    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    purelib = sysconfig.get_paths()["purelib"]
    if purelib not in paths and Path(purelib).is_dir():
        paths.insert(0, purelib)
    return paths
