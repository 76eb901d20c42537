"""Run modes: what one invocation of the runner on a device is for, as one small protocol.

A run on a device has one scaffolding (:func:`edgerun.runtime.deploy.run_on_device`: the run directory
and its states, bundle and program sync, the remote run directory, the runner's stdout/stderr kept
whatever happens, pulls that leave no ``.part`` behind) and a *mode* that says what is particular to it:

* ``check(manifest)`` — refuse a request the program cannot take, before a device is touched;
* ``run_json()`` — what ``run.json`` keeps of the request;
* ``deploy_vectors`` / ``deploy_dataset`` — which of the artifact's files the deployment pushes;
* ``push(ctx)`` — the mode's own files (a prompt's ids, training data, a checkpoint to resume);
* ``argv(ctx)`` — the runner's argv on the device;
* ``collect(ctx, result, run)`` — pull what the run wrote (outputs, ETDump, weights, log-probabilities)
  and, if the mode needs it, run the runner again (the forward mode's untimed held-out pass).

Implemented by :class:`ForwardRequest` (here), :class:`~edgerun.runtime.llm.LLMRequest` and
:class:`~edgerun.runtime.train.TrainJob`. A new mode is a class with these members, in its own module;
:mod:`.deploy` does not change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol, runtime_checkable

from edgerun.core.errors import UsageError, environment_problem

from .runner import RunOptions, runner_argv

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.core.artifact import Manifest
    from edgerun.devices.base import Device

    from .deployment import Deployment
    from .protocol import RunArtifacts, RunnerResult


@dataclass
class RunContext:
    """One run in flight, as a mode sees it: where things are on the device and on this machine, and
    the scaffolding's helpers. Every helper turns a failure into the run's error for the stage it is
    called in (``run.json`` then says ``failed`` or ``interrupted``)."""

    device: "Device"
    run_dir: Path                       # on this machine
    remote_run: str                     # the run's directory on the device
    deployment: "Deployment"
    manifest: "Manifest | None"
    timeout: float
    env: dict
    _push: Callable[[Mapping[str, Path]], Any]
    _pull: Callable[[str, Path], None]
    _runner: Callable[..., "RunnerResult"]
    _stage: Callable[[str], None]
    _record: Callable[..., None]
    #: what the mode pushed, by its own names -> the paths on the device
    pushed: dict[str, str] = dataclasses.field(default_factory=dict)

    def remote(self, rel: str) -> str:
        """A path inside the run's directory on the device."""
        return f"{self.remote_run}/{rel}"

    def prefix(self) -> list[str]:
        """The runner's argv up to and including ``--model PROGRAM`` (loader for aarch64 bundles), and
        ``--ptd DATA`` when the program has an external data file."""
        from .bundle import runner_prefix

        dep = self.deployment
        return runner_prefix(dep.bundle.arch, dep.bundle_dir) + ["--model", dep.program] + (
            ["--ptd", dep.data] if dep.data else [])

    def push(self, files: Mapping[str, Path]):
        """Sync local files to the device's content-addressed store; returns the sync result (its
        ``paths`` name each file on the device, ``dest`` the directory that holds them all)."""
        return self._push(files)

    def pull(self, remote: str, local: Path) -> Path:
        """Pull ``remote`` (a device path) into ``local`` (inside the run directory)."""
        self._pull(remote, local)
        return local

    def run_runner(self, argv: list[str], *, stem: str, stage: str, hint: str, require_batch: bool = False,
                   on_stdout=None) -> "RunnerResult":
        """Run ``argv`` on the device; stdout/stderr kept as ``STEM.jsonl``/``STEM.stderr.txt``."""
        return self._runner(argv, stem=stem, stage=stage, hint=hint, require_batch=require_batch,
                            on_stdout=on_stdout)

    def stage(self, name: str, **fields: Any) -> None:
        """Say which stage the run is in (``run.json`` and the error of a failure name it)."""
        self._stage(name)
        self._record(stage=name, **fields)

    def write(self, rel: str, data: str | bytes) -> Path:
        """Keep a file in the run directory on this machine."""
        path = self.run_dir / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
        except OSError as exc:
            raise environment_problem(exc, f"cannot write {path}", stage="run directory") from None
        return path


