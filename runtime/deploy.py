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

from edgerun.core.paths import edgerun_home
from edgerun.devices.base import Device, DeviceError
from edgerun.devices.sync import SyncResult, sync_files
from edgerun.core.errors import DeviceRunError, EdgerunError

from .bundle import LOADERS, Bundle
from .preflight import PreflightReport, check_compatible, read_manifest
from .runner import RunnerResult, RunOptions, parse_runner_output, runner_argv

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


def deploy(artifact: str | os.PathLike, device: Device, *, variant: str = "full", bundle: Bundle | None = None,
           preflight: bool = True, timeout: float = 300.0, with_dataset: bool = True) -> Deployment:
    """Put the runner bundle, the program, its test vectors and its dataset inputs on ``device``."""
    art = Path(artifact)
    manifest = read_manifest(art)
    arch = device_arch(device)
    bundle = bundle or bundle_for(arch, variant)
    if bundle.arch != arch:
        raise DeviceError(f"bundle {bundle.path} is for {bundle.arch}, the device is {arch}.",
                          device=device.name, stage="deploy")
    report = check_compatible(manifest, bundle, enforce=preflight)
    files = {p.name: p for p in sorted(Path(bundle.path).iterdir())
             if p.is_file() and not p.name.endswith((".tar.gz", ".tgz"))}
    b = sync_files(device, files, timeout=timeout)
    prog = sync_files(device, {"model.pte": art / manifest["files"]["pte"]}, timeout=timeout)
    pushed = [f"bundle/{n}" for n in b.pushed] + prog.pushed
    skipped = [f"bundle/{n}" for n in b.skipped] + prog.skipped
    vectors = []
    for k, vec in enumerate(manifest.get("test_vectors") or []):
        v: SyncResult = sync_files(device, {Path(p).name: art / p for p in vec["inputs"]}, timeout=timeout)
        vectors.append([v.paths[Path(p).name] for p in vec["inputs"]])
        pushed += [f"vectors/{k:03d}/{n}" for n in v.pushed]
        skipped += [f"vectors/{k:03d}/{n}" for n in v.skipped]
    dataset_inputs = None
    ds = manifest.get("dataset")
    if ds and with_dataset:
        local = art / ds["inputs"]
        if not local.is_file():
            raise DeviceError(f"the artifact's dataset inputs {local} are missing (named by manifest.json).",
                              device=device.name, stage="deploy")
        d = sync_files(device, {"dataset_inputs.npy": local}, timeout=timeout)
        dataset_inputs = d.paths["dataset_inputs.npy"]
        pushed += [ds["inputs"] for _ in d.pushed]
        skipped += [ds["inputs"] for _ in d.skipped]
    return Deployment(device=device.name, arch=arch, bundle=bundle, bundle_dir=b.dest,
                      program=prog.paths["model.pte"], vectors=vectors, preflight=report,
                      pushed=pushed, skipped=skipped, dataset_inputs=dataset_inputs)


def _exit_words(rc: int, sig: int | None) -> str:
    import signal as _signal

    if sig is None and 128 < rc < 128 + 65:  # a shell or wrapper reports a signal as 128 + N
        sig = rc - 128
    if sig:
        try:
            name = _signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"was killed by signal {sig} ({name}) (exit status {rc})"
    return f"exited with status {rc}"


def new_run_dir(device: str, model: str, root: Path | None = None) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:40]  # noqa: E731
    base = root or edgerun_home() / "runs"
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


