"""The run record: one schema for one run, from which every printer, the store and compare read.

A :class:`RunRecord` keeps every raw sample and derives its statistics; every group of numbers says
where it came from (:data:`MEASURED`, :data:`EMULATED` or :data:`ESTIMATED`) and the provenance
(device, runner and ExecuTorch versions, edgerun version and git commit, recipe hash, threads) is
part of the record, not of a log.

:func:`edgerun.runtime.analysis.analyse` turns what a run produced (a ``RunArtifacts``) and the
artifact's manifest into a record.
:func:`flat_row` is the one flat view (ordered columns, units in the names) that the markdown, CSV
and HTML tables are printed from; :func:`compare_records` compares two records.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from edgerun.core.errors import AnalysisError, UsageError
from edgerun.devices.info import DeviceInfo
from edgerun.runtime import columns as _columns
from edgerun.runtime.accuracy import AccuracyResult
from edgerun.runtime.optable import OperatorProfile
from edgerun.runtime.stats import (
    DEFAULT_ALPHA, DEFAULT_MIN_EFFECT, VERDICT_SAME, LatencyStats, SampleComparison, compare_samples,
)

log = logging.getLogger("edgerun.record")

RECORD_VERSION = 1

MEASURED = "measured"  # on real hardware, by edgerun
EMULATED = "emulated"  # under an emulator (qemu) or a stand-in (pty serial): checks function, not speed
ESTIMATED = "estimated"  # computed, not observed (planned memory from the program; Vela estimates)
SOURCES = (MEASURED, EMULATED, ESTIMATED)
#: the verdict of a comparison with an estimated run: one figure from a model each, no test applies
VERDICT_ESTIMATED = "estimated"


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
    threads_auto: dict | None = None  # --threads auto: the runner's trial ({chosen, trials: [{threads, median_ns}]})


@dataclass(frozen=True)
class Memory:
    planned_bytes: int | None  # non-constant buffers planned in the program (from the manifest)
    peak_rss_bytes: int | None  # VmHWM of the runner
    rss_bytes: int | None  # VmRSS at the end of the run
    pte_bytes: int | None  # the program on the device: the .pte and its external data file (.ptd), if any
    bundle_bytes: int | None  # the runtime bundle pushed to the device
    load_ms: float | None  # program + method load
    program_load_ms: float | None
    method_load_ms: float | None
    sources: Mapping[str, str] = field(default_factory=dict)  # field name -> measured/emulated/estimated


@dataclass(frozen=True)
class LLMMetrics:
    """An LLM run's figures (the runner's LLM mode): the test (``pp64``, ``tg32``, ``generate``, ``score``),
    tokens/s of prefill and decode (mean and sd over repetitions, from the runner's steady clock
    around execute), time to first token, perplexity on the device beside the export's eager figure
    on the same text and windows, and the KV-cache and weight sizes from the manifest."""

    test: str
    mode: str | None = None
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    decode_forwards: int | None = None
    repetitions: int | None = None
    stop: str | None = None                   # stop_id | max_new_tokens | context
    ttft_ms: float | None = None              # median over repetitions: prefill + choosing the first token
    prefill_tokens_per_s: float | None = None
    prefill_tokens_per_s_sd: float | None = None
    decode_tokens_per_s: float | None = None
    decode_tokens_per_s_sd: float | None = None
    perplexity: float | None = None           # on the device
    perplexity_tokens: int | None = None
    perplexity_window: int | None = None
    eager_perplexity: float | None = None     # eager fp32 at export, same text and windows
    export_program_perplexity: float | None = None  # the program in the pybindings at export
    max_context: int | None = None
    kv_cache_bytes: int | None = None
    kv_cache_bytes_per_token: int | None = None
    weight_bytes: int | None = None
    ids: tuple[int, ...] = ()
    text: str | None = None
    same_ids_every_repetition: bool | None = None
    request: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ids"] = list(self.ids)
        d["request"] = dict(self.request)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LLMMetrics":
        kw = {k: d.get(k) for k in cls.__dataclass_fields__ if k in d}
        kw["ids"] = tuple(d.get("ids") or ())
        kw["request"] = dict(d.get("request") or {})
        return cls(**kw)


@dataclass(frozen=True)
class EvalPoint:
    """One held-out evaluation on the device (``when``: before | after | step); an LLM's also carries its
    perplexity (exp of the mean next-token loss)."""

    when: str
    step: int
    samples: int
    loss: float | None = None
    accuracy: float | None = None
    perplexity: float | None = None

    def with_perplexity(self) -> "EvalPoint":
        ppl = math.exp(self.loss) if self.loss is not None and self.loss < 50 else None
        return replace(self, perplexity=ppl)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.perplexity is None:
            d.pop("perplexity")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EvalPoint":
        def num(key):
            v = d.get(key)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        return cls(when=str(d.get("when") or ""), step=int(d.get("step") or 0), samples=int(d.get("samples") or 0),
                   loss=num("loss"), accuracy=num("accuracy"), perplexity=num("perplexity"))


@dataclass(frozen=True)
class TrainingMetrics:
    """A fine-tuning run on the device (the runner's train mode): what was trained how, the loss curve,
    held-out loss/accuracy before and after (computed on the device), throughput and the memory table
    the survey is about (trainable parameters and bytes, optimizer state, peak RSS is in ``memory``)."""

    method: str                                  # full | lora | mezo | zo-lora
    optimizer: str
    lr: float
    steps: int                                   # optimizer steps run in this invocation
    start_step: int
    batch: int
    grad_accum: int
    trainable: int
    frozen: int
    trainable_bytes: int
    optimizer_state_bytes: int
    train_samples: int
    eval_samples: int
    loss_curve: tuple[tuple[int, float], ...]    # (step, loss) per step line
    eval: tuple[EvalPoint, ...] = ()
    steps_per_s: float | None = None             # optimizer steps / their execute time
    samples_per_s: float | None = None
    data_sha256: str | None = None
    checkpoint: str | None = None
    weights_sha256: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def eval_before(self) -> EvalPoint | None:
        return next((e for e in self.eval if e.when == "before"), None)

    @property
    def eval_after(self) -> EvalPoint | None:
        return next((e for e in self.eval if e.when == "after"), None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss_curve"] = [list(x) for x in self.loss_curve]
        d["eval"] = [e.to_dict() for e in self.eval]
        d["settings"] = dict(self.settings)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainingMetrics":
        kw = {k: d.get(k) for k in cls.__dataclass_fields__ if k in d}
        kw["loss_curve"] = tuple((int(s), float(v)) for s, v in d.get("loss_curve") or ())
        kw["eval"] = tuple(EvalPoint.from_dict(e) for e in d.get("eval") or () if isinstance(e, Mapping))
        kw["settings"] = dict(d.get("settings") or {})
        return cls(**kw)


@dataclass(frozen=True)
class BoardFit:
    """Does a program fit a board? What it needs (SRAM: ``sram_parts`` says of what, e.g. Vela's NPU SRAM and the
    program's planned buffers, or a tensor arena; flash: the ``.pte``), and, for each memory whose size on the
    board was given, that size, whether it fits and the headroom (negative: missing bytes)."""

    sram_needed_bytes: int
    flash_needed_bytes: int
    sram_parts: Mapping[str, int] = field(default_factory=dict)
    planned_buffers: tuple[int, ...] = ()          # a program with no NPU: its planned buffers (the arena's parts)
    sram_bytes: int | None = None
    flash_bytes: int | None = None
    sram_fits: bool | None = None
    flash_fits: bool | None = None
    sram_headroom_bytes: int | None = None
    flash_headroom_bytes: int | None = None

    @property
    def fits(self) -> bool | None:
        """True/False when a board size was given (every given memory fits), else None."""
        given = [v for v in (self.sram_fits, self.flash_fits) if v is not None]
        return all(given) if given else None

    def misfits(self) -> list[str]:
        """A sentence per memory the program does not fit."""
        return [f"it does not fit the board's {k.upper()}: needs {getattr(self, f'{k}_needed_bytes'):,} bytes, the "
                f"board has {getattr(self, f'{k}_bytes'):,}" for k in ("sram", "flash")
                if getattr(self, f"{k}_fits") is False]

    def to_dict(self) -> dict:
        out = {"sram_needed_bytes": self.sram_needed_bytes, "flash_needed_bytes": self.flash_needed_bytes,
               "sram_parts": dict(self.sram_parts)}
        if self.planned_buffers:
            out["planned_buffers"] = list(self.planned_buffers)
        for k in ("sram", "flash"):
            if getattr(self, f"{k}_bytes") is not None:
                out.update({f"{k}_bytes": getattr(self, f"{k}_bytes"), f"{k}_fits": getattr(self, f"{k}_fits"),
                            f"{k}_headroom_bytes": getattr(self, f"{k}_headroom_bytes")})
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BoardFit":
        d = dict(d)
        d["sram_parts"] = dict(d.get("sram_parts") or {})
        d["planned_buffers"] = tuple(d.get("planned_buffers") or ())
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class LayerEstimate:
    """One layer of an NPU compiler's per-layer estimate (Vela's ``--verbose-performance``)."""

    op: str
    name: str
    target: str          # NPU | CPU
    cycles: int
    macs: int
    mac_util_pct: float | None = None


@dataclass(frozen=True)
class Estimate:
    """What an estimated run record (source ``estimated``) came from: an NPU compiler's performance model (Vela:
    cycles at a clock, SRAM and flash it planned, MACs, layers on the NPU and off it), the program's CPU-side
    kernel calls, the slowest layers, and the memory fit. Nothing in it was run."""

    compiler: str
    accelerator: str
    system_config: str
    memory_mode: str
    clock_hz: float
    cycles_total: int
    cycles_npu: int
    inference_ms: float
    sram_bytes: int
    off_chip_flash_bytes: int
    dram_bytes: int
    nn_macs: int
    npu_layers: int
    cpu_layers: int
    fit: BoardFit
    npu_share: float | None = None
    cpu_kernel_calls: int = 0
    npu_delegate_calls: int = 0
    top_layers: tuple[LayerEstimate, ...] = ()

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("fit", "top_layers")}
        return {**out, "fit": self.fit.to_dict(), "top_layers": [asdict(x) for x in self.top_layers]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Estimate":
        d = dict(d)
        d["fit"] = BoardFit.from_dict(d["fit"])   # always written with the estimate; never made up when absent
        d["top_layers"] = tuple(LayerEstimate(**{k: x[k] for k in LayerEstimate.__dataclass_fields__ if k in x})
                                for x in d.get("top_layers") or ())
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    created_at: str  # ISO 8601, UTC
    model: ModelInfo
    device_name: str
    device: DeviceInfo  # what the probe found (arch, cpu_model, cores, governor, freq, temperature, ...)
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
    llm: LLMMetrics | None = None  # LLM runs (generate, bench-llm, perplexity)
    training: TrainingMetrics | None = None  # fine-tuning runs on the device
    # an estimated run (source "estimated"): the compiler's figures it came from; nothing in it was run
    estimate: Estimate | None = None
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
        if self.llm is not None:
            out["llm"] = self.source
        if self.training is not None:
            out["training"] = self.source
        if self.estimate is not None:
            out["estimate"] = ESTIMATED
        return out

    # -- serialisation (the store and --json use these)
    def to_dict(self) -> dict:
        return {
            "record_version": self.record_version,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "model": {**asdict(self.model), "inputs": list(self.model.inputs)},
            "device_name": self.device_name,
            "device": self.device.to_json(),
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
            "llm": self.llm.to_dict() if self.llm else None,
            "training": self.training.to_dict() if self.training else None,
            **({"estimate": self.estimate.to_dict()} if self.estimate is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunRecord":
        model = dict(d["model"])
        model["inputs"] = tuple(model.get("inputs") or ())
        return cls(
            run_id=d["run_id"], created_at=d["created_at"],
            model=ModelInfo(**{k: model.get(k) for k in ModelInfo.__dataclass_fields__ if k in model}),
            device_name=d["device_name"], device=DeviceInfo.from_json(d.get("device")),
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
            llm=LLMMetrics.from_dict(d["llm"]) if d.get("llm") else None,
            training=TrainingMetrics.from_dict(d["training"]) if d.get("training") else None,
            estimate=Estimate.from_dict(d["estimate"]) if isinstance(d.get("estimate"), Mapping) else None,
            record_version=d.get("record_version", RECORD_VERSION),
        )


# ------------------------------------------------------------------- an imported record, checked
class RecordInvalid(UsageError):
    """A record from outside (``runs import``) that is not what edgerun writes: the field is named."""

    default_stage = "import"


MAX_RECORD_BYTES = 256 << 20     # a record.json larger than this is not read
MAX_TEXT = 1 << 20               # characters of one text field (generated LLM text is the longest)
MAX_ITEMS = 20_000_000           # entries of one list (samples, loss curve, token ids)
MAX_INT = (1 << 63) - 1
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: numbers that may be negative (everything else -- times, sizes, counts, rates, losses -- may not)
_SIGNED = frozenset({"drift", "temperature_c", "snr_db", "cosine", "sram_headroom_bytes", "flash_headroom_bytes"})
#: numbers that are fractions of one
_FRACTIONS = frozenset({"accuracy", "task_accuracy", "top1_agreement", "npu_share"})


def _bad(where: str, path: str, problem: str) -> RecordInvalid:
    return RecordInvalid(f"{where}: field {path} {problem}.",
                         hint="edgerun did not write this record, or it was edited: fix or remove the field (or "
                              "measure again); nothing was imported.")


def _check_text(v: str, where: str, path: str) -> None:
    from edgerun.core.text import sanitize_text

    if len(v) > MAX_TEXT:
        raise _bad(where, path, f"is {len(v):,} characters long (at most {MAX_TEXT:,})")
    if sanitize_text(v) != v:
        bad = sorted(repr(c) for c in set(v) if sanitize_text(c) != c)[:5]
        raise _bad(where, path, f"holds terminal escapes or control characters ({' '.join(bad)}); expected "
                                "plain text")


def _check_number(v: Any, name: str, where: str, path: str, *, integer: bool) -> None:
    if isinstance(v, bool) or not isinstance(v, (int,) if integer else (int, float)):
        raise _bad(where, path, f"is {type(v).__name__} {v!r:.40}; expected {'an integer' if integer else 'a number'}")
    if integer and not -MAX_INT <= v <= MAX_INT:
        raise _bad(where, path, f"is {v}, out of range")
    if not integer and not math.isfinite(v) and not (name == "snr_db" and not math.isnan(v)):
        raise _bad(where, path, f"is {v}; expected a finite number")
    if v < 0 and name not in _SIGNED:
        raise _bad(where, path, f"is {v}; expected a number >= 0")
    if name in _FRACTIONS and not 0 <= v <= 1:
        raise _bad(where, path, f"is {v}; expected a fraction in [0, 1]")
    if name == "cosine" and not -1.0001 <= v <= 1.0001:
        raise _bad(where, path, f"is {v}; expected a cosine in [-1, 1]")


def _check_any(v: Any, where: str, path: str, depth: int = 0) -> None:
    """A free-form JSON value (settings, build flags, a request): bounded, finite, plain text."""
    if depth > 16:
        raise _bad(where, path, "nests deeper than 16 levels")
    if v is None or isinstance(v, bool):
        return
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            raise _bad(where, path, f"is {v}; expected a finite number")
        return
    if isinstance(v, str):
        return _check_text(v, where, path)
    if isinstance(v, list):
        if len(v) > MAX_ITEMS:
            raise _bad(where, path, f"has {len(v):,} entries (at most {MAX_ITEMS:,})")
        for i, x in enumerate(v):
            _check_any(x, where, f"{path}[{i}]", depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            _check_text(str(k), where, f"{path} (a key)")
            _check_any(x, where, f"{path}.{k}", depth + 1)
        return
    raise _bad(where, path, f"is {type(v).__name__}; expected JSON")


def _check_value(v: Any, tp: Any, name: str, where: str, path: str) -> None:
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return _check_any(v, where, path)
    if origin in (typing.Union, types.UnionType):
        if v is None:
            if type(None) in args or name == "snr_db":
                return
            raise _bad(where, path, "is null; expected a value")
        options = [a for a in args if a is not type(None)]
        errors = []
        for a in options:
            try:
                return _check_value(v, a, name, where, path)
            except RecordInvalid as exc:
                errors.append(exc)
        raise errors[0]
    if v is None:
        if name == "snr_db":  # strict JSON carries a bit-exact output's +inf as null
            return
        raise _bad(where, path, "is null; expected a value")
    if dataclasses.is_dataclass(tp):
        return check_fields(v, tp, where, path)
    if tp is bool:
        if not isinstance(v, bool):
            raise _bad(where, path, f"is {type(v).__name__} {v!r:.40}; expected true or false")
        return
    if tp is int or tp is float:
        return _check_number(v, name, where, path, integer=tp is int)
    if tp is str:
        if not isinstance(v, str):
            raise _bad(where, path, f"is {type(v).__name__} {v!r:.40}; expected text")
        return _check_text(v, where, path)
    if origin in (tuple, list) or tp in (tuple, list) or origin is typing.Sequence or str(origin).endswith("Sequence'>"):
        if not isinstance(v, list):
            raise _bad(where, path, f"is {type(v).__name__}; expected a list")
        if len(v) > MAX_ITEMS:
            raise _bad(where, path, f"has {len(v):,} entries (at most {MAX_ITEMS:,})")
        if args and args[-1] is not Ellipsis:  # a fixed tuple: (step, loss)
            if len(v) != len(args):
                raise _bad(where, path, f"has {len(v)} entries; expected {len(args)}")
            for i, (x, a) in enumerate(zip(v, args)):
                _check_value(x, a, name, where, f"{path}[{i}]")
            return
        item = args[0] if args else Any
        for i, x in enumerate(v):
            _check_value(x, item, name, where, f"{path}[{i}]")
        return
    if origin in (dict,) or tp is dict or "Mapping" in str(origin or tp):
        if not isinstance(v, dict):
            raise _bad(where, path, f"is {type(v).__name__}; expected an object")
        return _check_any(v, where, path)
    return _check_any(v, where, path)


def check_fields(d: Any, cls: type, where: str, path: str) -> None:
    """``d`` (parsed JSON) against the dataclass ``cls``, field by field, from its type annotations: every
    field without a default present, each of its type, numbers finite and (but for a few) >= 0, text
    without terminal escapes and bounded; keys it does not know are ignored (they are not imported)."""
    import typing

    if not isinstance(d, dict):
        raise _bad(where, path or "(the record)", f"is {type(d).__name__}; expected an object")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _bad(where, sub, "is missing")
            continue
        _check_value(d[f.name], hints[f.name], f.name, where, sub)


def check_run_id(run_id: Any, where: str) -> None:
    """A run id from outside: letters, digits, ``.``, ``_``, ``-`` (it names directories and rows)."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise _bad(where, "run_id", f"is {run_id!r:.80}; expected letters, digits, '.', '_' or '-' (at most 64)")


