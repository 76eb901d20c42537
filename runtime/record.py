"""The run record: one schema for one run, from which every printer, the store and compare read.

A :class:`RunRecord` keeps every raw sample and derives its statistics; every group of numbers says
where it came from (:data:`MEASURED`, :data:`EMULATED` or :data:`ESTIMATED`) and the provenance
(device, runner and ExecuTorch versions, edgerun version and git commit, recipe hash, threads) is
part of the record, not of a log.

:func:`analyse` turns what a run produced (the runner's JSON lines, the artifact's manifest, the
device's info, optionally the ETDump/ETRecord and the pulled outputs) into a record.
:func:`flat_row` is the one flat view (ordered columns, units in the names) that the markdown, CSV
and HTML tables are printed from; :func:`compare_records` compares two records.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import math
import secrets
import subprocess
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgerun.core.errors import AnalysisError, EdgerunError
from edgerun.runtime.accuracy import AccuracyResult, compare_vectors
from edgerun.runtime.optable import OperatorProfile, ProfilingError, operator_table
from edgerun.runtime.stats import (
    DEFAULT_ALPHA, DEFAULT_MIN_EFFECT, VERDICT_SAME, LatencyStats, SampleComparison, compare_samples, summarize,
)

log = logging.getLogger("edgerun.record")

RECORD_VERSION = 1

MEASURED = "measured"  # on real hardware, by edgerun
EMULATED = "emulated"  # under an emulator (qemu) or a stand-in (pty serial): checks function, not speed
ESTIMATED = "estimated"  # computed, not observed (planned memory from the program; Vela estimates)
SOURCES = (MEASURED, EMULATED, ESTIMATED)


class RunFailed(AnalysisError):
    """The runner did not produce a successful run to analyse."""

    default_stage = "run"


# ------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class Sample:
    index: int  # within its phase (warm-up or timed), from 0
    warmup: bool
    execute_ns: int  # steady clock around execute() alone
    wall_ns: int | None = None  # steady clock around the iteration (bind inputs, execute, outputs)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    target: str | None = None
    arch: str | None = None
    scheme: str | None = None
    recipe_hash: str | None = None
    artifact: str | None = None  # export directory, as given
    inputs: tuple[dict, ...] = ()


@dataclass(frozen=True)
class Provenance:
    edgerun_version: str
    git_commit: str | None  # of the edgerun source tree, best effort
    runner_version: str | None
    runner_source_hash: str | None
    runner_build: dict | None  # compiler, build type, flags (from the runner's header)
    executorch_version: str | None  # of the runner on the device
    artifact_executorch_version: str | None  # the artifact was exported with this
    torch_version: str | None  # the artifact was exported with this
    protocol: int | None
    threads: int | None  # in effect, read back from the pool
    hardware_threads: int | None


@dataclass(frozen=True)
class Memory:
    planned_bytes: int | None  # non-constant buffers planned in the program (from the manifest)
    peak_rss_bytes: int | None  # VmHWM of the runner
    rss_bytes: int | None  # VmRSS at the end of the run
    pte_bytes: int | None
    bundle_bytes: int | None  # the runtime bundle pushed to the device
    load_ms: float | None  # program + method load
    program_load_ms: float | None
    method_load_ms: float | None
    sources: Mapping[str, str] = field(default_factory=dict)  # field name -> measured/emulated/estimated


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    created_at: str  # ISO 8601, UTC
    model: ModelInfo
    device_name: str
    device: Mapping[str, Any]  # DeviceInfo as a dict (arch, cpu_model, cores, governor, freq, temperature, ...)
    provenance: Provenance
    source: str  # measured | emulated: the label of every timing in this record
    samples: tuple[Sample, ...]  # warm-up and timed, in order
    latency: LatencyStats  # of the timed execute_ns
    wall: LatencyStats | None  # of the timed wall_ns
    memory: Memory
    operators: OperatorProfile | None = None
    accuracy: AccuracyResult | None = None
    warnings: tuple[str, ...] = ()
    sweep_id: str | None = None  # bench: the sweep this run is a cell of
    cell: str | None = None  # bench: the cell key (model/scheme/target/device/threads)
    record_version: int = RECORD_VERSION

    # -- views
    @property
    def timed_execute_ns(self) -> list[int]:
        return [s.execute_ns for s in self.samples if not s.warmup]

    @property
    def labels(self) -> dict[str, str]:
        """Where each number group came from."""
        out = {"latency": self.source, **{f"memory.{k}": v for k, v in self.memory.sources.items()}}
        if self.operators is not None:
            out["operators"] = self.source
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy.source
        return out

    # -- serialisation (the store and --json use these)
    def to_dict(self) -> dict:
        return {
            "record_version": self.record_version,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "model": {**asdict(self.model), "inputs": list(self.model.inputs)},
            "device_name": self.device_name,
            "device": dict(self.device),
            "provenance": asdict(self.provenance),
            "source": self.source,
            "labels": self.labels,
            "samples": [asdict(s) for s in self.samples],
            "latency": self.latency.to_dict(),
            "wall": self.wall.to_dict() if self.wall else None,
            "memory": {**asdict(self.memory), "sources": dict(self.memory.sources)},
            "operators": self.operators.to_dict() if self.operators else None,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
            "warnings": list(self.warnings),
            "sweep_id": self.sweep_id,
            "cell": self.cell,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunRecord":
        model = dict(d["model"])
        model["inputs"] = tuple(model.get("inputs") or ())
        return cls(
            run_id=d["run_id"], created_at=d["created_at"],
            model=ModelInfo(**{k: model.get(k) for k in ModelInfo.__dataclass_fields__ if k in model}),
            device_name=d["device_name"], device=dict(d.get("device") or {}),
            provenance=Provenance(**{k: d["provenance"].get(k) for k in Provenance.__dataclass_fields__}),
            source=d["source"],
            samples=tuple(Sample(**s) for s in d.get("samples", [])),
            latency=LatencyStats.from_dict(d["latency"]),
            wall=LatencyStats.from_dict(d["wall"]) if d.get("wall") else None,
            memory=Memory(**{k: d["memory"].get(k) for k in Memory.__dataclass_fields__}),
            operators=OperatorProfile.from_dict(d["operators"]) if d.get("operators") else None,
            accuracy=AccuracyResult.from_dict(d["accuracy"]) if d.get("accuracy") else None,
            warnings=tuple(d.get("warnings") or ()),
            sweep_id=d.get("sweep_id"), cell=d.get("cell"),
            record_version=d.get("record_version", RECORD_VERSION),
        )


# ---------------------------------------------------------------------------------- analyse
def cell_key(model: str, target: str, scheme: str, device: str, threads: int | None = None) -> str:
    """The key of one bench cell (``RunRecord.cell``): a resumed sweep skips cells already stored."""
    return "/".join([model, target, scheme, device, f"t{threads if threads is not None else 'default'}"])


def new_run_id(now: _dt.datetime | None = None) -> str:
    """Short and typeable: ``r-YYYYMMDD-xxxxxx`` (6 random hex digits)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"r-{now:%Y%m%d}-{secrets.token_hex(3)}"


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


