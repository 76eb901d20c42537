"""ETDump (+ ETRecord) → one normalised per-operator table, through ExecuTorch's Inspector.

What the Inspector gives for one program run (an "Execute" event block), per instruction:

* ``OPERATOR_CALL`` around a non-delegated kernel, with a nested ``native_call_<kernel>`` event;
  the ETRecord adds the ATen ``op_types`` (e.g. ``aten.mean.dim``);
* ``DELEGATE_CALL`` around a call into a backend, whose backend name (``XnnpackBackend``) and lowered
  ``op_types`` come from the ETRecord; nested inside it the backend's own events (XNNPACK's
  ``Convolution (NHWC, F32) IGEMM #3`` …), which carry no ``op_types``;
* ``Method::execute`` around the whole run.

Top-level rows are the ``OPERATOR_CALL`` s (grouped by operator, ``count`` = calls per iteration)
and the ``DELEGATE_CALL`` s (one row per call). Only those add up to the total; the nested backend
events are kept apart as ``delegate_ops`` (a breakdown inside a delegate call, never added again).

Times: the Inspector is asked for milliseconds. For every row, the time of one iteration is the sum
over its instances in that iteration; ``median_ms`` is the median over iterations and
``samples_ms`` keeps every per-iteration value.

Warm-up: the runner records the ETDump of the **timed** iterations only (``--etdump``, see
``runtime/native/PROTOCOL.md``), so nothing needs dropping. An ETDump that does contain warm-up runs
(e.g. one written by the pybindings) is trimmed with ``skip_runs=W``, which drops the first W runs
of every event.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from edgerun.core.errors import AnalysisError

KIND_OPERATOR = "operator"
KIND_DELEGATE_CALL = "delegate_call"
KIND_DELEGATE_OP = "delegate_op"

# The sum of operator times must be within this of the measured execute time for the table to be
# trusted as an account of where the time went.
COVERAGE_TOLERANCE = 0.10


class ProfilingError(AnalysisError):
    """An ETDump or ETRecord that cannot be read or makes no sense."""

    default_stage = "operator profile"


@dataclass(frozen=True)
class OperatorRow:
    """One operator (all its calls in an iteration) or one delegate call, or a backend-internal op."""

    name: str
    kind: str  # operator | delegate_call | delegate_op
    delegated: bool
    backend: str | None  # e.g. XnnpackBackend; None for portable/optimized kernels
    count: int  # instances per iteration
    median_ms: float  # median over iterations of the per-iteration time
    share: float  # median_ms / sum of top-level medians (unitless); delegate_op rows: of the same total
    op_types: tuple[str, ...] = ()  # ATen ops behind the row (from the ETRecord)
    samples_ms: tuple[float, ...] = ()  # per-iteration time, every iteration kept

    def to_dict(self) -> dict:
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        d["samples_ms"] = list(self.samples_ms)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OperatorRow":
        d = dict(d)
        d["op_types"] = tuple(d.get("op_types") or ())
        d["samples_ms"] = tuple(d.get("samples_ms") or ())
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class OperatorProfile:
    rows: tuple[OperatorRow, ...]  # top-level: operators and delegate calls, slowest first
    delegate_ops: tuple[OperatorRow, ...]  # backend-internal breakdown, slowest first
    iterations: int  # runs used (after skip_runs)
    skipped_runs: int
    op_sum_ms: float  # median over iterations of the sum of top-level rows
    method_execute_ms: float | None  # median of the ETDump's own Method::execute event
    measured_execute_ms: float | None  # the runner's median execute time, when given
    coverage: float | None  # op_sum_ms / measured_execute_ms
    load_ms: float | None = None  # Method::init + Program::load_method, when recorded
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def top(self, n: int = 10) -> tuple[OperatorRow, ...]:
        return self.rows[:n]

    def grouped(self) -> tuple[OperatorRow, ...]:
        """The top-level rows with the calls of one kind summed: delegate calls whose label differs only in
        their ordinal (``XnnpackBackend[linear×4+…] #1`` … ``#30``, one per layer of an LLM) become one row,
        ``count`` = calls per iteration, its time the median over iterations of their summed per-iteration
        times (so a decode step's split reads per kind of work, not per layer). Slowest first."""
        groups: "OrderedDict[tuple[str, str], list[OperatorRow]]" = OrderedDict()
        for r in self.rows:
            groups.setdefault((_INSTANCE_SUFFIX.sub("", r.name), r.kind), []).append(r)
        denom = self.op_sum_ms if self.op_sum_ms > 0 else 1.0
        out = []
        for (name, _), rows in groups.items():
            if len(rows) == 1:
                out.append(rows[0])
                continue
            n = min(len(r.samples_ms) for r in rows)
            series = np.sum([np.asarray(r.samples_ms[:n]) for r in rows], axis=0) if n else None
            med = float(np.median(series)) if series is not None else sum(r.median_ms for r in rows)
            first = rows[0]
            out.append(OperatorRow(name=name, kind=first.kind, delegated=first.delegated, backend=first.backend,
                                   count=sum(r.count for r in rows), median_ms=med, share=med / denom,
                                   op_types=first.op_types,
                                   samples_ms=tuple(float(v) for v in series) if series is not None else ()))
        return tuple(sorted(out, key=lambda r: r.median_ms, reverse=True))

    def to_dict(self) -> dict:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "delegate_ops": [r.to_dict() for r in self.delegate_ops],
            "iterations": self.iterations,
            "skipped_runs": self.skipped_runs,
            "op_sum_ms": self.op_sum_ms,
            "method_execute_ms": self.method_execute_ms,
            "measured_execute_ms": self.measured_execute_ms,
            "coverage": self.coverage,
            "load_ms": self.load_ms,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "OperatorProfile":
        return cls(
            rows=tuple(OperatorRow.from_dict(r) for r in d.get("rows", [])),
            delegate_ops=tuple(OperatorRow.from_dict(r) for r in d.get("delegate_ops", [])),
            iterations=d["iterations"], skipped_runs=d.get("skipped_runs", 0), op_sum_ms=d["op_sum_ms"],
            method_execute_ms=d.get("method_execute_ms"), measured_execute_ms=d.get("measured_execute_ms"),
            coverage=d.get("coverage"), load_ms=d.get("load_ms"), warnings=tuple(d.get("warnings") or ()),
        )


def _check_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ProfilingError(f"{what} {p} does not exist.",
                             hint="Run with --etdump to record one; the export directory holds model.etrecord.")
    if p.stat().st_size == 0:
        raise ProfilingError(f"{what} {p} is empty.",
                             hint="The runner may have been killed while writing it; run the profile again.")
    return p


# ExecuTorch's ETRecord deserialisation is not thread-safe (two threads parsing at once fail), so
# every Inspector is built under one lock; callers may analyse runs from several threads.
_INSPECTOR_LOCK = threading.Lock()


def load_inspector(etdump_path: str | os.PathLike, etrecord_path: str | os.PathLike | None = None):
    """Build ExecuTorch's Inspector, translating its failures into :class:`ProfilingError`."""
    etdump = _check_file(etdump_path, "ETDump")
    etrecord = None
    if etrecord_path is not None:
        rec_path = _check_file(etrecord_path, "ETRecord")
        try:
            from executorch.devtools.etrecord import parse_etrecord

            with _INSPECTOR_LOCK:
                etrecord = parse_etrecord(str(rec_path))
        except Exception as exc:  # a zip/pickle/flatbuffer error: say which file, keep the cause
            raise ProfilingError(
                f"ETRecord {rec_path} does not parse ({type(exc).__name__}: {exc}).",
                hint="Re-export the artifact with the same executorch version as this edgerun.",
            ) from exc
    try:
        from executorch.devtools import Inspector

        with _INSPECTOR_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Output Buffer not found": we profile, not debug
            return Inspector(etdump_path=str(etdump), etrecord=etrecord)
    except Exception as exc:
        raise ProfilingError(
            f"ETDump {etdump} does not parse ({type(exc).__name__}: {str(exc)[:200]}).",
            hint="Was it written completely by an executorch runner of the same version? Run the profile again.",
        ) from exc


_INSTANCE_SUFFIX = re.compile(r"\s+#\d+$")


def _per_iteration(raws: Iterable[list[float]], runs: int, skip: int) -> np.ndarray:
    """Sum the instances of a row per iteration; instances with a different run count are an error."""
    total = np.zeros(runs - skip)
    for raw in raws:
        if len(raw) != runs:
            raise ProfilingError(
                f"an event was recorded {len(raw)} times in a block of {runs} runs; "
                "the ETDump mixes runs of different shapes.",
                hint="Profile one method with fixed inputs per ETDump.")
        total += np.asarray(raw[skip:], dtype=np.float64)
    return total


def _op_label(op_types: list[str]) -> str:
    """A short label for the ops lowered into one delegate call: the most frequent first, with counts."""
    def short(t: str) -> str:
        ns, _, rest = t.partition(".")
        return rest.split(".")[0] if rest else ns  # aten.convolution.default -> convolution

    counts: "OrderedDict[str, int]" = OrderedDict()
    for t in op_types:
        counts[short(t)] = counts.get(short(t), 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: ties keep graph order
    label = "+".join(f"{name}×{n}" if n > 1 else name for name, n in ranked[:3])
    if len(ranked) > 3:
        label += f"+{len(ranked) - 3} more"
    return label


def _node_ops(inspector) -> dict[str, str]:
    """Node name -> operator, from the Inspector's graphs of the ETRecord (empty without one)."""
    out: dict[str, str] = {}

    def walk(graph) -> None:
        for el in getattr(graph, "elements", None) or ():
            if getattr(el, "elements", None) is not None:
                walk(el)
            name, op = getattr(el, "name", None), getattr(el, "op", None)
            if name and op:
                out.setdefault(name, op)

    for graph in (getattr(inspector, "op_graph_dict", None) or {}).values():
        walk(graph)
    return out


def unique_op_types(event, node_ops: dict[str, str]) -> list[str]:
    """The operators of the nodes behind an event, each node once.

    The Inspector appends a node's op once per debug handle that names it, and a delegate's handle
    list repeats handles (a BatchNorm fused into its convolution is listed with both), so its
    ``op_types`` over-count: 18 BatchNorms showed as x36. The event's ``stack_traces`` is keyed by
    node name, one entry per node: count those."""
    names = list(getattr(event, "stack_traces", None) or {})
    ops = [node_ops[n] for n in names if n in node_ops]
    return ops if ops else list(event.op_types)


def _execute_block(inspector):
    blocks = [b for b in inspector.event_blocks if any(e.name == "Method::execute" for e in b.events)]
    if not blocks:
        blocks = [b for b in inspector.event_blocks
                  if any(e.name in ("OPERATOR_CALL", "DELEGATE_CALL") for e in b.events)]
    if not blocks:
        raise ProfilingError("the ETDump holds no executed run (no Method::execute, operator or delegate event).",
                             hint="Was the runner started with --etdump and did at least one timed iteration finish?")
    # Several blocks means runs with different event signatures; the largest is the steady state.
    return max(blocks, key=lambda b: max((len(e.perf_data.raw) for e in b.events if e.perf_data), default=0)), len(blocks)


def operator_table(
    etdump_path: str | os.PathLike,
    etrecord_path: str | os.PathLike | None = None,
    *,
    skip_runs: int = 0,
    measured_execute_ms: float | None = None,
    inspector=None,
) -> OperatorProfile:
    """The per-operator profile of an ETDump (with the artifact's ETRecord for names/backends)."""
    insp = inspector if inspector is not None else load_inspector(etdump_path, etrecord_path)
    block, n_blocks = _execute_block(insp)
    warn: list[str] = []
    if n_blocks > 1:
        warn.append(f"the ETDump holds {n_blocks} kinds of run; only the most frequent ({block.name}) is tabled")
    if etrecord_path is None and inspector is None:
        warn.append("no ETRecord: operator names are kernel names and delegate backends are unknown")

    events = [e for e in block.events if e.perf_data is not None and e.perf_data.raw]
    runs = max(len(e.perf_data.raw) for e in events)
    if skip_runs < 0 or skip_runs >= runs:
        raise ProfilingError(f"skip_runs={skip_runs} leaves no run of the {runs} in the ETDump.",
                             stage="arguments", hint=f"Use 0 <= skip_runs < {runs}.")
    iters = runs - skip_runs

    # Kernel names of OPERATOR_CALLs come from their nested native_call_* event (same instruction).
    kernel_of: dict[int, str] = {}
    for e in events:
        if e.name.startswith("native_call_") and e._instruction_id is not None:
            kernel_of[e._instruction_id] = e.name.removeprefix("native_call_")

    node_ops = _node_ops(insp)
    operators: "OrderedDict[str, dict]" = OrderedDict()
    calls: list[dict] = []
    inner: "OrderedDict[tuple[str, str | None], dict]" = OrderedDict()
    method_execute = None
    for e in events:
        raw = e.perf_data.raw
        if e.name == "Method::execute":
            method_execute = _per_iteration([raw], runs, skip_runs)
        elif e.name == "OPERATOR_CALL":
            name = "+".join(e.op_types) if e.op_types else kernel_of.get(e._instruction_id, f"instruction {e._instruction_id}")
            row = operators.setdefault(name, {"raws": [], "op_types": tuple(e.op_types)})
            row["raws"].append(raw)
        elif e.name == "DELEGATE_CALL":
            backend = e.delegate_backend_name or "unknown backend"
            ops = unique_op_types(e, node_ops)
            label = _op_label(ops)
            calls.append({"name": f"{backend}[{label}]" if label else backend, "backend": backend,
                          "raws": [raw], "op_types": tuple(ops)})
        elif e.is_delegated_op:
            name = _INSTANCE_SUFFIX.sub("", e.name)
            row = inner.setdefault((name, e.delegate_backend_name), {"raws": []})
            row["raws"].append(raw)
        # native_call_* is nested in its OPERATOR_CALL: not a row of its own.

    # Delegate calls with the same label get an ordinal so each call keeps its own row.
    seen: dict[str, int] = {}
    for c in calls:
        seen[c["name"]] = seen.get(c["name"], 0) + 1
    ordinal: dict[str, int] = {}
    for c in calls:
        if seen[c["name"]] > 1:
            ordinal[c["name"]] = ordinal.get(c["name"], 0) + 1
            c["name"] = f"{c['name']} #{ordinal[c['name']]}"

    top_series: list[tuple[dict, np.ndarray]] = []
    for name, row in operators.items():
        top_series.append(({"name": name, "kind": KIND_OPERATOR, "delegated": False, "backend": None,
                            "count": len(row["raws"]), "op_types": row["op_types"]},
                           _per_iteration(row["raws"], runs, skip_runs)))
    for c in calls:
        top_series.append(({"name": c["name"], "kind": KIND_DELEGATE_CALL, "delegated": True, "backend": c["backend"],
                            "count": 1, "op_types": c["op_types"]}, _per_iteration(c["raws"], runs, skip_runs)))
    if not top_series:
        raise ProfilingError("the ETDump's runs contain no operator or delegate call events.",
                             hint="Was the runner built with event tracing (ET_EVENT_TRACER_ENABLED)?")

    per_iter_sum = np.sum([s for _, s in top_series], axis=0)
    op_sum = float(np.median(per_iter_sum))
    denom = op_sum if op_sum > 0 else 1.0

    def make(meta: dict, series: np.ndarray) -> OperatorRow:
        med = float(np.median(series))
        return OperatorRow(name=meta["name"], kind=meta["kind"], delegated=meta["delegated"], backend=meta["backend"],
                           count=meta["count"], median_ms=med, share=med / denom, op_types=tuple(meta["op_types"]),
                           samples_ms=tuple(float(v) for v in series))

    rows = sorted((make(m, s) for m, s in top_series), key=lambda r: r.median_ms, reverse=True)
    inner_rows = sorted(
        (make({"name": n, "kind": KIND_DELEGATE_OP, "delegated": True, "backend": b, "count": len(r["raws"]),
               "op_types": ()}, _per_iteration(r["raws"], runs, skip_runs)) for (n, b), r in inner.items()),
        key=lambda r: r.median_ms, reverse=True)

    load_ms = None
    load_events = [e for b in insp.event_blocks for e in b.events
                   if e.name in ("Method::init", "Program::load_method") and e.perf_data is not None]
    if load_events:
        load_ms = float(max(np.median(e.perf_data.raw) for e in load_events))

    coverage = None
    if measured_execute_ms is not None and measured_execute_ms > 0:
        coverage = op_sum / measured_execute_ms
        if abs(coverage - 1.0) > COVERAGE_TOLERANCE:
            warn.append(f"operator times add up to {coverage:.0%} of the measured execute time "
                        f"({op_sum:.3f} of {measured_execute_ms:.3f} ms): outside ±{COVERAGE_TOLERANCE:.0%}")
    return OperatorProfile(
        rows=tuple(rows), delegate_ops=tuple(inner_rows), iterations=iters, skipped_runs=skip_runs,
        op_sum_ms=op_sum,
        method_execute_ms=float(np.median(method_execute)) if method_execute is not None else None,
        measured_execute_ms=measured_execute_ms, coverage=coverage, load_ms=load_ms, warnings=tuple(warn),
    )
