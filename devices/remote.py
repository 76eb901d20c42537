"""What ssh and adb devices share: a POSIX shell on the far side, reached through a client program.

:class:`RemoteShellDevice` owns the parts that must not drift between the two:

* ``connect`` -- bounded retries of transient failures (:class:`DeviceUnreachable`), never of
  authentication failures;
* ``exec`` -- every program runs under :func:`~edgerun.devices.base.remote_exec_script` (its pid
  first and its status last on stderr); on a timeout the remote process group is killed by that
  pid, and a missing status line is a :class:`TransportDropped` (the program is never re-run);
* the default work directory, found on the device (private to its user), and ``cleanup``
  (only a directory edgerun created: the marker file must be in it).

A transport supplies only its client's argv (:meth:`_client_argv`), one connection attempt
(:meth:`_open_once`), its own error classification (:meth:`_classify`) and its file transfer.
"""

from __future__ import annotations

import abc
import logging
import subprocess
import threading
import time

from edgerun.devices import workdir
from edgerun.devices._client import kill_script, run_client
from edgerun.devices.base import (Device, DeviceError, DeviceTimeout, DeviceUnreachable, ExecCancelled, ExecResult,
                                  TransportDropped, parse_remote_stderr, remote_exec_script, split_signal)

log = logging.getLogger("edgerun.devices")

TRANSFER_TIMEOUT = 600.0
# appended to edgerun's own device-side commands: their status on stderr, as for programs
RC_SUFFIX = "; r=$?; printf '\\n@@edgerun:rc=%s\\n' \"$r\" >&2"


