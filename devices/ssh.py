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

Each program runs under a tiny sh wrapper that reports its pid first and its exit status last on
stderr (stripped again here): a missing status means the connection dropped mid-run
(:class:`TransportDropped`); on a timeout the remote program is killed by that pid.
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
import threading
import time
from pathlib import Path

from edgerun.devices._client import kill_script, run_client
from edgerun.devices.base import (Device, DeviceAuthError, DeviceError, DeviceTimeout, DeviceUnreachable,
                                  ExecResult, NoSpaceError, TransportDropped, parse_remote_stderr, removable,
                                  remote_exec_script, split_signal)

log = logging.getLogger("edgerun.devices")

TRANSFER_TIMEOUT = 600.0
_STATUS = "; r=$?; printf '\\n@@edgerun:rc=%s\\n' \"$r\" >&2"

_HOSTKEY = re.compile(r"Host key verification failed|host key is known|HOST IDENTIFICATION HAS CHANGED|"
                      r"Host key for .* has changed", re.I)
_AUTH = re.compile(r"Permission denied|Too many authentication failures|no mutual signature", re.I)
_UNREACHABLE = re.compile(r"Connection refused|Connection timed out|timed out|No route to host|"
                          r"Could not resolve hostname|Network is unreachable|Connection reset|"
                          r"kex_exchange_identification|Connection closed by|banner exchange", re.I)


