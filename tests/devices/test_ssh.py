"""SshDevice against a real OpenSSH sshd on 127.0.0.1 (tests/devices/sshd.py): key-only login,
host keys checked against known_hosts, and the faults a real link has (refused port, wrong key,
unknown or changed host key, timeout, sshd killed mid-command or mid-pull, full disk)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from fault_triggers import ClientOutput, CutWhen

from edgerun.devices import (DeviceAuthError, DeviceError, DeviceTimeout, DeviceUnreachable, NoSpaceError,
                             TransportDropped, make_device, parse_uri, resolve_device, sync_files)


def _dev(server, tmp_path, **query):
    query.setdefault("work_dir", str(tmp_path / "remote"))
    return resolve_device(server.uri(**query))


def test_exec_quotes_every_argument_and_passes_env_and_cwd(sshd, tmp_path):
    weird = ["a b", "$(touch /tmp/edgerun-pwned)", "x;y", "it's", '"q"', "*", "`id`", ""]
    cwd = tmp_path / "dir with space"
    cwd.mkdir()
    with _dev(sshd, tmp_path) as dev:
        res = dev.exec(["python3", "-c", "import json,os,sys; print(json.dumps([sys.argv[1:], os.getcwd(), "
                        "os.environ['EDGERUN_TEST']]))", *weird], timeout=30,
                       env={"EDGERUN_TEST": "v'$HOME\""}, cwd=str(cwd))
    import json

    assert res.rc == 0, res.stderr_text
    assert json.loads(res.stdout) == [weird, str(cwd), "v'$HOME\""]
    assert res.stderr == b""  # the pid/status lines are stripped again
    assert not os.path.exists("/tmp/edgerun-pwned")


def test_status_and_signal_come_back(sshd, tmp_path):
    with _dev(sshd, tmp_path) as dev:
        assert dev.exec(["sh", "-c", "exit 3"], timeout=30).rc == 3
        # stderr comes back byte-exact, even without a final newline before the status line
        assert dev.exec(["sh", "-c", "printf 'no newline' >&2"], timeout=30).stderr == b"no newline"
        crashed = dev.exec(["sh", "-c", "echo before; kill -SEGV $$"], timeout=30)
    assert crashed.signal == 11 and crashed.stdout == b"before\n"
    assert crashed.stderr == b""  # no shell job notice mixed into the program's stderr


def test_push_pull_roundtrip_and_probe(sshd, tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(300_000))
    with _dev(sshd, tmp_path) as dev:
        remote = f"{dev.work_dir}/in dir/blob.bin"
        dev.push(src, remote)
        dev.pull(remote, tmp_path / "back.bin")
        info = dev.info()
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert info.transport == "ssh" and info.arch == os.uname().machine and not info.emulated
    assert info.cores == os.cpu_count() and info.free_bytes > 0


def test_unknown_host_key_is_refused(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with _dev(sshd, tmp_path, known_hosts=str(empty), connect_retries="0") as dev:
        with pytest.raises(DeviceAuthError) as ei:
            dev.exec(["true"], timeout=10)
    err = ei.value
    assert err.stage == "connect" and "host key" in err.message and dev.name in err.message
    assert "accept_new_host_key" in err.hint
    assert empty.read_text() == ""


def test_new_host_key_accepted_only_with_explicit_opt_in(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    with _dev(sshd, tmp_path, known_hosts=str(kh), accept_new_host_key="true") as dev:
        assert dev.exec(["true"], timeout=10).rc == 0
    assert sshd.host_pub.split()[1] in kh.read_text()


def test_changed_host_key_is_refused_even_with_opt_in(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    wrong = Path(str(sshd.other_key) + ".pub").read_text().split()[:2]
    kh.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(wrong)}\n")
    with _dev(sshd, tmp_path, known_hosts=str(kh), accept_new_host_key="true", connect_retries="0") as dev:
        with pytest.raises(DeviceAuthError, match="host key"):
            dev.exec(["true"], timeout=10)


def test_wrong_key_is_an_auth_failure_not_retried(sshd, tmp_path):
    with _dev(sshd, tmp_path, identity_file=str(sshd.other_key)) as dev:
        start = time.monotonic()
        with pytest.raises(DeviceAuthError) as ei:
            dev.info()
    assert ei.value.stage == "connect" and "authentication" in ei.value.message
    assert time.monotonic() - start < 5  # no retry back-off on auth failures


def test_unreachable_port_is_retried_then_reported(sshd, tmp_path, caplog):
    from edgerun_tests_devices_sshd import free_port

    port = free_port()
    uri = f"ssh://127.0.0.1:{port}?connect_retries=1&connect_timeout=3&identity_file={sshd.client_key}"
    with resolve_device(uri) as dev:
        with pytest.raises(DeviceUnreachable) as ei:
            dev.exec(["true"], timeout=5)
    assert ei.value.stage == "connect" and f"127.0.0.1:{port}" in ei.value.message
    assert ei.value.exit_code != 0
    assert "attempt 1/2" in caplog.text


def test_timeout_kills_the_remote_program_and_keeps_output(sshd, tmp_path):
    marker = f"edgerun-timeout-{os.getpid()}-{time.monotonic_ns()}"
    with _dev(sshd, tmp_path) as dev:
        with pytest.raises(DeviceTimeout) as ei:
            # the shell ($0) and its child both carry the marker: the whole group must go
            dev.exec(["sh", "-c", 'echo started; echo err >&2; python3 -c "import time; time.sleep(60)" "$0"',
                      marker], timeout=1.5)
        assert dev.exec(["true"], timeout=10).rc == 0  # the connection survives a timeout
    err = ei.value
    assert err.stage == "exec" and err.result.stdout == b"started\n" and err.result.stderr.startswith(b"err\n")
    deadline = time.monotonic() + 5  # the kill is sent before exec returns; allow for reaping
    while any(marker.encode() in _cmdline(p) for p in _pids()):
        assert time.monotonic() < deadline, "remote program still running 5 s after the timeout's kill"
        time.sleep(0.05)


def test_on_stdout_sees_output_while_the_remote_program_still_runs(sshd, tmp_path):
    got: list[tuple[float, bytes]] = []
    with _dev(sshd, tmp_path) as dev:
        res = dev.exec(["sh", "-c", "echo a; sleep 1; echo b"], timeout=60,
                       on_stdout=lambda data: got.append((time.monotonic(), data)))
        ended = time.monotonic()
    assert res.rc == 0 and res.stdout == b"a\nb\n" == b"".join(chunk for _, chunk in got)
    assert got[0][1] == b"a\n" and got[0][0] < ended  # "a" came alone: before "b" was even printed


def test_on_stdout_is_fed_while_the_remote_program_waits_for_it(sshd, tmp_path):
    """No timing: the program (on the same file system) prints "b" only once the callback saw "a"."""
    go = tmp_path / "go"

    def on_stdout(data: bytes) -> None:
        if b"a" in data:
            go.touch()

    with _dev(sshd, tmp_path) as dev:
        res = dev.exec(["sh", "-c", 'echo a; while [ ! -e "$1" ]; do sleep 0.05; done; echo b', "sh", str(go)],
                       timeout=60, on_stdout=on_stdout)
    assert res.rc == 0 and res.stdout == b"a\nb\n" and res.stderr == b""


def test_timeout_keeps_partial_output_and_on_stdout_saw_it_over_ssh(sshd, tmp_path):
    seen: list[bytes] = []
    with _dev(sshd, tmp_path) as dev:
        with pytest.raises(DeviceTimeout) as ei:
            dev.exec(["sh", "-c", "echo started; sleep 30"], timeout=2, on_stdout=seen.append)
    assert ei.value.result.stdout == b"started\n" == b"".join(seen)


def test_an_exception_in_on_stdout_kills_the_remote_program(sshd, tmp_path):
    class Enough(Exception):
        pass

    def on_stdout(data: bytes) -> None:
        raise Enough

    marker = f"edgerun-abort-{os.getpid()}-{time.monotonic_ns()}"
    with _dev(sshd, tmp_path) as dev:
        with pytest.raises(Enough):
            dev.exec(["sh", "-c", 'echo started; python3 -c "import time; time.sleep(60)" "$0"', marker],
                     timeout=120, on_stdout=on_stdout)
        assert dev.exec(["true"], timeout=30).rc == 0  # the connection survives
    deadline = time.monotonic() + 5  # the kill is sent before exec raises; allow for reaping
    while any(marker.encode() in _cmdline(p) for p in _pids()):
        assert time.monotonic() < deadline, "remote program still running 5 s after on_stdout raised"
        time.sleep(0.05)


def test_sshd_killed_mid_command_is_a_transport_drop(own_sshd, tmp_path, monkeypatch):
    with _dev(own_sshd, tmp_path) as dev:
        dev.exec(["true"], timeout=10)
        received = ClientOutput(monkeypatch)
        # the whole sshd (sessions and listener) goes once the command's first line has come back
        with CutWhen(lambda: received.has(b"partial\n"), own_sshd.stop, "'partial' arriving over ssh",
                     timeout=20):
            with pytest.raises(TransportDropped) as ei:
                dev.exec(["sh", "-c", "echo partial; sleep 20; echo never"], timeout=30)
    err = ei.value
    assert err.stage == "exec" and err.result.stdout == b"partial\n" and dev.name in err.message
    assert "not re-run" in err.hint


def test_connection_dropped_during_pull_keeps_the_partial_file(own_sshd, tmp_path):
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    release = threading.Event()

    def writer():
        with open(fifo, "wb") as f:
            f.write(b"x" * 65536)
            f.flush()
            release.wait(20)

    t = threading.Thread(target=writer)
    t.start()
    try:
        with _dev(own_sshd, tmp_path) as dev:
            dev.exec(["true"], timeout=10)
            part = tmp_path / "got.part"
            # drop the link once the first 64 KiB are on this side (the writer then holds the fifo open)
            with CutWhen(lambda: part.is_file() and part.stat().st_size >= 65536, own_sshd.drop_connections,
                         "64 KiB of the pull arriving in got.part", timeout=20):
                with pytest.raises(TransportDropped) as ei:
                    dev.pull(str(fifo), tmp_path / "got")
            release.set()
            assert dev.exec(["true"], timeout=10).rc == 0  # sshd still listens: a fresh master connects
    finally:
        release.set()
        t.join()
    assert ei.value.stage == "pull"
    assert (tmp_path / "got.part").read_bytes() == b"x" * 65536
    assert not (tmp_path / "got").exists()


def test_sshd_gone_between_commands_is_unreachable(own_sshd, tmp_path):
    with _dev(own_sshd, tmp_path, connect_retries="0") as dev:
        dev.exec(["true"], timeout=10)
        own_sshd.stop()
        with pytest.raises(DeviceError) as ei:
            dev.exec(["true"], timeout=10)
    assert isinstance(ei.value, (TransportDropped, DeviceUnreachable))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to produce ENOSPC")
def test_full_disk_on_push_is_a_no_space_error(sshd, tmp_path):
    """ENOSPC comes from the remote kernel: the push's staging file is /dev/full."""
    src = tmp_path / "big"
    src.write_bytes(b"x" * 200_000)
    with _dev(sshd, tmp_path) as dev:
        os.makedirs(dev.work_dir, exist_ok=True)
        os.symlink("/dev/full", f"{dev.work_dir}/big.part")
        with pytest.raises(NoSpaceError) as ei:
            dev.push(src, f"{dev.work_dir}/big")
    assert ei.value.stage == "push" and "no space" in ei.value.message