class RemoteShellDevice(Device):
    """A device whose programs run through a client (``ssh``, ``adb``) and a POSIX sh on the device."""

    default_work_dir: str | None = None  # None: $HOME/.cache/edgerun on the device (or /tmp/edgerun-UID)

    def __init__(self, spec):
        super().__init__(spec)
        self._connected = False
        self._lock = threading.Lock()  # one connection, even when threads share the device
        self._found_work_dir: str | None = None

    # ------------------------------------------------------------------ what a transport supplies
    @property
    @abc.abstractmethod
    def _label(self) -> str:
        """How messages name the far side (``pi@pi5.lan:22``, ``adb device R58M1``)."""

    @abc.abstractmethod
    def _client_argv(self, script: str) -> list[str]:
        """The local command line that runs ``sh -c``-able ``script`` on the device."""

    @abc.abstractmethod
    def _open_once(self) -> DeviceError | None:
        """One connection attempt: ``None`` when connected, else the classified error."""

    @abc.abstractmethod
    def _classify(self, text: str, stage: str, result: ExecResult | None = None) -> DeviceError:
        """The client's error text -> the right :class:`DeviceError` subclass."""

    def _before_connect(self) -> bool:
        """Checks before the first attempt (client installed ...); True: already connected."""
        return False

    def _connect_failed(self) -> None:
        """Undo what a failed connect left behind."""

    def _close_transport(self) -> None:
        """Release the connection (the ssh master ...)."""

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        """Open the connection; retry transient failures (bounded), never auth failures."""
        self._check_open("connect")
        with self._lock:
            if not self._connected:
                self._connect()

    def _connect(self) -> None:
        if self._before_connect():
            self._connected = True
            return
        attempts = self.spec.connect_retries + 1
        for attempt in range(1, attempts + 1):
            err = self._open_once()
            if err is None:
                self._connected = True
                return
            if not isinstance(err, DeviceUnreachable) or attempt == attempts:
                self._connect_failed()
                raise err
            log.warning("%s (attempt %d/%d); retrying", err.message, attempt, attempts)
            time.sleep(0.5 * attempt)

    def close(self) -> None:
        if self._closed:
            return
        if self._connected:
            if self.spec.cleanup:
                self._cleanup_work_dir()
            self._close_transport()
        self._connected = False
        super().close()

    # ------------------------------------------------------------------ work directory
    @property
    def work_dir(self) -> str:
        if self.spec.work_dir:
            return self.spec.work_dir
        if self.default_work_dir:
            return self.default_work_dir
        if self._found_work_dir is None:
            self._found_work_dir = self._find_work_dir()
        return self._found_work_dir

    def _find_work_dir(self) -> str:
        res = self._exec(["sh", "-c", workdir.DEFAULT_WORK_DIR_SCRIPT], timeout=self.spec.probe_timeout,
                         env={}, cwd=None)
        text = res.stdout_text.strip()
        try:
            if res.rc != 0 or not text:
                raise ValueError(f"the device's sh said nothing (exit {res.rc})")
            return workdir.check_work_dir(text)
        except ValueError as exc:
            raise self._error(DeviceError, f"cannot choose a default work_dir: {exc}", "connect", result=res,
                              hint="Set work_dir in the inventory entry or the URI.") from None

    def _cleanup_work_dir(self) -> None:
        wd = self.spec.work_dir or self.default_work_dir or self._found_work_dir
        if not wd:
            return  # never looked for: nothing was put there
        if not workdir.removable(wd):
            log.warning("not removing work_dir %s on %s: too close to the root", wd, self.name)
            return
        try:
            res = self._exec(["sh", "-c", workdir.cleanup_script(wd)], timeout=60, env={}, cwd=None)
        except DeviceError as exc:
            log.warning("cleanup of %s on %s failed: %s", wd, self.name, exc.message)
            return
        if res.rc == 3:
            log.warning("not removing work_dir %s on %s: edgerun did not create it (no %s in it)", wd, self.name,
                        workdir.MARKER)
        elif res.rc != 0:
            log.warning("cleanup of %s on %s exited %d", wd, self.name, res.rc)

    def _ensure_script(self, remote: str) -> str:
        """sh creating the work dir (with its marker) first when ``remote`` lies inside it."""
        wd = self.work_dir.rstrip("/")
        return workdir.create_script(wd) + "; " if remote.startswith(wd + "/") else ""

    # ------------------------------------------------------------------ commands
    def _remote(self, script: str, *, timeout: float, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                on_timeout=None, cancel=None, on_stdout=None) -> tuple[subprocess.Popen, bytes, bytes, bool]:
        """Run ``script`` with the device's sh (see :func:`~edgerun.devices._client.run_client`)."""
        self.connect()
        return run_client(self._client_argv(script), timeout=timeout, stdin=stdin, stdout=stdout,
                          on_timeout=on_timeout, cancel=cancel, on_stdout=on_stdout)

    def _exec(self, argv, *, timeout, env, cwd, on_stdout=None) -> ExecResult:
        start = time.monotonic()

        def kill_remote(err_so_far: bytes) -> None:
            pid = parse_remote_stderr(err_so_far).pid
            if pid:
                self._kill_remote(pid)

        proc, out, err, timed_out = self._remote(remote_exec_script(argv, env, cwd), timeout=timeout,
                                                 on_timeout=kill_remote, cancel=self._cancelled,
                                                 on_stdout=on_stdout)  # streamed: the client's stdout is the program's
        duration = time.monotonic() - start
        status = parse_remote_stderr(err)
        if timed_out and self._cancelled.is_set():
            partial = ExecResult(tuple(argv), -1, out, status.stderr, duration)
            raise self._error(ExecCancelled, f"{argv[0]} was killed (pid {status.pid}): the run was cancelled", "exec",
                              result=partial)
        if timed_out:
            partial = ExecResult(tuple(argv), -1, out, status.stderr, duration)
            raise self._error(DeviceTimeout, f"{argv[0]} still running after {timeout:g} s; killed", "exec",
                              result=partial, hint="Raise the timeout, or run fewer iterations.")
        if status.rc is None:
            partial = ExecResult(tuple(argv), proc.returncode, out, status.stderr, duration)
            self._connected = False
            if status.pid is None:  # never started: a connection problem
                raise self._classify(status.stderr.decode("utf-8", "replace"), "exec", partial)
            raise self._error(TransportDropped, f"lost the connection to {self._label} while {argv[0]} was running "
                                                f"(pid {status.pid})", "exec", result=partial,
                              hint="The program may have been cut off; its partial output is kept. "
                                   "It was not re-run.")
        rc, sig = split_signal(status.rc)
        return ExecResult(tuple(argv), rc, out, status.stderr, duration, sig)

    def _kill_remote(self, pid: int) -> None:
        try:
            self._remote(kill_script(pid), timeout=15)
        except DeviceError as exc:
            log.warning("could not kill pid %s on %s after a timeout: %s", pid, self.name, exc.message)


__all__ = ["RemoteShellDevice", "RC_SUFFIX", "TRANSFER_TIMEOUT"]
