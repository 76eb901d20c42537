"""Deploy and run one artifact on real devices: local, qemu-aarch64 (board CPU model) and an SSH
device served by a real sshd on loopback whose "remote" side runs the aarch64 bundle under qemu.
Faults: the runner killed by a signal mid-run, and sshd killed mid-run, each end in a clear error
naming the device and stage, and a kept partial run directory."""

import importlib.util
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgerun.devices.inventory import resolve_device
from edgerun.core.numerics import snr_db
from edgerun.runtime.deploy import DeviceRunError, deploy, run_many, run_on_device
from edgerun.runtime.runner import RunOptions

ROOT = Path(__file__).resolve().parents[2]
# keeps the real runner busy for up to ten minutes (the tests end it long before)
ENDLESS = RunOptions(warmup=0, iterations=1, min_time_ms=600_000, max_iterations=100_000_000)
QEMU = shutil.which("qemu-aarch64")


def _sshd_module():
    spec = importlib.util.spec_from_file_location("edgerun_tests_sshd_for_deploy", ROOT / "tests/devices/sshd.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def artifact(make_artifact):
    # exported for a Pi 5: the same program is cross-checked on the host, under qemu and over ssh
    return make_artifact("digits_cnn", "rpi5", "int8")


@pytest.fixture
def sshd_server(tmp_path):
    mod = _sshd_module()
    why = mod.missing()
    if why:
        pytest.skip(why)
    server = mod.SshServer.start(tmp_path / "sshd")
    yield server
    server.stop()


def _reference(artifact):
    m = json.loads((artifact / "manifest.json").read_text())
    return [np.load(artifact / p) for p in m["test_vectors"][0]["outputs"]]


def test_deploy_sends_each_file_once(artifact, tmp_path):
    with resolve_device(f"local://?work_dir={tmp_path / 'dev'}") as dev:
        first = deploy(artifact, dev)
        second = deploy(artifact, dev)
    assert "model.pte" in first.pushed and any(p.startswith("bundle/") for p in first.pushed)
    assert second.pushed == [] and set(second.skipped) == set(first.pushed) | set(first.skipped)
    assert first.arch == "x86_64" and first.preflight.ok
    assert any("exported for rpi5" in w for w in first.preflight.warnings)


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-aarch64 not installed (Debian qemu-user; scripts/setup installs it)")
def test_same_artifact_on_local_qemu_and_ssh_concurrently_gives_matching_outputs(artifact, sshd_server, tmp_path):
    ssh_uri = sshd_server.uri(work_dir=str(tmp_path / "remote"), wrapper="qemu-aarch64 -cpu cortex-a76")
    devices = [resolve_device(f"local://?work_dir={tmp_path / 'local'}"),
               resolve_device("qemu-aarch64://?cpu=cortex-a76"), resolve_device(ssh_uri)]
    try:
        runs = run_many(artifact, devices, options=RunOptions(warmup=1, iterations=3), etdump=True)
    finally:
        for d in devices:
            d.close()
    failures = [r for r in runs if isinstance(r, DeviceRunError)]
    assert not failures, [f.paragraph() for f in failures]
    outs = {r.device: np.load(r.outputs[0]) for r in runs}
    ref = _reference(artifact)[0]
    local, qemu, ssh = outs.values()
    # the aarch64 bundle gives the same bytes whether run by qemu locally or behind sshd
    assert np.array_equal(qemu, ssh)
    # and every device agrees with eager PyTorch within int8 noise, and on the class
    for out in outs.values():
        assert out.argmax() == ref.argmax()
        assert snr_db(out, ref) > 15.0  # the export-time int8 threshold is 10 dB
    arches = {r.device: r.device_info["arch"] for r in runs}
    assert list(arches.values()) == ["x86_64", "aarch64", "aarch64"]
    assert runs[1].device_info["emulated"] and runs[2].device_info["emulated"]
    assert all((r.run_dir / "run.etdp").stat().st_size > 0 for r in runs)


def test_runner_killed_by_signal_keeps_the_partial_run_directory(artifact, tmp_path):
    # A wrapper that lets the real runner start, then kills it with SIGKILL (what the OOM killer does).
    killer = "sh -c '\"$@\" & p=$!; sleep 2; kill -KILL $p; wait $p' killer"
    from edgerun.devices.inventory import make_device, parse_uri

    spec = parse_uri(f"local://?work_dir={tmp_path / 'dev'}", name="doomed", options={"wrapper": killer})
    with make_device(spec) as dev:
        with pytest.raises(DeviceRunError) as info:
            run_on_device(artifact, dev, options=ENDLESS, etdump=False,
                          run_dir=tmp_path / "run", timeout=120)
    err = info.value
    assert err.stage == "run" and "doomed" in err.message and "signal 9" in err.message
    assert err.exit_code != 0 and err.run_dir == tmp_path / "run"
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "runner.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "header" and any(ln["type"] == "iteration" for ln in lines)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_sshd_killed_mid_run_is_a_clear_error_with_partial_results(artifact, sshd_server, tmp_path):
    uri = sshd_server.uri(work_dir=str(tmp_path / "remote"))
    with resolve_device(uri) as dev:
        deploy(artifact, dev)  # the deploy itself must not be what we interrupt

        def kill_later():
            time.sleep(3)
            sshd_server.stop()
            sshd_server.drop_connections()

        threading.Thread(target=kill_later, daemon=True).start()
        with pytest.raises(DeviceRunError) as info:
            run_on_device(artifact, dev, options=ENDLESS, etdump=False,
                          run_dir=tmp_path / "run", timeout=120)
    err = info.value
    assert err.stage == "run" and err.device == dev.name and err.exit_code != 0
    assert (tmp_path / "run" / "run.json").is_file()
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "failed" and status["stage"] == "run"