@pytest.mark.qemu
def test_aarch64_bundle_over_ssh_with_a_qemu_wrapper(sshd, tmp_path, aarch64_bundle, bundle_argv):
    """The issue's 'remote' aarch64 device: this host over ssh, programs run by qemu there.

    The wrapper comes as an inventory option (a URI may not carry one: it runs a command)."""
    spec = parse_uri(sshd.uri(work_dir=str(tmp_path / "remote")), name="emulated-pi",
                     options={"wrapper": "qemu-aarch64 -cpu cortex-a76"})
    with make_device(spec) as dev:
        first = sync_files(dev, sorted(aarch64_bundle.iterdir()))
        again = sync_files(dev, sorted(aarch64_bundle.iterdir()))
        res = dev.exec(bundle_argv("over ssh"), timeout=60, cwd=first.dest, env={"EDGERUN_TEST": "1"})
        crash = dev.exec(bundle_argv("crash"), timeout=60, cwd=first.dest)
        info = dev.info()
    assert len(first.pushed) == 3 and again.pushed == [] and again.dest == first.dest
    assert res.rc == 0 and res.stdout_text.strip() == "machine=aarch64 [over ssh] env=1"
    assert crash.signal == 11
    assert (info.arch, info.cpu_model, info.emulated, info.transport) == ("aarch64", "cortex-a76", True, "ssh")


