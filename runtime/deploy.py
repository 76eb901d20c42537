"""Deploy an artifact to a device and run it there; bring everything back into a run directory.

The runtime room's side of running on a device: it knows programs and bundles, and uses only the
devices room's small interface (``push``/``pull``/``exec``/``info`` through ``sync_files``).

* **deploy**: probe the device, pick the bundle by the device's *probed* architecture (an x86_64
  machine over SSH gets the host bundle), pre-flight the program against it, and sync bundle,
  program, test vectors and (for an artifact with a dataset) the held-out inputs
  ``dataset/inputs.npy`` into the device's content-addressed work dir (files already there, by
  sha256, are not sent again);
* **run** (:func:`run_on_device`): one scaffolding for every run mode (:mod:`.modes`: forward, LLM,
  training, or a mode of your own): the run directory and its states, the deployment, the mode's own
  files, the runner's argv executed there, then the mode pulls what it produced into the run directory
  (the forward mode with ``dataset=True`` runs every held-out sample in a second, untimed invocation).

The run directory keeps whatever was produced, whatever fails: ``run.json`` (status ``running``, ``ok``,
``failed`` or ``interrupted``; stage, error; the ``pid`` and ``host`` of the edgerun process that runs it, so a
``running`` directory whose process is gone is marked ``interrupted`` by the next run),
``device.json``, ``runner.jsonl`` (raw stdout), ``runner.stderr.txt``, ``outputs/``, ``run.etdp``,
and for a dataset run ``runner.dataset.jsonl``, ``runner.dataset.stderr.txt``, ``dataset_outputs.npy``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from edgerun.core.artifact import Manifest, read_manifest
from edgerun.core.errors import (DeviceRunError, EdgerunError, EnvironmentProblem, ExecCancelled, RunInterrupted,
                                 RunnerError, UsageError, environment_problem)
from edgerun.core.paths import runs_dir
from edgerun.devices.base import Device, DeviceError
from edgerun.devices.sync import SyncResult, sync_files

from .bundle import LOADERS, Bundle
from .deployment import Deployment
from .modes import ForwardRequest, RunContext, RunMode, check_forward
from .preflight import PreflightReport, check_compatible
from .protocol import RunArtifacts, RunnerResult, parse_runner_output, runner_failure

#: the name the program's external data file (``files.data``) is synced under, beside ``model.pte``
DATA_NAME = "model.ptd"
RUN_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def device_arch(device: Device) -> str:
    info = device.info()
    arch = RUN_ARCHES.get((info.arch or "").lower())
    if arch is None:
        raise DeviceError(f"architecture {info.arch!r} has no edgerun runner bundle (x86_64 and aarch64 do).",
                          device=device.name, stage="deploy")
    return arch


def bundle_for(arch: str, variant: str = "full") -> Bundle:
    """The (cached) runner bundle for ``arch``; builds it the first time."""
    from .build import BuildRequest, build_bundle, host_arch

    return build_bundle(BuildRequest(arch="host" if arch == host_arch() else arch, variant=variant))


def deploy(artifact: str | os.PathLike | Manifest, device: Device, *, variant: str = "full",
           bundle: Bundle | None = None, preflight: bool = True, timeout: float = 300.0,
           with_dataset: bool = True, with_vectors: bool = True) -> Deployment:
    """Put the runner bundle, the program, its test vectors and its dataset inputs on ``device``.

    Every file comes from the artifact through its manifest's confined paths, and the program must
    match the manifest's sha256 (a swapped ``.pte`` is refused before anything is pushed). A bare
    ``.pte`` (a training program, re-hashed by its cache) goes with the bundle alone: no pre-flight,
    vectors or dataset."""
    target = _RunTarget.of(artifact)
    manifest = target.manifest
    program = manifest.verified_pte() if manifest is not None else target.program
    # the external data file goes wherever the program goes (checked now: a swapped .ptd is refused before any push)
    data = manifest.verified_data() if manifest is not None else None
    name = "model.pte" if manifest is not None else program.name
    arch = device_arch(device)
    bundle = bundle or bundle_for(arch, variant)
    if bundle.arch != arch:
        raise DeviceError(f"bundle {bundle.path} is for {bundle.arch}, the device is {arch}.",
                          device=device.name, stage="deploy")
    report = check_compatible(manifest, bundle, enforce=preflight) if manifest is not None else PreflightReport()
    b = _sync_bundle(device, bundle, timeout)
    prog = sync_files(device, {name: program, **({DATA_NAME: data} if data is not None else {})}, timeout=timeout)
    pushed = [f"bundle/{n}" for n in b.pushed] + prog.pushed
    skipped = [f"bundle/{n}" for n in b.skipped] + prog.skipped
    if manifest is None:
        return Deployment(device=device.name, arch=arch, bundle=bundle, bundle_dir=b.dest, program=prog.paths[name],
                          vectors=[], preflight=report, pushed=pushed, skipped=skipped)
    vectors = []
    for k, vec in enumerate(manifest.test_vectors if with_vectors else ()):
        local = manifest.vector_input_paths(k)
        v: SyncResult = sync_files(device, {p.name: p for p in local}, timeout=timeout)
        vectors.append([v.paths[p.name] for p in local])
        pushed += [f"vectors/{k:03d}/{n}" for n in v.pushed]
        skipped += [f"vectors/{k:03d}/{n}" for n in v.skipped]
    dataset_inputs = None
    ds = manifest.dataset
    if ds and with_dataset:
        local, _labels = manifest.dataset_files()
        d = sync_files(device, {"dataset_inputs.npy": local}, timeout=timeout)
        dataset_inputs = d.paths["dataset_inputs.npy"]
        pushed += [ds.inputs for _ in d.pushed]
        skipped += [ds.inputs for _ in d.skipped]
    return Deployment(device=device.name, arch=arch, bundle=bundle, bundle_dir=b.dest,
                      program=prog.paths[name], vectors=vectors, preflight=report,
                      pushed=pushed, skipped=skipped, dataset_inputs=dataset_inputs,
                      data=prog.paths[DATA_NAME] if data is not None else None)


def _sync_bundle(device: Device, bundle: Bundle, timeout: float) -> SyncResult:
    files = {p.name: p for p in sorted(Path(bundle.path).iterdir())
             if p.is_file() and not p.name.endswith((".tar.gz", ".tgz"))}
    return sync_files(device, files, timeout=timeout)


def new_run_dir(device: str, model: str, root: Path | None = None) -> Path:
    """A fresh run directory under ``root`` (default ``EDGERUN_HOME/runs``); first marks the run
    directories left ``running`` by a process of this host that is gone as ``interrupted``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:40]  # noqa: E731
    base = root or runs_dir()
    path = base / f"{stamp}-{safe(model)}-{safe(device)}-{secrets.token_hex(2)}"
    try:
        path.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise environment_problem(exc, f"cannot create the run directory {path}", stage="run directory") from None
    mark_abandoned_runs(base)
    return path


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot, /proc/PID/stat field 22): with the pid, it
    names one process even after the pid is reused. None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return start is None or _process_start(pid) in (None, start)


