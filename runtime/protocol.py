"""The runner's output protocol as types (``runtime/native/PROTOCOL.md``), parsed once.

* :func:`parse_runner_output` turns what ``edgerun-runner`` printed (whatever transport carried it)
  into a :class:`RunnerResult` whose lines are typed (:class:`Header`, :class:`Load`,
  :class:`Iteration`, :class:`Batch`, :class:`Summary`, :class:`ErrorLine`, :class:`Kernels`; and the
  LLM mode's :class:`LlmLine`, :class:`Prefill`, :class:`Token`, :class:`Generation`,
  :class:`ScoreWindow`, :class:`Perplexity`). A
  line whose fields have the wrong types (a non-numeric ``execute_ns``) is a protocol problem kept on
  the result, never a crash later.
* :func:`runner_failure` is the one place a failed runner becomes an error: a
  :class:`~edgerun.core.errors.RunnerError` whose exit code is the runner's own (10 load, 11 input,
  12 execute, 13 output) or 14 when it died without saying why. A run on a device wraps that error
  in a :class:`~edgerun.core.errors.DeviceRunError` (exit 15) naming the device and its run directory.
* :class:`RunArtifacts` is what one run produced, locally or on a device: the parsed result, the
  device's typed info, the pulled outputs, ETDump and held-out-split outputs, the bundle size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgerun.core.errors import RUNNER_EXIT_STAGES, RunnerError
from edgerun.devices.base import DeviceInfo

PROTOCOL_VERSION = 1
EXIT_STAGES = {int(k): v for k, v in RUNNER_EXIT_STAGES.items()}


class _Bad(ValueError):
    pass


def _f(d: Mapping[str, Any], key: str, kind: type | tuple, *, optional: bool = False, default: Any = None) -> Any:
    value = d.get(key)
    if value is None:
        if optional:
            return default
        raise _Bad(f"'{key}' is missing")
    ok = isinstance(value, kind) and not (kind in (int, (int,)) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _Bad(f"'{key}' must be {want}, got {value!r:.60}")
    return value


@dataclass(frozen=True)
class TensorLine:
    """An input or output as the runner describes it (``load`` and ``summary`` lines)."""

    index: int
    shape: tuple[int, ...]
    dtype: str
    nbytes: int | None = None
    source: str | None = None  # inputs: file:PATH | fill:zeros|ones|random
    path: str | None = None    # summary outputs: where it was written (None without --output-dir)

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "TensorLine":
        shape = _f(d, "shape", list)
        if not all(isinstance(s, int) for s in shape):
            raise _Bad(f"'shape' must be a list of integers, got {shape!r:.60}")
        return cls(index=_f(d, "index", int), shape=tuple(shape), dtype=_f(d, "dtype", str),
                   nbytes=_f(d, "nbytes", int, optional=True), source=_f(d, "source", str, optional=True),
                   path=_f(d, "path", str, optional=True))

    def to_json(self) -> dict:
        return {"index": self.index, "shape": list(self.shape), "dtype": self.dtype, "nbytes": self.nbytes,
                "source": self.source, "path": self.path}


@dataclass(frozen=True)
class XnnpackOptions:
    """The header's ``xnnpack``: the XNNPACK backend options in effect."""

    workspace_sharing: str | None     # disabled | per-model | global (None: the backend did not say)
    weight_cache: bool | None
    reshape: str | None = None        # on-change | always; None: a runner before --xnnpack-reshape
    operator_timer: bool | None = None  # XNNPACK times every operator (only with --etdump); None: older runner

    @classmethod
    def parse(cls, d):
        return cls(workspace_sharing=_f(d, "workspace_sharing", str, optional=True),
                   weight_cache=_f(d, "weight_cache", bool, optional=True),
                   reshape=_f(d, "reshape", str, optional=True),
                   operator_timer=_f(d, "operator_timer", bool, optional=True))

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ThreadTrial:
    """One pool size ``--threads auto`` timed: the median of one forward or one decode step."""

    threads: int
    median_ns: int


