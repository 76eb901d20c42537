"""One measurement: a runtime runs one converted program ``warmup + iterations`` times in this process.

Run by ``worker.py measure`` in a fresh process per (runtime, model, scheme, threads, round), whose
environment pins ``OMP_NUM_THREADS`` and friends to the thread count (:func:`common.thread_env`).
Each returns ``{"ok", "samples_ns", "snr_db", "info"}``; the parent adds the process's peak RSS (from
``wait4``) and the file size. What each runtime's clock covers:

* ``edgerun``: the native runner (``run_local``), its own steady clock around ``Module::execute``
  (``result.execute_ns``); peak RSS is the runner process's own (its ``peak_rss_kb``, VmHWM), not
  this Python worker's.
* ``pybindings``: ExecuTorch's Python runtime (``executorch.runtime.Runtime``), ``perf_counter_ns``
  around ``Method.execute``; thread pool via ``portable_lib._unsafe_reset_threadpool(T)``.
* ``onnxruntime``: ``InferenceSession.run`` (CPU provider; ``intra_op_num_threads=T``,
  ``inter_op_num_threads=1``, sequential execution, graph optimisations at ORT's default: all).
* ``litert``: ``Interpreter.invoke`` (``num_threads=T``; the inputs are set once before, as the runner's
  are); ai-edge-litert applies its default XNNPACK delegate.
* ``eager``: ``model(*inputs)`` under ``torch.inference_mode`` with ``torch.set_num_threads(T)``.
* ``torch.compile``: the same through ``torch.compile(model)`` (inductor, default mode); the first call
  (compilation) is timed apart as ``info.compile_s`` and not among the samples. A compile failure is a
  skip with its reason, not an error.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from common import example_inputs, json_float, min_snr_db, reference_outputs


def _timed(fn, warmup: int, iterations: int) -> list[int]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return samples


def _edgerun(workdir: Path, file: str, threads: int, warmup: int, iterations: int, bundle: str) -> dict:
    from edgerun.runtime.bundle import load_bundle
    from edgerun.runtime.runner import RunOptions, run_local

    inputs = sorted((workdir / "example").glob("input_*.npy"), key=lambda p: int(p.stem.split("_")[1]))
    with tempfile.TemporaryDirectory(prefix="peers-out-") as out:
        res = run_local(load_bundle(bundle), file, inputs, outputs_dir=out,
                        options=RunOptions(warmup=warmup, iterations=iterations, threads=threads))
        outputs = [np.load(p) for p in sorted(Path(out).glob("output_*.npy"), key=lambda p: int(p.stem.split("_")[1]))]
    summary = res.summary
    # The runner's own VmHWM. RUSAGE_CHILDREN would do too, but it also counts what the forked child
    # held of this Python worker before exec (measured: 40 MB where the runner peaked at 9.5 MB).
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    own = summary.peak_rss_kb * 1024 if summary and summary.peak_rss_kb else None
    return {"samples_ns": list(res.execute_ns), "outputs": outputs, "peak_rss_bytes": own or children,
            "info": {"runner_threads": res.header.threads if res.header else None,
                     "rusage_children_maxrss_bytes": children,
                     "load_ms": res.load.load_ns / 1e6 if res.load else None}}


def _pybindings(workdir: Path, file: str, threads: int, warmup: int, iterations: int) -> dict:
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(file).load_method("forward")
    tensors = [torch.from_numpy(x) for x in example_inputs(workdir)]
    last: list = []

    def run():
        last[:] = method.execute(tensors)

    samples = _timed(run, warmup, iterations)
    return {"samples_ns": samples, "outputs": [t.numpy() for t in last],
            "info": {"threadpool": portable_lib._threadpool_get_thread_count()}}


def _onnxruntime(workdir: Path, file: str, threads: int, warmup: int, iterations: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(file, opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i, x in zip(sess.get_inputs(), example_inputs(workdir))}
    last: list = []

    def run():
        last[:] = sess.run(None, feeds)

    samples = _timed(run, warmup, iterations)
    return {"samples_ns": samples, "outputs": last, "info": {"providers": sess.get_providers()}}


def _litert(workdir: Path, file: str, threads: int, warmup: int, iterations: int) -> dict:
    from ai_edge_litert.interpreter import Interpreter
    from convert import litert_feed, litert_outputs

    it = Interpreter(model_path=file, num_threads=threads)
    it.allocate_tensors()
    litert_feed(it, example_inputs(workdir))
    samples = _timed(it.invoke, warmup, iterations)
    return {"samples_ns": samples, "outputs": litert_outputs(it), "info": {}}


def _torch(workdir: Path, threads: int, warmup: int, iterations: int, compiled: bool) -> dict:
    import torch
    from common import load_model
    from models import _flatten

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    model, example = load_model(workdir, pickled=True)
    info = {"torch_threads": torch.get_num_threads(), "mha_fastpath": torch.backends.mha.get_fastpath_enabled()}
    fn = model
    if compiled:
        try:
            fn = torch.compile(model)
            t0 = time.monotonic()
            with torch.inference_mode():
                fn(*example)
            info["compile_s"] = round(time.monotonic() - t0, 2)
        except Exception as exc:  # noqa: BLE001 - skipped cleanly, with the reason
            return {"skipped": f"torch.compile failed: {type(exc).__name__}: {str(exc)[:800]}", "info": info}
    last: list = []

    def run():
        last[:] = [fn(*example)]

    with torch.inference_mode():
        samples = _timed(run, warmup, iterations)
    return {"samples_ns": samples, "outputs": [t.numpy() for t in _flatten(last[0])], "info": info}


def measure(runtime: str, workdir: Path, file: str | None, threads: int, warmup: int, iterations: int,
            bundle: str | None = None) -> dict:
    workdir = Path(workdir)
    if runtime == "edgerun":
        got = _edgerun(workdir, file, threads, warmup, iterations, bundle)
    elif runtime == "pybindings":
        got = _pybindings(workdir, file, threads, warmup, iterations)
    elif runtime == "onnxruntime":
        got = _onnxruntime(workdir, file, threads, warmup, iterations)
    elif runtime == "litert":
        got = _litert(workdir, file, threads, warmup, iterations)
    elif runtime in ("eager", "torch.compile"):
        got = _torch(workdir, threads, warmup, iterations, compiled=runtime == "torch.compile")
    else:
        raise ValueError(f"unknown runtime {runtime!r}")
    if "skipped" in got:
        return {"ok": False, **got}
    outputs = got.pop("outputs")
    snr = min_snr_db([np.asarray(o) for o in outputs], reference_outputs(workdir))
    return {"ok": True, **got, "snr_db": json_float(snr), "pid": os.getpid()}
