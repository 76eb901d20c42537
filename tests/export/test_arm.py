"""Arm targets (issue 24): the toolchain environment, the Ethos-U targets' refusals, an export through
Vela in the toolchain environment, its compiler report, the estimated record and tampered reports.

Tests that need the toolchain use the ``arm_toolchain`` session fixture (tests/export/conftest.py): the environment scripts/setup
built in the EDGERUN_HOME the suite started with (reused when its pins match), else built once here; a
skip only when pip cannot reach the package index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgerun.core.errors import ArtifactError, UsageError


@pytest.fixture(scope="module")
def u55_tiny(arm_toolchain, tmp_path_factory):
    """factories:tiny_pooled exported for ethos-u55-128 (int8), once: its functional ReLU6 stays on the CPU, so
    the program has two NPU partitions around it."""
    from edgerun.export import ExportOptions, export_model

    stages: list[str] = []
    out = tmp_path_factory.mktemp("arm") / "tiny-u55"
    m = export_model("factories:tiny_pooled", "ethos-u55-128", "int8", out, on_stage=stages.append,
                     options=ExportOptions(vectors=2))
    return m, stages


#: an NCHW model with an ordinary, a depthwise and a pointwise convolution (tests/export/arm_factories.py)
M55_MODEL = "arm_factories:tiny_separable"


@pytest.fixture(scope="module")
def m55_tiny(arm_toolchain, tmp_path_factory):
    from edgerun.export import ExportOptions, export_model

    # default options: bench's cache (the same recipe identity) can hold a copy of it
    return export_model(M55_MODEL, "cortex-m55", "int8", tmp_path_factory.mktemp("arm") / "tiny-m55",
                        options=ExportOptions())


# ------------------------------------------------------------------------------------ no toolchain needed
@pytest.mark.parametrize("target", ["ethos-u55-128", "ethos-u65-256", "ethos-u85-256", "cortex-m55", "cortex-m4"])
def test_fp32_on_an_ethos_u_or_a_cortex_m_is_refused_naming_int8(target):
    from edgerun.export import export_model

    with pytest.raises(UsageError) as e:
        export_model("factories:tiny", target, "fp32", "/nonexistent/never-written")
    assert "fp32" in e.value.message and "int8" in e.value.hint


@pytest.mark.parametrize("target", ["ethos-u55-128", "cortex-m4"])
def test_an_llm_on_an_ethos_u_or_a_cortex_m_is_refused_before_any_work(target):
    from edgerun.export import export_model

    with pytest.raises(UsageError) as e:
        export_model("smollm2-135m", target, "8da4w", "/nonexistent/never-written")
    assert "LLM" in e.value.message and "rpi5" in e.value.hint


def test_a_python_module_is_refused_for_the_toolchain_and_a_missing_toolchain_names_the_command(monkeypatch):
    import torch

    from edgerun.export import export_model
    from edgerun.export.arm.toolchain import ToolchainError

    monkeypatch.setenv("EDGERUN_ARM_TOOLCHAIN", "/nonexistent/arm-toolchain")
    with pytest.raises(UsageError) as e:
        export_model(torch.nn.Linear(4, 2), "ethos-u55-128", "int8", "/nonexistent/x",
                     example_inputs=(torch.randn(1, 4),))
    assert "package.module:factory" in e.value.hint
    with pytest.raises(ToolchainError) as e:
        export_model("factories:tiny", "ethos-u55-128", "int8", "/nonexistent/x")
    assert e.value.exit_code == 5 and "edgerun toolchain arm" in e.value.hint


def test_the_cli_refuses_fp32_on_an_ethos_u_with_exit_2(cli, tmp_path):
    res = cli("export", "factories:tiny", "--target", "ethos-u85-256", "--scheme", "fp32", "-o",
              str(tmp_path / "x"), "--json")
    assert res.returncode == 2, res.stderr
    assert "int8" in json.loads(res.stdout)["error"]["hint"]
    assert not (tmp_path / "x").exists()


def test_the_targets_name_quantizer_partitioner_memory_mode_and_estimate():
    from edgerun.export import TARGETS

    for name in ("ethos-u55-128", "ethos-u65-256", "ethos-u85-256"):
        t = TARGETS[name]
        opts = dict(t.compile_options)
        assert t.measure == "estimate" and t.estimator == "vela" and t.quantizer == name
        assert t.backends == (name,) and t.allowed_schemes == ("int8",) and not t.llm
        assert opts["accelerator"] == name and opts["memory_mode"] and opts["system_config"]


def test_the_toolchain_identity_does_not_depend_on_how_the_interpreter_path_is_spelled(monkeypatch):
    """`benchmarks/../.venv/bin/python` is the same venv as `.venv/bin/python`: the same pins hash (a script run
    from another directory found its toolchain 'stale'); another venv is another hash."""
    import sys

    from edgerun.export.arm import toolchain

    exe = Path(sys.executable).absolute()
    monkeypatch.setattr(sys, "executable", str(exe))
    plain = toolchain.pins_hash()
    monkeypatch.setattr(sys, "executable", str(exe.parent.parent / "bin" / ".." / "bin" / exe.name))
    assert toolchain.pins_hash() == plain
    monkeypatch.setattr(sys, "executable", "/elsewhere/venv/bin/python")
    assert toolchain.pins_hash() != plain


# ------------------------------------------------------------------------------------ the toolchain
def test_the_toolchain_is_reused_while_its_pins_match_and_stale_when_they_change(arm_toolchain, monkeypatch):
    from edgerun.export.arm import toolchain

    path = Path(arm_toolchain["path"])
    again = toolchain.ensure(path)
    assert again["reused"] and again["pins_hash"] == arm_toolchain["pins_hash"]
    assert set(toolchain.PINS) == set(again["pins"])
    assert toolchain.status(path)["state"] == "ready"
    monkeypatch.setattr(toolchain, "PINS", (*toolchain.PINS, "ethos-u-vela==0.0.0"))
    assert toolchain.status(path)["state"] == "stale"
    with pytest.raises(toolchain.ToolchainError) as e:
        toolchain.require(path)
    assert "edgerun toolchain arm" in e.value.hint


def test_an_ethos_u_export_keeps_velas_report_and_checks_numerics_functionally(u55_tiny):
    from edgerun.export.arm.vela import read_layers, read_summary

    m, stages = u55_tiny
    assert {"quantize", "lower", "write", "verify"} <= set(stages)
    rep = m.compiler_report
    # two NPU partitions (ReLU6 between them runs on the CPU), each compiled by Vela into its own reports
    assert rep is not None and rep.compiler == "vela" and rep.partitions == 2 == m.operators.delegated["EthosUBackend"]
    assert rep.accelerator == "Ethos_U55_128" and rep.system_config == "Ethos_U55_High_End_Embedded"
    summaries = [read_summary(m.dir / p) for p in rep.files if "summary" in p]
    assert len(summaries) == 2 and rep.cycles_total == sum(s.cycles_total for s in summaries)
    assert rep.cycles_npu == sum(s.cycles_npu for s in summaries) and rep.nn_macs == sum(s.nn_macs for s in summaries)
    assert 0 < rep.cycles_npu <= rep.cycles_total and rep.sram_bytes > 0 and rep.off_chip_flash_bytes > 0
    # MACs from the layers' arithmetic: conv1 8x8 outputs x 8 channels x 27, conv2 4x4 x 16 x 72, the 4x4 average
    # pool of 16 channels, fc 16x10
    assert rep.nn_macs == 8 * 8 * 8 * 27 + 4 * 4 * 16 * 72 + 16 * 16 + 16 * 10
    layers = [x for p in rep.files if "per-layer" in p for x in read_layers(m.dir / p)]
    assert rep.npu_layers == sum(x.target == "NPU" for x in layers) and {"Conv2D", "AvgPool"} <= {x.op for x in layers}
    assert m.operators.non_delegated.get("aten::hardtanh.out") == 1
    v = m.verification
    assert v.passed and v.runtime.startswith("functional: TOSA reference model") and "2 partition(s)" in v.runtime
    assert "differently" not in v.runtime and v.outputs[0].snr_db >= v.thresholds.min_snr_db
    assert m.target.measure == "estimate" and m.target.functional_check == "tosa-reference"


def test_an_estimated_record_is_stored_labelled_and_a_tampered_report_is_refused(u55_tiny, tmp_path, cli):
    from edgerun.core.artifact import read_manifest
    from edgerun.estimate import estimated_record
    from edgerun.runtime.record import ESTIMATED, RunRecord

    m, _ = u55_tiny
    rec = estimated_record(m, clock_hz=250e6)
    assert rec.source == ESTIMATED and rec.estimate.clock_hz == 250e6
    assert rec.latency.median_ms == pytest.approx(m.compiler_report.cycles_total / 250e6 * 1e3, rel=1e-6)
    assert "vela 5.1.0" in rec.warnings[0] and "not a run" in rec.warnings[0]
    assert any("aten::hardtanh" in w and "CPU" in w for w in rec.warnings)
    assert RunRecord.from_dict(json.loads(json.dumps(rec.to_dict()))).estimate == rec.estimate
    from edgerun.runtime.record import RecordInvalid, check_record_dict

    # `runs import` reads the estimate field by field: edgerun's own records pass (a negative headroom too) ...
    check_record_dict(json.loads(json.dumps(estimated_record(m, sram=1024).to_dict())), "record.json")
    edited = json.loads(json.dumps(rec.to_dict()))
    edited["estimate"]["cycles_total"] = -5   # ... an edited one does not, naming the field
    with pytest.raises(RecordInvalid, match="estimate.cycles_total"):
        check_record_dict(edited, "record.json")
    edited["estimate"]["cycles_total"] = rec.estimate.cycles_total
    del edited["estimate"]["fit"]
    with pytest.raises(RecordInvalid, match="estimate.fit is missing"):
        check_record_dict(edited, "record.json")
    ops = rec.operators   # Vela's per-layer table in the operator-table shape, labelled estimated
    rep = m.compiler_report
    assert len(ops.rows) == rep.npu_layers + rep.cpu_layers and rec.labels["operators"] == ESTIMATED
    assert sum(r.share for r in ops.rows) == pytest.approx(1.0)
    assert sum(r.median_ms for r in ops.rows) == pytest.approx(ops.op_sum_ms)
    assert all(r.backend == "EthosUBackend" for r in ops.rows if r.delegated) and any(r.delegated for r in ops.rows)
    assert RunRecord.from_dict(json.loads(json.dumps(rec.to_dict()))).operators == ops
    from edgerun.runtime.record import VERDICT_ESTIMATED, compare_records

    small = estimated_record(m, sram=1024, flash=1 << 20).estimate.fit   # does it fit a board?
    assert small.sram_needed_bytes == m.compiler_report.sram_bytes + m.planned_memory_bytes
    assert small.sram_fits is False and small.sram_headroom_bytes == 1024 - small.sram_needed_bytes
    assert small.flash_fits is True and small.flash_needed_bytes == m.pte_bytes and small.fits is False
    assert any("does not fit the board's SRAM" in w for w in estimated_record(m, sram=1024).warnings)
    c = compare_records(rec, estimated_record(m, clock_hz=500e6))   # the same cycles at twice the clock
    assert c.verdict == VERDICT_ESTIMATED and not c.reliable and any("-50.0%" in w for w in c.warnings)

    shown = cli("inspect", str(m.dir))
    assert shown.returncode == 0 and "vela 5.1.0 (ESTIMATE)" in shown.stdout, shown.stderr
    store = tmp_path / "runs.sqlite"
    res = cli("estimate", str(m.dir), "--store", str(store), "--json")
    assert res.returncode == 0, res.stderr
    listed = cli("runs", "list", "--store", str(store), "--json")
    runs = json.loads(listed.stdout)["runs"]
    assert [r["source"] for r in runs] == ["estimated"] and runs[0]["device"] == "estimate://ethos-u55-128"

    bad = tmp_path / "tampered"
    shutil.copytree(m.dir, bad)
    summary = next(bad / p for p in m.compiler_report.files if "summary" in p)
    summary.write_text(summary.read_text().replace(str(m.compiler_report.cycles_total),
                                                   str(m.compiler_report.cycles_total // 2)))
    with pytest.raises(ArtifactError, match="changed after export"):
        estimated_record(read_manifest(bad))
    res = cli("estimate", str(bad), "--store", str(store), "--json")
    assert res.returncode == 9 and "Vela report" in json.loads(res.stdout)["error"]["message"]
    assert len(json.loads(cli("runs", "list", "--store", str(store), "--json").stdout)["runs"]) == 1


def test_an_artifact_of_a_run_target_has_no_estimate(u55_tiny):
    import dataclasses

    from edgerun.estimate import estimated_record

    m, _ = u55_tiny
    host = dataclasses.replace(m, target=dataclasses.replace(m.target, name="host", measure="run", estimator=None))
    with pytest.raises(UsageError, match="measured by running"):
        estimated_record(host)


def test_a_cortex_m_artifact_on_its_estimate_device_gets_memory_and_fit_and_no_time(m55_tiny, cli, tmp_path):
    """estimate://cortex-m55?sram=...&flash=...: the tensor arena (planned memory) and the .pte against the board's
    SRAM and flash; no time (no cycle model), nothing stored. An arena one byte larger than the SRAM does not fit."""
    m = m55_tiny
    arena = m.planned_memory_bytes
    assert arena and arena > 0
    store = tmp_path / "runs.sqlite"

    def fit(query: str) -> dict:
        res = cli("profile", str(m.dir), "--device", f"estimate://cortex-m55?{query}", "--store", str(store), "--json")
        assert res.returncode == 0, res.stderr
        d = json.loads(res.stdout)
        assert d["runs"] == [] and d["failures"] == []
        [f] = d["fits"]
        assert f["timing"] is None and f["stored"] is False and f["target"] == "cortex-m55"
        assert any("no timing" in w for w in f["warnings"])
        return f

    ok = fit("sram=512KiB&flash=2MiB")
    assert ok["fits"] is True and ok["device"] == "estimate://cortex-m55"
    assert ok["fit"]["sram_needed_bytes"] == arena and ok["fit"]["flash_needed_bytes"] == m.pte_bytes
    assert ok["fit"]["sram_headroom_bytes"] == 512 * 1024 - arena
    assert ok["fit"]["flash_headroom_bytes"] == 2 * 1024 * 1024 - m.pte_bytes
    assert sum(ok["fit"]["planned_buffers"]) == arena
    exact = fit(f"sram={arena}&flash={m.pte_bytes}")   # the boundary: exactly the arena and the program
    assert exact["fits"] is True and exact["fit"]["sram_headroom_bytes"] == 0
    tight = fit(f"sram={arena - 1}&flash=2MiB")
    assert tight["fits"] is False and tight["fit"]["sram_fits"] is False and tight["fit"]["flash_fits"] is True
    assert any("does not fit the board's SRAM" in w for w in tight["warnings"])
    human = cli("profile", str(m.dir), "--device", f"estimate://cortex-m55?sram={arena - 1}", "--store", str(store))
    assert human.returncode == 0 and "DOES NOT FIT" in human.stdout and "no timing" in human.stdout, human.stderr
    assert json.loads(cli("runs", "list", "--store", str(store), "--json").stdout)["runs"] == []   # never stored
    local = cli("profile", str(m.dir), "--device", "local://", "--store", str(store), "--json")   # no bundle runs it
    assert local.returncode == 2 and "no cortex-m55 kernels" in json.loads(local.stdout)["error"]["message"]


def test_bench_on_a_cortex_m_estimate_device_reports_the_memory_fit_and_stores_no_run(m55_tiny, tmp_path):
    """bench's cell on estimate://cortex-m55: the fit under ``fits`` (here an arena one byte larger than the SRAM),
    no run id, no failure. The export is the module's, copied where bench's cache looks for it."""
    import shutil

    from edgerun.profiling import ProfileSettings, artifact_cache_dir, bench
    from edgerun.store import Store

    shutil.copytree(m55_tiny.dir, artifact_cache_dir(M55_MODEL, "cortex-m55", "int8"))
    arena = m55_tiny.planned_memory_bytes
    cells: list[tuple[str, str]] = []
    with Store(tmp_path / "runs.sqlite") as store:
        summary = bench(M55_MODEL, ["cortex-m55"], ["int8"], [f"estimate://cortex-m55?sram={arena - 1}"],
                        ProfileSettings(threads=(1,)), store=store, on_cell=lambda k, w: cells.append((k, w)))
        assert list(store.list()) == []   # nothing stored: a fit is not a run
    assert not summary["failures"] and not summary["run_ids"] and not summary["skipped"]
    [fit] = summary["fits"]
    assert fit["fits"] is False and fit["fit"]["sram_needed_bytes"] == arena and fit["timing"] is None
    assert fit["cell"].startswith(f"{M55_MODEL}/cortex-m55/int8/estimate://cortex-m55")
    assert any("memory fit: does not fit (no timing)" in w for _, w in cells)


@pytest.mark.slow   # a second export in the toolchain environment (~30 s, most of it importing the Arm backend)
def test_a_cortex_m_export_uses_cmsis_nn_operators_and_is_checked_with_the_host_reference_ops(m55_tiny):
    """An NCHW model's convolutions are int8 CMSIS-NN ones (the backend's explicit-layout mode): no fp32
    ``aten::convolution`` left, the depthwise one on the depthwise kernel, and the program's input and output
    keep the model's NCHW shapes and contiguous layout (the layout changes inside, ``cortex_m::transpose``)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    from edgerun.estimate import estimated_record

    m = m55_tiny
    ops = m.operators.non_delegated
    assert not [k for k in ops if k.startswith("aten::convolution")], ops
    assert ops.get("cortex_m::quantized_conv2d_nhwc.out") == 2, ops                 # the 3x3 and the pointwise
    assert ops.get("cortex_m::quantized_depthwise_conv2d_nhwc.out") == 1, ops       # groups == channels
    assert ops.get("cortex_m::transpose.out", 0) >= 1, ops
    assert ops.get("cortex_m::quantized_linear.out") == 1 and ops.get("cortex_m::quantized_avg_pool2d_nhwc.out") == 1
    assert not m.operators.delegated and m.compiler_report is None and m.target.lowering == "cortex-m"
    assert dict(m.target.compile_options)["layout"] == "explicit"   # in the identity: old programs are not reused
    program = deserialize_pte_binary((m.dir / "model.pte").read_bytes())
    plan = getattr(program, "program", program).execution_plan[0]
    [x], [y] = ([plan.values[i].val for i in ids] for ids in (plan.inputs, plan.outputs))
    assert list(x.sizes) == list(m.inputs[0].shape) == [1, 3, 8, 8] and list(x.dim_order) == [0, 1, 2, 3]
    assert list(y.sizes) == [1, 10] and list(y.dim_order) == [0, 1]
    v = m.verification
    assert v.passed and v.runtime.startswith("functional: the Cortex-M edge program")
    assert "quantized_depthwise_conv2d_nhwc" in v.runtime and "quantized_conv2d_nhwc" in v.runtime
    assert v.outputs[0].snr_db >= v.thresholds.min_snr_db and v.outputs[0].cosine >= v.thresholds.min_cosine
    with pytest.raises(UsageError, match="no cycle model"):   # no timing is invented
        estimated_record(m)


