"""Estimated run records: the figures of a target whose programs are not run here (``measure="estimate"``,
e.g. an Ethos-U NPU: Vela's performance model), as a normal run record labelled **estimated**.

The record holds one "sample": the estimated inference time (total cycles / clock) -- there is nothing
to take statistics of, and ``runs list``, ``report`` and ``compare`` keep its source apart from measured
and emulated runs. The compiler's figures (cycles, NPU cycles, SRAM and flash used, MACs, NPU/CPU
layers, compiler version, system configuration, memory mode, the clock) are in ``record.estimate``; the
planned memory of the program is the manifest's. Nothing here is invented: a target without an estimator
gets no run record.

A target whose programs no runner bundle here runs and no estimator times (a Cortex-M: CMSIS-NN kernels, no
cycle model) gets a :class:`MemoryFit` instead: the program's tensor arena (its planned memory) and flash
(the ``.pte``) against a board's SRAM and flash -- "does it fit" before anyone flashes a board -- and no
time. It is not a run record (nothing ran and nothing was timed, and a run record always carries a time),
so it is printed and returned, never stored.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import TYPE_CHECKING

from edgerun.core.artifact import Manifest
from edgerun.core.errors import UsageError
from edgerun.core.text import parse_size  # noqa: F401  (the estimate options and CLI read sizes with it)

if TYPE_CHECKING:
    from edgerun.runtime.record import BoardFit


def fit(manifest: Manifest, figures: dict, *, sram: int | None = None, flash: int | None = None) -> "BoardFit":
    """Does the program fit a board? SRAM it needs: the NPU's SRAM as Vela planned it (its arena: scratch and
    tensors; off-chip memory counted apart) plus the program's own planned buffers on the CPU side (inputs,
    outputs, what runs off the NPU); flash: the whole ``.pte`` (Vela's command stream and weights are in it).
    Headroom is the board's size minus that; without a board size only the needs are given. An upper bound:
    the NPU partitions' inputs and outputs may be counted in both parts."""
    need_sram = int(figures["sram_bytes"]) + int(manifest.planned_memory_bytes or 0)
    need_flash = int(manifest.program_bytes)
    return _with_headroom(need_sram, need_flash, sram, flash,
                          sram_parts={"npu_sram_vela": int(figures["sram_bytes"]),
                                      "planned_buffers": int(manifest.planned_memory_bytes or 0)})


def fit_only(target) -> bool:
    """A target answered by memory and fit alone: no runner bundle here runs its programs (a board does) and no
    estimator times them (a Cortex-M)."""
    return target is not None and target.measure != "estimate" and target.bundle_variant == "none"


def program_fit(manifest: Manifest, *, sram: int | None = None, flash: int | None = None) -> "BoardFit":
    """Does a program with no NPU fit a board? SRAM it needs: the tensor arena, i.e. the program's planned
    memory (every planned buffer, the CMSIS-NN kernels' scratch tensors among them: ExecuTorch's Cortex-M
    passes size them at export and plan them like any tensor); flash: the whole ``.pte`` (weights and the
    program). Not counted: the runtime's own code and stack, and the method allocator's bookkeeping."""
    need_sram = int(manifest.planned_memory_bytes or 0)
    need_flash = int(manifest.program_bytes)
    return _with_headroom(need_sram, need_flash, sram, flash, sram_parts={"arena_planned": need_sram},
                          planned_buffers=tuple(int(b) for b in manifest.planned_buffers))


@dataclasses.dataclass(frozen=True)
class MemoryFit:
    """An artifact's memory and fit on a board (``estimate://cortex-m55?sram=512KiB&flash=2MiB``): what an
    estimate device gives for a target with no cycle model. No time, never stored (not a run record)."""

    device_name: str
    model: str
    target: str
    scheme: str
    artifact: str
    fit: "BoardFit"
    warnings: tuple[str, ...] = ()

    @property
    def fits(self) -> bool | None:
        """True/False when the board's sizes were given (both parts that were given fit), else None."""
        return self.fit.fits

    def to_json(self) -> dict:
        return {"kind": "memory-fit", "device": self.device_name, "model": self.model, "target": self.target,
                "scheme": self.scheme, "artifact": self.artifact, "fits": self.fits, "fit": self.fit.to_dict(),
                "timing": None, "stored": False, "warnings": list(self.warnings)}


def memory_fit(manifest: Manifest, device_name: str, *, sram: int | None = None,
               flash: int | None = None) -> MemoryFit:
    """The :class:`MemoryFit` of an artifact of a fit-only target (see :func:`fit_only`)."""
    from edgerun.export.targets import TARGETS

    target = TARGETS.get(manifest.target.name)
    if not fit_only(target):
        raise UsageError(f"artifact {manifest.path} is for target {manifest.target.name!r}, which has a run or an "
                         "estimate of its own, not a memory fit alone.")
    fit = program_fit(manifest, sram=sram, flash=flash)
    warnings = [f"no timing: {manifest.target.name} has no cycle model here and nothing was run; a board driven "
                "over serial:// (devices/SERIAL_PROTOCOL.md) would time it"]
    warnings += fit.misfits()
    return MemoryFit(device_name=device_name, model=manifest.model.name, target=manifest.target.name,
                     scheme=manifest.scheme.recipe or manifest.scheme.name, artifact=str(manifest.path), fit=fit,
                     warnings=tuple(warnings))


def estimated_record(manifest: Manifest, *, clock_hz: float | None = None, sram: int | None = None,
                     flash: int | None = None):
    from edgerun.core.version import edgerun_version
    from edgerun.runtime.analysis import edgerun_git_commit
    from edgerun.devices.info import DeviceInfo
    from edgerun.export.targets import TARGETS
    from edgerun.runtime.record import (ESTIMATED, Estimate, LayerEstimate, Memory, ModelInfo, Provenance,
                                        RunRecord, Sample, new_run_id)
    from edgerun.runtime.stats import summarize

    target = TARGETS.get(manifest.target.name)
    if manifest.target.measure != "estimate" or target is None or target.measure != "estimate":
        if fit_only(target):
            raise UsageError(f"artifact {manifest.path} is for target {manifest.target.name!r}, which has no cycle "
                             "model: there is no estimated time to record, only its memory and fit.",
                             hint=f"`edgerun profile ARTIFACT --device 'estimate://{manifest.target.name}?sram=512KiB"
                                  "&flash=2MiB'` says whether it fits a board; a board on serial:// times it.")
        raise UsageError(f"artifact {manifest.path} is for target {manifest.target.name!r}, whose programs are "
                         "measured by running them, not estimated.",
                         hint="Use `edgerun profile ARTIFACT --device D` for it; estimates are for targets "
                              "such as ethos-u55-128.")
    if clock_hz is not None and not (1e6 <= clock_hz <= 1e10):
        raise UsageError(f"--clock {clock_hz:g} Hz is not an NPU clock.", hint="Give it in Hz, e.g. 500e6.")
    fig = target.estimate(manifest, clock_hz=clock_hz)
    ns = int(round(fig["cycles_total"] / fig["clock_hz"] * 1e9))
    now = _dt.datetime.now(_dt.timezone.utc)
    device = DeviceInfo(arch=manifest.target.arch, cpu_model=f"{fig['accelerator']} ({fig['system_config']}, "
                        f"{fig['memory_mode']}) at {fig['clock_hz'] / 1e6:g} MHz", transport="estimate")
    layers = fig.get("layers") or []
    ops = manifest.operators
    board = fit(manifest, fig, sram=sram, flash=flash)
    misfit = board.misfits()
    figures = Estimate(
        compiler=fig["compiler"], accelerator=fig["accelerator"], system_config=fig["system_config"],
        memory_mode=fig["memory_mode"], clock_hz=float(fig["clock_hz"]), cycles_total=int(fig["cycles_total"]),
        cycles_npu=int(fig["cycles_npu"]), inference_ms=float(fig["inference_ms"]), sram_bytes=int(fig["sram_bytes"]),
        off_chip_flash_bytes=int(fig["off_chip_flash_bytes"]), dram_bytes=int(fig["dram_bytes"]),
        nn_macs=int(fig["nn_macs"]), npu_layers=int(fig["npu_layers"]), cpu_layers=int(fig["cpu_layers"]),
        npu_share=(fig["npu_layers"] / (fig["npu_layers"] + fig["cpu_layers"])
                   if fig["npu_layers"] + fig["cpu_layers"] else None),
        cpu_kernel_calls=int(sum(ops.non_delegated.values())), npu_delegate_calls=int(sum(ops.delegated.values())),
        top_layers=tuple(LayerEstimate(op=x["op"], name=x["name"], target=x["target"], cycles=int(x["cycles"]),
                                       macs=int(x["macs"]), mac_util_pct=x["mac_util"])
                         for x in sorted(layers, key=lambda x: -x["cycles"])[:20]),
        fit=board)
    on_cpu = sorted(k for k in ops.non_delegated if not k.startswith("quantized_decomposed::"))
    cpu_note = ((f"{len(on_cpu)} operator(s) run on the host CPU, outside the NPU and outside this estimate: "
                 + ", ".join(on_cpu[:8]) + (" …" if len(on_cpu) > 8 else ""),) if on_cpu else ())
    return RunRecord(
        operators=_layer_table(layers, fig["clock_hz"], fig["cycles_total"]),
        run_id=new_run_id(now), created_at=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        model=ModelInfo(name=manifest.model.name, target=manifest.target.name, arch=manifest.target.arch,
                        scheme=manifest.scheme.recipe or manifest.scheme.name, recipe_hash=manifest.recipe_hash,
                        artifact=str(manifest.path),
                        inputs=tuple({"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
                                     for t in manifest.inputs)),
        device_name=f"estimate://{manifest.target.name}", device=device,
        provenance=Provenance(edgerun_version=edgerun_version(), git_commit=edgerun_git_commit(),
                              runner_version=None, runner_source_hash=None, runner_build=None,
                              executorch_version=None,
                              artifact_executorch_version=manifest.versions.get("executorch"),
                              torch_version=manifest.versions.get("torch"), protocol=None, threads=None,
                              hardware_threads=None),
        source=ESTIMATED, samples=(Sample(index=0, warmup=False, execute_ns=ns),),
        latency=summarize([ns]), wall=None,
        memory=Memory(planned_bytes=manifest.planned_memory_bytes, peak_rss_bytes=None, rss_bytes=None,
                      pte_bytes=manifest.program_bytes, bundle_bytes=None, load_ms=None, program_load_ms=None,
                      method_load_ms=None, sources={"planned_bytes": ESTIMATED, "pte_bytes": ESTIMATED}),
        warnings=(f"estimated by {fig['compiler']} ({fig['accelerator']}, {fig['system_config']}, "
                  f"{fig['memory_mode']}, {fig['clock_hz'] / 1e6:g} MHz): a performance model, not a run; the "
                  "CPU's share (quantize/dequantize and any operator left off the NPU) is not in the time",
                  *cpu_note, *misfit),
        estimate=figures)


def _layer_table(layers: list[dict], clock_hz: float, cycles_total: int):
    """Vela's per-layer estimates in the operator-table shape of a measured run (``runs show`` and ``report``
    print it like one): a row per layer, its cycles / clock as its time, NPU layers as the Ethos-U delegate's,
    one "iteration". MAC utilisation stays in ``estimate.top_layers``. None without a per-layer report."""
    from edgerun.runtime.optable import OperatorProfile, OperatorRow

    if not layers:
        return None
    total = sum(int(x["cycles"]) for x in layers)
    rows = sorted((OperatorRow(name=f"{x['op']} {x['name']}"[:160], kind="operator", delegated=x["target"] == "NPU",
                               backend="EthosUBackend" if x["target"] == "NPU" else None, count=1,
                               median_ms=int(x["cycles"]) / clock_hz * 1e3,
                               share=int(x["cycles"]) / total if total else 0.0, op_types=(x["op"],),
                               samples_ms=(int(x["cycles"]) / clock_hz * 1e3,)) for x in layers),
                  key=lambda r: -r.median_ms)
    op_sum = total / clock_hz * 1e3
    whole = cycles_total / clock_hz * 1e3
    return OperatorProfile(rows=tuple(rows), delegate_ops=(), iterations=1, skipped_runs=0, op_sum_ms=op_sum,
                           method_execute_ms=None, measured_execute_ms=whole,
                           coverage=op_sum / whole if whole else None,
                           warnings=("estimated: Vela's per-layer cycles / the clock, not a measurement",))


# ------------------------------------------------------------------------------ estimate:// devices

def check_estimate_spec(spec) -> None:
    """An estimate device must name a target whose programs are estimated (the devices layer knows no targets,
    so the hall checks this before any work), or one answered by memory and fit alone (a Cortex-M: no cycle
    model, so no clock); a target a device runs is run."""
    from edgerun.export import TARGETS

    names = ", ".join(sorted(n for n, t in TARGETS.items() if t.measure == "estimate" or fit_only(t)))
    t = TARGETS.get(spec.target or "")
    if t is None:
        raise UsageError(f"estimate device target {spec.target!r} is not a target; estimated targets: {names}.",
                         stage="inventory")
    if t.measure != "estimate":
        if fit_only(t):   # a Cortex-M: its estimate device answers memory and fit, with no time
            if spec.clock is not None:
                raise UsageError(f"estimate://{spec.target}?clock=...: {spec.target} has no cycle model, so a clock "
                                 "would time nothing.", stage="inventory",
                                 hint=f"Drop clock; estimate://{spec.target}?sram=512KiB&flash=2MiB says whether a "
                                      "program fits a board.")
            return
        raise UsageError(f"{spec.target} programs are run on a device, not estimated; estimated targets: {names}.",
                         stage="inventory")


def is_estimate_device(spec) -> bool:
    from edgerun.devices.estimate import EstimateSpec

    return isinstance(spec, EstimateSpec)


def pair_skip_reason(target: str, spec) -> str | None:
    """Why a (target, estimate device) cell is not a cell: the device estimates another target's programs.
    None when the pair is legal (or the device is not an estimate device)."""
    if not is_estimate_device(spec) or spec.target == target:
        return None
    return (f"{spec.ref} estimates {spec.target} programs, not {target} ones ("
            + (f"estimate://{target} is theirs)" if _estimated(target) else f"{target} programs are run on a "
               "device)"))


def run_skip_reason(target: str, spec) -> str | None:
    """Why a (target, device) cell cannot run on a device that runs programs: no runner bundle edgerun builds
    (host, aarch64) holds the target's kernels (an Ethos-U's NPU delegate, a Cortex-M's CMSIS-NN operators),
    so local://, ssh://, adb:// and qemu-aarch64:// cannot run its programs. serial:// is not refused: the
    board at the other end may run them (devices/SERIAL_PROTOCOL.md). None when the pair is legal."""
    from edgerun.export import TARGETS

    t = TARGETS.get(target)
    if t is None or is_estimate_device(spec) or t.bundle_variant != "none" or spec.transport == "serial":
        return None
    alt = f"estimate://{target}" + (" estimates them" if t.measure == "estimate" else " gives their memory and fit")
    return (f"{spec.ref} runs edgerun's runner bundles, which hold no {target} kernels, so it cannot run {target} "
            f"programs ({alt}; a board on serial:// runs them)")


def _estimated(target: str) -> bool:
    from edgerun.export import TARGETS

    t = TARGETS.get(target)
    return t is not None and (t.measure == "estimate" or fit_only(t))


def record_for_device(manifest: Manifest, spec, *, sweep_id: str | None = None, cell: str | None = None):
    """The estimated record of ``manifest`` on the estimate device ``spec`` (its clock and board sizes; the
    artifact's system config and memory mode), named after the device like any run; nothing is run. For a
    fit-only target (a Cortex-M) its :class:`MemoryFit` instead."""
    from edgerun.export import TARGETS

    if manifest.target.name != spec.target:
        raise UsageError(f"artifact {manifest.path} is for target {manifest.target.name!r}; {spec.ref} estimates "
                         f"{spec.target} programs.",
                         hint=(f"Use --device estimate://{manifest.target.name}" if _estimated(manifest.target.name)
                               else "Profile it on a device that runs it (local://, ssh://, qemu-aarch64:// ...)."))
    board = spec.board()
    if fit_only(TARGETS.get(manifest.target.name)):   # no cycle model: memory and fit, no time, not a record
        return memory_fit(manifest, spec.name, sram=board["sram"], flash=board["flash"])
    rec = estimated_record(manifest, **board)
    return dataclasses.replace(rec, device_name=spec.name, sweep_id=sweep_id, cell=cell)


def _with_headroom(need_sram: int, need_flash: int, sram: int | None, flash: int | None, **parts) -> "BoardFit":
    """The :class:`~edgerun.runtime.record.BoardFit` of those needs, with the size, headroom and verdict of each
    memory the board's size is given for."""
    from edgerun.runtime.record import BoardFit

    have = {}
    for name, size, need in (("sram", sram, need_sram), ("flash", flash, need_flash)):
        if size is not None:
            have.update({f"{name}_bytes": size, f"{name}_headroom_bytes": size - need, f"{name}_fits": need <= size})
    return BoardFit(sram_needed_bytes=need_sram, flash_needed_bytes=need_flash, **parts, **have)
