"""Every script in examples/ runs as a user would run it (the real exporter, the real runner, a real
sshd on loopback for the SSH example), and says what it promises."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(script: str, *args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=str(ROOT), timeout=timeout)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def exported(tmp_path_factory, edgerun_home, runner_bundle):
    runner_bundle("host")  # the examples profile on this machine with the session's bundle
    out = tmp_path_factory.mktemp("examples")
    proc = _run("export_your_model.py", "--out", str(out), env={"EDGERUN_HOME": str(edgerun_home)})
    return out, proc


def test_every_example_is_tested_here():
    scripts = {p.name for p in EXAMPLES.glob("*.py")} - {"my_model.py"}  # the factory the others use
    assert scripts == {"export_your_model.py", "export_from_python.py", "profile_compare_report.py",
                       "profile_over_ssh.py"}


def test_export_from_python(tmp_path, edgerun_home):
    """A model defined in the script itself, exported with its example inputs; a changed weight, another hash."""
    proc = _run("export_from_python.py", "--out", str(tmp_path), env={"EDGERUN_HOME": str(edgerun_home)})
    assert "KeywordSpotter (python) for host, recipe int8-dynamic: status ok" in proc.stdout
    assert "after changing a weight: recipe hash" in proc.stdout and "(different)" in proc.stdout
    assert (tmp_path / "kws" / "manifest.json").is_file() and (tmp_path / "kws-tuned" / "manifest.json").is_file()


def test_export_your_model(exported):
    out, proc = exported
    for scheme in ("fp32", "int8"):
        assert (out / f"my_model-rpi5-{scheme}" / "manifest.json").is_file()
        assert f"{scheme:5} {out / f'my_model-rpi5-{scheme}'}" in proc.stdout and "status ok" in proc.stdout
    ratio = int(proc.stdout.rsplit("int8 is ", 1)[1].split("%")[0])
    assert 0 < ratio < 60


def test_profile_compare_report(exported, edgerun_home, tmp_path):
    out, _ = exported
    report = tmp_path / "report.html"
    proc = _run("profile_compare_report.py", str(out / "my_model-rpi5-int8"), "--iterations", "10",
                "--store", str(tmp_path / "s.sqlite"), "--report", str(report), env={"EDGERUN_HOME": str(edgerun_home)})
    assert proc.stdout.count(" samples\n") == 2 and "run A: r-" in proc.stdout and "\nB vs A: " in proc.stdout
    assert report.read_text().lower().startswith("<!doctype html>") and "data:image/png;base64," in report.read_text()


def _sshd():
    spec = importlib.util.spec_from_file_location("edgerun_tests_sshd_for_examples", ROOT / "tests/devices/sshd.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_profile_over_ssh_with_the_example_inventory(exported, edgerun_home, tmp_path):
    """The example inventory's Pi entry, pointed at a real sshd on loopback instead of a real Pi."""
    mod = _sshd()
    why = mod.missing()
    if why:
        pytest.skip(why)
    server = mod.SshServer.start(tmp_path / "sshd")
    try:
        inv = tomllib.loads((EXAMPLES / "pi_over_ssh.toml").read_text())
        pi = inv["devices"]["pi5"]
        assert pi["uri"].startswith("ssh://") and pi["target"] == "rpi5"
        lines = ["[devices.pi5]", f'uri = "ssh://{server.user}@127.0.0.1:{server.port}"',
                 f'identity_file = "{server.client_key}"', f'known_hosts = "{server.known_hosts}"',
                 f'work_dir = "{tmp_path / "pi-home"}"', f'target = "{pi["target"]}"']
        (tmp_path / "devices.toml").write_text("\n".join(lines) + "\n")
        out, _ = exported
        proc = _run("profile_over_ssh.py", str(out / "my_model-rpi5-int8"), "--inventory", str(tmp_path / "devices.toml"),
                    "--device", "pi5", "--iterations", "5", "--store", str(tmp_path / "s.sqlite"),
                    env={"EDGERUN_HOME": str(edgerun_home)})
    finally:
        server.stop()
    assert " on pi5 (x86_64," in proc.stdout and "median" in proc.stdout and "worst SNR vs eager" in proc.stdout