def _edgerun_version() -> str:
    from edgerun import __version__

    return __version__


def _as_dict(info: Any) -> dict:
    if info is None:
        return {}
    if hasattr(info, "to_json"):
        return dict(info.to_json())
    if hasattr(info, "__dataclass_fields__"):
        return asdict(info)
    return dict(info)


def _runner_failure(lines: Sequence[Mapping[str, Any]]) -> RunFailed:
    err = next((ln for ln in reversed(lines) if ln.get("type") == "error"), None)
    timed = sum(1 for ln in lines if ln.get("type") == "iteration" and not ln.get("warmup"))
    if err is not None:
        tail = "; ".join(err.get("log") or [])[-400:]
        return RunFailed(
            f"the runner stopped at stage '{err.get('stage')}' with {err.get('error')}: {err.get('message')}"
            + (f" (log: {tail})" if tail else "") + f" after {timed} timed iteration(s).",
            stage=f"run/{err.get('stage', 'unknown')}",
            hint="Check the artifact targets this device (edgerun runs the same .pte with --debug for the full log).")
    return RunFailed(
        f"the runner ended without a summary line after {timed} timed iteration(s): it was killed "
        "(out of memory? timeout?) or its output was cut.",
        hint="Look at the device's stderr kept with the run; try fewer iterations or a smaller model.")


