"""Text from outside edgerun (a device's stderr, a probe's answers) made safe to print.

A device is not trusted with the user's terminal: a ``cpu_model`` or an error line may carry
escape sequences (retitle the window, hide text, rewrite the line with ``\\r``, OSC 8 links).
:func:`sanitize_text` removes them before the text is printed or put into an error message; the
raw bytes stay in the run directory.
"""

from __future__ import annotations

import re

# Whole escape sequences first (so no "[31m" residue is left), then any control character left.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"            # CSI: colours, cursor moves, erase
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window title, hyperlinks (BEL or ST ends it)
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"     # DCS / SOS / PM / APC strings
    r"|\x1b[ -/]*[0-~]?"                  # two-character escapes (ESC c resets the terminal)
    r"|\x9b[0-?]*[ -/]*[@-~]"             # 8-bit CSI
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize_text(text: str | bytes | None) -> str:
    """``text`` without terminal escape sequences or control characters (newline and tab kept).

    Bytes are decoded as UTF-8 with replacement. Idempotent: ``sanitize_text(sanitize_text(x))``
    equals ``sanitize_text(x)``.
    """
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


__all__ = ["sanitize_text"]