def test_the_poolings_cortex_m_cannot_make_nhwc_are_found_before_lowering():
    """Refused by what the graph says (each pooling's own arguments), not by the text of ExecuTorch's error: a max
    pooling with ceil_mode or dilation and an average pooling with divisor_override, named with their module;
    the same poolings with their defaults pass."""
    import torch

    from edgerun.export.arm.cortex_m import nhwc_blockers

    class Pools(torch.nn.Module):
        def __init__(self, bad: bool):
            super().__init__()
            self.pool = torch.nn.MaxPool2d(2, dilation=2 if bad else 1, ceil_mode=bad)
            self.avg = torch.nn.AvgPool2d(2, divisor_override=3 if bad else None)

        def forward(self, x):
            return self.avg(self.pool(x))

    x = torch.randn(1, 2, 9, 9)
    found = nhwc_blockers(torch.export.export(Pools(True).eval(), (x,)).graph)
    assert len(found) == 2, found
    assert found[0].startswith("max_pool2d (in pool)") and "dilation=[2, 2]" in found[0] and "ceil_mode=True" in found[0]
    assert found[1] == "avg_pool2d (in avg): divisor_override=3"
    assert nhwc_blockers(torch.export.export(Pools(False).eval(), (x,)).graph) == []


@pytest.mark.slow   # an export in the toolchain environment
def test_a_pooling_the_explicit_layout_cannot_take_is_refused_naming_it(arm_toolchain, tmp_path):
    """A max pooling with ceil_mode has no NHWC CMSIS-NN form; the explicit-layout mode refuses the graph, and the
    error says which operator and what would work, before anything is written."""
    from edgerun.core.errors import ExportError
    from edgerun.export import export_model

    with pytest.raises(ExportError) as e:
        export_model("arm_factories:tiny_ceil_pool", "cortex-m4", "int8", tmp_path / "out")
    assert e.value.stage == "lower" and "max_pool2d" in e.value.message and "ceil_mode" in e.value.message
    assert "ceil_mode=False" in e.value.hint and not (tmp_path / "out").exists()