def mark_abandoned_runs(root: Path | None = None) -> list[Path]:
    """Mark ``interrupted`` every run directory under ``root`` whose ``run.json`` says ``running`` but
    whose edgerun process (``pid``, ``pid_start`` on this ``host``) no longer exists: it was killed
    (SIGKILL, a crash, a power cut) before it could say so itself. Returns the directories marked."""
    marked = []
    host = socket.gethostname()
    for run_json in sorted((root or runs_dir()).glob("*/run.json")):
        try:
            meta = json.loads(run_json.read_text())
            if (meta.get("status") != "running" or meta.get("host") != host or not isinstance(meta.get("pid"), int)
                    or _alive(meta["pid"], meta.get("pid_start"))):
                continue
            _record(run_json.parent, status="interrupted",
                    error=f"edgerun process {meta['pid']} ended while the run was {meta.get('stage') or 'running'}",
                    finished=_dt.datetime.now().isoformat(timespec="seconds"))
            marked.append(run_json.parent)
        except (OSError, ValueError, EdgerunError):
            continue  # unreadable or not ours to fix: left as it is
    return marked


def _write(path: Path, data: bytes | str) -> None:
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(path, mode) as f:
            f.write(data)
    except OSError as exc:
        raise environment_problem(exc, f"cannot write {path}", stage="run directory") from None


def _record(run_dir: Path, **fields: Any) -> None:
    path = run_dir / "run.json"
    tmp = path.with_suffix(".json.tmp")
    try:
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(fields)
        tmp.write_text(json.dumps(current, indent=2, default=str))
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise environment_problem(exc, f"cannot write {path}", stage="run directory") from None


def _pull(device: Device, remote: str, local: Path) -> None:
    """``device.pull`` into the run directory; a partial copy (``LOCAL.part``) is removed, and a failure
    that is this machine's (the run directory's file system is full or read-only) says so."""
    try:
        device.pull(remote, local)
    except DeviceError as exc:
        part = local.with_name(local.name + ".part")
        with contextlib.suppress(OSError):
            part.unlink()
        problem = _local_problem(local.parent)
        if problem is not None:
            raise problem from exc
        raise


