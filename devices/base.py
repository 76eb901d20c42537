"""The one small interface every transport implements, its results and its errors.

A :class:`Device` can ``push`` a file, ``pull`` a file, ``exec`` a program with a timeout, say
what it is (``info``) and ``close``. It never knows what the files mean (design card: the devices
room never knows what a ``.pte`` is).

Failures are :class:`DeviceError` subclasses that name the device and the stage (``connect``,
``push``, ``pull``, ``exec``, ``probe``) and keep whatever output the device produced:

* :class:`DeviceUnreachable` -- could not connect (transient: connects are retried, bounded);
* :class:`DeviceAuthError` -- authentication or host-key verification refused (never retried);
* :class:`DeviceTimeout` -- ``exec`` ran past its timeout; the partial output is in ``.result``;
* :class:`TransportDropped` -- the link died mid-operation; partial output is in ``.result``;
* :class:`NoSpaceError` -- the device's file system is full.

``exec`` is never retried: a retry could run a benchmark twice without saying so.
"""

from __future__ import annotations

import abc
import re
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from edgerun.core.errors import (  # noqa: F401  (the devices room's errors, re-exported)
    DeviceAuthError, DeviceError, DeviceTimeout, DeviceUnreachable, EdgerunError, ExecCancelled, NoSpaceError,
    TransportDropped,
)
from edgerun.core.text import sanitize_text
from edgerun.devices import workdir
from edgerun.devices.info import DeviceInfo, apply_wrapper_emulation  # noqa: F401  (re-exported)
from edgerun.devices.probe import parse_probe, probe_script
from edgerun.devices.workdir import removable  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.devices.spec import DeviceSpec

TAIL_BYTES = 4000


def _tail(data: bytes | str | None, n: int = TAIL_BYTES) -> str:
    if not data:
        return ""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return data[-n:]


# -------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ExecResult:
    """What one program run on a device returned.

    ``rc`` is the exit status; a program killed by a signal has ``signal`` set and ``rc`` is
    128 + signal (the shell convention). Over ssh/adb the signal is inferred from that
    convention, so a program that itself exits with 129..192 reads as signalled.
    """

    argv: tuple[str, ...]
    rc: int
    stdout: bytes
    stderr: bytes
    duration_s: float
    signal: int | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.signal is None

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def to_json(self) -> dict:
        return {"argv": list(self.argv), "rc": self.rc, "signal": self.signal,
                "duration_s": self.duration_s, "stdout_tail": _tail(self.stdout),
                "stderr_tail": _tail(self.stderr)}


