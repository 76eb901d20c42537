"""profile and bench: the hall wiring export, devices, runtime and the results store together.

* :func:`profile` — for each device (concurrently: a device is an I/O-bound resource) and each
  thread count (in turn, never two runs on one device at once): deploy, run, pull, analyse
  (statistics, ETDump -> operator table, accuracy against the artifact's eager references, and
  for an artifact with a dataset the task accuracy of its held-out split computed from outputs
  run on the device), save the record in the store. A failed cell is reported with its run directory and the other
  cells go on.
* :func:`bench` — the sweep: export every (target, scheme) of a model (artifacts cached under
  ``EDGERUN_HOME/artifacts`` by recipe), profile each on every device, every finished cell saved
  as it finishes; re-running the same sweep (same ``--sweep-id``) skips the finished cells.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgerun.core.paths import edgerun_home
from edgerun.core.errors import EdgerunError, UsageError

log = logging.getLogger("edgerun.profile")

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
    warmup: int = 3
    iterations: int = 30
    min_time_ms: int = 0
    threads: tuple[int, ...] = (0,)      # 0: the runtime's default
    vector: int = 0
    etdump: bool = True
    variant: str = "full"
    timeout_s: float = 900.0
    task_accuracy: bool | None = None    # held-out split on the device; None: when the artifact has a dataset

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not self.threads or any(t < 0 for t in self.threads):
            raise ValueError(f"threads must be a list of counts >= 0, got {self.threads}")


@dataclasses.dataclass
class CellFailure:
    device: str
    threads: int | None
    error: EdgerunError

    def to_json(self) -> dict:
        return {"device": self.device, "threads": self.threads, "error": self.error.to_json()}


def parse_threads(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--threads takes comma-separated integers, got {text!r}.") from None
    if not values or any(v < 0 for v in values):
        raise UsageError(f"--threads takes comma-separated integers >= 0, got {text!r}.")
    return values


def _reference(artifact: Path, manifest: dict, vector: int) -> list[np.ndarray] | None:
    vecs = manifest.get("test_vectors") or []
    if not 0 <= vector < len(vecs):
        return None
    return [np.load(artifact / p) for p in vecs[vector]["outputs"]]


def profile_on_device(artifact: Path, device, settings: ProfileSettings, *, store_path=None,
                      sweep_id: str | None = None,
                      cell_of: Callable[[int], str | None] = lambda t: None,
                      on_progress: Progress | None = None) -> list:
    """Every thread count of ``settings`` on one open device; returns records and :class:`CellFailure`s.

    Each record is saved in the store (``store_path``; one connection per calling thread) as soon
    as its run is analysed, so a later failure loses nothing already measured.
    """
    from edgerun.runtime.deploy import DeviceRunError, run_on_device
    from edgerun.runtime.preflight import read_manifest
    from edgerun.runtime.record import analyse
    from edgerun.runtime.runner import RunOptions
    from edgerun.store import Store

    from edgerun.runtime.accuracy import batch_task_accuracy, load_npy

    manifest = read_manifest(artifact)
    reference = _reference(artifact, manifest, settings.vector)
    dataset = manifest.get("dataset") if settings.task_accuracy is not False else None
    etrecord = artifact / (manifest.get("files") or {}).get("etrecord", "model.etrecord")
    results: list = []
    for threads in settings.threads:
        label = f"{device.name} threads={threads or 'default'}"
        if on_progress:
            on_progress(f"running on {label}")
        options = RunOptions(warmup=settings.warmup, iterations=settings.iterations, threads=threads,
                             min_time_ms=settings.min_time_ms)
        try:
            run = run_on_device(artifact, device, options=options, vector=settings.vector, etdump=settings.etdump,
                                variant=settings.variant, timeout=settings.timeout_s, dataset=dataset is not None)
            outputs = [np.load(p) for p in run.outputs]
            task_acc = task_samples = None
            if dataset is not None:
                labels = load_npy(artifact / dataset["labels"], "the dataset labels")
                task_acc = batch_task_accuracy(load_npy(run.dataset_outputs, "the dataset outputs pulled from "
                                                        f"{device.name}"), labels,
                                               what=f"outputs of {dataset['inputs']} run on {device.name}")
                task_samples = int(labels.size)
            record = analyse(run.result.lines, manifest, run.device_info, device_name=device.name,
                             etdump_path=run.etdump, etrecord_path=etrecord if etrecord.is_file() else None,
                             outputs=outputs if reference is not None and outputs else None,
                             reference=reference if outputs else None, artifact_dir=artifact,
                             bundle_bytes=run.deployment.bundle.total_bytes, sweep_id=sweep_id,
                             cell=cell_of(threads), task_accuracy=task_acc, task_samples=task_samples)
            for w in run.deployment.preflight.warnings:
                record = dataclasses.replace(record, warnings=(*record.warnings, w))
            with Store(store_path) as store:
                store.save(record)
            (run.run_dir / "record.json").write_text(json.dumps({"run_id": record.run_id}))
            results.append(record)
        except (DeviceRunError, EdgerunError) as exc:
            log.warning("%s: %s", label, exc.paragraph())
            results.append(CellFailure(device.name, threads, exc))
    return results


def profile(artifact: str | Path, devices: Sequence[str], settings: ProfileSettings, *, store_path=None,
            inventory: str | None = None, on_progress: Progress | None = None) -> list:
    """``edgerun profile``: every device concurrently, thread counts in turn on each."""
    from edgerun.devices.inventory import resolve_device

    art = Path(artifact)
    if not devices:
        raise UsageError("no device given.", hint="Use --device NAME_OR_URI (e.g. local:// or qemu-aarch64://?cpu=cortex-a76).")
    if settings.task_accuracy:
        from edgerun.runtime.preflight import read_manifest

        if not read_manifest(art).get("dataset"):
            raise UsageError(f"--task-accuracy: artifact {art} has no dataset (its manifest names no held-out split).",
                             hint="Only models with a dataset (e.g. digits_cnn) carry one; re-export with this "
                                  "edgerun if the artifact predates it, or drop --task-accuracy.")

    def one(name: str) -> list:
        try:
            with resolve_device(name, inventory) as dev:
                return profile_on_device(art, dev, settings, store_path=store_path, on_progress=on_progress)
        except EdgerunError as exc:
            return [CellFailure(name, None, exc)]

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        return [r for rs in pool.map(one, devices) for r in rs]


# ------------------------------------------------------------------------------------- bench

def artifact_cache_dir(model: str, target: str, scheme: str) -> Path:
    from edgerun.export import get_target, make_scheme

    recipe = {"model": model, "target": get_target(target).to_json(), "scheme": make_scheme(scheme).to_json()}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    safe = model.replace(":", "_").replace("/", "_")
    return edgerun_home() / "artifacts" / f"{safe}-{target}-{scheme}-{key}"


def ensure_artifact(model: str, target: str, scheme: str, on_progress: Progress | None = None) -> Path:
    """An exported, verified artifact for the cell, reused when the same recipe was exported before."""
    from edgerun.export import export_model, read_manifest

    path = artifact_cache_dir(model, target, scheme)
    try:
        if read_manifest(path).get("status") == "ok":
            return path
    except EdgerunError:
        pass
    export_model(model, target, scheme, path, on_stage=(lambda s: on_progress(f"export {target}/{scheme}: {s}"))
                 if on_progress else None)
    return path


def sweep_id_for(model: str, targets: Sequence[str], schemes: Sequence[str], devices: Sequence[str],
                 settings: ProfileSettings) -> str:
    fields = dataclasses.asdict(settings)
    if fields.get("task_accuracy") is None:  # the default: keeps the ids of sweeps started before the option
        fields.pop("task_accuracy", None)
    blob = json.dumps([model, list(targets), list(schemes), list(devices), fields],
                      sort_keys=True, default=str)
    return "s-" + hashlib.sha256(blob.encode()).hexdigest()[:10]


def bench(model: str, targets: Sequence[str], schemes: Sequence[str], devices: Sequence[str],
          settings: ProfileSettings, *, store, inventory: str | None = None, sweep_id: str | None = None,
          on_cell: Callable[[str, str], None] | None = None, on_progress: Progress | None = None) -> dict:
    """Export x deploy x profile across targets, schemes and devices; resumable by ``sweep_id``."""
    from edgerun.devices.inventory import resolve_device
    from edgerun.export import get_target
    from edgerun.runtime.record import cell_key

    for t in targets:
        tgt = get_target(t)
        for s in schemes:
            tgt.check_scheme(s)
    sweep = sweep_id or sweep_id_for(model, targets, schemes, devices, settings)
    cells = [(t, s, d, th) for t in targets for s in schemes for d in devices for th in settings.threads]
    done_ids, failures, exported = [], [], {}
    for t, s, d, th in cells:
        key = cell_key(model, t, s, d, th)
        existing = store.find_cell(sweep, key)
        if existing:
            done_ids.append(existing)
            if on_cell:
                on_cell(key, "skipped (already in the store)")
            continue
        try:
            if (t, s) not in exported:
                exported[(t, s)] = ensure_artifact(model, t, s, on_progress)
            art = exported[(t, s)]
            one = dataclasses.replace(settings, threads=(th,))
            with resolve_device(d, inventory) as dev:
                results = profile_on_device(art, dev, one, store_path=store.path, sweep_id=sweep,
                                            cell_of=lambda _t, key=key: key, on_progress=on_progress)
        except EdgerunError as exc:
            results = [CellFailure(d, th, exc)]
        for r in results:
            if isinstance(r, CellFailure):
                failures.append({"cell": key, **r.to_json()})
                if on_cell:
                    on_cell(key, f"failed: {r.error.message}")
            else:
                done_ids.append(r.run_id)
                if on_cell:
                    on_cell(key, f"{r.run_id}: median {r.latency.median_ms:.3f} ms")
    return {"sweep_id": sweep, "cells": len(cells), "run_ids": done_ids, "failures": failures}
