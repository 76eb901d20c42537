"""``ssh://user@host:port``: a Pi, a Jetson, any Linux box, through OpenSSH's own ``ssh`` client.

Why OpenSSH's client (Debian ``openssh-client``) and not a Python library: it is the client the
boards' users already trust and configure; it verifies host keys against ``known_hosts`` exactly as
they expect (``StrictHostKeyChecking=yes``; ``accept-new`` only on the explicit
``accept_new_host_key`` opt-in), honours their agent and ``~/.ssh/config``, and adds no dependency
to the wheel. One master connection per device (``ControlMaster``) carries every command, so auth
and host-key problems surface once, at ``connect``, and later commands cost no handshake.

Files move as ``cat`` streams over the same connection (``.part`` + rename: atomic), so there is
no scp/sftp path-quoting dialect; every remote argument is quoted with ``shlex`` and run by
``sh -c`` -- nothing from argv, env or a path reaches a remote shell as code.

Running programs (the pid/status wrapper, the remote kill on timeout, connect retries, the
private default work dir, ``cleanup``) is shared with adb in
:class:`~edgerun.devices.remote.RemoteShellDevice`; this module keeps ssh's argv (``--`` before
the destination, so no host reads as an option), its master connection, its error
classification (a *changed* host key says "possible man-in-the-middle") and its file streams.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote

from edgerun.devices.base import (DeviceAuthError, DeviceError, DeviceTimeout, DeviceUnreachable, ExecResult,
                                  NoSpaceError, TransportDropped, parse_remote_stderr)
from edgerun.devices.remote import RC_SUFFIX as _STATUS
from edgerun.devices.remote import TRANSFER_TIMEOUT, RemoteShellDevice
from edgerun.devices.spec import DeviceSpec, address, check_no_leading_dash, option, register_transport

log = logging.getLogger("edgerun.devices")

_CHANGED = re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed|"
                      r"host key .*(?:has changed|does not match)", re.I)
_HOSTKEY = re.compile(r"Host key verification failed|host key is known|No .*host key is known", re.I)
_AUTH = re.compile(r"Permission denied|Too many authentication failures|no mutual signature", re.I)
_UNREACHABLE = re.compile(r"Connection refused|Connection timed out|timed out|No route to host|"
                          r"Could not resolve hostname|Network is unreachable|Connection reset|"
                          r"kex_exchange_identification|Connection closed by|banner exchange", re.I)


@register_transport
@dataclass(frozen=True)
class SshSpec(DeviceSpec):
    """``ssh://user@host:port?identity_file=..&known_hosts=..``"""

    transport: ClassVar[str] = "ssh"
    device_class: ClassVar[str] = "edgerun.devices.ssh:SshDevice"
    about: ClassVar[str] = "ssh://user@host:port"

    host: str | None = address()
    user: str | None = address()
    port: int | None = address()
    identity_file: str | None = option(path=True)
    known_hosts: str | None = option(path=True)
    accept_new_host_key: bool = option(False)  # explicit opt-in to trust an unknown host key

    @classmethod
    def from_uri(cls, parts):
        if not parts.hostname:
            raise ValueError(f"no host in {parts.geturl()!r}; expected ssh://user@host[:port]")
        if parts.password is not None:
            raise ValueError("passwords in ssh URIs are not supported; use key auth (identity_file)")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in {parts.geturl()!r}: {exc}") from None
        return {"host": parts.hostname, "user": unquote(parts.username) if parts.username else None, "port": port}

    def __post_init__(self):
        super().__post_init__()
        if not self.host:
            raise ValueError("an ssh device needs a host: ssh://user@host[:port]")
        check_no_leading_dash("ssh host", self.host)
        check_no_leading_dash("ssh user", self.user)
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")

    def check_local(self) -> None:
        if self.identity_file and not os.path.isfile(self.identity_file):
            raise ValueError(f"identity_file {self.identity_file} does not exist")
        if self.known_hosts and not os.path.isfile(self.known_hosts) and not self.accept_new_host_key:
            raise ValueError(f"known_hosts {self.known_hosts} does not exist (and accept_new_host_key is off, so "
                             "no host key could ever be trusted)")


def _ssh_path(path: str, what: str, device: str) -> str:
    """``path`` as ssh reads a file option: its ``%`` tokens (``%d``, ``%h`` ...) escaped as ``%%`` so the
    path is the file named, not an expansion; a ``"`` or a control character, which no ssh option value
    can hold, is refused."""
    if '"' in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise DeviceError(f"{what} {path!r} contains a double quote or a control character, which ssh cannot "
                          "take in a file option", device=device, stage="connect",
                          hint="Move the file to a plainer path.")
    return path.replace("%", "%%")


