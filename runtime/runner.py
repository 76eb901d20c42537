"""Invoking ``edgerun-runner`` and reading what it says (protocol: ``runtime/native/PROTOCOL.md``).

Three pieces, kept apart because the devices room runs the same argv elsewhere:

* :func:`runner_argv` builds the argv for a bundle that sits at some directory on the executing
  side (a local path, or ``/tmp/edgerun/bundles/…`` on a Pi), optionally prefixed by an emulator
  (``qemu-aarch64 -cpu cortex-a76``);
* :func:`parse_runner_output` turns the runner's stdout (+ exit code, stderr) into a
  :class:`RunnerResult`, whatever transport carried it;
* :func:`run_local` runs a bundle on this machine with both, and :func:`raise_for_result` turns
  a failed run into a :class:`RunnerError` whose exit code is the runner's own (10 load,
  11 input, 12 execute, 13 output).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgerun.core.errors import EdgerunError, RunnerError

from .build import host_arch
from .bundle import Bundle, load_bundle, require_intact, runner_prefix

PROTOCOL_VERSION = 1
EXIT_STAGES = {2: "usage", 10: "load", 11: "input", 12: "execute", 13: "output"}
FILLS = ("zeros", "ones", "random")
LOAD_MODES = ("mmap", "file")


@dataclass(frozen=True)
class RunOptions:
    """How to run a program: the runner flags that do not name files."""

    method: str = "forward"
    warmup: int = 1
    iterations: int = 10
    min_time_ms: int = 0
    max_iterations: int = 100000  # caps only the extension by min_time_ms; iterations always run
    threads: int = 0
    fill: str = "random"
    seed: int = 0
    load_mode: str = "mmap"

    def __post_init__(self):
        if not self.method:
            raise ValueError("method must be a non-empty name")
        for name, lo in (("warmup", 0), ("iterations", 1), ("min_time_ms", 0), ("threads", 0), ("seed", 0)):
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
                batch_output: str | None = None, batch_only: bool = False) -> list[str]:
    """The argv that runs ``program`` with ``bundle`` located at ``bundle_dir`` on the executing side.

    Paths are used as given (they are the executing side's paths). ``bundle_dir`` defaults to the
    bundle's local directory. For aarch64 the argv starts with the bundle's own loader:
    ``[*emulator, DIR/ld-linux-aarch64.so.1, --library-path, DIR, DIR/edgerun-runner, …]``.

    ``input_batch``/``batch_output`` (together): run every sample of a stacked ``[N, *input_shape]``
    .npy once, after the timed iterations, and write output 0 stacked (``--input-batch``,
    ``--batch-output``). ``batch_only``: no warm-up and no timed iterations, only the batch.
    """
    if (input_batch is None) != (batch_output is None):
        raise ValueError("input_batch and batch_output go together")
    if batch_only and input_batch is None:
        raise ValueError("batch_only needs input_batch and batch_output")
    if input_batch is not None and etdump:
        raise ValueError("a batch run cannot record an ETDump (it would hold the batch's executions)")
    argv = runner_prefix(bundle.arch, bundle_dir if bundle_dir is not None else str(bundle.path), emulator)
    argv += ["--model", str(program), "--method", options.method]
    argv += ["--warmup", "0", "--iterations", "0"] if batch_only else \
        ["--warmup", str(options.warmup), "--iterations", str(options.iterations)]
    if options.min_time_ms and not batch_only:
        argv += ["--min-time-ms", str(options.min_time_ms), "--max-iterations", str(options.max_iterations)]
    if options.threads:
        argv += ["--threads", str(options.threads)]
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


@dataclass
class RunnerResult:
    """Everything one runner invocation said. ``lines`` are the parsed JSON lines, in order."""

    argv: list[str]
    exit_code: int
    lines: list[dict] = field(default_factory=list)
    stderr: str = ""
    duration_s: float | None = None
    protocol_problems: list[str] = field(default_factory=list)

    def _first(self, kind: str) -> dict | None:
        return next((ln for ln in self.lines if ln.get("type") == kind), None)

    @property
    def header(self) -> dict | None:
        return self._first("header")

    @property
    def load(self) -> dict | None:
        return self._first("load")

    @property
    def summary(self) -> dict | None:
        return self._first("summary")

    @property
    def error(self) -> dict | None:
        return self._first("error")

    @property
    def kernels(self) -> dict | None:
        return self._first("kernels")

    @property
    def batch(self) -> dict | None:
        """The ``batch`` line of a run with ``--input-batch`` (samples, stacked output path, times)."""
        return self._first("batch")

    @property
    def iterations(self) -> list[dict]:
        return [ln for ln in self.lines if ln.get("type") == "iteration"]

    @property
    def ok(self) -> bool:
        return (self.exit_code == 0 and self.error is None and not self.protocol_problems
                and (self.summary is not None or self.kernels is not None
                     or (self.header is not None and self.load is None)))

    @property
    def execute_ns(self) -> list[int]:
        """Timed iterations' ``execute_ns`` (steady clock around execute alone), in order."""
        return [int(it["execute_ns"]) for it in self.iterations if not it.get("warmup")]

    @property
    def wall_ns(self) -> list[int]:
        return [int(it["wall_ns"]) for it in self.iterations if not it.get("warmup")]

    @property
    def warmup_execute_ns(self) -> list[int]:
        return [int(it["execute_ns"]) for it in self.iterations if it.get("warmup")]

    @property
    def load_ns(self) -> int | None:
        return self.load.get("load_ns") if self.load else None

    @property
    def peak_rss_kb(self) -> int | None:
        return self.summary.get("peak_rss_kb") if self.summary else None

    @property
    def output_paths(self) -> list[str | None]:
        return [o.get("path") for o in (self.summary or {}).get("outputs", [])]

    def failure_json(self) -> dict:
        """What a :class:`RunnerError` carries of this result in ``--json`` output."""
        return {"argv": self.argv, "exit_code": self.exit_code, "error": self.error,
                "stderr_tail": self.stderr[-4000:]}

    def to_json(self) -> dict:
        return {"argv": self.argv, "exit_code": self.exit_code, "ok": self.ok, "duration_s": self.duration_s,
                "header": self.header, "load": self.load, "summary": self.summary, "error": self.error,
                "batch": self.batch,
                "execute_ns": self.execute_ns, "wall_ns": self.wall_ns,
                "warmup_execute_ns": self.warmup_execute_ns, "protocol_problems": self.protocol_problems,
                "stderr_tail": self.stderr[-4000:]}


def parse_runner_output(stdout: str | bytes, *, exit_code: int, stderr: str | bytes = "",
                        argv: Sequence[str] = (), duration_s: float | None = None) -> RunnerResult:
    """Parse the runner's stdout (JSON lines). Never raises: problems are kept on the result."""
    if isinstance(stdout, bytes):
        stdout = stdout.decode("utf-8", "replace")
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    result = RunnerResult(argv=list(argv), exit_code=exit_code, stderr=stderr, duration_s=duration_s)
    for n, line in enumerate(stdout.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            result.protocol_problems.append(f"stdout line {n} is not JSON: {line[:200]!r}")
            continue
        if not isinstance(obj, dict) or "type" not in obj:
            result.protocol_problems.append(f"stdout line {n} is not a protocol record: {line[:200]!r}")
            continue
        result.lines.append(obj)
    header = result.header
    if header is None:
        if result.lines or exit_code == 0:
            result.protocol_problems.append("no header line: this is not edgerun-runner output")
    elif header.get("protocol") != PROTOCOL_VERSION:
        result.protocol_problems.append(
            f"runner speaks protocol {header.get('protocol')!r}, this edgerun reads {PROTOCOL_VERSION}")
    return result


_HINTS = {
    "load": "Check the program file (`edgerun inspect ARTIFACT`), and that the bundle has the operators and "
            "backend it needs (pre-flight names them) and the same executorch version that exported it.",
    "input": "Give one input file per program input, with the shape and dtype in the artifact's manifest "
             "(.npy, or raw bytes of exactly the right size).",
    "execute": "The program failed while running; try --threads 1, or the portable target to find the operator.",
    "output": "Check that the output/ETDump directory exists on the device and is writable, and there is space.",
    "usage": "This is an edgerun bug if edgerun built the argv; please report it with --debug output.",
}


def raise_for_result(result: RunnerResult, *, where: str = "this machine") -> RunnerResult:
    """Return ``result`` if the run succeeded, else raise a :class:`RunnerError` that says why."""
    if result.ok:
        return result
    err = result.error
    if err is not None:
        stage = err.get("stage", EXIT_STAGES.get(result.exit_code, "run"))
        log_lines = err.get("log") or []
        detail = f" ExecuTorch said: {log_lines[-1]}" if log_lines else ""
        raise RunnerError(f"the runner on {where} failed at {stage} with {err.get('error')}: "
                          f"{err.get('message')}.{detail}", stage=f"run ({stage})",
                          hint=_HINTS.get(stage), result=result,
                          exit_code=result.exit_code if result.exit_code in EXIT_STAGES else None)
    tail = result.stderr.strip()[-1500:]
    if result.protocol_problems:
        why = "; ".join(result.protocol_problems[:3])
    elif result.exit_code < 0 or result.exit_code > 128:
        sig = -result.exit_code if result.exit_code < 0 else result.exit_code - 128
        why = f"it was killed by signal {sig}"
    else:
        why = f"it exited {result.exit_code} without an error line"
    timed = len(result.execute_ns)
    raise RunnerError(f"the runner on {where} did not finish: {why}, after {timed} timed iteration(s)."
                      + (f" Its stderr ends with: {tail}" if tail else ""),
                      stage="run", result=result,
                      hint="If it was killed for memory, try a smaller model or the slim bundle; "
                           "if it timed out, fewer iterations or a longer timeout.")


def run_local(bundle_dir: str | os.PathLike | Bundle, program: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (),
              *, warmup: int = 1, iterations: int = 10, threads: int = 0, etdump_path: str | os.PathLike | None = None,
              outputs_dir: str | os.PathLike | None = None, method: str = "forward", min_time_ms: int = 0,
              options: RunOptions | None = None, emulator: Sequence[str] = (), timeout: float = 600,
              check: bool = True, verify: bool = True, input_batch: str | os.PathLike | None = None,
              batch_output: str | os.PathLike | None = None, batch_only: bool = False) -> RunnerResult:
    """Run a bundle's runner on this machine (directly, or under ``emulator`` such as qemu).

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
    if bundle.arch != host_arch() and not emulator:
        raise RunnerError(f"bundle {bundle.path} is for {bundle.arch}; this machine is {host_arch()}.",
                          stage="run", hint=f"Build a host bundle (`edgerun runtime build --arch host`), or run "
                                            f"under an emulator (qemu-{bundle.arch} -cpu <board cpu>).")
    if outputs_dir is not None:
        Path(outputs_dir).mkdir(parents=True, exist_ok=True)
    argv = runner_argv(bundle, os.fspath(program), inputs=[os.fspath(p) for p in inputs], options=options,
                       etdump=os.fspath(etdump_path) if etdump_path else None,
                       output_dir=os.fspath(outputs_dir) if outputs_dir else None, emulator=emulator,
                       input_batch=os.fspath(input_batch) if input_batch is not None else None,
                       batch_output=os.fspath(batch_output) if batch_output is not None else None,
                       batch_only=batch_only)
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
    from .preflight import check_compatible, read_manifest

    art = Path(artifact)
    manifest = read_manifest(art)
    bundle = require_intact(load_bundle(bundle_dir))
    report = check_compatible(manifest, bundle, enforce=preflight)
    pte = art / manifest.get("files", {}).get("pte", "model.pte")
    vectors = manifest.get("test_vectors") or []
    inputs: list[str] = []
    if vector is not None and vectors:
        if not 0 <= vector < len(vectors):
            raise RunnerError(f"artifact {art} has {len(vectors)} test vector(s); there is no vector {vector}.",
                              stage="arguments", hint=f"Use --vector 0..{len(vectors) - 1}.", exit_code=2)
        inputs = [str(art / p) for p in vectors[vector]["inputs"]]
    out_dir = Path(outputs_dir) if outputs_dir else None
    etdump_path = None
    if etdump:  # beside the outputs, else in a fresh run folder: never inside the artifact
        from edgerun.core.paths import cache_dir

        base = out_dir or cache_dir("runs", f"{art.name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        base.mkdir(parents=True, exist_ok=True)
        etdump_path = base / "run.etdp"
    result = run_local(bundle, pte, inputs, options=options, etdump_path=etdump_path, outputs_dir=out_dir,
                       emulator=emulator, timeout=timeout, verify=False)
    return {"artifact": str(art), "bundle": str(bundle.path), "preflight": report.to_json(),
            "inputs": inputs or f"fill:{options.fill}", "emulator": list(emulator) or None,
            "runner": result.to_json()}