@dataclass(frozen=True)
class ThreadsAuto:
    """The header's ``threads_auto``: what ``--threads auto`` timed and the pool it kept."""

    chosen: int
    trials: tuple[ThreadTrial, ...]
    measure: str | None = None        # forward | decode; None: a runner before the LLM trial
    prompt_tokens: int | None = None  # decode trials: the prefill before the timed steps
    decode_steps: int | None = None

    @classmethod
    def parse(cls, d):
        trials = []
        for t in _f(d, "trials", list):
            if not isinstance(t, Mapping):
                raise _Bad(f"threads_auto trials must be objects, got {t!r:.60}")
            trial = ThreadTrial(threads=_f(t, "threads", int), median_ns=_f(t, "median_ns", int))
            if trial.threads < 1 or trial.median_ns < 0:
                raise _Bad("threads_auto trials need threads >= 1 and median_ns >= 0")
            trials.append(trial)
        return cls(chosen=_f(d, "chosen", int), trials=tuple(trials), measure=_f(d, "measure", str, optional=True),
                   prompt_tokens=_f(d, "prompt_tokens", int, optional=True),
                   decode_steps=_f(d, "decode_steps", int, optional=True))

    def median_by_threads(self) -> dict[int, int]:
        return {t.threads: t.median_ns for t in self.trials}

    def to_json(self) -> dict:
        out = asdict(self)   # trials come out as a tuple of dicts; JSON keeps a list
        out["trials"] = list(out["trials"])
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Header:
    protocol: int
    runner_version: str | None = None
    runner_source_hash: str | None = None
    executorch_version: str | None = None
    arch: str | None = None
    build: Mapping[str, Any] = field(default_factory=dict)
    threads: int | None = None
    hardware_threads: int | None = None
    pid: int | None = None
    xnnpack: XnnpackOptions | None = None    # None: the runner has no XNNPACK backend
    threads_auto: ThreadsAuto | None = None  # None: no --threads auto trial ran

    @classmethod
    def parse(cls, d):
        xnnpack = _f(d, "xnnpack", dict, optional=True)
        auto = _f(d, "threads_auto", dict, optional=True)
        return cls(protocol=_f(d, "protocol", int), runner_version=_f(d, "runner_version", str, optional=True),
                   runner_source_hash=_f(d, "runner_source_hash", str, optional=True),
                   executorch_version=_f(d, "executorch_version", str, optional=True),
                   arch=_f(d, "arch", str, optional=True), build=_f(d, "build", dict, optional=True, default={}),
                   threads=_f(d, "threads", int, optional=True),
                   hardware_threads=_f(d, "hardware_threads", int, optional=True), pid=_f(d, "pid", int, optional=True),
                   xnnpack=None if xnnpack is None else XnnpackOptions.parse(xnnpack),
                   threads_auto=None if auto is None else ThreadsAuto.parse(auto))


@dataclass(frozen=True)
class Load:
    program: str | None
    method: str
    load_ns: int
    program_load_ns: int | None = None
    method_load_ns: int | None = None
    load_mode: str | None = None
    inputs: tuple[TensorLine, ...] = ()
    outputs: tuple[TensorLine, ...] = ()
    data: str | None = None  # --ptd: the program's external data file (null/absent: none)

    @classmethod
    def parse(cls, d):
        return cls(program=_f(d, "program", str, optional=True), data=_f(d, "data", str, optional=True),
                   method=_f(d, "method", str),
                   load_ns=_f(d, "load_ns", int), program_load_ns=_f(d, "program_load_ns", int, optional=True),
                   method_load_ns=_f(d, "method_load_ns", int, optional=True),
                   load_mode=_f(d, "load_mode", str, optional=True),
                   inputs=tuple(TensorLine.parse(x) for x in _f(d, "inputs", list, optional=True, default=[])),
                   outputs=tuple(TensorLine.parse(x) for x in _f(d, "outputs", list, optional=True, default=[])))


@dataclass(frozen=True)
class Iteration:
    index: int
    warmup: bool
    execute_ns: int
    wall_ns: int | None = None

    @classmethod
    def parse(cls, d):
        execute = _f(d, "execute_ns", int)
        wall = _f(d, "wall_ns", int, optional=True)
        if execute < 0 or (wall is not None and wall < 0):
            raise _Bad("durations must be >= 0")
        return cls(index=_f(d, "index", int), warmup=bool(_f(d, "warmup", bool, optional=True, default=False)),
                   execute_ns=execute, wall_ns=wall)


