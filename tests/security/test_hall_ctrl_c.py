"""Issue 9 items 9 and 14: Ctrl-C stops ``edgerun profile`` -- for real.

The real CLI runs the real native runner on a ``local://`` device (in a subprocess, so SIGINT is a
real signal to a real process). The device's wrapper runs the runner again and again -- a run that
never ends by itself -- and tees its stdout beside the wrapper script, so the test sees the first
``iteration`` line the runner printed (the runner's output reaches the run directory's
``runner.jsonl`` only when its exec returns: for an interrupted run, the partial output). SIGINT is
sent on that observed event, never after a sleep. Then: exit 130 within a bound, ``run.json`` says
``interrupted``, the runner's process group is gone, the partial runner output is kept, and nothing
is in the store.

Also: a run directory left ``running`` by a process that is gone (SIGKILL: it could say nothing)
is marked ``interrupted`` by the next run.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgerun.store import Store

# Runs the real runner again and again (each invocation short), its stdout also into a file beside
# this script: the test's event source. Killing the process group ends all of it.
LOOP = r"""
side="$(dirname "$0")/runner-stdout.jsonl"
while :; do "$@" || exit $?; done | tee -a "$side"
"""

INTERRUPT_BOUND_S = 30.0


def default_sigint() -> None:
    """In the child before exec: SIGINT back to its default. A suite started as a background job of a shell
    without job control inherits SIGINT *ignored* (POSIX), and so would every edgerun it starts -- Ctrl-C
    would then test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _edgerun_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("edgerun")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from edgerun.cli import main; main()"]


def _wait_for(pred, what: str, timeout: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"edgerun exited {proc.returncode} before {what}:\n{err[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout:g} s")


def _run_dirs_of(runs: Path, device: str) -> list[Path]:
    found = []
    for rj in runs.glob("*/run.json"):
        try:
            if json.loads(rj.read_text()).get("device") == device:
                found.append(rj.parent)
        except (OSError, ValueError):
            continue
    return found


@pytest.fixture
def host_artifact(make_artifact):
    return make_artifact("digits_cnn", "host", "fp32")


@pytest.fixture
def looping_device(tmp_path):
    """An inventory device on ``local://`` whose wrapper runs the runner again and again, its stdout teed
    into a side file: ``(name, inventory, side file)``."""
    loop = tmp_path / "loop.sh"
    loop.write_text(LOOP)
    name = f"ctrlc-{secrets.token_hex(3)}"
    inventory = tmp_path / "devices.toml"
    inventory.write_text(f'[devices.{name}]\nuri = "local://?work_dir={tmp_path / "dev"}"\n'
                         f'wrapper = ["sh", "{loop}"]\n')
    return name, inventory, tmp_path / "runner-stdout.jsonl"


def _interrupt_and_check(argv: list[str], *, device, edgerun_home, store, line_type: str, env=None, cwd=None):
    """Run edgerun ``argv``; on the runner's first ``line_type`` line, SIGINT. Then: exit 130 within the
    bound, the run directory ``interrupted`` with the partial runner output, nothing stored, the runner
    gone. Returns the run directory's ``run.json``."""
    name, _inventory, side = device
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            preexec_fn=default_sigint,
                            env={**os.environ, "EDGERUN_HOME": str(edgerun_home), **(env or {})})
    try:
        _wait_for(lambda: side.is_file() and f'"type":"{line_type}"' in side.read_text(),
                  f"the runner's first {line_type} line", 600, proc)
        (run_dir,) = _wait_for(lambda: _run_dirs_of(edgerun_home / "runs", name), "the run directory", 10, proc)
        assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            out, err = proc.communicate(timeout=INTERRUPT_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"edgerun did not stop within {INTERRUPT_BOUND_S:g} s of SIGINT")
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert took < INTERRUPT_BOUND_S
    assert "interrupted" in err
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted", meta
    assert meta["pid"] == proc.pid and meta["host"]
    # the runner's partial output is kept in the run directory
    lines = [json.loads(ln) for ln in (run_dir / "runner.jsonl").read_text().splitlines() if ln.startswith("{")]
    assert any(ln["type"] == line_type for ln in lines)
    # nothing of the interrupted run was analysed or stored
    assert not (run_dir / "record.json").exists()
    with Store(store) as s:
        assert s.list() == []
    # the runner (and its wrapper loop) is gone: the side file stops growing
    size = side.stat().st_size
    before = time.monotonic()
    _wait_for(lambda: time.monotonic() - before > 1.0, "a second passing", 5)
    assert side.stat().st_size == size, "the runner still runs after edgerun exited"
    return meta