# ------------------------------------------------------------------------------------ interface
class Device(abc.ABC):
    """One place programs run. Use as a context manager; every method names the device on error.

    Subclasses implement ``_exec``, ``push`` and ``pull`` (and may override ``push_many`` and
    ``_probe_raw``); ``exec`` adds the device's ``wrapper`` (e.g. ``qemu-aarch64 -cpu cortex-a76``)
    and ``env`` from the inventory. Connections open lazily, on first use.
    """

    transport: str = "?"
    default_work_dir: str | None = None  # a transport without a fixed one finds it on the device

    def __init__(self, spec: "DeviceSpec"):
        self.spec = spec
        self.name = spec.name
        self._closed = False
        self._info: DeviceInfo | None = None
        self._cancelled = threading.Event()

    # -- lifecycle
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True

    def cancel(self) -> None:
        """Stop what runs on this device, from any thread (Ctrl-C): a program in flight is killed
        (where the transport can: local/qemu by its process group, ssh/adb by its remote pid) and its
        ``exec`` raises :class:`ExecCancelled` with the partial output; later ``exec`` calls raise it
        at once. A cancelled device stays cancelled."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _check_open(self, method: str) -> None:
        if self._closed:
            raise DeviceError(f"{method}() called on a closed device", device=self.name, stage=method,
                              hint="Open a new device with resolve_device(); a closed one stays closed.")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.spec.uri}>"

    # -- properties
    @property
    def work_dir(self) -> str:
        """Where this device keeps edgerun's files (absolute path on the device)."""
        return self.spec.work_dir or self.default_work_dir

    @property
    def wrapper(self) -> list[str]:
        return list(self.spec.wrapper)

    # -- interface
    def exec(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
             cwd: str | None = None, wrap: bool = True,
             on_stdout: Callable[[bytes], None] | None = None) -> ExecResult:
        """Run ``argv`` on the device; return its status and output. Never retried.

        ``wrap=False`` runs a tool of the device itself (``mkdir``, ``sh``) without the device's
        wrapper; the default runs a target program (through ``qemu-aarch64`` where configured).
        Raises :class:`DeviceTimeout` (partial output kept) or :class:`TransportDropped`.

        ``on_stdout`` sees the program's stdout as it arrives: it is called in the thread running
        ``exec``, with each chunk of stdout bytes, in order, as it is read -- chunks are arbitrary
        splits (not lines, maybe mid-UTF-8 character), never empty. Concatenated they are exactly the
        stdout of the returned :class:`ExecResult` (or of the error's ``.result`` after a timeout,
        cancel or dropped link), which still holds all of it. local, qemu, ssh and adb stream; fake
        and serial cannot (their output comes whole when the program has ended) and call it once then.
        If ``on_stdout`` raises, the program is killed (as on a timeout) and the exception propagates
        out of ``exec`` unchanged; its output is not returned. Keep it quick: while it runs nothing
        is read, and a program that fills its pipe waits.
        """
        self._check_open("exec")
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"argv must be a non-empty list of str, got {argv!r}")
        if timeout is None or timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if on_stdout is not None and not callable(on_stdout):
            raise TypeError(f"on_stdout must be callable, got {on_stdout!r}")
        if self._cancelled.is_set():
            raise self._error(ExecCancelled, f"{argv[0]} not started: the run was cancelled", "exec")
        full = (self.wrapper if wrap else []) + list(argv)
        merged = {**self.spec.env, **(env or {})}
        return self._exec(full, timeout=float(timeout), env=merged, cwd=cwd, on_stdout=on_stdout)

    @abc.abstractmethod
    def _exec(self, argv: list[str], *, timeout: float, env: dict[str, str], cwd: str | None,
              on_stdout: Callable[[bytes], None] | None = None) -> ExecResult:
        """Run the already wrapped ``argv``; feed ``on_stdout`` as :meth:`exec` documents."""

    @abc.abstractmethod
    def push(self, local: str | Path, remote: str) -> None:
        """Copy a local file to ``remote`` (absolute), atomically, keeping the executable bit."""

    def push_many(self, pairs: Sequence[tuple[str | Path, str]]) -> None:
        """Push several ``(local, remote)`` files; transports with a per-command cost batch them."""
        for local, remote in pairs:
            self.push(local, remote)

    @abc.abstractmethod
    def pull(self, remote: str, local: str | Path) -> None:
        """Copy ``remote`` to the local path; a partial copy is kept as ``LOCAL.part``."""

    def info(self) -> DeviceInfo:
        """Probe the device once (arch, CPU, memory, OS, governor, temperature, free space)."""
        self._check_open("info")
        if self._info is None:
            raw = self._probe_raw()
            info = parse_probe(raw, transport=self.transport)
            self._info = apply_wrapper_emulation(info, self.wrapper)
        return self._info

    def _probe_raw(self) -> str:
        """Run the probe script with the device's own shell; subclasses may override."""
        res = self.exec(["sh", "-c", probe_script(self.work_dir)], timeout=self.spec.probe_timeout,
                        wrap=False)
        if res.rc != 0:
            raise DeviceError(f"probe script exited with {res.rc}", device=self.name, stage="probe",
                              result=res, hint="The device needs a POSIX sh; see stderr_tail.")
        return res.stdout_text

    # -- file-system helpers (sync_files builds on them; the defaults run sh on the device)
    def prepare_work_dir(self, *, timeout: float = 60.0) -> str:
        """Create the work directory (0700, with edgerun's marker) if absent and check it is private:
        owned by the device's user, not writable by group or others. Returns it; ``DeviceError`` if not."""
        wd = self.work_dir
        res = self.exec(["sh", "-c", workdir.verify_script(wd)], timeout=timeout, wrap=False)
        if res.rc != 0:
            why = workdir.reason(res.stderr_text)
            raise self._error(DeviceError, f"work_dir {wd} {why or 'cannot be used (exit ' + str(res.rc) + ')'}",
                              "push", result=res,
                              hint="Point work_dir at a directory only you can write (edgerun creates a missing "
                                   "one with mode 0700), or fix its owner/mode.")
        return wd

    def file_digests(self, paths: Sequence[str], *, timeout: float = 60.0) -> tuple[str, dict[str, str]]:
        """What is at ``paths`` on the device: ``(method, {path: digest})`` for the regular files.

        ``method`` is ``"sha256"`` (the device has ``sha256sum``; digest = hex sha256) or
        ``"size+cksum"`` (digest = ``"SIZE CRC"`` of POSIX ``cksum``; see :func:`~edgerun.devices.sync.posix_cksum`).
        """
        script = ('if command -v sha256sum >/dev/null 2>&1; then m=sha256; else m=size+cksum; fi; echo "@@method $m"; '
                  'i=0; for f in "$@"; do i=$((i+1)); [ -f "$f" ] || continue; '
                  'if [ $m = sha256 ]; then h=$(sha256sum < "$f") || continue; '
                  'else h=$(cksum < "$f") || continue; fi; echo "$i $h"; done; exit 0')
        res = self.exec(["sh", "-c", script, "sh", *paths], timeout=timeout, wrap=False)
        if res.rc != 0:
            raise self._error(DeviceError, f"cannot check files on the device (exit {res.rc})", "push", result=res)
        method, found = "size+cksum", {}
        for line in res.stdout_text.splitlines():
            if line.startswith("@@method "):
                method = line.split(None, 1)[1].strip()
                continue
            idx, _, rest = line.partition(" ")
            if not idx.isdigit() or not 0 < int(idx) <= len(paths):
                continue
            words = rest.split()
            if method == "sha256" and words:
                found[paths[int(idx) - 1]] = words[0].lower()
            elif len(words) >= 2:  # cksum prints "CRC SIZE"
                found[paths[int(idx) - 1]] = f"{words[1]} {words[0]}"
        return method, found

    def link_files(self, dest: str, links: Mapping[str, str], *, timeout: float = 60.0) -> None:
        """Make directory ``dest`` hold symlinks ``NAME -> target`` (replacing old ones)."""
        cmds = [f"mkdir -p {shlex.quote(dest)}"] + [
            f"ln -sfn {shlex.quote(target)} {shlex.quote(dest + '/' + name)}" for name, target in links.items()]
        res = self.exec(["sh", "-c", " && ".join(cmds)], timeout=timeout, wrap=False)
        if res.rc != 0:
            raise self._error(DeviceError, f"cannot lay out files in {dest}", "push", result=res)

    # -- helpers for subclasses
    def _error(self, cls: type[DeviceError], message: str, stage: str, *, hint: str | None = None,
               result: ExecResult | None = None) -> DeviceError:
        """A ``cls`` naming this device. Device text in ``message``/``hint`` is sanitised (no terminal
        escapes reach the user's terminal); ``result`` keeps the raw bytes."""
        return cls(sanitize_text(message), device=sanitize_text(self.name), stage=stage,
                   hint=sanitize_text(hint) if hint else None, result=result)


