"""The column registry: one declaration per column of a run, from which every view derives.

A :class:`Column` names a figure of a :class:`~edgerun.runtime.record.RunRecord`: its name (units
in the name where it has one: ``median_ms``, ``pte_bytes``), its :class:`Unit`, the getter that
reads it from a record, which way is better, what kind of figure it is, how it is shown in a table,
whether the results store keeps it as an indexed SQL column and whether ``compare`` computes its
change. :data:`COLUMNS` is the ordered registry; the record's flat row
(:func:`edgerun.runtime.record.flat_row`), the store's indexed columns, ``compare``'s metrics and the
report and CLI tables are all read from it, so a new figure is declared here once.

The formatters are the only ones in edgerun: :func:`format_bytes` (binary units), :func:`format_ms`
(milliseconds) and :func:`format_value` (a cell by its column's unit).
"""

from __future__ import annotations

import enum
import math
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # the record module imports this one
    from edgerun.devices.info import DeviceInfo
    from edgerun.runtime.record import RunRecord


class Unit(str, enum.Enum):
    MS = "ms"
    BYTES = "bytes"
    DB = "dB"
    FRACTION = "fraction"  # unitless 0..1 (CV, coverage, agreement, task accuracy); shown as a percentage
    COUNT = "count"
    KHZ = "kHz"
    CELSIUS = "°C"
    BOOL = "bool"
    TEXT = "text"
    TIMESTAMP = "timestamp"  # ISO 8601, UTC
    TOKENS_PER_S = "tokens/s"
    PER_S = "per s"  # steps or samples per second
    PERPLEXITY = "perplexity"  # exp(mean negative log-likelihood per token)

    @property
    def relative(self) -> bool:
        """Does a relative change (+12 %) mean something? Only on a ratio scale with a true zero.

        Not for dB (already a log ratio) nor for fractions such as CV or accuracy (a change of
        0.5 % → 1 % is "+100 %" and says nothing): those get an absolute change.
        """
        return self in (Unit.MS, Unit.BYTES, Unit.COUNT, Unit.TOKENS_PER_S, Unit.PER_S, Unit.PERPLEXITY)


class Kind(str, enum.Enum):
    IDENTITY = "identity"  # what ran where: model, scheme, target, device, threads
    LATENCY = "latency"
    MEMORY = "memory"  # sizes and load time
    OPERATORS = "operators"
    LLM = "llm"  # tokens/s, time to first token, perplexity
    TRAINING = "training"  # loss, held-out accuracy before/after, steps/s
    ACCURACY = "accuracy"
    DEVICE = "device"  # the device's state: governor, frequency, temperature
    PROVENANCE = "provenance"  # versions, commits, recipe, sweep


LOWER, HIGHER, NEITHER = "lower", "higher", "none"
# How a column appears in the report/CLI tables (every column is in CSV and JSON).
ALWAYS, VARYING, NEVER = "always", "varying", "never"


# ------------------------------------------------------------------------------- formatters
def format_bytes(n: float | None) -> str:
    """Bytes in binary units, three significant figures: ``512 B``, ``1.50 KiB``, ``12.3 MiB``, ``1.25 GiB``."""
    if n is None:
        return "—"
    value = float(n)
    if abs(value) < 1024:
        return f"{int(value)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "TiB":
            break
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:.{digits}f} {unit}"


