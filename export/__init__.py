"""The export room: how programs are made (model zoo, schemes, targets, lowering, verification,
manifest). It never talks to a device. Heavy imports (torch, executorch) happen inside functions,
so listing models or targets stays fast."""

from __future__ import annotations

from .errors import ExportError, VerificationFailed
from edgerun.core.artifact import MANIFEST_NAME, SCHEMA_VERSION, Manifest, read_manifest
from .schemes import SCHEMES, Scheme, make_scheme
from .targets import TARGETS, Target, get_target, legal_pairs
from .zoo import MODELS, get_model


def export_model(*args, **kwargs):
    """See :func:`edgerun.export.pipeline.export_model`."""
    from .pipeline import export_model as _export_model

    return _export_model(*args, **kwargs)


__all__ = ["export_model", "read_manifest", "Manifest", "ExportError", "VerificationFailed", "MANIFEST_NAME",
           "SCHEMA_VERSION", "SCHEMES", "Scheme", "make_scheme", "TARGETS", "Target", "get_target",
           "legal_pairs", "MODELS", "get_model"]
