"""The one error tree every edgerun room raises from, and the one exit-code table.

The CLI turns any :class:`EdgerunError` into one clear paragraph and its ``exit_code``; anything
else is a bug and exits :data:`ExitCode.INTERNAL`. The README's exit-code table is
:func:`exit_code_table` (a test keeps them equal), so a new family of failures is added here once.

Rooms may subclass these (``InventoryError(UsageError)``) but never invent a code: every class's
``exit_code`` is a member of :class:`ExitCode`.
"""

from __future__ import annotations

import enum
from typing import Any


class ExitCode(enum.IntEnum):
    """What ``edgerun`` exits with; distinct per family so scripts can tell failures apart."""

    OK = 0
    FAILED = 1
    USAGE = 2
    EXPORT = 3
    VERIFICATION = 4
    BUNDLE = 5
    ANALYSIS = 6
    STORE = 7
    DEVICE = 8
    PREFLIGHT = 9
    RUNNER_LOAD = 10
    RUNNER_INPUT = 11
    RUNNER_EXECUTE = 12
    RUNNER_OUTPUT = 13
    RUNNER_DIED = 14
    DEVICE_RUN = 15
    ACCURACY = 16
    ENVIRONMENT = 17
    INTERNAL = 70
    INTERRUPTED = 130


#: One line per code (or run of codes) as the README shows it. ``FAILED`` (1) is not listed: no
#: command exits with it on purpose.
EXIT_MEANINGS: tuple[tuple[tuple[ExitCode, ...], str], ...] = (
    ((ExitCode.USAGE,), "a wrong call: unknown model/target/scheme/device, illegal combination, bad option"),
    ((ExitCode.EXPORT,), "export failed (the stage is named: load model, export, quantize, lower, write)"),
    ((ExitCode.VERIFICATION,), "the program failed verification against eager PyTorch (artifact kept, marked `failed`)"),
    ((ExitCode.BUNDLE,), "a runtime bundle is missing, damaged or could not be built"),
    ((ExitCode.ANALYSIS,), "analysis failed (no timed iterations, unreadable ETDump, outputs that cannot be compared)"),
    ((ExitCode.STORE,), "the results store: unknown run id, a store from a newer edgerun, locked or damaged (a "
                        "finished run's record is then kept in its run directory for `edgerun runs import`)"),
    ((ExitCode.DEVICE,), "a device failed: unreachable, authentication, host key, timeout, dropped link, no space"),
    ((ExitCode.PREFLIGHT,), "pre-flight refused: the artifact cannot be read (not an artifact, a newer or foreign "
                            "manifest schema), or the bundle lacks an operator or backend the program needs, or "
                            "versions differ"),
    ((ExitCode.RUNNER_LOAD, ExitCode.RUNNER_INPUT, ExitCode.RUNNER_EXECUTE, ExitCode.RUNNER_OUTPUT,
      ExitCode.RUNNER_DIED),
     "a local run of the native runner failed: 10 load, 11 input, 12 execute, 13 output, 14 it died without "
     "saying why (signal, timeout); see `runtime/native/PROTOCOL.md`"),
    ((ExitCode.DEVICE_RUN,), "a run on a device failed (its run directory keeps what was produced)"),
    ((ExitCode.ACCURACY,), "the program ran, but its outputs on the device miss the artifact's accuracy thresholds "
                           "(the run is stored and marked; `compare` counts it as an accuracy regression)"),
    ((ExitCode.ENVIRONMENT,), "this machine cannot do it: `EDGERUN_HOME`, the results store or an output path is "
                              "read-only, full or not a directory (the same code from every command)"),
    ((ExitCode.INTERNAL,), "an internal error (a bug: please report it with `--debug` output)"),
    ((ExitCode.INTERRUPTED,), "interrupted (Ctrl-C)"),
)


def exit_code_table() -> str:
    """The README's exit-code table, as markdown."""
    rows = ["| exit | meaning |", "| --- | --- |"]
    for codes, meaning in EXIT_MEANINGS:
        label = str(int(codes[0])) if len(codes) == 1 else f"{int(codes[0])}–{int(codes[-1])}"
        rows.append(f"| {label} | {meaning} |")
    return "\n".join(rows)


def _tail(data: bytes | str | None, n: int = 4000) -> str:
    if not data:
        return ""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return data[-n:]


class EdgerunError(Exception):
    """A failure the user can act on.

    ``stage`` names the step that failed (``load model``, ``export``, ``quantize``, ``lower``,
    ``verify``, ``deploy``, ``run`` ...), ``hint`` says how to fix the call, and ``exit_code``
    is what the CLI exits with (an :class:`ExitCode`).
    """

    exit_code: int = ExitCode.FAILED
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
            "exit_code": int(self.exit_code),
        }


class UsageError(EdgerunError):
    """The call itself is wrong: unknown name, illegal combination, bad option value."""

    exit_code = ExitCode.USAGE
    default_stage = "arguments"


# ----------------------------------------------------------------------------------- export
class ExportError(EdgerunError):
    """A model could not be turned into a verified program."""

    exit_code = ExitCode.EXPORT
    default_stage = "export"


