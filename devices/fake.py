"""``fake://NAME``: an in-memory device -- a test double for the layers *above* the devices room.

It is for testing what uses devices (deploy, profile, bench: "each device is opened once", "a
failing device does not stop the others"), never instead of the real transports' own tests,
which run against a real sshd, real ptys and real qemu. Real runs never use it; its info says
``transport="fake"`` and ``emulated=True`` so a record made on it can never pass for a measurement.

Every :class:`FakeDevice` opened on ``fake://NAME`` shares one :class:`FakeBoard` (get it with
:func:`fake_board`): its files (a dict of path -> bytes), its scripted programs and its counters::

    board = fake_board("pi")
    board.on(["./edgerun-runner"], lambda argv: (0, b'{"event": "done"}\\n', b""))
    board.default = lambda argv: (127, b"", b"no such program\\n")
    with resolve_device("fake://pi") as dev:
        sync_files(dev, files)
        dev.exec(["./edgerun-runner", "--model", "m.pte"], timeout=60, cwd=...)
    assert board.opened == 1 and board.calls[-1].argv[0] == "./edgerun-runner"

A handler takes the argv (after the device's wrapper) and returns ``(rc, stdout, stderr)`` or
``(rc, stdout, stderr, duration_s)``; a simulated duration beyond the timeout raises
:class:`DeviceTimeout` with the output (nothing sleeps). A handler may read and write the board's
files (``board.read``/``board.write``). ``mkdir`` is built in. :func:`reset_fake_boards` forgets
every board (call it between tests).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Sequence

from edgerun.devices.base import Device, DeviceError, DeviceTimeout, DeviceUnreachable, ExecResult
from edgerun.devices.info import DeviceInfo
from edgerun.devices.spec import DeviceSpec, address, register_transport

Handler = Callable[[list[str]], tuple]


@register_transport
@dataclass(frozen=True)
class FakeSpec(DeviceSpec):
    """``fake://NAME`` -- the in-memory test double (never a real device)."""

    transport: ClassVar[str] = "fake"
    device_class: ClassVar[str] = "edgerun.devices.fake:FakeDevice"
    about: ClassVar[str] = "fake://NAME (tests only)"

    board: str | None = address()

    @classmethod
    def from_uri(cls, parts):
        return {"board": parts.netloc}

    def __post_init__(self):
        super().__post_init__()
        if not self.board:
            raise ValueError("a fake device needs a name: fake://NAME")


@dataclass(frozen=True)
class FakeCall:
    """One exec on a fake board, as it arrived (after the wrapper)."""

    argv: tuple[str, ...]
    cwd: str | None
    env: Mapping[str, str]
    timeout: float
    wrapped: bool


@dataclass
class FakeBoard:
    """The state every :class:`FakeDevice` on ``fake://NAME`` shares."""

    name: str
    files: dict[str, bytes] = field(default_factory=dict)
    executable: set[str] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)   # path -> target
    dirs: set[str] = field(default_factory=set)
    handlers: list[tuple[tuple[str, ...], Handler]] = field(default_factory=list)
    default: Handler | None = None
    info: DeviceInfo = field(default_factory=lambda: DeviceInfo(
        arch="aarch64", cpu_model="fake CPU", cores=4, os="fake", emulated=True, emulator="edgerun fake device",
        transport="fake"))
    unreachable: bool = False  # connect fails with DeviceUnreachable while set
    opened: int = 0            # FakeDevice objects made for this board
    connected: int = 0         # of those, how many were used (connected on first use)
    closed: int = 0
    calls: list[FakeCall] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def on(self, prefix: Sequence[str], handler: Handler) -> None:
        """Run ``handler`` for an argv that starts with ``prefix`` (the latest registration wins)."""
        self.handlers.insert(0, (tuple(prefix), handler))

    def handler_for(self, argv: Sequence[str]) -> Handler | None:
        for prefix, handler in self.handlers:
            if tuple(argv[:len(prefix)]) == prefix:
                return handler
        return self.default

    def resolve(self, path: str) -> str:
        seen = 0
        path = posixpath.normpath(path)
        while path in self.links and seen < 40:
            path, seen = posixpath.normpath(self.links[path]), seen + 1
        return path

    def read(self, path: str) -> bytes:
        with self.lock:
            return self.files[self.resolve(path)]

    def write(self, path: str, data: bytes, *, executable: bool = False) -> None:
        with self.lock:
            path = posixpath.normpath(path)
            self.files[path] = bytes(data)
            (self.executable.add if executable else self.executable.discard)(path)
            self.dirs.add(posixpath.dirname(path))


_BOARDS: dict[str, FakeBoard] = {}
_BOARDS_LOCK = threading.Lock()


