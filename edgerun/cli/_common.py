"""What every command shares: ``--json``/``--debug``, one JSON object on stdout, clean errors.

Each command builds its result as a plain dict inside a ``work`` callable and hands it to
:func:`execute`, which owns the conventions of the CLI:

* with ``--json`` exactly one JSON object is printed on stdout, success or failure; while
  ``work`` runs, file descriptor 1 is pointed at stderr so that nothing a library prints (even
  from C++) can corrupt it;
* an :class:`~edgerun.core.errors.EdgerunError` becomes one paragraph on stderr and its exit code;
  ``--debug`` adds the traceback; anything else is reported as an internal error (exit 70);
  Ctrl-C exits 130 (with ``--json``: an error object too);
* text that is not ours (paths, device output, inventory entries) is printed through rich only as
  :func:`plain` -- sanitised of terminal escapes and markup-escaped, so ``[bold]`` or ``[/]`` in a
  path is printed as it is, never interpreted;
* and whatever a caller forgets, the exits sanitise: every console of the CLI is a
  :class:`SafeConsole` (each string it renders -- a print, a table cell, a status -- goes through
  :func:`~edgerun.core.text.sanitize_text`), and the ``edgerun`` logging handler formats with
  :class:`~edgerun.core.text.SanitizingFormatter`; ``--json`` output is JSON-escaped;
* :func:`progress` shows a spinner on a terminal and plain lines on stderr when it is piped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from typing import Annotated, Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from edgerun.core.errors import EdgerunError, ExitCode
from edgerun.core.text import SanitizingFormatter, sanitize_text

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print exactly one JSON object on stdout; logs go to stderr.")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="On error, also print the traceback.")]



class SafeConsole(Console):
    """A rich :class:`~rich.console.Console` that sanitises every string it renders (printed text, table
    cells, status lines) of terminal escapes, control characters and bidi overrides before markup is
    parsed: device, record or artifact text printed through it cannot drive the terminal, whether or not
    the caller remembered :func:`plain`. Rich's own styling is added after, so colours still work."""

    def render_str(self, text: str, **kwargs: Any):
        return super().render_str(sanitize_text(text), **kwargs)


err_console = SafeConsole(stderr=True)
INTERNAL_ERROR_EXIT = 70
INTERRUPTED_EXIT = int(ExitCode.INTERRUPTED)

log = logging.getLogger("edgerun")


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is at the time of each record (the
    CLI's own, a test runner's capture), not the one that was current when it was made."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _setup_logging(debug: bool) -> None:
    """One handler on the ``edgerun`` logger (every room logs below it), on stderr, whose formatter
    sanitises each line: a warning quoting a device's error cannot carry escapes to the terminal."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(SanitizingFormatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


@contextlib.contextmanager
def stdout_to_stderr():
    """Point fd 1 (and ``sys.stdout``) at stderr; restore afterwards."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def plain(value: Any) -> str:
    """``value`` as text to print through rich: no terminal escapes or control characters
    (:func:`~edgerun.core.text.sanitize_text`) and every ``[`` markup-escaped, so it prints as it is."""
    return escape(sanitize_text("-" if value is None else str(value)))