class VerificationFailed(ExportError):
    """The program runs but its outputs disagree with eager PyTorch beyond the scheme's thresholds.

    The artifact is still written (marked ``failed`` in its manifest) so it can be inspected.
    """

    exit_code = ExitCode.VERIFICATION
    default_stage = "verify"


# ---------------------------------------------------------------------------------- artifact
class ArtifactError(EdgerunError):
    """An artifact directory cannot be used: no manifest, unreadable, a newer or foreign schema,
    a path that leaves the artifact, a file that is missing or does not match its hash.

    The same class and code from every command that reads an artifact (``run``, ``deploy``,
    ``profile``, ``inspect``, ``bench``).
    """

    exit_code = ExitCode.PREFLIGHT
    default_stage = "read artifact"


# ----------------------------------------------------------------------------------- runtime
class BundleError(EdgerunError):
    """A runtime bundle is missing, damaged, or could not be built."""

    exit_code = ExitCode.BUNDLE
    default_stage = "bundle"


class PreflightError(EdgerunError):
    """The bundle cannot run the program (missing operator/backend, version or arch mismatch)."""

    exit_code = ExitCode.PREFLIGHT
    default_stage = "pre-flight"


class AnalysisError(EdgerunError):
    """What a run produced cannot be analysed (no timed iterations, unreadable ETDump, outputs that
    cannot be compared with the reference)."""

    exit_code = ExitCode.ANALYSIS
    default_stage = "analyse"


RUNNER_EXIT_STAGES = {ExitCode.USAGE: "usage", ExitCode.RUNNER_LOAD: "load", ExitCode.RUNNER_INPUT: "input",
                      ExitCode.RUNNER_EXECUTE: "execute", ExitCode.RUNNER_OUTPUT: "output"}


class RunnerError(EdgerunError):
    """The runner failed or said something that is not the protocol.

    ``exit_code`` is the runner's own (10 load, 11 input, 12 execute, 13 output, 2 usage) when it
    reported an error, 14 when it died without one (signal, crash, timeout, garbled output).
    ``result`` is the parsed runner output, when there is one.
    """

    exit_code = ExitCode.RUNNER_DIED
    default_stage = "run"

    def __init__(self, message: str, *, stage: str | None = None, hint: str | None = None,
                 result: Any = None, exit_code: int | None = None):
        super().__init__(message, stage=stage, hint=hint)
        self.result = result
        if exit_code is not None:
            self.exit_code = ExitCode(exit_code)

    def to_json(self) -> dict:
        out = super().to_json()
        if self.result is not None and hasattr(self.result, "failure_json"):
            out["runner"] = self.result.failure_json()
        return out


class DeviceRunError(EdgerunError):
    """A run on a device failed; ``run_dir`` keeps what was produced before it did.

    ``exit_code`` says what failed: 15 (the run itself: the runner failed on the device) by default;
    the cause's own code when it was something else -- 8 the device (unreachable, auth, no space,
    dropped link, timeout), 5 the bundle, 9 pre-flight, 17 this machine.
    """

    exit_code = ExitCode.DEVICE_RUN
    default_stage = "run"

    def __init__(self, message: str, *, stage: str, run_dir: Any = None, hint: str | None = None,
                 device: str | None = None, exit_code: int | None = None):
        where = f" Partial results are kept in {run_dir}." if run_dir else ""
        super().__init__(message + where, stage=stage, hint=hint)
        self.run_dir = run_dir
        self.device = device
        if exit_code is not None:
            self.exit_code = ExitCode(exit_code)

    def to_json(self) -> dict:
        out = super().to_json()
        out["run_dir"] = str(self.run_dir) if self.run_dir else None
        out["device"] = self.device
        return out


class AccuracyFailed(EdgerunError):
    """A run finished, but the device's outputs miss the artifact's accuracy thresholds: the device
    computes wrong results (an emulated CPU with broken kernels, a miscompiled runtime ...). The record
    is kept (marked ``accuracy.passed = False``); ``run_id`` names it."""

    exit_code = ExitCode.ACCURACY
    default_stage = "accuracy"

    def __init__(self, message: str, *, run_id: str | None = None, device: str | None = None,
                 hint: str | None = None, stage: str | None = None):
        super().__init__(message, stage=stage, hint=hint)
        self.run_id = run_id
        self.device = device

    def to_json(self) -> dict:
        out = super().to_json()
        out["run_id"] = self.run_id
        out["device"] = self.device
        return out


class RunInterrupted(DeviceRunError):
    """The user interrupted a run on a device (Ctrl-C): its program was killed, its run directory is
    marked ``interrupted`` and nothing of it was stored."""

    exit_code = ExitCode.INTERRUPTED
    default_stage = "interrupted"


class EnvironmentProblem(EdgerunError):
    """This machine cannot do what was asked, through no fault of the call or a device: ``EDGERUN_HOME``
    or an output path is read-only, full, or not a directory."""

    exit_code = ExitCode.ENVIRONMENT
    default_stage = "environment"


