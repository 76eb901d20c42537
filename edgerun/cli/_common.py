"""What every command shares: ``--json``/``--debug``, one JSON object on stdout, clean errors.

Each command builds its result as a plain dict inside a ``work`` callable and hands it to
:func:`execute`, which owns the conventions of the CLI:

* with ``--json`` exactly one JSON object is printed on stdout, success or failure; while
  ``work`` runs, file descriptor 1 is pointed at stderr so that nothing a library prints (even
  from C++) can corrupt it;
* an :class:`~edgerun.core.errors.EdgerunError` becomes one paragraph on stderr and its exit code;
  ``--debug`` adds the traceback; anything else is reported as an internal error (exit 70).
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

from edgerun.core.errors import EdgerunError

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print exactly one JSON object on stdout; logs go to stderr.")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="On error, also print the traceback.")]

err_console = Console(stderr=True)
INTERNAL_ERROR_EXIT = 70

log = logging.getLogger("edgerun")


def _setup_logging(debug: bool) -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
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
    """NaN/inf are not JSON: they become null (a missing number, not a fake one)."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
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
            err_console.print(f"[bold red]error:[/] {exc.paragraph()}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
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
            err_console.print(f"[bold red]{message}[/] (run again with --debug for the traceback)",
                              highlight=False, soft_wrap=True)
        raise typer.Exit(INTERNAL_ERROR_EXIT) from None

    result.setdefault("ok", True)
    if json_out:
        print(dump_json(result), flush=True)
    elif human is not None:
        human(result)
    else:
        Console().print_json(dump_json(result))
    if result.get("ok") is False:
        raise typer.Exit(int(result.get("exit_code", 1)))
