"""``adb://SERIAL``: an Android phone or board, through the platform's own ``adb`` client.

Why the ``adb`` client (Debian package ``adb``) and not adbutils: adbutils re-implements the
client protocol but still needs the adb *server* that ships with the client, so the client is
there anyway; the official client follows every protocol change (shell v2 exit codes, sync v2)
and adds no Python dependency. ``$EDGERUN_ADB`` may name another client binary.

Programs run as ``adb -s SERIAL shell <script>`` through
:class:`~edgerun.devices.remote.RemoteShellDevice`, the base ssh shares (pid/status wrapper,
remote kill on timeout, connect retries, ``cleanup``), so timeouts kill the program on the phone
and a lost link reads as :class:`TransportDropped`; this module keeps adb's argv, its error
classification and ``adb push``/``pull``. A serial starting with ``-`` is refused. The work dir defaults to
``/data/local/tmp/edgerun`` (writable and executable for the shell user); an aarch64 bundle runs
there through its bundled loader (``./ld-linux-aarch64.so.1 --library-path . ./edgerun-runner``),
so it needs nothing of Android's bionic.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote

from edgerun.devices._client import run_client
from edgerun.devices.base import (DeviceAuthError, DeviceError, DeviceTimeout, DeviceUnreachable, ExecResult,
                                  NoSpaceError, TransportDropped, parse_remote_stderr)
from edgerun.devices.remote import RC_SUFFIX, TRANSFER_TIMEOUT, RemoteShellDevice
from edgerun.devices.spec import DeviceSpec, address, check_no_leading_dash, option, register_transport

log = logging.getLogger("edgerun.devices")


@register_transport
@dataclass(frozen=True)
class AdbSpec(DeviceSpec):
    """``adb://SERIAL`` (``adb://`` alone: the only device attached)."""

    transport: ClassVar[str] = "adb"
    device_class: ClassVar[str] = "edgerun.devices.adb:AdbDevice"
    about: ClassVar[str] = "adb://SERIAL"

    serial: str | None = address()
    server: str | None = option()  # HOST:PORT of the adb server the device is attached to (adb -H/-P); a lab's

    @classmethod
    def from_uri(cls, parts):
        return {"serial": unquote(parts.netloc)} if parts.netloc else {}

    def __post_init__(self):
        super().__post_init__()
        check_no_leading_dash("adb serial", self.serial)
        if self.server is not None:
            host, sep, port = self.server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"server must be HOST:PORT (an adb server, e.g. lab-host:5037), got {self.server!r}")
            check_no_leading_dash("adb server host", host)