@dataclass(frozen=True)
class Batch:
    samples: int
    output: str | None
    input: str | None = None
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    dtype: str | None = None
    execute_ns_total: int | None = None
    wall_ns_total: int | None = None

    @classmethod
    def parse(cls, d):
        return cls(samples=_f(d, "samples", int), output=_f(d, "output", str, optional=True),
                   input=_f(d, "input", str, optional=True),
                   input_shape=tuple(_f(d, "input_shape", list, optional=True, default=[])),
                   output_shape=tuple(_f(d, "output_shape", list, optional=True, default=[])),
                   dtype=_f(d, "dtype", str, optional=True),
                   execute_ns_total=_f(d, "execute_ns_total", int, optional=True),
                   wall_ns_total=_f(d, "wall_ns_total", int, optional=True))


@dataclass(frozen=True)
class XnnpackCalls:
    """The summary's ``xnnpack_calls``: XNNPACK runtime reshapes and setups ExecuTorch asked for over the
    whole process, done or answered without the work (``--xnnpack-reshape on-change``), and the runtimes
    created without XNNPACK's per-operator timer (every one, unless ``--etdump`` asks for the timings)."""

    reshapes: int
    reshapes_skipped: int
    setups: int
    setups_skipped: int
    runtimes_untimed: int | None = None  # runtimes created without XNNPACK's operator timer; None: older runner

    @classmethod
    def parse(cls, d):
        counts = {k: _f(d, k, int) for k in ("reshapes", "reshapes_skipped", "setups", "setups_skipped")}
        untimed = _f(d, "runtimes_untimed", int, optional=True)
        if any(v < 0 for v in counts.values()) or (untimed is not None and untimed < 0):
            raise _Bad("xnnpack_calls must count calls (integers >= 0)")
        return cls(**counts, runtimes_untimed=untimed)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Summary:
    iterations: int
    warmup: int | None = None
    timed_total_ns: int | None = None
    peak_rss_kb: int | None = None
    rss_kb: int | None = None
    outputs: tuple[TensorLine, ...] = ()
    etdump: Mapping[str, Any] | None = None
    xnnpack_calls: XnnpackCalls | None = None   # None: a runner before it

    @classmethod
    def parse(cls, d):
        calls = _f(d, "xnnpack_calls", dict, optional=True)
        return cls(xnnpack_calls=None if calls is None else XnnpackCalls.parse(calls),
                   iterations=_f(d, "iterations", int), warmup=_f(d, "warmup", int, optional=True),
                   timed_total_ns=_f(d, "timed_total_ns", int, optional=True),
                   peak_rss_kb=_f(d, "peak_rss_kb", int, optional=True), rss_kb=_f(d, "rss_kb", int, optional=True),
                   outputs=tuple(TensorLine.parse(x) for x in _f(d, "outputs", list, optional=True, default=[])),
                   etdump=_f(d, "etdump", dict, optional=True))


@dataclass(frozen=True)
class ErrorLine:
    stage: str
    error: str | None = None
    code: int | None = None
    message: str | None = None
    log: tuple[str, ...] = ()

    @classmethod
    def parse(cls, d):
        return cls(stage=_f(d, "stage", str, optional=True, default="unknown"), error=_f(d, "error", str, optional=True),
                   code=_f(d, "code", int, optional=True), message=_f(d, "message", str, optional=True),
                   log=tuple(str(x) for x in _f(d, "log", list, optional=True, default=[])))

    def to_json(self) -> dict:
        return {"stage": self.stage, "error": self.error, "code": self.code, "message": self.message,
                "log": list(self.log)}


@dataclass(frozen=True)
class Kernels:
    operators: tuple[str, ...]
    backends: tuple[str, ...] = ()
    operators_by_library: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, d):
        return cls(operators=tuple(_f(d, "operators", list)), backends=tuple(_f(d, "backends", list, optional=True,
                                                                                 default=[])),
                   operators_by_library=_f(d, "operators_by_library", dict, optional=True, default={}))


