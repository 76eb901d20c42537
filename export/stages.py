"""The stage runner both exports share (models: :mod:`.pipeline`, LLMs: :mod:`.llm.export`).

ExecuTorch's ``export/stages.py`` habit: a :class:`Stage` declares what it needs and what it makes
(names of attributes of the export's work state); a :class:`Plan` is checked when it is built — before
anything heavy runs — so a stage that needs what no earlier stage makes is a programming error found
at once, not after a 20-minute quantization. :class:`Progress` carries the caller's callbacks:
``on_stage(name)`` as a stage starts, ``on_stage_done(name, seconds)`` when it ends, ``on_warning(text)``
as soon as a warning is known, and ``on_progress(name, fraction, detail)`` as a long stage gets on
(quantizing layer 12 of 30, lowering partition 40 of 300, verification window 3 of 6); it keeps the
stage times and the warnings for the manifest, and turns an unexpected exception into an
:class:`ExportError` naming the stage. Code deep inside a stage reports its fraction with
:func:`report_progress`, which finds the running stage through a context variable (no callback has to
be threaded through recipe handlers or ExecuTorch).

:func:`artifact_dir` is the artifact's directory handling: assembled in a temporary sibling, renamed
into place at the end, removed on any failure -- an exception, Ctrl-C (SIGINT) or a SIGTERM/SIGHUP,
which it turns into :class:`Terminated` while the directory is open; a directory that is not an edgerun
artifact is never overwritten, and what an export killed outright (SIGKILL) left behind is removed by
the next export of the same directory.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from edgerun.core.artifact import MANIFEST_NAME
from edgerun.core.errors import EdgerunError

from .errors import ExportError

log = logging.getLogger("edgerun.export")

OnStage = Callable[[str], None]
OnStageDone = Callable[[str, float], None]
OnWarning = Callable[[str], None]
OnProgress = Callable[[str, float, "str | None"], None]

#: the stage running in this context: (its Progress, its name)
_CURRENT: contextvars.ContextVar[tuple["Progress", str] | None] = contextvars.ContextVar("edgerun_export_stage",
                                                                                       default=None)


def report_progress(done: float, total: float, detail: str | None = None) -> None:
    """Report that the running stage has done ``done`` of ``total`` units (layers, partitions, windows);
    ``detail`` says what (``"layer 12/30"``). Outside a stage, or with ``total <= 0``, it does nothing."""
    current = _CURRENT.get()
    if current is None or not total > 0:
        return
    progress, name = current
    progress.fraction(name, min(1.0, max(0.0, done / total)), detail)


# ----------------------------------------------------------------------------------- progress
class Progress:
    """The callbacks of one export, its stage times and its warnings."""

    def __init__(self, on_stage: OnStage | None = None, on_stage_done: OnStageDone | None = None,
                 on_warning: OnWarning | None = None, on_progress: OnProgress | None = None):
        self.on_stage, self.on_stage_done, self.on_warning = on_stage, on_stage_done, on_warning
        self.on_progress = on_progress
        self.times: dict[str, float] = {}
        self.warnings: list[str] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_stage:
            self.on_stage(name)
        log.debug("stage: %s", name)
        started = time.monotonic()
        token = _CURRENT.set((self, name))
        try:
            yield
        except EdgerunError:
            raise
        except Exception as exc:
            raise ExportError(f"{type(exc).__name__}: {short(exc)}", stage=name, hint=hint_for(name, exc)) from exc
        finally:
            _CURRENT.reset(token)
        seconds = time.monotonic() - started
        self.times[name] = round(self.times.get(name, 0.0) + seconds, 3)
        if self.on_stage_done:
            self.on_stage_done(name, seconds)

    def fraction(self, name: str, fraction: float, detail: str | None = None) -> None:
        """Stage ``name`` is ``fraction`` (0..1) done; see :func:`report_progress`."""
        if self.on_progress:
            self.on_progress(name, fraction, detail)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        log.debug("warning: %s", text)
        if self.on_warning:
            self.on_warning(text)


def short(exc: BaseException, limit: int = 600) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def hint_for(stage: str, exc: BaseException) -> str | None:
    text = str(exc)
    if stage == "export" and ("data-dependent" in text or "Could not guard" in text or "GuardOnDataDependent" in text
                              or "control flow" in text.lower()):
        return ("torch.export needs a graph without Python control flow that depends on tensor values: "
                "use torch.cond / torch.where, or move the branch out of forward().")
    if stage == "export":
        return "torch.export could not trace the model; run with --debug for the full trace."
    if stage == "quantize":
        return "Try another scheme (e.g. fp32) to see whether quantization is the problem."
    if stage == "lower":
        return "Try --target portable to lower without a delegate and see which operator is the problem."
    return None


# ---------------------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: ``run(work)`` reads the attributes named in ``needs`` and sets those in ``makes``.
    ``name`` is what progress shows; ``skip(work) -> bool`` (optional) leaves the stage out at run time."""

    name: str
    run: Callable[[Any], None]
    needs: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()
    skip: Callable[[Any], bool] | None = None


