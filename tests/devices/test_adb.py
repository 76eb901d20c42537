"""AdbDevice through a stand-in ``adb`` client (tests/devices/fake_adb/adb).

A mock by necessity: no Android device or emulator can run on this machine. The stand-in takes the
real client's command line and acts on a local sandbox directory (the device's work_dir) and on
local processes, and imitates the real client's messages; it exercises edgerun's whole adb code
path -- quoting, the pid/status wrapper, timeouts, push/pull, error classification -- but not adbd.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_triggers import ClientOutput, CutWhen

from edgerun.devices import (DeviceAuthError, DeviceError, DeviceTimeout, DeviceUnreachable, NoSpaceError,
                             TransportDropped, resolve_device, sync_files)

FAKE = Path(__file__).parent / "fake_adb"


@pytest.fixture
def adb_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", f"{FAKE}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_DEVICES", "R58M1:device,LOCKED:unauthorized")
    monkeypatch.setenv("FAKE_ADB_UNPLUG", str(tmp_path / "unplugged"))
    return tmp_path


def _dev(tmp_path, serial="R58M1", **query):
    q = "&".join(f"{k}={v}" for k, v in {"work_dir": f"{tmp_path}/sandbox", **query}.items())
    return resolve_device(f"adb://{serial}?{q}")


def test_default_work_dir_is_under_data_local_tmp():
    assert resolve_device("adb://X").work_dir == "/data/local/tmp/edgerun"


def test_exec_push_pull_and_probe(adb_env, tmp_path):
    src = tmp_path / "tool.sh"
    src.write_text("#!/bin/sh\necho \"tool $1\"\n")
    src.chmod(0o755)
    with _dev(tmp_path) as dev:
        synced = sync_files(dev, [src])
        res = dev.exec(["./tool.sh", "a b;$(id)"], timeout=20, cwd=synced.dest, env={"EDGERUN_TEST": "x"})
        crashed = dev.exec(["sh", "-c", "kill -SEGV $$"], timeout=20)
        dev.pull(synced.paths["tool.sh"], tmp_path / "back.sh")
        info = dev.info()
    assert res.rc == 0 and res.stdout == b"tool a b;$(id)\n" and res.stderr == b""
    assert crashed.signal == 11
    assert (tmp_path / "back.sh").read_bytes() == src.read_bytes()
    assert info.transport == "adb" and info.arch


def test_unauthorized_device_is_an_auth_error(adb_env, tmp_path):
    with _dev(tmp_path, serial="LOCKED") as dev:
        with pytest.raises(DeviceAuthError) as ei:
            dev.exec(["true"], timeout=5)
    assert ei.value.stage == "connect" and "LOCKED" in ei.value.message and "prompt" in ei.value.hint


def test_absent_device_is_unreachable_after_bounded_retries(adb_env, tmp_path, caplog):
    with _dev(tmp_path, serial="GONE", connect_retries=1) as dev:
        with pytest.raises(DeviceUnreachable) as ei:
            dev.exec(["true"], timeout=5)
    assert "GONE" in ei.value.message and "attempt 1/2" in caplog.text


def test_timeout_keeps_partial_output(adb_env, tmp_path):
    with _dev(tmp_path) as dev:
        with pytest.raises(DeviceTimeout) as ei:
            dev.exec(["sh", "-c", "echo started; sleep 30"], timeout=1.5)
    assert ei.value.result.stdout == b"started\n"


def test_on_stdout_is_fed_while_the_program_waits_for_it(adb_env, tmp_path):
    """No timing: the program prints "b" only once the callback has seen "a" come through adb."""
    go = tmp_path / "go"

    def on_stdout(data: bytes) -> None:
        if b"a" in data:
            go.touch()

    with _dev(tmp_path) as dev:
        res = dev.exec(["sh", "-c", 'echo a; while [ ! -e "$1" ]; do sleep 0.05; done; echo b', "sh", str(go)],
                       timeout=60, on_stdout=on_stdout)
    assert res.rc == 0 and res.stdout == b"a\nb\n" and res.stderr == b""


def test_unplugged_mid_run_is_a_transport_drop(adb_env, tmp_path, monkeypatch):
    with _dev(tmp_path) as dev:
        dev.exec(["true"], timeout=10)
        received = ClientOutput(monkeypatch)
        # unplug once the command's first line has come back through the client
        with CutWhen(lambda: received.has(b"partial\n"), (tmp_path / "unplugged").touch,
                     "'partial' arriving through adb", timeout=20):
            with pytest.raises(TransportDropped) as ei:
                dev.exec(["sh", "-c", "echo partial; sleep 20"], timeout=30)
    assert ei.value.stage == "exec" and ei.value.result.stdout == b"partial\n"


def test_no_space_on_push(adb_env, tmp_path):
    src = tmp_path / "big"
    src.write_bytes(b"x" * 100_000)
    (tmp_path / "sandbox").mkdir()
    (tmp_path / "sandbox" / "big.part").symlink_to("/dev/full")
    with _dev(tmp_path) as dev:
        with pytest.raises(NoSpaceError) as ei:
            dev.push(src, f"{tmp_path}/sandbox/big")
    assert ei.value.stage == "push"


def test_pull_of_missing_file(adb_env, tmp_path):
    with _dev(tmp_path) as dev:
        with pytest.raises(DeviceError, match="failed to stat") as ei:
            dev.pull(f"{tmp_path}/sandbox/nope", tmp_path / "x")
    assert ei.value.stage == "pull" and not isinstance(ei.value, TransportDropped)