def check_record_dict(d: Any, where: str) -> None:
    """Refuse (:class:`RecordInvalid`, exit 2) a record from outside that is not one edgerun writes, naming
    the field: schema version, types, ranges, finite numbers, source labels, bounded sizes, plain text, and
    statistics that agree with the samples they are derived from."""
    check_fields(d, RunRecord, where, "")
    v = d.get("record_version", RECORD_VERSION)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= RECORD_VERSION:
        raise _bad(where, "record_version", f"is {v!r}; this edgerun reads record versions 1..{RECORD_VERSION}")
    check_run_id(d["run_id"], where)
    try:
        _dt.datetime.fromisoformat(d["created_at"])
    except ValueError:
        raise _bad(where, "created_at", f"is {d['created_at']!r}; expected an ISO 8601 time") from None
    labels = [("source", d["source"]), *((f"memory.sources.{k}", x) for k, x in d["memory"].get("sources", {}).items())]
    if d.get("accuracy"):
        labels.append(("accuracy.source", d["accuracy"].get("source")))
    for path, label in labels:
        if label not in SOURCES:
            raise _bad(where, path, f"is {label!r}; expected one of {', '.join(SOURCES)}")
    timed = sorted(s["execute_ns"] for s in d["samples"] if not s["warmup"])
    lat = d["latency"]
    if lat["n"] != len(timed):
        raise _bad(where, "latency.n", f"is {lat['n']} but the record holds {len(timed)} timed samples")
    if timed:
        import numpy as np

        for key, value in (("median_ms", float(np.median(timed)) / 1e6), ("min_ms", timed[0] / 1e6),
                           ("max_ms", timed[-1] / 1e6)):
            if not math.isclose(lat[key], value, rel_tol=1e-6, abs_tol=1e-9):
                raise _bad(where, f"latency.{key}", f"is {lat[key]} but the samples give {value}")