class AdbDevice(RemoteShellDevice):
    transport = "adb"
    default_work_dir = "/data/local/tmp/edgerun"  # the shell user's own (0771 shell:shell) on Android

    def _adb(self) -> list[str]:
        client = os.environ.get("EDGERUN_ADB", "adb")
        path = shutil.which(client)
        if path is None:
            raise self._error(DeviceError, f"the adb client `{client}` is not installed", "connect",
                              hint="Install Debian's adb package (scripts/setup does) or set EDGERUN_ADB.")
        server = []
        if self.spec.server:
            host, _, port = self.spec.server.rpartition(":")
            server = ["-H", host, "-P", port]
        return [path] + server + (["-s", self.spec.serial] if self.spec.serial else [])

    @property
    def _label(self) -> str:
        return f"adb device {self.spec.serial or '(the only one attached)'}"

    def _client_argv(self, script: str) -> list[str]:
        return self._adb() + ["shell", script]

    def _open_once(self) -> DeviceError | None:
        """Is the device attached and authorised (``adb get-state`` says ``device``)?"""
        try:
            proc = subprocess.run(self._adb() + ["get-state"], capture_output=True,
                                  timeout=self.spec.connect_timeout, stdin=subprocess.DEVNULL)
            text = (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()
            if proc.returncode == 0 and text.endswith("device"):
                return None
        except subprocess.TimeoutExpired:
            text = f"adb get-state gave no answer within {self.spec.connect_timeout:g} s"
        return self._classify(text, "connect")

    def _classify(self, text: str, stage: str, result: ExecResult | None = None) -> DeviceError:
        last = text.strip().splitlines()[-1] if text.strip() else "adb failed without a message"
        low = text.lower()
        if "unauthorized" in low:
            return self._error(DeviceAuthError, f"{self._label} has not authorised this host: {last}", stage,
                               result=result, hint="Unlock the device and accept the USB-debugging prompt.")
        if any(w in low for w in ("not found", "no devices", "offline", "cannot connect", "closed",
                                  "more than one device", "protocol fault", "no emulators")):
            hint = ("Several devices are attached: name one with adb://SERIAL." if "more than one" in low
                    else "Is it plugged in with USB debugging on (`adb devices`)?")
            cls = DeviceError if "more than one" in low else DeviceUnreachable
            return self._error(cls, f"{self._label} is not reachable: {last}", stage, result=result, hint=hint)
        return self._error(DeviceError, f"adb failed: {last}", stage, result=result)

    def _transfer(self, args: list[str], stage: str, what: str) -> None:
        self.connect()
        proc, out, err, timed_out = run_client(self._adb() + args, timeout=TRANSFER_TIMEOUT)
        text = (out + err).decode("utf-8", "replace").strip()
        result = ExecResult(tuple(args), proc.returncode, out, err, 0.0)
        if timed_out:
            raise self._error(DeviceTimeout, f"{what}: no end after {TRANSFER_TIMEOUT:g} s", stage, result=result)
        if proc.returncode == 0:
            return
        if "No space left" in text:
            raise self._error(NoSpaceError, f"{what}: no space left on device", stage, result=result,
                              hint="Free space on the device or point work_dir at a larger partition.")
        err_ = self._classify(text, stage, result)
        if isinstance(err_, DeviceUnreachable):  # it answered get-state a moment ago
            self._connected = False
            raise self._error(TransportDropped, f"lost {self._label} {what}: {text.splitlines()[-1]}", stage,
                              result=result, hint="Reconnect the device and run again; files already "
                                                  "transferred are kept.")
        raise self._error(type(err_), f"{what} failed: {text.splitlines()[-1] if text else proc.returncode}",
                          stage, result=result, hint=err_.hint)

    def push(self, local, remote) -> None:
        self.push_many([(local, remote)])

    def push_many(self, pairs) -> None:
        """One shell for the directories, one ``adb push`` per file (to ``.part``), one shell to
        set modes and rename everything into place."""
        pairs = [(Path(local), remote) for local, remote in pairs]
        if not pairs:
            return
        self._check_open("push")
        for src, _ in pairs:
            if not src.is_file():
                raise self._error(DeviceError, f"cannot push {src}: no such file", "push")
        dirs = sorted({os.path.dirname(r) or "/" for _, r in pairs})
        self._sh(self._ensure_script(pairs[0][1]) + "mkdir -p " + " ".join(shlex.quote(d) for d in dirs), "push")
        for src, remote in pairs:
            self._transfer(["push", str(src), remote + ".part"], "push", f"pushing {src} to {remote}")
        self._sh(" && ".join(f"chmod {'755' if os.access(src, os.X_OK) else '644'} {shlex.quote(r + '.part')} && "
                             f"mv -f {shlex.quote(r + '.part')} {shlex.quote(r)}" for src, r in pairs), "push")

    def _sh(self, script: str, stage: str) -> None:
        """Run a device-side shell command of edgerun's own; fail loudly if it fails."""
        proc, out, err, timed_out = self._remote(script + RC_SUFFIX, timeout=60)
        status = parse_remote_stderr(err)
        result = ExecResult(("sh", "-c", script), status.rc if status.rc is not None else -1, out, status.stderr, 0.0)
        if timed_out or status.rc is None:
            raise self._error(TransportDropped, f"lost {self._label} during `{script[:80]}`", stage, result=result)
        if status.rc != 0:
            raise self._error(DeviceError, f"`{script[:80]}` failed: {status.stderr.decode('utf-8', 'replace').strip()}",
                              stage, result=result)

    def pull(self, remote, local) -> None:
        self._check_open("pull")
        dst = Path(local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        part = dst.with_name(dst.name + ".part")
        self._transfer(["pull", remote, str(part)], "pull", f"pulling {remote} to {dst} (partial copy at {part})")
        os.replace(part, dst)
