"""Where a sweep's export cells run: one small interface, two implementations.

``edgerun bench`` exports every (target, recipe) of its grid before it measures anything. An
:class:`Executor` takes those exports as :class:`ExportJob`\\ s (model, target, recipe, the artifact
directory under ``EDGERUN_HOME/artifacts`` and the recipe hash this process computed for it) and
returns one :class:`ExportDone` per job: the artifact's path or the :class:`EdgerunError` that
failed it. A failed export fails its own cells only; the others go on.

* :class:`LocalExecutor` (``--executor local``, the default): in this process, one export at a time,
  each stage reported as it starts -- what bench always did.
* :class:`RayExecutor` (``--executor ray``, ``ray?num_cpus=N``, ``ray://HOST:PORT``): each export is a
  Ray task (one CPU, no retries) on a local Ray instance started for the run (and shut down after it)
  or on an existing cluster (Ray Client). Workers write the artifact straight into the driver's
  ``EDGERUN_HOME`` -- the same directory on the same file system (local Ray; on a cluster a shared
  mount at the same path). Each task first reads a token file the driver wrote there, so a worker
  that does not see the driver's home fails its cells with an :class:`EnvironmentProblem` saying so,
  instead of exporting where the driver will never look; returning artifacts as bytes to a driver on
  another file system is not implemented. A worker exports by name, so the model (a zoo name, or a
  ``package.module:factory`` importable on the worker: a local Ray's workers inherit this process's
  environment, a cluster's have their own) and the recipes are resolved there; a recipe registered
  from Python in this process only is unknown to a worker and fails its cells saying so. Ray is an
  optional extra (``pip install 'edgerun[ray]'``).

Both: after a job the driver reads the artifact and checks that its recipe hash is the one it
computed (a worker with other torch/executorch/torchao versions or another copy of a factory's module
exports another recipe: its cells fail, naming both hashes, and the misplaced artifact is removed from
the cache). Only the driver opens the results store (one writer); a worker never touches it.
Measurement cells are not executor work: devices are the driver's resources (its inventory, its SSH
keys, its USB), and a measurement on ``local://`` must not share the CPU with exports, so bench
measures after every export has finished, on the driver, as before.

Ctrl-C while Ray tasks run cancels them (each first gets a KeyboardInterrupt so the export removes
its half-made directory; after :data:`CANCEL_GRACE_S` the rest are killed), keeps the artifacts of the
finished ones in the cache (a re-run reuses them) and propagates the KeyboardInterrupt (exit 130).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import parse_qs, urlsplit

from edgerun.core.errors import EdgerunError, EnvironmentProblem, ExportError, UsageError

log = logging.getLogger("edgerun.executors")

Progress = Callable[[str], None]

RAY_EXTRA_HINT = ("Install the optional extra: pip install 'edgerun[ray]' (ray[client]==2.60.0; scripts/setup "
                  "installs it), or run the sweep with --executor local.")
HEARTBEAT_S = 10.0        # a progress line at least this often while Ray tasks run
CANCEL_GRACE_S = 10.0     # after Ctrl-C: how long cancelled tasks may take to clean up before they are killed
PROBE_PREFIX = ".executor-probe-"
EXECUTOR_FORMS = "local, ray, ray?num_cpus=N or ray://HOST:PORT"


@dataclasses.dataclass(frozen=True)
class ExportJob:
    """One export of a sweep: ``model`` for ``target`` with ``recipe`` into ``path``, whose manifest must
    carry ``recipe_hash`` (the identity the driver computed)."""

    model: str
    target: str
    recipe: str
    path: Path
    recipe_hash: str

    @property
    def label(self) -> str:
        return f"{self.target}/{self.recipe}"

    def to_wire(self) -> dict:
        return {"model": self.model, "target": self.target, "recipe": self.recipe, "path": str(self.path),
                "recipe_hash": self.recipe_hash}


@dataclasses.dataclass
class ExportDone:
    """How one :class:`ExportJob` ended: ``path`` (a verified artifact) or ``error``; ``where`` it ran."""

    job: ExportJob
    path: Path | None
    error: EdgerunError | None
    seconds: float
    where: dict

    def to_json(self) -> dict:
        out = {"target": self.job.target, "recipe": self.job.recipe, "recipe_hash": self.job.recipe_hash,
               "path": str(self.job.path), "seconds": round(self.seconds, 3), **self.where}
        if self.error is not None:
            out["error"] = self.error.to_json()
        return out


class Executor(abc.ABC):
    """Runs a sweep's exports; see the module's docstring."""

    name: str = ""

    @abc.abstractmethod
    def run(self, jobs: Sequence[ExportJob], on_progress: Progress | None = None) -> list[ExportDone]:
        """Every job, one :class:`ExportDone` each (in the order of ``jobs``)."""

    def describe(self) -> dict:
        return {"name": self.name}


def check_exported(job: ExportJob) -> Path:
    """The driver's check of a finished export: a readable, verified artifact at ``job.path`` whose recipe
    hash is the job's. A foreign hash removes the artifact from the cache (it is keyed by the driver's
    hash and would be reused under it) and fails the job."""
    from edgerun.core.artifact import read_manifest

    manifest = read_manifest(job.path)
    if manifest.recipe_hash != job.recipe_hash:
        shutil.rmtree(job.path, ignore_errors=True)
        raise ExportError(
            f"the artifact exported for {job.label} carries recipe hash {str(manifest.recipe_hash)[:12]}, not the "
            f"{job.recipe_hash[:12]} this edgerun computed for it: the process that exported it sees another recipe "
            f"(other torch/executorch/torchao versions, or another copy of the model's factory module). It was "
            f"removed from {job.path.parent}.", stage="export",
            hint="Install the same edgerun, torch, executorch and model code on every worker, or use --executor local.")
    return job.path


class LocalExecutor(Executor):
    """In this process, one export at a time (an export is CPU-heavy and uses every core itself)."""

    name = "local"

    def run(self, jobs: Sequence[ExportJob], on_progress: Progress | None = None) -> list[ExportDone]:
        from edgerun.export import export_model

        where = {"executor": self.name, "node": socket.gethostname(), "pid": os.getpid()}
        out: list[ExportDone] = []
        for job in jobs:
            started = time.monotonic()
            stage = (lambda s, job=job: on_progress(f"export {job.label}: {s}")) if on_progress else None
            try:
                export_model(job.model, job.target, job.recipe, job.path, on_stage=stage)
                out.append(ExportDone(job, check_exported(job), None, time.monotonic() - started, where))
            except EdgerunError as exc:
                out.append(ExportDone(job, None, exc, time.monotonic() - started, where))
        return out


# ----------------------------------------------------------------------------------------- Ray

def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise EnvironmentProblem(f"--executor ray needs Ray, which is not installed in this Python "
                                 f"({exc}).", stage="executor", hint=RAY_EXTRA_HINT) from None
    return ray


def _probe_text(probe: str) -> str | None:
    try:
        with open(probe, encoding="ascii") as f:
            return f.read(200)
    except (OSError, UnicodeDecodeError):
        return None


def _export_task(job: dict, home: str, probe: str, token: str) -> dict:
    """The Ray task: check that the driver's ``EDGERUN_HOME`` is this worker's, export, say where it ran.
    An :class:`EdgerunError` is returned (not raised) so the driver gets it whole; anything else is a bug
    and reaches the driver as Ray's task error."""
    where = {"executor": "ray", "node": socket.gethostname(), "pid": os.getpid()}
    started = time.monotonic()
    try:
        if _probe_text(probe) != token:
            raise EnvironmentProblem(
                f"the Ray worker on {where['node']} does not see this edgerun's EDGERUN_HOME ({home}): its token "
                f"file {probe} is missing or different there. --executor ray writes artifacts straight into a "
                "shared EDGERUN_HOME; returning them as bytes to a driver on another file system is not "
                "implemented.", stage="executor",
                hint="Mount the same EDGERUN_HOME at the same path on every Ray node (NFS or the like), run the "
                     "sweep on the cluster's head node, or use --executor local.")
        os.environ["EDGERUN_HOME"] = home   # caches the export reads (bundles, toolchains) are the driver's
        from edgerun.export import export_model

        export_model(job["model"], job["target"], job["recipe"], job["path"])
        return {"ok": True, "where": where, "seconds": time.monotonic() - started}
    except EdgerunError as exc:
        return {"ok": False, "error": exc, "where": where, "seconds": time.monotonic() - started}


