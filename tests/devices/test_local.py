"""LocalDevice: real child processes and real files on this machine."""

from __future__ import annotations

import os
import sys
import time

import pytest

from edgerun.devices import DeviceError, DeviceTimeout, NoSpaceError, resolve_device


@pytest.fixture
def dev(tmp_path):
    with resolve_device(f"local://?work_dir={tmp_path}/wd") as d:
        yield d


def test_exec_returns_status_output_and_uses_env_and_cwd(dev, tmp_path):
    code = "import os,sys; print(os.getcwd()); print(os.environ['EDGERUN_TEST']); print('e', file=sys.stderr); sys.exit(3)"
    res = dev.exec([sys.executable, "-c", code], timeout=30, env={"EDGERUN_TEST": "a b;c"}, cwd=str(tmp_path))
    assert res.rc == 3 and res.signal is None and not res.ok
    assert res.stdout_text.splitlines() == [str(tmp_path), "a b;c"]
    assert res.stderr == b"e\n"
    assert res.duration_s > 0


def test_exec_reports_death_by_signal(dev):
    res = dev.exec(["sh", "-c", "echo before; kill -SEGV $$"], timeout=10)
    assert res.signal == 11 and res.rc == 128 + 11
    assert res.stdout == b"before\n"


def test_timeout_kills_the_program_and_keeps_partial_output(dev):
    with pytest.raises(DeviceTimeout) as ei:
        dev.exec(["sh", "-c", "echo started; sleep 30; echo never"], timeout=0.5)
    err = ei.value
    assert err.stage == "exec" and dev.name in err.message
    assert err.result.stdout == b"started\n"
    assert err.result.duration_s < 10


class _Chunks:
    """An ``on_stdout`` that keeps each chunk with the time it came."""

    def __init__(self):
        self.got: list[tuple[float, bytes]] = []

    def __call__(self, data: bytes) -> None:
        self.got.append((time.monotonic(), data))

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in self.got)


def test_on_stdout_sees_output_while_the_program_still_runs(dev):
    seen = _Chunks()
    res = dev.exec(["sh", "-c", "echo a; sleep 1; echo b"], timeout=60, on_stdout=seen)
    ended = time.monotonic()
    assert res.rc == 0 and res.stdout == b"a\nb\n" == seen.data  # the result still holds all of it
    first_at, first = seen.got[0]
    assert first == b"a\n" and first_at < ended  # "a" came alone: before "b" was even printed


def test_on_stdout_is_fed_while_the_program_waits_for_it(dev, tmp_path):
    """No timing at all: the program prints "b" only once the callback has seen "a"."""
    go = tmp_path / "go"

    def on_stdout(data: bytes) -> None:
        if b"a" in data:
            go.touch()

    res = dev.exec(["sh", "-c", 'echo a; while [ ! -e "$1" ]; do sleep 0.05; done; echo b', "sh", str(go)],
                   timeout=60, on_stdout=on_stdout)
    assert res.rc == 0 and res.stdout == b"a\nb\n"


def test_timeout_keeps_partial_output_and_on_stdout_saw_it(dev):
    seen = _Chunks()
    with pytest.raises(DeviceTimeout) as ei:
        dev.exec(["sh", "-c", "echo started; sleep 30; echo never"], timeout=2, on_stdout=seen)
    assert ei.value.result.stdout == b"started\n" == seen.data


def test_an_exception_in_on_stdout_kills_the_program_and_propagates(dev):
    class Enough(Exception):
        pass

    pids = []

    def on_stdout(data: bytes) -> None:
        pids.append(int(data.split()[0]))
        raise Enough

    start = time.monotonic()
    with pytest.raises(Enough):
        dev.exec(["sh", "-c", "echo $$; exec sleep 60"], timeout=120, on_stdout=on_stdout)
    assert time.monotonic() - start < 60  # before the program would have ended by itself
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pids[0], 0)
    assert dev.exec(["true"], timeout=30).rc == 0  # the device is still usable


def test_on_stdout_must_be_callable(dev):
    with pytest.raises(TypeError):
        dev.exec(["true"], timeout=5, on_stdout=b"not a function")


def test_missing_program_reads_like_a_shell(dev):
    res = dev.exec(["/nonexistent/prog"], timeout=5)
    assert res.rc == 127 and b"/nonexistent/prog" in res.stderr


def test_push_pull_roundtrip_keeps_exec_bit(dev, tmp_path):
    src = tmp_path / "tool.sh"
    src.write_text("#!/bin/sh\necho tool\n")
    src.chmod(0o755)
    remote = f"{dev.work_dir}/sub/tool.sh"
    dev.push(src, remote)
    assert dev.exec([remote], timeout=10).stdout == b"tool\n"
    dev.pull(remote, tmp_path / "back" / "tool.sh")
    assert (tmp_path / "back" / "tool.sh").read_bytes() == src.read_bytes()


def test_pull_of_missing_file_names_device_and_stage(dev, tmp_path):
    with pytest.raises(DeviceError) as ei:
        dev.pull(f"{dev.work_dir}/nope", tmp_path / "x")
    assert ei.value.stage == "pull" and "nope" in ei.value.message


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to produce ENOSPC")
def test_push_onto_a_full_file_system_is_a_no_space_error(dev, tmp_path):
    """ENOSPC comes from the kernel: the push's staging file is /dev/full."""
    os.makedirs(dev.work_dir, exist_ok=True)
    os.symlink("/dev/full", f"{dev.work_dir}/big.part")
    src = tmp_path / "big"
    src.write_bytes(b"x" * 100_000)
    with pytest.raises(NoSpaceError) as ei:
        dev.push(src, f"{dev.work_dir}/big")
    assert ei.value.stage == "push" and ei.value.exit_code != 0


def test_closed_device_refuses_work(tmp_path):
    d = resolve_device("local://")
    d.close()
    with pytest.raises(DeviceError, match="closed"):
        d.exec(["true"], timeout=1)


def test_info_probes_this_machine(dev):
    info = dev.info()
    assert info.arch == os.uname().machine
    assert info.cores == os.cpu_count()
    assert info.kernel == os.uname().release
    assert info.mem_total_bytes and info.mem_total_bytes > 0
    assert info.free_bytes and info.free_bytes > 0
    assert info.emulated is False and info.transport == "local"


def test_bad_argv_is_a_value_error(dev):
    with pytest.raises(ValueError):
        dev.exec("ls -l", timeout=1)
    with pytest.raises(ValueError):
        dev.exec(["ls"], timeout=0)
