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
               cancel: threading.Event | None = None,
               on_stdout: Callable[[bytes], None] | None = None) -> tuple[subprocess.Popen, bytes, bytes, bool]:
    """Run ``cmd``; return (proc, stdout, stderr, timed_out).

    ``cancel`` (set from another thread, on Ctrl-C) ends the wait as a timeout does -- the same
    ``on_timeout`` kill of the remote program -- so ``timed_out`` is True then too.

    On a timeout ``on_timeout(stderr_so_far)`` may stop the remote program; what then still
    arrives within a short grace is kept, and only then is the client killed (an ssh mux client
    does not own its pipes: its master does, so killing it first would lose the tail).

    ``on_stdout`` (only with ``stdout=PIPE``) gets each chunk of stdout as it is read, in this
    thread; the returned stdout still holds all of it. If it raises, the program is stopped as on
    a timeout (``on_timeout``, then the client killed, no grace) and the exception propagates.
    """
    if on_stdout is not None and stdout is not subprocess.PIPE:
        raise ValueError("on_stdout needs stdout=subprocess.PIPE")
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    bufs: dict[int, bytearray] = {}
    sel = selectors.DefaultSelector()
    out_fd = proc.stdout.fileno() if proc.stdout is not None else None
    err_fd = proc.stderr.fileno()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            bufs[stream.fileno()] = bytearray()
            sel.register(stream, selectors.EVENT_READ)
    hooks = {out_fd: on_stdout} if on_stdout is not None else None
    try:
        try:
            done = _pump(sel, bufs, proc, time.monotonic() + timeout, cancel, hooks)
        except Exception:  # the on_stdout hook (or a read) raised: stop the program, as a timeout does
            try:
                if on_timeout is not None:
                    on_timeout(bytes(bufs[err_fd]))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            raise
        if not done:
            if on_timeout is not None:
                on_timeout(bytes(bufs[err_fd]))
            try:
                _pump(sel, bufs, proc, time.monotonic() + GRACE_S, on_data=hooks)
            finally:
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
          deadline: float | None, cancel: threading.Event | None = None,
          on_data: dict[int, Callable[[bytes], None]] | None = None) -> bool:
    """Read the registered pipes until EOF and the process exit, or the deadline or ``cancel`` (-> False).

    ``deadline`` None waits for as long as that takes. ``on_data`` maps a pipe's fd to a callback
    given each chunk read from it, in order, right after it is added to ``bufs``; an exception it
    raises propagates (the caller stops the process).
    """
    while sel.get_map():
        remaining = None if deadline is None else deadline - time.monotonic()
        if (remaining is not None and remaining <= 0) or (cancel is not None and cancel.is_set()):
            return False
        wait = remaining
        if cancel is not None:
            wait = CANCEL_POLL_S if wait is None else min(wait, CANCEL_POLL_S)
        events = sel.select(wait)
        if on_data:  # hooked pipes last: a hook that raises finds the other pipes read (ssh's pid line)
            events.sort(key=lambda event: event[0].fd in on_data)
        for key, _ in events:
            data = os.read(key.fd, 65536)
            if data:
                bufs[key.fd] += data
                hook = on_data.get(key.fd) if on_data else None
                if hook is not None:
                    hook(data)
            else:
                sel.unregister(key.fileobj)
    try:
        proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        return False


# The remote kill after a timeout: the program's whole process group (sshd and adbd start each
# session in its own), so children holding the output pipes die too; the pid alone if ps cannot say.
def kill_script(pid: int) -> str:
    return (f"g=$(ps -o pgid= -p {pid} 2>/dev/null | tr -d ' '); "
            f"case \"$g\" in ''|0|1) g={pid};; *) g=-$g;; esac; "
            "kill -TERM $g 2>/dev/null; sleep 1; kill -KILL $g 2>/dev/null; exit 0")
