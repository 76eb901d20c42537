"""Deploy an artifact to a device and run it there; bring everything back into a run directory.

The runtime room's side of running on a device: it knows programs and bundles, and uses only the
devices room's small interface (``push``/``pull``/``exec``/``info`` through ``sync_files``).

* **deploy**: probe the device, pick the bundle by the device's *probed* architecture (an x86_64
  machine over SSH gets the host bundle), pre-flight the program against it, and sync bundle,
  program, test vectors and (for an artifact with a dataset) the held-out inputs
  ``dataset/inputs.npy`` into the device's content-addressed work dir (files already there, by
  sha256, are not sent again);
* **run**: execute the runner's argv there, then pull outputs and the ETDump into a local run
  directory; with ``dataset=True`` a second, untimed invocation runs every held-out sample
  (``--input-batch``) and its stacked outputs are pulled too.

The run directory keeps whatever was produced, whatever fails: ``run.json`` (status, stage, error),
``device.json``, ``runner.jsonl`` (raw stdout), ``runner.stderr.txt``, ``outputs/``, ``run.etdp``,
and for a dataset run ``runner.dataset.jsonl``, ``runner.dataset.stderr.txt``, ``dataset_outputs.npy``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Sequence

from edgerun.core.artifact import Manifest, read_manifest
from edgerun.core.errors import DeviceRunError, EdgerunError
from edgerun.core.paths import runs_dir
from edgerun.devices.base import Device, DeviceError
from edgerun.devices.sync import SyncResult, sync_files

from .bundle import LOADERS, Bundle
from .preflight import PreflightReport, check_compatible
from .protocol import RunArtifacts, RunnerResult, parse_runner_output, runner_failure
from .runner import RunOptions, runner_argv

RUN_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


@dataclasses.dataclass(frozen=True)
class Deployment:
    device: str
    arch: str
    bundle: Bundle
    bundle_dir: str                 # on the device
    program: str                    # on the device
    vectors: list[list[str]]        # per test vector, its input paths on the device
    preflight: PreflightReport
    pushed: list[str]
    skipped: list[str]
    dataset_inputs: str | None = None  # on the device: the held-out split's stacked inputs, if any

    def to_json(self) -> dict:
        return {"device": self.device, "arch": self.arch, "bundle": str(self.bundle.path),
                "bundle_dir": self.bundle_dir, "program": self.program, "vectors": len(self.vectors),
                "dataset_inputs": self.dataset_inputs,
                "preflight": self.preflight.to_json(), "pushed": self.pushed, "skipped": self.skipped}


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
           with_dataset: bool = True) -> Deployment:
    """Put the runner bundle, the program, its test vectors and its dataset inputs on ``device``.

    Every file comes from the artifact through its manifest's confined paths, and the program must
    match the manifest's sha256 (a swapped ``.pte`` is refused before anything is pushed)."""
    manifest = artifact if isinstance(artifact, Manifest) else read_manifest(artifact)
    program = manifest.verified_pte()
    arch = device_arch(device)
    bundle = bundle or bundle_for(arch, variant)
    if bundle.arch != arch:
        raise DeviceError(f"bundle {bundle.path} is for {bundle.arch}, the device is {arch}.",
                          device=device.name, stage="deploy")
    report = check_compatible(manifest, bundle, enforce=preflight)
    files = {p.name: p for p in sorted(Path(bundle.path).iterdir())
             if p.is_file() and not p.name.endswith((".tar.gz", ".tgz"))}
    b = sync_files(device, files, timeout=timeout)
    prog = sync_files(device, {"model.pte": program}, timeout=timeout)
    pushed = [f"bundle/{n}" for n in b.pushed] + prog.pushed
    skipped = [f"bundle/{n}" for n in b.skipped] + prog.skipped
    vectors = []
    for k, vec in enumerate(manifest.test_vectors):
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
                      program=prog.paths["model.pte"], vectors=vectors, preflight=report,
                      pushed=pushed, skipped=skipped, dataset_inputs=dataset_inputs)


