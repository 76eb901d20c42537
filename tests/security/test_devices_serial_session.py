"""Issue 9 item 10: serial "never twice" broke when the board's agent restarted.

The host resends a request whose reply it did not hear; the agent answers a repeat from its
reply cache, so a RUN never runs twice. But the cache dies with the agent: a fresh agent took the
resent RUN for a new one and ran the program a second time, and the host reported one run. Now
each agent process is a session (HELLO names it, every RUN carries it) and a RUN meant for an
earlier session is refused unexecuted; the host raises TransportDropped saying the program may
or may not have run, instead of re-running it.

Real parts only: the agent is ``edgerun.devices.serial_agent`` in its own process on a real pty
pair (tests/devices/ptylink.py), killed with SIGKILL and replaced by a fresh one on the same line.
"""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgerun.devices import TransportDropped, resolve_device

ROOT = Path(__file__).resolve().parents[2]

# Runs once per agent session that executes it: the first run blocks (its agent gets killed under
# it), a second run -- the bug -- would finish at once and hand the host a "successful" result.
PROGRAM = ('echo ran >> count; '
           'if [ "$(wc -l < count)" -eq 1 ]; then echo $$ > pid; touch started; exec sleep 60; fi')


def _ptylink():
    name = "edgerun_tests_devices_ptylink"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "devices" / "ptylink.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _line(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The process's next stdout line, or a clear failure after ``timeout`` seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from {proc.args[:3]} within {timeout:g} s (exit status {proc.poll()})"
    return proc.stdout.readline()


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared: the agent did not run the program"
        time.sleep(0.02)


def _agent(port: str, sandbox: Path, *, held: bool = False) -> subprocess.Popen:
    """A real agent process. ``held``: loaded, but it opens the port only on a newline on its stdin
    (a board that is powered and booted, its UART not yet up) -- so it comes up at once when told."""
    code = ("import sys\nfrom edgerun.devices import serial_agent\n"
            + ("print('loaded', flush=True)\nsys.stdin.readline()\n" if held else "")
            + "sys.exit(serial_agent.main(sys.argv[1:]))\n")
    return subprocess.Popen([sys.executable, "-c", code, port, str(sandbox)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


@pytest.fixture
def line(tmp_path):
    link = _ptylink().PtyLink()
    procs: list[subprocess.Popen] = []
    yield link, procs
    pid_file = tmp_path / "board" / "pid"
    if pid_file.exists():  # the first run's `sleep`, orphaned when its agent was killed
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    link.close()


def test_a_run_resent_to_a_restarted_agent_is_not_run_again(line, tmp_path):
    """Stops: a resent RUN running the program a second time in a restarted agent, reported as one run."""
    link, procs = line
    sandbox = tmp_path / "board"
    first = _agent(link.agent_path, sandbox)
    procs.append(first)
    assert "serving" in _line(first)
    fresh = _agent(link.agent_path, sandbox, held=True)
    procs.append(fresh)
    assert _line(fresh) == "loaded\n"

    outcome: dict = {}
    with resolve_device(f"serial://{link.host_path}") as dev:
        dev.connect()
        old_session = dev.hello.get("session")  # what the agent said in HELLO

        def run():
            try:
                outcome["result"] = dev.exec(["sh", "-c", PROGRAM], timeout=30, cwd=str(sandbox.resolve()))
            except Exception as exc:  # the assertion below says what it was
                outcome["error"] = exc

        host = threading.Thread(target=run, daemon=True)
        host.start()
        _wait_for(sandbox / "started")        # the agent received the RUN and the program is running
        first.send_signal(signal.SIGKILL)     # the board's agent dies under it ...
        first.wait(timeout=10)
        fresh.stdin.write("\n")               # ... and a fresh one comes up on the same line
        fresh.stdin.flush()
        serving = _line(fresh)
        assert "serving" in serving
        new_session = serving.partition("session ")[2].split(" ")[0]  # printed by the agent at start
        host.join(timeout=60)
        assert not host.is_alive(), "the host never gave up on the RUN"

    assert (sandbox / "count").read_text() == "ran\n", "the program ran more than once"
    assert old_session and old_session == dev.session
    assert "result" not in outcome, f"reported as one successful run: {outcome.get('result')}"
    err = outcome["error"]
    assert isinstance(err, TransportDropped), repr(err)
    assert err.stage == "exec"
    assert f"agent restarted (session {old_session} -> {new_session})" in err.message
    assert "may or may not have run" in err.message and "not re-sent" in err.message
    assert fresh.poll() is None, "the fresh agent must survive the refused request"


def test_a_restart_between_runs_is_noticed_and_the_next_run_runs_once(line, tmp_path):
    """Stops: the session check refusing work after a board reset between runs, or running it twice.
    A RUN refused on its only send never ran: the host handshakes with the new session and sends it."""
    link, procs = line
    sandbox = tmp_path / "board"
    first = _agent(link.agent_path, sandbox)
    procs.append(first)
    assert "serving" in _line(first)
    with resolve_device(f"serial://{link.host_path}") as dev:
        dev.exec(["sh", "-c", "echo a >> count"], timeout=20, cwd=str(sandbox.resolve()))
        old_session = dev.hello.get("session")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        fresh = _agent(link.agent_path, sandbox)
        procs.append(fresh)
        assert "serving" in _line(fresh)
        res = dev.exec(["sh", "-c", "echo b >> count; cat count"], timeout=20, cwd=str(sandbox.resolve()))
        new_session = dev.hello.get("session")
    assert res.stdout == b"a\nb\n" and (sandbox / "count").read_text() == "a\nb\n"
    assert old_session and new_session and new_session != old_session