def analyse(
    runner_lines: Sequence[Mapping[str, Any]],
    manifest: Mapping[str, Any],
    device_info: Any,
    *,
    device_name: str = "local",
    etdump_path: str | Path | None = None,
    etrecord_path: str | Path | None = None,
    outputs: Sequence | None = None,
    reference: Sequence | None = None,
    output_names: Sequence[str] | None = None,
    task_accuracy: float | None = None,
    task_samples: int | None = None,
    artifact_dir: str | Path | None = None,
    bundle_bytes: int | None = None,
    skip_runs: int = 0,
    sweep_id: str | None = None,
    cell: str | None = None,
    run_id: str | None = None,
    seed: int = 0,
) -> RunRecord:
    """Build the run record of one runner invocation.

    ``runner_lines``: the parsed JSON lines of ``edgerun-runner`` (protocol 1: header, load,
    iteration..., summary | error). ``outputs``/``reference``: the pulled outputs and the eager
    reference outputs, either one list of arrays or one list per test vector. A failed run (error
    line, no summary, zero timed iterations) raises :class:`RunFailed`; an ETDump that does not parse
    keeps the run and says so in ``warnings``.
    """
    lines = list(runner_lines)
    header = next((ln for ln in lines if ln.get("type") == "header"), {})
    load = next((ln for ln in lines if ln.get("type") == "load"), {})
    summary = next((ln for ln in lines if ln.get("type") == "summary"), None)
    iterations = [ln for ln in lines if ln.get("type") == "iteration"]
    if summary is None or any(ln.get("type") == "error" for ln in lines):
        raise _runner_failure(lines)
    samples = tuple(Sample(index=int(it["index"]), warmup=bool(it.get("warmup")), execute_ns=int(it["execute_ns"]),
                           wall_ns=int(it["wall_ns"]) if it.get("wall_ns") is not None else None)
                    for it in iterations)
    timed = [s for s in samples if not s.warmup]
    if not timed:
        raise RunFailed("the run finished with zero successful timed iterations: there is nothing to measure.",
                        stage="analyse", hint="Run with --iterations 1 or more.")

    device = _as_dict(device_info)
    source = EMULATED if device.get("emulated") else MEASURED
    warnings: list[str] = []
    if source == EMULATED:
        warnings.append(f"emulated device ({device.get('emulator') or 'emulator'}): timings check function, "
                        "not speed; do not compare them with real hardware")
    build = header.get("build") or {}
    if build.get("build_type") and str(build["build_type"]).lower() not in ("release", "relwithdebinfo", "minsizerel"):
        warnings.append(f"the runner is a {build['build_type']} build: timings are not representative")

    latency = summarize([s.execute_ns for s in timed], seed=seed, what="execute")
    walls = [s.wall_ns for s in timed if s.wall_ns is not None]
    wall = summarize(walls, seed=seed, what="wall") if len(walls) == len(timed) else None
    warnings.extend(latency.warnings)

    versions = manifest.get("versions") or {}
    target = manifest.get("target") or {}
    scheme = manifest.get("scheme") or {}
    model = ModelInfo(
        name=(manifest.get("model") or {}).get("name") or "unknown", target=target.get("name"),
        arch=target.get("arch") or header.get("arch"), scheme=scheme.get("name"), recipe_hash=scheme.get("recipe_hash"),
        artifact=str(artifact_dir) if artifact_dir is not None else None,
        inputs=tuple(load.get("inputs") or manifest.get("inputs") or ()),
    )
    if header.get("executorch_version") and versions.get("executorch") and \
            header["executorch_version"] != versions["executorch"]:
        warnings.append(f"the runner's ExecuTorch {header['executorch_version']} differs from the artifact's "
                        f"{versions['executorch']}")
    provenance = Provenance(
        edgerun_version=_edgerun_version(), git_commit=edgerun_git_commit(),
        runner_version=header.get("runner_version"), runner_source_hash=header.get("runner_source_hash"),
        runner_build=build or None, executorch_version=header.get("executorch_version"),
        artifact_executorch_version=versions.get("executorch"), torch_version=versions.get("torch"),
        protocol=header.get("protocol"), threads=header.get("threads"),
        hardware_threads=header.get("hardware_threads"),
    )

    def kb(v):
        return int(v) * 1024 if v is not None else None

    def ms(v):
        return float(v) / 1e6 if v is not None else None

    pte_bytes = manifest.get("pte_bytes")
    mem_sources = {}
    for name, value, src in (("planned_bytes", manifest.get("planned_memory_bytes"), ESTIMATED),
                             ("peak_rss_bytes", summary.get("peak_rss_kb"), source),
                             ("rss_bytes", summary.get("rss_kb"), source),
                             ("pte_bytes", pte_bytes, MEASURED), ("bundle_bytes", bundle_bytes, MEASURED),
                             ("load_ms", load.get("load_ns"), source)):
        if value is not None:
            mem_sources[name] = src
    memory = Memory(
        planned_bytes=manifest.get("planned_memory_bytes"), peak_rss_bytes=kb(summary.get("peak_rss_kb")),
        rss_bytes=kb(summary.get("rss_kb")), pte_bytes=pte_bytes, bundle_bytes=bundle_bytes,
        load_ms=ms(load.get("load_ns")), program_load_ms=ms(load.get("program_load_ns")),
        method_load_ms=ms(load.get("method_load_ns")), sources=mem_sources,
    )

    operators = None
    if etdump_path is not None:
        try:
            operators = operator_table(etdump_path, etrecord_path, skip_runs=skip_runs,
                                       measured_execute_ms=latency.median_ms)
            warnings.extend(operators.warnings)
        except ProfilingError as exc:
            log.warning("%s", exc.paragraph())
            warnings.append(f"no operator table: {exc.message}")

    accuracy = None
    if outputs is not None and reference is not None:
        def per_vector(x):
            return [list(x)] if len(x) and isinstance(x[0], np.ndarray) else [list(v) for v in x]

        names = output_names or [o.get("name") for o in manifest.get("outputs") or []] or None
        accuracy = compare_vectors(per_vector(outputs), per_vector(reference), names=names, source=source)
    if task_accuracy is not None:
        base = accuracy or AccuracyResult(source=source, reference="labels", outputs=(), vectors=0)
        accuracy = replace(base, task_accuracy=float(task_accuracy), task_samples=task_samples)

    return RunRecord(
        run_id=run_id or new_run_id(), created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=model, device_name=device_name, device=device, provenance=provenance, source=source,
        samples=samples, latency=latency, wall=wall, memory=memory, operators=operators, accuracy=accuracy,
        warnings=tuple(warnings), sweep_id=sweep_id, cell=cell,
    )