# -- the LLM mode's lines (``--llm generate|score``)
@dataclass(frozen=True)
class LlmLine:
    """What an LLM run is: mode, the program's max context and vocabulary, the prompt and sampling."""

    mode: str
    max_context: int
    vocab: int
    prompt_tokens: int
    raw: Mapping[str, Any] = field(default_factory=dict)
    #: the program takes cache_positions: attention over the cache's valid prefix (None: a runner before it)
    cache_positions: bool | None = None

    @classmethod
    def parse(cls, d):
        return cls(mode=_f(d, "mode", str), max_context=_f(d, "max_context", int), vocab=_f(d, "vocab", int),
                   prompt_tokens=_f(d, "prompt_tokens", int), raw=dict(d),
                   cache_positions=_f(d, "cache_positions", bool, optional=True))


@dataclass(frozen=True)
class Prefill:
    repeat: int
    warmup: bool
    tokens: int
    execute_ns: int
    wall_ns: int | None = None

    @classmethod
    def parse(cls, d):
        return cls(repeat=_f(d, "repeat", int), warmup=_f(d, "warmup", bool), tokens=_f(d, "tokens", int),
                   execute_ns=_nonneg(_f(d, "execute_ns", int)), wall_ns=_f(d, "wall_ns", int, optional=True))


@dataclass(frozen=True)
class Token:
    repeat: int
    warmup: bool
    index: int
    id: int
    source: str           # prefill (the first token, from the prompt's logits) | decode
    execute_ns: int       # the forward that produced it (the prefill's, for token 0)
    wall_ns: int | None = None
    t_ns: int | None = None  # since the repetition started

    @classmethod
    def parse(cls, d):
        return cls(repeat=_f(d, "repeat", int), warmup=_f(d, "warmup", bool), index=_f(d, "index", int),
                   id=_f(d, "id", int), source=_f(d, "source", str), execute_ns=_nonneg(_f(d, "execute_ns", int)),
                   wall_ns=_f(d, "wall_ns", int, optional=True), t_ns=_f(d, "t_ns", int, optional=True))


@dataclass(frozen=True)
class Generation:
    repeat: int
    warmup: bool
    prompt_tokens: int
    new_tokens: int
    decode_forwards: int
    stop: str
    ttft_ns: int
    prefill_ns: int
    decode_ns: int
    ids: tuple[int, ...] = ()
    prefill_wall_ns: int | None = None
    decode_wall_ns: int | None = None
    total_ns: int | None = None

    @classmethod
    def parse(cls, d):
        ids = _f(d, "ids", list, optional=True, default=[])
        if not all(isinstance(i, int) for i in ids):
            raise _Bad("'ids' must be a list of integers")
        return cls(repeat=_f(d, "repeat", int), warmup=_f(d, "warmup", bool), prompt_tokens=_f(d, "prompt_tokens", int),
                   new_tokens=_f(d, "new_tokens", int), decode_forwards=_f(d, "decode_forwards", int),
                   stop=_f(d, "stop", str), ttft_ns=_nonneg(_f(d, "ttft_ns", int)),
                   prefill_ns=_nonneg(_f(d, "prefill_ns", int)), decode_ns=_nonneg(_f(d, "decode_ns", int)),
                   ids=tuple(ids), prefill_wall_ns=_f(d, "prefill_wall_ns", int, optional=True),
                   decode_wall_ns=_f(d, "decode_wall_ns", int, optional=True),
                   total_ns=_f(d, "total_ns", int, optional=True))

    @property
    def prefill_tokens_per_s(self) -> float | None:
        return self.prompt_tokens * 1e9 / self.prefill_ns if self.prefill_ns else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        return self.decode_forwards * 1e9 / self.decode_ns if self.decode_ns and self.decode_forwards else None


@dataclass(frozen=True)
class ScoreWindow:
    window: int
    start: int
    tokens: int
    nll: float
    execute_ns: int

    @classmethod
    def parse(cls, d):
        return cls(window=_f(d, "window", int), start=_f(d, "start", int), tokens=_f(d, "tokens", int),
                   nll=_f(d, "nll", float), execute_ns=_nonneg(_f(d, "execute_ns", int)))


