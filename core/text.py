"""Text from outside edgerun (a device's stderr, a probe's answers, a record, a GGUF) made safe to print.

A device is not trusted with the user's terminal: a ``cpu_model`` or an error line may carry
escape sequences (retitle the window, hide text, rewrite the line with ``\\r``, OSC 8 links) or
bidirectional overrides (text that reads differently from what it is). :func:`sanitize_text` removes
them; the raw bytes stay in the run directory.

It is the one sanitiser, and it is enforced where text leaves edgerun, so no caller has to remember:
:class:`SanitizingFormatter` is the formatter of the CLI's logging handler (every ``edgerun.*``
logger), and the CLI's consoles sanitise every string they render (``edgerun.cli._common``).
"""

from __future__ import annotations

import logging
import re

from .errors import UsageError

# Whole escape sequences first (so no "[31m" residue is left), then any control character left.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"            # CSI: colours, cursor moves, erase
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window title, hyperlinks (BEL or ST ends it)
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"     # DCS / SOS / PM / APC strings
    r"|\x1b[ -/]*[0-~]?"                  # two-character escapes (ESC c resets the terminal)
    r"|\x9b[0-?]*[ -/]*[@-~]"             # 8-bit CSI
)
# C0 (but newline and tab), DEL, C1; and the bidirectional embeddings, overrides and isolates
# (LRE RLE PDF LRO RLO, LRI RLI FSI PDI) with the implicit marks (LRM RLM ALM): "Trojan source" text.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def sanitize_text(text: str | bytes | None) -> str:
    """``text`` without terminal escape sequences, control characters (newline and tab kept) or
    bidirectional overrides.

    Bytes are decoded as UTF-8 with replacement. Idempotent: ``sanitize_text(sanitize_text(x))``
    equals ``sanitize_text(x)``.
    """
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


class SanitizingFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose every line (message, arguments, exception text) has been
    through :func:`sanitize_text`: a log call may carry device text without thinking about it."""

    def format(self, record: logging.LogRecord) -> str:
        return sanitize_text(super().format(record))


__all__ = ["SanitizingFormatter", "parse_size", "sanitize_text"]


_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


def parse_size(text: str, what: str) -> int:
    """``512KiB``, ``2MiB``, ``1.5MB``, ``65536`` -> bytes; anything else is a :class:`UsageError`."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text or "")
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"{what} {text!r} is not a memory size.", hint="Give it like 512KiB, 2MiB or 65536 (bytes).")
    return int(float(m.group(1)) * _UNITS[unit])