def _local_problem(directory: Path) -> EnvironmentProblem | None:
    """An :class:`EnvironmentProblem` if ``directory`` (on this machine) cannot take a file: no space
    left on its file system, or not writable."""
    import errno

    try:
        st = os.statvfs(directory)
        if st.f_bavail == 0 or (st.f_favail == 0 and st.f_files > 0):
            return environment_problem(OSError(errno.ENOSPC, "no space"), f"cannot pull into {directory}",
                                       stage="pull")
        probe = directory / f".write-check-{os.getpid()}-{threading.get_ident()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        return environment_problem(exc, f"cannot pull into {directory}", stage="pull")
    return None


#: What a run on a device produced: the same type as a local run's (kept as a name for callers).
DeviceRun = RunArtifacts


def _run_runner(device: Device, argv: list[str], *, env: dict, timeout: float, run_dir: Path, stem: str,
                stage: str, fail, hint: str, require_batch: bool = False, on_stdout=None) -> RunnerResult:
    """Execute the runner's argv on the device; keep its stdout/stderr as ``STEM.jsonl`` and
    ``STEM.stderr.txt`` in the run directory (also the partial output of a timeout, a dropped
    link or a cancelled run) and raise ``fail(stage, ...)`` unless it succeeded."""
    started = time.monotonic()
    try:
        res = device.exec(argv, timeout=timeout, env=env, on_stdout=on_stdout)
    except DeviceError as exc:
        if exc.result is not None:
            _write(run_dir / f"{stem}.jsonl", exc.result.stdout)
            _write(run_dir / f"{stem}.stderr.txt", exc.result.stderr)
        raise fail(stage, exc) from exc
    _write(run_dir / f"{stem}.jsonl", res.stdout)
    _write(run_dir / f"{stem}.stderr.txt", res.stderr)
    if device.cancelled:  # killed by the cancel just as it ended: not a finished run
        raise fail(stage, ExecCancelled("the run was cancelled", device=device.name, stage="exec"))
    result = parse_runner_output(res.stdout, exit_code=res.rc, stderr=res.stderr, argv=argv,
                                 duration_s=time.monotonic() - started)
    failure = runner_failure(result, where="the device", signal=res.signal, require_batch=require_batch)
    if failure is not None:
        raise fail(stage, failure, hint=f"{hint} {failure.hint or ''}".strip())
    return result


def check_timeout(timeout: float) -> None:
    if not isinstance(timeout, (int, float)) or not timeout > 0 or timeout != timeout:
        raise UsageError(f"--timeout must be a number of seconds > 0, got {timeout!r}.")


def check_run_request(manifest: Manifest, *, vector: int | None, timeout: float, dataset: bool = False) -> None:
    """The options of a forward run that can be wrong, checked before any device is touched or any
    directory made: ``UsageError`` (exit 2) naming the option."""
    check_timeout(timeout)
    check_forward(manifest, vector=vector, dataset=dataset)


