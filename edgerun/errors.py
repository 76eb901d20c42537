"""The one error tree every edgerun room raises from.

A leaf module (imports nothing of edgerun) so that ``export``, ``runtime`` and ``devices`` can
subclass it without importing the hall. The CLI turns any :class:`EdgerunError` into one clear
paragraph and a non-zero exit; anything else is a bug and is shown with its traceback.
"""

from __future__ import annotations


class EdgerunError(Exception):
    """A failure the user can act on.

    ``stage`` names the step that failed (``load model``, ``export``, ``quantize``, ``lower``,
    ``verify``, ``deploy``, ``run`` ...), ``hint`` says how to fix the call, and ``exit_code``
    is what the CLI exits with (distinct per family so scripts can tell failures apart).
    """

    exit_code = 1
    default_stage = "edgerun"

    def __init__(self, message: str, *, stage: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.stage = stage or self.default_stage
        self.hint = hint

    def paragraph(self) -> str:
        text = f"{self.stage} failed: {self.message}"
        if self.hint:
            text += f" {self.hint}"
        return text

    def to_json(self) -> dict:
        return {
            "type": type(self).__name__,
            "stage": self.stage,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }


class UsageError(EdgerunError):
    """The call itself is wrong: unknown name, illegal combination, bad option value."""

    exit_code = 2
    default_stage = "arguments"