# ---------------------------------------------------------------------------------- analyse
def cell_key(model: str, target: str, scheme: str, device: str, threads: int | None = None) -> str:
    """The key of one bench cell (``RunRecord.cell``): a resumed sweep skips cells already stored."""
    return "/".join([model, target, scheme, device, f"t{threads if threads is not None else 'default'}"])


def new_run_id(now: _dt.datetime | None = None) -> str:
    """Short and typeable: ``r-YYYYMMDD-xxxxxx`` (6 random hex digits)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"r-{now:%Y%m%d}-{secrets.token_hex(3)}"


# ------------------------------------------------------------------------------- flat view
def flat_row(r: RunRecord) -> dict[str, Any]:
    """The one flat view of a record, read from the column registry (:data:`edgerun.runtime.columns.COLUMNS`);
    column names carry units. Every table printer, the CSV and the store's indexed columns use it."""
    return _columns.row(r)


# ---------------------------------------------------------------------------------- compare
# An accuracy regression of B against A (besides B failing the thresholds A passed):
DEFAULT_TASK_ACCURACY_DROP = 0.01  # task accuracy fell by more than 1 percentage point
DEFAULT_SNR_DROP_DB = 6.0  # the worst output's SNR against eager fell by more than 6 dB
SNR_CAP_DB = 100.0  # an exact match (inf dB) counts as this much