def _exit_code_of(exc: BaseException) -> int | None:
    """What a failed run on a device exits with: a device failure keeps the device's code (8), as do
    a bundle (5), pre-flight (9) or this machine (17); the runner failing on the device is 15."""
    if isinstance(exc, RunnerError) or not isinstance(exc, EdgerunError):
        return None
    return int(exc.exit_code)


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def run_on_device(program: str | os.PathLike | Manifest, device: Device, mode: RunMode | None = None, *,
                  variant: str = "full", run_dir: Path | None = None, timeout: float = 600.0,
                  preflight: bool = True, on_stdout=None, **forward: Any) -> RunArtifacts:
    """Deploy (if needed) and run ``mode`` on ``device``; pull what it produced into a run directory.

    ``program``: an artifact (directory or :class:`Manifest`; its program is checked against the
    manifest's sha256) or a bare ``.pte`` (a training program). ``mode``: a :class:`~.modes.RunMode`;
    without one, the forward mode built from ``forward`` (``options``, ``vector``, ``etdump``, ``dataset``
    of :class:`~.modes.ForwardRequest`). ``on_stdout(bytes)`` sees the runner's stdout as it arrives where
    the transport streams (local, qemu, ssh, adb).

    Wrong options raise :class:`UsageError` before anything is made or sent. Failures raise
    :class:`DeviceRunError` naming the device and stage, after saving whatever the device produced
    (stdout, stderr, outputs) into the run directory; its exit code is the device's (8) when the device
    failed. A cancelled device (``device.cancel()``, on Ctrl-C) raises :class:`RunInterrupted`; the run
    directory is then marked ``interrupted``, as it is for any exception that is not an edgerun error.
    """
    mode = mode if mode is not None else ForwardRequest(**forward)
    if forward and not isinstance(mode, ForwardRequest):
        raise TypeError(f"options {sorted(forward)} belong to the forward mode, not to {mode.mode_name}")
    check_timeout(timeout)
    target = _RunTarget.of(program)
    mode.check(target.manifest)
    run_dir = run_dir or new_run_dir(device.name, target.name)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise environment_problem(exc, f"cannot create the run directory {run_dir}", stage="run directory") from None
    _record(run_dir, status="running", stage="deploy", device=device.name, device_uri=device.spec.uri,
            **target.run_json(), mode=mode.mode_name, started=_now(), pid=os.getpid(),
            pid_start=_process_start(os.getpid()), host=socket.gethostname(), **mode.run_json())
    state = {"stage": "deploy"}

    def fail(stage: str, exc: BaseException, hint: str | None = None) -> DeviceRunError:
        msg = exc.message if isinstance(exc, EdgerunError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ExecCancelled) or device.cancelled:
            _record(run_dir, status="interrupted", stage=stage, error="interrupted (Ctrl-C)", finished=_now())
            return RunInterrupted(f"on device '{device.name}', {stage} was interrupted", stage=stage,
                                  run_dir=run_dir, device=device.name)
        what = "" if mode.mode_name in ("forward", "llm") else f"{mode.mode_name} "
        _record(run_dir, status="failed", stage=stage, error=getattr(exc, "to_json", lambda: str(exc))())
        return DeviceRunError(f"on device '{device.name}', {what}{stage} failed: {msg}", stage=stage, run_dir=run_dir,
                              hint=hint or getattr(exc, "hint", None), device=device.name,
                              exit_code=_exit_code_of(exc))

    try:
        return _run_on_device(target, device, mode, variant=variant, run_dir=run_dir, timeout=timeout,
                              preflight=preflight, fail=fail, state=state, on_stdout=on_stdout)
    except DeviceRunError:
        raise  # run.json already says what happened
    except EdgerunError as exc:
        raise fail(state["stage"], exc) from exc
    except OSError as exc:  # this machine's run directory could not take a file
        raise fail(state["stage"], environment_problem(exc, f"cannot write into {run_dir}",
                                                        stage=state["stage"])) from exc
    except BaseException as exc:  # Ctrl-C in this thread, or a bug: the directory must not stay "running"
        with contextlib.suppress(Exception):
            _record(run_dir, status="interrupted", stage=state["stage"],
                    error="interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt)
                    else f"{type(exc).__name__}: {exc}", finished=_now())
        raise


@dataclasses.dataclass(frozen=True)
class _RunTarget:
    """What runs: an artifact (its manifest) or a bare program file (a training program)."""

    manifest: Manifest | None
    program: Path | None = None

    @classmethod
    def of(cls, program: str | os.PathLike | Manifest) -> "_RunTarget":
        if isinstance(program, Manifest):
            return cls(program)
        path = Path(program)
        if path.is_file() and path.suffix == ".pte":
            return cls(None, path)
        return cls(read_manifest(path))

    @property
    def name(self) -> str:
        return self.manifest.model.name if self.manifest is not None else self.program.stem

    def run_json(self) -> dict:
        if self.manifest is not None:
            return {"artifact": str(self.manifest.dir.resolve())}
        return {"program": str(self.program)}


