"""From what a run produced to its record: the one place measurement logic lives.

:func:`analyse` takes a :class:`~edgerun.runtime.protocol.RunArtifacts` (a local or device run:
the parsed runner output, the device's typed info, pulled outputs, ETDump, held-out-split outputs),
the artifact's :class:`~edgerun.core.artifact.Manifest` and :class:`AnalysisSettings`, and returns a
:class:`~edgerun.runtime.record.RunRecord`: latency statistics over every raw sample, memory with
where each number came from, the per-operator table (ETDump + ETRecord), accuracy of the pulled
outputs against the artifact's eager reference vector, task accuracy on the held-out split, and
every warning (emulation, debug build, version drift, unstable timings, pre-flight).

A failed run is not analysed: :func:`~edgerun.runtime.protocol.runner_failure` says why.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgerun.core.artifact import Manifest, thresholds_failures
from edgerun.core.errors import AnalysisError
from edgerun.core.version import edgerun_version

from .accuracy import AccuracyResult, batch_task_accuracy, compare_vectors, load_npy
from .optable import ProfilingError, operator_table
from .protocol import RunArtifacts, runner_failure
from .record import (
    EMULATED, ESTIMATED, MEASURED, Memory, ModelInfo, Provenance, RunFailed, RunRecord, Sample, new_run_id,
)
from .stats import summarize

log = logging.getLogger("edgerun.analysis")

RELEASE_BUILDS = ("release", "relwithdebinfo", "minsizerel")


@dataclass(frozen=True)
class AnalysisSettings:
    """How to read a run. ``vector``: the test vector the run's inputs came from (its eager outputs
    are the reference; ``None``: generated inputs, no accuracy); ``skip_runs``: ETDump runs to skip
    (warm-up, when the runtime could not reset its ETDump); ``seed``: of the bootstrap CI."""

    vector: int | None = 0
    skip_runs: int = 0
    seed: int = 0
    sweep_id: str | None = None
    cell: str | None = None
    run_id: str | None = None
    check_accuracy: bool = True            # judge the outputs against the artifact's thresholds
    task_accuracy_tolerance: float = 0.02  # how far below the export-time task accuracy still passes
    llm_request: Any = None                # LLM runs: the LLMRequest it ran (names the test in the record)
    decode_text: Any = None                # LLM runs: ids -> text (the artifact's tokenizer), for the record


@functools.lru_cache(maxsize=1)
def edgerun_git_commit() -> str | None:
    """The commit of the edgerun source tree this runs from, best effort.

    ``+dirty`` when tracked files are modified, ``+unchecked`` when that could not be told in time
    (a busy machine); None outside a git checkout (an installed wheel).
    """
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not sha:
        return None
    try:
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{sha}+unchecked"
    return f"{sha}+dirty" if dirty else sha


def _accuracy(run: RunArtifacts, manifest: Manifest, settings: AnalysisSettings, source: str) -> AccuracyResult | None:
    accuracy = None
    if settings.vector is not None and run.outputs and manifest.test_vectors and manifest.path is not None:
        reference = manifest.load_test_vector(settings.vector).outputs
        outputs = [load_npy(p, f"output {j} pulled from {run.device_name}") for j, p in enumerate(run.outputs)]
        accuracy = compare_vectors([outputs], [reference], names=[o.name for o in manifest.outputs] or None,
                                   source=source)
    if run.dataset_outputs is not None:
        _inputs, labels_path = manifest.dataset_files()
        labels = load_npy(labels_path, "the dataset labels")
        task = batch_task_accuracy(load_npy(run.dataset_outputs, f"the dataset outputs pulled from {run.device_name}"),
                                   labels, what=f"outputs of {manifest.dataset.inputs} run on {run.device_name}")
        base = accuracy or AccuracyResult(source=source, reference="labels", outputs=(), vectors=0)
        accuracy = replace(base, task_accuracy=float(task), task_samples=int(labels.size))
    if accuracy is not None and settings.check_accuracy:
        accuracy = _judge(accuracy, manifest, settings)
    return accuracy


def _judge(accuracy: AccuracyResult, manifest: Manifest, settings: AnalysisSettings) -> AccuracyResult:
    """The device's outputs against the artifact's own thresholds (those export verified with), and
    its task accuracy against the program's at export (``settings.task_accuracy_tolerance`` below it)."""
    thresholds = manifest.thresholds()
    failures = list(thresholds_failures(accuracy.outputs, thresholds)) if thresholds and accuracy.outputs else []
    exported = manifest.verification.task_accuracy if manifest.verification else None
    if accuracy.task_accuracy is not None and exported is not None \
            and accuracy.task_accuracy < exported.program - settings.task_accuracy_tolerance:
        failures.append(f"task accuracy {accuracy.task_accuracy:.2%} on the device < {exported.program:.2%} at "
                        f"export (tolerance {settings.task_accuracy_tolerance:.0%})")
    checked = bool(thresholds and accuracy.outputs) or (accuracy.task_accuracy is not None and exported is not None)
    return replace(accuracy, passed=(not failures) if checked else None, failures=tuple(failures))