@dataclass(frozen=True)
class MetricDelta:
    metric: str
    a: float | None
    b: float | None
    delta: float | None  # b - a, in the metric's unit
    delta_rel: float | None  # (b - a) / a; None where a relative change means nothing (dB, fractions)
    better: str  # "lower" or "higher": which direction is an improvement
    unit: str = "ms"  # the registry's unit of the metric


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
    accuracy_regressions: tuple[str, ...] = ()  # one sentence per regression of B against A

    def to_dict(self) -> dict:
        return {"run_a": self.run_a, "run_b": self.run_b, "verdict": self.verdict, "reliable": self.reliable,
                "latency": self.latency.to_dict(),
                "metrics": [asdict(m) for m in self.metrics], "operators": [asdict(m) for m in self.operators],
                "accuracy_regressions": list(self.accuracy_regressions),
                "warnings": list(self.warnings)}


# (flat_row column, better direction) of every compared metric: from the registry, never listed by hand.
_COMPARED = tuple((c.name, c.better) for c in _columns.COMPARED)


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and not math.isfinite(x))


def _delta(metric: str, a, b, better: str, unit: _columns.Unit = _columns.Unit.MS) -> MetricDelta:
    if isinstance(a, bool) or isinstance(b, bool):
        d = (int(b) - int(a)) if a is not None and b is not None else None
    else:
        d = b - a if _finite(a) and _finite(b) else None
    rel = d / a if unit.relative and d is not None and a not in (0, 0.0) else None
    return MetricDelta(metric=metric, a=a, b=b, delta=d, delta_rel=rel, better=better, unit=unit.value)