# ------------------------------------------------------------------------------- flat view
def flat_row(r: RunRecord) -> dict[str, Any]:
    """The one flat view of a record; column names carry units. Every table printer uses this."""
    acc = r.accuracy
    top1 = [o.top1_agreement for o in acc.outputs if o.top1_agreement is not None] if acc else []
    ops = r.operators
    return {
        "run_id": r.run_id,
        "created_at": r.created_at,
        "model": r.model.name,
        "scheme": r.model.scheme,
        "target": r.model.target,
        "device": r.device_name,
        "arch": r.device.get("arch") or r.model.arch,
        "cpu": r.device.get("cpu_model"),
        "source": r.source,
        "threads": r.provenance.threads,
        "samples": r.latency.n,
        "median_ms": r.latency.median_ms,
        "ci95_low_ms": r.latency.ci95_low_ms,
        "ci95_high_ms": r.latency.ci95_high_ms,
        "p90_ms": r.latency.p90_ms,
        "p99_ms": r.latency.p99_ms,
        "mean_ms": r.latency.mean_ms,
        "std_ms": r.latency.std_ms,
        "min_ms": r.latency.min_ms,
        "max_ms": r.latency.max_ms,
        "cv": r.latency.cv,
        "wall_median_ms": r.wall.median_ms if r.wall else None,
        "load_ms": r.memory.load_ms,
        "peak_rss_bytes": r.memory.peak_rss_bytes,
        "planned_bytes": r.memory.planned_bytes,
        "pte_bytes": r.memory.pte_bytes,
        "bundle_bytes": r.memory.bundle_bytes,
        "op_sum_ms": ops.op_sum_ms if ops else None,
        "op_coverage": ops.coverage if ops else None,
        "min_snr_db": acc.min_snr_db if acc and acc.outputs else None,
        "top1_agreement": min(top1) if top1 else None,
        "task_accuracy": acc.task_accuracy if acc else None,
        "unstable": bool(r.latency.warnings),
        "governor": r.device.get("governor"),
        "freq_khz": r.device.get("freq_khz"),
        "temperature_c": r.device.get("temperature_c"),
        "recipe_hash": r.model.recipe_hash,
        "runner_version": r.provenance.runner_version,
        "executorch_version": r.provenance.executorch_version,
        "edgerun_version": r.provenance.edgerun_version,
        "git_commit": r.provenance.git_commit,
    }