def new_run_dir(device: str, model: str, root: Path | None = None) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:40]  # noqa: E731
    base = root or runs_dir()
    path = base / f"{stamp}-{safe(model)}-{safe(device)}-{secrets.token_hex(2)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def _write(path: Path, data: bytes | str) -> None:
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)


def _record(run_dir: Path, **fields: Any) -> None:
    path = run_dir / "run.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(fields)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2, default=str))
    tmp.replace(path)


#: What a run on a device produced: the same type as a local run's (kept as a name for callers).
DeviceRun = RunArtifacts


def _run_runner(device: Device, argv: list[str], *, env: dict, timeout: float, run_dir: Path, stem: str,
                stage: str, fail, hint: str, require_batch: bool = False) -> RunnerResult:
    """Execute the runner's argv on the device; keep its stdout/stderr as ``STEM.jsonl`` and
    ``STEM.stderr.txt`` in the run directory (also the partial output of a timeout or a dropped
    link) and raise ``fail(stage, ...)`` unless it succeeded."""
    started = time.monotonic()
    try:
        res = device.exec(argv, timeout=timeout, env=env)
    except DeviceError as exc:
        if exc.result is not None:
            _write(run_dir / f"{stem}.jsonl", exc.result.stdout)
            _write(run_dir / f"{stem}.stderr.txt", exc.result.stderr)
        raise fail(stage, exc) from exc
    _write(run_dir / f"{stem}.jsonl", res.stdout)
    _write(run_dir / f"{stem}.stderr.txt", res.stderr)
    result = parse_runner_output(res.stdout, exit_code=res.rc, stderr=res.stderr, argv=argv,
                                 duration_s=time.monotonic() - started)
    failure = runner_failure(result, where="the device", signal=res.signal, require_batch=require_batch)
    if failure is not None:
        raise fail(stage, failure, hint=f"{hint} {failure.hint or ''}".strip())
    return result