def analyse(run: RunArtifacts, manifest: Manifest, settings: AnalysisSettings = AnalysisSettings()) -> RunRecord:
    """Build the run record of one runner invocation (see the module docstring).

    Raises the run's :class:`~edgerun.core.errors.RunnerError` if it failed, :class:`RunFailed` if it
    has no timed iteration; an ETDump that does not parse keeps the run and says so in ``warnings``.
    """
    result = run.result
    failure = runner_failure(result, where=run.device_name)
    if failure is not None:
        raise failure
    header, load, summary = result.header, result.load, result.summary
    llm = None
    if result.llm is not None:
        from .llm import llm_metrics

        samples, llm = llm_metrics(result, settings.llm_request, manifest, settings.decode_text)
    else:
        samples = tuple(Sample(index=it.index, warmup=it.warmup, execute_ns=it.execute_ns, wall_ns=it.wall_ns)
                        for it in result.iterations)
    timed = [s for s in samples if not s.warmup]
    if not timed:
        raise RunFailed("the run finished with zero successful timed iterations: there is nothing to measure.",
                        stage="analyse", hint="Run with --iterations 1 or more.")

    info = run.device_info
    source = EMULATED if info.emulated else MEASURED
    warnings: list[str] = []
    if source == EMULATED:
        warnings.append(f"emulated device ({info.emulator or 'emulator'}): timings check function, "
                        "not speed; do not compare them with real hardware")
    build = dict(header.build)
    if build.get("build_type") and str(build["build_type"]).lower() not in RELEASE_BUILDS:
        warnings.append(f"the runner is a {build['build_type']} build: timings are not representative")

    latency = summarize([s.execute_ns for s in timed], seed=settings.seed, what="execute")
    walls = [s.wall_ns for s in timed if s.wall_ns is not None]
    wall = summarize(walls, seed=settings.seed, what="wall") if len(walls) == len(timed) else None
    warnings.extend(latency.warnings)

    artifact_executorch = manifest.versions.get("executorch")
    model = ModelInfo(
        name=manifest.model.name, target=manifest.target.name, arch=manifest.target.arch or header.arch,
        scheme=manifest.scheme.spec, recipe_hash=manifest.recipe_hash,
        artifact=str(manifest.path) if manifest.path is not None else None,
        inputs=tuple(t.to_json() for t in load.inputs) if load and load.inputs else
        tuple(t.to_json() for t in manifest.inputs),
    )
    if header.executorch_version and artifact_executorch and header.executorch_version != artifact_executorch:
        warnings.append(f"the runner's ExecuTorch {header.executorch_version} differs from the artifact's "
                        f"{artifact_executorch}")
    provenance = Provenance(
        edgerun_version=edgerun_version(), git_commit=edgerun_git_commit(),
        runner_version=header.runner_version, runner_source_hash=header.runner_source_hash,
        runner_build=build or None, executorch_version=header.executorch_version,
        artifact_executorch_version=artifact_executorch, torch_version=manifest.versions.get("torch"),
        protocol=header.protocol, threads=header.threads, hardware_threads=header.hardware_threads,
        threads_auto=header.threads_auto.to_json() if header.threads_auto else None,
    )

    def kb(v):
        return int(v) * 1024 if v is not None else None

    def ms(v):
        return float(v) / 1e6 if v is not None else None

    load_ns = load.load_ns if load else None
    mem_sources = {}
    for name, value, src in (("planned_bytes", manifest.planned_memory_bytes, ESTIMATED),
                             ("peak_rss_bytes", summary.peak_rss_kb, source), ("rss_bytes", summary.rss_kb, source),
                             ("pte_bytes", manifest.pte_bytes, MEASURED), ("bundle_bytes", run.bundle_bytes, MEASURED),
                             ("load_ms", load_ns, source)):
        if value is not None:
            mem_sources[name] = src
    memory = Memory(
        planned_bytes=manifest.planned_memory_bytes, peak_rss_bytes=kb(summary.peak_rss_kb), rss_bytes=kb(summary.rss_kb),
        pte_bytes=manifest.program_bytes, bundle_bytes=run.bundle_bytes, load_ms=ms(load_ns),
        program_load_ms=ms(load.program_load_ns if load else None),
        method_load_ms=ms(load.method_load_ns if load else None), sources=mem_sources,
    )

    operators = None
    if run.etdump is not None:
        try:
            operators = operator_table(run.etdump, manifest.etrecord_path if manifest.path else None,
                                       skip_runs=settings.skip_runs, measured_execute_ms=latency.median_ms)
            warnings.extend(operators.warnings)
        except ProfilingError as exc:
            log.warning("%s", exc.paragraph())
            warnings.append(f"no operator table: {exc.message}")

    accuracy = _accuracy(run, manifest, settings, source)
    if accuracy is not None and accuracy.passed is False:
        warnings.append(f"accuracy: the outputs on this device miss the artifact's thresholds: "
                        f"{'; '.join(accuracy.failures)}")
    warnings.extend(w for w in run.warnings if w not in warnings)

    return RunRecord(
        run_id=settings.run_id or new_run_id(),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=model, device_name=run.device_name, device=info, provenance=provenance, source=source,
        samples=samples, latency=latency, wall=wall, memory=memory, operators=operators, accuracy=accuracy,
        warnings=tuple(warnings), sweep_id=settings.sweep_id, cell=settings.cell, llm=llm,
    )


__all__ = ["AnalysisSettings", "AnalysisError", "analyse", "edgerun_git_commit"]
