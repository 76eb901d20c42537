"""Fine-tuning on a device: the runner's train mode (``--train``), its request, its run and its record.

* :class:`TrainRequest` — optimizer, schedule, steps, evaluation and checkpoint settings; builds the
  runner flags and refuses bad values before a device is touched;
* :class:`TrainJob` — the train mode of :func:`~edgerun.runtime.deploy.run_on_device`: the data on the
  device (or data that already lives there: ``data_on_device``, which then never leaves it), the runner's
  train flags, and the trained weights and the checkpoint pulled into the run directory (``runner.jsonl``,
  ``runner.stderr.txt``, ``weights/``, ``checkpoint.bin`` are kept also when it fails);
* :func:`analyse_training` — the :class:`~edgerun.runtime.record.RunRecord` of a training run: one
  sample per optimizer step (its execute time), the loss curve, held-out loss/accuracy before and after
  as computed on the device, steps/s, and the memory table (trainable and optimizer-state bytes, peak RSS).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

from edgerun.core.errors import UsageError
from edgerun.devices.base import DeviceError

from .protocol import RunArtifacts, RunnerResult
from .record import EMULATED, MEASURED, EvalPoint, Memory, ModelInfo, Provenance, RunRecord, Sample, TrainingMetrics, new_run_id
from .stats import summarize
from .zo import NOISES as ZO_NOISES  # the zeroth-order rule's noises (runtime/zo.py says them, as the runner does)

if TYPE_CHECKING:  # pragma: no cover
    from .modes import RunContext

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
    mezo: bool = False               # zeroth-order (MeZO / ZO-LoRA) on a weights-as-inputs forward program
    mezo_eps: float = 1e-3           # --zo-eps: the perturbation scale
    zo_samples: int = 1              # perturbations averaged per step (each two forwards)
    zo_noise: str = "gaussian"       # gaussian (MeZO) | rademacher (SPSA; no libm, cheaper)

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
            raise UsageError(f"--zo-eps must be in (0, 1], got {self.mezo_eps!r}.")
        if not isinstance(self.zo_samples, int) or isinstance(self.zo_samples, bool) or not 1 <= self.zo_samples <= 1024:
            raise UsageError(f"--zo-samples must be an integer in [1, 1024], got {self.zo_samples!r}.")
        if self.zo_noise not in ZO_NOISES:
            raise UsageError(f"--zo-noise must be one of {', '.join(ZO_NOISES)}, got {self.zo_noise!r}.")
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
            args += ["--mezo", "--weights-in", weights_in, "--zo-eps", repr(float(self.mezo_eps))]
            if self.zo_samples != 1:
                args += ["--zo-samples", str(self.zo_samples)]
            if self.zo_noise != "gaussian":
                args += ["--zo-noise", self.zo_noise]
        return args

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


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


def readable(device, paths) -> bool:
    """Whether every one of ``paths`` is a readable file on ``device``. The paths are the script's
    arguments (``"$1"`` ...), never part of its text: a path holding ``'``, ``;``, ``$(...)`` or a newline
    is a name to test, not a command to run."""
    paths = list(paths)
    script = " && ".join(f'test -r "${k}"' for k in range(1, len(paths) + 1)) or "true"
    return device.exec(["sh", "-c", script, "sh", *paths], timeout=60, wrap=False).rc == 0


def _remote_data(data_on_device: str) -> dict[str, str]:
    if not data_on_device.startswith("/") or any(part == ".." for part in data_on_device.split("/")):
        raise UsageError(f"--data-on-device must be an absolute path on the device without '..', got "
                         f"{data_on_device!r}.")
    bad = sorted({c for c in data_on_device if ord(c) < 32 or 0x7f <= ord(c) <= 0x9f})
    if bad:
        raise UsageError(f"--data-on-device {data_on_device!r} contains control characters "
                         f"({' '.join(repr(c) for c in bad)}); give the directory's path without them.")
    base = data_on_device.rstrip("/")
    return {name: f"{base}/{name}" for name in DATA_FILES}


# ------------------------------------------------------------------- a checkpoint's identity
#: what a checkpoint must share with the run that resumes it (the runner's checkpoint file cannot say:
#: it is written beside it on this machine, ``<checkpoint>.json``, whenever a checkpoint is pulled)
IDENTITY_KEYS = ("program_sha256", "method", "batch", "optimizer", "lr", "momentum", "weight_decay", "grad_accum",
                 "schedule", "warmup_steps", "seed", "shuffle", "mezo", "mezo_eps", "zo_samples", "zo_noise", "data")
#: keys added after identities were first written: an older identity without them had these values
IDENTITY_DEFAULTS = {"zo_samples": 1, "zo_noise": "gaussian"}
MAX_IDENTITY_BYTES = 1 << 16


def checkpoint_identity(request: TrainRequest, *, program_sha256: str, method: str, batch: int,
                        data: str | None) -> dict:
    """The properties of a training run that its checkpoint carries on: the training program (its hash
    covers the model, batch and method), the optimizer and every hyper-parameter of the step rule and
    schedule, the data order (seed, shuffle) and the data (its hash, or the directory on the device)."""
    r = request
    return {"program_sha256": program_sha256, "method": method, "batch": batch, "optimizer": r.optimizer,
            "lr": float(r.lr), "momentum": float(r.momentum), "weight_decay": float(r.weight_decay),
            "grad_accum": r.grad_accum, "schedule": r.schedule, "warmup_steps": r.warmup_steps, "seed": r.seed,
            "shuffle": r.shuffle, "mezo": r.mezo, "mezo_eps": float(r.mezo_eps),
            "zo_samples": r.zo_samples, "zo_noise": r.zo_noise, "data": data}


def identity_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".json")


def write_checkpoint_identity(checkpoint: Path, identity: Mapping[str, Any], step: int | None) -> Path:
    path = identity_path(checkpoint)
    path.write_text(json.dumps({"edgerun_checkpoint": 1, **identity, "step": step}, indent=1, sort_keys=True))
    return path


def check_resume(checkpoint: Path, identity: Mapping[str, Any], *, steps: int) -> int | None:
    """Refuse (:class:`UsageError`) to resume ``checkpoint`` by a run that differs in anything it
    carries on (each difference named), or one without its identity file; returns its step."""
    checkpoint = Path(checkpoint)
    path = identity_path(checkpoint)
    hint = ("Resume a checkpoint with the options of the run that wrote it (its run record's training settings "
            "say them), or start afresh without --resume.")
    if not path.is_file():
        raise UsageError(f"--resume {checkpoint}: no {path.name} beside it, so edgerun cannot tell which training "
                         "program, optimizer and data it belongs to (a checkpoint of another run would be resumed "
                         "silently and train a wrecked model).",
                         hint="Give the checkpoint.bin of an edgerun run directory (with its checkpoint.bin.json).")
    try:
        if path.stat().st_size > MAX_IDENTITY_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes, more than {MAX_IDENTITY_BYTES}")
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume {checkpoint}: its {path.name} is unreadable ({exc}).", hint=hint) from None
    differ = []
    for key in IDENTITY_KEYS:
        mine, theirs = identity.get(key), saved.get(key, IDENTITY_DEFAULTS.get(key))
        if mine != theirs and not (isinstance(mine, float) and isinstance(theirs, (int, float))
                                   and not isinstance(theirs, bool) and math.isclose(mine, theirs, rel_tol=1e-12)):
            differ.append(f"{key}: the checkpoint's {theirs!r:.80}, this run's {mine!r:.80}")
    if differ:
        raise UsageError(f"--resume {checkpoint} comes from another training run; it differs in "
                         + "; ".join(differ) + ".", hint=hint)
    step = saved.get("step")
    step = step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None
    if step is not None and step >= steps:
        raise UsageError(f"--resume {checkpoint} is at step {step}; --steps {steps} leaves nothing to train.",
                         hint=f"--steps is the total: give more than {step}.")
    return step


def recover_checkpoint(device, job: "TrainJob", run_dir: Path) -> tuple[Path, int] | None:
    """After a failed or killed training: the last checkpoint the runner wrote (its ``checkpoint`` lines
    in ``runner.jsonl``), pulled from the device's work directory into ``run_dir`` with its identity file;
    ``None`` when there is none (or it cannot be pulled)."""
    from .protocol import parse_runner_output

    remote = job.where.get("checkpoint")
    lines = Path(run_dir) / "runner.jsonl"
    if not remote or not lines.is_file():
        return None
    try:
        marks = parse_runner_output(lines.read_bytes(), exit_code=1).checkpoints
        if not marks:
            return None
        local = Path(run_dir) / "checkpoint.bin"
        device.pull(remote, local)
    except Exception:  # noqa: BLE001 (best effort on a device that just failed: the error says what it could)
        return None
    if job.identity is not None:
        write_checkpoint_identity(local, job.identity, marks[-1].step)
    return local, marks[-1].step


@dataclass(frozen=True)
class TrainJob:
    """The train mode (a :class:`~edgerun.runtime.modes.RunMode`): ``request`` on a training program, with
    the data as local files (``data``: the :data:`DATA_FILES` names -> paths, pushed and hashed) or a
    directory that already lives on the device (``data_on_device``: it never leaves it, edgerun never reads
    it); ``resume``: a checkpoint of an earlier run of the same program; ``weights_in``: MeZO's starting
    weights. The trained weights (``weights/``) and the checkpoint come back into the run directory; the
    run's ``extras`` hold ``weights`` (program name -> array), ``checkpoint`` and ``data_sha256``."""

    mode_name: ClassVar[str] = "train"
    remote_dirs: ClassVar[tuple[str, ...]] = ("weights",)
    deploy_vectors: ClassVar[bool] = False
    deploy_dataset: ClassVar[bool] = False

    request: TrainRequest
    data: Mapping[str, Path] | None = None
    data_on_device: str | None = None
    resume: Path | None = None
    weights_in: Mapping[str, Path] | None = None
    #: :func:`checkpoint_identity` of this run: written beside every checkpoint pulled
    identity: Mapping[str, Any] | None = None
    #: where this run's files are on the device (the checkpoint), once it has started
    where: dict = dataclasses.field(default_factory=dict, compare=False)

    def check(self, manifest) -> None:
        if (self.data is None) == (self.data_on_device is None):
            raise UsageError("give the training data either as local files or as a directory on the device "
                             "(--data-on-device), not both.")
        if self.data_on_device is not None:
            _remote_data(self.data_on_device)
        if self.request.mezo and self.weights_in is None:
            raise UsageError("MeZO needs the starting weights (weights_in) to put on the device.")

    def run_json(self) -> dict:
        return {"train": self.request.to_json(), "data_on_device": self.data_on_device}

    def push(self, ctx: "RunContext") -> None:
        device = ctx.device
        if self.data is not None:
            ctx.pushed.update(ctx.push(dict(self.data)).paths)
        else:
            remote = _remote_data(self.data_on_device)
            if not readable(device, [remote[n] for n in DATA_FILES[:2]]):
                raise DeviceError(f"{self.data_on_device} on the device has no readable x_train.npy and y_train.npy",
                                  device=device.name, stage="deploy")
            has_eval = readable(device, [remote[n] for n in DATA_FILES[2:]])
            ctx.pushed.update({k: v for k, v in remote.items() if has_eval or "eval" not in k})
        if self.weights_in is not None:
            ctx.pushed["weights_in"] = ctx.push(dict(self.weights_in)).dest
        if self.resume is not None:
            ctx.pushed["resume"] = ctx.push({"resume.bin": self.resume}).paths["resume.bin"]

    def argv(self, ctx: "RunContext") -> list[str]:
        data = {k: v for k, v in ctx.pushed.items() if k in DATA_FILES}
        self.where["checkpoint"] = ctx.remote("checkpoint.bin")
        return ctx.prefix() + self.request.runner_args(
            data=data, checkpoint=ctx.remote("checkpoint.bin"), weights_out=ctx.remote("weights"),
            resume=ctx.pushed.get("resume"), weights_in=ctx.pushed.get("weights_in"))

    def collect(self, ctx: "RunContext", result: RunnerResult, run: RunArtifacts) -> None:
        weights: dict[str, np.ndarray] = {}
        (ctx.run_dir / "weights").mkdir(exist_ok=True)
        wl = result.weights
        if wl is not None:
            for name, file in zip(wl.names, wl.files):
                if "/" in file or file.startswith("."):
                    raise DeviceError(f"the device named a weights file {file!r} outside its directory",
                                      device=ctx.device.name, stage="pull")
                local = ctx.pull(ctx.remote(f"weights/{file}"), ctx.run_dir / "weights" / file)
                try:
                    weights[name] = np.load(local, allow_pickle=False)
                except ValueError as exc:
                    raise DeviceError(f"the weights file {file} the device wrote is not a .npy array: {exc}",
                                      device=ctx.device.name, stage="pull") from None
        checkpoint = ctx.pull(ctx.remote("checkpoint.bin"), ctx.run_dir / "checkpoint.bin")
        if self.identity is not None:
            marks = result.checkpoints
            tl = result.train
            step = marks[-1].step if marks else ((tl.start_step if tl else 0) + len(result.steps))
            write_checkpoint_identity(checkpoint, self.identity, step)
        run.extras.update(weights=weights, checkpoint=checkpoint,
                          data_sha256=data_hash(self.data) if self.data is not None else None)


