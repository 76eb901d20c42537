"""SerialDevice against the serial agent on the far end of real pseudo-terminals.

No board firmware exists yet: the counterpart is ``python -m edgerun.devices.serial_agent``,
a real separate process on a real pty pair (tests/devices/ptylink.py relays between two pairs
and can inject line noise). Its results are labelled emulated.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

from edgerun.devices import (DeviceError, DeviceTimeout, DeviceUnreachable, NoSpaceError, TransportDropped,
                             resolve_device, sync_files)
from edgerun.devices.serial_protocol import Msg


@pytest.fixture
def files(tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(60_000))
    script = tmp_path / "hello.sh"
    script.write_text('#!/bin/sh\necho "hello $1 $EDGERUN_TEST"; wc -c < blob.bin\n')
    script.chmod(0o755)
    return blob, script


def test_push_pull_exec_and_info(serial_line, files, tmp_path):
    uri, link, agent, sandbox = serial_line()
    blob, _ = files
    with resolve_device(uri) as dev:
        assert dev.work_dir == str(sandbox.resolve())
        dev.push(blob, f"{dev.work_dir}/in/blob.bin")
        dev.pull(f"{dev.work_dir}/in/blob.bin", tmp_path / "back.bin")
        res = dev.exec(["sh", "-c", 'echo "$1 $EDGERUN_TEST"; pwd; echo e >&2; exit 4', "sh", "a b"],
                       timeout=20, env={"EDGERUN_TEST": "v"}, cwd=f"{dev.work_dir}/in")
        info = dev.info()
    assert (tmp_path / "back.bin").read_bytes() == blob.read_bytes()
    assert res.rc == 4 and res.stdout_text.splitlines() == ["a b v", str(sandbox.resolve() / "in")]
    assert res.stderr == b"e\n"
    assert info.transport == "serial" and info.arch == os.uname().machine
    assert info.emulated is True and "standing in" in info.emulator


def test_sync_then_run_a_deployed_program(serial_line, files):
    uri, *_ = serial_line()
    with resolve_device(uri) as dev:
        first = sync_files(dev, {"blob.bin": files[0], "hello.sh": files[1]})
        again = sync_files(dev, {"blob.bin": files[0], "hello.sh": files[1]})
        res = dev.exec(["./hello.sh", "board"], timeout=20, cwd=first.dest, env={"EDGERUN_TEST": "1"})
    assert sorted(first.pushed) == ["blob.bin", "hello.sh"] and again.pushed == []
    assert res.stdout_text.split() == ["hello", "board", "1", "60000"]


def test_timeout_and_signal(serial_line):
    uri, *_ = serial_line()
    with resolve_device(uri) as dev:
        with pytest.raises(DeviceTimeout) as ei:
            dev.exec(["sh", "-c", "echo started; sleep 30"], timeout=2.5)  # heartbeats keep the link alive
        crashed = dev.exec(["sh", "-c", "echo before; kill -SEGV $$"], timeout=10)
    assert ei.value.result.stdout == b"started\n" and ei.value.stage == "exec"
    assert crashed.signal == 11 and crashed.stdout == b"before\n"


def test_on_stdout_gets_the_whole_stdout_once_the_program_ended(serial_line):
    """Serial output comes in the RUN reply, so it cannot stream: one call, after the end."""
    uri, *_ = serial_line()
    seen: list[bytes] = []
    with resolve_device(uri) as dev:
        res = dev.exec(["sh", "-c", "echo a; echo b"], timeout=20, on_stdout=seen.append)
        with pytest.raises(DeviceTimeout) as ei:
            dev.exec(["sh", "-c", "echo started; sleep 30"], timeout=2.5, on_stdout=seen.append)
    assert res.stdout == b"a\nb\n" and ei.value.result.stdout == b"started\n"
    assert seen == [b"a\nb\n", b"started\n"]


def test_output_bigger_than_a_frame_is_fetched(serial_line):
    uri, *_ = serial_line()
    code = "import sys; sys.stdout.write('x' * 400000); sys.stderr.write('y' * 1000)"
    with resolve_device(uri) as dev:
        res = dev.exec([sys.executable, "-c", code], timeout=30)
    assert res.stdout == b"x" * 400000 and res.stderr == b"y" * 1000


def test_noise_and_crc_errors_are_survived(serial_line, files, tmp_path):
    noise = __import__("edgerun_tests_devices_ptylink").Noise(garbage_prob=0.15, flip_prob=0.05, seed=7)
    uri, link, *_ = serial_line(noise)
    blob, _ = files
    with resolve_device(uri) as dev:
        dev.push(blob, f"{dev.work_dir}/blob.bin")
        dev.pull(f"{dev.work_dir}/blob.bin", tmp_path / "back.bin")
        res = dev.exec(["sh", "-c", "echo ok; cat blob.bin | wc -c"], timeout=20, cwd=dev.work_dir)
        stats = dict(dev.stats)
        garbage, bad = dev._decoder.garbage_bytes, dev._decoder.bad_frames
    assert (tmp_path / "back.bin").read_bytes() == blob.read_bytes()
    assert res.stdout_text.split() == ["ok", "60000"]
    # the line really was noisy, and the protocol really had to work for it
    assert noise.counts["flips"] >= 2 and noise.counts["garbage"] >= 2
    assert garbage > 0 and bad > 0
    assert stats["resends"] + stats["naks_sent"] > 0


def test_a_lost_run_reply_is_fetched_again_not_rerun(serial_line, tmp_path):
    dropped = []

    def drop_first_run_reply(frame):
        if frame.type == Msg.RUN | Msg.REPLY and not dropped:
            dropped.append(frame.seq)
            return True
        return False

    noise = __import__("edgerun_tests_devices_ptylink").Noise(drop=drop_first_run_reply)
    uri, link, agent, sandbox = serial_line(noise)
    with resolve_device(uri) as dev:
        res = dev.exec(["sh", "-c", "echo ran >> count; cat count"], timeout=20, cwd=dev.work_dir)
        resends = dev.stats["resends"]
    assert dropped and resends >= 1
    assert res.stdout == b"ran\n" and (sandbox / "count").read_text() == "ran\n"


def test_agent_gone_mid_session_is_a_transport_drop(serial_line):
    uri, link, agent, _ = serial_line()
    with resolve_device(uri) as dev:
        dev.exec(["true"], timeout=10)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        with pytest.raises(TransportDropped) as ei:
            dev.exec(["true"], timeout=10)
    assert ei.value.stage == "exec" and link.host_path in ei.value.message and dev.name in ei.value.message


def test_nobody_listening_is_unreachable(tmp_path):
    link = __import__("edgerun_tests_devices_ptylink").PtyLink()
    try:
        with resolve_device(f"serial://{link.host_path}?connect_retries=0&connect_timeout=2") as dev:
            with pytest.raises(DeviceUnreachable) as ei:
                dev.info()
    finally:
        link.close()
    assert ei.value.stage == "connect"


def test_missing_port_is_unreachable():
    with resolve_device("serial:///dev/edgerun-no-such-tty") as dev:
        with pytest.raises(DeviceUnreachable, match="/dev/edgerun-no-such-tty"):
            dev.exec(["true"], timeout=5)


def test_files_outside_the_sandbox_are_refused(serial_line, tmp_path):
    uri, *_ = serial_line()
    with resolve_device(uri) as dev:
        with pytest.raises(DeviceError, match="outside_sandbox"):
            dev.pull("/etc/hostname", tmp_path / "h")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to produce ENOSPC")
def test_full_disk_on_the_board_is_a_no_space_error(serial_line, files):
    """ENOSPC comes from the kernel: the agent's staging file is /dev/full."""
    uri, link, agent, sandbox = serial_line()
    sandbox.mkdir(parents=True, exist_ok=True)
    os.symlink("/dev/full", sandbox / "blob.bin.part")
    with resolve_device(uri) as dev:
        with pytest.raises(NoSpaceError) as ei:
            dev.push(files[0], f"{dev.work_dir}/blob.bin")
    assert ei.value.stage == "push"