def test_ctrl_c_kills_the_runner_marks_the_run_interrupted_and_stores_nothing(
        host_artifact, runner_bundle, edgerun_home, tmp_path, looping_device):
    runner_bundle("host")  # built once per session, before the clock of this test starts
    name, inventory, _side = looping_device
    store = tmp_path / "results.sqlite"
    _interrupt_and_check(
        [*_edgerun_cmd(), "profile", str(host_artifact), "--device", name, "--inventory", str(inventory),
         "--store", str(store), "--warmup", "0", "--iterations", "1", "--no-etdump", "--no-task-accuracy",
         "--timeout", "600"], device=looping_device, edgerun_home=edgerun_home, store=store, line_type="iteration")


FT_MODEL = """
import torch
def mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return net.eval(), (torch.zeros(1, 1, 8, 8),)
"""


def test_ctrl_c_during_finetune_marks_the_run_interrupted_exits_130_and_stores_nothing(
        runner_bundle, edgerun_home, tmp_path, looping_device):
    """The training run goes through the same scaffolding as profile's: Ctrl-C while the real runner
    trains on the device kills it, the run directory says ``interrupted``, nothing is stored."""
    import numpy as np

    runner_bundle("host")
    (tmp_path / "ftmodel_ctrlc.py").write_text(FT_MODEL)
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x_train=rng.random((64, 1, 8, 8), dtype=np.float32), y_train=rng.integers(0, 4, 64),
             x_eval=rng.random((16, 1, 8, 8), dtype=np.float32), y_eval=rng.integers(0, 4, 16))
    name, inventory, _side = looping_device
    store = tmp_path / "results.sqlite"
    meta = _interrupt_and_check(
        [*_edgerun_cmd(), "finetune", "ftmodel_ctrlc:mlp", "--device", name, "--inventory", str(inventory),
         "--store", str(store), "--data", str(data), "--steps", "4", "--batch", "16", "--threads", "1"],
        device=looping_device, edgerun_home=edgerun_home, store=store, line_type="step", cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    assert meta["mode"] == "train"


def test_a_running_run_dir_of_a_dead_process_is_marked_interrupted_by_the_next_run(tmp_path):
    """A process killed by SIGKILL cannot mark its run directory; the next run does (pid + host)."""
    import socket

    from edgerun.runtime.deploy import mark_abandoned_runs, new_run_dir

    runs = tmp_path / "runs"
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        dead_dir, live_dir, other_host = runs / "a-dead", runs / "b-live", runs / "c-elsewhere"
        for d, pid, host in ((dead_dir, victim.pid, socket.gethostname()), (live_dir, alive.pid, socket.gethostname()),
                             (other_host, victim.pid, "another-host.invalid")):
            d.mkdir(parents=True)
            (d / "run.json").write_text(json.dumps({"status": "running", "stage": "run", "pid": pid, "host": host}))
        victim.kill()
        victim.wait()
        fresh = new_run_dir("local", "m", root=runs)
        assert fresh.is_dir()
        meta = json.loads((dead_dir / "run.json").read_text())
        assert meta["status"] == "interrupted" and str(victim.pid) in meta["error"]
        assert json.loads((live_dir / "run.json").read_text())["status"] == "running"   # its process lives
        assert json.loads((other_host / "run.json").read_text())["status"] == "running"  # not ours to judge
        assert mark_abandoned_runs(runs) == []  # idempotent
    finally:
        for p in (victim, alive):
            if p.poll() is None:
                p.kill()
                p.wait()