def accuracy_regressions(a: RunRecord, b: RunRecord, *, task_drop: float = DEFAULT_TASK_ACCURACY_DROP,
                         snr_drop_db: float = DEFAULT_SNR_DROP_DB) -> list[str]:
    """Where B is less accurate than A: failed thresholds A passed, task accuracy or min SNR dropped."""
    out: list[str] = []
    pa = a.accuracy.passed if a.accuracy else None
    pb = b.accuracy.passed if b.accuracy else None
    if pa is True and pb is False:
        why = "; ".join(b.accuracy.failures) if b.accuracy.failures else "no reason recorded"
        out.append(f"{b.run_id} fails the artifact's accuracy thresholds that {a.run_id} passed ({why})")
    ta = a.accuracy.task_accuracy if a.accuracy else None
    tb = b.accuracy.task_accuracy if b.accuracy else None
    if ta is not None and tb is not None and ta - tb > task_drop:
        out.append(f"task accuracy dropped {(ta - tb) * 100:.1f} pp ({ta:.1%} → {tb:.1%}; threshold "
                   f"{task_drop * 100:.1f} pp)")
    sa = a.accuracy.min_snr_db if a.accuracy and a.accuracy.outputs else None
    sb = b.accuracy.min_snr_db if b.accuracy and b.accuracy.outputs else None
    if sa is not None and sb is not None:
        ca, cb = min(sa, SNR_CAP_DB), min(sb, SNR_CAP_DB)
        if ca - cb > snr_drop_db:
            def db(x):
                return "exact" if math.isinf(x) else f"{x:.1f} dB"

            out.append(f"min SNR vs eager dropped {ca - cb:.1f} dB ({db(sa)} → {db(sb)}; threshold "
                       f"{snr_drop_db:g} dB)")
    return out


