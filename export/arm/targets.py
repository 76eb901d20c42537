"""The Ethos-U targets: their backends (EthosUPartitioner), quantizers (EthosUQuantizer), the Vela reports
kept around lowering, the functional check and the Vela estimator, registered through
:mod:`edgerun.export.targets`.

Each Ethos-U target names the accelerator configuration Vela compiles for, with ExecuTorch's default system
configuration and memory mode for it (``compile_options``). Its programs run only on an Ethos-U (a Corstone
FVP or a board), never on this host: ``measure="estimate"`` (Vela's performance model) and the numerics
are checked functionally: the TOSA graphs Vela compiles, run by the TOSA reference model
(:func:`tosa_reference_check`). Everything that imports the Arm backend runs
inside the Arm toolchain environment (:mod:`.toolchain`); the registrations themselves import nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path
from typing import Any, Iterator

from edgerun.core.artifact import CompilerReport, Thresholds, Verification, sha256_file, thresholds_failures

from ..targets import (COMPILER_REPORTS, FUNCTIONAL_CHECKS, Target, register_backend, register_estimator,
                       register_quantizer, register_target)

#: target name -> (Vela accelerator config, system config, memory mode): ExecuTorch's defaults for each
ETHOS_U = {
    "ethos-u55-128": ("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram",
                      "Corstone-300 class: Cortex-M55 + Ethos-U55 (128 MACs/cycle)"),
    "ethos-u65-256": ("ethos-u65-256", "Ethos_U65_High_End", "Dedicated_Sram_384KB",
                      "Ethos-U65 (256 MACs/cycle) beside a Cortex-M or Cortex-A host"),
    "ethos-u85-256": ("ethos-u85-256", "Ethos_U85_SYS_DRAM_Mid", "Sram_Only",
                      "Corstone-320 class: Cortex-M85 + Ethos-U85 (256 MACs/cycle)"),
}
TOOLCHAIN = "arm"


class _Lowering:
    """The Vela reports of the lowering under way: set by :func:`vela_reports`, read by the backend factory."""

    directory: Path | None = None
    calls: list[Path] = []


def compile_spec(target: Target):
    from executorch.backends.arm.ethosu import EthosUCompileSpec

    opts = dict(target.compile_options)
    return EthosUCompileSpec(opts["accelerator"], system_config=opts["system_config"],
                             memory_mode=opts["memory_mode"], extra_flags=["--verbose-performance"])


def _vela_interposed() -> None:
    """Give each Vela compilation (one per NPU partition) its own output directory under the one
    :func:`vela_reports` keeps: ExecuTorch compiles every partition into the same directory, so a
    second partition's reports would overwrite the first's. ``vela_compile`` is wrapped once, at its
    use in the Ethos-U backend; outside :func:`vela_reports` it runs as before."""
    from executorch.backends.arm.ethosu import backend

    if getattr(backend.vela_compile, "_edgerun", False):
        return
    original = backend.vela_compile

    def vela_compile(tosa_flatbuffer, args, verbose=False, intermediate_path=None, block_placements=None):
        if _Lowering.directory is not None:
            d = _Lowering.directory / f"partition_{len(_Lowering.calls)}"
            d.mkdir(parents=True)
            _Lowering.calls.append(d)
            (d / "graph.tosa").write_bytes(tosa_flatbuffer)
            intermediate_path = str(d)
        return original(tosa_flatbuffer, list(args), verbose=verbose, intermediate_path=intermediate_path,
                        block_placements=block_placements)

    vela_compile._edgerun = True
    backend.vela_compile = vela_compile


def _partitioners(name: str):
    def make(scheme) -> list:
        from executorch.backends.arm.ethosu import EthosUPartitioner

        from ..targets import get_target

        _vela_interposed()
        if _Lowering.directory is not None:     # a new lowering attempt: its reports replace the last one's
            shutil.rmtree(_Lowering.directory, ignore_errors=True)
            _Lowering.calls = []
        return [EthosUPartitioner(compile_spec(get_target(name)))]

    return make


def _quantizer(name: str):
    def make(scheme):
        from executorch.backends.arm.quantizer import EthosUQuantizer, get_symmetric_quantization_config

        from ..targets import get_target

        q = EthosUQuantizer(compile_spec(get_target(name)))
        q.set_global(get_symmetric_quantization_config(is_per_channel=getattr(scheme, "per_channel", True)))
        return q

    return make


class _Reports:
    def __init__(self, directory: Path, target: Target):
        self.directory, self.target = directory, target

    def facts(self) -> CompilerReport | None:
        return report_from(self.directory, self.target, list(_Lowering.calls))


@contextlib.contextmanager
def vela_reports(artifact_tmp: Path, target: Target) -> Iterator[_Reports]:
    """Keep Vela's reports of this lowering in ``<artifact>/vela/partition_N/``."""
    directory = Path(artifact_tmp) / "vela"
    _Lowering.directory, _Lowering.calls = directory, []
    try:
        yield _Reports(directory, target)
    finally:
        _Lowering.directory = None


