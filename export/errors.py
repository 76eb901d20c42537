"""Errors of the export room (defined in :mod:`edgerun.core.errors`, the one tree). Each names the
stage that failed (load model / export / quantize / lower / verify / write) so the CLI can say where
and why in one paragraph."""

from __future__ import annotations

from edgerun.core.errors import ExportError, UsageError, VerificationFailed

__all__ = ["ExportError", "VerificationFailed", "UsageError"]
