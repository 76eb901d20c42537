"""edgerun's own version, read from the installed distribution's metadata (no import of the hall)."""

from __future__ import annotations

import functools
from importlib import metadata
from pathlib import Path


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

    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    purelib = sysconfig.get_paths()["purelib"]
    if purelib not in paths and Path(purelib).is_dir():
        paths.insert(0, purelib)
    return paths


def venv_purelib(python) -> Path:
    """The purelib site-packages directory of another interpreter (a venv's ``bin/python``)."""
    import subprocess

    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out)


def pip_report_installed(path) -> dict[str, str]:
    """``{distribution: version}`` of what a ``pip install --report PATH`` installed (names normalised as pip
    writes them to its resolver: lower case, ``-``); {} when the report is missing or unreadable."""
    import json

    try:
        rep = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in rep.get("install", [])}
