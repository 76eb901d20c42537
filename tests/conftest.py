"""Suite-wide fixtures.

* Each test session gets its own ``EDGERUN_HOME`` so nothing leaks from a user's real one.
* ``make_artifact(model, target, scheme)`` exports once per session and hands every test the
  same directory (read-only by convention: copy it before changing anything). Without export options
  it is bench's cached export of that recipe (``EDGERUN_HOME/artifacts``), shared with bench and profile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Helper modules at the top of tests/ (``manifests``) import by plain name under --import-mode=importlib.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


@contextlib.contextmanager
def _home(edgerun_home: Path):
    """Session-scoped fixtures run outside the per-test monkeypatch: point EDGERUN_HOME at the
    session's home while they build, so their caches are the ones the tests see."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGERUN_HOME", str(edgerun_home))
        yield


def need_tool(tool: str, package: str) -> None:
    """Skip (with the reason) when a tool is missing; CI installs them all through scripts/setup."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (Debian package {package}; scripts/setup installs it)")


@pytest.fixture(scope="session")
def need():
    """``need(tool, debian_package)`` for fixtures of other folders (conftests are not importable)."""
    return need_tool


@pytest.fixture(scope="session")
def edgerun_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.getbasetemp() / "edgerun-home"
    home.mkdir(exist_ok=True)
    return home


@pytest.fixture(autouse=True)
def _edgerun_home_env(edgerun_home, monkeypatch):
    monkeypatch.setenv("EDGERUN_HOME", str(edgerun_home))
    return edgerun_home


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """The tiny Llama GGUF of tests/llm/tiny.py (random weights, a tokenizer trained there), written once per
    session for every folder: the caches keyed by a GGUF's path (finetune's training programs, exports) are
    then shared by tests/llm, tests/finetune and tests/benchmarks instead of each writing its own copy."""
    llm = str(Path(__file__).resolve().parent / "llm")
    if llm not in sys.path:
        sys.path.insert(0, llm)
    from tiny import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def make_artifact(tmp_path_factory, edgerun_home):
    """``make_artifact(model, target, scheme, **export_kwargs) -> Path`` (cached per session)."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("artifacts")

    def make(model: str, target: str = "host", scheme: str = "fp32", **kwargs) -> Path:
        key = (model, target, scheme, repr(sorted(kwargs.items())))
        if key not in cache:
            from edgerun.export import export_model

            with _home(edgerun_home):
                if kwargs:
                    safe = model.replace(":", "_").replace(".", "_")
                    out = root / f"{safe}-{target}-{scheme}-{len(cache)}"
                    export_model(model, target, scheme, out, **kwargs)
                else:
                    # where bench and profile keep this (model, target, recipe) in the session's EDGERUN_HOME,
                    # keyed by its whole recipe identity: a bench cell of the same recipe reuses this export
                    # and this reuses one a bench made first, instead of the same program being exported twice
                    from edgerun.profiling import _cached, export_job  # noqa: PLC2701 - bench's own cache check

                    job = export_job(model, target, scheme)
                    if not _cached(job):
                        export_model(model, target, scheme, job.path)
                    out = job.path
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def runner_bundle(edgerun_home):
    """``runner_bundle(arch="host", variant="full") -> Bundle``: the real native runner, built (or
    reused from the session's cache) with the real toolchain; skips when a tool is missing."""

    def build(arch: str = "host", variant: str = "full"):
        from edgerun.runtime.build import BuildRequest, build_bundle

        need_tool("cmake", "cmake")
        if arch == "aarch64":
            need_tool("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")
            need_tool("qemu-aarch64", "qemu-user")  # the bundle's kernel list is read by running it
        else:
            need_tool("g++", "g++")
        with _home(edgerun_home):
            return build_bundle(BuildRequest(arch=arch, variant=variant))

    return build


def run_cli(*args: str, env: dict | None = None, cwd: str | os.PathLike | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real ``edgerun`` console script (the installed entry point) and capture its output."""
    exe = Path(sys.executable).with_name("edgerun")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from edgerun.cli import main; main()"]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def loopback_sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 (tests/devices/sshd.py), session-wide, for tests outside tests/devices."""
    import importlib.util

    name = "edgerun_tests_devices_sshd"  # the name tests/devices and tests/security load it under
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "devices" / "sshd.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    mod = sys.modules[name]
    why = mod.missing()
    if why:
        pytest.skip(why)
    server = mod.SshServer.start(tmp_path_factory.mktemp("llm-sshd"))
    yield server
    server.stop()
