"""``serial:///dev/ttyUSB0?baud=115200``: a board on a UART, through the framed protocol of
``SERIAL_PROTOCOL.md`` (host side on pyserial).

Every request carries a seq and waits for the reply with that seq. A reply that does not come in
time, or comes corrupted, is asked for again (bounded); the agent answers a repeated seq from its
cache, so nothing -- a RUN least of all -- executes twice. No answer after the retries is a
:class:`TransportDropped` naming the device and the stage.

The cache lives in the agent's process, so a restarted agent would run a resent RUN again. Each
agent process is therefore a session (protocol 2): HELLO tells the host its id, every RUN names
the session it is sent to, and another session refuses it unexecuted. A RUN that had already been
sent once when its session vanished is a :class:`TransportDropped` ("may or may not have run; not
re-sent"); one refused on its first send never ran, and is sent again after a new HELLO.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote

from edgerun.core.text import sanitize_text
from edgerun.devices.base import (Device, DeviceError, DeviceTimeout, DeviceUnreachable, ExecResult, NoSpaceError,
                                  TransportDropped)
from edgerun.devices.info import DeviceInfo, apply_wrapper_emulation
from edgerun.devices.probe import parse_probe
from edgerun.devices.spec import DeviceSpec, address, option, register_transport
from edgerun.devices.workdir import check_work_dir
from edgerun.devices.serial_protocol import (CHUNK, PROTOCOL, FrameDecoder, Msg, encode, encode_json,
                                             pack_put_data)

log = logging.getLogger("edgerun.devices")

RETRIES = 3           # resends of one request before the link is declared dead
MAX_NAKS = 20         # "send that again" exchanges allowed within one request
BASE_TIMEOUT = 1.0    # seconds for a small reply, before transfer time at the baud rate
HEARTBEAT = 2.0       # the agent ACKs a running request about every second; allow a missed one


class _SessionChanged(Exception):
    """The agent refused a request meant for the session before it (internal to this module)."""

    def __init__(self, old: str | None, new: str | None, resent: bool):
        super().__init__(f"agent session {old} -> {new}")
        self.old, self.new, self.resent = old, new, resent


@register_transport
@dataclass(frozen=True)
class SerialSpec(DeviceSpec):
    """``serial:///dev/ttyUSB0?baud=115200``"""

    transport: ClassVar[str] = "serial"
    device_class: ClassVar[str] = "edgerun.devices.serial_device:SerialDevice"
    about: ClassVar[str] = "serial:///dev/ttyUSB0?baud=115200"

    path: str | None = address()
    baud: int = option(115200)

    @classmethod
    def from_uri(cls, parts):
        return {"path": unquote(parts.path or "")}

    def __post_init__(self):
        super().__post_init__()
        if not self.path:
            raise ValueError("a serial device needs a port path: serial:///dev/ttyUSB0")
        if self.baud <= 0:
            raise ValueError(f"baud must be > 0, got {self.baud}")