def report_from(directory: Path, target: Target, partitions: list[Path]) -> CompilerReport | None:
    """The manifest's ``compiler_report`` from each partition's Vela CSVs (only they are kept)."""
    from importlib import metadata

    from .vela import find_reports, read_layers, read_summary

    if not partitions:
        return None
    root = directory.parent
    summaries, layers, files = [], [], {}
    for d in partitions:
        s_path, l_path = find_reports(d / "output")
        kept = d / s_path.name
        shutil.move(str(s_path), kept)
        summaries.append(read_summary(kept))
        files[str(kept.relative_to(root))] = sha256_file(kept)
        if l_path is not None:
            kept_l = d / "per-layer.csv"
            shutil.move(str(l_path), kept_l)
            layers.extend(read_layers(kept_l))
            files[str(kept_l.relative_to(root))] = sha256_file(kept_l)
        shutil.rmtree(d / "output", ignore_errors=True)
        for extra in d.glob("*.tosa"):
            extra.unlink()
    first = summaries[0]
    return CompilerReport(
        compiler="vela", version=metadata.version("ethos-u-vela"), accelerator=first.accelerator,
        system_config=first.system_config, memory_mode=first.memory_mode, clock_hz=first.clock_hz,
        partitions=len(summaries), cycles_total=sum(s.cycles_total for s in summaries),
        cycles_npu=sum(s.cycles_npu for s in summaries),
        inference_seconds=sum(s.inference_seconds for s in summaries),
        sram_bytes=sum(s.sram_bytes for s in summaries), dram_bytes=sum(s.dram_bytes for s in summaries),
        on_chip_flash_bytes=sum(s.on_chip_flash_bytes for s in summaries),
        off_chip_flash_bytes=sum(s.off_chip_flash_bytes for s in summaries),
        nn_macs=sum(s.nn_macs for s in summaries), npu_layers=sum(x.target == "NPU" for x in layers),
        cpu_layers=sum(x.target == "CPU" for x in layers), files=files)


def quantized_graph_check(exported, manifest, thresholds: Thresholds) -> Verification:
    """The functional check of a program this host cannot run: the quantized graph the NPU program was
    lowered from (the Arm quantizer's int8 quantize/dequantize around every operator), run in eager
    PyTorch on the test vectors, against eager fp32. It checks the quantization (scales, zero points,
    calibration, what was left fp32), not the NPU's integer kernels or Vela's compilation."""
    import numpy as np
    import torch

    from edgerun.core.numerics import aggregate, compare_outputs
    from torch.utils._pytree import tree_flatten

    module = exported.module()
    per_vector = []
    with torch.no_grad():
        for v in manifest.load_test_vectors():
            outs, _ = tree_flatten(module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in v.inputs]))
            actual = [np.asarray(o.detach().numpy()) for o in outs if isinstance(o, torch.Tensor)]
            per_vector.append(compare_outputs(actual, v.outputs))
    summary = aggregate(per_vector)
    if len(manifest.outputs) == len(summary):
        summary = [dataclasses.replace(m, name=spec.name) for m, spec in zip(summary, manifest.outputs)]
    failures = thresholds_failures(summary, thresholds)
    return Verification(runtime="functional: the Arm quantizer's int8 graph in eager PyTorch (not the NPU kernels)",
                        thresholds=thresholds, outputs=tuple(summary), passed=not failures, failures=tuple(failures))


def tosa_reference_check(exported, manifest, thresholds: Thresholds) -> Verification:
    """The functional check of an Ethos-U program: the quantized graph lowered again with ExecuTorch's TOSA
    partitioner for the target's TOSA profile (the graphs Vela compiles), each partition run by the TOSA
    reference model (tosa-tools, integer arithmetic as the TOSA spec defines it) and the rest by PyTorch
    (``TosaReferenceModelDispatch``, ExecuTorch's own harness), on the test vectors, against eager fp32.
    Vela's compilation of those graphs into NPU commands is not checked: no Ethos-U runs here."""
    import copy

    import numpy as np
    import torch
    from executorch.backends.arm.test.runner_utils import TosaReferenceModelDispatch
    from executorch.backends.arm.tosa.compile_spec import TosaCompileSpec
    from executorch.backends.arm.tosa.partitioner import TOSAPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from torch.utils._pytree import tree_flatten

    from edgerun.core.numerics import aggregate, compare_outputs

    from ..targets import get_target

    spec = compile_spec(get_target(manifest.target.name)).tosa_spec
    edge = to_edge_transform_and_lower(copy.deepcopy(exported), partitioner=[TOSAPartitioner(TosaCompileSpec(spec))],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    program = edge.exported_program()
    module = program.module()
    partitions = sum(1 for n in program.graph.nodes if n.op == "call_function"
                     and getattr(n.target, "__name__", "") == "executorch_call_delegate")
    per_vector = []
    with torch.no_grad():
        for v in manifest.load_test_vectors():
            with TosaReferenceModelDispatch():
                outs, _ = tree_flatten(module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in v.inputs]))
            actual = [np.asarray(o.detach().contiguous().numpy()) for o in outs if isinstance(o, torch.Tensor)]
            per_vector.append(compare_outputs(actual, v.outputs))
    summary = aggregate(per_vector)
    if len(manifest.outputs) == len(summary):
        summary = [dataclasses.replace(m, name=spec_.name) for m, spec_ in zip(summary, manifest.outputs)]
    failures = thresholds_failures(summary, thresholds)
    npu = sum((manifest.operators.delegated or {}).values())
    same = "" if partitions == npu else f"; partitioned differently from the NPU program ({npu} partition(s))"
    return Verification(runtime=f"functional: TOSA reference model ({spec}), {partitions} partition(s), the rest in "
                                f"PyTorch; not the NPU{same}",
                        thresholds=thresholds, outputs=tuple(summary), passed=not failures, failures=tuple(failures))


