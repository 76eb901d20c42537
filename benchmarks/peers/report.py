"""Machine facts, per-cell statistics and the markdown tables of the peers benchmark.

A *run* is one worker process: one (runtime, model, scheme, threads) cell in one round, ``warmup +
iterations`` executions. A *cell* pools the timed iterations of all its rounds: median, p10 and p90
of those samples. The *best peer* of a (threads, model, scheme) is the faster of ONNX Runtime and
LiteRT there; eager PyTorch, torch.compile and the ExecuTorch pybindings are shown with their ratio
to it but are not peers. The goal line compares edgerun's native runner with the best peer.
"""

from __future__ import annotations

import math
import os
import platform
import re
from pathlib import Path

import numpy as np

PEERS = ("onnxruntime", "litert")
RUNTIMES = ("edgerun", "pybindings", "onnxruntime", "litert", "eager", "torch.compile")
LABELS = {"edgerun": "edgerun runner", "pybindings": "executorch pybindings", "onnxruntime": "ONNX Runtime",
          "litert": "LiteRT", "eager": "PyTorch eager", "torch.compile": "torch.compile"}
GOAL = 0.9  # edgerun runner ÷ best peer, per model and scheme
FLAG_RE = re.compile(r"^(avx2|fma|f16c|avx512.*|avx_vnni|amx.*|asimd|asimddp|dotprod|i8mm|sve|sve2|bf16|sme)$")


# ------------------------------------------------------------------------------------ machine


def machine_info() -> dict:
    info: dict = {"arch": platform.machine(), "kernel": platform.release(), "system": platform.system(),
                  "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^(model name|Model|Hardware)\s*:\s*(.+)$", text, re.M)
        flags = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.M)
        info["cpu_model"] = model.group(2).strip() if model else None
        have = set(flags.group(2).split()) if flags else set()
        info["flags"] = sorted(f for f in have if FLAG_RE.match(f))
        info["cores"] = len(re.findall(r"^processor\s*:", text, re.M))  # logical CPUs listed
        pairs = re.findall(r"^physical id\s*:\s*(\d+)$.*?^core id\s*:\s*(\d+)$", text, re.M | re.S)
        info["physical_cores"] = len(set(pairs)) or None
    except OSError:
        pass
    try:
        mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        info["mem_total_bytes"] = int(mem.group(1)) * 1024 if mem else None
    except OSError:
        pass
    gov = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    info["governor"] = gov.read_text().strip() if gov.is_file() else None
    info["loadavg_start"] = list(os.getloadavg())
    return info


def cpu_times() -> list[int] | None:
    """The aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq steal ...)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
        return [int(x) for x in first[1:]]
    except (OSError, ValueError, IndexError):
        return None


def steal_between(before: list[int] | None, after: list[int] | None) -> dict:
    """Steal and busy fractions of all CPUs' time between two :func:`cpu_times` readings."""
    if not before or not after:
        return {"steal_fraction": None, "busy_fraction": None}
    delta = [a - b for a, b in zip(after[:8], before[:8])]
    total = sum(delta)
    if total <= 0:
        return {"steal_fraction": None, "busy_fraction": None}
    idle = delta[3] + delta[4]
    return {"steal_fraction": delta[7] / total if len(delta) > 7 else None, "busy_fraction": 1 - idle / total}


# ------------------------------------------------------------------------------------ statistics


def sample_summary(samples_ns: list[int]) -> dict:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if not a.size:
        return {"n": 0}
    return {"n": int(a.size), "median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90)), "min_ms": float(a.min()), "mean_ms": float(a.mean()),
            "max_ms": float(a.max())}


def snr_value(x) -> float | None:
    if x in ("inf", "-inf"):
        return math.inf if x == "inf" else -math.inf
    return x


def cells_from_runs(runs: list[dict], conversions: dict) -> list[dict]:
    """Pool each cell's rounds; add sizes, SNR, RSS, errors and the ratio to the best peer."""
    by_key: dict[tuple, list[dict]] = {}
    for r in runs:
        by_key.setdefault((r["threads"], r["model"], r["scheme"], r["runtime"]), []).append(r)
    cells = []
    for (threads, model, scheme, runtime), rs in by_key.items():
        ok = [r for r in rs if r.get("ok")]
        samples = [s for r in ok for s in r["samples_ns"]]
        conv = conversions.get((runtime, model, scheme)) or {}
        snrs = [snr_value(r.get("snr_db")) for r in ok if r.get("snr_db") is not None]
        rss = [r["peak_rss_bytes"] for r in ok if r.get("peak_rss_bytes")]
        cell = {"threads": threads, "model": model, "scheme": scheme, "runtime": runtime,
                "rounds": len(rs), "rounds_ok": len(ok), **sample_summary(samples),
                "round_medians_ms": [r["summary"]["median_ms"] for r in ok if r.get("summary", {}).get("n")],
                "size_bytes": rs[0].get("size_bytes"), "snr_db": min(snrs) if snrs else None,
                "peak_rss_bytes": max(rss) if rss else None, "method": conv.get("method"),
                "errors": sorted({r["error"] for r in rs if r.get("error")}),
                "skipped": sorted({r["skipped"] for r in rs if r.get("skipped")})}
        cells.append(cell)
    order = {r: i for i, r in enumerate(RUNTIMES)}
    cells.sort(key=lambda c: (c["threads"], c["model"], c["scheme"], order.get(c["runtime"], 99)))
    for c in cells:
        peers = [p for p in cells if (p["threads"], p["model"], p["scheme"]) == (c["threads"], c["model"], c["scheme"])
                 and p["runtime"] in PEERS and p.get("median_ms")]
        best = min(peers, key=lambda p: p["median_ms"]) if peers else None
        c["best_peer"] = best["runtime"] if best else None
        c["ratio_to_best_peer"] = c["median_ms"] / best["median_ms"] if best and c.get("median_ms") else None
    return cells


