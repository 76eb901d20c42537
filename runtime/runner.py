"""Invoking ``edgerun-runner`` and reading what it says (protocol: ``runtime/native/PROTOCOL.md``).

Three pieces, kept apart because the devices room runs the same argv elsewhere:

* :func:`runner_argv` builds the argv for a bundle that sits at some directory on the executing
  side (a local path, or ``/tmp/edgerun/bundles/…`` on a Pi), optionally prefixed by an emulator
  (``qemu-aarch64 -cpu cortex-a76``);
* :func:`~edgerun.runtime.protocol.parse_runner_output` (in :mod:`edgerun.runtime.protocol`, re-exported
  here) turns the runner's stdout (+ exit code, stderr) into a typed :class:`RunnerResult`, whatever
  transport carried it;
* :func:`run_local` runs a bundle on this machine with both, and
  :func:`~edgerun.runtime.protocol.raise_for_result` turns a failed run into a :class:`RunnerError`
  whose exit code is the runner's own (10 load, 11 input, 12 execute, 13 output, 14 died).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edgerun.core.errors import RunnerError, UsageError, environment_problem

from .build import host_arch
from .bundle import Bundle, load_bundle, require_intact, runner_prefix
from .protocol import (  # noqa: F401  (the protocol's names, re-exported for callers of the runner)
    EXIT_STAGES, PROTOCOL_VERSION, RunnerResult, parse_runner_output, raise_for_result, runner_failure,
)

FILLS = ("zeros", "ones", "random")
LOAD_MODES = ("mmap", "file")


AUTO_THREADS = "auto"
XNNPACK_WORKSPACE = ("disabled", "per-model", "global")
# When the runner lets XNNPACK reshape and set up a runtime: only when an input shape, a buffer or the
# thread count changed (the runner's default), or before every execute (ExecuTorch's own behaviour).
XNNPACK_RESHAPE = ("on-change", "always")


def _backend_flags(options: "RunOptions") -> list[str]:
    out = []
    if options.xnnpack_workspace is not None:
        out += ["--xnnpack-workspace", options.xnnpack_workspace]
    if options.xnnpack_weight_cache is not None:
        out += ["--xnnpack-weight-cache", "on" if options.xnnpack_weight_cache else "off"]
    if options.xnnpack_reshape != XNNPACK_RESHAPE[0]:  # the default needs no flag (runners before it lack it)
        out += ["--xnnpack-reshape", options.xnnpack_reshape]
    return out


def _data_flags(data: str | os.PathLike | None) -> list[str]:
    """``--ptd PATH`` for a program with an external data file; nothing without one."""
    return ["--ptd", os.fspath(data)] if data else []


@dataclass(frozen=True)
class RunOptions:
    """How to run a program: the runner flags that do not name files."""

    method: str = "forward"
    warmup: int = 1
    iterations: int = 10
    min_time_ms: int = 0
    max_iterations: int = 100000  # caps only the extension by min_time_ms; iterations always run
    threads: int | str = 0  # 0: the runtime's default (every core); "auto": the runner measures 1 and all
    fill: str = "random"
    seed: int = 0
    load_mode: str = "mmap"
    xnnpack_workspace: str | None = None     # disabled | per-model | global (None: the library's default)
    xnnpack_weight_cache: bool | None = None
    xnnpack_reshape: str = XNNPACK_RESHAPE[0]  # on-change | always

    def __post_init__(self):
        if not self.method:
            raise ValueError("method must be a non-empty name")
        if self.threads != AUTO_THREADS and (not isinstance(self.threads, int) or self.threads < 0):
            raise ValueError(f"threads must be an integer >= 0 or {AUTO_THREADS!r}, got {self.threads!r}")
        if self.xnnpack_workspace not in (None, *XNNPACK_WORKSPACE):
            raise ValueError(f"xnnpack_workspace must be one of {XNNPACK_WORKSPACE}, got {self.xnnpack_workspace!r}")
        if self.xnnpack_reshape not in XNNPACK_RESHAPE:
            raise ValueError(f"xnnpack_reshape must be one of {XNNPACK_RESHAPE}, got {self.xnnpack_reshape!r}")
        for name, lo in (("warmup", 0), ("iterations", 1), ("min_time_ms", 0), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
        if not isinstance(self.max_iterations, int) or self.max_iterations < 1:
            raise ValueError(f"max_iterations must be an integer >= 1, got {self.max_iterations!r}")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {self.fill!r}")
        if self.load_mode not in LOAD_MODES:
            raise ValueError(f"load_mode must be one of {LOAD_MODES}, got {self.load_mode!r}")


def runner_argv(bundle: Bundle, program: str, *, inputs: Sequence[str] = (), options: RunOptions = RunOptions(),
                etdump: str | None = None, output_dir: str | None = None, bundle_dir: str | None = None,
                emulator: Sequence[str] = (), input_batch: str | None = None,
                batch_output: str | None = None, batch_only: bool = False,
                llm_args: Sequence[str] = (), data: str | None = None) -> list[str]:
    """The argv that runs ``program`` with ``bundle`` located at ``bundle_dir`` on the executing side.

    Paths are used as given (they are the executing side's paths). ``bundle_dir`` defaults to the
    bundle's local directory. For aarch64 the argv starts with the bundle's own loader:
    ``[*emulator, DIR/ld-linux-aarch64.so.1, --library-path, DIR, DIR/edgerun-runner, …]``.

    ``input_batch``/``batch_output`` (together): run every sample of a stacked ``[N, *input_shape]``
    .npy once, after the timed iterations, and write output 0 stacked (``--input-batch``,
    ``--batch-output``). ``batch_only``: no warm-up and no timed iterations, only the batch.

    ``data``: the program's external data file (``.ptd``) on the executing side, when it has one
    (``--ptd``; a program that keeps weights there does not load without it).

    ``llm_args``: the LLM mode's flags (:meth:`edgerun.runtime.llm.LLMRequest.runner_args`); the run then
    takes no inputs or output directory, ``options.warmup`` counts warm-up repetitions and
    ``options.seed`` seeds sampling and random prompts.
    """
    if llm_args:
        if inputs or input_batch is not None or output_dir:
            raise ValueError("an LLM run takes no inputs, batch or output directory")
        argv = runner_prefix(bundle.arch, bundle_dir if bundle_dir is not None else str(bundle.path), emulator)
        argv += ["--model", str(program), *_data_flags(data), "--method", options.method,
                 "--warmup", str(options.warmup), "--seed", str(options.seed)]
        if options.threads:
            argv += ["--threads", str(options.threads)]
        argv += _backend_flags(options)
        if options.load_mode != "mmap":
            argv += ["--load-mode", options.load_mode]
        if etdump:
            argv += ["--etdump", str(etdump)]
        return argv + list(llm_args)
    if (input_batch is None) != (batch_output is None):
        raise ValueError("input_batch and batch_output go together")
    if batch_only and input_batch is None:
        raise ValueError("batch_only needs input_batch and batch_output")
    if input_batch is not None and etdump:
        raise ValueError("a batch run cannot record an ETDump (it would hold the batch's executions)")
    argv = runner_prefix(bundle.arch, bundle_dir if bundle_dir is not None else str(bundle.path), emulator)
    argv += ["--model", str(program), *_data_flags(data), "--method", options.method]
    argv += ["--warmup", "0", "--iterations", "0"] if batch_only else \
        ["--warmup", str(options.warmup), "--iterations", str(options.iterations)]
    if options.min_time_ms and not batch_only:
        argv += ["--min-time-ms", str(options.min_time_ms), "--max-iterations", str(options.max_iterations)]
    if options.threads:
        argv += ["--threads", str(options.threads)]
    argv += _backend_flags(options)
    if options.load_mode != "mmap":
        argv += ["--load-mode", options.load_mode]
    for path in inputs:
        argv += ["--input", str(path)]
    if not inputs:
        argv += ["--fill", options.fill, "--seed", str(options.seed)]
    if etdump:
        argv += ["--etdump", str(etdump)]
    if output_dir:
        argv += ["--output-dir", str(output_dir)]
    if input_batch is not None:
        argv += ["--input-batch", str(input_batch), "--batch-output", str(batch_output)]
    return argv


def run_local(bundle_dir: str | os.PathLike | Bundle, program: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (),
              *, warmup: int = 1, iterations: int = 10, threads: int = 0, etdump_path: str | os.PathLike | None = None,
              outputs_dir: str | os.PathLike | None = None, method: str = "forward", min_time_ms: int = 0,
              options: RunOptions | None = None, emulator: Sequence[str] = (), timeout: float = 600,
              check: bool = True, verify: bool = True, input_batch: str | os.PathLike | None = None,
              batch_output: str | os.PathLike | None = None, batch_only: bool = False,
              data: str | os.PathLike | None = None) -> RunnerResult:
    """Run a bundle's runner on this machine (directly, or under ``emulator`` such as qemu).

    ``data``: the program's external data file (``.ptd``), when it has one.

    ``input_batch``/``batch_output``/``batch_only``: as :func:`runner_argv` (``--input-batch``).

    With ``check`` (default) a failed run raises :class:`RunnerError`; otherwise the result is
    returned as it is. ``verify`` checks the bundle's files against bundle.json first.
    """
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else load_bundle(bundle_dir)
    if verify:
        require_intact(bundle)
    if options is None:
        options = RunOptions(method=method, warmup=warmup, iterations=iterations, threads=threads,
                             min_time_ms=min_time_ms)
    if emulator and shutil.which(emulator[0]) is None:
        raise RunnerError(f"the emulator {emulator[0]} is not installed.", stage="run",
                          hint="Install qemu-user (scripts/setup, or apt-get install qemu-user).")
    if bundle.arch != host_arch() and not emulator:  # a wrong call, not a runner that died
        raise UsageError(f"bundle {bundle.path} is for {bundle.arch}; this machine is {host_arch()}.",
                         hint=f"Build a host bundle (`edgerun runtime build --arch host`), run it on a device "
                              f"(--device), or under an emulator (qemu-{bundle.arch} -cpu <board cpu>).")
    if not timeout > 0:
        raise UsageError(f"timeout must be a number of seconds > 0, got {timeout!r}.")
    if outputs_dir is not None:
        try:
            Path(outputs_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise environment_problem(exc, f"cannot create the outputs directory {outputs_dir}",
                                      stage="outputs") from None
    argv = runner_argv(bundle, os.fspath(program), inputs=[os.fspath(p) for p in inputs], options=options,
                       etdump=os.fspath(etdump_path) if etdump_path else None,
                       output_dir=os.fspath(outputs_dir) if outputs_dir else None, emulator=emulator,
                       input_batch=os.fspath(input_batch) if input_batch is not None else None,
                       batch_output=os.fspath(batch_output) if batch_output is not None else None,
                       batch_only=batch_only, data=os.fspath(data) if data else None)
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        result = parse_runner_output(exc.stdout or b"", exit_code=-9, stderr=exc.stderr or b"", argv=argv,
                                     duration_s=time.monotonic() - started)
        raise RunnerError(f"the runner did not finish within {timeout:g} s and was killed, after "
                          f"{len(result.execute_ns)} timed iteration(s).", stage="run", result=result,
                          hint="Use fewer iterations, or a longer timeout.") from None
    except OSError as exc:
        raise RunnerError(f"cannot start {argv[0]}: {exc}", stage="run",
                          hint="Rebuild the bundle (`edgerun runtime build --force`).") from exc
    result = parse_runner_output(proc.stdout, exit_code=proc.returncode, stderr=proc.stderr, argv=argv,
                                 duration_s=time.monotonic() - started)
    return raise_for_result(result) if check else result


def run_artifact_local(artifact: str | os.PathLike, bundle_dir: str | os.PathLike, *, vector: int | None = 0,
                       options: RunOptions = RunOptions(), etdump: bool = False,
                       outputs_dir: str | os.PathLike | None = None, emulator: Sequence[str] = (),
                       preflight: bool = True, timeout: float = 600) -> dict[str, Any]:
    """``edgerun run ARTIFACT --bundle B``: pre-flight, run one test vector's inputs, report."""
    from edgerun.core.artifact import read_manifest
    from edgerun.core.paths import runs_dir

    from .preflight import check_compatible

    manifest = read_manifest(artifact)
    art = manifest.dir
    n = len(manifest.test_vectors)
    if not timeout > 0:  # every option checked before anything is made or run
        raise UsageError(f"--timeout must be a number of seconds > 0, got {timeout!r}.")
    if vector is not None and n and not 0 <= vector < n:
        raise UsageError(f"--vector {vector}: artifact {art} has {n} test vector(s) (0..{n - 1}).")
    inputs: list[str] = []
    if vector is not None and manifest.test_vectors:
        inputs = [str(p) for p in manifest.vector_input_paths(vector)]
    bundle = require_intact(load_bundle(bundle_dir))
    report = check_compatible(manifest, bundle, enforce=preflight)
    pte = manifest.verified_pte()
    data = manifest.verified_data()
    out_dir = Path(outputs_dir) if outputs_dir else None
    etdump_path = None
    if etdump:  # beside the outputs, else in a fresh run folder: never inside the artifact
        base = out_dir or runs_dir() / f"{art.name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise environment_problem(exc, f"cannot create {base}", stage="run directory") from None
        etdump_path = base / "run.etdp"
    result = run_local(bundle, pte, inputs, options=options, etdump_path=etdump_path, outputs_dir=out_dir,
                       emulator=emulator, timeout=timeout, verify=False, data=data)
    return {"artifact": str(art), "bundle": str(bundle.path), "preflight": report.to_json(),
            "inputs": inputs or f"fill:{options.fill}", "emulator": list(emulator) or None,
            "runner": result.to_json()}
