"""``local://``: this machine. Programs run as child processes; files are copied."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from edgerun.core.paths import edgerun_home
from edgerun.devices import workdir
from edgerun.devices._client import _pump
from edgerun.devices.base import Device, DeviceError, DeviceTimeout, ExecCancelled, ExecResult, NoSpaceError
from edgerun.devices.spec import DeviceSpec, register_transport

log = logging.getLogger("edgerun.devices")


@register_transport
@dataclass(frozen=True)
class LocalSpec(DeviceSpec):
    """``local://``: this machine; only the shared options."""

    transport: ClassVar[str] = "local"
    device_class: ClassVar[str] = "edgerun.devices.local:LocalDevice"
    about: ClassVar[str] = "local://"


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy via ``DST.part`` + rename, keeping the executable bit. ``DST.part`` stays on failure."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    shutil.copyfile(src, part)
    os.chmod(part, 0o755 if os.access(src, os.X_OK) else 0o644)
    os.replace(part, dst)


class LocalDevice(Device):
    """The host itself. ``work_dir`` defaults to ``$EDGERUN_HOME/devices/local`` (shared by every
    local device: its blobs are content-addressed, so sharing is safe)."""

    transport = "local"

    def __init__(self, spec):
        super().__init__(spec)
        self._running: set[subprocess.Popen] = set()
        self._running_lock = threading.Lock()

    def cancel(self) -> None:
        super().cancel()
        with self._running_lock:
            running = list(self._running)
        for proc in running:  # each in its own session: the whole group, children included
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    @property
    def default_work_dir(self) -> str:  # type: ignore[override]
        return str(edgerun_home() / "devices" / self.transport)

    def _exec(self, argv, *, timeout, env, cwd, on_stdout=None) -> ExecResult:
        if cwd is not None and not os.path.isdir(cwd):
            raise self._error(DeviceError, f"working directory {cwd} does not exist", "exec",
                              hint="Push the files first (sync_files) or pass an existing cwd.")
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except FileNotFoundError as exc:  # the shell's convention, as remote devices report it
            return ExecResult(tuple(argv), 127, b"", f"edgerun: {argv[0]}: {exc.strerror}\n".encode(),
                              time.monotonic() - start)
        except PermissionError as exc:
            return ExecResult(tuple(argv), 126, b"", f"edgerun: {argv[0]}: {exc.strerror}\n".encode(),
                              time.monotonic() - start)
        with self._running_lock:
            self._running.add(proc)
        if self._cancelled.is_set():  # cancelled between the check in exec() and here
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        # both pipes read as the output arrives (on_stdout sees stdout then), as communicate() would
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        bufs = {out_fd: bytearray(), err_fd: bytearray()}
        sel = selectors.DefaultSelector()
        for stream in (proc.stdout, proc.stderr):
            sel.register(stream, selectors.EVENT_READ)
        hooks = {out_fd: on_stdout} if on_stdout is not None else None
        try:
            try:
                done = _pump(sel, bufs, proc, time.monotonic() + timeout, on_data=hooks)
            except Exception:  # on_stdout (or a read) raised: the program does not run on unwatched
                _kill_group(proc)
                raise
            if not done:
                _kill_group(proc)
                _pump(sel, bufs, proc, None, on_data=hooks)  # the rest, up to EOF, as communicate() did
                partial = ExecResult(tuple(argv), proc.returncode, bytes(bufs[out_fd]), bytes(bufs[err_fd]),
                                     time.monotonic() - start)
                raise self._error(DeviceTimeout, f"{argv[0]} still running after {timeout:g} s; killed",
                                  "exec", result=partial,
                                  hint="Raise the timeout, or run fewer iterations.") from None
        finally:
            sel.close()
            proc.stdout.close()
            proc.stderr.close()
            with self._running_lock:
                self._running.discard(proc)
        duration = time.monotonic() - start
        out, err = bytes(bufs[out_fd]), bytes(bufs[err_fd])
        rc = proc.returncode
        if self._cancelled.is_set():
            partial = ExecResult(tuple(argv), 128 - rc if rc < 0 else rc, out, err, duration,
                                 signal=-rc if rc < 0 else None)
            raise self._error(ExecCancelled, f"{argv[0]} was killed: the run was cancelled", "exec", result=partial)
        if rc < 0:
            return ExecResult(tuple(argv), 128 - rc, out, err, duration, signal=-rc)
        return ExecResult(tuple(argv), rc, out, err, duration)

    def push(self, local, remote) -> None:
        self._check_open("push")
        src = Path(local)
        if not src.is_file():
            raise self._error(DeviceError, f"cannot push {src}: no such file", "push")
        self._create_work_dir(remote)
        try:
            _copy_atomic(src, Path(remote))
        except OSError as exc:
            raise self._os_error(exc, "push", f"pushing {src} to {remote}") from exc

    def pull(self, remote, local) -> None:
        self._check_open("pull")
        src = Path(remote)
        if not src.is_file():
            raise self._error(DeviceError, f"cannot pull {remote}: no such file on the device", "pull")
        try:
            _copy_atomic(src, Path(local))
        except OSError as exc:
            raise self._os_error(exc, "pull", f"pulling {remote} to {local}") from exc

    def _os_error(self, exc: OSError, stage: str, what: str) -> DeviceError:
        if exc.errno == errno.ENOSPC:
            return self._error(NoSpaceError, f"{what}: no space left on device", stage,
                               hint="Free space on the device or point work_dir at a larger file system.")
        return self._error(DeviceError, f"{what}: {exc}", stage)

    def _create_work_dir(self, remote: str) -> None:
        """A push into the work dir creates it as edgerun's (0700, with the marker) when absent."""
        wd = Path(self.work_dir)
        if str(remote).startswith(str(wd).rstrip("/") + "/") and not os.path.lexists(wd):
            wd.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(wd, 0o700)
            except FileExistsError:
                return
            (wd / workdir.MARKER).touch()

    def close(self) -> None:
        if not self._closed and self.spec.cleanup:
            self._cleanup_work_dir()
        super().close()

    def _cleanup_work_dir(self) -> None:
        """Remove the work dir -- only a normalised one, not near the root, that edgerun created."""
        wd = self.work_dir
        if not workdir.removable(wd):
            log.warning("not removing work_dir %s: too close to the root, or not a normalised path", wd)
        elif not os.path.isfile(os.path.join(wd, workdir.MARKER)):
            if os.path.exists(wd):
                log.warning("not removing work_dir %s: edgerun did not create it (no %s in it)", wd, workdir.MARKER)
        else:
            shutil.rmtree(wd, ignore_errors=True)


def _kill_group(proc: subprocess.Popen, grace: float = 1.0) -> None:
    """TERM the process group, then KILL it if it does not leave within ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