class SshDevice(Device):
    transport = "ssh"
    default_work_dir = "/tmp/edgerun"

    def __init__(self, spec):
        super().__init__(spec)
        self._ctl_dir: str | None = None
        self._connected = False
        self._lock = threading.Lock()  # one master, even when threads share the device

    # ------------------------------------------------------------------ connection
    @property
    def _target(self) -> str:
        return self.spec.host

    def _ssh_args(self) -> list[str]:
        s = self.spec
        args = ["ssh", "-o", "BatchMode=yes",
                "-o", f"StrictHostKeyChecking={'accept-new' if s.accept_new_host_key else 'yes'}",
                "-o", f"ConnectTimeout={max(1, math.ceil(s.connect_timeout))}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR"]
        if s.known_hosts:
            args += ["-o", f'UserKnownHostsFile="{s.known_hosts}"', "-o", "GlobalKnownHostsFile=/dev/null"]
        if s.identity_file:
            args += ["-i", s.identity_file, "-o", "IdentitiesOnly=yes"]
        if s.port:
            args += ["-p", str(s.port)]
        if s.user:
            args += ["-l", s.user]
        if self._ctl_dir:
            args += ["-o", f'ControlPath="{self._ctl_dir}/m"']
        return args

    def connect(self) -> None:
        """Open the master connection; retry transient failures (bounded), never auth failures."""
        self._check_open("connect")
        with self._lock:
            if not self._connected:
                self._connect()

    def _connect(self) -> None:
        if shutil.which("ssh") is None:
            raise self._error(DeviceError, "the OpenSSH client `ssh` is not installed", "connect",
                              hint="Install Debian's openssh-client package.")
        if self.spec.identity_file and not os.path.isfile(self.spec.identity_file):
            raise self._error(DeviceAuthError, f"identity file {self.spec.identity_file} does not exist",
                              "connect", hint="Fix identity_file in the inventory or the URI.")
        if self._ctl_dir is None:
            self._ctl_dir = tempfile.mkdtemp(prefix="edgerun-ssh-")
        elif self._master_alive():  # a session died but the master lived on: keep using it
            self._connected = True
            return
        else:  # a dead master's socket would make the new one give up multiplexing
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._ctl_dir, "m"))
        attempts = self.spec.connect_retries + 1
        for attempt in range(1, attempts + 1):
            err = self._start_master()
            if err is None:
                self._connected = True
                return
            if not isinstance(err, DeviceUnreachable) or attempt == attempts:
                shutil.rmtree(self._ctl_dir, ignore_errors=True)
                self._ctl_dir = None
                raise err
            log.warning("%s (attempt %d/%d); retrying", err.message, attempt, attempts)
            time.sleep(0.5 * attempt)

    def _master_alive(self) -> bool:
        try:
            return subprocess.run(self._ssh_args() + ["-O", "check", self._target], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _start_master(self) -> DeviceError | None:
        with tempfile.TemporaryFile() as errf:
            # -f: ssh backgrounds itself once authenticated; its exit status says whether it got there.
            # ControlPersist=300: a master orphaned by a crashed caller leaves after 5 idle minutes
            # (a later command then simply connects directly).
            cmd = self._ssh_args() + ["-M", "-N", "-f", "-o", "ControlPersist=300", self._target]
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
        where = f"{self.spec.user + '@' if self.spec.user else ''}{self.spec.host}:{self.spec.port or 22}"
        last = text.strip().splitlines()[-1] if text.strip() else "ssh failed without a message"
        if _HOSTKEY.search(text):
            return self._error(
                DeviceAuthError, f"host key of {where} is not trusted: {last}", stage, result=result,
                hint="Add the host key to known_hosts (ssh-keyscan, checked out of band), or opt in "
                     "explicitly with accept_new_host_key = true to trust a new one on first use.")
        if _AUTH.search(text):
            return self._error(DeviceAuthError, f"authentication to {where} failed: {last}", stage, result=result,
                               hint="Check user and identity_file; only key authentication is used.")
        if _UNREACHABLE.search(text):
            return self._error(DeviceUnreachable, f"cannot reach {where}: {last}", stage, result=result,
                               hint="Is the device on, sshd running and the port right?")
        return self._error(DeviceError, f"ssh to {where} failed: {last}", stage, result=result)

    def close(self) -> None:
        if self._closed:
            return
        if self._connected and self._ctl_dir:
            if self.spec.cleanup:
                self._cleanup_work_dir()
            subprocess.run(self._ssh_args() + ["-O", "exit", self._target], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=15, check=False)
        if self._ctl_dir:
            shutil.rmtree(self._ctl_dir, ignore_errors=True)
        self._ctl_dir = None
        self._connected = False
        super().close()

    def _cleanup_work_dir(self) -> None:
        wd = self.work_dir.rstrip("/")
        if not removable(wd):
            log.warning("not removing work_dir %s on %s: too close to the root", wd, self.name)
            return
        try:
            self._exec(["rm", "-rf", "--", wd], timeout=60, env={}, cwd=None)
        except DeviceError as exc:
            log.warning("cleanup of %s on %s failed: %s", wd, self.name, exc.message)

    # ------------------------------------------------------------------ commands
    def _remote(self, script: str, *, timeout: float, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                on_timeout=None) -> tuple[subprocess.Popen, bytes, bytes, bool]:
        """Run ``sh -c script`` on the device over the master connection (see run_client)."""
        self.connect()
        cmd = self._ssh_args() + ["-o", "ControlMaster=no", self._target, shlex.join(["sh", "-c", script])]
        return run_client(cmd, timeout=timeout, stdin=stdin, stdout=stdout, on_timeout=on_timeout)

    def _exec(self, argv, *, timeout, env, cwd) -> ExecResult:
        start = time.monotonic()

        def kill_remote(err_so_far: bytes) -> None:
            pid = parse_remote_stderr(err_so_far).pid
            if pid:
                self._kill_remote(pid)

        proc, out, err, timed_out = self._remote(remote_exec_script(argv, env, cwd), timeout=timeout,
                                                 on_timeout=kill_remote)
        duration = time.monotonic() - start
        status = parse_remote_stderr(err)
        if timed_out:
            partial = ExecResult(tuple(argv), -1, out, status.stderr, duration)
            raise self._error(DeviceTimeout, f"{argv[0]} still running after {timeout:g} s; killed", "exec",
                              result=partial, hint="Raise the timeout, or run fewer iterations.")
        if status.rc is None:
            partial = ExecResult(tuple(argv), proc.returncode, out, status.stderr, duration)
            if status.pid is None:  # never started: a connection problem
                raise self._classify(status.stderr.decode("utf-8", "replace"), "exec", partial)
            self._connected = False
            raise self._error(TransportDropped, f"connection lost while {argv[0]} was running (pid {status.pid})",
                              "exec", result=partial,
                              hint="The program may have been cut off; its partial output is kept. "
                                   "It was not re-run.")
        rc, sig = split_signal(status.rc)
        return ExecResult(tuple(argv), rc, out, status.stderr, duration, sig)

    def _kill_remote(self, pid: int) -> None:
        script = kill_script(pid)
        try:
            self._remote(script, timeout=15)
        except DeviceError as exc:
            log.warning("could not kill pid %s on %s after a timeout: %s", pid, self.name, exc.message)

    def push(self, local, remote) -> None:
        self._check_open("push")
        src = Path(local)
        if not src.is_file():
            raise self._error(DeviceError, f"cannot push {src}: no such file", "push")
        mode = "755" if os.access(src, os.X_OK) else "644"
        part = remote + ".part"
        body = (f"mkdir -p {shlex.quote(os.path.dirname(remote) or '/')} && "
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
        body = (f"mkdir -p {' '.join(shlex.quote(d) for d in dirs)} {shlex.quote(stage)} && "
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