def _ray_error(job: ExportJob, exc: BaseException) -> EdgerunError:
    """A Ray-side failure of ``job`` (the worker died, the task raised a non-edgerun error) as its cell's error."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, EdgerunError):
        return cause
    what = f"{type(cause).__name__}: {cause}" if cause is not None else f"{type(exc).__name__}: {exc}"
    log.debug("Ray task for %s failed", job.label, exc_info=exc)
    return ExportError(f"the Ray task exporting {job.label} failed: {what.strip()[:2000]}", stage="export",
                       hint="An error that is not edgerun's (a worker that died: memory, a signal) is a bug or a "
                            "resource limit; re-run with --executor local --debug to see its traceback here.")


class RayExecutor(Executor):
    """Each export a Ray task; see the module's docstring. ``address``: None starts a local Ray instance for
    the run (``num_cpus``: its CPUs, default every core), else Ray's address (``ray://HOST:PORT``, Ray
    Client). A Ray already initialised in this process (a library caller's) is used as it is."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        _import_ray()   # missing: a clear error before any work
        self.address = address
        self.num_cpus = num_cpus

    def describe(self) -> dict:
        return {"name": self.name, "address": self.address or "local", "num_cpus": self.num_cpus}

    def _where(self) -> str:
        return self.address or (f"a local Ray instance ({self.num_cpus} CPUs)" if self.num_cpus
                                else "a local Ray instance")

    def _start(self, ray) -> None:
        """Start a local Ray instance or connect to the cluster (``run`` shuts it down after the exports)."""
        kw = dict(log_to_driver=False, configure_logging=False)
        if self.address is None:
            kw.update(address="local", num_cpus=self.num_cpus, include_dashboard=False)
        else:
            kw.update(address=self.address)
        try:
            ray.init(**kw)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError ...
            raise EnvironmentProblem(f"could not start or reach {self._where()}: {type(exc).__name__}: "
                                     f"{str(exc).strip()[:1000]}", stage="executor",
                                     hint="Check the address (Ray Client listens on ray://HEAD:10001), that the "
                                          "cluster runs Ray 2.60.0 and, if it asks for Ray's token authentication, "
                                          "that RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN or "
                                          "~/.ray/auth_token) are set here; or use --executor local.") from None

    def run(self, jobs: Sequence[ExportJob], on_progress: Progress | None = None) -> list[ExportDone]:
        if not jobs:
            return []
        from edgerun.core.paths import artifacts_dir, edgerun_home

        ray = _import_ray()
        say = on_progress or (lambda _m: None)
        home = str(edgerun_home().resolve())
        token = secrets.token_hex(16)
        adir = artifacts_dir()
        try:
            adir.mkdir(parents=True, exist_ok=True)
            probe = adir / f"{PROBE_PREFIX}{token[:12]}"
            probe.write_text(token, encoding="ascii")
        except OSError as exc:
            from edgerun.core.errors import environment_problem

            raise environment_problem(exc, f"writing to the artifact cache {adir}") from None
        started_here = not ray.is_initialized()   # a library caller's own Ray is used and left running
        try:
            if started_here:
                say(f"starting {self._where()} for {len(jobs)} export(s)")
                self._start(ray)
            task = ray.remote(num_cpus=1, max_retries=0)(_export_task)
            refs = {task.remote(job.to_wire(), home, str(probe.resolve()), token): job for job in jobs}
            return self._collect(ray, refs, jobs, say)
        finally:
            probe.unlink(missing_ok=True)
            if started_here:
                with_shutdown(ray)

    def _collect(self, ray, refs: dict, jobs: Sequence[ExportJob], say: Progress) -> list[ExportDone]:
        done: dict[ExportJob, ExportDone] = {}
        pending = list(refs)
        t0 = time.monotonic()
        say(f"exports on Ray: {len(jobs)} task(s) submitted")
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=HEARTBEAT_S)
                if not ready:
                    waiting = ", ".join(refs[r].label for r in pending[:4]) + (" ..." if len(pending) > 4 else "")
                    say(f"exports on Ray: {len(done)}/{len(jobs)} done after {time.monotonic() - t0:.0f} s; "
                        f"running or queued: {waiting}")
                    continue
                for ref in ready:
                    job = refs[ref]
                    done[job] = self._one(ray, ref, job, t0)
                    d = done[job]
                    state = (f"failed: {d.error.message[:200]}" if d.error
                             else f"done on {d.where.get('node')} in {d.seconds:.1f} s")
                    say(f"export {job.label} [{len(done)}/{len(jobs)}]: {state}")
        except KeyboardInterrupt:
            self._cancel(ray, pending, refs, say)
            raise
        return [done[j] for j in jobs]

    @staticmethod
    def _one(ray, ref, job: ExportJob, t0: float) -> ExportDone:
        try:
            res = ray.get(ref)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, ObjectLostError ...
            return ExportDone(job, None, _ray_error(job, exc), time.monotonic() - t0, {"executor": "ray"})
        if not res["ok"]:
            err = res["error"]
            err.message = f"(on the Ray worker on {res['where'].get('node')}) {err.message}"
            return ExportDone(job, None, err, res["seconds"], res["where"])
        try:
            return ExportDone(job, check_exported(job), None, res["seconds"], res["where"])
        except EdgerunError as exc:
            return ExportDone(job, None, exc, res["seconds"], res["where"])

    @staticmethod
    def _cancel(ray, pending: list, refs: dict, say: Progress) -> None:
        if not pending:
            return
        say(f"interrupted: cancelling {len(pending)} Ray task(s) ({', '.join(refs[r].label for r in pending[:4])})")
        try:
            for ref in pending:
                ray.cancel(ref, force=False)       # a KeyboardInterrupt in the task: the export cleans up
            deadline = time.monotonic() + CANCEL_GRACE_S
            left = pending
            while left and time.monotonic() < deadline:
                _, left = ray.wait(left, num_returns=len(left), timeout=max(0.1, deadline - time.monotonic()))
            for ref in left:
                ray.cancel(ref, force=True)        # still running: its worker is killed
        except KeyboardInterrupt:                  # a second Ctrl-C: no more waiting
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
        except Exception as exc:  # noqa: BLE001 - cancelling is best effort; the interrupt still propagates
            log.debug("cancelling Ray tasks: %s", exc)


