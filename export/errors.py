"""Errors of the export room. Each names the stage that failed (design card: load model / export /
quantize / lower / verify / write) so the CLI can say where and why in one paragraph."""

from __future__ import annotations

from edgerun.errors import EdgerunError, UsageError


class ExportError(EdgerunError):
    """A model could not be turned into a verified program."""

    exit_code = 3
    default_stage = "export"


class VerificationFailed(ExportError):
    """The program runs but its outputs disagree with eager PyTorch beyond the scheme's thresholds.

    The artifact is still written (marked ``failed`` in its manifest) so it can be inspected.
    """

    exit_code = 4
    default_stage = "verify"


__all__ = ["ExportError", "VerificationFailed", "UsageError"]