class SshDevice(RemoteShellDevice):
    transport = "ssh"

    def __init__(self, spec):
        super().__init__(spec)
        self._ctl_dir: str | None = None

    # ------------------------------------------------------------------ the client
    @property
    def _target(self) -> str:
        return self.spec.host

    @property
    def _label(self) -> str:
        return f"{self.spec.user + '@' if self.spec.user else ''}{self.spec.host}:{self.spec.port or 22}"

    def _ssh_args(self) -> list[str]:
        s = self.spec
        args = ["ssh", "-o", "BatchMode=yes",
                "-o", f"StrictHostKeyChecking={'accept-new' if s.accept_new_host_key else 'yes'}",
                "-o", f"ConnectTimeout={max(1, math.ceil(s.connect_timeout))}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR"]
        if s.known_hosts:
            args += ["-o", f'UserKnownHostsFile="{_ssh_path(s.known_hosts, "known_hosts", self.name)}"',
                     "-o", "GlobalKnownHostsFile=/dev/null"]
        if s.identity_file:
            # as an option, not -i: -i checks the literal path but then expands its % tokens
            args += ["-o", f'IdentityFile="{_ssh_path(s.identity_file, "identity_file", self.name)}"', "-o", "IdentitiesOnly=yes"]
        if s.port:
            args += ["-p", str(s.port)]
        if s.user:
            args += ["-l", s.user]
        if self._ctl_dir:
            args += ["-o", f'ControlPath="{_ssh_path(self._ctl_dir, "the control socket directory", self.name)}/m"']
        return args

    def _destination(self, *extra: str) -> list[str]:
        """``-- HOST [command]``: after ``--`` nothing (a host, a command) can be read as an option."""
        return ["--", self._target, *extra]

    def _client_argv(self, script: str) -> list[str]:
        return self._ssh_args() + ["-o", "ControlMaster=no"] + self._destination(shlex.join(["sh", "-c", script]))

    # ------------------------------------------------------------------ connection
    def _before_connect(self) -> bool:
        if shutil.which("ssh") is None:
            raise self._error(DeviceError, "the OpenSSH client `ssh` is not installed", "connect",
                              hint="Install Debian's openssh-client package.")
        if self.spec.identity_file and not os.path.isfile(self.spec.identity_file):
            raise self._error(DeviceAuthError, f"identity file {self.spec.identity_file} does not exist",
                              "connect", hint="Fix identity_file in the inventory or the URI.")
        if self._ctl_dir is None:
            self._ctl_dir = tempfile.mkdtemp(prefix="edgerun-ssh-")
        elif self._master_alive():  # a session died but the master lived on: keep using it
            return True
        else:  # a dead master's socket would make the new one give up multiplexing
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._ctl_dir, "m"))
        return False

    def _connect_failed(self) -> None:
        if self._ctl_dir:
            shutil.rmtree(self._ctl_dir, ignore_errors=True)
        self._ctl_dir = None

    def _master_alive(self) -> bool:
        try:
            return subprocess.run(self._ssh_args() + ["-O", "check"] + self._destination(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _open_once(self) -> DeviceError | None:
        with tempfile.TemporaryFile() as errf:
            # -f: ssh backgrounds itself once authenticated; its exit status says whether it got there.
            # ControlPersist=300: a master orphaned by a crashed caller leaves after 5 idle minutes
            # (a later command then simply connects directly).
            cmd = self._ssh_args() + ["-M", "-N", "-f", "-o", "ControlPersist=300"] + self._destination()
            try:
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf,
                                      timeout=self.spec.connect_timeout + 15)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = None
            errf.seek(0)
            text = errf.read().decode("utf-8", "replace").strip()
        if rc == 0:
            return None
        if rc is None:
            text = text or f"no answer within {self.spec.connect_timeout:g} s"
        return self._classify(text, "connect")

    def _classify(self, text: str, stage: str, result: ExecResult | None = None) -> DeviceError:
        where = self._label
        last = text.strip().splitlines()[-1] if text.strip() else "ssh failed without a message"
        if _CHANGED.search(text):
            host = f"{self.spec.host}:{self.spec.port or 22}"
            return self._error(
                DeviceAuthError, f"the host key for {host} changed — possible man-in-the-middle "
                                 f"(refused: {last})", stage, result=result,
                hint="Do not connect until you know why. If the device was re-installed, get its new key out of "
                     f"band and replace the old line in {self.spec.known_hosts or '~/.ssh/known_hosts'} "
                     f"(ssh-keygen -R '[{self.spec.host}]:{self.spec.port or 22}'); accept_new_host_key never "
                     "accepts a changed key.")
        if _HOSTKEY.search(text):
            return self._error(
                DeviceAuthError, f"host key of {where} is not trusted: {last}", stage, result=result,
                hint="Add the host key to known_hosts (ssh-keygen -R / ssh-keyscan, checked out of band), or opt "
                     "in explicitly with accept_new_host_key = true to trust a new one on first use.")
        if _AUTH.search(text):
            return self._error(DeviceAuthError, f"authentication to {where} failed: {last}", stage, result=result,
                               hint="Check user and identity_file; only key authentication is used.")
        if _UNREACHABLE.search(text):
            return self._error(DeviceUnreachable, f"cannot reach {where}: {last}", stage, result=result,
                               hint="Is the device on, sshd running and the port right?")
        return self._error(DeviceError, f"ssh to {where} failed: {last}", stage, result=result)

    def _close_transport(self) -> None:
        if self._ctl_dir:
            subprocess.run(self._ssh_args() + ["-O", "exit"] + self._destination(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=15, check=False)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self._ctl_dir:
            shutil.rmtree(self._ctl_dir, ignore_errors=True)
        self._ctl_dir = None

    # ------------------------------------------------------------------ files
    def push(self, local, remote) -> None:
        self._check_open("push")
        src = Path(local)
        if not src.is_file():
            raise self._error(DeviceError, f"cannot push {src}: no such file", "push")
        mode = "755" if os.access(src, os.X_OK) else "644"
        part = remote + ".part"
        body = (self._ensure_script(remote) + f"mkdir -p {shlex.quote(os.path.dirname(remote) or '/')} && "
                f"{{ cat > {shlex.quote(part)} || {{ rm -f {shlex.quote(part)}; false; }}; }} && "
                f"chmod {mode} {shlex.quote(part)} && mv -f {shlex.quote(part)} {shlex.quote(remote)}")
        with open(src, "rb") as f:
            proc, _, err, timed_out = self._remote(body + _STATUS, timeout=TRANSFER_TIMEOUT, stdin=f)
        self._check_transfer(err, timed_out, "push", f"pushing {src} to {remote}")

    def push_many(self, pairs) -> None:
        """Several files in one session: a tar stream unpacked into a staging dir, then each file
        renamed into place (a broken transfer never leaves a partial file at its final path)."""
        pairs = [(Path(local), remote) for local, remote in pairs]
        if len(pairs) <= 1:
            return super().push_many(pairs)
        self._check_open("push")
        for local, _ in pairs:
            if not local.is_file():
                raise self._error(DeviceError, f"cannot push {local}: no such file", "push")
        stage = f"{os.path.dirname(pairs[0][1]) or '/'}/.incoming-{os.getpid()}-{time.monotonic_ns()}"
        dirs = sorted({os.path.dirname(r) or "/" for _, r in pairs})
        moves = " && ".join(f"mv -f {shlex.quote(f'{stage}/f{i}')} {shlex.quote(r)}" for i, (_, r) in enumerate(pairs))
        body = (self._ensure_script(pairs[0][1]) +
                f"mkdir -p {' '.join(shlex.quote(d) for d in dirs)} {shlex.quote(stage)} && "
                f"tar -xf - -C {shlex.quote(stage)} && {moves}; r=$?; rm -rf {shlex.quote(stage)}; (exit $r)")
        with tempfile.TemporaryFile() as stream:
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for i, (local, _) in enumerate(pairs):
                    info = tar.gettarinfo(str(local), arcname=f"f{i}")
                    info.mode = 0o755 if os.access(local, os.X_OK) else 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(local, "rb") as f:
                        tar.addfile(info, f)
            stream.seek(0)
            proc, _, err, timed_out = self._remote(body + _STATUS, timeout=TRANSFER_TIMEOUT, stdin=stream)
        self._check_transfer(err, timed_out, "push", f"pushing {len(pairs)} files to {', '.join(dirs)}")

    def pull(self, remote, local) -> None:
        self._check_open("pull")
        dst = Path(local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        part = dst.with_name(dst.name + ".part")
        with open(part, "wb") as f:
            proc, _, err, timed_out = self._remote(f"cat -- {shlex.quote(remote)}" + _STATUS,
                                                   timeout=TRANSFER_TIMEOUT, stdout=f)
        self._check_transfer(err, timed_out, "pull", f"pulling {remote} to {dst} (partial copy kept at {part})")
        os.replace(part, dst)

    def _check_transfer(self, err: bytes, timed_out: bool, stage: str, what: str) -> None:
        status = parse_remote_stderr(err)
        text = status.stderr.decode("utf-8", "replace").strip()
        result = ExecResult((stage,), status.rc if status.rc is not None else -1, b"", status.stderr, 0.0)
        if timed_out:
            raise self._error(DeviceTimeout, f"{what}: no end after {TRANSFER_TIMEOUT:g} s", stage, result=result)
        if status.rc is None:
            if "@@edgerun" not in err.decode("utf-8", "replace") and _UNREACHABLE.search(text) and stage == "push":
                raise self._classify(text, stage, result)
            self._connected = False
            raise self._error(TransportDropped, f"connection lost {what}", stage, result=result,
                              hint="Check the link and run again; files already transferred are kept.")
        if status.rc != 0:
            if "No space left" in text:
                raise self._error(NoSpaceError, f"{what}: no space left on device", stage, result=result,
                                  hint="Free space on the device or point work_dir at a larger file system.")
            raise self._error(DeviceError, f"{what} failed: {text.splitlines()[-1] if text else status.rc}",
                              stage, result=result)

