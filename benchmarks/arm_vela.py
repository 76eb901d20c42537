"""Vela's estimates for MobileNetV2 x0.35 at 96x96 (random weights, BatchNorm settled) on the Ethos-U targets.

Each target: ``edgerun export arm_vela:mobilenet_v2_035 --target T --scheme int8`` (in the Arm toolchain
environment: ``edgerun toolchain arm`` first), then the estimated record. Prints model x target -> total and
NPU cycles, estimated ms at the system config's clock, SRAM, off-chip flash, NPU layer share, and the
functional check's SNR (the Arm quantizer's int8 graph in eager PyTorch against fp32). ESTIMATES from Vela's
performance model, not measurements; no Ethos-U hardware or FVP is involved.

    .venv/bin/python benchmarks/arm_vela.py [--targets ethos-u55-128,ethos-u85-256] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def mobilenet_v2_035():
    """torchvision's MobileNetV2 with width 0.35, 96x96 input, 10 classes; BatchNorm statistics settled on
    random images so activations have realistic ranges (weights are random: no downloads)."""
    import torch
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    model = mobilenet_v2(width_mult=0.35, num_classes=10)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 96, 96))
    return model.eval(), (torch.randn(1, 3, 96, 96),)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="ethos-u55-128,ethos-u65-256,ethos-u85-256",
                    help="also cortex-m55, cortex-m85, cortex-m7, cortex-m4: program size and functional SNR only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from edgerun.estimate import estimated_record
    from edgerun.export import export_model

    rows = []
    with tempfile.TemporaryDirectory() as td:
        for target in args.targets.split(","):
            m = export_model("arm_vela:mobilenet_v2_035", target, "int8", Path(td) / target)
            v = m.verification
            if m.target.measure != "estimate":   # a Cortex-M: no cycle model, so only its program and numerics
                rows.append({"model": "mobilenet_v2 x0.35 96x96", "target": target, "pte_kib": m.pte_bytes / 1024,
                             "planned_kib": (m.planned_memory_bytes or 0) / 1024,
                             "operators": dict(m.operators.non_delegated), "functional": v.runtime,
                             "functional_snr_db": v.outputs[0].snr_db, "functional_passed": v.passed,
                             "export_s": m.export_seconds})
                continue
            rec = estimated_record(m)
            e = rec.estimate
            rows.append({"model": "mobilenet_v2 x0.35 96x96", "target": target, "cycles": e["cycles_total"],
                         "npu_cycles": e["cycles_npu"], "clock_mhz": e["clock_hz"] / 1e6, "ms": e["inference_ms"],
                         "sram_kib": e["sram_bytes"] / 1024, "flash_kib": e["off_chip_flash_bytes"] / 1024,
                         "dram_kib": e["dram_bytes"] / 1024, "npu_layers": e["npu_layers"],
                         "cpu_layers": e["cpu_layers"], "partitions": m.compiler_report.partitions,
                         "cpu_kernel_calls": e["cpu_kernel_calls"], "functional_snr_db": v.outputs[0].snr_db,
                         "functional_passed": v.passed, "vela": e["compiler"], "system_config": e["system_config"],
                         "memory_mode": e["memory_mode"], "export_s": m.export_seconds})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| model | target | cycles | NPU cycles | est. ms (clock) | SRAM KiB | flash KiB | DRAM KiB | NPU layers | "
          "functional SNR dB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "cycles" not in r:
            print(f"| {r['model']} | {r['target']} | - | - | - (no cycle model) | planned {r['planned_kib']:.1f} | "
                  f".pte {r['pte_kib']:.1f} | - | - | {r['functional_snr_db']:.1f} |")
            continue
        print(f"| {r['model']} | {r['target']} | {r['cycles']:,} | {r['npu_cycles']:,} | {r['ms']:.3f} "
              f"({r['clock_mhz']:g} MHz) | {r['sram_kib']:.1f} | {r['flash_kib']:.1f} | {r['dram_kib']:.1f} | "
              f"{r['npu_layers']}/{r['npu_layers'] + r['cpu_layers']} | {r['functional_snr_db']:.1f} |")
    print("(Vela: estimates from its performance model, not measurements; Cortex-M rows: no estimate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