def _run_on_device(target: _RunTarget, device: Device, mode: RunMode, *, variant, run_dir, timeout, preflight,
                   fail, state, on_stdout=None) -> RunArtifacts:
    def stage(name: str) -> None:
        state["stage"] = name

    try:
        info = device.info()
        _write(run_dir / "device.json", json.dumps(info.to_json(), indent=2))
        dep = deploy(target.manifest or target.program, device, variant=variant, preflight=preflight,
                     timeout=timeout, with_dataset=mode.deploy_dataset, with_vectors=mode.deploy_vectors)
    except EdgerunError as exc:
        raise fail("deploy", exc) from exc
    # A bundle without its own loader finds its libraries through $ORIGIN, which the kernel
    # resolves through the content-addressed symlinks to the blob store: point it at the set.
    env = {} if dep.bundle.arch in LOADERS else {"LD_LIBRARY_PATH": dep.bundle_dir}

    def runner(argv, *, stem, stage, hint, require_batch=False, on_stdout=None):
        return _run_runner(device, argv, env=env, timeout=timeout, run_dir=run_dir, stem=stem, stage=stage,
                           fail=fail, hint=hint, require_batch=require_batch, on_stdout=on_stdout)

    ctx = RunContext(device=device, run_dir=run_dir, remote_run=f"{device.work_dir.rstrip('/')}/runs/{run_dir.name}",
                     deployment=dep, manifest=target.manifest, timeout=timeout, env=env,
                     _push=lambda files: sync_files(device, dict(files), timeout=timeout),
                     _pull=lambda remote, local: _pull(device, remote, local), _runner=runner, _stage=stage,
                     _record=lambda **fields: _record(run_dir, **fields))
    try:
        mode.push(ctx)
    except EdgerunError as exc:
        raise fail("deploy", exc) from exc
    stage("run")
    argv = mode.argv(ctx)
    _record(run_dir, stage="run", argv=argv, bundle=str(dep.bundle.path), deployment=dep.to_json())
    try:
        dirs = [ctx.remote(d) for d in mode.remote_dirs] or [ctx.remote_run]
        mk = device.exec(["mkdir", "-p", *dirs], timeout=60, wrap=False)
        if mk.rc != 0:
            raise DeviceError(f"cannot create {ctx.remote_run}", device=device.name, stage="run", result=mk)
    except DeviceError as exc:
        raise fail("run", exc) from exc
    result = runner(argv, stem="runner", stage="run", on_stdout=on_stdout,
                    hint="See runner.stderr.txt and runner.jsonl in the run directory.")
    stage("pull")
    run = RunArtifacts(result=result, device_name=device.name, device_info=info, run_dir=run_dir,
                       bundle_bytes=dep.bundle.total_bytes, warnings=tuple(dep.preflight.warnings), deployment=dep,
                       mode=mode)
    mode.collect(ctx, result, run)
    if device.cancelled:
        raise fail(state["stage"], ExecCancelled("the run was cancelled", device=device.name, stage="exec"))
    _record(run_dir, status="ok", stage="done", finished=_now())
    return run


def mark_interrupted(run_dir: Path, why: str = "interrupted (Ctrl-C)") -> None:
    """Mark a run directory ``interrupted`` (its run was stopped before it was stored)."""
    with contextlib.suppress(OSError, EdgerunError):
        _record(run_dir, status="interrupted", error=why, finished=_dt.datetime.now().isoformat(timespec="seconds"))


class Cancellation:
    """What Ctrl-C stops: the devices in use by worker threads. :meth:`cancel` (from the main thread,
    on KeyboardInterrupt) sets :attr:`event` and cancels every device added (killing its program in
    flight); a device added after that is cancelled at once. Workers check :attr:`is_set` between steps."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self._devices: list[Device] = []

    def add(self, device: Device) -> Device:
        with self._lock:
            self._devices.append(device)
            cancelled = self.event.is_set()
        if cancelled:
            device.cancel()
        return device

    def cancel(self) -> None:
        with self._lock:
            self.event.set()
            devices = list(self._devices)
        for d in devices:
            d.cancel()

    @property
    def is_set(self) -> bool:
        return self.event.is_set()


def on_devices_concurrently(items: Sequence, work, cancellation: Cancellation | None = None) -> list:
    """``work(item)`` for every item in its own thread (a device is an I/O-bound resource), results in
    order. A KeyboardInterrupt (which only the main thread receives) cancels ``cancellation`` -- killing
    the programs in flight on its devices -- waits for the workers to stop, and propagates."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=max(1, len(items)), thread_name_prefix="edgerun-device")
    try:
        futures = [pool.submit(work, item) for item in items]
        return [f.result() for f in futures]
    except BaseException:
        if cancellation is not None:
            cancellation.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def run_many(artifact: str | os.PathLike | Manifest, devices: Sequence[Device], mode: RunMode | None = None, *,
             cancellation: Cancellation | None = None, **kwargs) -> list[RunArtifacts | DeviceRunError]:
    """Run on several devices concurrently (each an I/O-bound resource); one result or error each.
    Ctrl-C kills the runs in flight, marks their run directories interrupted and propagates."""
    manifest = artifact if isinstance(artifact, Manifest) else read_manifest(artifact)
    forward = {k: kwargs.pop(k) for k in ("options", "vector", "etdump", "dataset") if k in kwargs}
    mode = mode if mode is not None else ForwardRequest(**forward)
    check_timeout(kwargs.get("timeout", 600.0))
    mode.check(manifest)
    cancellation = cancellation or Cancellation()
    for dev in devices:
        cancellation.add(dev)

    def one(dev: Device):
        try:
            return run_on_device(manifest, dev, mode, **kwargs)
        except RunInterrupted:
            raise
        except DeviceRunError as exc:
            return exc

    return on_devices_concurrently(list(devices), one, cancellation)
