"""Does the native runner time a program the way ExecuTorch's own Python runtime does?

Runs one artifact's program on this machine with the host bundle's ``edgerun-runner`` (steady clock
around ``Module::execute`` inside the process) and with the executorch pybindings
(``time.perf_counter_ns`` around ``Method.execute``), in alternating rounds so that machine drift
hits both, then prints both medians, their ratio and a rank test. The runner runs twice a round: as it
does by default (XNNPACK runtimes reshaped and set up only when something changed) and with
``--xnnpack-reshape always`` (ExecuTorch's own per-execute reshape and setup, as the pybindings do), so
the gain of the first over the second is measured in the same run. Both runner runs also leave XNNPACK's
per-operator timer off (no --etdump); the pybindings keep it. On demand, not in the tests:

    .venv/bin/python benchmarks/runner_vs_pybindings.py --model mobilenet_v2 --scheme fp32
    .venv/bin/python benchmarks/runner_vs_pybindings.py --artifact artifacts/mobilenet_v2-host-int8

Both sides use the same program, the same inputs (test vector 0) and the same thread pool size:
ExecuTorch's default, or --threads N for both (the pybindings through their
``_unsafe_reset_threadpool``). Use --threads 1 on a busy machine: a spinning multi-thread pool
measures the neighbours more than the program.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _artifact(args) -> Path:
    if args.artifact:
        return Path(args.artifact)
    from edgerun.export import export_model

    out = Path(tempfile.mkdtemp(prefix="bench-artifact-")) / f"{args.model}-host-{args.scheme}"
    print(f"exporting {args.model} ({args.scheme}) to {out} ...", file=sys.stderr)
    export_model(args.model, "host", args.scheme, out)
    return out


def _pybindings_threads(threads: int) -> int:
    from executorch.extension.pybindings import portable_lib

    if threads:
        portable_lib._unsafe_reset_threadpool(threads)
    return portable_lib._threadpool_get_thread_count()


def _pybindings_samples(pte: Path, inputs: list[np.ndarray], warmup: int, iterations: int) -> list[int]:
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(pte)).load_method("forward")
    tensors = [torch.from_numpy(x) for x in inputs]
    for _ in range(warmup):
        method.execute(tensors)
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        method.execute(tensors)
        samples.append(time.perf_counter_ns() - t0)
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", help="an artifact directory (else --model is exported for the host)")
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--scheme", default="fp32")
    ap.add_argument("--bundle", help="host bundle directory (default: build or reuse it)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=30, help="timed iterations per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()

    from edgerun.runtime.build import BuildRequest, build_bundle
    from edgerun.runtime.bundle import load_bundle
    from edgerun.runtime.runner import RunOptions, run_local
    from edgerun.runtime.stats import compare_samples, summarize

    art = _artifact(args)
    from edgerun.core.artifact import read_manifest

    manifest = read_manifest(art)
    inputs = manifest.vector_input_paths(0)
    bundle = load_bundle(args.bundle) if args.bundle else build_bundle(BuildRequest(arch="host"))
    opts = RunOptions(warmup=args.warmup, iterations=args.iterations, threads=args.threads)
    always = RunOptions(warmup=args.warmup, iterations=args.iterations, threads=args.threads,
                        xnnpack_reshape="always")

    runner_ns: list[int] = []
    always_ns: list[int] = []
    py_ns: list[int] = []
    threads = None
    py_threads = _pybindings_threads(args.threads)
    for r in range(args.rounds):
        res = run_local(bundle, manifest.pte_path, inputs, options=opts)
        threads = res.header.threads
        runner_ns += res.execute_ns
        always_ns += run_local(bundle, manifest.pte_path, inputs, options=always).execute_ns
        py_ns += _pybindings_samples(manifest.pte_path, [np.load(p) for p in inputs], args.warmup, args.iterations)
        print(f"round {r + 1}/{args.rounds}: runner median {np.median(res.execute_ns) / 1e6:.3f} ms, "
              f"runner (reshape always) {np.median(always_ns[-args.iterations:]) / 1e6:.3f} ms, "
              f"pybindings median {np.median(py_ns[-args.iterations:]) / 1e6:.3f} ms", file=sys.stderr)

    def summary_json(samples, n_threads):
        st = summarize(samples)
        return {"median_ms": st.median_ms, "ci95_ms": [st.ci95_low_ms, st.ci95_high_ms], "n": st.n,
                "threads": n_threads, "warnings": list(st.warnings)}

    result = {
        "artifact": str(art), "program": f"{manifest.model.name} {manifest.scheme.name}",
        "runner": summary_json(runner_ns, threads), "runner_reshape_always": summary_json(always_ns, threads),
        "pybindings": summary_json(py_ns, py_threads),
        "comparison": compare_samples(py_ns, runner_ns).to_dict(),  # A = pybindings (baseline), B = the runner
        "comparison_reshape": compare_samples(always_ns, runner_ns).to_dict(),  # A = always, B = on change
    }
    result["ratio_runner_over_pybindings"] = result["runner"]["median_ms"] / result["pybindings"]["median_ms"]
    result["ratio_runner_over_reshape_always"] = (result["runner"]["median_ms"]
                                                  / result["runner_reshape_always"]["median_ms"])
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['program']}  ({art})")
        for side in ("runner", "runner_reshape_always", "pybindings"):
            s = result[side]
            print(f"  {side:<21} median {s['median_ms']:8.3f} ms  95% CI [{s['ci95_ms'][0]:.3f}, "
                  f"{s['ci95_ms'][1]:.3f}]  n={s['n']}  threads={s['threads']}"
                  + (f"  ({'; '.join(s['warnings'])})" if s["warnings"] else ""))
        print(f"  ratio runner/pybindings = {result['ratio_runner_over_pybindings']:.3f}")
        print(f"  ratio runner/runner with reshape always = {result['ratio_runner_over_reshape_always']:.3f}")
        print(f"  comparison with the pybindings: {json.dumps(result['comparison'])}")
        print(f"  comparison with reshape always: {json.dumps(result['comparison_reshape'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