def goal_lines(cells: list[dict]) -> list[dict]:
    """One verdict per (threads, model, scheme): edgerun runner ÷ best peer against the goal."""
    out = []
    for c in cells:
        if c["runtime"] != "edgerun":
            continue
        ratio = c.get("ratio_to_best_peer")
        best = next((p for p in cells if (p["threads"], p["model"], p["scheme"], p["runtime"]) ==
                     (c["threads"], c["model"], c["scheme"], c["best_peer"])), None)
        out.append({"threads": c["threads"], "model": c["model"], "scheme": c["scheme"],
                    "edgerun_median_ms": c.get("median_ms"), "best_peer": c["best_peer"],
                    "best_peer_median_ms": best.get("median_ms") if best else None, "ratio": ratio, "goal": GOAL,
                    "met": None if ratio is None else ratio <= GOAL})
    return out


# ------------------------------------------------------------------------------------ tables


def _fmt_ms(x) -> str:
    from edgerun.runtime.columns import format_ms

    return format_ms(x)


def _fmt_bytes(x) -> str:
    from edgerun.runtime.columns import format_bytes

    return format_bytes(x)


def _fmt_db(x) -> str:
    from edgerun.runtime.columns import format_db

    return format_db(snr_value(x))


def _short(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def markdown(result: dict) -> str:
    cells = result["cells"]
    lines: list[str] = []
    for t in sorted({c["threads"] for c in cells}):
        lines += [f"### {t} thread{'s' if t != 1 else ''}", "",
                  "| model | scheme | runtime | median ms | p10 ms | p90 ms | ÷ best peer | size | SNR dB | peak RSS MiB |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in (c for c in cells if c["threads"] == t):
            name = LABELS.get(c["runtime"], c["runtime"])
            if c["runtime"] == c.get("best_peer"):
                name += " (best peer)"
            if not c.get("median_ms"):
                why = (c["skipped"] or c["errors"] or ["not measured"])[0]
                lines.append(f"| {c['model']} | {c['scheme']} | {name} | {'skipped' if c['skipped'] else 'failed'}: "
                             f"{_short(why)} | | | | {_fmt_bytes(c.get('size_bytes'))} | | |")
                continue
            ratio = c.get("ratio_to_best_peer")
            rss = f"{c['peak_rss_bytes'] / 2**20:.1f}" if c.get("peak_rss_bytes") else "—"
            partial = f" ({c['rounds_ok']}/{c['rounds']} rounds)" if c["rounds_ok"] < c["rounds"] else ""
            lines.append(f"| {c['model']} | {c['scheme']} | {name}{partial} | {_fmt_ms(c['median_ms'])} | "
                         f"{_fmt_ms(c['p10_ms'])} | {_fmt_ms(c['p90_ms'])} | "
                         f"{'—' if ratio is None else f'{ratio:.2f}'} | {_fmt_bytes(c.get('size_bytes'))} | "
                         f"{_fmt_db(c.get('snr_db'))} | {rss} |")
        lines.append("")
        for g in (g for g in result["goal"] if g["threads"] == t):
            if g["ratio"] is None:
                why = "edgerun not measured" if not g["edgerun_median_ms"] else "no peer measured"
                lines.append(f"- {g['model']} {g['scheme']}: edgerun runner ÷ best peer = — ({why})")
            else:
                mark = "" if g["met"] else "  **✗ goal not met**"
                lines.append(f"- {g['model']} {g['scheme']}: edgerun runner ÷ best peer ({LABELS[g['best_peer']]}) = "
                             f"{g['ratio']:.2f} (goal ≤ {GOAL}){mark}")
        lines.append("")
    if result.get("failures"):
        lines.append("Failures:")
        lines += [f"- {f}" for f in result["failures"]]
    return "\n".join(lines).rstrip() + "\n"