@dataclass(frozen=True)
class Perplexity:
    tokens: int
    windows: int
    window: int
    nll: float
    perplexity: float
    execute_ns_total: int
    logprobs: str | None = None

    @classmethod
    def parse(cls, d):
        return cls(tokens=_f(d, "tokens", int), windows=_f(d, "windows", int), window=_f(d, "window", int),
                   nll=_f(d, "nll", float), perplexity=_f(d, "perplexity", float),
                   execute_ns_total=_nonneg(_f(d, "execute_ns_total", int)),
                   logprobs=_f(d, "logprobs", str, optional=True))


# -- the train mode's lines (``--train``)
@dataclass(frozen=True)
class TrainLine:
    parameters: int
    trainable: int
    batch: int
    steps: int
    start_step: int = 0
    optimizer: str | None = None
    trainable_bytes: int | None = None
    optimizer_state_bytes: int | None = None
    train_samples: int | None = None
    eval_samples: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, d):
        return cls(parameters=_f(d, "parameters", int), trainable=_f(d, "trainable", int), batch=_f(d, "batch", int),
                   steps=_f(d, "steps", int), start_step=_f(d, "start_step", int, optional=True, default=0),
                   optimizer=_f(d, "optimizer", str, optional=True),
                   trainable_bytes=_f(d, "trainable_bytes", int, optional=True),
                   optimizer_state_bytes=_f(d, "optimizer_state_bytes", int, optional=True),
                   train_samples=_f(d, "train_samples", int, optional=True),
                   eval_samples=_f(d, "eval_samples", int, optional=True), raw=dict(d))


@dataclass(frozen=True)
class StepLine:
    step: int
    loss: float
    lr: float
    execute_ns: int
    wall_ns: int | None = None
    steps_in_line: int = 1
    loss_mean: float | None = None

    @classmethod
    def parse(cls, d):
        return cls(step=_f(d, "step", int), loss=_f(d, "loss", float), lr=_f(d, "lr", float),
                   execute_ns=_nonneg(_f(d, "execute_ns", int)), wall_ns=_f(d, "wall_ns", int, optional=True),
                   steps_in_line=_f(d, "steps_in_line", int, optional=True, default=1),
                   loss_mean=_f(d, "loss_mean", float, optional=True))


@dataclass(frozen=True)
class EvalLine:
    when: str
    step: int
    samples: int
    loss: float
    accuracy: float | None = None

    @classmethod
    def parse(cls, d):
        return cls(when=_f(d, "when", str), step=_f(d, "step", int), samples=_f(d, "samples", int),
                   loss=_f(d, "loss", float), accuracy=_f(d, "accuracy", float, optional=True))


@dataclass(frozen=True)
class CheckpointLine:
    step: int
    path: str
    bytes: int | None = None

    @classmethod
    def parse(cls, d):
        return cls(step=_f(d, "step", int), path=_f(d, "path", str), bytes=_f(d, "bytes", int, optional=True))


@dataclass(frozen=True)
class WeightsLine:
    dir: str
    names: tuple[str, ...]
    files: tuple[str, ...]

    @classmethod
    def parse(cls, d):
        names, files = _f(d, "names", list), _f(d, "files", list)
        if len(names) != len(files) or not all(isinstance(x, str) for x in names + files):
            raise _Bad("'names' and 'files' must be lists of strings of one length")
        return cls(dir=_f(d, "dir", str), names=tuple(names), files=tuple(files))


def _nonneg(v: int) -> int:
    if v < 0:
        raise _Bad("durations must be >= 0")
    return v


LINE_TYPES: dict[str, type] = {"header": Header, "load": Load, "iteration": Iteration, "batch": Batch,
                               "summary": Summary, "error": ErrorLine, "kernels": Kernels, "llm": LlmLine,
                               "prefill": Prefill, "token": Token, "generation": Generation, "score": ScoreWindow,
                               "perplexity": Perplexity, "train": TrainLine, "step": StepLine, "eval": EvalLine,
                               "checkpoint": CheckpointLine, "weights": WeightsLine}


