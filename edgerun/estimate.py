"""Estimated run records: the figures of a target whose programs are not run here (``measure="estimate"``,
e.g. an Ethos-U NPU: Vela's performance model), as a normal run record labelled **estimated**.

The record holds one "sample": the estimated inference time (total cycles / clock) -- there is nothing
to take statistics of, and ``runs list``, ``report`` and ``compare`` keep its source apart from measured
and emulated runs. The compiler's figures (cycles, NPU cycles, SRAM and flash used, MACs, NPU/CPU
layers, compiler version, system configuration, memory mode, the clock) are in ``record.estimate``; the
planned memory of the program is the manifest's. Nothing here is invented: a target without an estimator
is refused.
"""

from __future__ import annotations

import datetime as _dt

from edgerun.core.artifact import Manifest
from edgerun.core.errors import UsageError
from edgerun.core.text import parse_size  # noqa: F401  (the estimate options and CLI read sizes with it)


def fit(manifest: Manifest, figures: dict, *, sram: int | None = None, flash: int | None = None) -> dict:
    """Does the program fit a board? SRAM it needs: the NPU's SRAM as Vela planned it (its arena: scratch and
    tensors; off-chip memory counted apart) plus the program's own planned buffers on the CPU side (inputs,
    outputs, what runs off the NPU); flash: the whole ``.pte`` (Vela's command stream and weights are in it).
    Headroom is the board's size minus that; without a board size only the needs are given. An upper bound:
    the NPU partitions' inputs and outputs may be counted in both parts."""
    need_sram = int(figures["sram_bytes"]) + int(manifest.planned_memory_bytes or 0)
    need_flash = int(manifest.pte_bytes)
    out: dict = {"sram_needed_bytes": need_sram, "flash_needed_bytes": need_flash,
                 "sram_parts": {"npu_sram_vela": int(figures["sram_bytes"]),
                                "planned_buffers": int(manifest.planned_memory_bytes or 0)}}
    for name, have, need in (("sram", sram, need_sram), ("flash", flash, need_flash)):
        if have is not None:
            out[f"{name}_bytes"] = have
            out[f"{name}_headroom_bytes"] = have - need
            out[f"{name}_fits"] = need <= have
    return out


def estimated_record(manifest: Manifest, *, clock_hz: float | None = None, sram: int | None = None,
                     flash: int | None = None):
    from edgerun.core.version import edgerun_version
    from edgerun.runtime.analysis import edgerun_git_commit
    from edgerun.devices.info import DeviceInfo
    from edgerun.export.targets import TARGETS
    from edgerun.runtime.record import (ESTIMATED, Memory, ModelInfo, Provenance, RunRecord, Sample,
                                        new_run_id)
    from edgerun.runtime.stats import summarize

    target = TARGETS.get(manifest.target.name)
    if manifest.target.measure != "estimate" or target is None or target.measure != "estimate":
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
    figures = {k: v for k, v in fig.items() if k != "layers"}
    layers = fig.get("layers") or []
    figures["npu_share"] = (fig["npu_layers"] / (fig["npu_layers"] + fig["cpu_layers"])
                            if fig["npu_layers"] + fig["cpu_layers"] else None)
    figures["top_layers"] = sorted(({"op": x["op"], "name": x["name"], "target": x["target"], "cycles": x["cycles"],
                                     "macs": x["macs"], "mac_util_pct": x["mac_util"]} for x in layers),
                                   key=lambda x: -x["cycles"])[:20]
    ops = manifest.operators
    figures["cpu_kernel_calls"] = int(sum(ops.non_delegated.values()))
    figures["fit"] = fit(manifest, fig, sram=sram, flash=flash)
    misfit = [f"it does not fit the board's {k.upper()}: needs {figures['fit'][f'{k}_needed_bytes']:,} bytes, the board "
              f"has {figures['fit'][f'{k}_bytes']:,}" for k in ("sram", "flash") if figures["fit"].get(f"{k}_fits") is False]
    figures["npu_delegate_calls"] = int(sum(ops.delegated.values()))
    on_cpu = sorted(k for k in ops.non_delegated if not k.startswith("quantized_decomposed::"))
    cpu_note = ((f"{len(on_cpu)} operator(s) run on the host CPU, outside the NPU and outside this estimate: "
                 + ", ".join(on_cpu[:8]) + (" …" if len(on_cpu) > 8 else ""),) if on_cpu else ())
    return RunRecord(
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
                      pte_bytes=manifest.pte_bytes, bundle_bytes=None, load_ms=None, program_load_ms=None,
                      method_load_ms=None, sources={"planned_bytes": ESTIMATED, "pte_bytes": ESTIMATED}),
        warnings=(f"estimated by {fig['compiler']} ({fig['accelerator']}, {fig['system_config']}, "
                  f"{fig['memory_mode']}, {fig['clock_hz'] / 1e6:g} MHz): a performance model, not a run; the "
                  "CPU's share (quantize/dequantize and any operator left off the NPU) is not in the time",
                  *cpu_note, *misfit),
        estimate=figures)


# ------------------------------------------------------------------------------ estimate:// devices

def check_estimate_spec(spec) -> None:
    """An estimate device must name a target whose programs are estimated (the devices layer knows no targets,
    so the hall checks this before any work): a Cortex-M has no cycle model, a run target is run."""
    from edgerun.export import TARGETS

    names = ", ".join(sorted(n for n, t in TARGETS.items() if t.measure == "estimate"))
    t = TARGETS.get(spec.target or "")
    if t is None:
        raise UsageError(f"estimate device target {spec.target!r} is not a target; estimated targets: {names}.",
                         stage="inventory")
    if t.measure != "estimate":
        if t.lowering == "cortex-m":
            raise UsageError(f"{spec.target} has no cycle model, and an estimated run record needs a time, so there "
                             f"is no estimate://{spec.target}: `edgerun inspect ARTIFACT` gives its program's planned "
                             "memory and size, and a board driven over serial:// would time it.", stage="inventory")
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
            + (f"estimate://{target} estimates those)" if _estimated(target) else f"{target} programs are run on a "
               "device)"))


def _estimated(target: str) -> bool:
    from edgerun.export import TARGETS

    t = TARGETS.get(target)
    return t is not None and t.measure == "estimate"


def record_for_device(manifest: Manifest, spec, *, sweep_id: str | None = None, cell: str | None = None):
    """The estimated record of ``manifest`` on the estimate device ``spec`` (its clock and board sizes; the
    artifact's system config and memory mode), named after the device like any run; nothing is run."""
    import dataclasses

    if manifest.target.name != spec.target:
        raise UsageError(f"artifact {manifest.path} is for target {manifest.target.name!r}; {spec.ref} estimates "
                         f"{spec.target} programs.",
                         hint=(f"Use --device estimate://{manifest.target.name}" if _estimated(manifest.target.name)
                               else "Profile it on a device that runs it (local://, ssh://, qemu-aarch64:// ...)."))
    rec = estimated_record(manifest, **spec.board())
    return dataclasses.replace(rec, device_name=spec.name, sweep_id=sweep_id, cell=cell)
