"""Printers for run records: HTML (plots embedded), markdown, JSON and CSV — all from one schema.

Every table here is printed from :func:`edgerun.runtime.record.flat_row` (the one flat view of a
:class:`~edgerun.runtime.record.RunRecord`) and every plot from the record's raw samples and
operator rows, so the formats never disagree. Plots use matplotlib's Agg canvas directly (no
pyplot global state, no display) and are embedded as base64 PNG, so an HTML report is one
self-contained file.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math
from typing import Any, Callable, Sequence

from edgerun.core.errors import UsageError
from edgerun.core.text import sanitize_text
from edgerun.runtime import columns as cols
from edgerun.runtime.columns import ALWAYS, NEVER, cap_name, format_delta
from edgerun.runtime.record import EMULATED, ESTIMATED, MEASURED, RunComparison, RunRecord, compare_records, flat_row

FORMATS = ("html", "md", "json", "csv")

# Columns shown even when they are the same for every run (the point of the report): from the registry.
ALWAYS_COLUMNS = tuple(c.name for c in cols.COLUMNS if c.show == ALWAYS)
# Never tabulated (versions line, each run's section, CSV and JSON): from the registry.
HIDDEN_COLUMNS = tuple(c.name for c in cols.COLUMNS if c.show == NEVER)


# ------------------------------------------------------------------------------- formatting
def fmt_value(column: str, value: Any) -> str:
    """One cell, formatted by its column's unit in the registry (:func:`edgerun.runtime.columns.format_value`)."""
    return cols.format_value(column, value)


def fmt_change(m) -> str:
    """The change of one compared metric: relative for ms/bytes, absolute for dB and fractions."""
    return format_delta(cols.Unit(m.unit), m.delta, m.delta_rel)


def varying_columns(rows: Sequence[dict]) -> tuple[list[str], dict[str, Any]]:
    """(columns to tabulate, columns common to every run and their value)."""
    columns, common = [], {}
    for col in rows[0]:
        if col in HIDDEN_COLUMNS:
            continue
        values = [r[col] for r in rows]
        if col in ALWAYS_COLUMNS or (len(rows) > 1 and any(v != values[0] for v in values)):
            columns.append(col)
        elif values[0] is not None:
            common[col] = values[0]
    return columns, common


# ------------------------------------------------------------------------------- kinds of run
FORWARD, LLM, TRAIN = "forward", "llm", "train"


@dataclasses.dataclass(frozen=True)
class RunKind:
    """What a run's samples time, read from its stored record (:func:`run_kind`). Two runs are compared
    only when their kinds are equal: a ``tg32`` run's samples are decode steps, a ``pp64`` run's are
    prefills of 64 tokens, a score run's are windows, a training run's are optimizer steps, and a
    forward run's are calls of ``forward`` on inputs of given shapes.

    ``kind``: forward | llm | train. ``test``: forward, the LLM test (``generate``, ``ppP``, ``tgN``,
    ``score``) or train. ``detail``: what else has to match for the samples to time the same work
    (the input shapes of a forward run, a score run's window and text). Threads, scheme, device and method
    may differ: comparing those is what a comparison is for, and ``compare`` names the difference."""

    kind: str
    test: str
    detail: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.test + (f" ({', '.join(self.detail)})" if self.detail else "")


def _input_signature(spec: Any) -> str:
    if not isinstance(spec, dict):
        return "?"
    shape = spec.get("shape")
    dims = "×".join(str(d) for d in shape) if isinstance(shape, (list, tuple)) else "?"
    return f"{dims} {spec.get('dtype') or '?'}"


def run_kind(r: RunRecord) -> RunKind:
    """The kind and test of a stored run (see :class:`RunKind`): a training record is ``train``, an
    LLM record its test, anything else a ``forward`` run of its recorded input shapes."""
    if r.training is not None:
        return RunKind(TRAIN, "train")
    if r.llm is not None:
        test = r.llm.test or "llm"
        detail: tuple[str, ...] = ()
        if test == "score":
            request = r.llm.request or {}
            window = r.llm.perplexity_window or request.get("window")
            detail = (f"window {window}",) if window else ()
            if request.get("text_sha256"):  # a person's own text (profile --text), not the export's held-out
                detail += (f"text {request.get('text')} ({str(request['text_sha256'])[:12]})",)
        return RunKind(LLM, test, detail)
    return RunKind(FORWARD, FORWARD, tuple(_input_signature(i) for i in r.model.inputs))


def not_comparable(a: RunRecord, b: RunRecord) -> str | None:
    """Why B's timings cannot be compared with A's, or None. Their kinds and tests must be equal; for
    one model so must the detail (a forward run's input shapes, a score run's window). Different
    models of one kind stay comparable as before (``compare`` warns that it says nothing about a
    regression)."""
    ka, kb = run_kind(a), run_kind(b)
    if (ka.kind, ka.test) == (kb.kind, kb.test) and (ka.detail == kb.detail or a.model.name != b.model.name):
        return None
    if ka.kind != kb.kind:
        why = f"{a.run_id} is a {ka.kind} run ({ka.label}) and {b.run_id} a {kb.kind} run ({kb.label})"
    else:
        why = f"{a.run_id} is {ka.label} and {b.run_id} is {kb.label}"
    return f"{why}: their samples time different work, so no faster/slower follows from them"


class NotComparable(UsageError):
    """Two runs of different kinds or tests were given to compare (a wrong call: exit 2)."""

    default_stage = "compare"


def comparable_pairs(records: Sequence[RunRecord]) -> list[tuple[RunRecord, RunRecord]]:
    """(baseline, candidate) pairs a report compares: each run against the first run of the same model,
    the same source (measured with measured, emulated with emulated) and the same kind and test
    (:func:`run_kind`: a tg32 run with the first tg32 run, a training run with the first training
    run), never across models."""
    first: dict[tuple, RunRecord] = {}
    pairs = []
    for r in records:
        key = (r.model.name, r.source, run_kind(r))  # one model: the detail counts too
        if key in first:
            pairs.append((first[key], r))
        else:
            first[key] = r
    return pairs


def compare_comparable(records: Sequence[RunRecord], **kw) -> list[RunComparison]:
    return [compare_runs(a, b, **kw) for a, b in comparable_pairs(records)]


# ------------------------------------------------------------------------------- machine conditions
#: the share of all cores others kept busy just before a run above which it ran on a loaded machine
BUSY_SHARE = 0.5
#: ... and the difference in that share between two runs above which they ran under different load
BUSY_SHARE_DIFFERENCE = 0.3
#: the same for the 1-minute load average per core (used when the busy share was not read)
LOAD_PER_CORE = 1.0
LOAD_PER_CORE_DIFFERENCE = 0.5
#: CPU time stolen by a hypervisor above which a run's timings measure the neighbours too
STEAL_SHARE = 0.05
#: the verdict when the machine's conditions, not only the program, differ between two runs
VERDICT_CONDITIONS = "conditions differ"