@dataclass
class RunnerResult:
    """Everything one runner invocation said: the raw JSON lines (``lines``, verbatim and in order)
    and their typed views. Parsing never raises: problems are kept in ``protocol_problems``."""

    argv: list[str]
    exit_code: int
    lines: list[dict] = field(default_factory=list)
    stderr: str = ""
    duration_s: float | None = None
    protocol_problems: list[str] = field(default_factory=list)
    typed: list[Any] = field(default_factory=list)

    def _first(self, kind: type):
        return next((ln for ln in self.typed if isinstance(ln, kind)), None)

    @property
    def header(self) -> Header | None:
        return self._first(Header)

    @property
    def load(self) -> Load | None:
        return self._first(Load)

    @property
    def summary(self) -> Summary | None:
        return self._first(Summary)

    @property
    def error(self) -> ErrorLine | None:
        return self._first(ErrorLine)

    @property
    def kernels(self) -> Kernels | None:
        return self._first(Kernels)

    @property
    def batch(self) -> Batch | None:
        """The ``batch`` line of a run with ``--input-batch``."""
        return self._first(Batch)

    @property
    def llm(self) -> LlmLine | None:
        """The ``llm`` line of an LLM-mode run (``--llm generate|score``)."""
        return self._first(LlmLine)

    @property
    def generations(self) -> list[Generation]:
        return [ln for ln in self.typed if isinstance(ln, Generation)]

    @property
    def tokens(self) -> list[Token]:
        return [ln for ln in self.typed if isinstance(ln, Token)]

    @property
    def score_windows(self) -> list[ScoreWindow]:
        return [ln for ln in self.typed if isinstance(ln, ScoreWindow)]

    @property
    def perplexity(self) -> Perplexity | None:
        return self._first(Perplexity)

    @property
    def train(self) -> TrainLine | None:
        return self._first(TrainLine)

    @property
    def steps(self) -> list[StepLine]:
        return [ln for ln in self.typed if isinstance(ln, StepLine)]

    @property
    def evals(self) -> list[EvalLine]:
        return [ln for ln in self.typed if isinstance(ln, EvalLine)]

    @property
    def checkpoints(self) -> list[CheckpointLine]:
        return [ln for ln in self.typed if isinstance(ln, CheckpointLine)]

    @property
    def weights(self) -> WeightsLine | None:
        return self._first(WeightsLine)

    @property
    def iterations(self) -> list[Iteration]:
        return [ln for ln in self.typed if isinstance(ln, Iteration)]

    @property
    def ok(self) -> bool:
        return (self.exit_code == 0 and self.error is None and not self.protocol_problems
                and (self.summary is not None or self.kernels is not None
                     or (self.header is not None and self.load is None)))

    @property
    def execute_ns(self) -> list[int]:
        """Timed iterations' ``execute_ns`` (steady clock around execute alone), in order."""
        return [it.execute_ns for it in self.iterations if not it.warmup]

    @property
    def wall_ns(self) -> list[int]:
        return [it.wall_ns for it in self.iterations if not it.warmup and it.wall_ns is not None]

    @property
    def warmup_execute_ns(self) -> list[int]:
        return [it.execute_ns for it in self.iterations if it.warmup]

    @property
    def load_ns(self) -> int | None:
        return self.load.load_ns if self.load else None

    @property
    def peak_rss_kb(self) -> int | None:
        return self.summary.peak_rss_kb if self.summary else None

    @property
    def output_paths(self) -> list[str | None]:
        return [o.path for o in self.summary.outputs] if self.summary else []

    def failure_json(self) -> dict:
        """What a :class:`RunnerError` carries of this result in ``--json`` output."""
        return {"argv": self.argv, "exit_code": self.exit_code,
                "error": self.error.to_json() if self.error else None, "stderr_tail": self.stderr[-4000:]}

    def to_json(self) -> dict:
        by_type = {}
        for raw in self.lines:
            by_type.setdefault(raw.get("type"), raw)
        return {"argv": self.argv, "exit_code": self.exit_code, "ok": self.ok, "duration_s": self.duration_s,
                "header": by_type.get("header"), "load": by_type.get("load"), "summary": by_type.get("summary"),
                "error": by_type.get("error"), "batch": by_type.get("batch"), "llm": by_type.get("llm"),
                "generations": [g for g in self.lines if g.get("type") == "generation"],
                "perplexity": by_type.get("perplexity"),
                "execute_ns": self.execute_ns, "wall_ns": self.wall_ns,
                "warmup_execute_ns": self.warmup_execute_ns, "protocol_problems": self.protocol_problems,
                "stderr_tail": self.stderr[-4000:]}