class Plan:
    """Stages in order, checked on construction against what the caller gives (``given``)."""

    def __init__(self, stages: Iterable[Stage], *, given: Iterable[str]):
        self.stages = tuple(stages)
        self.given = frozenset(given)
        have = set(self.given)
        for st in self.stages:
            missing = [n for n in st.needs if n not in have]
            if missing:
                raise ExportError(f"export plan: stage {st.name!r} needs {', '.join(missing)}, which neither the "
                                  f"caller nor an earlier stage provides (stages: "
                                  f"{' -> '.join(s.name for s in self.stages)}).", stage="resolve")
            have.update(st.makes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def run(self, work: Any, progress: Progress) -> None:
        for st in self.stages:
            if st.skip is not None and st.skip(work):
                continue
            with progress.stage(st.name):
                st.run(work)
            unset = [n for n in st.makes if not hasattr(work, n)]
            if unset:
                raise ExportError(f"export stage {st.name!r} did not make {', '.join(unset)}.", stage=st.name)


class Work:
    """The export's work state: a namespace that stages fill in (see :class:`Stage`)."""

    def __init__(self, **given: Any):
        self.__dict__.update(given)


# ------------------------------------------------------------------------------ the directory
def prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Check we may write ``out_dir``; return a fresh temporary sibling to assemble into."""
    out_dir = out_dir.expanduser()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"output path {out_dir} exists and is not a directory.", stage="write")
        is_artifact = (out_dir / MANIFEST_NAME).is_file()
        if any(out_dir.iterdir()) and not is_artifact:
            raise ExportError(f"output directory {out_dir} is not empty and is not an edgerun artifact; "
                              "refusing to overwrite it.", stage="write", hint="Choose another -o directory.")
        if is_artifact and not overwrite:
            raise ExportError(f"output directory {out_dir} already holds an artifact.", stage="write",
                              hint="Pass --overwrite or choose another -o directory.")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(out_dir)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise ExportError(f"cannot write to output directory {out_dir}: {exc.strerror or exc}.", stage="write",
                          hint="Choose a writable -o directory.") from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_partials(out_dir: Path) -> list[Path]:
    """Remove what an export of ``out_dir`` killed mid-way left beside it: ``.NAME.partial-PID-*`` and
    ``.NAME.old-PID`` directories whose process is gone. A live export's directories are left alone."""
    removed = []
    for p in out_dir.parent.glob(f".{out_dir.name}.*"):
        rest = p.name[len(out_dir.name) + 2:]
        kind, _, tail = rest.partition("-")
        pid_text = tail.split("-", 1)[0]
        if kind not in ("partial", "old") or not pid_text.isdigit() or not p.is_dir() or p.is_symlink():
            continue
        if not _pid_alive(int(pid_text)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        log.info("removed %d directory(ies) left by an interrupted export of %s", len(removed), out_dir)
    return removed


def publish(tmp: Path, out_dir: Path) -> None:
    """Swap the finished artifact into place (rename is atomic within a filesystem)."""
    old = None
    try:
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
        tmp.rename(out_dir)
    except OSError as exc:  # a mount point, a busy or foreign file system: say so, not "internal error"
        if old is not None and old.exists() and not out_dir.exists():
            with contextlib.suppress(OSError):
                old.rename(out_dir)
        raise ExportError(f"cannot put the finished artifact in place at {out_dir}: {exc.strerror or exc} "
                          f"(renaming {tmp.name} onto it failed).", stage="write",
                          hint="Export into a directory inside a writable file system (not onto a mount "
                               "point itself), e.g. -o DIR/model.") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM or SIGHUP while an artifact was being assembled. An interruption like
    Ctrl-C (a ``KeyboardInterrupt``: no ``except Exception`` on the way up swallows it, every ``finally``
    -- the removal of the temporary directory first -- runs, and the CLI exits 130 "interrupted")."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (SIGINT
    already raises ``KeyboardInterrupt``); the previous handlers are restored afterwards. A handler that
    is not Python's default (a caller's own) is left alone; so is everything off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            saved[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def artifact_dir(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary directory to assemble the artifact in; published at ``out_dir`` when the block ends
    without an exception, removed otherwise -- also on Ctrl-C, SIGTERM and SIGHUP (see
    :class:`Terminated`)."""
    with _terminate_as_exception():
        tmp = prepare_out_dir(out_dir, overwrite)
        try:
            yield tmp
            publish(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
