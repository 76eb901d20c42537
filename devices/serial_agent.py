"""The board side of the serial protocol, in Python: ``python -m edgerun.devices.serial_agent PORT SANDBOX``.

It answers the frames of ``SERIAL_PROTOCOL.md`` on a serial port (a UART, or one end of a
pseudo-terminal pair in tests): it stores pushed files inside ``SANDBOX`` (file requests outside
it are refused), serves pulls from there, and runs RUN requests as local processes with a
timeout. Until board firmware exists this agent *stands in* for it, so by default it reports its
results as **emulated** (``--no-emulated`` when it runs on the real target board itself, e.g. a
Linux board with Python, whose timings are then measured there).

A request repeated with the same seq (the host did not hear the reply) gets the cached reply
again: a RUN is never executed twice because a reply was lost. That cache dies with the process,
so each agent process is a *session* with a random id (announced in HELLO, printed at start):
a RUN names the session it was sent to and a different session refuses it (ERROR ``session``)
instead of running it -- a restarted agent cannot run a resent program a second time.

With ``--runner BUNDLE_DIR`` it also stands in for a board whose ExecuTorch runner is *resident* (in
firmware, not pushed): HELLO describes that runner (``"runner"``: SERIAL_PROTOCOL.md, "Board runners") and a
RUN whose ``argv[0]`` is ``edgerun-runner`` runs the bundle's runner with the rest of the argv (the native
runner's flags, runtime/native/PROTOCOL.md), so the contract a board runner implements is tested here
against a real ExecuTorch runner.
"""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time

from edgerun.devices.serial_protocol import (CHUNK, MAX_PAYLOAD, PROTOCOL, PROTOCOLS, Frame, FrameDecoder, Msg,
                                             encode, encode_json, unpack_put_data)

INLINE_OUTPUT = MAX_PAYLOAD // 2  # base64 grows by 4/3; both streams must fit one frame


class RequestError(Exception):
    def __init__(self, kind: str, message: str, **extra):
        super().__init__(message)
        self.kind = kind
        self.extra = extra  # more fields of the ERROR payload


class SessionMismatch(RequestError):
    def __init__(self, meant: str, mine: str):
        super().__init__("session", f"request meant for agent session {meant}, this is session {mine} "
                                    f"(the agent restarted): not executed", session=mine)


