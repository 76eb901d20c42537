"""Running a transport's client program (``ssh``, ``adb``) with a deadline, keeping all output.

Shared by the transports whose programs run under :func:`~edgerun.devices.base.remote_exec_script`.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import threading
import time
from typing import Callable

GRACE_S = 5.0  # after a timeout and the remote kill, how long the rest of the output may take


def run_client(cmd: list[str], *, timeout: float, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
               on_timeout: Callable[[bytes], None] | None = None,
               cancel: threading.Event | None = None) -> tuple[subprocess.Popen, bytes, bytes, bool]:
    """Run ``cmd``; return (proc, stdout, stderr, timed_out).

    ``cancel`` (set from another thread, on Ctrl-C) ends the wait as a timeout does -- the same
    ``on_timeout`` kill of the remote program -- so ``timed_out`` is True then too.

    On a timeout ``on_timeout(stderr_so_far)`` may stop the remote program; what then still
    arrives within a short grace is kept, and only then is the client killed (an ssh mux client
    does not own its pipes: its master does, so killing it first would lose the tail).
    """
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    bufs: dict[int, bytearray] = {}
    sel = selectors.DefaultSelector()
    out_fd = proc.stdout.fileno() if proc.stdout is not None else None
    err_fd = proc.stderr.fileno()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            bufs[stream.fileno()] = bytearray()
            sel.register(stream, selectors.EVENT_READ)
    try:
        done = _pump(sel, bufs, proc, time.monotonic() + timeout, cancel)
        if not done:
            if on_timeout is not None:
                on_timeout(bytes(bufs[err_fd]))
            _pump(sel, bufs, proc, time.monotonic() + GRACE_S)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        sel.close()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    out = bytes(bufs[out_fd]) if out_fd is not None else b""
    return proc, out, bytes(bufs[err_fd]), not done


CANCEL_POLL_S = 0.2  # how often a wait looks at its cancel event


def _pump(sel: selectors.BaseSelector, bufs: dict[int, bytearray], proc: subprocess.Popen,
          deadline: float, cancel: threading.Event | None = None) -> bool:
    """Read the registered pipes until EOF and the process exit, or the deadline or ``cancel`` (-> False)."""
    while sel.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (cancel is not None and cancel.is_set()):
            return False
        for key, _ in sel.select(remaining if cancel is None else min(remaining, CANCEL_POLL_S)):
            data = os.read(key.fd, 65536)
            if data:
                bufs[key.fd] += data
            else:
                sel.unregister(key.fileobj)
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        return False


# The remote kill after a timeout: the program's whole process group (sshd and adbd start each
# session in its own), so children holding the output pipes die too; the pid alone if ps cannot say.
def kill_script(pid: int) -> str:
    return (f"g=$(ps -o pgid= -p {pid} 2>/dev/null | tr -d ' '); "
            f"case \"$g\" in ''|0|1) g={pid};; *) g=-$g;; esac; "
            "kill -TERM $g 2>/dev/null; sleep 1; kill -KILL $g 2>/dev/null; exit 0")