# ------------------------------------------------------ the shell script run on ssh/adb devices
PID_MARK = b"@@edgerun:pid="
RC_MARK = b"\n@@edgerun:rc="


def remote_exec_script(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> str:
    """A POSIX sh command line that runs ``argv`` and reports its pid and exit status on stderr.

    Every argument is quoted (``shlex``), so nothing in argv, env or cwd reaches a shell as code.
    The pid line comes first (so a timed-out program can be killed remotely); the status line
    comes last -- its absence means the transport died before the program finished.
    """
    for key in env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"invalid environment variable name {key!r}")
    inner = "printf '@@edgerun:pid=%s\\n' \"$$\" >&2; exec \"$@\""
    cmd = ["sh", "-c", inner, "sh"]
    if env:
        cmd += ["env"] + [f"{k}={v}" for k, v in env.items()]
    cmd += list(argv)
    prefix = f"cd {shlex.quote(cwd)} || exit 126; " if cwd else ""
    # fd 3 keeps the real stderr for the program; the shell's own job notices ("Segmentation
    # fault") go to /dev/null, so the program's stderr arrives exactly as it wrote it.
    return (prefix + "exec 3>&2; { " + shlex.join(cmd) + ' 2>&3 3>&- & p=$!; wait "$p"; r=$?; } 2>/dev/null; '
            "printf '\\n@@edgerun:rc=%s\\n' \"$r\" >&2")


@dataclass
class RemoteStatus:
    stderr: bytes
    rc: int | None  # None: the status line never came (transport died / killed)
    pid: int | None


def parse_remote_stderr(stderr: bytes) -> RemoteStatus:
    """Strip the pid/status lines added by :func:`remote_exec_script` from stderr."""
    pid = None
    if stderr.startswith(PID_MARK):
        end = stderr.find(b"\n")
        if end > 0:
            try:
                pid = int(stderr[len(PID_MARK):end])
            except ValueError:
                pid = None
            stderr = stderr[end + 1:]
    rc = None
    idx = stderr.rfind(RC_MARK)
    if idx >= 0:
        tail = stderr[idx + len(RC_MARK):].strip()
        if tail.isdigit():
            rc = int(tail)
            stderr = stderr[:idx]
    return RemoteStatus(stderr=stderr, rc=rc, pid=pid)


def split_signal(rc: int) -> tuple[int, int | None]:
    """Shell convention: status 129..192 is death by signal (status - 128)."""
    if 128 < rc <= 128 + 64:
        return rc, rc - 128
    return rc, None