class SerialDevice(Device):
    transport = "serial"

    def __init__(self, spec):
        super().__init__(spec)
        self._port = None
        self._decoder = FrameDecoder()
        self._seq = 0
        self.hello: dict | None = None
        self.session: str | None = None  # the agent process we talk to (None: a protocol-1 agent has none)
        self.stats = {"resends": 0, "naks_sent": 0}
        self._lock = threading.RLock()  # one conversation on the wire at a time

    # ------------------------------------------------------------------ link
    def connect(self) -> None:
        self._check_open("connect")
        with self._lock:
            if self._port is None:
                self._connect()

    def _connect(self) -> None:
        try:
            import serial  # pyserial
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise self._error(DeviceError, "pyserial is not installed", "connect",
                              hint="pip install pyserial") from exc
        try:
            self._port = serial.serial_for_url(self.spec.path, baudrate=self.spec.baud, timeout=0.05)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise self._error(DeviceUnreachable, f"cannot open serial port {self.spec.path}: {exc}", "connect",
                              hint="Is the board plugged in, the path right and the port free?") from exc
        try:
            self._hello()
        except DeviceError:
            self._port.close()
            self._port = None
            raise

    @property
    def resident_runner(self) -> dict | None:
        """The board's resident ExecuTorch runner as its HELLO reply describes it (SERIAL_PROTOCOL.md, "Board
        runners"): RUN ``argv[0] == "edgerun-runner"`` starts it. None when the agent named none."""
        self.connect()
        runner = (self.hello or {}).get("runner")
        return runner if isinstance(runner, dict) else None

    def _hello(self) -> None:
        """Handshake: learn the agent's protocol, work_dir and session (again after a restart)."""
        def hello(protocol: int) -> dict:
            # a board just reset may miss the first HELLO: one extra attempt beyond the retries
            return self._request(Msg.HELLO, encode_json, {"protocol": protocol}, stage="connect",
                                 retries=self.spec.connect_retries + 1,
                                 timeout=min(self.spec.connect_timeout, self._attempt_timeout(512))).json()

        try:
            reply = hello(PROTOCOL)
        except DeviceError as exc:
            if getattr(exc, "agent_kind", None) != "version":
                raise
            # a protocol-1 agent (older firmware) refuses 2: speak 1, which has no sessions
            reply = hello(1)
            log.warning("%s: the agent speaks serial protocol 1 only: a RUN resent to it after it restarted "
                        "would run again; update the agent for protocol 2", self.name)
        self.hello = reply
        self.session = reply.get("session") if reply.get("protocol", 1) >= 2 else None

    def _attempt_timeout(self, nbytes: int) -> float:
        """Silence allowed for ``nbytes`` on the wire: 10 bits a byte at the baud rate, tripled."""
        return BASE_TIMEOUT + 3 * nbytes * 10 / self.spec.baud

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFE + 1
        return self._seq

    def _request(self, msg: Msg, encoder, payload, *, stage: str, timeout: float | None = None,
                 retries: int = RETRIES, work_timeout: float | None = None, reply_bytes: int = 256):
        """Send one request and return its reply frame; resend (same seq) on silence or corruption.

        ``timeout`` bounds each silent wait. A long request (RUN, INFO) is ACKed by the agent about
        once a second while it works: each ACK proves the link alive, and the whole request may
        take up to ``work_timeout``.
        """
        with self._lock:
            return self._request_locked(msg, encoder, payload, stage=stage, timeout=timeout, retries=retries,
                                        work_timeout=work_timeout, reply_bytes=reply_bytes)

    def _request_locked(self, msg, encoder, payload, *, stage, timeout, retries, work_timeout, reply_bytes):
        seq = self._next_seq()
        frame = encoder(msg, seq, payload)
        wait = timeout if timeout is not None else self._attempt_timeout(len(frame) + reply_bytes)
        give_up = time.monotonic() + (work_timeout or 0) + wait * (retries + 1 + MAX_NAKS) + 1
        naks = 0
        writes = 0  # times the request went out: more than one, and a new session may not run it
        for attempt in range(retries + 1):
            if attempt:
                self.stats["resends"] += 1
                log.debug("%s: resending %s seq %d (attempt %d)", self.name, msg.name, seq, attempt + 1)
            self._write(frame, stage)
            writes += 1
            deadline = time.monotonic() + wait
            while time.monotonic() < min(deadline, give_up):
                for f in self._read(stage):
                    if f.seq != seq:
                        continue  # a late duplicate of an earlier reply
                    if f.type == Msg.NAK and naks < MAX_NAKS:  # our request arrived corrupted
                        naks += 1
                        self._write(frame, stage)
                        writes += 1
                        deadline = time.monotonic() + wait
                    elif f.type == Msg.ACK:
                        deadline = time.monotonic() + wait + HEARTBEAT
                    elif f.type == Msg.ERROR:
                        err = f.json()
                        if err.get("kind") == "session":  # sent to an agent that is no longer there
                            raise _SessionChanged(payload.get("session") if isinstance(payload, dict) else None,
                                                  err.get("session"), resent=writes > 1)
                        raise self._agent_error(err, stage)
                    elif f.type == msg | Msg.REPLY:
                        return f
                while self._decoder.bad_seqs:  # a reply arrived corrupted: ask for it again
                    if self._decoder.bad_seqs.pop(0) == seq and naks < MAX_NAKS:
                        naks += 1
                        self.stats["naks_sent"] += 1
                        self._write(encode(Msg.NAK, seq), stage)
                        deadline = time.monotonic() + wait + (HEARTBEAT if work_timeout else 0)
        cls = DeviceUnreachable if stage == "connect" else TransportDropped
        raise self._error(cls, f"no reply to {msg.name} on {self.spec.path} after {retries + 1} attempts "
                               f"({self._decoder.garbage_bytes} garbage bytes, {self._decoder.bad_frames} bad frames)",
                          stage, hint="Is the agent running on the board, at the same baud rate? "
                                      "Nothing was re-run: a repeated request is answered from the agent's "
                                      "cache, and an agent restarted since refuses a resent RUN.")

    def _write(self, data: bytes, stage: str) -> None:
        try:
            self._port.write(data)
        except Exception as exc:  # pyserial raises SerialException / OSError when the port goes
            raise self._error(TransportDropped, f"writing to {self.spec.path} failed: {exc}", stage) from exc

    def _read(self, stage: str):
        try:
            data = self._port.read(max(1, self._port.in_waiting))
        except Exception as exc:
            raise self._error(TransportDropped, f"reading from {self.spec.path} failed: {exc}", stage) from exc
        return self._decoder.feed(data) if data else []

    def _agent_error(self, err: dict, stage: str) -> DeviceError:
        kind, message = err.get("kind", "?"), err.get("message", "")
        if kind == "no_space":
            exc = self._error(NoSpaceError, f"no space left on device: {message}", stage,
                              hint="Free space on the board or point work_dir elsewhere.")
        else:
            exc = self._error(DeviceError, f"agent refused ({kind}): {message}", stage)
        exc.agent_kind = kind
        return exc

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except Exception:  # closing a port that already vanished
                pass
            self._port = None
        super().close()

    # ------------------------------------------------------------------ interface
    @property
    def work_dir(self) -> str:
        if self.spec.work_dir:
            return self.spec.work_dir
        self.connect()
        try:
            return check_work_dir(str(self.hello["work_dir"]))
        except (KeyError, ValueError) as exc:
            raise self._error(DeviceError, f"the agent's work_dir is not usable: {exc}", "connect",
                              hint="Set work_dir in the inventory entry or the URI.") from None

    def _exec(self, argv, *, timeout, env, cwd, on_stdout=None) -> ExecResult:
        """One RUN. Output does not stream over the link: the agent sends it in the RUN reply (or
        spools it for GETs) once the program has ended, so ``on_stdout`` gets all of stdout in one
        call then -- a timed-out program's partial stdout too, before the DeviceTimeout."""
        with self._lock:  # RUN and the GETs of its spooled output belong together
            result, timed_out = self._exec_locked(argv, timeout=timeout, env=env, cwd=cwd)
        if on_stdout is not None and result.stdout:
            on_stdout(result.stdout)  # outside the lock: a slow consumer does not hold up the link
        if timed_out:
            raise self._error(DeviceTimeout, f"{argv[0]} still running after {timeout:g} s; killed by the agent",
                              "exec", result=result, hint="Raise the timeout, or run fewer iterations.")
        return result

    def _exec_locked(self, argv, *, timeout, env, cwd) -> tuple[ExecResult, bool]:
        self.connect()
        req = {"argv": argv, "env": env, "cwd": cwd, "timeout": timeout}
        for first in (True, False):
            if self.session is not None:
                req["session"] = self.session  # only that agent process may run it
            try:
                reply = self._request(Msg.RUN, encode_json, req, stage="exec", work_timeout=timeout + 10).json()
                break
            except _SessionChanged as exc:
                if exc.resent:  # the old session may have run it before it went: never a second time
                    raise self._error(
                        TransportDropped,
                        f"the board's agent restarted (session {exc.old} -> {exc.new}) while running "
                        f"{argv[0]}; the program may or may not have run; not re-sent", "exec",
                        hint="Check the board (power, resets, the agent's log) and the program's effects "
                             "before running it again.") from None
                if not first:
                    raise self._error(TransportDropped, f"the board's agent keeps restarting (session "
                                                        f"{exc.old} -> {exc.new}); {argv[0]} not run", "exec") from None
                # refused on its only send: it never ran. The agent restarted between requests.
                log.info("%s: agent restarted since the last request (session %s -> %s); handshaking again",
                         self.name, exc.old, exc.new)
                self._hello()
        out = self._output(reply, "stdout")
        err = self._output(reply, "stderr")
        result = ExecResult(tuple(argv), reply["rc"], out, err, reply["duration_s"], reply.get("signal"))
        return result, bool(reply.get("timed_out"))

    def _output(self, reply: dict, name: str) -> bytes:
        if name in reply:
            return base64.b64decode(reply[name])
        path = reply[f"{name}_path"]  # too big for one frame: fetch it like a file
        data = bytearray()
        self._get(path, lambda block: data.extend(block), "exec")
        return bytes(data)

    def push(self, local, remote) -> None:
        self.connect()
        src = Path(local)
        if not src.is_file():
            raise self._error(DeviceError, f"cannot push {src}: no such file", "push")
        size = src.stat().st_size
        mode = 0o755 if os.access(src, os.X_OK) else 0o644
        self._request(Msg.PUT_OPEN, encode_json, {"path": remote, "size": size, "mode": mode}, stage="push")
        h = hashlib.sha256()
        with open(src, "rb") as f:
            offset = 0
            while block := f.read(CHUNK):
                h.update(block)
                self._request(Msg.PUT_DATA, encode, pack_put_data(offset, block), stage="push")
                offset += len(block)
        self._request(Msg.PUT_CLOSE, encode_json, {"sha256": h.hexdigest()}, stage="push")

    def pull(self, remote, local) -> None:
        self.connect()
        dst = Path(local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        part = dst.with_name(dst.name + ".part")
        with open(part, "wb") as f:
            want = self._get(remote, f.write, "pull")
        if hashlib.sha256(part.read_bytes()).hexdigest() != want:
            raise self._error(DeviceError, f"pulled {remote} does not match its sha256 (kept at {part})", "pull")
        os.replace(part, dst)

    def _get(self, remote: str, sink, stage: str) -> str:
        meta = self._request(Msg.GET_OPEN, encode_json, {"path": remote}, stage=stage).json()
        offset = 0
        while offset < meta["size"]:
            block = self._request(Msg.GET_DATA, encode_json, {"path": remote, "offset": offset, "size": CHUNK},
                                  stage=stage, reply_bytes=CHUNK + 64).payload
            if not block:
                raise self._error(TransportDropped, f"{remote} shrank while being pulled", stage)
            sink(block)
            offset += len(block)
        return meta["sha256"]

    def info(self) -> DeviceInfo:
        self._check_open("info")
        if self._info is None:
            self.connect()
            reply = self._request(Msg.INFO, encode_json, {}, stage="probe",
                                  work_timeout=self.spec.probe_timeout).json()
            try:
                info = info_from_reply(reply, self.hello or {})
            except (TypeError, ValueError, KeyError) as exc:
                raise self._error(DeviceError, f"the agent's INFO reply is malformed: {exc}", "probe") from exc
            self._info = apply_wrapper_emulation(info, self.wrapper)
        return self._info


def info_from_reply(reply: dict, hello: dict) -> DeviceInfo:
    """An INFO reply -> DeviceInfo: a Linux agent sends its probe output, firmware its own fields.

    An agent that says ``emulated`` in HELLO makes the device emulated, naming the stand-in.
    """
    if "probe" in reply:
        info = parse_probe(reply["probe"], transport="serial")
    else:
        known = {f.name for f in dataclasses.fields(DeviceInfo)}
        info = DeviceInfo(**{k: sanitize_text(v) if isinstance(v, str) else v  # printed later: no escapes
                             for k, v in reply["info"].items() if k in known and k != "transport"},
                          transport="serial")
    if hello.get("emulated") and not info.emulated:
        info = dataclasses.replace(info, emulated=True, emulator=hello.get("emulator") or "serial agent stand-in")
    return info