def parse_line(line: str, n: int) -> tuple[dict | None, Any, str | None]:
    """One stdout line -> ``(raw record, typed line, problem)``: the raw record is ``None`` for a line that
    is not a protocol record, the typed line ``None`` for a type this edgerun does not know (a newer
    runner's line: ignored, as PROTOCOL.md says) or one whose fields are wrong (then ``problem`` says why)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None, None, f"stdout line {n} is not JSON: {line[:200]!r}"
    if not isinstance(obj, dict) or "type" not in obj:
        return None, None, f"stdout line {n} is not a protocol record: {line[:200]!r}"
    kind = LINE_TYPES.get(obj["type"])
    if kind is None:
        return obj, None, None
    try:
        return obj, kind.parse(obj), None
    except (_Bad, TypeError, ValueError) as exc:
        return obj, None, f"stdout line {n} ({obj['type']}): {exc}"


class LineParser:
    """The runner's stdout as it arrives (a device exec's ``on_stdout`` chunks) -> typed lines, each once,
    when its newline has come. What the token streamer and the training step printer read."""

    def __init__(self) -> None:
        self._buf = b""
        self._n = 0

    def feed(self, chunk: bytes | str) -> list[Any]:
        self._buf += chunk.encode() if isinstance(chunk, str) else chunk
        *lines, self._buf = self._buf.split(b"\n")
        out = []
        for raw in lines:
            self._n += 1
            text = raw.decode("utf-8", "replace")
            if text.strip():
                _obj, typed, _problem = parse_line(text, self._n)
                if typed is not None:
                    out.append(typed)
        return out


def parse_runner_output(stdout: str | bytes, *, exit_code: int, stderr: str | bytes = "",
                        argv: Sequence[str] = (), duration_s: float | None = None) -> RunnerResult:
    """Parse the runner's stdout (JSON lines). Never raises: problems are kept on the result."""
    if isinstance(stdout, bytes):
        stdout = stdout.decode("utf-8", "replace")
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    result = RunnerResult(argv=list(argv), exit_code=exit_code, stderr=stderr, duration_s=duration_s)
    for n, line in enumerate(stdout.splitlines(), 1):
        if not line.strip():
            continue
        obj, typed, problem = parse_line(line, n)
        if obj is not None:
            result.lines.append(obj)
        if typed is not None:
            result.typed.append(typed)
        if problem is not None:
            result.protocol_problems.append(problem)
    header = result.header
    if header is None:
        if result.lines or exit_code == 0:
            result.protocol_problems.append("no header line: this is not edgerun-runner output")
    elif header.protocol != PROTOCOL_VERSION:
        result.protocol_problems.append(
            f"runner speaks protocol {header.protocol!r}, this edgerun reads {PROTOCOL_VERSION}")
    return result


_HINTS = {
    "load": "Check the program file (`edgerun inspect ARTIFACT`), and that the bundle has the operators and "
            "backend it needs (pre-flight names them) and the same executorch version that exported it.",
    "input": "Give one input file per program input, with the shape and dtype in the artifact's manifest "
             "(.npy, or raw bytes of exactly the right size).",
    "execute": "The program failed while running; try --threads 1, or the portable target to find the operator.",
    "output": "Check that the output/ETDump directory exists on the device and is writable, and there is space.",
    "usage": "This is an edgerun bug if edgerun built the argv; please report it with --debug output.",
}