def bytes_scale(largest: float) -> tuple[str, int]:
    """(unit, divisor) for an axis of byte values whose largest is ``largest``: the unit format_bytes picks."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(largest) >= size:
            return unit, size
    return "B", 1


def format_ms(x: float | None) -> str:
    """Milliseconds without the unit (column names and headers carry it): ``0.01234``, ``12.345``, ``1234.5``."""
    if x is None:
        return "—"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    ax = abs(x)
    return f"{x:.4g}" if ax < 1 else f"{x:.3f}" if ax < 100 else f"{x:.1f}"


def format_fraction(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def format_db(x: float | None) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "exact" if x > 0 else "-inf"
    return f"{x:.1f}"


def _format_plain(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


_BY_UNIT: dict[Unit, Callable[[Any], str]] = {
    Unit.MS: format_ms, Unit.BYTES: format_bytes, Unit.DB: format_db, Unit.FRACTION: format_fraction,
}


def format_delta(unit: Unit, delta: float | None, delta_rel: float | None) -> str:
    """A change as ``compare`` shows it: relative where the unit allows it, else absolute in the unit."""
    if delta is None:
        return "—"
    if unit.relative:
        return "—" if delta_rel is None else f"{delta_rel:+.1%}"
    if unit == Unit.FRACTION:
        return f"{delta * 100:+.1f} pp"  # percentage points
    if unit == Unit.DB:
        return f"{delta:+.1f} dB"
    if unit == Unit.BOOL:
        return "changed" if delta else "same"
    return f"{delta:+.4g}"


# ---------------------------------------------------------------------------------- columns
@dataclass(frozen=True)
class Column:
    name: str
    unit: Unit
    kind: Kind
    get: Callable[["RunRecord"], Any]
    better: str = NEITHER  # lower | higher | none
    show: str = VARYING  # always | varying | never: in the report/CLI tables
    sql: str | None = None  # the store's indexed column holding it (None: only in the record JSON)
    compared: bool = False  # ``compare`` reports its change
    summary: bool = False  # a metric of the runs table (bench/profile) when any run has it
    doc: str = ""
    formatter: Callable[[Any], str] | None = None

    def __post_init__(self) -> None:
        if self.better not in (LOWER, HIGHER, NEITHER):
            raise ValueError(f"column {self.name}: better must be lower/higher/none, not {self.better!r}")
        if self.show not in (ALWAYS, VARYING, NEVER):
            raise ValueError(f"column {self.name}: show must be always/varying/never, not {self.show!r}")
        if self.compared and self.better == NEITHER:
            raise ValueError(f"column {self.name}: a compared column needs a better direction")

    def format(self, value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if self.formatter is not None:
            return self.formatter(value)
        return _BY_UNIT.get(self.unit, _format_plain)(value)


# -- getters that need more than an attribute
def emulated_cpu(device: "DeviceInfo") -> str | None:
    """The CPU an emulated device emulates (``-cpu X`` of its emulator command, else its cpu_model)."""
    if not device.emulated:
        return None
    emulator = device.emulator or ""
    try:
        argv = shlex.split(emulator)
    except ValueError:
        argv = emulator.split()
    if "-cpu" in argv[:-1]:
        return argv[argv.index("-cpu") + 1]
    return device.cpu_model


def device_label(name: str, device: "DeviceInfo") -> str:
    """The device as a person reads it: the name, plus the emulated CPU when the name does not say it.

    ``qemu-aarch64://`` + ``qemu-aarch64 -cpu max`` -> ``qemu-aarch64://?cpu=max``;
    an inventory name ``pi5-qemu`` -> ``pi5-qemu (cpu=cortex-a76)``.
    """
    cpu = emulated_cpu(device)
    if not cpu or "cpu=" in name:
        return name
    if "://" in name:
        return f"{name}{'&' if '?' in name else '?'}cpu={cpu}"
    return f"{name} (cpu={cpu})"


def _top1(r: "RunRecord") -> float | None:
    vals = [o.top1_agreement for o in r.accuracy.outputs if o.top1_agreement is not None] if r.accuracy else []
    return min(vals) if vals else None


def _acc(attr: str) -> Callable[["RunRecord"], Any]:
    return lambda r: getattr(r.accuracy, attr) if r.accuracy is not None else None


def _ops(attr: str) -> Callable[["RunRecord"], Any]:
    return lambda r: getattr(r.operators, attr) if r.operators is not None else None


def _llm(attr: str) -> Callable[["RunRecord"], Any]:
    return lambda r: getattr(r.llm, attr) if r.llm is not None else None


def _ev(when: str, key: str) -> Callable[["RunRecord"], Any]:
    def get(r):
        t = r.training
        e = (t.eval_before if when == "before" else t.eval_after) if t is not None else None
        return getattr(e, key) if e else None
    return get


def _tr(attr: str) -> Callable[["RunRecord"], Any]:
    return lambda r: getattr(r.training, attr) if r.training is not None else None


def format_rate(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def _lat(attr: str) -> Callable[["RunRecord"], Any]:
    return lambda r: getattr(r.latency, attr)


C = Column
U, K = Unit, Kind

#: The registry, in the order of the flat row (and of the CSV header).
COLUMNS: tuple[Column, ...] = (
    C("run_id", U.TEXT, K.IDENTITY, lambda r: r.run_id, show=ALWAYS, sql="run_id"),
    C("created_at", U.TIMESTAMP, K.PROVENANCE, lambda r: r.created_at, show=NEVER, sql="created_at",
      doc="ISO 8601, UTC; in each run's section rather than the table"),
    C("model", U.TEXT, K.IDENTITY, lambda r: r.model.name, sql="model"),
    C("scheme", U.TEXT, K.IDENTITY, lambda r: r.model.scheme, sql="scheme"),
    C("target", U.TEXT, K.IDENTITY, lambda r: r.model.target, sql="target"),
    C("device", U.TEXT, K.IDENTITY, lambda r: device_label(r.device_name, r.device), sql="device_label",
      doc="the device name plus the emulated CPU, e.g. qemu-aarch64://?cpu=cortex-a76"),
    C("device_name", U.TEXT, K.IDENTITY, lambda r: r.device_name, show=NEVER, sql="device",
      doc="the device as given (inventory name or URI): what --device filters on"),
    C("arch", U.TEXT, K.DEVICE, lambda r: r.device.arch or r.model.arch),
    C("cpu", U.TEXT, K.DEVICE, lambda r: r.device.cpu_model),
    C("source", U.TEXT, K.IDENTITY, lambda r: r.source, sql="source", doc="measured | emulated"),
    C("threads", U.COUNT, K.IDENTITY, lambda r: r.provenance.threads, sql="threads"),
    C("llm_test", U.TEXT, K.IDENTITY, _llm("test"), sql="llm_test",
      doc="LLM runs: pp64 (prefill of 64 tokens), tg32 (32 decode steps), generate, score"),
    C("samples", U.COUNT, K.LATENCY, _lat("n"), doc="timed iterations (LLM: decode steps, prefills or windows)"),
    C("median_ms", U.MS, K.LATENCY, _lat("median_ms"), LOWER, ALWAYS, sql="median_ms", compared=True, summary=True),
    C("ci95_low_ms", U.MS, K.LATENCY, _lat("ci95_low_ms"), show=ALWAYS, doc="bootstrap 95 % CI of the median"),
    C("ci95_high_ms", U.MS, K.LATENCY, _lat("ci95_high_ms"), show=ALWAYS),
    C("p90_ms", U.MS, K.LATENCY, _lat("p90_ms"), LOWER, ALWAYS, sql="p90_ms", compared=True, summary=True),
    C("p99_ms", U.MS, K.LATENCY, _lat("p99_ms"), LOWER, ALWAYS, sql="p99_ms", compared=True, summary=True),
    C("mean_ms", U.MS, K.LATENCY, _lat("mean_ms"), LOWER, compared=True),
    C("std_ms", U.MS, K.LATENCY, _lat("std_ms")),
    C("min_ms", U.MS, K.LATENCY, _lat("min_ms")),
    C("max_ms", U.MS, K.LATENCY, _lat("max_ms")),
    C("cv", U.FRACTION, K.LATENCY, _lat("cv"), LOWER, compared=True, summary=True,
      doc="coefficient of variation std/mean"),
    C("wall_median_ms", U.MS, K.LATENCY, lambda r: r.wall.median_ms if r.wall else None,
      doc="around the whole iteration (bind inputs, execute, outputs)"),
    C("prefill_tokens_per_s", U.TOKENS_PER_S, K.LLM, _llm("prefill_tokens_per_s"), HIGHER, compared=True,
      summary=True, formatter=format_rate, doc="prompt tokens / prefill execute time, mean over repetitions"),
    C("prefill_tokens_per_s_sd", U.TOKENS_PER_S, K.LLM, _llm("prefill_tokens_per_s_sd"), formatter=format_rate),
    C("decode_tokens_per_s", U.TOKENS_PER_S, K.LLM, _llm("decode_tokens_per_s"), HIGHER, compared=True,
      summary=True, formatter=format_rate, doc="decode steps / their execute time, mean over repetitions"),
    C("decode_tokens_per_s_sd", U.TOKENS_PER_S, K.LLM, _llm("decode_tokens_per_s_sd"), formatter=format_rate),
    C("ttft_ms", U.MS, K.LLM, _llm("ttft_ms"), LOWER, compared=True, summary=True,
      doc="time to first token: prefill + choosing it"),
    C("perplexity", U.PERPLEXITY, K.LLM, _llm("perplexity"), LOWER, compared=True, summary=True,
      doc="on the device, over the artifact's held-out text"),
    C("eager_perplexity", U.PERPLEXITY, K.LLM, _llm("eager_perplexity"), summary=True,
      doc="eager fp32 at export, same text and windows"),
    C("kv_cache_bytes", U.BYTES, K.MEMORY, _llm("kv_cache_bytes"), doc="the KV cache at max context"),
    C("train_method", U.TEXT, K.IDENTITY, _tr("method"), doc="fine-tuning runs: full | lora | mezo | zo-lora"),
    C("train_steps", U.COUNT, K.TRAINING, _tr("steps")),
    C("final_loss", U.FRACTION, K.TRAINING, lambda r: r.training.loss_curve[-1][1]
      if r.training is not None and r.training.loss_curve else None, LOWER, summary=True, formatter=lambda x: f"{x:.4g}",
      doc="training loss at the last step"),
    C("eval_accuracy_before", U.FRACTION, K.TRAINING, _ev("before", "accuracy"), summary=True,
      doc="held-out accuracy on the device before training"),
    C("eval_accuracy_after", U.FRACTION, K.TRAINING, _ev("after", "accuracy"), HIGHER, compared=True, summary=True,
      doc="held-out accuracy on the device after training"),
    C("steps_per_s", U.PER_S, K.TRAINING, _tr("steps_per_s"), HIGHER, compared=True, summary=True,
      formatter=format_rate, doc="optimizer steps per second of execute time"),
    C("trainable_bytes", U.BYTES, K.MEMORY, _tr("trainable_bytes"), summary=True),
    C("optimizer_state_bytes", U.BYTES, K.MEMORY, _tr("optimizer_state_bytes")),
    C("load_ms", U.MS, K.MEMORY, lambda r: r.memory.load_ms, LOWER, compared=True),
    C("peak_rss_bytes", U.BYTES, K.MEMORY, lambda r: r.memory.peak_rss_bytes, LOWER, compared=True, summary=True),
    C("planned_bytes", U.BYTES, K.MEMORY, lambda r: r.memory.planned_bytes, LOWER, compared=True),
    C("pte_bytes", U.BYTES, K.MEMORY, lambda r: r.memory.pte_bytes, LOWER, compared=True, summary=True),
    C("bundle_bytes", U.BYTES, K.MEMORY, lambda r: r.memory.bundle_bytes),
    C("op_sum_ms", U.MS, K.OPERATORS, _ops("op_sum_ms")),
    C("op_coverage", U.FRACTION, K.OPERATORS, _ops("coverage"), doc="operator times / measured median"),
    C("min_snr_db", U.DB, K.ACCURACY, lambda r: r.accuracy.min_snr_db if r.accuracy and r.accuracy.outputs else None,
      HIGHER, compared=True, summary=True, doc="worst output's SNR against eager"),
    C("top1_agreement", U.FRACTION, K.ACCURACY, _top1, HIGHER, compared=True, summary=True),
    C("task_accuracy", U.FRACTION, K.ACCURACY, _acc("task_accuracy"), HIGHER, compared=True, summary=True),
    C("accuracy_ok", U.BOOL, K.ACCURACY, _acc("passed"), HIGHER, sql="accuracy_ok", compared=True, summary=True,
      doc="device outputs within the artifact's thresholds (None: not checked)"),
    C("unstable", U.BOOL, K.LATENCY, lambda r: bool(r.latency.warnings)),
    C("governor", U.TEXT, K.DEVICE, lambda r: r.device.governor),
    C("freq_khz", U.KHZ, K.DEVICE, lambda r: r.device.freq_khz),
    C("temperature_c", U.CELSIUS, K.DEVICE, lambda r: r.device.temperature_c),
    C("recipe_hash", U.TEXT, K.PROVENANCE, lambda r: r.model.recipe_hash),
    C("runner_version", U.TEXT, K.PROVENANCE, lambda r: r.provenance.runner_version, show=NEVER),
    C("executorch_version", U.TEXT, K.PROVENANCE, lambda r: r.provenance.executorch_version, show=NEVER),
    C("edgerun_version", U.TEXT, K.PROVENANCE, lambda r: r.provenance.edgerun_version, show=NEVER),
    C("git_commit", U.TEXT, K.PROVENANCE, lambda r: r.provenance.git_commit, show=NEVER),
    C("sweep_id", U.TEXT, K.PROVENANCE, lambda r: r.sweep_id, show=NEVER, sql="sweep_id"),
    C("cell", U.TEXT, K.PROVENANCE, lambda r: r.cell, show=NEVER, sql="cell"),
)
del C, U, K

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
if len(BY_NAME) != len(COLUMNS):
    raise RuntimeError("two columns share a name in the registry")

#: Columns the results store keeps as indexed SQL columns, in registry order.
STORED: tuple[Column, ...] = tuple(c for c in COLUMNS if c.sql)
#: Columns ``compare`` reports a change of.
COMPARED: tuple[Column, ...] = tuple(c for c in COLUMNS if c.compared)
#: Columns of the runs table (bench/profile) that say which run is which.
IDENTITY: tuple[Column, ...] = tuple(c for c in COLUMNS if c.kind == Kind.IDENTITY and c.show != NEVER)
#: Metrics of the runs table (bench/profile), shown when any run has them.
SUMMARY: tuple[Column, ...] = tuple(c for c in COLUMNS if c.summary)


def column(name: str) -> Column:
    """The registry entry of ``name`` (a KeyError names the unknown column)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no column {name!r} in the registry (edgerun.runtime.columns.COLUMNS)") from None