def fake_board(name: str) -> FakeBoard:
    """The board behind ``fake://NAME`` (made on first use, kept until :func:`reset_fake_boards`)."""
    with _BOARDS_LOCK:
        if name not in _BOARDS:
            _BOARDS[name] = FakeBoard(name)
        return _BOARDS[name]


def reset_fake_boards() -> None:
    """Forget every fake board (their files, handlers and counters)."""
    with _BOARDS_LOCK:
        _BOARDS.clear()


class FakeDevice(Device):
    """The full :class:`~edgerun.devices.base.Device` interface over a :class:`FakeBoard`."""

    transport = "fake"

    def __init__(self, spec):
        super().__init__(spec)
        self.board = fake_board(spec.board)
        self._connected = False
        with self.board.lock:
            self.board.opened += 1

    @property
    def default_work_dir(self) -> str:  # type: ignore[override]
        return f"/fake/{self.spec.board}/edgerun"

    def connect(self) -> None:
        self._check_open("connect")
        with self.board.lock:
            if self.board.unreachable:
                raise self._error(DeviceUnreachable, f"fake board {self.board.name} is unreachable", "connect")
            if not self._connected:
                self._connected = True
                self.board.connected += 1

    def close(self) -> None:
        if not self._closed:
            with self.board.lock:
                self.board.closed += 1
        super().close()

    # ------------------------------------------------------------------ interface
    def _exec(self, argv, *, timeout, env, cwd, on_stdout=None) -> ExecResult:
        """Run the board's handler. Nothing streams: a handler returns its output whole, so
        ``on_stdout`` gets all of stdout in one call once the "program" has ended (timed out too)."""
        self.connect()
        wrapped = bool(self.wrapper) and list(argv[:len(self.wrapper)]) == self.wrapper
        with self.board.lock:
            self.board.calls.append(FakeCall(tuple(argv), cwd, dict(env), timeout, wrapped))
        if argv[0] == "mkdir":
            return self._mkdir(argv)
        handler = self.board.handler_for(argv)
        if handler is None:
            return ExecResult(tuple(argv), 127, b"", f"fake: {argv[0]}: no handler registered\n".encode(), 0.0)
        answer = handler(list(argv))
        rc, out, err = answer[:3]
        duration = float(answer[3]) if len(answer) > 3 else 0.0
        result = ExecResult(tuple(argv), int(rc), bytes(out), bytes(err), duration,
                            int(rc) - 128 if 128 < int(rc) <= 192 else None)
        if on_stdout is not None and result.stdout:
            on_stdout(result.stdout)
        if duration > timeout:
            raise self._error(DeviceTimeout, f"{argv[0]} still running after {timeout:g} s; killed", "exec",
                              result=result, hint="Raise the timeout, or run fewer iterations.")
        return result

    def _mkdir(self, argv) -> ExecResult:
        with self.board.lock:
            for path in (a for a in argv[1:] if not a.startswith("-")):
                self.board.dirs.add(posixpath.normpath(path))
        return ExecResult(tuple(argv), 0, b"", b"", 0.0)

    def push(self, local, remote) -> None:
        self._check_open("push")
        self.connect()
        src = Path(local)
        if not src.is_file():
            raise self._error(DeviceError, f"cannot push {src}: no such file", "push")
        self.board.write(remote, src.read_bytes(), executable=os.access(src, os.X_OK))

    def pull(self, remote, local) -> None:
        self._check_open("pull")
        self.connect()
        try:
            data = self.board.read(remote)
        except KeyError:
            raise self._error(DeviceError, f"cannot pull {remote}: no such file on the device", "pull") from None
        dst = Path(local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)

    def info(self) -> DeviceInfo:
        self._check_open("info")
        self.connect()
        return self.board.info

    # ------------------------------------------------------------------ file-system helpers
    def prepare_work_dir(self, *, timeout: float = 60.0) -> str:
        self.connect()
        with self.board.lock:
            self.board.dirs.add(self.work_dir)
        return self.work_dir

    def file_digests(self, paths, *, timeout: float = 60.0):
        self.connect()
        with self.board.lock:
            found = {p: hashlib.sha256(self.board.files[self.board.resolve(p)]).hexdigest()
                     for p in paths if self.board.resolve(p) in self.board.files}
        return "sha256", found

    def link_files(self, dest, links, *, timeout: float = 60.0) -> None:
        self.connect()
        with self.board.lock:
            self.board.dirs.add(posixpath.normpath(dest))
            for name, target in links.items():
                self.board.links[posixpath.normpath(f"{dest}/{name}")] = target


__all__ = ["FakeSpec", "FakeDevice", "FakeBoard", "FakeCall", "fake_board", "reset_fake_boards"]
