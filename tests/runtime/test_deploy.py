"""Deploy and run one artifact on real devices: local, qemu-aarch64 (board CPU model) and an SSH
device served by a real sshd on loopback whose "remote" side runs the aarch64 bundle under qemu.
Faults: the runner killed by a signal mid-run, and sshd killed mid-run, each end in a clear error
naming the device and stage, and a kept partial run directory."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from fault_triggers import ClientOutput, CutWhen

from edgerun.core.artifact import read_manifest
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
    return read_manifest(artifact).load_test_vector(0).outputs


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
    # the ssh "Pi" runs its programs under qemu: a wrapper, which only an inventory entry may give
    from edgerun.devices.inventory import parse_uri

    ssh_spec = parse_uri(sshd_server.uri(work_dir=str(tmp_path / "remote")), name="ssh-pi",
                         options={"wrapper": "qemu-aarch64 -cpu cortex-a76"})
    devices = [resolve_device(f"local://?work_dir={tmp_path / 'local'}"),
               resolve_device("qemu-aarch64://?cpu=cortex-a76"), resolve_device(ssh_spec)]
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
    arches = {r.device: r.device_info.arch for r in runs}
    assert list(arches.values()) == ["x86_64", "aarch64", "aarch64"]
    assert runs[1].device_info.emulated and runs[2].device_info.emulated
    assert all((r.run_dir / "run.etdp").stat().st_size > 0 for r in runs)


# A wrapper that starts the real runner and SIGKILLs it (what the OOM killer does) once the runner
# has printed its first timed iteration -- not after a fixed sleep, which on a loaded machine can
# come before the first iteration. It gives up after 60 s, saying so on stderr.
KILLER = r"""
out="$(dirname "$0")/runner-stdout.jsonl"
"$@" > "$out" &
p=$!
n=0
until grep -q '"type":"iteration"' "$out"; do
  n=$((n + 1))
  if [ "$n" -gt 1200 ] || ! kill -0 "$p" 2>/dev/null; then
    echo "killer: the runner printed no iteration line in 60 s" >&2
    kill -KILL "$p" 2>/dev/null
    cat "$out"
    exit 99
  fi
  sleep 0.05
done
kill -KILL "$p"
wait "$p"
s=$?
cat "$out"
exit "$s"
"""


def test_runner_killed_by_signal_keeps_the_partial_run_directory(artifact, tmp_path):
    from edgerun.devices.inventory import make_device, parse_uri

    killer = tmp_path / "killer.sh"
    killer.write_text(KILLER)
    spec = parse_uri(f"local://?work_dir={tmp_path / 'dev'}", name="doomed",
                     options={"wrapper": ["sh", str(killer)]})
    with make_device(spec) as dev:
        with pytest.raises(DeviceRunError) as info:
            run_on_device(artifact, dev, options=ENDLESS, etdump=False,
                          run_dir=tmp_path / "run", timeout=120)
    stderr = tmp_path / "run" / "runner.stderr.txt"
    assert not (stderr.is_file() and "killer:" in stderr.read_text()), stderr.read_text()[-2000:]
    err = info.value
    assert err.stage == "run" and "doomed" in err.message and "signal 9" in err.message
    assert err.exit_code != 0 and err.run_dir == tmp_path / "run"
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "runner.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "header" and any(ln["type"] == "iteration" for ln in lines)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_sshd_killed_mid_run_is_a_clear_error_with_partial_results(artifact, sshd_server, tmp_path, monkeypatch):
    uri = sshd_server.uri(work_dir=str(tmp_path / "remote"))
    with resolve_device(uri) as dev:
        deploy(artifact, dev)  # the deploy itself must not be what we interrupt
        received = ClientOutput(monkeypatch)

        def kill_sshd():
            sshd_server.stop()
            sshd_server.drop_connections()

        # cut once the runner's first timed iteration has come back over the link: the run is running
        with CutWhen(lambda: received.has(b'"type":"iteration"'), kill_sshd,
                     "the runner's first iteration line arriving over ssh", timeout=90):
            with pytest.raises(DeviceRunError) as info:
                run_on_device(artifact, dev, options=ENDLESS, etdump=False,
                              run_dir=tmp_path / "run", timeout=120)
    err = info.value
    assert err.stage == "run" and err.device == dev.name and err.exit_code != 0
    assert (tmp_path / "run" / "run.json").is_file()
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "failed" and status["stage"] == "run"
    # the partial results: what the runner said before the link went is kept
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "runner.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "header" and any(ln["type"] == "iteration" for ln in lines)
