"""The fault tests' trigger (tests/fault_triggers.py) cuts on the event, and fails loudly without it."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from fault_triggers import ClientOutput, CutWhen


def test_cuts_as_soon_as_the_event_is_seen():
    ready, cut = threading.Event(), threading.Event()
    with CutWhen(ready.is_set, cut.set, "ready", timeout=30) as trigger:
        assert not cut.wait(0.2)  # no event, no cut
        ready.set()
        assert cut.wait(10)
    assert trigger.seen_after is not None and trigger.seen_after < 10


def test_an_event_that_never_comes_fails_the_test_and_still_cuts():
    cut = threading.Event()
    with pytest.raises(pytest.fail.Exception, match="never observed: the first line"):
        with CutWhen(lambda: False, cut.set, "the first line", timeout=0.3):
            assert cut.wait(10)  # the blocked call is released by the cut after the timeout
    assert cut.is_set()


def test_a_block_that_ends_first_fails_at_once_naming_what_it_ended_with():
    with pytest.raises(pytest.fail.Exception, match=r"never observed: x .*ValueError\('boom'\)"):
        with CutWhen(lambda: False, lambda: None, "x", timeout=60):
            raise ValueError("boom")


def test_client_output_sees_what_a_transport_client_prints(monkeypatch):
    from edgerun.devices._client import run_client

    received = ClientOutput(monkeypatch)
    assert not received.has(b"hello")
    _, out, _, _ = run_client([sys.executable, "-c", "print('hello')"], timeout=30, stdin=subprocess.DEVNULL)
    assert out == b"hello\n" and received.has(b"hello\n")
