"""End to end with the real native runner: its lines, its ETDump and its outputs become a record."""

from __future__ import annotations

import numpy as np
import pytest

from edgerun.devices.base import DeviceInfo
from edgerun.runtime.analysis import analyse
from edgerun.runtime.protocol import RunArtifacts
from edgerun.runtime.record import EMULATED, MEASURED
from edgerun.store import Store

from .conftest import HOST_INFO, QEMU_INFO

TIMED_NATIVE = 15


def _run(bundle, program, tmp_path, emulator=(), iterations=TIMED_NATIVE):
    from edgerun.runtime.runner import run_local

    np.save(tmp_path / "in0.npy", program.inputs[0])
    res = run_local(bundle, program.pte, [tmp_path / "in0.npy"], warmup=3, iterations=iterations,
                    etdump_path=tmp_path / "run.etdp", outputs_dir=tmp_path / "out", emulator=emulator,
                    timeout=600)
    return res, [tmp_path / "out" / f"output_{j}.npy" for j in range(len(res.output_paths))]


def test_host_runner_profile_is_a_complete_stored_record(host_runner_bundle, profiled_program, tmp_path):
    res, outputs = _run(host_runner_bundle, profiled_program, tmp_path)
    run = RunArtifacts(result=res, device_name="local", device_info=DeviceInfo(**HOST_INFO),
                       etdump=tmp_path / "run.etdp", outputs=outputs)
    rec = analyse(run, profiled_program.manifest)
    assert rec.source == MEASURED and rec.latency.n == TIMED_NATIVE
    assert len([s for s in rec.samples if s.warmup]) == 3
    # The runner records the ETDump of the timed iterations only: nothing to skip.
    assert rec.operators.iterations == TIMED_NATIVE and rec.operators.skipped_runs == 0
    # Operator times account for the runner's own execute clock (the 10 % criterion).
    assert abs(rec.operators.coverage - 1.0) <= 0.10, rec.operators
    assert rec.memory.peak_rss_bytes > 0 and rec.memory.load_ms > 0
    assert rec.provenance.runner_version and rec.provenance.executorch_version == "1.5.1"
    assert rec.provenance.runner_build["build_type"] == "Release"
    assert rec.accuracy.min_snr_db > 60 and rec.accuracy.outputs[1].top1_agreement == 1.0
    with Store(tmp_path / "s.sqlite") as s:
        s.save(rec)
        assert s.get(rec.run_id) == rec


@pytest.mark.qemu
@pytest.mark.slow
def test_qemu_runner_profile_is_labelled_emulated(aarch64_runner_bundle, profiled_program, tmp_path):
    res, outputs = _run(aarch64_runner_bundle, profiled_program, tmp_path,
                        emulator=("qemu-aarch64", "-cpu", "cortex-a76"), iterations=5)
    assert res.header.arch == "aarch64"
    run = RunArtifacts(result=res, device_name="rpi5-qemu", device_info=DeviceInfo(**QEMU_INFO),
                       etdump=tmp_path / "run.etdp", outputs=outputs)
    rec = analyse(run, profiled_program.manifest)
    assert rec.source == EMULATED and set(rec.labels.values()) <= {EMULATED, "estimated", MEASURED}
    assert rec.labels["latency"] == rec.labels["operators"] == rec.labels["accuracy"] == EMULATED
    assert rec.operators.iterations == 5
    assert any("emulated" in w for w in rec.warnings)
    # aarch64 XNNPACK kernels differ from x86 ones, but the numbers must still match eager closely.
    assert rec.accuracy.min_snr_db > 40
