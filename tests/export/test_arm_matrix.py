"""Issue 24's done-when for the Arm targets and the MLPerf Tiny models.

* Every one of the 7 Arm targets x 4 MLPerf Tiny models (28 pairs) is accepted or refused with a reason
  before any work: cheap, all 28 here (the pipeline's own resolve stage, which then hands an accepted call to
  the Arm toolchain environment).
* Exporting all 28 took 38 minutes on the 2-core CI machine (under load), so a representative subset is
  exported for real here, one of each kind of check, in ONE toolchain process (the Arm backend is imported
  once): the zoo's MobileNetV2 x0.35 at 96x96 for the Ethos-U55-128 (Vela's estimate within 10 % of the 915k
  cycles the issue's spike measured; the benchmark run gave 988,051) and the anomaly-detection autoencoder for
  the Cortex-M4, each verified functionally against eager fp32 with the int8 thresholds (the TOSA reference
  model for an Ethos-U, the host ``cortex_m::`` operators for a Cortex-M). DS-CNN for the U55 is exported by
  tests/export/test_estimate_devices.py, a small CNN for the U55 and the M55 by test_arm.py. The full 28 (and
  MobileNetV2 x0.35 on every target) run in ``benchmarks/arm_vela.py`` (results/arm_vela-20261207.json).
  Slow: the MobileNetV2 export alone (quantize, Vela, the TOSA reference check of one vector) is 2-3 minutes.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from edgerun.core.errors import UsageError

ARM_TARGETS = ("ethos-u55-128", "ethos-u65-256", "ethos-u85-256", "cortex-m55", "cortex-m85", "cortex-m7", "cortex-m4")
MLPERF_TINY = ("ds_cnn", "resnet8", "mobilenet_v1_025", "autoencoder_ad")
#: (model, target) exported for real below
SUBSET = (("mobilenet_v2_035", "ethos-u55-128"), ("autoencoder_ad", "cortex-m4"))
SPIKE_U55_CYCLES = 915_000




# ------------------------------------------------------------------------------------ all 28, no toolchain
@pytest.mark.parametrize("target", ARM_TARGETS)
def test_every_arm_target_accepts_the_four_mlperf_tiny_models_and_refuses_what_it_cannot_take(target, monkeypatch,
                                                                                             tmp_path):
    """Accepted: the call passes the pipeline's checks and is handed to the toolchain environment (here a
    missing one, so it stops there, exit 5, naming the command). Refused: fp32 and an LLM, with what works."""
    from edgerun.export import export_model
    from edgerun.export.arm.toolchain import ToolchainError

    monkeypatch.setenv("EDGERUN_ARM_TOOLCHAIN", str(tmp_path / "no-toolchain"))
    for model in MLPERF_TINY:
        with pytest.raises(ToolchainError) as e:
            export_model(model, target, "int8", tmp_path / model)
        assert "edgerun toolchain arm" in e.value.hint and not (tmp_path / model).exists()
    with pytest.raises(UsageError) as e:
        export_model("ds_cnn", target, "fp32", tmp_path / "fp32")
    assert "int8" in e.value.hint
    with pytest.raises(UsageError) as e:
        export_model("smollm2-135m", target, "8da4w", tmp_path / "llm")
    assert "LLM" in e.value.message
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ a subset, for real
_EXPORT = """
import json, sys
from edgerun.export import ExportOptions, export_model
from edgerun.core.errors import EdgerunError
out = {}
for model, target, path in json.loads(sys.argv[1]):
    try:
        m = export_model(model, target, "int8", path, options=ExportOptions(vectors=1))
        out[model + "@" + target] = {"path": str(m.path)}
    except EdgerunError as exc:
        out[model + "@" + target] = {"error": exc.message, "exit": int(exc.exit_code)}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def subset(arm_toolchain, tmp_path_factory):
    """The SUBSET exported with one toolchain interpreter (in-process there: the backend imported once)."""
    from edgerun.core.artifact import read_manifest

    root = tmp_path_factory.mktemp("arm-matrix")
    jobs = [(m, t, str(root / f"{m}-{t}")) for m, t in SUBSET]
    proc = subprocess.run([arm_toolchain["python"], "-c", _EXPORT, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=900)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    res = json.loads(line[len("RESULT "):])
    errors = {k: v for k, v in res.items() if "error" in v}
    assert not errors, errors
    return {tuple(k.split("@")): read_manifest(v["path"]) for k, v in res.items()}


@pytest.mark.slow
def test_the_u55_estimate_of_mobilenet_v2_035_is_within_10_percent_of_the_spike(subset):
    from edgerun.estimate import estimated_record

    m = subset[("mobilenet_v2_035", "ethos-u55-128")]
    rep = m.compiler_report
    assert rep.accelerator == "Ethos_U55_128" and rep.clock_hz == 500e6
    assert abs(rep.cycles_total - SPIKE_U55_CYCLES) <= 0.10 * SPIKE_U55_CYCLES, rep.cycles_total
    assert rep.cpu_layers == 0 and rep.npu_layers > 50   # the whole network on the NPU
    rec = estimated_record(m)
    assert rec.latency.median_ms == pytest.approx(rep.cycles_total / 500e6 * 1e3, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("pair", SUBSET, ids=["@".join(p) for p in SUBSET])
def test_the_functional_checks_pass_the_int8_thresholds(subset, pair):
    m = subset[pair]
    v = m.verification
    assert m.status == "ok" and v.passed, v.failures
    out = v.outputs[0]
    assert v.thresholds.min_snr_db <= out.snr_db < float("inf") and out.cosine >= v.thresholds.min_cosine
    if m.target.measure == "estimate":   # an Ethos-U: the NPU's integer graphs in the TOSA reference model
        assert v.runtime.startswith("functional: TOSA reference model") and m.compiler_report is not None
        assert m.operators.delegated.get("EthosUBackend", 0) >= 1
    else:                                # a Cortex-M: CMSIS-NN operators, run by their host implementations
        assert v.runtime.startswith("functional: the Cortex-M edge program") and m.compiler_report is None
        assert any(k.startswith("cortex_m::quantized_linear") for k in m.operators.non_delegated)
    if out.top1_agreement is not None and pair[0] != "autoencoder_ad":
        assert out.top1_agreement == 1.0