def with_shutdown(ray) -> None:
    try:
        ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - nothing to do about a Ray that cannot stop cleanly
        log.debug("ray.shutdown: %s", exc)


def parse_executor(text: str | None) -> Executor:
    """``--executor``: ``local`` (default), ``ray`` (a local Ray instance for the run; ``ray?num_cpus=N``
    gives it N CPUs) or ``ray://HOST:PORT`` (an existing cluster through Ray Client)."""
    text = (text or "local").strip()
    if text == "local":
        return LocalExecutor()
    if text.startswith("ray://"):
        if not urlsplit(text).hostname:
            raise UsageError(f"--executor {text!r}: no host in the Ray address.",
                             hint="Give ray://HEAD_HOST:10001 (Ray Client's port on the cluster's head node).")
        return RayExecutor(address=text)
    if text == "ray" or text.startswith("ray?"):
        query = parse_qs(text[4:], keep_blank_values=True) if "?" in text else {}
        unknown = sorted(set(query) - {"num_cpus"})
        if unknown:
            raise UsageError(f"--executor {text!r}: unknown option(s) {', '.join(unknown)}.",
                             hint="A local Ray instance takes num_cpus=N only, e.g. --executor 'ray?num_cpus=2'.")
        num_cpus = None
        if "num_cpus" in query:
            value = query["num_cpus"][-1]
            if not value.isdigit() or int(value) < 1 or int(value) > 4096:
                raise UsageError(f"--executor {text!r}: num_cpus must be a whole number from 1, got {value!r}.")
            num_cpus = int(value)
        return RayExecutor(num_cpus=num_cpus)
    raise UsageError(f"--executor {text!r} is not an executor.", hint=f"Use one of: {EXECUTOR_FORMS}.")
