"""The CLI's conventions, through the real console script (issue 13 item 11; issue 9 items 13, 16).

* ``--json`` prints exactly one JSON object on stdout -- also for a call the argument parser
  refuses (exit 2);
* progress is plain lines on stderr when stderr is not a terminal (a spinner shows nothing there);
* wrong options fail before any work: no run directory, nothing pushed;
* the exit code says what failed (8: the device could not be reached);
* what README and --help claim is true (the wheel cache, bench's output).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _one_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


@pytest.mark.parametrize("args", [
    ["profile", "--json", "--bogus"],                 # unknown option
    ["run", "--json"],                                # missing argument
    ["profile", "art", "--iterations", "many", "--json"],  # a value that is not an int
    ["nosuchcommand", "--json"],                      # unknown command
])
def test_json_usage_errors_are_one_object_on_stdout(cli, args):
    r = cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    obj = _one_json(r.stdout)
    assert obj["ok"] is False and obj["error"]["exit_code"] == 2 and obj["error"]["type"] == "UsageError"
    assert obj["error"]["message"]


def test_usage_errors_without_json_keep_stdout_empty(cli):
    r = cli("profile", "--bogus")
    assert r.returncode == 2 and r.stdout == "" and "--bogus" in r.stderr


@pytest.fixture
def artifact(make_artifact):
    return make_artifact("digits_cnn", "host", "fp32")


def test_progress_lines_on_stderr_when_piped(cli, artifact, runner_bundle):
    bundle = runner_bundle("host")
    r = cli("run", str(artifact), "--bundle", str(bundle.path), "-n", "2")
    assert r.returncode == 0, r.stderr
    assert f"edgerun: running {artifact}" in r.stderr


@pytest.mark.parametrize("extra", [["--timeout", "0"], ["--vector", "9"], ["--timeout", "-1"]])
def test_wrong_run_options_fail_before_any_device_work(cli, artifact, edgerun_home, tmp_path, extra):
    runs = edgerun_home / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    work = tmp_path / "device-work"
    r = cli("run", str(artifact), "--device", f"local://?work_dir={work}", "--json", *extra)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert _one_json(r.stdout)["error"]["exit_code"] == 2
    assert not work.exists(), "something was pushed before the options were checked"
    after = set(runs.iterdir()) if runs.exists() else set()
    assert after == before, "a run directory was made before the options were checked"


def test_bundle_run_honours_timeout_and_vector(cli, artifact, runner_bundle):
    bundle = runner_bundle("host")
    r = cli("run", str(artifact), "--bundle", str(bundle.path), "--timeout", "0", "--json")
    assert r.returncode == 2 and "timeout" in _one_json(r.stdout)["error"]["message"]
    r = cli("run", str(artifact), "--bundle", str(bundle.path), "--vector", "9", "--json")
    assert r.returncode == 2 and "vector" in _one_json(r.stdout)["error"]["message"]


def test_an_unreachable_device_exits_8_not_15(cli, artifact, need):
    """A real ssh client against a loopback port nobody listens on: the device failed (8)."""
    need("ssh", "openssh-client")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the socket is closed: connecting to the port is refused
    r = cli("run", str(artifact), "--device", f"ssh://nobody@127.0.0.1:{port}", "--json", timeout=300)
    obj = _one_json(r.stdout)
    assert r.returncode == 8, (r.stdout, r.stderr)
    assert obj["failures"] and obj["failures"][0]["exit_code"] == 8


def test_an_unwritable_edgerun_home_is_an_environment_problem(cli, artifact, tmp_path):
    """EDGERUN_HOME under a regular file (ENOTDIR; root ignores permission bits): exit 17, not 70."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = cli("run", str(artifact), "--device", f"local://?work_dir={tmp_path / 'w'}", "--json",
            env={"EDGERUN_HOME": str(blocker / "home")})
    assert r.returncode == 17, (r.stdout, r.stderr)
    err = _one_json(r.stdout)["error"]
    assert err["type"] == "EnvironmentProblem" and "EDGERUN_HOME" in err["hint"]


def test_readme_and_help_say_where_the_wheel_cache_is(monkeypatch, tmp_path, cli):
    from edgerun.runtime.build import wheel_cache_dir

    monkeypatch.delenv("EDGERUN_WHEEL_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert wheel_cache_dir() == tmp_path / ".cache" / "edgerun" / "wheels"  # not under EDGERUN_HOME
    text = " ".join(README.read_text().split())
    assert "`$EDGERUN_WHEEL_CACHE` (default `~/.cache/edgerun/wheels`)" in text
    assert "~/.cache/edgerun/wheels" in " ".join(cli("--help").stdout.split())


def test_bench_help_promises_only_what_it_prints(cli):
    text = " ".join(cli("bench", "--help").stdout.split())
    assert "then compare" not in text  # it prints no comparison verdicts
    assert "edgerun compare" in text