def test_agent_over_a_socat_pty_pair(tmp_path):
    """The same, with the pty pair made by socat (what a user does to try the agent by hand)."""
    import shutil
    import subprocess
    import time

    if not shutil.which("socat"):
        pytest.skip("socat not installed (Debian socat)")
    host, board = tmp_path / "ttyHOST", tmp_path / "ttyBOARD"
    socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={host}", f"pty,raw,echo=0,link={board}"],
                             stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agent = None
    try:
        deadline = time.monotonic() + 10
        while not (host.exists() and board.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        agent = subprocess.Popen([sys.executable, "-m", "edgerun.devices.serial_agent", str(board),
                                  str(tmp_path / "sandbox")], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 text=True)
        assert "serving" in agent.stdout.readline()
        with resolve_device(f"serial://{host}") as dev:
            res = dev.exec(["sh", "-c", "echo over socat"], timeout=10)
            assert dev.info().emulated
        assert res.stdout == b"over socat\n"
    finally:
        for proc in (agent, socat):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=5)


def test_a_protocol_1_host_still_runs_on_this_agent(serial_line, monkeypatch):
    """Compatibility: an older host asks for protocol 1 and sends RUN without a session."""
    import edgerun.devices.serial_device as serial_device

    monkeypatch.setattr(serial_device, "PROTOCOL", 1)
    uri, link, agent, sandbox = serial_line()
    with resolve_device(uri) as dev:
        res = dev.exec(["sh", "-c", "echo ran >> count; cat count"], timeout=20, cwd=dev.work_dir)
        assert dev.hello["protocol"] == 1 and dev.session is None
    assert res.stdout == b"ran\n"


def test_this_host_falls_back_to_a_protocol_1_agent(tmp_path, caplog):
    """Compatibility: an agent that knows only protocol 1 refuses 2; the host speaks 1 and warns
    that such an agent's restarts cannot be detected."""
    import logging
    import subprocess

    link = __import__("edgerun_tests_devices_ptylink").PtyLink()
    code = ("import sys\nfrom edgerun.devices import serial_agent as a\n"
            "a.PROTOCOL, a.PROTOCOLS = 1, (1,)\nsys.exit(a.main(sys.argv[1:]))\n")
    agent = subprocess.Popen([sys.executable, "-c", code, link.agent_path, str(tmp_path / "sb")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        assert "serving" in agent.stdout.readline()
        with caplog.at_level(logging.WARNING, logger="edgerun.devices"):
            with resolve_device(f"serial://{link.host_path}") as dev:
                res = dev.exec(["sh", "-c", "echo v1"], timeout=20)
                assert dev.hello["protocol"] == 1 and dev.session is None
    finally:
        agent.kill()
        agent.wait(timeout=10)
        link.close()
    assert res.stdout == b"v1\n"
    assert any("protocol 1 only" in r.getMessage() for r in caplog.records)