def analyse_training(run: RunArtifacts, *, model_name: str, request: TrainRequest, program: Any,
                     settings: Mapping[str, Any] | None = None, run_id: str | None = None) -> RunRecord:
    """The record of a training run (see the module docstring)."""
    from .analysis import edgerun_git_commit
    from edgerun.core.version import edgerun_version

    res = run.result
    header, load, summary, tl = res.header, res.load, res.summary, res.train
    steps = res.steps
    if tl is None or not steps:
        from .record import RunFailed

        raise RunFailed("the training run printed no train or step lines: there is nothing to analyse.",
                        stage="analyse")
    info = run.device_info
    source = EMULATED if info.emulated else MEASURED
    samples = tuple(Sample(index=k, warmup=False, execute_ns=s.execute_ns, wall_ns=s.wall_ns)
                    for k, s in enumerate(steps))
    latency = summarize([s.execute_ns for s in samples], what="step")
    exec_s = sum(s.execute_ns for s in steps) / 1e9
    training = TrainingMetrics(
        method=getattr(program, "method", "full"), optimizer=tl.optimizer or request.optimizer,
        lr=request.lr, steps=len(steps),
        start_step=tl.start_step, batch=tl.batch, grad_accum=request.grad_accum, trainable=tl.trainable,
        frozen=getattr(program, "frozen", 0), trainable_bytes=tl.trainable_bytes or tl.trainable * 4,
        optimizer_state_bytes=tl.optimizer_state_bytes or 0,
        train_samples=tl.train_samples or 0, eval_samples=tl.eval_samples or 0,
        loss_curve=tuple((s.step, s.loss) for s in steps),
        eval=tuple(EvalPoint(when=e.when, step=e.step, samples=e.samples, loss=e.loss, accuracy=e.accuracy)
                   for e in res.evals),
        steps_per_s=len(steps) / exec_s if exec_s > 0 else None,
        samples_per_s=len(steps) * tl.batch * request.grad_accum / exec_s if exec_s > 0 else None,
        data_sha256=run.extras.get("data_sha256"),
        checkpoint=str(run.extras["checkpoint"]) if run.extras.get("checkpoint") else None,
        settings={**request.to_json(), **(settings or {})})
    warnings = list(latency.warnings)
    if source == EMULATED:
        warnings.insert(0, f"emulated device ({info.emulator or 'emulator'}): step times check function, not speed")
    kb = lambda v: int(v) * 1024 if v is not None else None  # noqa: E731
    memory = Memory(planned_bytes=None, peak_rss_bytes=kb(summary.peak_rss_kb if summary else None),
                    rss_bytes=kb(summary.rss_kb if summary else None), pte_bytes=getattr(program, "pte_bytes", None),
                    bundle_bytes=run.bundle_bytes, load_ms=load.load_ns / 1e6 if load else None,
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
        device_name=run.device_name, device=info, provenance=provenance, source=source,
        samples=samples, latency=latency, wall=None, memory=memory, warnings=tuple(warnings), training=training)
