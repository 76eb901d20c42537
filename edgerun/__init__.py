"""edgerun: take a PyTorch model to an edge device and tell the truth about how it runs there.

The package is the *hall* of the design card: ``edgerun.export`` (how programs are made),
``edgerun.runtime`` (how they are run and measured) and ``edgerun.devices`` (where they run)
are the rooms; this top level only wires them together (CLI, configuration, results store).
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("edgerun")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