@dataclasses.dataclass
class DeviceRun:
    """What one run on one device produced (all of it also on disk in ``run_dir``)."""

    device: str
    run_dir: Path
    result: RunnerResult
    device_info: dict
    deployment: Deployment
    outputs: list[Path]
    etdump: Path | None
    dataset_result: RunnerResult | None = None  # the batch invocation over the held-out split
    dataset_outputs: Path | None = None         # its stacked output 0, [N, *output_shape]

    def to_json(self) -> dict:
        return {"device": self.device, "run_dir": str(self.run_dir), "device_info": self.device_info,
                "deployment": self.deployment.to_json(), "outputs": [str(p) for p in self.outputs],
                "etdump": str(self.etdump) if self.etdump else None, "runner": self.result.to_json(),
                "dataset_outputs": str(self.dataset_outputs) if self.dataset_outputs else None,
                "dataset_runner": self.dataset_result.to_json() if self.dataset_result else None}


def _run_runner(device: Device, argv: list[str], *, env: dict, timeout: float, run_dir: Path, stem: str,
                stage: str, fail, describe, hint: str, require=lambda result: True) -> RunnerResult:
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
    if not result.ok or not require(result):
        err = result.error or {}
        detail = err.get("message") or (res.stderr_text.strip().splitlines() or ["no output"])[-1]
        what = f"{err.get('error')}: {detail}" if err.get("error") else detail
        raise fail(stage, EdgerunError(f"the runner {_exit_words(res.rc, res.signal)} {describe(result)} "
                                       f"({what})"), hint=hint)
    return result


def run_on_device(artifact: str | os.PathLike, device: Device, *, options: RunOptions = RunOptions(),
                  vector: int | None = 0, etdump: bool = True, variant: str = "full",
                  run_dir: Path | None = None, timeout: float = 600.0, preflight: bool = True,
                  dataset: bool = False) -> DeviceRun:
    """Deploy (if needed) and run one test vector's inputs on ``device``; pull the results.

    ``dataset``: also run every sample of the artifact's held-out split (``dataset/inputs.npy``) in a
    second invocation of the runner (``--input-batch``, no warm-up, no timed iterations, no ETDump,
    so the timed run is untouched) and pull its stacked outputs for task accuracy.

    Failures raise :class:`DeviceRunError` naming the device and stage, after saving whatever the
    device produced (stdout, stderr, outputs) into the run directory.
    """
    art = Path(artifact)
    manifest = read_manifest(art)
    run_dir = run_dir or new_run_dir(device.name, manifest.get("model", {}).get("name", art.name))
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
        info_json = info.to_json() if hasattr(info, "to_json") else dataclasses.asdict(info)
        _write(run_dir / "device.json", json.dumps(info_json, indent=2))
        dep = deploy(art, device, variant=variant, preflight=preflight, with_dataset=dataset)
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
                         fail=fail, describe=lambda r: f"after {len(r.execute_ns)} timed iteration(s)",
                         hint="See runner.stderr.txt and runner.jsonl in the run directory; a SIGKILL is often "
                              "the out-of-memory killer.")

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
            fail=fail, describe=lambda r: f"running the held-out split {manifest['dataset']['inputs']}",
            hint="See runner.dataset.stderr.txt and runner.dataset.jsonl in the run directory.",
            require=lambda r: r.batch is not None)
        try:
            dataset_local = run_dir / "dataset_outputs.npy"
            device.pull(remote_out, dataset_local)
        except DeviceError as exc:
            raise fail("pull", exc) from exc
    _record(run_dir, status="ok", stage="done", finished=_dt.datetime.now().isoformat(timespec="seconds"))
    return DeviceRun(device=device.name, run_dir=run_dir, result=result, device_info=info_json,
                     deployment=dep, outputs=outputs, etdump=etdump_local, dataset_result=dataset_result,
                     dataset_outputs=dataset_local)


def run_many(artifact: str | os.PathLike, devices: Sequence[Device], **kwargs) -> list[DeviceRun | DeviceRunError]:
    """Run on several devices concurrently (each an I/O-bound resource); one result or error each."""
    from concurrent.futures import ThreadPoolExecutor

    def one(dev: Device):
        try:
            return run_on_device(artifact, dev, **kwargs)
        except DeviceRunError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
        return list(pool.map(one, devices))