class Agent:
    def __init__(self, port, sandbox: str, *, emulated: bool = True, runner: str | None = None):
        self.port = port
        self.runner = _resident_runner(runner) if runner else None   # (HELLO description, argv prefix)
        self.sandbox = os.path.realpath(sandbox)
        os.makedirs(self.sandbox, exist_ok=True)
        self.emulated = emulated
        self.decoder = FrameDecoder()
        self.session = secrets.token_hex(8)  # this process: its reply cache is gone when it is
        self.last_seq: int | None = None
        self.last_request: tuple | None = None  # (type, seq, payload) of the request last answered
        self.last_reply: bytes | None = None
        self.put: dict | None = None
        self.current_seq = 0

    # ----------------------------------------------------------------- loop
    def serve(self) -> None:
        while True:
            data = self.port.read(max(1, self.port.in_waiting))  # returns as soon as bytes are there
            frames = self.decoder.feed(data) if data else []
            while self.decoder.bad_seqs:  # a frame arrived corrupted: ask for it again
                self.port.write(encode(Msg.NAK, self.decoder.bad_seqs.pop(0)))
            for frame in frames:
                self.handle(frame)

    def handle(self, frame: Frame) -> None:
        if frame.type == Msg.NAK:  # the host did not get our reply intact
            if self.last_reply is not None and frame.seq == self.last_seq:
                self.port.write(self.last_reply)
            return
        key = (frame.type, frame.seq, frame.payload)
        if key == self.last_request and self.last_reply is not None:
            self.port.write(self.last_reply)  # a repeat: never execute twice
            return
        self.current_seq = frame.seq
        try:
            self._check_session(frame)
            reply = self.dispatch(frame)
        except RequestError as exc:
            reply = encode_json(Msg.ERROR, frame.seq, {"kind": exc.kind, "message": str(exc), **exc.extra})
        except Exception as exc:  # the agent must survive anything a request does
            reply = encode_json(Msg.ERROR, frame.seq, {"kind": "agent", "message": f"{type(exc).__name__}: {exc}"})
        self.last_seq, self.last_request, self.last_reply = frame.seq, key, reply
        self.port.write(reply)

    def _check_session(self, frame: Frame) -> None:
        """A RUN meant for another session (an agent that was before this one) is refused, not run:
        it may be a resend of one that the previous agent already ran."""
        if frame.type != Msg.RUN:
            return
        meant = frame.json().get("session")  # a protocol-1 host sends none: nothing to check
        if meant is not None and meant != self.session:
            raise SessionMismatch(meant, self.session)

    def dispatch(self, frame: Frame) -> bytes:
        handlers = {Msg.HELLO: self.hello, Msg.INFO: self.info, Msg.PUT_OPEN: self.put_open,
                    Msg.PUT_DATA: self.put_data, Msg.PUT_CLOSE: self.put_close, Msg.GET_OPEN: self.get_open,
                    Msg.GET_DATA: self.get_data, Msg.RUN: self.run}
        handler = handlers.get(frame.type)
        if handler is None:
            raise RequestError("bad_request", f"unknown message type 0x{frame.type:02x}")
        out = handler(frame)
        if isinstance(out, dict):
            return encode_json(frame.type | Msg.REPLY, frame.seq, out)
        return encode(frame.type | Msg.REPLY, frame.seq, out)

    # ----------------------------------------------------------------- handlers
    def _path(self, path: str) -> str:
        real = os.path.realpath(path if os.path.isabs(path) else os.path.join(self.sandbox, path))
        if os.path.commonpath([real, self.sandbox]) != self.sandbox:
            raise RequestError("outside_sandbox", f"{path} is outside the agent's sandbox {self.sandbox}")
        return real

    def hello(self, frame: Frame) -> dict:
        asked = frame.json().get("protocol")
        if asked not in PROTOCOLS:
            raise RequestError("version", f"agent speaks protocols {'/'.join(map(str, PROTOCOLS))}, "
                                          f"host asked for {asked}", protocols=list(PROTOCOLS))
        return {"protocol": asked, "session": self.session, "agent": "edgerun-serial-agent",
                "agent_version": _version(),
                "emulated": self.emulated,
                "emulator": "edgerun serial agent (a host process standing in for board firmware)"
                if self.emulated else None,
                "work_dir": self.sandbox, "max_payload": MAX_PAYLOAD, "chunk": CHUNK,
                **({"runner": self.runner[0]} if self.runner else {})}

    def info(self, frame: Frame) -> dict:
        from edgerun.devices.probe import probe_script

        proc = subprocess.Popen(["sh", "-c", probe_script(self.sandbox)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        out, _, _ = self._communicate(proc, 60.0)
        return {"probe": out.decode("utf-8", "replace")}

    def _communicate(self, proc: subprocess.Popen, timeout: float) -> tuple[bytes, bytes, bool]:
        """Wait for ``proc`` (killing its group after ``timeout``), ACKing the request every second."""
        deadline = time.monotonic() + timeout
        self.port.write(encode(Msg.ACK, self.current_seq))
        while True:
            try:
                out, err = proc.communicate(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
                return out or b"", err or b"", False
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    break
                self.port.write(encode(Msg.ACK, self.current_seq))  # still working: the link is alive
        for s in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, s)
                proc.wait(timeout=1)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        out, err = proc.communicate()
        return out or b"", err or b"", True

    def put_open(self, frame: Frame) -> dict:
        req = frame.json()
        path = self._path(req["path"])
        if self.put is not None:
            self.put["file"].close()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        part = path + ".part"
        self.put = {"path": path, "part": part, "size": int(req["size"]), "mode": int(req.get("mode", 0o644)),
                    "file": open(part, "wb"), "sha": hashlib.sha256(), "written": 0}
        return {}

    def put_data(self, frame: Frame) -> dict:
        if self.put is None:
            raise RequestError("bad_request", "PUT_DATA without PUT_OPEN")
        offset, data = unpack_put_data(frame.payload)
        if offset != self.put["written"]:
            raise RequestError("bad_request", f"PUT_DATA at {offset}, expected {self.put['written']}")
        try:
            self.put["file"].write(data)
            self.put["file"].flush()
        except OSError as exc:
            kind = "no_space" if exc.errno == errno.ENOSPC else "io"
            path = self.put["path"]
            self._abort_put()
            raise RequestError(kind, f"writing {path}: {exc.strerror}") from None
        self.put["sha"].update(data)
        self.put["written"] += len(data)
        return {"received": self.put["written"]}

    def _abort_put(self) -> None:
        if self.put is not None:
            try:
                self.put["file"].close()
            except OSError:
                pass
            try:
                os.unlink(self.put["part"])
            except OSError:
                pass
            self.put = None

    def put_close(self, frame: Frame) -> dict:
        if self.put is None:
            raise RequestError("bad_request", "PUT_CLOSE without PUT_OPEN")
        put, self.put = self.put, None
        try:
            put["file"].close()
        except OSError as exc:
            kind = "no_space" if exc.errno == errno.ENOSPC else "io"
            raise RequestError(kind, f"closing {put['path']}: {exc.strerror}") from None
        want = frame.json().get("sha256")
        if put["written"] != put["size"] or put["sha"].hexdigest() != want:
            os.unlink(put["part"])
            raise RequestError("corrupt", f"{put['path']}: got {put['written']} bytes / sha256 "
                                          f"{put['sha'].hexdigest()[:12]}, expected {put['size']} / {str(want)[:12]}")
        os.chmod(put["part"], put["mode"])
        os.replace(put["part"], put["path"])
        return {}

    def get_open(self, frame: Frame) -> dict:
        path = self._path(frame.json()["path"])
        if not os.path.isfile(path):
            raise RequestError("not_found", f"{path}: no such file")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return {"size": os.path.getsize(path), "sha256": h.hexdigest()}

    def get_data(self, frame: Frame) -> bytes:
        req = frame.json()
        path = self._path(req["path"])
        size = min(int(req["size"]), MAX_PAYLOAD)
        try:
            with open(path, "rb") as f:
                f.seek(int(req["offset"]))
                return f.read(size)
        except FileNotFoundError:
            raise RequestError("not_found", f"{path}: no such file") from None

    def run(self, frame: Frame) -> dict:
        req = frame.json()
        argv, timeout = req["argv"], float(req["timeout"])
        if self.runner and argv and argv[0] == RUNNER_ARGV0:   # the resident runner, by its protocol name
            argv = [*self.runner[1], *argv[1:]]
        cwd = req.get("cwd") or self.sandbox
        if not os.path.isdir(cwd):
            raise RequestError("exec", f"working directory {cwd} does not exist")
        env = {**os.environ, **req.get("env", {})}
        start = time.monotonic()
        sig = None
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            rc = 127 if isinstance(exc, FileNotFoundError) else 126
            return self._result(rc, None, 0.0, False, b"", f"agent: {argv[0]}: {exc.strerror}\n".encode())
        out, err, timed_out = self._communicate(proc, timeout)
        rc = proc.returncode
        if rc < 0:
            rc, sig = 128 - rc, -rc
        return self._result(rc, sig, time.monotonic() - start, timed_out, out, err)

    def _result(self, rc, sig, duration, timed_out, out: bytes, err: bytes) -> dict:
        res = {"rc": rc, "signal": sig, "duration_s": duration, "timed_out": timed_out}
        if len(out) + len(err) <= INLINE_OUTPUT:
            res["stdout"] = base64.b64encode(out).decode()
            res["stderr"] = base64.b64encode(err).decode()
            return res
        spool = os.path.join(self.sandbox, ".edgerun-serial")
        os.makedirs(spool, exist_ok=True)
        for name, data in (("stdout", out), ("stderr", err)):
            path = os.path.join(spool, f"last.{name}")
            with open(path, "wb") as f:
                f.write(data)
            res[f"{name}_path"] = path
        return res


#: ``argv[0]`` of a RUN meant for a board's resident runner (SERIAL_PROTOCOL.md, "Board runners")
RUNNER_ARGV0 = "edgerun-runner"


def _resident_runner(bundle_dir: str) -> tuple[dict, list[str]]:
    """(HELLO's ``runner`` object, the argv prefix that starts it) for a runtime bundle standing in for a board's
    resident runner: what its ``bundle.json`` says it holds (read as data: the devices layer imports no runtime)."""
    import json

    d = os.path.realpath(bundle_dir)
    with open(os.path.join(d, "bundle.json")) as f:
        meta = json.load(f)
    start = list(meta.get("start") or ["./" + str(meta.get("runner", RUNNER_ARGV0))])
    start = start[:start.index("--model")] if "--model" in start else start
    prefix = [os.path.join(d, a[2:]) if a.startswith("./") else d if a == "." else a for a in start]
    desc = {"argv0": RUNNER_ARGV0, "runner_protocol": 1, "resident": True, "name": str(meta.get("runner")),
            "version": str(meta.get("runner_version")), "arch": str(meta.get("arch")),
            "executorch": str(meta.get("executorch_version")), "backends": list(meta.get("backends") or []),
            "operators": len(meta.get("operators") or []),
            "flags": ["--model", "--method", "--input", "--warmup", "--iterations", "--etdump", "--output-dir",
                      # a program's external data file, when the runner says it takes one (bundle.json features)
                      *(["--ptd"] if "ptd" in (meta.get("features") or []) else [])]}
    return desc, prefix


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("edgerun")
    except metadata.PackageNotFoundError:  # copied onto a board without installing
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgerun.devices.serial_agent", description=__doc__.split("\n")[0])
    parser.add_argument("port", help="serial port path (e.g. /dev/ttyGS0, or a pty)")
    parser.add_argument("sandbox", help="directory the agent keeps files in")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--no-emulated", dest="emulated", action="store_false",
                        help="this agent runs on the real target board: its timings are measured, not emulated")
    parser.add_argument("--runner", metavar="BUNDLE_DIR",
                        help="stand in for a board with a resident runner: this runtime bundle's runner answers RUNs "
                             f"whose argv[0] is {RUNNER_ARGV0} (SERIAL_PROTOCOL.md, 'Board runners')")
    args = parser.parse_args(argv)
    import serial  # pyserial

    port = serial.serial_for_url(args.port, baudrate=args.baud, timeout=0.05)
    try:
        agent = Agent(port, args.sandbox, emulated=args.emulated, runner=args.runner)
        print(f"edgerun serial agent: serving {args.port}, sandbox {agent.sandbox}, session {agent.session} "
              f"(protocol {PROTOCOL})", flush=True)
        agent.serve()
    except (serial.SerialException, OSError) as exc:
        print(f"serial agent: port {args.port} closed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
