"""Profile one artifact twice on this machine, compare the two runs with a test, write a report.

    python examples/profile_compare_report.py ARTIFACT [--report report.html] [--device local://]

Two runs of the same program should compare as "no significant change": compare uses a
Mann-Whitney U test on the raw samples *and* a practical effect size, and says when a verdict is
unreliable (unstable or emulated runs). The report is one static HTML file with its plots inside.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgerun.profiling import CellFailure, ProfileSettings, profile
from edgerun.report import render
from edgerun.runtime.record import compare_records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--device", default="local://")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=Path("report.html"))
    args = ap.parse_args()

    settings = ProfileSettings(warmup=3, iterations=args.iterations, threads=(args.threads,))
    records = []
    for attempt in ("A", "B"):
        for r in profile(args.artifact, [args.device], settings, store_path=args.store):
            if isinstance(r, CellFailure):
                print(f"run {attempt} failed: {r.error.paragraph()}", file=sys.stderr)
                return int(r.error.exit_code)
            records.append(r)
            print(f"run {attempt}: {r.run_id} median {r.latency.median_ms:.3f} ms over {r.latency.n} samples")
    c = compare_records(records[0], records[1])
    print(f"B vs A: {c.verdict} (p = {c.latency.p_value:.3g}, median change {c.latency.delta_rel:+.1%})"
          + ("" if c.reliable else " -- unreliable: " + "; ".join(c.warnings)))
    args.report.write_text(render(records, "html", [c]))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