def run_on_device(artifact: str | os.PathLike | Manifest, device: Device, *, options: RunOptions = RunOptions(),
                  vector: int | None = 0, etdump: bool = True, variant: str = "full",
                  run_dir: Path | None = None, timeout: float = 600.0, preflight: bool = True,
                  dataset: bool = False) -> RunArtifacts:
    """Deploy (if needed) and run one test vector's inputs on ``device``; pull the results.

    ``dataset``: also run every sample of the artifact's held-out split (``dataset/inputs.npy``) in a
    second invocation of the runner (``--input-batch``, no warm-up, no timed iterations, no ETDump,
    so the timed run is untouched) and pull its stacked outputs for task accuracy.

    Failures raise :class:`DeviceRunError` naming the device and stage, after saving whatever the
    device produced (stdout, stderr, outputs) into the run directory.
    """
    manifest = artifact if isinstance(artifact, Manifest) else read_manifest(artifact)
    art = manifest.dir
    run_dir = run_dir or new_run_dir(device.name, manifest.model.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    _record(run_dir, status="running", stage="deploy", device=device.name, device_uri=device.spec.uri,
            artifact=str(art.resolve()), started=_dt.datetime.now().isoformat(timespec="seconds"),
            options=dataclasses.asdict(options), vector=vector, dataset=dataset)

    def fail(stage: str, exc: BaseException, hint: str | None = None) -> DeviceRunError:
        _record(run_dir, status="failed", stage=stage, error=getattr(exc, "to_json", lambda: str(exc))())
        msg = exc.message if isinstance(exc, EdgerunError) else f"{type(exc).__name__}: {exc}"
        return DeviceRunError(f"on device '{device.name}', {stage} failed: {msg}", stage=stage, run_dir=run_dir,
                              hint=hint or getattr(exc, "hint", None), device=device.name)

    try:
        info = device.info()
        _write(run_dir / "device.json", json.dumps(info.to_json(), indent=2))
        dep = deploy(manifest, device, variant=variant, preflight=preflight, with_dataset=dataset)
    except EdgerunError as exc:
        raise fail("deploy", exc) from exc

    remote_run = f"{device.work_dir.rstrip('/')}/runs/{run_dir.name}"
    inputs: list[str] = []
    if vector is not None and dep.vectors:
        if not 0 <= vector < len(dep.vectors):
            raise fail("run", ValueError(f"the artifact has {len(dep.vectors)} test vectors; no vector {vector}"))
        inputs = dep.vectors[vector]
    argv = runner_argv(dep.bundle, dep.program, inputs=inputs, options=options,
                       etdump=f"{remote_run}/run.etdp" if etdump else None,
                       output_dir=f"{remote_run}/outputs", bundle_dir=dep.bundle_dir)
    _record(run_dir, stage="run", argv=argv, bundle=str(dep.bundle.path), deployment=dep.to_json())
    try:
        mk = device.exec(["mkdir", "-p", f"{remote_run}/outputs"], timeout=60, wrap=False)
        if mk.rc != 0:
            raise DeviceError(f"cannot create {remote_run}", device=device.name, stage="run", result=mk)
    except DeviceError as exc:
        raise fail("run", exc) from exc
    # A bundle without its own loader finds its libraries through $ORIGIN, which the kernel
    # resolves through the content-addressed symlinks to the blob store: point it at the set.
    env = {} if dep.bundle.arch in LOADERS else {"LD_LIBRARY_PATH": dep.bundle_dir}
    result = _run_runner(device, argv, env=env, timeout=timeout, run_dir=run_dir, stem="runner", stage="run",
                         fail=fail, hint="See runner.stderr.txt and runner.jsonl in the run directory.")

    outputs: list[Path] = []
    etdump_local: Path | None = None
    try:
        (run_dir / "outputs").mkdir(exist_ok=True)
        for j, _ in enumerate(result.output_paths):
            local = run_dir / "outputs" / f"output_{j}.npy"
            device.pull(f"{remote_run}/outputs/output_{j}.npy", local)
            outputs.append(local)
        if etdump:
            etdump_local = run_dir / "run.etdp"
            device.pull(f"{remote_run}/run.etdp", etdump_local)
    except DeviceError as exc:
        raise fail("pull", exc) from exc

    dataset_result, dataset_local = None, None
    if dataset:
        if dep.dataset_inputs is None:
            raise fail("dataset run", ValueError(f"artifact {art} has no dataset (manifest.json names none)"),
                       hint="Only artifacts of models with a dataset (e.g. digits_cnn) carry a held-out split.")
        remote_out = f"{remote_run}/dataset_outputs.npy"
        dargv = runner_argv(dep.bundle, dep.program, options=options, bundle_dir=dep.bundle_dir,
                            input_batch=dep.dataset_inputs, batch_output=remote_out, batch_only=True)
        _record(run_dir, stage="dataset run", dataset_argv=dargv)
        dataset_result = _run_runner(
            device, dargv, env=env, timeout=timeout, run_dir=run_dir, stem="runner.dataset", stage="dataset run",
            fail=fail, hint=f"Running the held-out split {manifest.dataset.inputs} failed: see "
                            "runner.dataset.stderr.txt and runner.dataset.jsonl in the run directory.",
            require_batch=True)
        try:
            dataset_local = run_dir / "dataset_outputs.npy"
            device.pull(remote_out, dataset_local)
        except DeviceError as exc:
            raise fail("pull", exc) from exc
    _record(run_dir, status="ok", stage="done", finished=_dt.datetime.now().isoformat(timespec="seconds"))
    return RunArtifacts(result=result, device_name=device.name, device_info=info, run_dir=run_dir, outputs=outputs,
                        etdump=etdump_local, dataset_result=dataset_result, dataset_outputs=dataset_local,
                        bundle_bytes=dep.bundle.total_bytes, warnings=tuple(dep.preflight.warnings),
                        deployment=dep)


def run_many(artifact: str | os.PathLike, devices: Sequence[Device], **kwargs) -> list[RunArtifacts | DeviceRunError]:
    """Run on several devices concurrently (each an I/O-bound resource); one result or error each."""
    from concurrent.futures import ThreadPoolExecutor

    def one(dev: Device):
        try:
            return run_on_device(artifact, dev, **kwargs)
        except DeviceRunError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
        return list(pool.map(one, devices))