def machine_conditions(a: RunRecord, b: RunRecord) -> list[str]:
    """Sentences saying how the machine's load differed or was too high for a timing comparison of B
    against A to mean a change of the program (empty when both ran on a quiet machine, or nothing
    was recorded: records from before the load was probed compare as before)."""
    notes: list[str] = []

    def pct(x: float) -> str:
        return f"{x:.0%}"

    da, db = a.device, b.device
    for r in (a, b):  # the busy share first; the load average lags (it includes the minute before)
        d = r.device
        if d.cpu_busy is not None:
            if d.cpu_busy > BUSY_SHARE:
                notes.append(f"{r.run_id} ran on a loaded machine: its cores were {pct(d.cpu_busy)} busy just "
                             "before the run")
        elif d.load_per_core is not None and d.load_per_core > LOAD_PER_CORE:
            notes.append(f"{r.run_id} ran on a loaded machine: load average {d.load_1m:.2f} on {d.cores} cores")
    if da.cpu_busy is not None and db.cpu_busy is not None:
        if abs(da.cpu_busy - db.cpu_busy) > BUSY_SHARE_DIFFERENCE:
            notes.append(f"the machine's load differed: cores {pct(da.cpu_busy)} busy before {a.run_id}, "
                         f"{pct(db.cpu_busy)} before {b.run_id}")
    elif da.load_per_core is not None and db.load_per_core is not None:
        if abs(da.load_per_core - db.load_per_core) > LOAD_PER_CORE_DIFFERENCE:
            notes.append(f"the machine's load differed: load average {da.load_1m:.2f} on {da.cores} cores before "
                         f"{a.run_id}, {db.load_1m:.2f} on {db.cores} before {b.run_id}")
    for r, d in ((a, da), (b, db)):
        if d.cpu_steal is not None and d.cpu_steal > STEAL_SHARE:
            notes.append(f"{r.run_id} ran while a hypervisor stole {pct(d.cpu_steal)} of the CPU time")
    return notes


def compare_runs(a: RunRecord, b: RunRecord, **kw) -> RunComparison:
    """:func:`~edgerun.runtime.record.compare_records`, then the machine's conditions: when they make
    a timing change unmeasurable (:func:`machine_conditions`), a "faster"/"slower" verdict becomes
    ``conditions differ`` (the U test's own verdict stays in ``latency``) and the comparison is marked
    unreliable, with the reasons among its warnings.

    Runs of different kinds or tests (:func:`not_comparable`) are refused with :class:`NotComparable`."""
    why = not_comparable(a, b)
    if why is not None:
        ka, kb = run_kind(a), run_kind(b)
        raise NotComparable(
            f"cannot compare {b.run_id} with {a.run_id}: {why}.",
            hint=f"Compare runs of one test: `edgerun runs list` shows each run's test (here {ka.label} and "
                 f"{kb.label}); `edgerun report {a.run_id} {b.run_id}` shows both side by side without a verdict.")
    c = compare_records(a, b, **kw)
    notes = machine_conditions(a, b)
    if not notes:
        return c
    warnings = [*c.warnings, *notes]
    verdict = c.verdict
    if c.latency.verdict in ("faster", "slower"):
        verdict = VERDICT_CONDITIONS
        warnings.append(f"the samples say '{c.latency.verdict}', but the machine's load was not the same: "
                        "re-run both on a quiet machine (or interleaved) before calling it a change")
    return dataclasses.replace(c, verdict=verdict, reliable=False, warnings=tuple(warnings))


def versions_line(records: Sequence[RunRecord]) -> str:
    def distinct(get: Callable[[RunRecord], Any]) -> str:
        vals = list(dict.fromkeys(str(get(r)) for r in records if get(r) is not None))
        return " / ".join(vals) if vals else "unknown"

    return (f"edgerun {distinct(lambda r: r.provenance.edgerun_version)} "
            f"(git {distinct(lambda r: r.provenance.git_commit)}) · "
            f"ExecuTorch {distinct(lambda r: r.provenance.executorch_version)} · "
            f"runner {distinct(lambda r: r.provenance.runner_version)}")


