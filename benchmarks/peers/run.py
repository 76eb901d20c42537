"""edgerun against ONNX Runtime and LiteRT on this machine: same weights, calibration and input; latency, size, SNR, RSS.

One command, on demand (``--smoke`` also runs at the end of ``.ci/run``):

    .venv/bin/python benchmarks/peers/run.py                  # resnet18, mobilenet_v2, text_encoder; fp32, int8, int8-dynamic; 1 and 2 threads
    .venv/bin/python benchmarks/peers/run.py --models resnet18,mobilenet_v2,text_encoder --schemes fp32,int8,int8-dynamic \\
        --threads 1,2 --rounds 10 --iterations 20 --repeats 5
    PYTHONPATH=. .venv/bin/python benchmarks/peers/run.py --models mymodels:small_net --schemes fp32,int8
    .venv/bin/python benchmarks/peers/run.py --smoke --json   # CI: text_encoder, fp32 + int8-dynamic, 1 thread, 2 rounds x 3

What it does (details in ``benchmarks/peers/README.md``):

1. **The peers' own venv** (``EDGERUN_HOME/cache/benchmarks/peers-venv``, :mod:`peer_venv`): made once with
   edgerun's interpreter, pinned onnxruntime / onnx / onnxscript / ai-edge-litert / litert-torch, seeing
   edgerun's torch through a ``.pth`` file (no second torch is ever downloaded: checked). Rebuilt when the
   pins change. litert-torch's dependencies keep edgerun's torchao 0.18 (it asks for >= 0.17), and it
   converts with edgerun's torch 2.14.1: fp32 and static int8 of every default model, PT2E dynamic of
   resnet18 and mobilenet_v2. Its PT2E *dynamic* path makes a program LiteRT cannot load when the model
   has an ``nn.Embedding`` (text_encoder); then ai-edge-quantizer's dynamic int8 recipe quantizes the
   fp32 ``.tflite`` instead (said in the cell's ``method`` and ``notes``).
2. **Each model built once** in edgerun's venv (:mod:`models`): weights, example input, 16 seeded
   calibration samples (edgerun's own draw: token ids inside their embedding's rows), the eager fp32
   reference, in ``EDGERUN_HOME/cache/benchmarks/peers/<model>-<weights sha256>/``.
3. **Converted** per peer and scheme, each in a subprocess of the right venv, all from those weights and
   that calibration file (:mod:`convert`); cached by a key of sources, versions and inputs (``--fresh``
   redoes them). ``edgerun.export.export_model(spec, "host", scheme, options=ExportOptions(calibration=...))``;
   ``torch.onnx.export`` + ``quantize_static`` (QDQ) / ``quantize_dynamic``; ``litert_torch.convert`` with its
   PT2E quantizer.
4. **Measured** (:mod:`measure`), each run in a fresh process with ``OMP_NUM_THREADS`` & co. pinned to the
   thread count: edgerun's native runner, the ExecuTorch pybindings, ONNX Runtime, LiteRT, PyTorch eager and
   torch.compile (fp32). Interleaved: for every thread count, ``--rounds`` rounds, each running every cell
   once in a seeded shuffled order (recorded), each run ``--repeats`` warm-up + ``--iterations`` timed
   executions. Load average and CPU steal are recorded around every round.
5. **Reported** (:mod:`report`): a markdown table per thread count (median, p10/p90 ms, ratio to the best
   peer = the faster of ONNX Runtime and LiteRT, size, SNR vs eager fp32, peak RSS) and one line per model
   and scheme: "edgerun runner ÷ best peer = X (goal ≤ 0.9)". JSON with machine info, versions, pins,
   orders, load/steal and every run's samples goes to ``benchmarks/results/peers-<YYYYmmdd-HHMMSS>.json``
   (``--smoke``: ``EDGERUN_HOME/cache/benchmarks/peers/smoke/``; ``--out`` to choose); ``--json`` prints that
   object as the only stdout output (the table then goes to stderr).

A failing conversion or run is recorded in its cell and the rest goes on; the exit status is 1 only when
an edgerun cell failed (its export, its verification or a runner run) or nothing was measured at all.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import peer_venv  # noqa: E402
import report  # noqa: E402
from common import log, sources_hash, thread_env  # noqa: E402

from edgerun.core.version import installed_version  # noqa: E402

WORKER = HERE / "worker.py"
PEER_OF = {"edgerun": "edgerun", "pybindings": "edgerun", "onnxruntime": "onnxruntime", "litert": "litert"}
FP32_ONLY = ("eager", "torch.compile")
DEFAULTS = {"models": "resnet18,mobilenet_v2,text_encoder", "schemes": "fp32,int8,int8-dynamic", "threads": "1,2",
            "rounds": 10, "iterations": 20, "repeats": 5}
SMOKE = {"models": "text_encoder", "schemes": "fp32,int8-dynamic", "threads": "1", "rounds": 2, "iterations": 3,
         "repeats": 1}


# ------------------------------------------------------------------------------------ processes


def run_worker(python: str, args: list[str], *, env: dict | None = None, timeout: float = 1800) -> dict:
    """Run ``worker.py`` with ``python``; returns its JSON line plus ``peak_rss_bytes`` (from ``wait4``),
    ``seconds`` and, when it died or said nothing, ``ok: False`` with its stderr's tail."""
    started = time.monotonic()
    with open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen([python, str(WORKER), *args], stdin=devnull, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, cwd=os.getcwd())
    out: dict = {}

    def read(name, stream):
        out[name] = stream.read()

    readers = [threading.Thread(target=read, args=(n, s), daemon=True) for n, s in (("o", proc.stdout), ("e", proc.stderr))]
    for t in readers:
        t.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    for t in readers:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = out.get("e", b"").decode(errors="replace")
    result = None
    for line in reversed(out.get("o", b"").decode(errors="replace").splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    if result is None:
        why = f"killed after {timeout:g} s" if proc.returncode == -9 else f"exited {proc.returncode}"
        result = {"ok": False, "error": f"worker {why} without a result: {stderr.strip()[-1500:]}"}
    elif not result.get("ok") and result.get("error"):
        result["stderr_tail"] = stderr.strip()[-1500:]
    result["worker_peak_rss_bytes"] = usage.ru_maxrss * 1024
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def strict_json(obj):
    """The object with every non-finite float as a string ("inf", "-inf", "nan"): strict JSON has none."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def _package_sources(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    dirs = list(spec.submodule_search_locations or []) if spec else []
    return sorted(p for d in dirs for p in Path(d).rglob("*.py"))


# ------------------------------------------------------------------------------------ conversions


def conversion_key(peer: str, model_meta: dict, scheme: str, venv_record: dict | None) -> str:
    ours = sources_hash(*(HERE / n for n in ("common.py", "convert.py", "models.py")))
    ident = {"peer": peer, "scheme": scheme, "weights": model_meta["weights_sha256"],
             "calibration": model_meta.get("calibration_sha256"), "ours": ours}
    if peer == "edgerun":  # any change to edgerun's export code or its pinned tools is a new export
        ident["export_sources"] = sources_hash(*_package_sources("edgerun.export"), *_package_sources("edgerun.core"))
        ident["versions"] = {n: installed_version(n) for n in ("edgerun", "torch", "executorch", "torchao")}
    else:
        ident["pins"] = (venv_record or {}).get("pins_hash")
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def convert_one(peer: str, meta: dict, scheme: str, python: str, key: str, fresh: bool, timeout: float) -> dict:
    out_dir = Path(meta["workdir"]) / "convert" / f"{peer}-{scheme}"
    record = out_dir / "convert.json"
    if not fresh and record.is_file():
        try:
            cached = json.loads(record.read_text())
            if cached.get("key") == key and cached.get("ok") and Path(cached["file"]).is_file():
                return {**cached, "cached": True}
        except (OSError, ValueError, KeyError):
            pass
    log(f"converting {meta['model']} {scheme} for {peer}")
    res = run_worker(python, ["convert", "--peer", peer, "--workdir", meta["workdir"], "--scheme", scheme,
                              "--out", str(out_dir)], timeout=timeout)
    res = {**res, "key": key, "cached": False}
    if res.get("ok"):
        record.write_text(json.dumps(res, indent=2))
        log(f"  {peer} {meta['model']} {scheme}: {res.get('method')} ({res['seconds']:.0f} s)"
            + (f"; notes: {'; '.join(res['notes'])[:300]}" if res.get("notes") else ""))
    else:
        log(f"  {peer} {meta['model']} {scheme} FAILED: {res.get('error', '')[:400]}")
    return res


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help=f"zoo names or package.module:factory, comma-separated (default {DEFAULTS['models']})")
    ap.add_argument("--schemes", help=f"of fp32, int8, int8-dynamic (default {DEFAULTS['schemes']})")
    ap.add_argument("--threads", help=f"thread counts, comma-separated (default {DEFAULTS['threads']})")
    ap.add_argument("--rounds", type=int, help=f"interleaved rounds per thread count (default {DEFAULTS['rounds']})")
    ap.add_argument("--iterations", type=int, help=f"timed executions per run (default {DEFAULTS['iterations']})")
    ap.add_argument("--repeats", "--warmup", dest="repeats", type=int,
                    help=f"untimed warm-up executions at the start of every run (default {DEFAULTS['repeats']})")
    ap.add_argument("--runtimes", default=",".join(report.RUNTIMES),
                    help="which runtimes to run (default all: %(default)s)")
    ap.add_argument("--smoke", action="store_true",
                    help="CI size: text_encoder, fp32 + int8-dynamic, 1 thread, 2 rounds, 3 iterations, 1 warm-up")
    ap.add_argument("--json", action="store_true", help="print the result object as the only stdout output")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffled run orders")
    ap.add_argument("--fresh", action="store_true", help="redo every conversion (else cached by key)")
    ap.add_argument("--bundle", help="host runner bundle directory (default: build or reuse it)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per worker process (default %(default)s)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/peers-<time>.json; --smoke: under "
                                  "EDGERUN_HOME/cache/benchmarks/peers/smoke/)")
    args = ap.parse_args(argv)
    base = SMOKE if args.smoke else DEFAULTS
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    args.threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
    args.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    bad = [s for s in args.schemes if s not in ("fp32", "int8", "int8-dynamic")]
    bad_rt = [r for r in args.runtimes if r not in report.RUNTIMES]
    if bad or bad_rt or not args.models or not args.threads or min(args.threads) < 1 or args.rounds < 1 \
            or args.iterations < 1 or args.repeats < 0:
        ap.error(f"bad arguments: schemes {bad or 'ok'}, runtimes {bad_rt or 'ok'}; models, threads >= 1, "
                 "rounds >= 1, iterations >= 1 and repeats >= 0 are required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    from edgerun.core.paths import cache_dir

    timings: dict[str, float] = {}
    failures: list[str] = []      # edgerun's own: these make the exit status 1
    problems: list[str] = []      # everything else that did not work (peers, pybindings, compile...)
    result: dict = {
        "schema": "edgerun.benchmarks.peers", "schema_version": 1,
        "created": _dt.datetime.now().isoformat(timespec="seconds"), "command": [sys.executable, *sys.argv],
        "args": {k: getattr(args, k) for k in ("models", "schemes", "threads", "rounds", "iterations", "repeats",
                                               "runtimes", "smoke", "seed", "fresh")},
        "machine": report.machine_info(),
    }
    want_peers = any(r in args.runtimes for r in ("onnxruntime", "litert"))

    # 1. the peer venv
    venv_record = None
    t0 = time.monotonic()
    if want_peers:
        try:
            venv_record = peer_venv.ensure_peer_venv()
        except Exception as exc:  # noqa: BLE001 - the edgerun side still runs
            problems.append(f"peer venv: {exc}")
            log(f"peer venv FAILED: {exc}")
    timings["peer_venv_s"] = round(time.monotonic() - t0, 1)
    peer_python = venv_record["python"] if venv_record else None
    result["peer_venv"] = {k: venv_record.get(k) for k in ("path", "pins", "pins_hash", "constraints", "installed",
                                                          "created", "seconds", "reused", "torch")} if venv_record else None
    result["versions"] = {"edgerun_venv": {n: installed_version(n) for n in ("edgerun", "torch", "torchvision", "torchao",
                                                                    "executorch", "numpy")},
                          "peer_venv": peer_venv.peer_versions(Path(peer_python)) if peer_python else None,
                          "python": sys.version.split()[0]}

    # 2. models
    t0 = time.monotonic()
    root = cache_dir("benchmarks", "peers")
    models: dict[str, dict] = {}
    for name in args.models:
        res = run_worker(sys.executable, ["prepare", "--model", name, "--root", str(root)], timeout=args.timeout)
        if not res.get("ok"):
            failures.append(f"{name}: building the model failed: {res.get('error')}")
            log(failures[-1])
            continue
        from edgerun.core.artifact import sha256_file as file_sha256

        res["calibration_sha256"] = file_sha256(Path(res["workdir"]) / "calibration.npz")
        models[name] = res
        log(f"model {name}: {res['workdir']} ({'reused' if res.get('reused') else 'built'})")
    result["models"] = [{k: v for k, v in m.items() if k not in ("stderr_tail",)} for m in models.values()]
    timings["prepare_s"] = round(time.monotonic() - t0, 1)

    # 3. the runner bundle
    bundle = None
    if "edgerun" in args.runtimes:
        try:
            from edgerun.runtime.build import BuildRequest, build_bundle
            from edgerun.runtime.bundle import load_bundle

            bundle = load_bundle(args.bundle) if args.bundle else build_bundle(BuildRequest(arch="host"))
            result["bundle"] = str(bundle.path)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"host runner bundle: {type(exc).__name__}: {exc}")
            log(failures[-1])

    # 4. conversions
    t0 = time.monotonic()
    conversions: dict[tuple, dict] = {}   # (peer, model, scheme) -> result
    peers_needed = sorted({PEER_OF[r] for r in args.runtimes if r in PEER_OF},
                          key=["edgerun", "onnxruntime", "litert"].index)
    for name, meta in models.items():
        for scheme in args.schemes:
            for peer in peers_needed:
                python = sys.executable if peer == "edgerun" else peer_python
                if python is None:
                    conversions[(peer, name, scheme)] = {"ok": False, "error": "no peer venv (see problems)"}
                    continue
                key = conversion_key(peer, meta, scheme, venv_record)
                res = convert_one(peer, meta, scheme, python, key, args.fresh, args.timeout)
                conversions[(peer, name, scheme)] = res
                what = f"{peer} conversion of {name} {scheme}"
                if not res.get("ok"):
                    (failures if peer == "edgerun" else problems).append(f"{what} failed: {res.get('error')}")
                elif res.get("verification_failed"):
                    failures.append(f"{what}: edgerun's verification failed (program measured anyway): "
                                    f"{res['verification_failed']}")
    timings["convert_s"] = round(time.monotonic() - t0, 1)
    result["conversions"] = [{"peer": p, "model": m, "scheme": s, **{k: v for k, v in r.items() if k != "stderr_tail"}}
                             for (p, m, s), r in conversions.items()]

    # 5. the cells and the interleaved measurement
    cells: list[tuple[str, str, str]] = []   # (runtime, model, scheme)
    runs: list[dict] = []
    for name, meta in models.items():
        for scheme in args.schemes:
            for rt in args.runtimes:
                if rt in FP32_ONLY and scheme != "fp32":
                    continue
                conv = conversions.get((PEER_OF[rt], name, scheme)) if rt in PEER_OF else {"ok": True}
                if rt == "edgerun" and bundle is None:
                    conv = {"ok": False, "error": "no host runner bundle"}
                if rt in ("onnxruntime", "litert") and peer_python is None:
                    conv = {"ok": False, "error": "no peer venv"}
                if not conv or not conv.get("ok"):
                    for t in args.threads:  # one placeholder per thread count: the table shows the reason
                        runs.append({"runtime": rt, "model": name, "scheme": scheme, "threads": t, "round": None,
                                     "ok": False, "error": f"conversion: {(conv or {}).get('error', 'not converted')}"})
                    continue
                cells.append((rt, name, scheme))
    rng = random.Random(args.seed)
    blocks: list[dict] = []
    t0 = time.monotonic()
    total = len(cells) * args.rounds * len(args.threads)
    done = 0
    for t in args.threads:
        for k in range(args.rounds):
            order = list(cells)
            rng.shuffle(order)
            block = {"threads": t, "round": k, "order": [f"{rt}|{m}|{s}" for rt, m, s in order],
                     "loadavg_before": list(os.getloadavg())}
            cpu0, b0 = report.cpu_times(), time.monotonic()
            for pos, (rt, name, scheme) in enumerate(order):
                done += 1
                run = measure_cell(rt, models[name], scheme, t, k, pos, args, conversions, bundle,
                                   peer_python)
                runs.append(run)
                took = f"{run['summary']['median_ms']:.3f} ms" if run.get("ok") else \
                    ("skipped: " + run["skipped"][:120] if run.get("skipped") else "FAILED: " + run.get("error", "")[:200])
                log(f"[{done}/{total}] threads={t} round {k + 1}/{args.rounds}: {rt} {name} {scheme}: {took}")
            block.update({"loadavg_after": list(os.getloadavg()), "seconds": round(time.monotonic() - b0, 2),
                          **report.steal_between(cpu0, report.cpu_times())})
            blocks.append(block)
    timings["measure_s"] = round(time.monotonic() - t0, 1)

    # 6. the report
    for r in runs:
        if r["runtime"] == "edgerun" and not r.get("ok") and r.get("round") is not None:
            failures.append(f"edgerun runner run of {r['model']} {r['scheme']} threads={r['threads']} round "
                            f"{r['round']}: {r.get('error')}")
        elif not r.get("ok") and not r.get("skipped") and r.get("round") is not None:
            problems.append(f"{r['runtime']} run of {r['model']} {r['scheme']} threads={r['threads']} "
                            f"round {r['round']}: {(r.get('error') or '')[:500]}")
    conv_by_runtime = {(rt, m, s): conversions.get((PEER_OF.get(rt, ""), m, s)) for rt, m, s in cells}
    result["cells"] = report.cells_from_runs(runs, conv_by_runtime)
    result["goal"] = report.goal_lines(result["cells"])
    result["blocks"] = blocks
    result["runs"] = runs
    measured = sum(1 for r in runs if r.get("ok"))
    if not measured:
        failures.append("nothing was measured")
    result["failures"] = failures
    result["problems"] = problems
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    timings["total_s"] = round(time.monotonic() - started, 1)
    result["timings"] = timings
    result["exit_code"] = 1 if failures else 0
    # smoke numbers are a function check, not results: they stay out of the repository's results folder
    out_dir = cache_dir("benchmarks", "peers", "smoke") if args.smoke else ROOT / "benchmarks" / "results"
    path = Path(args.out) if args.out else out_dir / f"peers-{'smoke-' if args.smoke else ''}{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result["json_path"] = str(path)
    result = strict_json(result)
    path.write_text(json.dumps(result, indent=1, allow_nan=False))
    table = report.markdown(result)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result, allow_nan=False))
    else:
        print(table)
        print(f"JSON: {path}")
    log(f"done in {timings['total_s']:.0f} s (venv {timings['peer_venv_s']:.0f} s, models {timings['prepare_s']:.0f} s, "
        f"conversions {timings['convert_s']:.0f} s, measurement {timings['measure_s']:.0f} s); {measured} runs measured, "
        f"{len(failures)} edgerun failure(s), {len(problems)} other problem(s)")
    return result["exit_code"]


def measure_cell(rt: str, meta: dict, scheme: str, threads: int, round_: int, pos: int, args, conversions: dict,
                 bundle, peer_python: str | None) -> dict:
    name = meta["model"]
    conv = conversions.get((PEER_OF[rt], name, scheme)) if rt in PEER_OF else None
    argv = ["measure", "--runtime", rt, "--workdir", meta["workdir"], "--threads", str(threads),
            "--warmup", str(args.repeats), "--iterations", str(args.iterations)]
    if conv:
        argv += ["--file", conv["file"]]
    if rt == "edgerun":
        argv += ["--bundle", str(bundle.path)]
    python = peer_python if rt in ("onnxruntime", "litert") else sys.executable
    res = run_worker(python, argv, env=thread_env(threads), timeout=args.timeout)
    size = conv.get("bytes") if conv else (Path(meta["workdir"]) / "weights.pt").stat().st_size
    run = {"runtime": rt, "model": name, "scheme": scheme, "threads": threads, "round": round_, "position": pos,
           "ok": bool(res.get("ok")), "size_bytes": size,
           # the measured process's peak RSS: the runner's own for edgerun, else the worker's (wait4)
           "peak_rss_bytes": res.get("peak_rss_bytes") or res.get("worker_peak_rss_bytes"),
           "worker_peak_rss_bytes": res.get("worker_peak_rss_bytes"), "seconds": res.get("seconds"),
           "info": res.get("info"), "snr_db": res.get("snr_db")}
    if res.get("ok"):
        run["samples_ns"] = res["samples_ns"]
        run["summary"] = report.sample_summary(res["samples_ns"])
    elif res.get("skipped"):
        run["skipped"] = res["skipped"]
    else:
        run["error"] = res.get("error") or "unknown"
    return run


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
