"""Real counterparts for the devices tests: an sshd on loopback, an aarch64 program bundle for qemu.

The aarch64 "bundle" mimics the runner bundle's layout (program + its own ``ld-linux-aarch64.so.1``
and ``libc.so.6``, started as ``./ld-linux-aarch64.so.1 --library-path . ./prog``) with a tiny C
program cross-compiled here, so these tests do not wait for the real runner.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"edgerun_tests_devices_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sshd_mod = _load("sshd")
ptylink_mod = _load("ptylink")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A running OpenSSH server on 127.0.0.1 (session-wide; tests must not stop it)."""
    why = sshd_mod.missing()
    if why:
        pytest.skip(why)
    server = sshd_mod.SshServer.start(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def own_sshd(tmp_path):
    """A private sshd a test may kill (connection-drop faults)."""
    why = sshd_mod.missing()
    if why:
        pytest.skip(why)
    server = sshd_mod.SshServer.start(tmp_path / "sshd")
    yield server
    server.stop()


PROG_C = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct utsname u;
    uname(&u);
    if (argc > 1 && strcmp(argv[1], "crash") == 0) {
        printf("about to crash\n");
        fflush(stdout);
        raise(SIGSEGV);
    }
    if (argc > 2 && strcmp(argv[1], "sleep") == 0) {
        printf("sleeping\n");
        fflush(stdout);
        sleep(atoi(argv[2]));
    }
    if (argc > 3 && strcmp(argv[1], "copy") == 0) {  /* copy argv[2] to argv[3], upper-cased */
        FILE *in = fopen(argv[2], "rb"), *out = fopen(argv[3], "wb");
        if (!in || !out) { fprintf(stderr, "cannot open\n"); return 2; }
        int c;
        while ((c = fgetc(in)) != EOF) fputc(c >= 'a' && c <= 'z' ? c - 32 : c, out);
        fclose(in); fclose(out);
    }
    printf("machine=%s", u.machine);
    for (int i = 1; i < argc; i++) printf(" [%s]", argv[i]);
    const char *e = getenv("EDGERUN_TEST");
    printf(" env=%s\n", e ? e : "-");
    fprintf(stderr, "stderr line\n");
    return (argc > 1 && strcmp(argv[1], "fail") == 0) ? 3 : 0;
}
"""

AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu/lib")


@pytest.fixture(scope="session")
def aarch64_bundle(tmp_path_factory) -> Path:
    """A directory: ``prog`` (aarch64, dynamic), its loader and libc. Skips without the toolchain."""
    gcc = shutil.which("aarch64-linux-gnu-gcc")
    if not gcc or not (AARCH64_SYSROOT / "ld-linux-aarch64.so.1").exists():
        pytest.skip("aarch64 cross compiler not installed (Debian gcc-aarch64-linux-gnu)")
    if not shutil.which("qemu-aarch64"):
        pytest.skip("qemu-aarch64 not installed (Debian qemu-user)")
    d = tmp_path_factory.mktemp("bundle")
    (d / "prog.c").write_text(PROG_C)
    subprocess.run([gcc, "-O1", "-o", str(d / "prog"), str(d / "prog.c")], check=True)
    (d / "prog.c").unlink()
    for lib in ("ld-linux-aarch64.so.1", "libc.so.6"):
        shutil.copy2(AARCH64_SYSROOT / lib, d / lib)
    return d


@pytest.fixture(scope="session")
def host_bundle(tmp_path_factory) -> Path:
    """The same program built for this host (``prog``), for local/ssh/serial devices."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no host C compiler (Debian gcc)")
    d = tmp_path_factory.mktemp("host-bundle")
    (d / "prog.c").write_text(PROG_C)
    subprocess.run([cc, "-O1", "-o", str(d / "prog"), str(d / "prog.c")], check=True)
    (d / "prog.c").unlink()
    return d


def _bundle_argv(*args: str) -> list[str]:
    return ["./ld-linux-aarch64.so.1", "--library-path", ".", "./prog", *args]


@pytest.fixture(scope="session")
def bundle_argv():
    """How a bundle program starts: through its own loader, libraries from the bundle dir."""
    return _bundle_argv


@pytest.fixture
def serial_line(tmp_path):
    """Start agents on real pty pairs: ``serial_line(noise=None, agent_args=()) -> (uri, link, agent_proc, sandbox)``
    (``agent_args``: more arguments of the agent, e.g. ``("--runner", BUNDLE_DIR)``)."""
    started = []

    def start(noise=None, agent_args=(), **query):
        link = ptylink_mod.PtyLink(noise)
        sandbox = tmp_path / f"sandbox{len(started)}"
        agent = subprocess.Popen([sys.executable, "-m", "edgerun.devices.serial_agent", link.agent_path,
                                  str(sandbox), *agent_args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 text=True)
        started.append((link, agent))
        assert "serving" in agent.stdout.readline()  # the port is open: what a powered-up board is
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"serial://{link.host_path}" + (f"?{q}" if q else ""), link, agent, sandbox

    yield start
    for link, agent in started:
        if agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(timeout=5)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        link.close()