# ------------------------------------------------------------------------------ text printers
def _strict(obj: Any) -> Any:
    """inf/NaN are not JSON: they become null (an exact match's SNR is also ``exact: true``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalar
        return _strict(obj.item())
    return obj


def to_json(records: Sequence[RunRecord], comparisons: Sequence[RunComparison] = ()) -> str:
    return json.dumps(_strict({"runs": [r.to_dict() for r in records],
                               "comparisons": [c.to_dict() for c in comparisons]}), allow_nan=False, indent=1)


def to_csv(records: Sequence[RunRecord]) -> str:
    rows = [flat_row(r) for r in records]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


def to_markdown(records: Sequence[RunRecord], comparisons: Sequence[RunComparison] = (), *, top: int = 5,
                pareto: bool | None = None) -> str:
    rows = [flat_row(r) for r in records]
    columns, common = varying_columns(rows)
    lines = ["# edgerun report", ""]
    if common:
        lines += ["Common to all runs: " + ", ".join(f"{k}={fmt_value(k, v)}" for k, v in common.items()), ""]
    lines += _md_table(columns, [[fmt_value(c, row[c]) for c in columns] for row in rows])
    if show_front(records, pareto):
        lines += ["", "## Pareto front per device (latency × size × quality; fastest first)", ""]
        lines += _md_table(FRONTIER_HEADER, frontier_rows(records))
    for c in comparisons:
        lines += ["", f"## {c.run_b} vs {c.run_a}: **{c.verdict}**" + ("" if c.reliable else " (unreliable)"), "",
                  f"Median {c.latency.median_a_ms:.4g} → {c.latency.median_b_ms:.4g} ms "
                  f"({c.latency.delta_rel:+.1%}), Mann–Whitney p = {c.latency.p_value:.3g} "
                  f"(α = {c.latency.alpha}, practical threshold ±{c.latency.min_effect:.0%}).", ""]
        lines += _md_table(["metric", "A", "B", "change"],
                           [[m.metric, fmt_value(m.metric, m.a), fmt_value(m.metric, m.b), fmt_change(m)]
                            for m in c.metrics if m.a is not None or m.b is not None])
        if c.accuracy_regressions:
            lines += ["", f"**{len(c.accuracy_regressions)} accuracy regression(s)**"]
        lines += [f"- ⚠ {w}" for w in c.warnings]
    for r in records:
        if r.operators is not None:
            ops = r.operators
            cov = f", {ops.coverage:.0%} of the measured execute time" if ops.coverage is not None else ""
            lines += ["", f"## Operators of {r.run_id} (top {top}; sum {ops.op_sum_ms:.4g} ms{cov})", ""]
            lines += _md_table(["operator", "delegated", "backend", "count", "median_ms", "share"],
                               [[cap_name(o.name), fmt_value("", o.delegated), o.backend or "—", str(o.count),
                                 fmt_value("median_ms", o.median_ms), fmt_value("share", o.share)]
                                for o in ops.top(top)])
            if ops.delegate_ops:
                lines += ["", f"Inside delegate calls (the backend's own events, top {top}):", ""]
                lines += _md_table(["backend op", "backend", "count", "median_ms", "share"],
                                   [[cap_name(o.name), o.backend or "—", str(o.count),
                                     fmt_value("median_ms", o.median_ms), fmt_value("share", o.share)]
                                    for o in ops.delegate_ops[:top]])
        if r.warnings:
            lines += ["", f"Warnings for {r.run_id}:"] + [f"- ⚠ {w}" for w in r.warnings]
    memory = training_memory_rows(records)
    if memory:
        lines += ["", ("## Fine-tuning memory (peak RSS per parameter; textbook: fp32 weights, gradients, optimizer "
                       "state)"), ""]
        lines += _md_table(TRAINING_MEMORY_HEADER, memory)
    lines += ["", versions_line(records), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15)  # no clipped tick or axis labels
    return buf.getvalue()


def _wide_range(records: Sequence[RunRecord]) -> bool:
    """Medians more than 20x apart (e.g. emulated next to measured): plot on a log scale."""
    medians = [r.latency.median_ms for r in records if r.latency.median_ms > 0]
    return len(medians) > 1 and max(medians) / min(medians) > 20


def _short(r: RunRecord) -> str:
    """A run as a plot labels it: model, scheme, device (with the emulated CPU) and run id."""
    bits = [r.model.name, r.model.scheme or "", cols.device_label(r.device_name, r.device), r.run_id]
    return " · ".join(b for b in bits if b)


def _short_test(r: RunRecord) -> str:
    """:func:`_short` with the run's test (tg32, pp64, score, train) where it is not a plain forward run: the
    plots that put runs of every kind on one axis say which work each one timed."""
    kind = run_kind(r)
    return _short(r) if kind.kind == FORWARD else f"{_short(r)} · {kind.test}"


def by_source(records: Sequence[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """Runs split by source, measured first: emulated and measured latencies never share an axis."""
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.source, []).append(r)
    return sorted(groups.items(), key=lambda kv: kv[0] == EMULATED)


def _mark_source(ax, source: str, title: str) -> None:
    if source == EMULATED:
        ax.set_facecolor("#fff4e0")
        ax.set_title(f"{title} — EMULATED (checks function, not speed)", fontsize=10, color="#8a4b00")
    else:
        ax.set_title(f"{title} — {source}", fontsize=10)


def plot_latency_distribution(records: Sequence[RunRecord]) -> bytes:
    """Violin + points of every timed sample per run, median and 95 % CI marked; one panel per source."""
    groups = by_source(records)
    fig = _figure(9, 0.9 * len(groups) + 0.8 * len(records) + 0.6)
    axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=[len(g) + 0.8 for _, g in groups])[:, 0]
    for ax, (source, group) in zip(axes, groups):
        data = [[ns / 1e6 for ns in r.timed_execute_ns] for r in group]
        pos = list(range(1, len(group) + 1))
        ax.violinplot(data, positions=pos, orientation="horizontal", showextrema=False)
        for p, r, d in zip(pos, group, data):
            ax.scatter(d, [p] * len(d), s=6, alpha=0.4, color="black")
            ax.errorbar([r.latency.median_ms], [p], xerr=[[r.latency.median_ms - r.latency.ci95_low_ms],
                                                          [r.latency.ci95_high_ms - r.latency.median_ms]],
                        fmt="o", color="crimson", capsize=4)
        ax.set_yticks(pos, [_short_test(r) for r in group], fontsize=8)
        ax.set_ylim(0.4, len(group) + 0.6)
        ax.invert_yaxis()  # first run on top, as in the tables
        log = _wide_range(group)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel("execute time per iteration (ms" + (", log scale" if log else "")
                      + ") — red: median with bootstrap 95 % CI", fontsize=9)
        _mark_source(ax, source, "Latency distribution (timed iterations, every sample)")
    return _png(fig)


def plot_samples_over_time(records: Sequence[RunRecord]) -> bytes:
    """Execute time per iteration in order: warm-up, drift and throttling show here; one panel per source."""
    groups = by_source(records)
    fig = _figure(9, 3.0 * len(groups) + 0.4)
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (source, group) in zip(axes, groups):
        for r in group:
            warm = [s.execute_ns / 1e6 for s in r.samples if s.warmup]
            timed = [s.execute_ns / 1e6 for s in r.samples if not s.warmup]
            line = ax.plot(range(len(warm), len(warm) + len(timed)), timed, marker=".", lw=0.8, label=_short_test(r))[0]
            if warm:
                ax.plot(range(len(warm)), warm, marker="x", ls="none", color=line.get_color())
        ax.set_xlabel("iteration (x: warm-up)", fontsize=9)
        every = [s.execute_ns for r in group for s in r.samples if s.execute_ns > 0]
        if _wide_range(group) or (every and max(every) / min(every) > 20):  # e.g. a cold first warm-up
            ax.set_yscale("log")
        ax.set_ylabel("execute (ms)")
        _mark_source(ax, source, "Samples in order")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    return _png(fig)


def plot_operators(record: RunRecord, top: int = 12, *, delegate_ops: bool = False) -> bytes:
    """Horizontal bars of the top-N operators / delegate calls (or the backend's own events) by median time."""
    ops = record.operators.delegate_ops[:top] if delegate_ops else record.operators.top(top)
    fig = _figure(9, 1.0 + 0.35 * len(ops))
    ax = fig.add_subplot()
    names = [cap_name(o.name, 48) for o in ops][::-1]
    values = [o.median_ms for o in ops][::-1]
    colors = ["tab:green" if o.delegated else "tab:blue" for o in ops][::-1]
    bars = ax.barh(names, values, color=colors)
    for bar, o in zip(bars, list(ops)[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {o.share:.0%}", va="center", fontsize=8)
    ax.set_xlabel("median time per iteration (ms) — green: delegated, blue: portable/optimized kernel")
    what = "Inside delegate calls of" if delegate_ops else "Operators of"
    ax.set_title(f"{what} {record.run_id} (top {len(ops)}, warm-up excluded)")
    return _png(fig)


def plot_comparison(records: Sequence[RunRecord]) -> bytes:
    """Median (with 95 % CI) and p90/p99 per run, side by side; one panel per source."""
    groups = by_source(records)
    fig = _figure(9 if len(groups) == 1 else 12, 4.2, )
    axes = fig.subplots(1, len(groups), squeeze=False, width_ratios=[len(g) + 1 for _, g in groups])[0]
    for ax, (source, group) in zip(axes, groups):
        x = list(range(len(group)))
        err = [[r.latency.median_ms - r.latency.ci95_low_ms for r in group],
               [r.latency.ci95_high_ms - r.latency.median_ms for r in group]]
        ax.bar(x, [r.latency.median_ms for r in group], yerr=err, capsize=5,
               color="tab:orange" if source == EMULATED else "tab:blue", label="median (95 % CI)")
        ax.scatter(x, [r.latency.p90_ms for r in group], marker="_", s=400, color="black", label="p90", zorder=3)
        ax.scatter(x, [r.latency.p99_ms for r in group], marker="_", s=400, color="crimson", label="p99", zorder=3)
        ax.set_xticks(x, [_short(r).replace(" · r-", "\nr-") for r in group], rotation=25, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(group) - 0.4)
        if _wide_range(group):
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1.35 * max(r.latency.p99_ms for r in group))  # headroom for the legend
        ax.set_ylabel("execute (ms)")
        _mark_source(ax, source, "Across runs")
        ax.legend(fontsize=7)
    return _png(fig)


def plot_llm_throughput(records: Sequence[RunRecord]) -> bytes:
    """Prefill and decode tokens/s per LLM run (mean ± sd over repetitions), measured and emulated apart."""
    llm = [r for r in records if r.llm is not None and (r.llm.prefill_tokens_per_s or r.llm.decode_tokens_per_s)]
    groups = by_source(llm)
    fig = _figure(10, 1.2 + 0.45 * len(llm) + 0.6 * len(groups))
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (source, group) in zip(axes, groups):
        labels = [f"{_short(r)} {r.llm.test} t{r.provenance.threads}" for r in group]
        pos = list(range(len(group)))
        for k, (attr, name) in enumerate((("prefill_tokens_per_s", "prefill"), ("decode_tokens_per_s", "decode"))):
            vals = [getattr(r.llm, attr) or 0 for r in group]
            sds = [getattr(r.llm, attr + "_sd") or 0 for r in group]
            ax.barh([p + 0.4 * k - 0.2 for p in pos], vals, height=0.38, xerr=sds, label=name)
        ax.set_yticks(pos, labels, fontsize=7)
        ax.set_xlabel("tokens/s (mean ± sd over repetitions" + (", emulated" if source == EMULATED else "") + ")")
        ax.legend(fontsize=7)
        _mark_source(ax, source, "LLM throughput")
    return _png(fig)


def plot_loss_curves(records: Sequence[RunRecord]) -> bytes:
    """Training loss per optimizer step of every fine-tuning run, with its held-out evaluations as points."""
    runs = [r for r in records if r.training is not None and r.training.loss_curve]
    fig = _figure(10, 4)
    ax = fig.add_subplot()
    for r in runs:
        steps, losses = zip(*r.training.loss_curve)
        line = ax.plot(steps, losses, lw=0.9, label=f"{_short(r)} ({r.training.optimizer}, lr {r.training.lr:g})")[0]
        ev = [(e.step, e.loss) for e in r.training.eval if e.loss is not None]
        if ev:
            ax.plot(*zip(*ev), "o", color=line.get_color(), ms=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (line: training batches; dots: held-out, on the device)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _png(fig)


def _held(e) -> str:
    """A held-out figure: an LLM's perplexity (what finetune printed), a classifier's accuracy."""
    if e and e.perplexity is not None:
        return f"ppl {e.perplexity:.2f}"
    return "—" if not e or e.accuracy is None else f"{e.accuracy:.1%}"


def training_rows(records: Sequence[RunRecord]) -> list[list[str]]:
    out = []
    for r in records:
        t = r.training
        if t is None:
            continue
        out.append([r.run_id, t.method, t.optimizer, f"{t.lr:g}", str(t.steps), str(t.batch),
                    f"{t.loss_curve[0][1]:.4g} → {t.loss_curve[-1][1]:.4g}" if t.loss_curve else "—",
                    f"{_held(t.eval_before)} → {_held(t.eval_after)}", cols.format_rate(t.steps_per_s),
                    f"{t.trainable:,}", fmt_value("trainable_bytes", t.trainable_bytes),
                    fmt_value("optimizer_state_bytes", t.optimizer_state_bytes),
                    fmt_value("peak_rss_bytes", r.memory.peak_rss_bytes)
                    + (" (emulated)" if r.source == EMULATED else "")])
    return out


#: methods that train without gradients (two forwards a step): no gradient, no optimizer state
ZEROTH_ORDER_METHODS = ("mezo", "zo-lora")


def training_bound_bytes(method: str, optimizer: str, *, trainable: int, frozen: int, momentum: float = 0.0,
                         base_bits: int = 32) -> int:
    """The textbook memory of a training step in bytes: fp32 weights, gradients and optimizer state, no
    activations and no runtime. A frozen parameter costs its weight (``base_bits`` / 8: 4, or less on a
    quantized base); a trained one 4 (weight) + 4 (gradient) + 8 for AdamW's m and v, 4 for SGD's momentum;
    zeroth-order methods hold the weights alone (4 per parameter) -- so full AdamW is 16 B/param, full SGD
    8, LoRA 4 per base parameter + 16 per adapter parameter, MeZO 4."""
    weights = frozen * base_bits / 8 + 4 * trainable
    if method in ZEROTH_ORDER_METHODS or optimizer.startswith("mezo"):
        return int(weights)
    state = 8 if optimizer == "adamw" else 4 if momentum else 0
    return int(weights + (4 + state) * trainable)


TRAINING_MEMORY_HEADER = ("run", "method", "optimizer", "trained / all parameters", "peak RSS", "B/param",
                          "textbook B/param", "peak / textbook", "steps/s", "held-out")


def training_memory_rows(records: Sequence[RunRecord]) -> list[list[str]]:
    """The memory table of fine-tuning runs (issue 21; ``benchmarks/finetune_memory.py`` adds the inference
    and eager PyTorch columns): peak RSS per parameter of the trained model beside the textbook bound
    (:func:`training_bound_bytes`) and what that costs in steps/s and held-out quality."""
    out = []
    for r in records:
        t = r.training
        if t is None:
            continue
        total = t.trainable + t.frozen
        momentum = t.settings.get("momentum")
        momentum = float(momentum) if isinstance(momentum, (int, float)) and not isinstance(momentum, bool) else 0.0
        bound = training_bound_bytes(t.method, t.optimizer, trainable=t.trainable, frozen=t.frozen,
                                     momentum=momentum)
        peak = r.memory.peak_rss_bytes
        out.append([r.run_id, t.method, t.optimizer, f"{t.trainable:,} / {total:,}",
                    fmt_value("peak_rss_bytes", peak) + (" (emulated)" if r.source == EMULATED else ""),
                    f"{peak / total:.1f}" if peak and total else "—", f"{bound / total:.1f}" if total else "—",
                    f"{peak / bound:.2f}×" if peak and bound else "—", cols.format_rate(t.steps_per_s),
                    f"{_held(t.eval_before)} → {_held(t.eval_after)}"])
    return out


def llm_memory_rows(records: Sequence[RunRecord]) -> list[list[str]]:
    """One row per LLM run: the sizes that decide whether a model fits a device, and its quality."""
    out = []
    for r in records:
        m = r.llm
        if m is None:
            continue
        ppl = "—" if m.perplexity is None else f"{m.perplexity:.3f}" + (
            f" (eager fp32 {m.eager_perplexity:.3f}, {m.perplexity / m.eager_perplexity - 1:+.1%})"
            if m.eager_perplexity else "")
        out.append([r.run_id, str(r.model.scheme), m.test, fmt_value("pte_bytes", r.memory.pte_bytes),
                    fmt_value("pte_bytes", m.weight_bytes), fmt_value("pte_bytes", m.kv_cache_bytes),
                    fmt_value("planned_bytes", r.memory.planned_bytes),
                    fmt_value("peak_rss_bytes", r.memory.peak_rss_bytes) + (" (emulated)" if r.source == EMULATED
                                                                            else ""), ppl])
    return out


# -------------------------------------------------------------------------------- pareto
def _accuracy_of(row: dict) -> tuple[float | None, str]:
    if row.get("task_accuracy") is not None:
        return row["task_accuracy"], "task accuracy"
    snr = row.get("min_snr_db")
    if snr is not None:
        return (min(snr, 100.0) if math.isfinite(snr) else 100.0), "min SNR vs eager (dB, capped at 100)"
    return None, "accuracy"


def pareto_front(points: Sequence[tuple[float, float, float]]) -> list[int]:
    """Indices of points not dominated in (latency ↓, size ↓, accuracy ↑)."""
    front = []
    for i, (li, si, ai) in enumerate(points):
        dominated = any(
            lj <= li and sj <= si and aj >= ai and (lj < li or sj < si or aj > ai)
            for j, (lj, sj, aj) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def pareto_groups(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    """Runs that share a latency axis: one device (as labelled, with its emulated CPU) and one source.
    Emulated and measured latencies are never on one axis: they measure different things. Nor are
    different LLM tests (a tg32 run's median is a decode step, a pp64 run's a prefill): an LLM test
    gets its own panel, named after the device (``local · tg32``). Training runs are not inference and
    are left out (the fine-tuning section shows them)."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        k = run_kind(r)
        if k.kind == TRAIN:
            continue
        device = cols.device_label(r.device_name, r.device)
        groups.setdefault((device if k.kind == FORWARD else f"{device} · {k.test}", r.source), []).append(r)
    return groups


def pareto_fronts(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[str]]:
    """The run ids on the Pareto front of each (device, source) group."""
    out = {}
    for key, group in pareto_groups(records).items():
        pts = _pareto_points([flat_row(r) for r in group], 1)[0]
        out[key] = [group[i].run_id for i in pareto_front(pts)]
    return out


def quality_of(r: RunRecord) -> tuple[float | None, str, bool]:
    """(value, label, higher is better) of a run's quality: task accuracy on the device, else an LLM's
    perplexity on the device, else the worst output's SNR against eager (None: not measured)."""
    row = flat_row(r)
    if row.get("task_accuracy") is not None:
        return row["task_accuracy"], "task accuracy", True
    if row.get("perplexity") is not None:
        return row["perplexity"], "perplexity", False
    snr = row.get("min_snr_db")
    if snr is not None:
        return (min(snr, 100.0) if math.isfinite(snr) else 100.0), "min SNR (dB)", True
    return None, "quality", True


def _quality_text(r: RunRecord) -> str:
    value, label, _ = quality_of(r)
    if value is None:
        return "—"
    if label == "task accuracy":
        return f"task accuracy {value:.2%}"
    if label == "perplexity":
        return f"perplexity {value:.3f}"
    return f"SNR {value:.1f} dB"


#: the columns of the frontier table (:func:`frontier_rows`)
FRONTIER_HEADER = ("device", "source", "recipe", "target", "run", ".pte", "median ms", "decode tok/s", "quality")


def frontier_rows(records: Sequence[RunRecord]) -> list[list[str]]:
    """The recipes on the Pareto front of each device (:func:`pareto_fronts`: one device, one source, one LLM
    test a group), fastest first: what a person chooses from. Emulated groups keep their label."""
    by_id = {r.run_id: r for r in records}
    out = []
    for (device, source), ids in pareto_fronts(records).items():
        for r in sorted((by_id[i] for i in ids), key=lambda r: r.latency.median_ms):
            decode = r.llm.decode_tokens_per_s if r.llm is not None else None
            out.append([device, source.upper() if source != MEASURED else source, str(r.model.scheme),
                        str(r.model.target), r.run_id, fmt_value("pte_bytes", r.memory.pte_bytes),
                        f"{r.latency.median_ms:.4g}", cols.format_rate(decode) if decode else "—", _quality_text(r)])
    return out


def show_front(records: Sequence[RunRecord], pareto: bool | None) -> bool:
    """Whether a report tabulates the front: asked for (bench), or by default when some device has two
    inference runs or more to choose between."""
    if pareto is not None:
        return pareto and bool(pareto_groups(records))
    return any(len(g) >= 2 for g in pareto_groups(records).values())


def size_references(records: Sequence[RunRecord]) -> dict[tuple[str, str], RunRecord]:
    """Per (model, target): the run whose .pte size a relative size bound is of -- the fp32 one, else the
    largest."""
    refs: dict[tuple[str, str], RunRecord] = {}
    for r in records:
        if not r.memory.pte_bytes:
            continue
        key = (r.model.name, str(r.model.target))
        cur = refs.get(key)
        rank = (r.model.scheme == "fp32", r.memory.pte_bytes)
        if cur is None or rank > (cur.model.scheme == "fp32", cur.memory.pte_bytes):
            refs[key] = r
    return refs


#: the default quality budget of :func:`recommend`, per measure: task accuracy may drop at most this much
#: (absolute: 0.02 is 2 points), an LLM's perplexity on the device may rise at most this fraction (15 %).
#: SNR against eager has none (see :func:`recommend`).
DEFAULT_QUALITY_LOSS = {"task accuracy": 0.02, "perplexity": 0.15}
_MEASURES = ("task accuracy", "perplexity", "min SNR (dB)")


def _quality_in(r: RunRecord, measure: str) -> float | None:
    """A run's quality in one measure (:func:`quality_of`'s labels), None when not measured."""
    row = flat_row(r)
    if measure == "task accuracy":
        return row.get("task_accuracy")
    if measure == "perplexity":
        return row.get("perplexity")
    snr = row.get("min_snr_db")
    return None if snr is None else (min(snr, 100.0) if math.isfinite(snr) else 100.0)


def _quality_value_text(measure: str, value: float) -> str:
    return f"{value:.2%}" if measure == "task accuracy" else f"{value:.4g}"


def quality_budget(runs: Sequence[RunRecord], references: Sequence[RunRecord],
                   max_quality_loss: float | None = None) -> dict[str, Any] | None:
    """The quality budget of one model's runs on one device: the measure (the first of task accuracy,
    perplexity, SNR that any run has), the reference value (the best of the size references' values in that
    measure, else the best of ``runs``) and the limit a run must reach (``>=`` for task accuracy, ``<=`` for
    perplexity). None when no run has a quality measure. SNR against eager gets no budget (``limit`` None):
    it measures numerical fidelity to the fp32 model, not task quality, the fp32 reference's is unbounded
    (capped at 100 dB), and a fixed dB floor that is right for one model is wrong for the next."""
    measure = next((m for m in _MEASURES if any(_quality_in(r, m) is not None for r in runs)), None)
    if measure is None:
        return None
    higher = measure != "perplexity"
    pick = max if higher else min
    ref_values = [v for v in (_quality_in(r, measure) for r in references) if v is not None]
    values = [v for v in (_quality_in(r, measure) for r in runs) if v is not None]
    reference, of = (pick(ref_values), "size reference") if ref_values else (pick(values), "best run")
    budget: dict[str, Any] = {"measure": measure, "reference": reference, "reference_of": of,
                              "max_loss": None, "limit": None}
    if measure == "min SNR (dB)":
        budget["note"] = "no budget for SNR against eager (numerical fidelity, not task quality)"
        return budget
    loss = DEFAULT_QUALITY_LOSS[measure] if max_quality_loss is None else max_quality_loss
    budget["max_loss"] = loss
    budget["limit"] = reference - loss if higher else reference * (1.0 + loss)
    return budget


def _within_budget(r: RunRecord, budget: dict[str, Any] | None) -> bool | None:
    """True/False: within/over the budget; None: no quality measured while the group has one."""
    if budget is None:
        return True
    value = _quality_in(r, budget["measure"])
    if value is None:
        return None
    if budget["limit"] is None:
        return True
    return value >= budget["limit"] if budget["measure"] != "perplexity" else value <= budget["limit"]


def budget_text(budget: dict[str, Any]) -> str:
    """A quality budget in words: ``task accuracy >= 96.10% (at most 2 points below the fp32 reference's
    98.10%)``."""
    m, ref, limit, loss = budget["measure"], budget["reference"], budget["limit"], budget["max_loss"]
    of = "the reference's" if budget["reference_of"] == "size reference" else "the best run's"
    if limit is None:
        return f"{m} measured ({budget.get('note', 'no limit')})"
    if m == "task accuracy":
        return (f"task accuracy >= {limit:.2%} (at most {loss * 100:g} point(s) below {of} "
                f"{ref:.2%})")
    return f"perplexity <= {limit:.4g} (at most {loss:.0%} above {of} {ref:.4g})"


def recommend(records: Sequence[RunRecord], target_size: float,
              max_quality_loss: float | None = None) -> list[dict[str, Any]]:
    """For each device (one device, one source, one LLM test: :func:`pareto_groups`) and model: the fastest
    run (then the most accurate) whose .pte is at most ``target_size`` times its reference's
    (:func:`size_references`: the fp32 run of the same model and target, else the largest) *and* whose
    quality is within a budget of the reference's (:func:`quality_budget`). "Fastest" is read from the
    samples, not the medians alone: the runs whose median's 95 % CI reaches the fastest one's
    (``equally_fast``) are a tie, and the most accurate of them is chosen (then the faster, then the
    smaller). Emulated groups are recommended apart and say so: their speed is not the board's.

    The quality budget is relative to the quality of the size reference (else, when it has none, the
    best run of the group), in the measure :func:`quality_of` reads: task accuracy may drop at most
    ``max_quality_loss`` absolute (default 0.02: 2 points), an LLM's perplexity on the device may rise at
    most ``max_quality_loss`` relative (default 0.15: 15 %); SNR-only groups get no budget (a relative
    drop from the fp32 reference's unbounded SNR means nothing). A run over the budget is not a candidate,
    nor is a run with no quality measured when the group has a measure (unknown quality cannot be
    recommended); their ids are ``excluded_for_quality`` (those unmeasured also ``unknown_quality``), the
    budget is ``quality_budget``. When runs fit the size but none the budget, ``reason`` names the fastest
    of them and its quality against the budget."""
    if not (isinstance(target_size, (int, float)) and target_size > 0 and math.isfinite(target_size)):
        raise UsageError(f"--target-size is a fraction of the largest (fp32) program's size, e.g. 0.6; got "
                         f"{target_size!r}.")
    if max_quality_loss is not None and not (isinstance(max_quality_loss, (int, float))
                                             and not isinstance(max_quality_loss, bool)
                                             and max_quality_loss >= 0 and math.isfinite(max_quality_loss)):
        raise UsageError(f"--max-quality-loss is a finite number >= 0 (0.02: task accuracy may drop 2 points; "
                         f"for an LLM, perplexity may rise 2 %); got {max_quality_loss!r}.")
    refs = size_references(records)
    out = []
    for (device, source), group in pareto_groups(records).items():
        for model in dict.fromkeys(r.model.name for r in group):
            runs = [r for r in group if r.model.name == model and r.memory.pte_bytes
                    and (r.model.name, str(r.model.target)) in refs]
            fits = [r for r in runs
                    if r.memory.pte_bytes <= target_size * refs[(model, str(r.model.target))].memory.pte_bytes]
            own_refs = {refs[(model, str(r.model.target))].run_id: refs[(model, str(r.model.target))] for r in runs}
            budget = quality_budget(runs, list(own_refs.values()), max_quality_loss) if runs else None
            verdict = {r.run_id: _within_budget(r, budget) for r in fits}
            good = [r for r in fits if verdict[r.run_id]]

            def key(r: RunRecord) -> tuple:
                value, _, higher = quality_of(r)
                q = -math.inf if value is None else (value if higher else -value)
                return (-q, r.latency.median_ms, r.memory.pte_bytes)

            fastest = min(good, key=lambda r: r.latency.median_ms) if good else None
            tied = [r for r in good if r.latency.ci95_low_ms <= fastest.latency.ci95_high_ms] if good else []
            best = min(tied, key=key) if tied else None
            item: dict[str, Any] = {"device": device, "source": source, "model": model, "target_size": target_size,
                                    "candidates": len(runs), "within": len(fits), "within_budget": len(good),
                                    "quality_budget": budget,
                                    "excluded_for_quality": [r.run_id for r in fits if not verdict[r.run_id]],
                                    "unknown_quality": [r.run_id for r in fits if verdict[r.run_id] is None],
                                    "recommended": None}
            if source == EMULATED:
                item["note"] = "EMULATED: the speed is the emulator's, not the board's"
            elif source == ESTIMATED:
                item["note"] = "ESTIMATED: the speed is a compiler's cycle model, not a run"
            if best is None and fits:
                lost = min(fits, key=lambda r: r.latency.median_ms)
                value = _quality_in(lost, budget["measure"])
                has = (f"has no {budget['measure']} measured (unknown quality cannot be recommended)"
                       if value is None else
                       f"has {budget['measure']} {_quality_value_text(budget['measure'], value)}")
                item["reason"] = (f"{len(fits)} run(s) of {model} on {device} are within {target_size:g}x its "
                                  f"reference size but none within the quality budget, {budget_text(budget)}; "
                                  f"the fastest of them, {lost.model.scheme} ({lost.run_id}), {has}")
            elif best is None:
                smallest = min(runs, key=lambda r: r.memory.pte_bytes, default=None)
                item["reason"] = (f"no run of {model} on {device} is within {target_size:g}x its reference size"
                                  + (f"; the smallest is {smallest.model.scheme} ({smallest.run_id}), "
                                     f"{_ratio(smallest, refs):.2f}x" if smallest else ""))
            else:
                ref = refs[(model, str(best.model.target))]
                value, label, _ = quality_of(best)
                item["recommended"] = {
                    "run_id": best.run_id, "recipe": best.model.scheme, "target": best.model.target,
                    "pte_bytes": best.memory.pte_bytes, "size_ratio": round(_ratio(best, refs), 4),
                    "median_ms": best.latency.median_ms, "ci95_ms": [best.latency.ci95_low_ms, best.latency.ci95_high_ms],
                    "quality": value, "quality_measure": label,
                    "decode_tokens_per_s": best.llm.decode_tokens_per_s if best.llm is not None else None}
                item["reference"] = {"run_id": ref.run_id, "recipe": ref.model.scheme, "pte_bytes": ref.memory.pte_bytes,
                                     "why": "fp32" if ref.model.scheme == "fp32" else "largest"}
                item["equally_fast"] = [r.run_id for r in tied]
            out.append(item)
    return out


def _ratio(r: RunRecord, refs: dict) -> float:
    return r.memory.pte_bytes / refs[(r.model.name, str(r.model.target))].memory.pte_bytes


def recommendation_text(item: dict[str, Any]) -> str:
    """One sentence of :func:`recommend`'s answer for one device; it names the quality budget when the
    budget excluded a run."""
    where = f"{item['model']} on {item['device']}" + (f" ({item['source'].upper()})" if item["source"] != MEASURED
                                                      else "")
    best = item["recommended"]
    excluded = item.get("excluded_for_quality") or []
    if best is None:
        return (f"{where}: nothing fits --target-size {item['target_size']:g}"
                + (" and the quality budget" if excluded else "") + f": {item['reason']}.")
    ref = item["reference"]
    quality = "" if best["quality"] is None else (
        f", {best['quality_measure']} {_quality_value_text(best['quality_measure'], best['quality'])}")
    of = "the fp32 cell" if ref["why"] == "fp32" else f"the largest cell ({ref['recipe']})"
    budget = "" if not excluded else (
        f" and the quality budget ({budget_text(item['quality_budget'])}; excluded: {', '.join(excluded)}"
        + (f", of which no quality measured: {', '.join(item['unknown_quality'])}" if item.get("unknown_quality")
           else "") + ")")
    n = item.get("within_budget", item["within"]) if excluded else item["within"]
    return (f"{where}: {best['recipe']} ({best['run_id']}) -- {best['size_ratio']:.2f}x the size of {of}, "
            f"median {best['median_ms']:.4g} ms{quality}; of {n} run(s) within "
            f"{item['target_size']:g}x{budget}, "
            + ("the fastest" if len(item["equally_fast"]) == 1 else
               f"the most accurate of the {len(item['equally_fast'])} whose latency 95 % CIs reach the fastest's")
            + (f". {item['note']}" if item.get("note") else ""))


PPL_LABEL = "perplexity on the device (lower is better)"


def _pareto_points(rows: Sequence[dict], scale: int) -> tuple[list[tuple[float, float, float]], str]:
    """(latency, size, accuracy) per run, with one accuracy measure for all: task accuracy when any run has
    it, else min SNR, else (LLM score runs) minus the perplexity on the device; a run without the chosen
    measure has unknown accuracy (never compared on another scale)."""
    if any(row.get("task_accuracy") is not None for row in rows):
        label = "task accuracy"
        acc = [row.get("task_accuracy") for row in rows]
    elif not any(row.get("min_snr_db") is not None for row in rows) and any(
            row.get("perplexity") is not None for row in rows):
        label = PPL_LABEL
        acc = [None if row.get("perplexity") is None else -row["perplexity"] for row in rows]
    else:
        label = "min SNR vs eager (dB, capped at 100)"
        acc = [None if row.get("min_snr_db") is None else _accuracy_of({"min_snr_db": row["min_snr_db"]})[0]
               for row in rows]
    pts = [(row["median_ms"], (row["pte_bytes"] or 0) / scale, a if a is not None else -math.inf)
           for row, a in zip(rows, acc)]
    return pts, label


def plot_pareto(records: Sequence[RunRecord]) -> bytes:
    """Latency × size × accuracy, one panel per device (and source): the front is outlined in each.

    An emulated panel has its own latency axis, triangles and a shaded background, and says so.
    """
    groups = pareto_groups(records)
    if not groups:
        raise UsageError("a trade-off plot needs at least one inference run (training runs are not plotted).")
    largest = max((r.memory.pte_bytes or 0) for g in groups.values() for r in g)
    unit, scale = cols.bytes_scale(largest)
    n = len(groups)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig = _figure(6.2 * ncols if ncols > 1 else 8, 4.8 * nrows + 0.3)
    fig.suptitle("Trade-off: latency × size × accuracy, per device (red rings: Pareto front)")
    for k, ((device, source), group) in enumerate(groups.items()):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        emulated = source == EMULATED
        rows = [flat_row(r) for r in group]
        pts, label = _pareto_points(rows, scale)
        front = set(pareto_front(pts))
        marker = "^" if emulated else "o"
        known = [i for i, p in enumerate(pts) if math.isfinite(p[2])]
        vals = [pts[i][2] for i in known]
        if label == PPL_LABEL:   # perplexity itself on the colour scale, reversed: yellow is the better (lower)
            ppl = [-v for v in vals]
            lo, hi = min(ppl, default=1.0), max(ppl, default=2.0)
            sc = ax.scatter([pts[i][0] for i in known], [pts[i][1] for i in known], c=ppl, cmap="viridis_r",
                            vmin=lo, vmax=hi if hi > lo else lo * 1.05 + 1e-9, s=80, marker=marker, zorder=2,
                            edgecolors="black", linewidths=0.5)
        else:
            # the colour scale of the measure itself (task accuracy ends at 1, SNR is capped at 100 dB), never beyond
            top = 1.0 if label == "task accuracy" else 100.0
            low = min(vals, default=0.0) - (0.05 if top == 1.0 else 5.0)
            sc = ax.scatter([pts[i][0] for i in known], [pts[i][1] for i in known], c=vals, cmap="viridis",
                            vmin=max(0.0, min(low, top - (0.1 if top == 1.0 else 10.0))), vmax=top,
                            s=80, marker=marker, zorder=2, edgecolors="black", linewidths=0.5)
        if known:
            fig.colorbar(sc, ax=ax, label=label)
        unknown = [i for i in range(len(pts)) if i not in known]
        ax.scatter([pts[i][0] for i in unknown], [pts[i][1] for i in unknown], c="lightgrey", s=80, marker=marker,
                   zorder=2, label=f"no {label.split(' (')[0]}" if unknown else None)
        ax.scatter([pts[i][0] for i in front], [pts[i][1] for i in front], s=240, facecolors="none",
                   edgecolors="crimson", linewidths=1.5, zorder=3, label="Pareto front")
        for r, (lat, size, _) in zip(group, pts):
            ax.annotate(f"{r.model.name} {r.model.scheme or '?'}\n{r.run_id}", (lat, size),
                        textcoords="offset points", xytext=(7, 3), fontsize=7)
        ax.margins(x=0.25, y=0.2)  # room for the labels of the outermost points
        if emulated:
            ax.set_facecolor("#fff4e0")
            ax.set_title(f"{device} — EMULATED (checks function, not speed)", fontsize=9, color="#8a4b00")
        else:
            ax.set_title(f"{device} — {source}" + (" (a compiler's model, not run)" if source == ESTIMATED else ""),
                         fontsize=9)
        ax.set_xlabel("median execute time (ms" + (f", {source}" if source != MEASURED else "") + ")")
        ax.set_ylabel(f".pte size ({unit})")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    return _png(fig)


# ------------------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1150px}
h1{font-size:1.6em;margin-bottom:0}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{color:#8a4b00;background:#fff4e0;padding:4px 8px;margin:3px 0;border-left:3px solid #e0a000}
.verdict{font-weight:bold;font-size:1.1em}.small{color:#666;font-size:12px}img{max-width:100%;margin:6px 0}
.label{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;background:#e8eefc}
.emulated{background:#ffe8cc}.estimated{background:#eee}.scroll{overflow-x:auto}td{white-space:nowrap}
details.warnings{margin:6px 0}details.warnings>summary{color:#8a4b00;cursor:pointer}
details.ops>summary{cursor:pointer}details.ops ul{margin:2px 0 4px 16px;padding:0;font-size:12px;white-space:normal}
.regress{color:#a00;font-weight:bold}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


class _Raw(str):
    """A table cell that is already HTML (escaped by whoever built it)."""


def _cell(c: Any) -> str:
    return c if isinstance(c, _Raw) else html.escape(str(c))


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None) -> str:
    numeric = numeric or [False] * len(header)
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if n else ""}>{_cell(c)}</td>' for c, n in zip(row, numeric))
        + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _op_cell(o) -> str:
    """An operator's name, capped; the full name and its ATen ops one click away."""
    short = cap_name(o.name)
    full = list(o.op_types) or ([o.name] if short != o.name else [])
    if short == o.name and len(full) <= 1:
        return html.escape(o.name)
    items = "".join(f"<li>{html.escape(t)}</li>" for t in full)
    return (f"<details class=ops><summary>{html.escape(short)}</summary>"
            f"<div class=small>{html.escape(o.name)}</div><ul>{items}</ul></details>")


def _label(source: str) -> str:
    return f'<span class="label {html.escape(source)}">{html.escape(source)}</span>'


def to_html(records: Sequence[RunRecord], comparisons: Sequence[RunComparison] = (), *, top: int = 12,
            title: str = "edgerun report", pareto: bool | None = None) -> str:
    rows = [flat_row(r) for r in records]
    columns, common = varying_columns(rows)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class=small>{html.escape(versions_line(records))}</p>"]
    if common:
        parts.append("<p>Common to all runs: " + ", ".join(
            f"<b>{html.escape(k)}</b>={html.escape(fmt_value(k, v))}" for k, v in common.items()) + "</p>")
    parts.append("<h2>Summary</h2>")
    parts.append("<div class=scroll>" + _html_table(
        columns, [[fmt_value(c, row[c]) for c in columns] for row in rows],
        [isinstance(rows[0][c], (int, float)) and not isinstance(rows[0][c], bool) for c in columns]) + "</div>")
    warned = [(r.run_id, w) for r in records for w in r.warnings]
    if warned:  # one line under the summary, the list one click away: the plots come first
        parts.append(f'<details class="warnings"><summary>⚠ {len(warned)} warning(s) in '
                     f'{len({rid for rid, _ in warned})} run(s)</summary>'
                     + "".join(f'<div class="warn">{html.escape(rid)}: {html.escape(w)}</div>' for rid, w in warned)
                     + "</details>")

    parts.append("<h2>Latency</h2>")
    parts.append(_img(plot_latency_distribution(records), "latency distribution"))
    parts.append(_img(plot_samples_over_time(records), "samples in order"))
    if len(records) > 1:
        parts.append("<h2>Comparison across runs</h2>")
        parts.append(_img(plot_comparison(records), "comparison across runs"))
    inference = [r for r in records if run_kind(r).kind != TRAIN]
    if inference and (pareto if pareto is not None else len(inference) > 2):
        parts.append("<h2>Trade-off</h2>")
        parts.append(_img(plot_pareto(records), "pareto latency size accuracy"))
    if show_front(records, pareto):
        parts.append("<h3>Pareto front per device</h3><p class=small>The runs no other run of the same device "
                     "(and source, and LLM test) beats on latency, size and quality at once (the red rings of the "
                     "trade-off plot), fastest first. Quality: task accuracy on the device, else perplexity, else "
                     "SNR against eager.</p>")
        parts.append(_html_table(list(FRONTIER_HEADER), frontier_rows(records), [False] * 5 + [True] * 3 + [False]))

    if any(r.llm is not None for r in records):
        parts.append("<h2>LLM: tokens/s and memory</h2>")
        if any(r.llm is not None and (r.llm.prefill_tokens_per_s or r.llm.decode_tokens_per_s) for r in records):
            parts.append(_img(plot_llm_throughput(records), "LLM tokens per second"))
        parts.append(_html_table(["run", "scheme", "test", ".pte", "weights", "KV cache (max context)", "planned",
                                  "peak RSS", "perplexity"], llm_memory_rows(records),
                                 [False, False, False, True, True, True, True, True, False]))

    if any(r.training is not None for r in records):
        parts.append("<h2>Fine-tuning on the device</h2>")
        if any(r.training is not None and r.training.loss_curve for r in records):
            parts.append(_img(plot_loss_curves(records), "training loss"))
        parts.append(_html_table(["run", "method", "optimizer", "lr", "steps", "batch", "training loss",
                                  "held-out (accuracy or perplexity)", "steps/s", "trainable", "trainable bytes",
                                  "optimizer state", "peak RSS"], training_rows(records),
                                 [False] * 3 + [True] * 10))
        parts.append("<h3>Fine-tuning memory</h3>")
        parts.append("<p class=small>Peak RSS (the runner's VmHWM) per parameter of the trained model, beside "
                     "the textbook bound: fp32 weights, gradients and optimizer state, no activations or runtime "
                     "(full AdamW 16 B/param, full SGD 8, LoRA 4 per base + 16 per adapter parameter, MeZO 4). "
                     "benchmarks/finetune_memory.py adds the inference program and eager PyTorch.</p>")
        parts.append(_html_table(list(TRAINING_MEMORY_HEADER), training_memory_rows(records),
                                 [False] * 3 + [True] * 7))

    by_id = {r.run_id: r for r in records}
    for c in comparisons:
        parts.append(f"<h2>{html.escape(c.run_b)} vs {html.escape(c.run_a)}</h2>")
        if c.run_a in by_id and c.run_b in by_id:
            parts.append(f"<p class=small>A (baseline): {html.escape(_short(by_id[c.run_a]))}<br>"
                         f"B: {html.escape(_short(by_id[c.run_b]))}</p>")
        parts.append(f'<p class="verdict">{html.escape(c.verdict)}'
                     + ("" if c.reliable else " (unreliable: see the warnings below)") + "</p>")
        parts.append(f"<p>Median {c.latency.median_a_ms:.4g} → {c.latency.median_b_ms:.4g} ms "
                     f"({c.latency.delta_rel:+.1%}); Mann–Whitney U p = {c.latency.p_value:.3g} "
                     f"(α = {c.latency.alpha}); practical threshold ±{c.latency.min_effect:.0%}.</p>")
        parts.append(_html_table(["metric", "A", "B", "change"],
                                 [[m.metric, fmt_value(m.metric, m.a), fmt_value(m.metric, m.b), fmt_change(m)]
                                  for m in c.metrics if m.a is not None or m.b is not None],
                                 [False, True, True, True]))
        if c.accuracy_regressions:
            parts.append(f'<p class="regress">{len(c.accuracy_regressions)} accuracy regression(s): '
                         + "; ".join(html.escape(x) for x in c.accuracy_regressions) + "</p>")
        if c.warnings:
            parts.append(f"<details class=warnings><summary>⚠ {len(c.warnings)} warning(s)</summary>"
                         + "".join(f'<div class="warn">{html.escape(w)}</div>' for w in c.warnings) + "</details>")

    for r in records:
        parts.append(f"<h2>Run {html.escape(r.run_id)}</h2>")
        parts.append(f"<p class=small>{html.escape(r.created_at)} · {html.escape(r.model.name)} "
                     f"({html.escape(str(r.model.scheme))}, target {html.escape(str(r.model.target))}) on "
                     f"{html.escape(cols.device_label(r.device_name, r.device))} · "
                     f"{r.provenance.threads} threads</p>")
        parts.append("<p>" + " ".join(f"{html.escape(k)} {_label(v)}" for k, v in r.labels.items()) + "</p>")
        if r.operators is not None:
            ops = r.operators
            parts.append(_img(plot_operators(r, top), f"operators of {r.run_id}"))
            parts.append(f"<p class=small>Operator times add up to {ops.op_sum_ms:.4g} ms"
                         + (f" = {ops.coverage:.0%} of the measured median execute time "
                            f"{ops.measured_execute_ms:.4g} ms" if ops.coverage is not None else "")
                         + f"; {ops.iterations} iterations (warm-up excluded).</p>")
            parts.append(_html_table(["operator", "delegated", "backend", "count", "median ms", "share"],
                                     [[_Raw(_op_cell(o)), fmt_value("", o.delegated), o.backend or "—", o.count,
                                       fmt_value("median_ms", o.median_ms), fmt_value("share", o.share)]
                                      for o in ops.top(top)], [False, False, False, True, True, True]))
            if ops.delegate_ops:
                parts.append(_img(plot_operators(r, top, delegate_ops=True), f"delegate ops of {r.run_id}"))
                parts.append(_html_table(["backend op", "backend", "count", "median ms", "share"],
                                         [[_Raw(_op_cell(o)), o.backend or "—", o.count,
                                           fmt_value("median_ms", o.median_ms), fmt_value("share", o.share)]
                                          for o in ops.delegate_ops[:top]],
                                         [False, False, True, True, True]))
        if r.llm is not None and r.llm.text is not None:
            parts.append(f"<p>Generated ({len(r.llm.ids)} tokens, stop: {html.escape(str(r.llm.stop))}):</p>"
                         f"<pre>{html.escape(sanitize_text(r.llm.text))}</pre>")
        if r.accuracy is not None and r.accuracy.outputs:
            parts.append(f"<p>Accuracy against {html.escape(r.accuracy.reference)} "
                         f"({r.accuracy.vectors} vector(s)):</p>")
            parts.append(_html_table(["output", "shape", "SNR dB", "max abs", "cosine", "top-1 agreement"],
                                     [[o.name or o.index, "×".join(map(str, o.shape)), fmt_value("snr_db", o.snr_db),
                                       f"{o.max_abs:.3g}", f"{o.cosine:.6f}",
                                       fmt_value("top1_agreement", o.top1_agreement)] for o in r.accuracy.outputs]))
        if r.accuracy is not None and r.accuracy.passed is not None:
            verdict = "within" if r.accuracy.passed else "<b class=regress>outside</b>"
            parts.append(f"<p>The device's outputs are {verdict} the artifact's accuracy thresholds"
                         + (": " + "; ".join(html.escape(f) for f in r.accuracy.failures) if r.accuracy.failures
                            else "") + ".</p>")
        if r.accuracy is not None and r.accuracy.task_accuracy is not None:
            parts.append(f"<p>Task accuracy ({r.accuracy.source}, from outputs run on the device): "
                         f"{r.accuracy.task_accuracy:.2%} of {r.accuracy.task_samples} held-out samples.</p>")
        dev = {k: v for k, v in r.device.to_json().items() if v is not None}
        prov = {k: v for k, v in vars(r.provenance).items() if v is not None}
        parts.append("<details><summary>Device and provenance</summary>"
                     + _html_table(["key", "value"], [[k, json.dumps(v) if isinstance(v, dict) else v]
                                                      for k, v in {**dev, **prov}.items()]) + "</details>")
    parts.append("</body></html>")
    return "".join(parts)


# ------------------------------------------------------------------------------------ entry
def render(records: Sequence[RunRecord], fmt: str, comparisons: Sequence[RunComparison] = (), **kw) -> str:
    """The report of ``records`` in ``fmt`` (html, md, json, csv)."""
    if not records:
        raise UsageError("a report needs at least one run.", hint="Pass run ids from `edgerun runs list`.")
    if fmt == "html":
        return to_html(records, comparisons, **kw)
    if fmt == "md":
        return to_markdown(records, comparisons, **{k: v for k, v in kw.items() if k == "pareto"})
    if fmt == "json":
        return to_json(records, comparisons)
    if fmt == "csv":
        return to_csv(records)
    raise UsageError(f"unknown report format '{fmt}'.", hint=f"Use one of: {', '.join(FORMATS)}.")