def compare_records(a: RunRecord, b: RunRecord, *, alpha: float = DEFAULT_ALPHA,
                    min_effect: float = DEFAULT_MIN_EFFECT) -> RunComparison:
    """B against A: a U test on the raw execute samples, deltas of every compared registry column
    (relative only where the unit allows it) and the accuracy regressions of B."""
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
    metrics = tuple(_delta(c.name, fa[c.name], fb[c.name], c.better, c.unit) for c in _columns.COMPARED)
    ops: list[MetricDelta] = []
    if a.operators and b.operators:
        rows_b = {r.name: r for r in b.operators.rows}
        for ra in a.operators.rows:
            if ra.name in rows_b:
                ops.append(_delta(ra.name, ra.median_ms, rows_b[ra.name].median_ms, "lower"))
    regressions = accuracy_regressions(a, b)
    warnings.extend(f"accuracy regression: {w}" for w in regressions)
    # A verdict between unstable runs may measure the machine (other load, throttling), not the program.
    reliable = not (a.latency.warnings or b.latency.warnings or EMULATED in (a.source, b.source))
    if ESTIMATED in (a.source, b.source):
        ma, mb = a.latency.median_ms, b.latency.median_ms
        change = f"; the estimate changes by {(mb - ma) / ma:+.1%}" if ma and ESTIMATED == a.source == b.source else ""
        warnings.append("at least one run is estimated (a compiler's performance model: one figure, nothing ran), "
                        f"so no statistical test applies{change}")
        return RunComparison(run_a=a.run_id, run_b=b.run_id, verdict=VERDICT_ESTIMATED, reliable=False,
                             latency=latency, metrics=metrics, operators=tuple(ops), warnings=tuple(warnings),
                             accuracy_regressions=tuple(regressions))
    if not reliable and latency.verdict != VERDICT_SAME:
        warnings.append(f"'{latency.verdict}' is unreliable: a run was unstable or emulated, so the machine may "
                        "have changed rather than the program; re-run both on a quiet machine (or interleaved)")
    return RunComparison(run_a=a.run_id, run_b=b.run_id, verdict=latency.verdict, reliable=reliable, latency=latency,
                         metrics=metrics, operators=tuple(ops), warnings=tuple(warnings),
                         accuracy_regressions=tuple(regressions))
