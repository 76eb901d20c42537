"""The Arm targets' table (issue 24): model x target -> Vela's cycles and estimated time, SRAM, flash, NPU
operator share, and the functional check's SNR, for the MLPerf Tiny models and MobileNetV2 x0.35 (96x96) of
the zoo on every Ethos-U and Cortex-M target.

Each cell is ``edgerun export MODEL --target T --scheme int8`` (seeded random weights, generated calibration
inputs) run in the Arm toolchain environment (``edgerun toolchain arm`` builds it): this script re-runs itself
with that environment's interpreter, so every export happens in one process and the Arm backend is imported
once. Then, for an Ethos-U, the estimated record (``edgerun.estimate.estimated_record``: total cycles / the
system config's clock). Ethos-U figures are ESTIMATES from Vela's performance model, not measurements; no
Ethos-U, FVP or Cortex-M is involved. A Cortex-M has no cycle model here: its row has the program's size
(flash), its planned memory (the tensor arena), the share of operator calls that are CMSIS-NN ``cortex_m::``
kernels, and no time. "SNR" is the functional check against eager fp32 on the test vectors: the TOSA
reference model for an Ethos-U (the NPU's integer graphs, not the NPU), the host ``cortex_m::`` operators for
a Cortex-M. A cell that fails or is refused keeps its reason in the row; the JSON is rewritten after every
cell, so an interrupted run keeps what it measured.

    .venv/bin/python benchmarks/arm_vela.py [--models ds_cnn,...] [--targets ethos-u55-128,...] [--vectors 2]
        [--out results.json] [--markdown]
    .venv/bin/python benchmarks/arm_vela.py --table results.json     # the markdown table of a saved run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("ds_cnn", "resnet8", "mobilenet_v1_025", "autoencoder_ad", "mobilenet_v2_035")
TARGETS = ("ethos-u55-128", "ethos-u65-256", "ethos-u85-256", "cortex-m55", "cortex-m85", "cortex-m7", "cortex-m4")


def cell(model: str, target: str, out: Path, vectors: int) -> dict:
    from edgerun.core.errors import EdgerunError
    from edgerun.estimate import estimated_record
    from edgerun.export import ExportOptions, export_model

    row: dict = {"model": model, "target": target}
    started = time.monotonic()
    try:
        m = export_model(model, target, "int8", out, options=ExportOptions(vectors=vectors))
    except EdgerunError as exc:   # refused or failed: the reason is the result
        row.update(error=f"{type(exc).__name__} (exit {int(exc.exit_code)}): {exc.message}", hint=exc.hint,
                   wall_s=round(time.monotonic() - started, 1))
        return row
    v = m.verification
    calls = dict(m.operators.non_delegated)
    row.update(pte_kib=m.pte_bytes / 1024, planned_kib=(m.planned_memory_bytes or 0) / 1024,
               functional=v.runtime, functional_snr_db=v.outputs[0].snr_db,
               functional_top1=v.outputs[0].top1_agreement, functional_passed=v.passed,
               export_s=m.export_seconds, stage_s=dict(m.stage_seconds or {}))
    if m.target.measure == "estimate":
        e = estimated_record(m).estimate
        row.update(cycles=e.cycles_total, npu_cycles=e.cycles_npu, clock_mhz=e.clock_hz / 1e6,
                   ms=e.inference_ms, sram_kib=e.sram_bytes / 1024,
                   off_chip_flash_kib=e.off_chip_flash_bytes / 1024, dram_kib=e.dram_bytes / 1024,
                   on_chip_flash_kib=m.compiler_report.on_chip_flash_bytes / 1024,
                   npu_layers=e.npu_layers, cpu_layers=e.cpu_layers, npu_share=e.npu_share,
                   partitions=m.compiler_report.partitions, cpu_kernel_calls=e.cpu_kernel_calls,
                   cpu_operators=sorted(k for k in calls if not k.startswith("quantized_decomposed::")),
                   sram_needed_kib=e.fit.sram_needed_bytes / 1024, vela=e.compiler,
                   system_config=e.system_config, memory_mode=e.memory_mode)
    else:   # a Cortex-M: no cycle model, so its program, memory and numerics only
        total = sum(calls.values())
        row.update(operators=calls,
                   cmsis_share=(sum(n for k, n in calls.items() if k.startswith("cortex_m::")) / total
                                if total else None))
    row["wall_s"] = round(time.monotonic() - started, 1)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | target | cycles | est. ms (clock) | SRAM KiB | flash KiB | NPU op share | functional SNR dB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['model']} | {r['target']} |"
        if "error" in r:
            lines.append(f"{head} refused/failed: {r['error'][:160]} | | | | | |")
        elif "cycles" in r:
            lines.append(f"{head} {r['cycles']:,} | {r['ms']:.3f} ({r['clock_mhz']:g} MHz) | {r['sram_kib']:.1f} | "
                         f"{r['pte_kib']:.1f} | "
                         f"{r['npu_layers']}/{r['npu_layers'] + r['cpu_layers']} | {r['functional_snr_db']:.1f} |")
        else:
            share = "-" if r.get("cmsis_share") is None else f"{r['cmsis_share']:.0%}"
            lines.append(f"{head} - | - (no cycle model) | {r['planned_kib']:.1f} (arena) | {r['pte_kib']:.1f} | "
                         f"no NPU (CMSIS-NN calls {share}) | {r['functional_snr_db']:.1f} |")
    lines.append("")
    lines.append("Ethos-U: Vela 5.1.0's ESTIMATES (performance model, the system config's clock); SRAM is Vela's NPU "
                 "SRAM. NPU op share: Vela's layers on the "
                 "NPU / all. Flash: the .pte (Vela's command stream and weights are in it; Vela's own off-chip flash "
                 "and DRAM figures are in the JSON). Cortex-M: no timing (no cycle model); SRAM = the program's planned "
                 "memory (the tensor arena). SNR: the functional check against eager fp32 (TOSA reference model / host "
                 "cortex_m operators), not hardware.")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--vectors", type=int, default=2, help="test vectors each functional check runs (default 2)")
    ap.add_argument("--out", help="write the rows here as JSON (rewritten after every cell)")
    ap.add_argument("--markdown", action="store_true", help="print the markdown table at the end")
    ap.add_argument("--table", metavar="JSON", help="only print the markdown table of a saved run")
    args = ap.parse_args()
    if args.table:
        data = json.loads(Path(args.table).read_text())
        print(table(data["rows"] if isinstance(data, dict) else data))
        return 0
    from edgerun.export.arm import toolchain

    if not toolchain.active():   # run the whole sweep in the toolchain's interpreter: one import of the backend
        py = toolchain.require()
        os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])
    models, targets = args.models.split(","), args.targets.split(",")
    doc = {"command": " ".join(["benchmarks/arm_vela.py", *sys.argv[1:]]), "vectors": args.vectors,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": []}
    with tempfile.TemporaryDirectory(prefix="arm-vela-") as td:
        for model in models:
            for target in targets:
                print(f"[arm_vela] {model} -> {target} ...", file=sys.stderr, flush=True)
                row = cell(model, target, Path(td) / f"{model}-{target}", args.vectors)
                doc["rows"].append(row)
                print(f"[arm_vela] {json.dumps({k: row.get(k) for k in ('model', 'target', 'cycles', 'ms', 'functional_snr_db', 'error', 'wall_s')})}",
                      file=sys.stderr, flush=True)
                if args.out:
                    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    Path(args.out).write_text(json.dumps(doc, indent=2))
    if args.markdown or not args.out:
        print(table(doc["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
