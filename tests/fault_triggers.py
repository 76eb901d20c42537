"""Cutting something at the right moment in a fault test: on an observed event, never after a sleep.

A fixed sleep before a kill fires too early on a loaded machine (the run is still deploying) and
too late on a fast one. ``CutWhen`` polls for the event the test means ("the runner printed its
first iteration", "the partial file holds 64 KiB"), cuts as soon as it is seen, and fails the test
with a clear message if it never comes within a bound (cutting anyway, so a blocked call ends).
``ClientOutput`` is such an event source: the bytes a transport's client program (``ssh``,
``adb``) has handed to edgerun so far.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import pytest


class ClientOutput:
    """What ``edgerun.devices._client.run_client`` has read from its client programs' pipes since
    this was installed (it reads them with ``os.read``; this stands in for ``os`` there)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        from edgerun.devices import _client

        self._os = _client.os
        self._lock = threading.Lock()
        self._seen: dict[int, bytearray] = {}
        monkeypatch.setattr(_client, "os", self)

    def __getattr__(self, name):  # everything but read is the real os module
        return getattr(self._os, name)

    def read(self, fd: int, n: int) -> bytes:
        data = self._os.read(fd, n)
        with self._lock:
            self._seen.setdefault(fd, bytearray()).extend(data)
        return data

    def has(self, needle: bytes) -> bool:
        with self._lock:
            return any(needle in buf for buf in self._seen.values())


class CutWhen:
    """``with CutWhen(event, cut, what):`` runs ``cut()`` in a thread as soon as ``event()`` is
    true. If it is not true within ``timeout`` seconds, ``cut()`` runs anyway and leaving the block
    fails the test saying ``what`` never happened (that message wins over whatever the cut caused).
    A block that ends before the event stops the wait: the test fails then, not ``timeout`` later."""

    def __init__(self, event: Callable[[], bool], cut: Callable[[], None], what: str, *,
                 timeout: float = 60.0, poll: float = 0.02):
        self.event, self.cut, self.what, self.timeout, self.poll = event, cut, what, timeout, poll
        self.seen_after: float | None = None
        self._error: BaseException | None = None
        self._left = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cut-when", daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        try:
            while True:
                if self.event():
                    self.seen_after = time.monotonic() - start
                    break
                if time.monotonic() - start >= self.timeout or self._left.is_set():
                    break
                self._left.wait(self.poll)
            self.cut()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            self._error = exc

    def __enter__(self) -> CutWhen:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._left.set()
        self._thread.join(self.timeout + 30)
        if self._thread.is_alive():
            pytest.fail(f"the cut after '{self.what}' is still running {self.timeout + 30:g} s later")
        if self._error is not None:
            raise self._error
        if self.seen_after is None:
            ended = f"; the block ended first with {exc_info[1]!r}" if exc_info[1] is not None else ""
            pytest.fail(f"never observed: {self.what} (waited up to {self.timeout:g} s, then cut anyway{ended})")
