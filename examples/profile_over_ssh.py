"""Profile an artifact on a device of an inventory (a Raspberry Pi over SSH), from Python.

    python examples/profile_over_ssh.py ARTIFACT --inventory examples/pi_over_ssh.toml --device pi5

Deploys the runner bundle chosen by the device's probed architecture (no Python or torch needed on
the device), runs the program, pulls outputs and the ETDump back, analyses them and stores the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgerun.profiling import CellFailure, ProfileSettings, profile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--inventory", required=True, help="device inventory TOML (see pi_over_ssh.toml)")
    ap.add_argument("--device", default="pi5", help="an inventory name (or a device URI)")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--store", type=Path, default=None, help="results store (default: EDGERUN_HOME/results.sqlite)")
    args = ap.parse_args()

    settings = ProfileSettings(warmup=2, iterations=args.iterations)
    results = profile(args.artifact, [args.device], settings, store_path=args.store, inventory=args.inventory,
                      on_progress=lambda msg: print(msg, file=sys.stderr))
    status = 0
    for r in results:
        if isinstance(r, CellFailure):
            print(f"failed on {r.device}: {r.error.paragraph()}", file=sys.stderr)
            status = int(r.error.exit_code)
            continue
        d = r.device
        print(f"{r.run_id} on {r.device_name} ({d.arch}, {d.cpu_model}, {r.source}): median "
              f"{r.latency.median_ms:.3f} ms (95% CI {r.latency.ci95_low_ms:.3f}-{r.latency.ci95_high_ms:.3f}), "
              f"peak RSS {(r.memory.peak_rss_bytes or 0) / 2**20:.1f} MiB, worst SNR vs eager "
              f"{r.accuracy.min_snr_db if r.accuracy else float('nan'):.1f} dB")
    return status


if __name__ == "__main__":
    sys.exit(main())
