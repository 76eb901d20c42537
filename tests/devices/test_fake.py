"""fake://NAME: the in-memory device for testing the layers above (never instead of the real
transports' tests). Its whole interface, its counters, and sync_files running on it."""

from __future__ import annotations

import pytest

from edgerun.devices import (Device, DeviceError, DeviceTimeout, DeviceUnreachable, parse_device_list,
                             resolve_device, sync_files)
from edgerun.devices.fake import FakeDevice, fake_board, reset_fake_boards


@pytest.fixture(autouse=True)
def fresh_boards():
    reset_fake_boards()
    yield
    reset_fake_boards()


def test_it_is_a_device_reachable_by_uri_and_counts_opens_and_connects():
    board = fake_board("pi")
    lazy = resolve_device("fake://pi")
    assert isinstance(lazy, FakeDevice) and isinstance(lazy, Device)
    assert (board.opened, board.connected) == (1, 0)  # opening is lazy, like every transport
    lazy.close()
    with resolve_device("fake://pi") as dev:
        dev.exec(["true"], timeout=1)
        dev.exec(["true"], timeout=1)
    assert (board.opened, board.connected, board.closed) == (2, 1, 2)


def test_scripted_exec_by_prefix_then_default_then_127():
    board = fake_board("pi")
    board.on(["./runner", "--model"], lambda argv: (0, f"ran {argv[2]}\n".encode(), b""))
    with resolve_device("fake://pi") as dev:
        assert dev.exec(["./runner", "--model", "m.pte"], timeout=5, cwd="/w", env={"A": "1"}).stdout == b"ran m.pte\n"
        assert dev.exec(["other"], timeout=5).rc == 127
        board.default = lambda argv: (3, b"", b"default\n")
        res = dev.exec(["other"], timeout=5)
        crashed = (board.on(["crash"], lambda argv: (139, b"", b"")), dev.exec(["crash"], timeout=5))[1]
    assert (res.rc, res.stderr) == (3, b"default\n")
    assert crashed.signal == 11
    assert board.calls[0].argv == ("./runner", "--model", "m.pte")
    assert board.calls[0].cwd == "/w" and board.calls[0].env["A"] == "1"


def test_a_simulated_duration_past_the_timeout_is_a_device_timeout_with_output():
    fake_board("pi").on(["slow"], lambda argv: (0, b"partial\n", b"", 120.0))
    with resolve_device("fake://pi") as dev:
        with pytest.raises(DeviceTimeout) as ei:
            dev.exec(["slow"], timeout=60)
    assert ei.value.result.stdout == b"partial\n" and ei.value.stage == "exec"


def test_on_stdout_gets_the_whole_stdout_once_the_program_ended():
    board = fake_board("pi")
    board.on(["gen"], lambda argv: (0, b"tok1 tok2\n", b"err\n"))
    board.on(["slow"], lambda argv: (0, b"partial\n", b"", 120.0))
    seen: list[bytes] = []
    with resolve_device("fake://pi") as dev:
        res = dev.exec(["gen"], timeout=5, on_stdout=seen.append)
        with pytest.raises(DeviceTimeout):
            dev.exec(["slow"], timeout=60, on_stdout=seen.append)
        dev.exec(["mkdir", "-p", "/x"], timeout=5, on_stdout=seen.append)  # no stdout: no call
    assert res.stdout == b"tok1 tok2\n" and seen == [b"tok1 tok2\n", b"partial\n"]


def test_push_pull_push_many_and_handlers_that_touch_files(tmp_path):
    board = fake_board("pi")
    a, b = tmp_path / "a.sh", tmp_path / "b.bin"
    a.write_text("#!/bin/sh\n")
    a.chmod(0o755)
    b.write_bytes(b"\x00\x01")
    board.on(["./a.sh"], lambda argv: (board.write("/w/out.bin", board.read("/w/b.bin")[::-1]), (0, b"", b""))[1])
    with resolve_device("fake://pi") as dev:
        dev.push(a, "/w/a.sh")
        dev.push_many([(b, "/w/b.bin")])
        dev.exec(["./a.sh"], timeout=5, cwd="/w")
        dev.pull("/w/out.bin", tmp_path / "back" / "out.bin")
        with pytest.raises(DeviceError) as ei:
            dev.pull("/w/nope", tmp_path / "x")
    assert (tmp_path / "back" / "out.bin").read_bytes() == b"\x01\x00"
    assert "/w/a.sh" in board.executable and "/w/b.bin" not in board.executable
    assert ei.value.stage == "pull"


def test_sync_files_deploys_once_and_verifies_what_it_skips(tmp_path):
    prog = tmp_path / "prog"
    prog.write_bytes(b"program")
    board = fake_board("pi")
    with resolve_device("fake://pi") as dev:
        first = sync_files(dev, [prog])
        second = sync_files(dev, [prog])
        board.files[board.resolve(first.paths["prog"])] = b"tampered"
        third = sync_files(dev, [prog])
    assert first.pushed == ["prog"] and second.skipped == ["prog"] and second.verified_by == "sha256"
    assert third.replaced == ["prog"] and board.read(third.paths["prog"]) == b"program"


def test_info_says_fake_and_emulated_and_an_unreachable_board_fails_at_connect():
    board = fake_board("pi")
    with resolve_device("fake://pi") as dev:
        info = dev.info()
    assert info.transport == "fake" and info.emulated is True
    board.unreachable = True
    with resolve_device("fake://pi") as dev:
        with pytest.raises(DeviceUnreachable):
            dev.exec(["true"], timeout=1)


def test_a_closed_fake_refuses_work_like_every_device():
    dev = resolve_device("fake://pi")
    dev.close()
    with pytest.raises(DeviceError, match="closed"):
        dev.exec(["true"], timeout=1)


def test_the_device_list_parser_keeps_a_fake_named_twice_once():
    assert [s.name for s in parse_device_list("fake://a,fake://b,fake://a")] == ["fake://a", "fake://b"]