def test_cleanup_removes_the_work_dir_on_close(sshd, tmp_path):
    wd = tmp_path / "scratch" / "wd"
    with _dev(sshd, tmp_path, work_dir=str(wd), cleanup="true") as dev:
        f = tmp_path / "f"
        f.write_text("x")
        dev.push(f, f"{wd}/f")
        assert (wd / "f").exists()
    assert not wd.exists()


def _pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_port_that_accepts_but_never_speaks_times_out_at_connect(sshd, tmp_path):
    """A real listening socket that never sends an SSH banner (a hung daemon, a wrong service)."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        uri = f"ssh://127.0.0.1:{port}?connect_retries=0&connect_timeout=2&identity_file={sshd.client_key}"
        start = time.monotonic()
        with resolve_device(uri) as dev:
            with pytest.raises(DeviceUnreachable) as ei:
                dev.exec(["true"], timeout=5)
    assert ei.value.stage == "connect" and time.monotonic() - start < 20


def test_push_many_is_one_session_and_leaves_no_staging(sshd, tmp_path):
    a, b = tmp_path / "a.sh", tmp_path / "b.txt"
    a.write_text("#!/bin/sh\necho a\n")
    a.chmod(0o755)
    b.write_bytes(os.urandom(5000))
    dest = tmp_path / "remote" / "many"
    with _dev(sshd, tmp_path) as dev:
        dev.push_many([(a, f"{dest}/x/a.sh"), (b, f"{dest}/y/b.txt")])
        assert dev.exec([f"{dest}/x/a.sh"], timeout=10).stdout == b"a\n"
    assert (dest / "y" / "b.txt").read_bytes() == b.read_bytes()
    assert not os.access(dest / "y" / "b.txt", os.X_OK)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["x", "x/a.sh", "y", "y/b.txt"]