def _signal_words(rc: int) -> str | None:
    import signal as _signal

    sig = -rc if rc < 0 else (rc - 128 if 128 < rc < 128 + 65 else None)
    if not sig:
        return None
    try:
        name = _signal.Signals(sig).name
    except ValueError:
        name = "?"
    return f"it was killed by signal {sig} ({name})"


def runner_failure(result: RunnerResult, *, where: str = "this machine", signal: int | None = None,
                   require_batch: bool = False) -> RunnerError | None:
    """The error of a failed run (``None`` if it succeeded): one message builder for local and
    device runs, with the runner's own exit code (10–13) or 14 when it died without an error line."""
    if result.ok and not (require_batch and result.batch is None):
        return None
    timed = len(result.execute_ns)
    err = result.error
    if err is not None:
        stage = err.stage if err.stage != "unknown" else EXIT_STAGES.get(result.exit_code, "run")
        detail = f" ExecuTorch said: {err.log[-1]}" if err.log else ""
        return RunnerError(f"the runner on {where} failed at {stage} with {err.error}: {err.message}.{detail}"
                           f" ({timed} timed iteration(s) before it)", stage=f"run ({stage})",
                           hint=_HINTS.get(stage), result=result,
                           exit_code=result.exit_code if result.exit_code in EXIT_STAGES else None)
    tail = result.stderr.strip()[-1500:]
    if result.protocol_problems:
        why = "; ".join(result.protocol_problems[:3])
    elif signal is not None:
        why = _signal_words(-signal) or f"it was killed by signal {signal}"
    elif _signal_words(result.exit_code):
        why = _signal_words(result.exit_code)
    elif result.exit_code != 0:
        why = f"it exited {result.exit_code} without an error line"
    elif require_batch and result.batch is None:
        why = "it printed no batch line for the held-out split"
    else:
        why = "it printed no summary line (its output was cut)"
    return RunnerError(f"the runner on {where} did not finish: {why}, after {timed} timed iteration(s)."
                       + (f" Its stderr ends with: {tail}" if tail else ""), stage="run", result=result,
                       hint="If it was killed for memory (a SIGKILL is often the out-of-memory killer), try a "
                            "smaller model or the slim bundle; if it timed out, fewer iterations or a longer timeout.")


def raise_for_result(result: RunnerResult, *, where: str = "this machine") -> RunnerResult:
    """Return ``result`` if the run succeeded, else raise its :func:`runner_failure`."""
    err = runner_failure(result, where=where)
    if err is not None:
        raise err
    return result


@dataclass
class RunArtifacts:
    """What one run produced, on this machine or on a device: the same type for both.

    ``outputs``: the pulled outputs of the timed run (``output_J.npy``); ``etdump``: its ETDump;
    ``dataset_result``/``dataset_outputs``: the untimed pass over the artifact's held-out split;
    ``warnings``: what deploying said (pre-flight), to be kept with the record.
    """

    result: RunnerResult
    device_name: str
    device_info: DeviceInfo
    run_dir: Path | None = None
    outputs: list[Path] = field(default_factory=list)
    etdump: Path | None = None
    dataset_result: RunnerResult | None = None
    dataset_outputs: Path | None = None
    bundle_bytes: int | None = None
    warnings: tuple[str, ...] = ()
    deployment: Any = None  # runtime.deploy.Deployment for a device run
    mode: Any = None        # the runtime.modes.RunMode it ran (a device run)
    extras: dict = field(default_factory=dict)  # what a mode pulled besides outputs (weights, checkpoint, ...)

    @property
    def device(self) -> str:
        return self.device_name

    def to_json(self) -> dict:
        return {"device": self.device_name, "run_dir": str(self.run_dir) if self.run_dir else None,
                "device_info": self.device_info.to_json(),
                "deployment": self.deployment.to_json() if self.deployment is not None else None,
                "outputs": [str(p) for p in self.outputs], "etdump": str(self.etdump) if self.etdump else None,
                "runner": self.result.to_json(),
                "dataset_outputs": str(self.dataset_outputs) if self.dataset_outputs else None,
                "dataset_runner": self.dataset_result.to_json() if self.dataset_result else None,
                "warnings": list(self.warnings)}
