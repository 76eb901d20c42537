"""Done-when check of the profiling issue: int8 MobileNetV2 profiled with the native runner on the
host and under qemu-aarch64 (Pi 5 CPU), analysed into stored run records; prints whether the
operator times add up to within 10 % of the measured execute time, and compares two host runs.

    .venv/bin/python benchmarks/profile_mobilenet.py [--iterations 30] [--store PATH] [--report out.html]

Timing targets live here, not in unit tests: the machine this runs on decides the numbers.
Needs runner bundles (`edgerun runtime build --arch host` and `--arch aarch64`) and qemu-user.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def profile(manifest, bundle, device_uri: str, device_name: str, iterations: int, emulator=(), work: Path = Path(".")):
    from edgerun.devices import resolve_device
    from edgerun.runtime.analysis import analyse
    from edgerun.runtime.protocol import RunArtifacts
    from edgerun.runtime.runner import run_local

    with resolve_device(device_uri) as dev:
        info = dev.info()
    out_dir = work / f"{device_name}-outputs"
    etdump = work / f"{device_name}.etdp"
    result = run_local(bundle, manifest.pte_path, manifest.vector_input_paths(0), warmup=3, iterations=iterations,
                       etdump_path=etdump, outputs_dir=out_dir, emulator=emulator, timeout=1200)
    run = RunArtifacts(result=result, device_name=device_name, device_info=info, etdump=etdump,
                       outputs=[Path(p) for p in result.output_paths if p],
                       bundle_bytes=sum(f.stat().st_size for f in Path(bundle.path).iterdir() if f.is_file()))
    return analyse(run, manifest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--qemu-iterations", type=int, default=5)
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()

    from edgerun.core.artifact import read_manifest
    from edgerun.export import export_model
    from edgerun.runtime.build import BuildRequest, build_bundle
    from edgerun.runtime.record import compare_records
    from edgerun.store import Store

    work = args.work or Path(tempfile.mkdtemp(prefix="edgerun-bench-"))
    rows = []
    with Store(args.store) as store:
        records = []
        for target, uri, name, arch, emulator, iters in (
                ("host", "local://", "host", "host", (), args.iterations),
                ("host", "local://", "host", "host", (), args.iterations),
                ("rpi5", "qemu-aarch64://?cpu=cortex-a76", "rpi5-qemu", "aarch64",
                 ("qemu-aarch64", "-cpu", "cortex-a76"), args.qemu_iterations)):
            artifact = work / f"mobilenet_v2-{target}-int8"
            if not (artifact / "manifest.json").exists():
                print(f"exporting {artifact} ...", file=sys.stderr)
                export_model("mobilenet_v2", target, "int8", artifact)
            bundle = build_bundle(BuildRequest(arch=arch))
            rec = profile(read_manifest(artifact), bundle, uri, name, iters, emulator, work)
            store.save(rec)
            records.append(rec)
            ops = rec.operators
            rows.append({"run_id": rec.run_id, "device": name, "source": rec.source, "median_ms": rec.latency.median_ms,
                         "p90_ms": rec.latency.p90_ms, "op_sum_ms": ops.op_sum_ms if ops else None,
                         "coverage": ops.coverage if ops else None,
                         "within_10pct": bool(ops and ops.coverage and abs(ops.coverage - 1) <= 0.10),
                         "peak_rss_MiB": (rec.memory.peak_rss_bytes or 0) / 2**20,
                         "min_snr_db": rec.accuracy.min_snr_db if rec.accuracy else None,
                         "top_ops": [(o.name, round(o.median_ms, 3)) for o in (ops.top(3) if ops else ())],
                         "warnings": list(rec.warnings)})
        c = compare_records(records[0], records[1])
        print(json.dumps({"runs": rows, "host_vs_host": {"verdict": c.verdict, "delta_rel": c.latency.delta_rel,
                                                           "p_value": c.latency.p_value}}, indent=1, default=str))
        if args.report:
            from edgerun.report import render

            args.report.write_text(render(records, "html", [c]))
            print(f"report: {args.report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
