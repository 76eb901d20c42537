"""profile and bench: the hall wiring export, devices, runtime and the results store together.

* :func:`profile` — for each device (concurrently: a device is an I/O-bound resource) and each
  thread count (in turn, never two runs on one device at once): deploy, run, pull, analyse
  (statistics, ETDump -> operator table, accuracy against the artifact's eager references, and
  for an artifact with a dataset the task accuracy of its held-out split computed from outputs
  run on the device), save the record in the store. A failed cell is reported with its run directory and the other
  cells go on. Ctrl-C kills the runs in flight (on every device), marks their run directories
  ``interrupted``, stores nothing of them and propagates the KeyboardInterrupt (exit 130).
* :func:`bench` — the sweep: export every (target, scheme) of a model (artifacts cached under
  ``EDGERUN_HOME/artifacts`` by recipe), profile each on every device, every finished cell saved
  as it finishes; re-running the same sweep (same ``--sweep-id``) skips the finished cells.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Callable, Sequence

from edgerun.core.artifact import Manifest
from edgerun.core.errors import AccuracyFailed, EdgerunError, RunInterrupted, UsageError
from edgerun.core.paths import artifacts_dir
from edgerun.runtime.record import RunRecord
from edgerun.runtime.runner import AUTO_THREADS

from .cells import Cell, CellFailure, check_store, for_each_device, run_cell
from .executors import Executor, ExportJob, LocalExecutor

log = logging.getLogger("edgerun.profile")

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
    warmup: int = 3
    iterations: int = 30
    min_time_ms: int = 0
    # "auto": the runner times 1 thread and every core and keeps the faster; 0: the runtime's default
    threads: tuple[int | str, ...] = (AUTO_THREADS,)
    vector: int = 0
    etdump: bool = True
    variant: str = "full"
    timeout_s: float = 900.0
    task_accuracy: bool | None = None    # held-out split on the device; None: when the artifact has a dataset
    perplexity: bool = True              # LLM artifacts: also score the held-out text on the device
    text: object = None                  # LLM artifacts: score this file instead (a path, or edgerun.llm.ScoreText)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not self.threads or any(t != AUTO_THREADS and (not isinstance(t, int) or t < 0) for t in self.threads):
            raise ValueError(f"threads must be a list of counts >= 0 or 'auto', got {self.threads}")
        if self.min_time_ms < 0:
            raise ValueError(f"min-time-ms must be >= 0, got {self.min_time_ms}")
        if self.vector < 0:
            raise ValueError(f"vector must be >= 0, got {self.vector}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {self.timeout_s}")


def parse_threads(text: str) -> tuple[int | str, ...]:
    """``1,2,4``, ``auto`` or a mix; 0 is the runtime's default pool (every core)."""
    try:
        values = tuple(x.strip() if x.strip() == AUTO_THREADS else int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--threads takes comma-separated integers or 'auto', got {text!r}.") from None
    if not values or any(v != AUTO_THREADS and v < 0 for v in values):
        raise UsageError(f"--threads takes comma-separated integers >= 0 or 'auto', got {text!r}.")
    return tuple(dict.fromkeys(values))


def _open_manifest(artifact: str | Path | Manifest) -> Manifest:
    from edgerun.core.artifact import read_manifest

    return artifact if isinstance(artifact, Manifest) else read_manifest(artifact)


def profile_on_device(artifact: str | Path | Manifest, device, settings: ProfileSettings, *, store_path=None,
                      sweep_id: str | None = None, cell_of: Callable[[int | str], Cell | None] = lambda t: None,
                      on_progress: Progress | None = None) -> list:
    """Every thread count of ``settings`` on one open device; returns records and :class:`CellFailure`s.

    Each record is saved in the store (``store_path``; one connection per calling thread) as soon
    as its run is analysed, so a later failure loses nothing already measured. A cancelled device
    (Ctrl-C: ``device.cancel()``) raises :class:`RunInterrupted` and saves nothing more.
    """
    from edgerun.runtime.analysis import AnalysisSettings, analyse
    from edgerun.runtime.modes import ForwardRequest
    from edgerun.runtime.runner import RunOptions

    manifest = _open_manifest(artifact)
    with_dataset = manifest.dataset is not None and settings.task_accuracy is not False
    results: list = []
    for threads in settings.threads:
        cell = cell_of(threads)
        if threads == AUTO_THREADS and device.info().emulated:
            threads = 0  # an emulator's speed says nothing about the board: no trial, the default pool
        label = f"{device.name} threads={threads or 'default'}"
        if on_progress:
            on_progress(f"running on {label}")
        mode = ForwardRequest(options=RunOptions(warmup=settings.warmup, iterations=settings.iterations,
                                                 threads=threads, min_time_ms=settings.min_time_ms),
                              vector=settings.vector, etdump=settings.etdump, dataset=with_dataset)
        analysis = AnalysisSettings(vector=settings.vector, sweep_id=sweep_id, cell=cell.key if cell else None)
        try:
            record = run_cell(manifest, device, mode, lambda run: analyse(run, manifest, analysis),
                              store_path=store_path, variant=settings.variant, timeout=settings.timeout_s)
            results.append(record)
            if record.accuracy is not None and record.accuracy.passed is False:
                results.append(CellFailure(device.name, threads, accuracy_failure(record), cell))
        except RunInterrupted:
            raise
        except EdgerunError as exc:
            log.warning("%s: %s", label, exc.paragraph())
            results.append(CellFailure(device.name, threads, exc, cell))
    if manifest.llm is not None and settings.perplexity:
        # an LLM's accuracy on the device: perplexity of the export's held-out text, beside eager's
        from edgerun.llm import perplexity_on_device

        threads = settings.threads[0]
        if on_progress:
            on_progress(f"perplexity on {device.name}")
        try:
            results.append(perplexity_on_device(manifest, device, threads=threads, store_path=store_path,
                                                timeout_s=settings.timeout_s, variant=settings.variant,
                                                text=settings.text))
        except RunInterrupted:
            raise
        except EdgerunError as exc:
            log.warning("%s perplexity: %s", device.name, exc.paragraph())
            results.append(CellFailure(device.name, threads, exc))
    return results


def accuracy_failure(record) -> AccuracyFailed:
    """The error of a stored run whose device outputs miss the artifact's thresholds."""
    emulated = f" (emulated: {record.device.emulator})" if record.source == "emulated" else ""
    return AccuracyFailed(
        f"run {record.run_id} on {record.device_name}{emulated}: the device's outputs miss the artifact's accuracy "
        f"thresholds: {'; '.join(record.accuracy.failures)}. The run is stored and marked.",
        run_id=record.run_id, device=record.device_name,
        hint="The device computes wrong results: under qemu use the board's CPU model (e.g. cpu=cortex-a76, never "
             "max); on hardware, compare with another device or the portable target to find the kernel.")


def _check_task_accuracy(manifest: Manifest, settings: ProfileSettings) -> None:
    if settings.task_accuracy and manifest.dataset is None:
        raise UsageError(f"--task-accuracy: artifact {manifest.path} has no dataset (its manifest names no held-out "
                         "split).", hint="Only models with a dataset (e.g. digits_cnn) carry one; re-export with this "
                                         "edgerun if the artifact predates it, or drop --task-accuracy.")


def profile(artifact: str | Path, devices: Sequence[str], settings: ProfileSettings, *, store_path=None,
            inventory: str | None = None, on_progress: Progress | None = None,
            on_warning: Callable[[str], None] | None = None) -> list:
    """``edgerun profile``: every device concurrently, thread counts in turn on each. A quantized run no
    faster than the stored fp32 run of its cell is warned about (:func:`scheme_speed_warnings`) through
    ``on_warning``, by default this module's logger -- library callers are told what the CLI prints."""
    from edgerun.runtime.deploy import check_run_request

    if not devices:
        raise UsageError("no device given.", hint="Use --device NAME_OR_URI (e.g. local:// or qemu-aarch64://?cpu=cortex-a76).")
    manifest = _open_manifest(artifact)  # a bad artifact fails here, once, before any device is touched
    manifest.verified_pte()               # ... and so does a program swapped after export
    manifest.verified_data()              # ... or its external data file
    estimates, devices = _estimate_devices(manifest, devices, inventory)
    if estimates:  # estimate:// devices: the artifact's compiler report as an estimated record, nothing run
        results = _estimate_on(manifest, estimates, store_path)
        return results + (profile(manifest, devices, settings, store_path=store_path, inventory=inventory,
                                  on_progress=on_progress, on_warning=on_warning) if devices else [])
    _check_task_accuracy(manifest, settings)
    if settings.text is not None:  # read and tokenised once, here: a bad file fails before any device
        from edgerun.llm import read_score_text

        if manifest.llm is None:
            raise UsageError(f"--text scores a text with an LLM artifact; {manifest.path} is not one.")
        if not settings.perplexity:
            raise UsageError("--text is scored by the perplexity run, which these settings turn off.")
        settings = dataclasses.replace(settings, text=read_score_text(manifest, settings.text))
    check_run_request(manifest, vector=settings.vector, timeout=settings.timeout_s)
    check_store(store_path)
    results = for_each_device(devices, lambda _name, dev: profile_on_device(manifest, dev, settings,
                                                                            store_path=store_path,
                                                                            on_progress=on_progress),
                              inventory=inventory)
    records = [r for r in results if isinstance(r, RunRecord)]
    for w in stored_speed_warnings(records, store_path):
        (on_warning or log.warning)(w)
    return results


def _estimate_devices(manifest: Manifest, devices: Sequence[str], inventory: str | None) -> tuple[list, list[str]]:
    """``devices`` split into estimate device specs (each checked against the artifact's target before any
    work: a wrong pairing is a usage error) and the names of the others."""
    from edgerun.devices.inventory import get_spec
    from edgerun.estimate import check_estimate_spec, is_estimate_device, pair_skip_reason, run_skip_reason

    specs = [get_spec(d, inventory) for d in devices]
    for spec in specs:   # an Ethos-U / Cortex-M program on a device that runs edgerun's bundles: refused now
        why = run_skip_reason(manifest.target.name, spec)
        if why:
            raise UsageError(f"artifact {manifest.path}: {why}.",
                             hint=f"Give --device 'estimate://{manifest.target.name}' (add ?sram=512KiB&flash=2MiB for "
                                  "the fit), or a board on serial://.")
    estimates = [s for s in specs if is_estimate_device(s)]
    for spec in estimates:
        check_estimate_spec(spec)
        why = pair_skip_reason(manifest.target.name, spec)
        if why:
            raise UsageError(f"artifact {manifest.path}: {why}.",
                             hint=f"Give --device estimate://{manifest.target.name} for it, or export it for "
                                  f"{spec.target}.")
    return estimates, [d for d, s in zip(devices, specs) if not is_estimate_device(s)]


def _estimate_on(manifest: Manifest, specs: Sequence, store_path=None, *, sweep_id: str | None = None,
                 cell: Cell | None = None) -> list:
    """The estimated record on each estimate device, saved; a refused report is a :class:`CellFailure`. A
    target with no cycle model (a Cortex-M) gets a :class:`~edgerun.estimate.MemoryFit`, not stored."""
    from edgerun.estimate import record_for_device
    from edgerun.store import Store

    out: list = []
    for spec in specs:
        try:
            rec = record_for_device(manifest, spec, sweep_id=sweep_id, cell=cell.key if cell else None)
            if isinstance(rec, RunRecord):
                with Store(store_path) as s:
                    s.save(rec)
            out.append(rec)
        except EdgerunError as exc:
            log.warning("%s: %s", spec.ref, exc.paragraph())
            out.append(CellFailure(spec.ref, None, exc, cell))
    return out


def stored_speed_warnings(records: Sequence, store_path=None) -> list[str]:
    """:func:`scheme_speed_warnings` of ``records`` beside the newest stored fp32 run of each one's cell."""
    from edgerun.store import Store

    if not records:
        return []
    with Store(store_path) as s:
        return scheme_speed_warnings([*fp32_companions(s, records), *records])


# ------------------------------------------------------------------------------------- bench

def artifact_cache_dir(model: str, target: str, recipe: str, options=None) -> Path:
    """Where bench keeps the export of one recipe: keyed by its full recipe identity (model, target,
    every step of the recipe with every option, calibration, seed, vectors, tool versions), so a change of
    any re-exports."""
    return export_job(model, target, recipe, options).path


def export_job(model: str, target: str, recipe: str, options=None) -> ExportJob:
    """The export of one (target, recipe) of a sweep: where its artifact goes and the recipe hash it must carry."""
    from edgerun.export import export_identity, get_model, get_target, parse_recipe

    chain = parse_recipe(recipe)
    identity = export_identity(get_model(model), get_target(target), chain, options)
    safe = lambda text: re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")[:80]  # noqa: E731
    path = artifacts_dir() / f"{safe(model)}-{target}-{safe(chain.spec)}-{identity.hash[:12]}"
    return ExportJob(model=model, target=target, recipe=recipe, path=path, recipe_hash=identity.hash)


def _cached(job: ExportJob) -> bool:
    """A verified artifact of exactly this recipe is in the cache."""
    from edgerun.core.artifact import read_manifest

    try:
        manifest = read_manifest(job.path)
    except EdgerunError:
        return False
    return manifest.ok and manifest.recipe_hash == job.recipe_hash


def ensure_artifact(model: str, target: str, recipe: str, on_progress: Progress | None = None) -> Path:
    """An exported, verified artifact for the cell, reused when the same recipe was exported before."""
    job = export_job(model, target, recipe)
    if _cached(job):
        return job.path
    [done] = LocalExecutor().run([job], on_progress)
    if done.error is not None:
        raise done.error
    return job.path


def sweep_id_for(model: str, targets: Sequence[str], schemes: Sequence[str], devices: Sequence[str],
                 settings: ProfileSettings) -> str:
    fields = dataclasses.asdict(settings)
    if fields.get("task_accuracy") is None:  # the default: keeps the ids of sweeps started before the option
        fields.pop("task_accuracy", None)
    blob = json.dumps([model, list(targets), list(schemes), list(devices), fields],
                      sort_keys=True, default=str)
    return "s-" + hashlib.sha256(blob.encode()).hexdigest()[:10]


def bench_cells(model: str, targets: Sequence[str], schemes: Sequence[str], devices: Sequence[str],
                threads: Sequence[int | str]) -> list[Cell]:
    """The grid of a sweep, in order: target x recipe x device x threads."""
    return [Cell(model=model, target=t, recipe=s, device=d, threads=th)
            for t in targets for s in schemes for d in devices for th in threads]


def bench(model: str, targets: Sequence[str], schemes: Sequence[str], devices: Sequence[str],
          settings: ProfileSettings, *, store, inventory: str | None = None, sweep_id: str | None = None,
          on_cell: Callable[[str, str], None] | None = None, on_progress: Progress | None = None,
          executor: Executor | None = None) -> dict:
    """Export x deploy x profile across targets, recipes (``schemes``: a scheme name, or a recipe with its
    options and steps, e.g. ``8da4w:group_size=64``, or ``my-prune:amount=0.5+int8`` with ``my-prune``
    registered; each cell keyed by the recipe's canonical text) and devices; resumable by ``sweep_id``.

    Every (target, recipe) is exported first, once, by ``executor`` (default :class:`LocalExecutor`: in this
    process, one at a time; :class:`~edgerun.executors.RayExecutor`: Ray tasks). Then each device is
    opened **once** for all its cells and the devices run concurrently, each its cells in turn, here.
    """
    from edgerun.export import get_target, parse_recipe

    chains = [parse_recipe(s) for s in schemes]  # a wrong recipe or option fails here, before any work
    schemes = list(dict.fromkeys(c.spec for c in chains))
    for t in targets:
        tgt = get_target(t)
        for c in chains:
            tgt.check_recipe(c)
    sweep = sweep_id or sweep_id_for(model, targets, schemes, devices, settings)
    cells = bench_cells(model, targets, schemes, devices, settings.threads)
    done: dict[str, str] = {}
    failures: list[dict] = []
    skipped: list[dict] = []
    fits: list[dict] = []
    todo: list[Cell] = []
    estimates = _estimate_specs(devices, inventory)  # estimate:// devices: run nothing, never opened

    def report(key: str, what: str) -> None:
        if on_cell:
            on_cell(key, what)

    for cell in cells:
        existing = store.find_cell(sweep, cell.key)
        why = _estimate_skip(cell, estimates, settings.threads, inventory)
        if existing:
            done[cell.key] = existing
            report(cell.key, "skipped (already in the store)")
        elif why:   # not a pair: the estimate device is another target's (like a recipe a target refuses)
            skipped.append({"cell": cell.key, "reason": why})
            report(cell.key, f"skipped: {why}")
        else:
            todo.append(cell)

    # the exports: cached ones reused, the others run by the executor (one at a time here, or Ray tasks)
    exported: dict[tuple[str, str], Path | EdgerunError] = {}
    jobs: list[ExportJob] = []
    for c in todo:
        if (c.target, c.recipe) not in exported:
            try:
                job = export_job(model, c.target, c.recipe)
                exported[(c.target, c.recipe)] = job.path
                if not _cached(job):
                    jobs.append(job)
            except EdgerunError as exc:
                exported[(c.target, c.recipe)] = exc
    executor = executor or LocalExecutor()
    exports = executor.run(jobs, on_progress)
    for d in exports:
        exported[(d.job.target, d.job.recipe)] = d.error if d.error is not None else d.path

    def runnable(device: str) -> list[Cell]:
        return [c for c in todo if c.device == device and not isinstance(exported[(c.target, c.recipe)], EdgerunError)
                and device not in estimates]

    def run_device(name: str, dev) -> list:
        out: list = []
        for c in runnable(name):
            one = dataclasses.replace(settings, threads=(c.threads,))
            counted = False   # an LLM cell is two runs (forward, held-out score): one finished cell
            for r in profile_on_device(exported[(c.target, c.recipe)], dev, one, store_path=store.path,
                                       sweep_id=sweep, cell_of=lambda _t, c=c: c, on_progress=on_progress):
                if isinstance(r, CellFailure):
                    r.cell = r.cell or c
                else:
                    done[c.key] = r.run_id
                    what = (f"{r.run_id}: perplexity {r.llm.perplexity:.4g} on the device"
                            if r.llm is not None and r.llm.perplexity is not None
                            else f"{r.run_id}: median {r.latency.median_ms:.3f} ms")
                    if not counted:
                        report(c.key, what)
                        counted = True
                    elif on_progress:
                        on_progress(f"{c.key}: {what}")
                out.append(r)
        return out

    for c in todo:  # a recipe that could not be exported fails its cells without opening a device
        art = exported[(c.target, c.recipe)]
        if isinstance(art, EdgerunError):
            failures.append(CellFailure(c.device, c.threads, art, c).to_json())
            report(c.key, f"failed: {art.message}")
    for c in todo:  # estimated cells: the artifact's compiler report, in this thread, nothing deployed
        art = exported[(c.target, c.recipe)]
        if c.device in estimates and not isinstance(art, EdgerunError):
            for r in _estimate_on(_open_manifest(art), [estimates[c.device]], store.path, sweep_id=sweep, cell=c):
                if isinstance(r, CellFailure):
                    report(c.key, f"failed: {r.error.message}")
                    failures.append(r.to_json())
                elif not isinstance(r, RunRecord):   # a memory fit (no cycle model): reported, not stored
                    fits.append({"cell": c.key, **r.to_json()})
                    report(c.key, "memory fit: " + ("fits" if r.fits else "does not fit" if r.fits is False
                                                    else "no board size given") + " (no timing)")
                else:
                    done[c.key] = r.run_id
                    report(c.key, f"{r.run_id}: estimated {r.latency.median_ms:.3f} ms")
    devices_to_run = [d for d in dict.fromkeys(c.device for c in todo) if runnable(d)]
    for r in for_each_device(devices_to_run, run_device, inventory=inventory, cells_of=runnable):
        if isinstance(r, CellFailure):
            if r.cell is not None:
                report(r.cell.key, f"failed: {r.error.message}")
            failures.append(r.to_json())
    return {"sweep_id": sweep, "cells": len(cells), "run_ids": [done[c.key] for c in cells if c.key in done],
            "failures": failures, "skipped": skipped, "fits": fits, "executor": executor.describe(),
            "exports": [d.to_json() for d in exports]}


def _estimate_specs(devices: Sequence[str], inventory: str | None) -> dict:
    """Device name -> its spec, for the estimate devices among ``devices``."""
    from edgerun.devices.inventory import get_spec
    from edgerun.estimate import check_estimate_spec, is_estimate_device

    specs = {d: get_spec(d, inventory) for d in devices}
    estimates = {d: s for d, s in specs.items() if is_estimate_device(s)}
    for spec in estimates.values():
        check_estimate_spec(spec)
    return estimates


def _estimate_skip(cell: Cell, estimates: dict, threads: Sequence, inventory: str | None = None) -> str | None:
    """Why a bench cell is not made: an estimate device of another target, a thread count after the first on
    one (an estimate has no threads: one record per cell of the first), or a device that runs edgerun's
    runner bundles given a target none of them runs (an Ethos-U or Cortex-M program on local://)."""
    from edgerun.estimate import pair_skip_reason, run_skip_reason

    spec = estimates.get(cell.device)
    if spec is None:
        from edgerun.devices.inventory import get_spec

        return run_skip_reason(cell.target, get_spec(cell.device, inventory))
    why = pair_skip_reason(cell.target, spec)
    if why is None and cell.threads != threads[0]:
        why = f"{spec.ref} has no thread count: its estimate is stored once, in the t{threads[0]} cell"
    return why


# ---------------------------------------------------------------------------------------------
# does quantization pay on this device?

QUANTIZED_SPEED_SCHEMES = ("int8", "int8-dynamic")


def _speed_key(record) -> tuple:
    # runs with --threads auto compare with each other (each at its own faster pool), others by pool size
    threads = AUTO_THREADS if record.provenance.threads_auto else record.provenance.threads
    return (record.model.name, record.model.target, record.device_name, threads)


def scheme_speed_warnings(records: Sequence) -> list[str]:
    """One sentence per int8 run that was no faster than an fp32 run of the same model, target, device
    and thread count among ``records`` (median against median), naming the CPU's int8 dot-product
    support. Quantization is usually chosen for speed; on a CPU without an int8 dot product it often
    buys only size, and a user should be told so by the tool."""
    from edgerun.devices.info import int8_dot_product

    fp32: dict[tuple, object] = {}
    for r in records:
        if r.model.scheme == "fp32" and r.llm is None and r.training is None:
            prev = fp32.get(_speed_key(r))
            if prev is None or r.created_at > prev.created_at:
                fp32[_speed_key(r)] = r
    out = []
    for r in records:
        base = fp32.get(_speed_key(r))
        if r.model.scheme not in QUANTIZED_SPEED_SCHEMES or base is None or r.llm is not None:
            continue
        q, f = r.latency.median_ms, base.latency.median_ms
        if q < f:
            continue
        dot = int8_dot_product(r.device.arch, r.device.cpu_features)
        why = {True: "although its CPU has an int8 dot-product instruction: the model may be too small or "
                     "memory-bound for int8 to pay",
               False: "its CPU has no int8 dot-product instruction (x86: AVX-512 VNNI / AVX-VNNI; Arm: "
                      "dotprod / i8mm), so int8 kernels gain little over fp32",
               None: "the CPU's features are unknown"}[dot]
        emulated = " (EMULATED: this says nothing about the real board)" if r.source == "emulated" else ""
        pool = f"{r.provenance.threads} thread(s)" + (", chosen by --threads auto" if r.provenance.threads_auto else "")
        out.append(f"{r.model.name} {r.model.scheme} on {r.device_name} ({pool}) ran "
                   f"{q:.3f} ms, no faster than fp32's {f:.3f} ms (run {base.run_id}): {why}. Choose "
                   f"{r.model.scheme} here for its size, not for speed{emulated}.")
    return out


def fp32_companions(store, records: Sequence) -> list:
    """The newest fp32 run in ``store`` for each quantized record's model, target, device and threads."""
    out = []
    for r in records:
        if r.model.scheme not in QUANTIZED_SPEED_SCHEMES:
            continue
        for row in store.list(model=r.model.name, device=r.device_name, limit=200):
            if row.get("scheme") != "fp32" or row.get("target") != r.model.target:
                continue
            cand = store.get(row["run_id"])
            if _speed_key(cand) == _speed_key(r):
                out.append(cand)
                break
    return out