def environment_problem(exc: OSError, what: str, *, stage: str = "environment") -> EnvironmentProblem:
    """An :class:`EnvironmentProblem` for an ``OSError`` met while ``what`` (e.g. "creating the run
    directory /x"), with the hint that fits its errno."""
    import errno

    reason = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
              errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
              errno.ENOTDIR: "a path component is not a directory"}.get(exc.errno, exc.strerror or str(exc))
    hint = ("Free some space there, or point EDGERUN_HOME at a larger file system."
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
            "Make it writable, or point EDGERUN_HOME at a directory you can write.")
    return EnvironmentProblem(f"{what}: {reason}.", stage=stage, hint=hint)


#: errnos that mean "this machine's file system refuses": exit 17 whichever room met them.
MACHINE_ERRNOS = frozenset({"ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOTDIR"})


def machine_refusal(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain of causes that says this machine's file system refused a write:
    an ``OSError`` (read-only, full, quota, permission, a path component that is a file) or an SQLite
    error of the same kind (read-only database, disk full, a file it cannot open or create: SQLite's
    answer for a directory it may not write). None when there is none."""
    import errno
    import sqlite3

    codes = {getattr(errno, name) for name in MACHINE_ERRNOS if hasattr(errno, name)}
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 32:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in codes:
            return cur
        if isinstance(cur, sqlite3.Error):
            name = getattr(cur, "sqlite_errorname", "") or ""
            low = str(cur).lower()
            if name.startswith(("SQLITE_READONLY", "SQLITE_FULL", "SQLITE_CANTOPEN")) or "readonly" in low \
                    or "read-only" in low or "database or disk is full" in low or "unable to open database" in low:
                return cur
        cur = cur.__cause__ or cur.__context__
    return None


class _StoreExitCode:
    """``StoreError.exit_code``: 7 (the store itself: unknown run, locked, damaged, newer schema) unless
    the store failed because this machine's file system refused it (:func:`machine_refusal`): then 17,
    the code every other room gives a read-only or full ``EDGERUN_HOME``. One rule, whichever command
    met it first. Read on the class it is :data:`ExitCode.STORE`; an explicit assignment wins."""

    def __get__(self, obj, owner=None):
        if obj is None:
            return ExitCode.STORE
        if "_exit_code" in obj.__dict__:
            return obj.__dict__["_exit_code"]
        return ExitCode.ENVIRONMENT if machine_refusal(obj) is not None else ExitCode.STORE

    def __set__(self, obj, value) -> None:
        obj.__dict__["_exit_code"] = ExitCode(value)


# ------------------------------------------------------------------------------------ store
class StoreError(EdgerunError):
    """The results store cannot be used (unknown run id, a store from a newer edgerun, corrupt).

    When the cause is this machine's file system (the store's directory cannot be made, the file is
    read-only, the disk is full) the exit code is 17, like every other write under ``EDGERUN_HOME``."""

    exit_code = _StoreExitCode()  # type: ignore[assignment]
    default_stage = "results store"


class UnknownRun(StoreError):
    """No run with that id (or prefix) in the store."""


class StoreLocked(StoreError):
    """Another process holds the store: a passing state (the record is kept and imported later)."""


# ---------------------------------------------------------------------------------- devices
class DeviceError(EdgerunError):
    """A device could not do what was asked. Names the device and the stage; keeps the output
    (``result``: the device's exec result, with ``stdout``/``stderr`` bytes, when there is one)."""

    exit_code = ExitCode.DEVICE
    default_stage = "device"

    def __init__(self, message: str, *, device: str, stage: str, hint: str | None = None, result: Any = None):
        super().__init__(f"device '{device}': {message}", stage=stage, hint=hint)
        self.device = device
        self.result = result

    @property
    def stdout(self) -> bytes:
        return self.result.stdout if self.result is not None else b""

    @property
    def stderr(self) -> bytes:
        return self.result.stderr if self.result is not None else b""

    def to_json(self) -> dict:
        out = super().to_json()
        out["device"] = self.device
        if self.result is not None:
            out["stdout_tail"] = _tail(self.result.stdout)
            out["stderr_tail"] = _tail(self.result.stderr)
        return out


class DeviceUnreachable(DeviceError):
    """Connection refused / timed out / name not resolved. Transient: connects retry this."""


class DeviceAuthError(DeviceError):
    """Authentication failed or the host key is unknown or changed. Never retried."""


class DeviceTimeout(DeviceError):
    """The program ran past its timeout and was killed; ``result`` holds its partial output."""


class TransportDropped(DeviceError):
    """The connection died during an operation; ``result`` holds whatever arrived before."""


class NoSpaceError(DeviceError):
    """The device's file system has no space left for what was pushed."""


class ExecCancelled(DeviceError):
    """``exec`` was cancelled (``Device.cancel()``, on Ctrl-C): the program was killed; ``result``
    holds its partial output."""

    exit_code = ExitCode.INTERRUPTED


def all_error_classes() -> list[type[EdgerunError]]:
    """Every class of the tree defined here (for the test that keeps codes in :class:`ExitCode`)."""
    out, todo = [], [EdgerunError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out
