"""Fine-tuning on a device: the runner's train mode (``--train``), its request, its run and its record.

* :class:`TrainRequest` — optimizer, schedule, steps, evaluation and checkpoint settings; builds the
  runner flags and refuses bad values before a device is touched;
* :func:`train_on_device` — put the bundle (by the device's probed architecture), the training
  program and the data on the device (or use data that already lives there: ``data_on_device``, which
  then never leaves it), run the train mode, keep everything in a run directory (``runner.jsonl``,
  ``runner.stderr.txt``, ``weights/``, ``checkpoint.bin``) also when it fails, and pull the trained
  weights and the checkpoint;
* :func:`analyse_training` — the :class:`~edgerun.runtime.record.RunRecord` of a training run: one
  sample per optimizer step (its execute time), the loss curve, held-out loss/accuracy before and after
  as computed on the device, steps/s, and the memory table (trainable and optimizer-state bytes, peak RSS).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgerun.core.errors import DeviceRunError, EdgerunError, UsageError, environment_problem
from edgerun.devices.base import Device, DeviceError
from edgerun.devices.sync import sync_files

from .bundle import LOADERS
from .protocol import RunArtifacts, RunnerResult
from .record import EMULATED, MEASURED, Memory, ModelInfo, Provenance, RunRecord, Sample, TrainingMetrics, new_run_id
from .bundle import runner_prefix
from .stats import summarize

DATA_FILES = ("x_train.npy", "y_train.npy", "x_eval.npy", "y_eval.npy")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainRequest:
    steps: int = 200
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    grad_accum: int = 1
    schedule: str = "constant"
    warmup_steps: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    threads: int = 0
    shuffle: bool = True
    stop_at: int = 0                 # end this session after this step (resume later)
    mezo: bool = False               # zeroth-order (MeZO) on a weights-as-inputs forward program
    mezo_eps: float = 1e-3

    def __post_init__(self) -> None:
        for name, lo in (("steps", 1), ("grad_accum", 1), ("warmup_steps", 0), ("eval_every", 0),
                         ("checkpoint_every", 0), ("seed", 0), ("threads", 0), ("stop_at", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}.")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr <= 1e6 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a number > 0, got {self.lr!r}.")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"--momentum must be in [0, 1), got {self.momentum!r}.")
        if not 0 <= self.weight_decay <= 1e6:
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}.")
        if not 0 < self.mezo_eps <= 1:
            raise UsageError(f"--mezo-eps must be in (0, 1], got {self.mezo_eps!r}.")
        if self.mezo and (self.optimizer != "sgd" or self.momentum or self.grad_accum != 1):
            raise UsageError("MeZO is zeroth-order SGD: --optimizer adamw, --momentum and --grad-accum do not apply.")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}.")

    def runner_args(self, *, data: Mapping[str, str], checkpoint: str, weights_out: str,
                    resume: str | None = None, weights_in: str | None = None) -> list[str]:
        args = ["--train", "--data", data["x_train.npy"], "--labels", data["y_train.npy"],
                "--steps", str(self.steps), "--lr", repr(float(self.lr)), "--optimizer", self.optimizer,
                "--grad-accum", str(self.grad_accum), "--lr-schedule", self.schedule,
                "--warmup-steps", str(self.warmup_steps), "--log-every", "1", "--seed", str(self.seed),
                "--checkpoint", checkpoint, "--weights-out", weights_out]
        if "x_eval.npy" in data:
            args += ["--eval-data", data["x_eval.npy"], "--eval-labels", data["y_eval.npy"]]
        if self.momentum:
            args += ["--momentum", repr(float(self.momentum))]
        if self.weight_decay:
            args += ["--weight-decay", repr(float(self.weight_decay))]
        if self.eval_every:
            args += ["--eval-every", str(self.eval_every)]
        if self.checkpoint_every:
            args += ["--checkpoint-every", str(self.checkpoint_every)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if not self.shuffle:
            args.append("--no-shuffle")
        if self.stop_at:
            args += ["--stop-at", str(self.stop_at)]
        if resume:
            args += ["--resume", resume]
        if self.mezo:
            if weights_in is None:
                raise ValueError("MeZO needs the starting weights on the device")
            args += ["--mezo", "--weights-in", weights_in, "--mezo-eps", repr(float(self.mezo_eps))]
        return args

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainingRun:
    artifacts: RunArtifacts
    weights: dict[str, np.ndarray] = field(default_factory=dict)   # program name -> array
    checkpoint: Path | None = None
    data_sha256: str | None = None


def write_data(directory: Path, x_train, y_train, x_eval=None, y_eval=None) -> dict[str, Path]:
    """The data files the runner reads, as ``.npy`` (float32 inputs or int64 token ids; int64 labels)."""
    directory.mkdir(parents=True, exist_ok=True)

    def inputs(x):  # token ids stay int64; everything else is float32
        x = np.asarray(x)
        return np.ascontiguousarray(x, dtype=np.int64 if np.issubdtype(x.dtype, np.integer) else np.float32)

    arrays = {"x_train.npy": inputs(x_train), "y_train.npy": np.ascontiguousarray(y_train, dtype=np.int64)}
    if x_eval is not None:
        arrays["x_eval.npy"] = inputs(x_eval)
        arrays["y_eval.npy"] = np.ascontiguousarray(y_eval, dtype=np.int64)
    out = {}
    for name, arr in arrays.items():
        np.save(directory / name, arr)
        out[name] = directory / name
    return out


def data_hash(files: Mapping[str, Path]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + Path(files[name]).read_bytes())
    return h.hexdigest()


def _remote_data(data_on_device: str) -> dict[str, str]:
    if not data_on_device.startswith("/") or any(part == ".." for part in data_on_device.split("/")):
        raise UsageError(f"--data-on-device must be an absolute path on the device without '..', got "
                         f"{data_on_device!r}.")
    base = data_on_device.rstrip("/")
    return {name: f"{base}/{name}" for name in DATA_FILES}


def train_on_device(program: Path, device: Device, request: TrainRequest, *, data: Mapping[str, Path] | None = None,
                    data_on_device: str | None = None, run_dir: Path, resume: Path | None = None,
                    weights_in: Mapping[str, Path] | None = None, variant: str = "full", timeout: float = 3600.0,
                    on_stdout=None) -> TrainingRun:
    """Run the train mode on ``device``; see the module docstring. Raises :class:`DeviceRunError`
    (the run directory keeps what was produced) when a stage fails."""
    from .deploy import _exit_code_of, _pull, _record, _run_runner, _write, bundle_for, device_arch

    if (data is None) == (data_on_device is None):
        raise UsageError("give the training data either as local files or as a directory on the device "
                         "(--data-on-device), not both.")
    _record(run_dir, status="running", stage="deploy", device=device.name, device_uri=device.spec.uri,
            program=str(program), started=_dt.datetime.now().isoformat(timespec="seconds"), pid=os.getpid(),
            host=socket.gethostname(), train=request.to_json(), data_on_device=data_on_device)

    def fail(stage: str, exc: BaseException, hint: str | None = None) -> DeviceRunError:
        msg = exc.message if isinstance(exc, EdgerunError) else f"{type(exc).__name__}: {exc}"
        _record(run_dir, status="failed", stage=stage, error=getattr(exc, "to_json", lambda: str(exc))())
        return DeviceRunError(f"on device '{device.name}', training {stage} failed: {msg}", stage=stage,
                              run_dir=run_dir, hint=hint or getattr(exc, "hint", None), device=device.name,
                              exit_code=_exit_code_of(exc))

    try:
        info = device.info()
        _write(run_dir / "device.json", json.dumps(info.to_json(), indent=2))
        bundle = bundle_for(device_arch(device), variant)
        files = {p.name: p for p in sorted(Path(bundle.path).iterdir())
                 if p.is_file() and not p.name.endswith((".tar.gz", ".tgz"))}
        b = sync_files(device, files, timeout=timeout)
        prog = sync_files(device, {"train.pte": program}, timeout=timeout)
        if data is not None:
            remote_data = sync_files(device, {k: v for k, v in data.items()}, timeout=timeout).paths
            digest = data_hash(data)
        else:
            remote_data = _remote_data(data_on_device)
            probe = device.exec(["sh", "-c", " && ".join(f"test -r '{remote_data[n]}'" for n in DATA_FILES[:2])],
                                timeout=60, wrap=False)
            if probe.rc != 0:
                raise DeviceError(f"{data_on_device} on the device has no readable x_train.npy and y_train.npy",
                                  device=device.name, stage="deploy")
            has_eval = device.exec(["sh", "-c", f"test -r '{remote_data['x_eval.npy']}' && test -r "
                                                f"'{remote_data['y_eval.npy']}'"], timeout=60, wrap=False).rc == 0
            if not has_eval:
                remote_data = {k: v for k, v in remote_data.items() if "eval" not in k}
            digest = None  # the data never left the device: edgerun does not read it
        remote_weights = None
        if weights_in is not None:
            remote_weights = sync_files(device, dict(weights_in), timeout=timeout).dest
        remote_resume = None
        if resume is not None:
            remote_resume = sync_files(device, {"resume.bin": resume}, timeout=timeout).paths["resume.bin"]
    except EdgerunError as exc:
        raise fail("deploy", exc) from exc
    remote_run = f"{device.work_dir.rstrip('/')}/runs/{run_dir.name}"
    argv = runner_prefix(bundle.arch, b.dest) + ["--model", prog.paths["train.pte"]]
    argv += request.runner_args(data=remote_data, checkpoint=f"{remote_run}/checkpoint.bin",
                                weights_out=f"{remote_run}/weights", resume=remote_resume,
                                weights_in=remote_weights)
    _record(run_dir, stage="run", argv=argv, bundle=str(bundle.path))
    try:
        mk = device.exec(["mkdir", "-p", f"{remote_run}/weights"], timeout=60, wrap=False)
        if mk.rc != 0:
            raise DeviceError(f"cannot create {remote_run}", device=device.name, stage="run", result=mk)
    except DeviceError as exc:
        raise fail("run", exc) from exc
    env = {} if bundle.arch in LOADERS else {"LD_LIBRARY_PATH": b.dest}
    result: RunnerResult = _run_runner(device, argv, env=env, timeout=timeout, run_dir=run_dir, stem="runner",
                                       stage="run", fail=fail, on_stdout=on_stdout,
                                       hint="See runner.stderr.txt and runner.jsonl in the run directory.")
    weights: dict[str, np.ndarray] = {}
    try:
        (run_dir / "weights").mkdir(exist_ok=True)
        wl = result.weights
        if wl is not None:
            for name, file in zip(wl.names, wl.files):
                if "/" in file or file.startswith("."):
                    raise DeviceError(f"the device named a weights file {file!r} outside its directory",
                                      device=device.name, stage="pull")
                local = run_dir / "weights" / file
                _pull(device, f"{remote_run}/weights/{file}", local)
                weights[name] = np.load(local, allow_pickle=False)
        ck = run_dir / "checkpoint.bin"
        _pull(device, f"{remote_run}/checkpoint.bin", ck)
    except OSError as exc:
        raise fail("pull", environment_problem(exc, f"cannot write into {run_dir}", stage="pull")) from exc
    except (EdgerunError, ValueError) as exc:
        raise fail("pull", exc) from exc
    _record(run_dir, status="ok", stage="done", finished=_dt.datetime.now().isoformat(timespec="seconds"))
    arts = RunArtifacts(result=result, device_name=device.name, device_info=info, run_dir=run_dir, outputs=[],
                        etdump=None, bundle_bytes=bundle.total_bytes)
    return TrainingRun(artifacts=arts, weights=weights, checkpoint=ck, data_sha256=digest)


def analyse_training(run: TrainingRun, *, model_name: str, request: TrainRequest, program: Any,
                     settings: Mapping[str, Any] | None = None, run_id: str | None = None) -> RunRecord:
    """The record of a training run (see the module docstring)."""
    from .analysis import edgerun_git_commit
    from edgerun.core.version import edgerun_version

    res = run.artifacts.result
    header, load, summary, tl = res.header, res.load, res.summary, res.train
    steps = res.steps
    if tl is None or not steps:
        from .record import RunFailed

        raise RunFailed("the training run printed no train or step lines: there is nothing to analyse.",
                        stage="analyse")
    info = run.artifacts.device_info
    source = EMULATED if info.emulated else MEASURED
    samples = tuple(Sample(index=k, warmup=False, execute_ns=s.execute_ns, wall_ns=s.wall_ns)
                    for k, s in enumerate(steps))
    latency = summarize([s.execute_ns for s in samples], what="step")
    exec_s = sum(s.execute_ns for s in steps) / 1e9
    raw = dict(tl.raw)
    training = TrainingMetrics(
        method=getattr(program, "method", "full"), optimizer=str(tl.raw.get("optimizer") or request.optimizer),
        lr=request.lr, steps=len(steps),
        start_step=tl.start_step, batch=tl.batch, grad_accum=request.grad_accum, trainable=tl.trainable,
        frozen=getattr(program, "frozen", 0), trainable_bytes=int(raw.get("trainable_bytes") or tl.trainable * 4),
        optimizer_state_bytes=int(raw.get("optimizer_state_bytes") or 0),
        train_samples=int(raw.get("train_samples") or 0), eval_samples=int(raw.get("eval_samples") or 0),
        loss_curve=tuple((s.step, s.loss) for s in steps),
        eval=tuple({"when": e.when, "step": e.step, "samples": e.samples, "loss": e.loss, "accuracy": e.accuracy}
                   for e in res.evals),
        steps_per_s=len(steps) / exec_s if exec_s > 0 else None,
        samples_per_s=len(steps) * tl.batch * request.grad_accum / exec_s if exec_s > 0 else None,
        data_sha256=run.data_sha256, checkpoint=str(run.checkpoint) if run.checkpoint else None,
        settings={**request.to_json(), **(settings or {})})
    warnings = list(latency.warnings)
    if source == EMULATED:
        warnings.insert(0, f"emulated device ({info.emulator or 'emulator'}): step times check function, not speed")
    kb = lambda v: int(v) * 1024 if v is not None else None  # noqa: E731
    memory = Memory(planned_bytes=None, peak_rss_bytes=kb(summary.peak_rss_kb if summary else None),
                    rss_bytes=kb(summary.rss_kb if summary else None), pte_bytes=getattr(program, "pte_bytes", None),
                    bundle_bytes=run.artifacts.bundle_bytes, load_ms=load.load_ns / 1e6 if load else None,
                    program_load_ms=None, method_load_ms=None,
                    sources={"peak_rss_bytes": source, "pte_bytes": MEASURED})
    provenance = Provenance(
        edgerun_version=edgerun_version(), git_commit=edgerun_git_commit(), runner_version=header.runner_version,
        runner_source_hash=header.runner_source_hash, runner_build=dict(header.build) or None,
        executorch_version=header.executorch_version, artifact_executorch_version=None, torch_version=None,
        protocol=header.protocol, threads=header.threads, hardware_threads=header.hardware_threads)
    return RunRecord(
        run_id=run_id or new_run_id(), created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=ModelInfo(name=model_name, target=None, arch=header.arch, scheme=f"train-{training.method}"),
        device_name=run.artifacts.device_name, device=info.to_json(), provenance=provenance, source=source,
        samples=samples, latency=latency, wall=None, memory=memory, warnings=tuple(warnings), training=training)