def row(record: "RunRecord") -> dict[str, Any]:
    """Every column of ``record``, in registry order."""
    return {c.name: c.get(record) for c in COLUMNS}


def format_value(name: str, value: Any) -> str:
    """One cell, formatted by its column's unit; a name outside the registry is formatted by its suffix."""
    col = BY_NAME.get(name)
    if col is not None:
        return col.format(value)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    for suffix, fn in (("_bytes", format_bytes), ("_ms", format_ms), ("_db", format_db)):
        if name.endswith(suffix) and isinstance(value, (int, float)):
            return fn(value)
    if name in ("share", "coverage") and isinstance(value, (int, float)):
        return format_fraction(value)
    return _format_plain(value)


NAME_LIMIT = 80  # characters of an operator (group) name in a table; the full name is in JSON and <details>


def cap_name(name: str, limit: int = NAME_LIMIT) -> str:
    """A ``+``-joined group name (``aten.conv+aten.relu+...``) cut to ``limit`` characters as
    ``aten.conv+aten.relu… (+N more)``; any other long name ends in ``…``."""
    if len(name) <= limit:
        return name
    parts = name.split("+")
    for keep in range(len(parts) - 1, 0, -1):
        text = "+".join(parts[:keep]) + f"… (+{len(parts) - keep} more)"
        if len(text) <= limit:
            return text
    return name[: limit - 1] + "…"