@runtime_checkable
class RunMode(Protocol):
    """What :func:`~edgerun.runtime.deploy.run_on_device` asks of a mode (see the module docstring)."""

    mode_name: ClassVar[str]
    #: directories made under the run's directory on the device before the runner starts
    remote_dirs: ClassVar[tuple[str, ...]]
    deploy_vectors: ClassVar[bool]

    @property
    def deploy_dataset(self) -> bool: ...

    def check(self, manifest: "Manifest | None") -> None: ...

    def run_json(self) -> dict: ...

    def push(self, ctx: RunContext) -> None: ...

    def argv(self, ctx: RunContext) -> list[str]: ...

    def collect(self, ctx: RunContext, result: "RunnerResult", run: "RunArtifacts") -> None: ...


def check_forward(manifest: "Manifest", *, vector: int | None, dataset: bool = False) -> None:
    """The forward mode's options that can be wrong, checked before any device is touched:
    ``UsageError`` (exit 2) naming the option."""
    n = len(manifest.test_vectors)
    if vector is not None and n and not 0 <= vector < n:
        raise UsageError(f"--vector {vector}: artifact {manifest.dir} has {n} test vector(s) (0..{n - 1}).")
    if vector is not None and not n and vector != 0:
        raise UsageError(f"--vector {vector}: artifact {manifest.dir} has no test vectors.",
                         hint="Use --fill zeros|ones|random to generate inputs.")
    if dataset and manifest.dataset is None:
        raise UsageError(f"artifact {manifest.dir} has no dataset (manifest.json names no held-out split).",
                         hint="Only artifacts of models with a dataset (e.g. digits_cnn) carry one.")


@dataclass(frozen=True)
class ForwardRequest:
    """The forward mode: one test vector's inputs (``vector``; ``None``: the runner's generated inputs),
    warm-up and timed iterations (``options``), outputs and ETDump pulled; with ``dataset``, a second,
    untimed invocation runs every sample of the artifact's held-out split (``--input-batch``, no warm-up,
    no timed iterations, no ETDump, so the timed run is untouched) and its stacked outputs are pulled."""

    mode_name: ClassVar[str] = "forward"
    remote_dirs: ClassVar[tuple[str, ...]] = ("outputs",)
    deploy_vectors: ClassVar[bool] = True

    options: RunOptions = RunOptions()
    vector: int | None = 0
    etdump: bool = True
    dataset: bool = False

    @property
    def deploy_dataset(self) -> bool:
        return self.dataset

    def check(self, manifest: "Manifest | None") -> None:
        if manifest is None:
            raise UsageError("the forward mode runs an artifact (a directory with manifest.json), not a bare program.")
        check_forward(manifest, vector=self.vector, dataset=self.dataset)

    def run_json(self) -> dict:
        return {"options": dataclasses.asdict(self.options), "vector": self.vector, "dataset": self.dataset}

    def push(self, ctx: RunContext) -> None:
        return None  # the deployment pushed the vectors and the held-out inputs

    def argv(self, ctx: RunContext) -> list[str]:
        dep = ctx.deployment
        inputs = dep.vectors[self.vector] if self.vector is not None and dep.vectors else []
        return runner_argv(dep.bundle, dep.program, inputs=inputs, options=self.options,
                           etdump=ctx.remote("run.etdp") if self.etdump else None,
                           output_dir=ctx.remote("outputs"), bundle_dir=dep.bundle_dir, data=dep.data)

    def collect(self, ctx: RunContext, result: "RunnerResult", run: "RunArtifacts") -> None:
        (ctx.run_dir / "outputs").mkdir(exist_ok=True)
        for j, _ in enumerate(result.output_paths):
            run.outputs.append(ctx.pull(ctx.remote(f"outputs/output_{j}.npy"),
                                        ctx.run_dir / "outputs" / f"output_{j}.npy"))
        if self.etdump:
            run.etdump = ctx.pull(ctx.remote("run.etdp"), ctx.run_dir / "run.etdp")
        if not self.dataset:
            return
        dep = ctx.deployment
        remote_out = ctx.remote("dataset_outputs.npy")
        dargv = runner_argv(dep.bundle, dep.program, options=self.options, bundle_dir=dep.bundle_dir,
                            input_batch=dep.dataset_inputs, batch_output=remote_out, batch_only=True,
                            data=dep.data)
        ctx.stage("dataset run", dataset_argv=dargv)
        split = ctx.manifest.dataset.inputs if ctx.manifest is not None and ctx.manifest.dataset else "held-out"
        run.dataset_result = ctx.run_runner(
            dargv, stem="runner.dataset", stage="dataset run", require_batch=True,
            hint=f"Running the held-out split {split} failed: see runner.dataset.stderr.txt and "
                 "runner.dataset.jsonl in the run directory.")
        ctx.stage("pull")
        run.dataset_outputs = ctx.pull(remote_out, ctx.run_dir / "dataset_outputs.npy")