def vela_estimate(manifest, clock_hz: float | None = None) -> dict[str, Any]:
    """The estimate of an Ethos-U artifact, re-read from the Vela CSVs it keeps: each file must match the
    sha256 the manifest names and say what the manifest says (a changed report is refused, never used).
    ``clock_hz`` rescales the inference time (cycles do not change with the clock in Vela's model only
    to first order: memory-bound layers would differ; the record says which clock was used)."""
    from edgerun.core.errors import ArtifactError

    from .vela import VelaReportError, read_layers, read_summary

    rep = manifest.compiler_report
    if rep is None:
        raise ArtifactError(f"artifact {manifest.path} has no compiler report (Vela's figures): it was not "
                            "exported for an Ethos-U target by this edgerun.", stage="estimate",
                            hint="Re-export it with `edgerun export MODEL --target ethos-u55-128 --scheme int8`.")
    hint = "Re-export the artifact; never edit an artifact's files by hand."
    summaries, layers = [], []
    for rel, sha in rep.files.items():
        p = manifest.existing_file(rel, "Vela report")
        if sha256_file(p) != sha:
            raise ArtifactError(f"artifact {manifest.path}: the Vela report {rel} does not match the sha256 in the "
                                "manifest: it was changed after export, so no estimate is made from it.",
                                stage="estimate", hint=hint)
        try:
            (layers.extend(read_layers(p)) if p.name == "per-layer.csv" else summaries.append(read_summary(p)))
        except (VelaReportError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"artifact {manifest.path}: the Vela report {rel} is not what Vela writes: {exc}.",
                                stage="estimate", hint=hint) from None
    total = sum(s.cycles_total for s in summaries)
    if len(summaries) != rep.partitions or total != rep.cycles_total:
        raise ArtifactError(f"artifact {manifest.path}: its Vela reports ({len(summaries)} partition(s), {total} "
                            f"cycles) contradict the manifest ({rep.partitions}, {rep.cycles_total}).",
                            stage="estimate", hint=hint)
    clock = float(clock_hz) if clock_hz else rep.clock_hz
    return {"cycles_total": total, "cycles_npu": sum(s.cycles_npu for s in summaries), "clock_hz": clock,
            "inference_ms": total / clock * 1e3, "sram_bytes": rep.sram_bytes,
            "off_chip_flash_bytes": rep.off_chip_flash_bytes, "dram_bytes": rep.dram_bytes,
            "nn_macs": rep.nn_macs, "npu_layers": rep.npu_layers, "cpu_layers": rep.cpu_layers,
            "layers": [dataclasses.asdict(x) for x in layers], "compiler": f"vela {rep.version}",
            "system_config": rep.system_config, "memory_mode": rep.memory_mode, "accelerator": rep.accelerator}


def register() -> None:
    register_estimator("vela")(vela_estimate)
    FUNCTIONAL_CHECKS["quantized-graph"] = quantized_graph_check
    FUNCTIONAL_CHECKS["tosa-reference"] = tosa_reference_check
    COMPILER_REPORTS[TOOLCHAIN] = vela_reports
    for name, (accel, system_config, memory_mode, board) in ETHOS_U.items():
        register_backend(name)(_partitioners(name))
        register_quantizer(name)(_quantizer(name))
        register_target(Target(
            name, f"Arm Ethos-U NPU: {board}; Vela {system_config}, {memory_mode}; estimated, not run",
            "armv8.1-m" if "u65" not in name else "any", "cortex-m55" if "u55" in name else
            "cortex-m85" if "u85" in name else "cortex-m/a host", (name,), "int8", ("int8",), bundle_variant="none",
            quantizer=name, measure="estimate", estimator="vela", toolchain=TOOLCHAIN,
            compile_options=(("accelerator", accel), ("system_config", system_config), ("memory_mode", memory_mode)),
            functional_check="tosa-reference", llm=False,
            forbidden_recipes=()))


register()
