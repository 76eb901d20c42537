"""Option values checked by the argument parser, before any work: one style for every command.

Each factory returns a parser for ``typer.Option(parser=...)``. A bad value raises :class:`BadValue`
(a ``BadParameter``) with a sentence naming what was expected; click names the
option, so the call exits 2 (with ``--json``: one error object) before anything is exported, built,
pushed or stored. Bounds are generous but finite: an absurd value (``--iterations 10**12``) is a
typo, not a request. Numbers are finite: NaN and infinity are refused everywhere.

The layers below keep their own checks (``ProfileSettings``, ``RunOptions``...) for callers from
Python; these are the command line's first line.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import typer


class BadValue(typer.BadParameter):
    """A refused option value: click names the option ("Invalid value for '--iterations': ...")."""

#: Upper bounds shared by several commands.
MAX_ITERATIONS = 1_000_000
MAX_THREADS = 1024
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: longer is a typo (or "for ever", which no run needs)
MAX_TOKENS = 1 << 20


def _int_text(value: object) -> int:
    if isinstance(value, bool):
        raise BadValue(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return int(text, 10)
    except ValueError:
        raise BadValue(f"expected an integer, got {text!r}") from None


def count(lo: int, hi: int, what: str = "") -> Callable[[object], int]:
    """An integer in ``[lo, hi]``."""

    def parse(value: object) -> int:
        n = _int_text(value)
        if not lo <= n <= hi:
            raise BadValue(f"expected {what + ': ' if what else ''}an integer from {lo} to {hi}, got {n}")
        return n

    parse.__name__ = "count"
    return parse


def real(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False,
         what: str = "") -> Callable[[object], float]:
    """A finite number in ``[lo, hi]`` (``lo_open``/``hi_open``: the bound itself excluded)."""
    left, right = ("(" if lo_open else "["), (")" if hi_open else "]")

    def parse(value: object) -> float:
        if isinstance(value, bool):
            raise BadValue(f"expected a number, got {value!r}")
        try:
            x = float(value) if isinstance(value, (int, float)) else float(str(value).strip())
        except ValueError:
            raise BadValue(f"expected a number, got {str(value)!r}") from None
        if not math.isfinite(x):
            raise BadValue(f"expected a finite number, got {value}")
        if x < lo or x > hi or (lo_open and x == lo) or (hi_open and x == hi):
            raise BadValue(f"expected {what + ': ' if what else ''}a number in {left}{lo:g}, {hi:g}{right}, "
                             f"got {x:g}")
        return x

    parse.__name__ = "real"
    return parse


def int_list(lo: int, hi: int, *, max_items: int = 64, what: str = "") -> Callable[[object], str]:
    """Comma-separated integers in ``[lo, hi]`` (at least one, at most ``max_items``); the text is kept
    (the command splits it as before), only checked."""
    one = count(lo, hi, what)

    def parse(value: object) -> str:
        text = str(value)
        items = [x for x in text.split(",") if x.strip()]
        if not items:
            raise BadValue(f"expected comma-separated integers from {lo} to {hi}, got {text!r}")
        if len(items) > max_items:
            raise BadValue(f"expected at most {max_items} values, got {len(items)}")
        for x in items:
            one(x)
        return text

    parse.__name__ = "int_list"
    return parse


def threads_list(*, allow_auto: bool = True) -> Callable[[object], str]:
    """``auto`` (when allowed) or comma-separated thread counts 0..MAX_THREADS (0: every core)."""
    ints = int_list(0, MAX_THREADS, what="thread counts")

    def parse(value: object) -> str:
        text = str(value).strip()
        if allow_auto and text.lower() == "auto":
            return text
        try:
            return ints(text)
        except BadValue as exc:
            raise BadValue(f"{exc.message}{' (or auto)' if allow_auto else ''}") from None

    parse.__name__ = "threads"
    return parse


def choice(values: Iterable[str]) -> Callable[[object], str]:
    """One of ``values`` (exactly)."""
    allowed = tuple(values)

    def parse(value: object) -> str:
        text = str(value)
        if text not in allowed:
            raise BadValue(f"expected one of {' | '.join(allowed)}, got {text!r}")
        return text

    parse.__name__ = "choice"
    return parse


# The parsers the commands share.
warmup = count(0, MAX_ITERATIONS)
iterations = count(1, MAX_ITERATIONS)
repetitions = count(1, 100_000)
min_time_ms = count(0, int(MAX_TIMEOUT_S * 1000))
timeout = real(0.0, MAX_TIMEOUT_S, lo_open=True, what="seconds")
vector = count(0, 1_000_000)
threads = count(0, MAX_THREADS)
top = count(0, 100_000)
tokens = count(1, MAX_TOKENS)

__all__ = ["BadValue", "count", "real", "int_list", "threads_list", "choice", "warmup", "iterations", "repetitions",
           "min_time_ms", "timeout", "vector", "threads", "top", "tokens", "MAX_ITERATIONS", "MAX_THREADS",
           "MAX_TIMEOUT_S", "MAX_TOKENS"]