class _Progress:
    """What :func:`progress` yields: ``update(message)``."""

    def __init__(self, status=None):
        self._status = status
        self._last: str | None = None

    def update(self, message: str) -> None:
        if self._status is not None:
            self._status.update(plain(message))
        elif message != self._last:
            self._last = message
            print(f"edgerun: {sanitize_text(message)}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def progress(message: str):
    """A spinner on stderr when it is a terminal; else one plain line per new message (a spinner
    shows nothing when piped, and a log reader wants to see where a long run is)."""
    if err_console.is_terminal:
        with err_console.status(plain(message)) as status:
            yield _Progress(status)
    else:
        p = _Progress()
        p.update(message)
        yield p


class StageProgress:
    """A staged job's progress on stderr (the export's ``on_stage``/``on_stage_done``/``on_progress``).

    Every finished stage prints one line, ``export: quantize … 41.0 s``, on a terminal or not. While a
    long stage reports a fraction, a terminal's status line shows a bar (``lower ━━━━━━━━━━━━──────── 52%
    XnnpackBackend partition 157/302 · 98 s``); when stderr is piped a plain line
    ``export: lower 50% (XnnpackBackend partition 151/302) 96 s`` is printed each time the stage passes
    another tenth, at most one every ``interval`` seconds (a stage's first report at once), so a log shows
    where a long run is without a line per step."""

    BAR = 24

    def __init__(self, label: str, status=None, *, interval: float = 10.0, clock: Callable[[], float] | None = None):
        import time

        self.label, self._status, self.interval = label, status, interval
        self._clock = clock or time.monotonic
        self._stage: str | None = None
        self._started = 0.0
        self._tenth = -1
        self._last_line = float("-inf")

    def started(self, stage: str) -> None:
        self._stage, self._started, self._tenth, self._last_line = stage, self._clock(), -1, float("-inf")
        if self._status is not None:
            self._status.update(plain(f"{self.label}: {stage}"))

    def done(self, stage: str, seconds: float) -> None:
        err_console.print(f"{plain(self.label)}: {plain(stage)} … {seconds:.1f} s", highlight=False)

    def fraction(self, stage: str, fraction: float, detail: str | None = None) -> None:
        now = self._clock()
        if stage != self._stage:
            self.started(stage)
        elapsed = now - self._started
        pct = int(fraction * 100)
        if self._status is not None:
            full = int(round(fraction * self.BAR))
            bar = "━" * full + "─" * (self.BAR - full)
            self._status.update(plain(f"{self.label}: {stage} {bar} {pct:3d}% {detail or ''} · {elapsed:.0f} s"))
            return
        tenth = int(fraction * 10)
        if tenth > self._tenth and now - self._last_line >= self.interval:
            self._tenth, self._last_line = tenth, now
            more = f" ({detail})" if detail else ""
            err_console.print(f"{plain(self.label)}: {plain(stage)} {pct}%{plain(more)} {elapsed:.0f} s", highlight=False)


def usage_error_json(message: str, hint: str | None = None) -> str:
    """The one JSON object ``--json`` prints for a call the argument parser refused (exit 2)."""
    return dump_json({"ok": False, "error": {"type": "UsageError", "stage": "arguments", "message": message,
                                             "hint": hint, "exit_code": int(ExitCode.USAGE)}})


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_json"):
        return obj.to_json()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    try:  # numpy scalars / arrays
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """NaN/inf are not JSON: they become null (a missing number, not a fake one). Every string is
    sanitised too (:func:`~edgerun.core.text.sanitize_text`): a consumer printing a field of ``--json``
    output (``jq -r .error.message``) gets no device's escapes either."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, str):
        return sanitize_text(obj)
    if isinstance(obj, dict):
        return {sanitize_text(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dump_json(obj: Any) -> str:
    """Strict JSON (no NaN) of a result; numpy values and paths are converted."""
    return json.dumps(_finite(json.loads(json.dumps(obj, default=_jsonable))), allow_nan=False)


def execute(
    work: Callable[[], dict],
    *,
    json_out: bool,
    debug: bool,
    human: Callable[[dict], None] | None = None,
) -> None:
    """Run ``work`` under the CLI conventions and exit accordingly.

    ``work`` returns the result dict. A result with ``"ok": False`` (e.g. an export whose
    verification failed: the artifact is kept and marked failed) exits with its ``exit_code``
    (default 1) after being printed like a success.
    """
    _setup_logging(debug)
    try:
        if json_out:
            with stdout_to_stderr():
                result = work()
        else:
            result = work()
    except EdgerunError as exc:
        if debug:
            traceback.print_exc(file=sys.stderr)
        if json_out:
            print(dump_json({"ok": False, "error": exc.to_json()}), flush=True)
        else:
            err_console.print(f"[bold red]error:[/] {plain(exc.paragraph())}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if json_out:
            print(dump_json({"ok": False, "error": {"type": "Interrupted", "stage": "interrupted",
                                                     "message": "interrupted (Ctrl-C)", "hint": None,
                                                     "exit_code": INTERRUPTED_EXIT}}), flush=True)
        err_console.print("interrupted", highlight=False)
        raise typer.Exit(INTERRUPTED_EXIT) from None
    except typer.Exit:
        raise
    except Exception as exc:  # a bug, not a user error: say so and keep the traceback one flag away
        if debug:
            traceback.print_exc(file=sys.stderr)
        message = f"internal error: {type(exc).__name__}: {exc}"
        if json_out:
            print(dump_json({"ok": False, "error": {"type": type(exc).__name__, "stage": "internal",
                                                     "message": str(exc), "exit_code": INTERNAL_ERROR_EXIT}}),
                  flush=True)
        else:
            err_console.print(f"[bold red]{plain(message)}[/] (run again with --debug for the traceback)",
                              highlight=False, soft_wrap=True)
        raise typer.Exit(INTERNAL_ERROR_EXIT) from None

    result.setdefault("ok", True)
    if json_out:
        print(dump_json(result), flush=True)
    elif human is not None:
        human(result)
    else:
        SafeConsole().print_json(dump_json(result))
    if result.get("ok") is False:
        raise typer.Exit(int(result.get("exit_code", 1)))
