"""A real OpenSSH ``sshd`` on loopback for tests: its own host key, one authorized client key,
key-only login, an unprivileged free port on 127.0.0.1, its own pid file.

Other test folders can load it by path (tests are not a package here; ``--import-mode=importlib``)::

    spec = importlib.util.spec_from_file_location("edgerun_test_sshd", ROOT / "tests/devices/sshd.py")

or use the ``sshd`` fixture defined in tests/devices/conftest.py as a template.
``SshServer.start(tmp_dir)`` returns a running server; ``stop()`` ends it. ``drop_connections()``
kills the per-connection sshd processes (what a dropped link looks like to the client) while the
listener keeps accepting.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
SSH_KEYGEN = shutil.which("ssh-keygen")


def missing() -> str | None:
    """Why an sshd cannot be started here, or None."""
    if not SSHD:
        return "sshd not installed (Debian openssh-server; scripts/setup installs it)"
    if not SSH_KEYGEN or not shutil.which("ssh"):
        return "OpenSSH client not installed (Debian openssh-client)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "edgerun-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return Path(str(path) + ".pub").read_text().strip()


@dataclass
class SshServer:
    root: Path
    port: int
    proc: subprocess.Popen
    client_key: Path      # private key authorized on this server
    known_hosts: Path     # contains this server's host key for [127.0.0.1]:port
    other_key: Path       # a key NOT authorized here (auth failure tests)
    host_pub: str
    user: str = "root"

    @classmethod
    def start(cls, root: Path) -> "SshServer":
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        if os.geteuid() == 0:  # root's sshd wants its privilege-separation dir
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        host_pub = keygen(root / "host_key")
        client_pub = keygen(root / "client_key")
        keygen(root / "other_key")
        (root / "authorized_keys").write_text(client_pub + "\n")
        os.chmod(root / "authorized_keys", 0o600)
        port = free_port()
        kh = root / "known_hosts"
        kh.write_text(f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}\n")
        config = root / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {root / 'host_key'}",
            f"PidFile {root / 'sshd.pid'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "MaxSessions 64",
            "MaxStartups 64",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
            "",
        ]))
        log = open(root / "sshd.log", "ab")
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)
        server = cls(root=root, port=port, proc=proc, client_key=root / "client_key", known_hosts=kh,
                     other_key=root / "other_key", host_pub=host_pub, user=_user())
        server._wait_listening()
        return server

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: "
                                   f"{(self.root / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def uri(self, **query: str) -> str:
        q = {"identity_file": str(self.client_key), "known_hosts": str(self.known_hosts), **query}
        return f"ssh://{self.user}@127.0.0.1:{self.port}?" + "&".join(f"{k}={v}" for k, v in q.items())

    def session_pids(self) -> list[int]:
        """The per-connection sshd children of the listener."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid:
                pids.append(int(entry.name))
        return pids

    def drop_connections(self) -> int:
        """SIGKILL every session sshd: established connections die, the listener stays."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        self.drop_connections()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