# ---------------------------------------------------------------------------------- compare
@dataclass(frozen=True)
class MetricDelta:
    metric: str
    a: float | None
    b: float | None
    delta: float | None  # b - a
    delta_rel: float | None  # (b - a) / a
    better: str  # "lower" or "higher": which direction is an improvement


@dataclass(frozen=True)
class RunComparison:
    run_a: str
    run_b: str
    verdict: str  # from the execute-time samples: faster / slower / no significant change (B vs A)
    reliable: bool  # False when either run was unstable (CV, drift, too few samples) or emulated
    latency: SampleComparison
    metrics: tuple[MetricDelta, ...]
    operators: tuple[MetricDelta, ...]  # per operator median_ms, matched by name
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"run_a": self.run_a, "run_b": self.run_b, "verdict": self.verdict, "reliable": self.reliable,
                "latency": self.latency.to_dict(),
                "metrics": [asdict(m) for m in self.metrics], "operators": [asdict(m) for m in self.operators],
                "warnings": list(self.warnings)}


_COMPARED = (  # (flat_row column, better direction)
    ("median_ms", "lower"), ("p90_ms", "lower"), ("p99_ms", "lower"), ("mean_ms", "lower"), ("cv", "lower"),
    ("load_ms", "lower"), ("peak_rss_bytes", "lower"), ("planned_bytes", "lower"), ("pte_bytes", "lower"),
    ("min_snr_db", "higher"), ("top1_agreement", "higher"), ("task_accuracy", "higher"),
)


def _delta(metric: str, a, b, better: str) -> MetricDelta:
    def finite(x):
        return x is not None and not (isinstance(x, float) and not math.isfinite(x))

    d = b - a if finite(a) and finite(b) else None
    rel = d / a if d is not None and a not in (0, 0.0) else None
    return MetricDelta(metric=metric, a=a, b=b, delta=d, delta_rel=rel, better=better)


def compare_records(a: RunRecord, b: RunRecord, *, alpha: float = DEFAULT_ALPHA,
                    min_effect: float = DEFAULT_MIN_EFFECT) -> RunComparison:
    """B against A: a U test on the raw execute samples plus deltas of every comparable metric."""
    warnings: list[str] = []
    if a.model.name != b.model.name:
        warnings.append(f"different models ({a.model.name} vs {b.model.name}): the comparison is allowed "
                        "but says nothing about a regression")
    for what, x, y in (("devices", a.device_name, b.device_name), ("schemes", a.model.scheme, b.model.scheme),
                       ("threads", a.provenance.threads, b.provenance.threads),
                       ("targets", a.model.target, b.model.target)):
        if x != y:
            warnings.append(f"different {what}: {x} vs {y}")
    if EMULATED in (a.source, b.source):
        warnings.append("at least one run is emulated: its timings check function, not speed")
    for r in (a, b):
        if r.latency.warnings:
            warnings.append(f"{r.run_id}: {'; '.join(r.latency.warnings)}")

    latency = compare_samples(a.timed_execute_ns, b.timed_execute_ns, alpha=alpha, min_effect=min_effect)
    fa, fb = flat_row(a), flat_row(b)
    metrics = tuple(_delta(m, fa[m], fb[m], better) for m, better in _COMPARED)
    ops: list[MetricDelta] = []
    if a.operators and b.operators:
        rows_b = {r.name: r for r in b.operators.rows}
        for ra in a.operators.rows:
            if ra.name in rows_b:
                ops.append(_delta(ra.name, ra.median_ms, rows_b[ra.name].median_ms, "lower"))
    # A verdict between unstable runs may measure the machine (other load, throttling), not the program.
    reliable = not (a.latency.warnings or b.latency.warnings or EMULATED in (a.source, b.source))
    if not reliable and latency.verdict != VERDICT_SAME:
        warnings.append(f"'{latency.verdict}' is unreliable: a run was unstable or emulated, so the machine may "
                        "have changed rather than the program; re-run both on a quiet machine (or interleaved)")
    return RunComparison(run_a=a.run_id, run_b=b.run_id, verdict=latency.verdict, reliable=reliable, latency=latency,
                         metrics=metrics, operators=tuple(ops), warnings=tuple(warnings))
