"""The typed artifact: what ``edgerun export`` writes and every later step reads.

An artifact directory holds ``manifest.json`` (this module's :class:`Manifest`), the program, its
ETRecord, test vectors and, for models with a dataset, the held-out split. This module is the one
reader (:func:`read_manifest`) and the one writer (:func:`write_manifest`) of the manifest, and the
one loader of test vectors (:meth:`Manifest.load_test_vector`). Nothing else parses manifest JSON.

The manifest is untrusted input (it may come from anyone): every path in it must be relative,
without ``..``, and resolve inside the artifact (:meth:`Manifest.file`); the program must match
``pte_sha256`` before it is pushed or run (:meth:`Manifest.verified_pte`). Failures are
:class:`~edgerun.core.errors.ArtifactError` — one class and one exit code from every command.

Schema: ``"schema": "edgerun.artifact"``, ``"schema_version"`` up to :data:`SCHEMA_VERSION`. A newer
version or a foreign schema is refused with a message that says which and what to do. New fields
are added as optional fields of these dataclasses (``None`` when an older edgerun wrote the file).

Versions: 1 — the first; 2 — the scheme section names the whole recipe chain (``scheme.recipe``, the
canonical spec such as ``prune:amount=0.5+int8``, and ``scheme.steps``), the target its ``quantizer`` and
``measure``, and an LLM artifact carries the token ids its perplexity was measured on
(``llm.quality.perplexity.ids_file``). A version-1 manifest reads as before: its scheme is one quantize
step, and an LLM's held-out ids are re-made from the text (:meth:`Manifest.heldout_ids` returns None).
An older edgerun refuses a version-2 manifest rather than misread a chain as its quantize step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

from .errors import ArtifactError
from .numerics import OutputMetrics

SCHEMA = "edgerun.artifact"
SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_UNVERIFIED = "unverified"


# ------------------------------------------------------------------------------------- helpers
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to ``path`` through a temp file in the same directory and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class _Bad(ValueError):
    """A field of the manifest JSON is missing or of the wrong type (message names the field)."""


def _get(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, *, optional: bool = False,
         default: Any = None) -> Any:
    if not isinstance(d, Mapping):
        raise _Bad(f"{where} must be an object, got {type(d).__name__}")
    if key not in d or d[key] is None:
        if optional:
            return default
        raise _Bad(f"{where}.{key} is missing")
    value = d[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _Bad(f"{where}.{key} must be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _strings(values: list, where: str) -> tuple[str, ...]:
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise _Bad(f"{where}[{bad[0]}] must be str, got {type(values[bad[0]]).__name__}")
    return tuple(values)


def _seconds(d: Mapping[str, Any] | None, where: str) -> dict[str, float] | None:
    if d is None:
        return None
    return {k: _get(d, k, float, where) for k in d}


def _output_metrics(d: Any, where: str) -> OutputMetrics:
    try:
        return OutputMetrics.from_json(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise _Bad(f"{where} is not an output check ({type(exc).__name__}: {exc})") from None


def _rel_path(value: Any, where: str) -> str:
    """Check a manifest path: relative, POSIX, without ``..`` or a drive; returns it normalised."""
    if not isinstance(value, str) or not value:
        raise _Bad(f"{where} must be a non-empty relative path, got {value!r:.80}")
    if "\x00" in value or "\\" in value:
        raise _Bad(f"{where} = {value!r:.80} contains a NUL or backslash")
    p = PurePosixPath(value)
    if p.is_absolute() or value.startswith("~"):
        raise _Bad(f"{where} = {value!r:.80} is absolute; artifact paths are relative to the artifact")
    if any(part == ".." for part in p.parts):
        raise _Bad(f"{where} = {value!r:.80} leaves the artifact ('..')")
    return str(p)


# --------------------------------------------------------------------------------------- parts
class _JsonView:
    """``section["key"]``: the value of the section's JSON, for code written when the section was a plain
    object (``quality["perplexity"]["window"]``). New code reads the typed attributes."""

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]


def _ints(values: Any, where: str) -> tuple[int, ...]:
    if not isinstance(values, list):
        raise _Bad(f"{where} must be a list of integers, got {type(values).__name__}")
    bad = [i for i, v in enumerate(values) if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        raise _Bad(f"{where}[{bad[0]}] must be int, got {type(values[bad[0]]).__name__}")
    return tuple(values)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: float32, int64, bool ...

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "TensorSpec":
        shape = _get(d, "shape", list, where)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise _Bad(f"{where}.shape must be a list of sizes >= 0, got {shape!r:.80}")
        return cls(name=_get(d, "name", str, where), shape=tuple(shape), dtype=_get(d, "dtype", str, where))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class TestVector:
    """Relative paths of one test vector's input ``.npy`` files and eager PyTorch's outputs."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    __test__ = False  # not a pytest class

    def to_json(self) -> dict:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "TestVector":
        ins = _get(d, "inputs", list, where)
        outs = _get(d, "outputs", list, where)
        return cls(inputs=tuple(_rel_path(p, f"{where}.inputs[{i}]") for i, p in enumerate(ins)),
                   outputs=tuple(_rel_path(p, f"{where}.outputs[{i}]") for i, p in enumerate(outs)))


@dataclass(frozen=True)
class VectorData:
    """A test vector's arrays, loaded."""

    inputs: list
    outputs: list


@dataclass(frozen=True)
class DatasetSplit:
    """The held-out split as the program takes it (classification models with a dataset)."""

    name: str
    split: str
    inputs: str   # relative: [N, *input_shape] .npy
    labels: str   # relative: int64 [N] .npy
    samples: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "DatasetSplit":
        return cls(name=_get(d, "name", str, where), split=_get(d, "split", str, where),
                   inputs=_rel_path(_get(d, "inputs", str, where), f"{where}.inputs"),
                   labels=_rel_path(_get(d, "labels", str, where), f"{where}.labels"),
                   samples=_get(d, "samples", int, where))


@dataclass(frozen=True)
class ModelRef:
    name: str
    task: str | None = None
    source: str | None = None        # zoo | factory
    origin: str | None = None
    description: str | None = None
    dataset: str | None = None
    parameters: int | None = None
    fp32_weight_bytes: int | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "task": self.task, "source": self.source,
                "origin": self.origin, "dataset": self.dataset, "parameters": self.parameters,
                "fp32_weight_bytes": self.fp32_weight_bytes}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "ModelRef":
        return cls(name=_get(d, "name", str, where),
                   **{k: _get(d, k, str, where, optional=True) for k in ("task", "source", "origin", "description",
                                                                          "dataset")},
                   **{k: _get(d, k, int, where, optional=True) for k in ("parameters", "fp32_weight_bytes")})


@dataclass(frozen=True)
class TargetRef:
    """The target record the program was exported for (``export.targets.Target`` as data)."""

    name: str
    arch: str                    # x86_64 | aarch64 | any ...
    cpu: str | None = None
    description: str | None = None
    backends: tuple[str, ...] = ()
    default_scheme: str | None = None
    allowed_schemes: tuple[str, ...] = ()
    bundle_variant: str | None = None
    qemu_cpu: str | None = None
    graph_rewrites: tuple[str, ...] = ()   # export/rewrites.py names; absent in older manifests
    quantizer: str | None = None           # the PT2E quantizer it names (schema 2; None: none or older)
    measure: str = "run"                   # "run" on a device | "estimate" from a compiler's report
    estimator: str | None = None           # the estimator, when measure is "estimate"
    forbidden_recipes: tuple[str, ...] = ()  # recipes (besides quantize ones) it refuses
    toolchain: str | None = None             # the environment its exports ran in (Arm targets: "arm")
    compile_options: Mapping[str, str] = field(default_factory=dict)  # its backend's settings (Vela's)
    functional_check: str | None = None      # how its numerics were checked when the host cannot run it
    llm: bool = True
    lowering: str | None = None              # lowered by this (Cortex-M's pass manager), not by partitioners

    def to_json(self) -> dict:
        out = {"name": self.name, "description": self.description, "arch": self.arch, "cpu": self.cpu,
               "backends": list(self.backends), "default_scheme": self.default_scheme,
               "allowed_schemes": list(self.allowed_schemes), "bundle_variant": self.bundle_variant,
               "qemu_cpu": self.qemu_cpu, "graph_rewrites": list(self.graph_rewrites),
               "quantizer": self.quantizer, "measure": self.measure, "estimator": self.estimator,
               "forbidden_recipes": list(self.forbidden_recipes)}
        # the later fields only when they say something: an older manifest round-trips unchanged
        if self.toolchain is not None:
            out["toolchain"] = self.toolchain
        if self.compile_options:
            out["compile_options"] = dict(self.compile_options)
        if self.functional_check is not None:
            out["functional_check"] = self.functional_check
        if not self.llm:
            out["llm"] = False
        if self.lowering is not None:
            out["lowering"] = self.lowering
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "TargetRef":
        return cls(name=_get(d, "name", str, where), arch=_get(d, "arch", str, where),
                   **{k: _get(d, k, str, where, optional=True) for k in ("cpu", "description", "default_scheme",
                                                                          "bundle_variant", "qemu_cpu", "quantizer",
                                                                          "estimator", "toolchain",
                                                                          "functional_check", "lowering")},
                   compile_options={str(k): str(v) for k, v in
                                    _get(d, "compile_options", dict, where, optional=True, default={}).items()},
                   llm=_get(d, "llm", bool, where, optional=True, default=True),
                   measure=_get(d, "measure", str, where, optional=True, default="run"),
                   backends=tuple(_get(d, "backends", list, where, optional=True, default=[])),
                   allowed_schemes=tuple(_get(d, "allowed_schemes", list, where, optional=True, default=[])),
                   graph_rewrites=tuple(_get(d, "graph_rewrites", list, where, optional=True, default=[])),
                   forbidden_recipes=_strings(_get(d, "forbidden_recipes", list, where, optional=True, default=[]),
                                              f"{where}.forbidden_recipes"))


@dataclass(frozen=True)
class RecipeStep:
    """One step of an export's recipe chain: a registered recipe (``kind`` quantize / prune / factorize /
    distill / transform), every option it ran with, its own hash and what it did."""

    name: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    recipe_hash: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "options": dict(self.options), "recipe_hash": self.recipe_hash}
        if self.facts:
            out["facts"] = dict(self.facts)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "RecipeStep":
        return cls(name=_get(d, "name", str, where), kind=_get(d, "kind", str, where),
                   options=_get(d, "options", dict, where, optional=True, default={}),
                   recipe_hash=_get(d, "recipe_hash", str, where, optional=True),
                   facts=_get(d, "facts", dict, where, optional=True, default={}))


@dataclass(frozen=True)
class SchemeRef:
    """The recipe an artifact was made with. ``name``/``options``/``facts``: its quantize step (``fp32``
    when it has none), as in schema 1; ``recipe``: the canonical spec of the whole chain
    (``prune:amount=0.5+int8``) and ``steps`` each step in order (schema 2); ``recipe_hash``: the chain's
    hash (for one quantize step, that step's own hash, as in schema 1)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    recipe_hash: str | None = None          # of the recipe's canonical config alone
    facts: Mapping[str, Any] = field(default_factory=dict)  # what quantization did
    recipe: str | None = None               # the chain's canonical spec (schema 2)
    steps: tuple[RecipeStep, ...] = ()      # the chain, in order (schema 2)

    @property
    def spec(self) -> str:
        """The recipe as a person types it: the chain's spec, or (schema 1) the scheme's name."""
        return self.recipe or self.name

    def to_json(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "options": dict(self.options), "recipe_hash": self.recipe_hash}
        if self.facts:
            out["facts"] = dict(self.facts)
        if self.recipe is not None:
            out["recipe"] = self.recipe
        if self.steps:
            out["steps"] = [s.to_json() for s in self.steps]
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "SchemeRef":
        return cls(name=_get(d, "name", str, where), options=_get(d, "options", dict, where, optional=True, default={}),
                   recipe_hash=_get(d, "recipe_hash", str, where, optional=True),
                   facts=_get(d, "facts", dict, where, optional=True, default={}),
                   recipe=_get(d, "recipe", str, where, optional=True),
                   steps=tuple(RecipeStep.from_json(x, f"{where}.steps[{i}]")
                               for i, x in enumerate(_get(d, "steps", list, where, optional=True, default=[]))))


@dataclass(frozen=True)
class Operators:
    non_delegated: Mapping[str, int] = field(default_factory=dict)  # kernel name -> calls
    delegated: Mapping[str, int] = field(default_factory=dict)      # backend -> delegate calls
    delegates: tuple[str, ...] = ()
    operator_table: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"non_delegated": dict(self.non_delegated), "delegated": dict(self.delegated),
                "delegates": list(self.delegates), "operator_table": list(self.operator_table)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "Operators":
        nd = _get(d, "non_delegated", dict, where, optional=True, default={})
        dl = _get(d, "delegated", dict, where, optional=True, default={})
        for name, table in (("non_delegated", nd), ("delegated", dl)):
            bad = [k for k, v in table.items() if not isinstance(v, int) or isinstance(v, bool)]
            if bad:
                raise _Bad(f"{where}.{name}[{bad[0]!r}] must be a call count")
        return cls(non_delegated=dict(nd), delegated=dict(dl),
                   delegates=tuple(_get(d, "delegates", list, where, optional=True, default=[])),
                   operator_table=tuple(_get(d, "operator_table", list, where, optional=True, default=[])))


@dataclass(frozen=True)
class Thresholds:
    """What verification (and a device run's accuracy check) demands of every output."""

    min_snr_db: float
    min_cosine: float
    min_top1: float | None = None  # fraction of test vectors whose argmax must agree (classifiers)

    @classmethod
    def for_scheme(cls, scheme: Any, **overrides: Any) -> "Thresholds":
        """A scheme's own thresholds (its ``min_snr_db``/``min_cosine``), with ``overrides`` that are not None."""
        base = cls(float(scheme.min_snr_db), float(scheme.min_cosine))
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "Thresholds":
        return cls(min_snr_db=_get(d, "min_snr_db", float, where), min_cosine=_get(d, "min_cosine", float, where),
                   min_top1=_get(d, "min_top1", float, where, optional=True))


@dataclass(frozen=True)
class TaskAccuracy:
    samples: int
    eager_fp32: float
    program: float
    delta_pp: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "TaskAccuracy":
        return cls(samples=_get(d, "samples", int, where), eager_fp32=_get(d, "eager_fp32", float, where),
                   program=_get(d, "program", float, where), delta_pp=_get(d, "delta_pp", float, where))


@dataclass(frozen=True)
class Verification:
    runtime: str
    thresholds: Thresholds
    outputs: tuple[OutputMetrics, ...]
    passed: bool
    failures: tuple[str, ...] = ()
    task_accuracy: TaskAccuracy | None = None

    def to_json(self) -> dict:
        out = {"runtime": self.runtime, "thresholds": self.thresholds.to_json(),
               "outputs": [o.to_json() for o in self.outputs], "passed": self.passed,
               "failures": list(self.failures)}
        if self.task_accuracy is not None:
            out["task_accuracy"] = self.task_accuracy.to_json()
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "Verification":
        ta = _get(d, "task_accuracy", dict, where, optional=True)
        return cls(runtime=_get(d, "runtime", str, where),
                   thresholds=Thresholds.from_json(_get(d, "thresholds", dict, where), f"{where}.thresholds"),
                   outputs=tuple(_output_metrics(o, f"{where}.outputs[{i}]")
                                 for i, o in enumerate(_get(d, "outputs", list, where))),
                   passed=_get(d, "passed", bool, where),
                   failures=tuple(_get(d, "failures", list, where, optional=True, default=[])),
                   task_accuracy=TaskAccuracy.from_json(ta, f"{where}.task_accuracy") if ta else None)


@dataclass(frozen=True)
class Calibration:
    source: str        # file:<path> | <dataset name> | generated
    samples: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "Calibration":
        return cls(source=_get(d, "source", str, where), samples=_get(d, "samples", int, where))


@dataclass(frozen=True)
class RecipeIdentity:
    """Everything that changes the program an export makes. Same identity, same program (up to
    the nondeterminism of the tools), so caches key on :attr:`hash`.

    ``model``: name, source and origin (and a content hash of a factory's module file, when known);
    ``target``: the target record; ``scheme``: name and options; ``calibration``: source (a file's
    content hash, a dataset name, or ``generated``) and sample count; ``seed``; ``vectors``: how many
    test vectors; ``versions``: torch, executorch, torchao; ``vectors_source``: a user's test-vector
    file (its content hash), absent when the vectors are generated (so older hashes stay the same).
    """

    model: Mapping[str, Any]
    target: Mapping[str, Any]
    scheme: Mapping[str, Any]
    calibration: Mapping[str, Any] | None
    seed: int
    vectors: int
    versions: Mapping[str, Any]
    identity_version: int = 1
    vectors_source: Mapping[str, Any] | None = None
    #: the whole recipe chain (name, kind, every option of every step), when it is more than one
    #: quantize step (absent otherwise, so the hashes of plain schemes stay what they were)
    steps: tuple[Mapping[str, Any], ...] | None = None

    def to_json(self) -> dict:
        out = {"identity_version": self.identity_version, "model": dict(self.model), "target": dict(self.target),
               "scheme": dict(self.scheme), "calibration": dict(self.calibration) if self.calibration else None,
               "seed": self.seed, "vectors": self.vectors, "versions": dict(self.versions)}
        if self.vectors_source is not None:
            out["vectors_source"] = dict(self.vectors_source)
        if self.steps is not None:
            out["steps"] = [dict(s) for s in self.steps]
        return out

    @property
    def hash(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "RecipeIdentity":
        return cls(model=_get(d, "model", dict, where), target=_get(d, "target", dict, where),
                   scheme=_get(d, "scheme", dict, where), calibration=_get(d, "calibration", dict, where, optional=True),
                   seed=_get(d, "seed", int, where), vectors=_get(d, "vectors", int, where),
                   versions=_get(d, "versions", dict, where),
                   identity_version=_get(d, "identity_version", int, where, optional=True, default=1),
                   vectors_source=_get(d, "vectors_source", dict, where, optional=True),
                   steps=None if (steps := _get(d, "steps", list, where, optional=True)) is None else
                   tuple(_get({"step": x}, "step", dict, f"{where}.steps[{i}]") for i, x in enumerate(steps)))


#: the most held-out token ids an LLM artifact may carry (:meth:`Manifest.heldout_ids` refuses more)
MAX_HELDOUT_TOKENS = 1 << 20


@dataclass(frozen=True)
class TokenizerFacts(_JsonView):
    """The tokenizer an LLM artifact ships (the manifest's ``llm.tokenizer``): its file in the artifact and
    that file's sha256, how it splits text, and the ids generation and chat need. ``add_bos``/``add_eos``:
    whether a prompt gets BOS/EOS (llama.cpp's ``add_special``; ``tokenizer.json`` itself adds neither);
    ``add_space_prefix``: a SentencePiece tokenizer puts ``▁`` before the text; ``eog_ids``: the ids that
    end a generation for llama.cpp (EOS and end-of-turn tokens). Manifests written before these four
    fields existed read with their defaults, and the fields are written only when not at their default."""

    file: str = "tokenizer.json"
    sha256: str | None = None
    kind: str | None = None                 # "gpt2 byte-level BPE", "llama SentencePiece"
    pre_tokenizer: str | None = None        # llama.cpp's name of the pre-tokenizer regex (BPE only)
    vocab_size: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool = False
    special_tokens: tuple[str, ...] = ()
    chat_template: str | None = None
    add_eos: bool = False
    add_space_prefix: bool = False
    unk_id: int | None = None
    eog_ids: tuple[int, ...] = ()

    def to_json(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "kind": self.kind, "pre_tokenizer": self.pre_tokenizer,
                "vocab_size": self.vocab_size, "bos_id": self.bos_id, "eos_id": self.eos_id, "add_bos": self.add_bos,
                "special_tokens": list(self.special_tokens), "chat_template": self.chat_template,
                # the later fields only when they say something: an older manifest round-trips unchanged
                **({"add_eos": True} if self.add_eos else {}),
                **({"add_space_prefix": True} if self.add_space_prefix else {}),
                **({"unk_id": self.unk_id} if self.unk_id is not None else {}),
                **({"eog_ids": list(self.eog_ids)} if self.eog_ids else {})}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "TokenizerFacts":
        return cls(file=_rel_path(_get(d, "file", str, where, optional=True, default="tokenizer.json"),
                                  f"{where}.file"),
                   **{k: _get(d, k, str, where, optional=True) for k in ("sha256", "kind", "pre_tokenizer",
                                                                          "chat_template")},
                   **{k: _get(d, k, int, where, optional=True) for k in ("vocab_size", "bos_id", "eos_id", "unk_id")},
                   **{k: _get(d, k, bool, where, optional=True, default=False)
                      for k in ("add_bos", "add_eos", "add_space_prefix")},
                   special_tokens=_strings(_get(d, "special_tokens", list, where, optional=True, default=[]),
                                           f"{where}.special_tokens"),
                   eog_ids=_ints(_get(d, "eog_ids", list, where, optional=True, default=[]), f"{where}.eog_ids"))


@dataclass(frozen=True)
class LogitsAgreement(_JsonView):
    """Per-position logits of the program against the eager model it was lowered from, on real prompts."""

    positions: int
    top1_agreement: float
    min_snr_db: float
    median_snr_db: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "LogitsAgreement":
        return cls(positions=_get(d, "positions", int, where),
                   **{k: _get(d, k, float, where) for k in ("top1_agreement", "min_snr_db", "median_snr_db")})


@dataclass(frozen=True)
class Perplexity(_JsonView):
    """Perplexity of the held-out text, eager fp32 vs the program, in windows of ``window`` tokens each
    prefilled from position 0. ``tokens``: how many ids; ``ids_file``/``ids_sha256`` (schema 2): those ids,
    stored in the artifact, so a device scores exactly what the export scored."""

    text: str
    tokens: int
    window: int
    eager_fp32: float
    program: float
    program_vs_eager_fp32: float
    eager_quantized: float | None = None    # the eager model after the recipe (quantized, pruned ...)
    ids_file: str | None = None             # relative: int32 [tokens] .npy
    ids_sha256: str | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"text": self.text, "tokens": self.tokens, "window": self.window,
                               "eager_fp32": self.eager_fp32, "program": self.program}
        if self.eager_quantized is not None:
            out["eager_quantized"] = self.eager_quantized
        out["program_vs_eager_fp32"] = self.program_vs_eager_fp32
        if self.ids_file is not None:
            out["ids_file"], out["ids_sha256"] = self.ids_file, self.ids_sha256
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "Perplexity":
        ids_file = _get(d, "ids_file", str, where, optional=True)
        ids_sha = _get(d, "ids_sha256", str, where, optional=True)
        if ids_file is not None and (ids_sha is None or len(ids_sha) != 64):
            raise _Bad(f"{where}.ids_sha256 must be the 64 hex digits of {where}.ids_file")
        return cls(text=_get(d, "text", str, where), tokens=_get(d, "tokens", int, where),
                   window=_get(d, "window", int, where),
                   **{k: _get(d, k, float, where) for k in ("eager_fp32", "program", "program_vs_eager_fp32")},
                   eager_quantized=_get(d, "eager_quantized", float, where, optional=True),
                   ids_file=None if ids_file is None else _rel_path(ids_file, f"{where}.ids_file"), ids_sha256=ids_sha)


@dataclass(frozen=True)
class GreedyCheck(_JsonView):
    """Greedy generation from the first prompt, eager vs the program: the ids and how long they agree."""

    prompt_tokens: int
    eager: tuple[int, ...]
    program: tuple[int, ...]
    equal_prefix: int

    def to_json(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "eager": list(self.eager), "program": list(self.program),
                "equal_prefix": self.equal_prefix}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "GreedyCheck":
        return cls(prompt_tokens=_get(d, "prompt_tokens", int, where),
                   eager=_ints(_get(d, "eager", list, where), f"{where}.eager"),
                   program=_ints(_get(d, "program", list, where), f"{where}.program"),
                   equal_prefix=_get(d, "equal_prefix", int, where))


@dataclass(frozen=True)
class LlamaCppPerplexity(_JsonView):
    """llama.cpp's ``llama-perplexity`` on the GGUF the export read, over the export's held-out ids, beside
    the program's perplexity under llama.cpp's rule on the same ids (the manifest's ``llm.quality.llamacpp``).

    ``rule`` names the chunking both figures use: llama-perplexity's (chunks of ``ctx`` ids from an empty
    cache, the first id replaced by BOS when ``bos_replaces_first``, only the ``scored // chunks`` ids of
    each chunk's second half scored) -- not the windows of :class:`Perplexity`, so ``ppl``, ``program`` and
    ``eager_fp32`` here compare with each other, not with ``quality.perplexity``. ``ppl`` is llama.cpp's own
    figure (its 4 printed decimals); ``gguf_type`` the GGUF's weight type (most weights' type: ``Q4_1``);
    ``llama_cpp_python`` and ``source_sha256`` the pinned sdist whose vendored llama.cpp was built, ``build``
    its ``--version`` line (an sdist carries no git commit: ``commit unknown``). Optional: absent when
    llama.cpp was not built where the export ran, and in manifests made before edgerun measured it."""

    ppl: float
    ppl_stderr: float
    program: float
    eager_fp32: float | None
    tokens: int
    ctx: int
    chunks: int
    scored: int
    bos_replaces_first: bool
    rule: str
    gguf: str
    gguf_type: str
    llama_cpp_python: str
    source_sha256: str
    build: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "LlamaCppPerplexity":
        return cls(**{k: _get(d, k, float, where) for k in ("ppl", "ppl_stderr", "program")},
                   eager_fp32=_get(d, "eager_fp32", float, where, optional=True),
                   **{k: _get(d, k, int, where) for k in ("tokens", "ctx", "chunks", "scored")},
                   bos_replaces_first=_get(d, "bos_replaces_first", bool, where),
                   **{k: _get(d, k, str, where) for k in ("rule", "gguf", "gguf_type", "llama_cpp_python",
                                                          "source_sha256", "build")})


@dataclass(frozen=True)
class LLMQuality(_JsonView):
    """The LLM checks of an export (the manifest's ``llm.quality``); each is None when it was not made."""

    logits_vs_eager: LogitsAgreement | None = None
    perplexity: Perplexity | None = None
    greedy: GreedyCheck | None = None
    llamacpp: LlamaCppPerplexity | None = None   # llama.cpp's perplexity of the same GGUF, when it was built

    def to_json(self) -> dict:
        return {k: v.to_json() for k, v in (("logits_vs_eager", self.logits_vs_eager),
                                            ("perplexity", self.perplexity), ("greedy", self.greedy),
                                            ("llamacpp", self.llamacpp))
                if v is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "LLMQuality":
        def part(key: str, kind):
            value = _get(d, key, dict, where, optional=True)
            return None if value is None else kind.from_json(value, f"{where}.{key}")

        return cls(logits_vs_eager=part("logits_vs_eager", LogitsAgreement), perplexity=part("perplexity", Perplexity),
                   greedy=part("greedy", GreedyCheck), llamacpp=part("llamacpp", LlamaCppPerplexity))


@dataclass(frozen=True)
class LLMFacts:
    """What an LLM artifact is (the manifest's ``llm``): the architecture and its sizes, the KV cache,
    the weights by dtype, the tokenizer (``tokenizer.json`` in the artifact) and the LLM checks.

    ``tokenizer``: :class:`TokenizerFacts`; ``source``: where the weights came from (gguf file, sha256,
    tensor types, bytes); ``quality``: :class:`LLMQuality` (logits agreement, perplexity, greedy ids)."""

    architecture: str
    name: str
    parameters: int
    layers: int
    dim: int
    heads: int
    kv_heads: int
    vocab_size: int
    max_context: int
    kv_cache_bytes_per_token: int
    kv_cache_bytes: int
    weight_bytes_by_dtype: Mapping[str, int] = field(default_factory=dict)
    tokenizer: TokenizerFacts = field(default_factory=TokenizerFacts)
    context_length: int | None = None     # what the model was trained for
    source: Mapping[str, Any] = field(default_factory=dict)
    quality: LLMQuality = field(default_factory=LLMQuality)

    _INTS = ("parameters", "layers", "dim", "heads", "kv_heads", "vocab_size", "max_context",
             "kv_cache_bytes_per_token", "kv_cache_bytes")

    def to_json(self) -> dict:
        return {"architecture": self.architecture, "name": self.name, **{k: getattr(self, k) for k in self._INTS},
                "weight_bytes_by_dtype": dict(self.weight_bytes_by_dtype), "tokenizer": self.tokenizer.to_json(),
                "context_length": self.context_length, "source": dict(self.source), "quality": self.quality.to_json()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "LLMFacts":
        by_dtype = _get(d, "weight_bytes_by_dtype", dict, where, optional=True, default={})
        bad = [k for k, v in by_dtype.items() if not isinstance(v, int) or isinstance(v, bool)]
        if bad:
            raise _Bad(f"{where}.weight_bytes_by_dtype[{bad[0]!r}] must be a byte count")
        return cls(architecture=_get(d, "architecture", str, where), name=_get(d, "name", str, where),
                   **{k: _get(d, k, int, where) for k in cls._INTS},
                   weight_bytes_by_dtype=dict(by_dtype),
                   tokenizer=TokenizerFacts.from_json(_get(d, "tokenizer", dict, where, optional=True, default={}),
                                                      f"{where}.tokenizer"),
                   context_length=_get(d, "context_length", int, where, optional=True),
                   source=_get(d, "source", dict, where, optional=True, default={}),
                   quality=LLMQuality.from_json(_get(d, "quality", dict, where, optional=True, default={}),
                                                f"{where}.quality"))


# ------------------------------------------------------------------------------------ manifest
@dataclass(frozen=True)
class TrainedFigures(_JsonView):
    """A held-out evaluation of a fine-tuning run, as its device computed it."""

    samples: int | None = None
    loss: float | None = None
    accuracy: float | None = None
    perplexity: float | None = None
    step: int | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "TrainedFigures":
        return cls(samples=_get(d, "samples", int, where, optional=True), loss=_get(d, "loss", float, where, optional=True),
                   accuracy=_get(d, "accuracy", float, where, optional=True),
                   perplexity=_get(d, "perplexity", float, where, optional=True),
                   step=_get(d, "step", int, where, optional=True))


@dataclass(frozen=True)
class LoraFacts(_JsonView):
    """The adapters of a LoRA fine-tune: rank, alpha, the adapted layers, and the frozen base's bits
    (32: fp32; qlora: 8 or 4) with how many frozen layers held it."""

    rank: int
    alpha: float
    layers: tuple[str, ...] = ()
    base_bits: int | None = None
    frozen_layers: int | None = None

    def to_json(self) -> dict:
        out = {"rank": self.rank, "alpha": self.alpha, "layers": list(self.layers)}
        if self.base_bits is not None:
            out.update(base_bits=self.base_bits, frozen_layers=self.frozen_layers)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "LoraFacts":
        return cls(rank=_get(d, "rank", int, where), alpha=_get(d, "alpha", float, where),
                   layers=_strings(_get(d, "layers", list, where, optional=True, default=[]), f"{where}.layers"),
                   base_bits=_get(d, "base_bits", int, where, optional=True),
                   frozen_layers=_get(d, "frozen_layers", int, where, optional=True))


@dataclass(frozen=True)
class Lineage(_JsonView):
    """Where an artifact's weights came from when they are not its model spec's own: the fine-tuning run
    on a device that made them (base model, method and hyper-parameters, data and weights hashes, the
    device's held-out figures before and after, the run id)."""

    base_model: str
    method: str
    base_origin: str | None = None
    lora: LoraFacts | None = None
    optimizer: str | None = None
    lr: float | None = None
    steps: int | None = None
    batch: int | None = None
    data: str | None = None
    data_sha256: str | None = None
    final_loss: float | None = None
    eval_before: TrainedFigures | None = None
    eval_after: TrainedFigures | None = None
    weights_sha256: str | None = None
    training_program_sha256: str | None = None
    run_id: str | None = None
    device: str | None = None
    #: eager PyTorch's figure of the pulled weights beside the device's (device_loss / eager_loss or
    #: device_accuracy / eager_accuracy, samples, agrees)
    agreement: Mapping[str, Any] | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_json() if hasattr(v, "to_json") else (dict(v) if isinstance(v, Mapping) else v)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "lineage") -> "Lineage":
        for key in ("data_sha256", "weights_sha256", "training_program_sha256"):
            v = _get(d, key, str, where, optional=True)
            if v is not None and not _is_sha256(v):
                raise _Bad(f"{where}.{key} must be 64 lowercase hex digits, got {v!r:.80}")
        lora = _get(d, "lora", dict, where, optional=True)
        before = _get(d, "eval_before", dict, where, optional=True)
        after = _get(d, "eval_after", dict, where, optional=True)
        return cls(base_model=_get(d, "base_model", str, where), method=_get(d, "method", str, where),
                   base_origin=_get(d, "base_origin", str, where, optional=True),
                   lora=LoraFacts.from_json(lora, f"{where}.lora") if lora else None,
                   optimizer=_get(d, "optimizer", str, where, optional=True),
                   lr=_get(d, "lr", float, where, optional=True), steps=_get(d, "steps", int, where, optional=True),
                   batch=_get(d, "batch", int, where, optional=True), data=_get(d, "data", str, where, optional=True),
                   data_sha256=_get(d, "data_sha256", str, where, optional=True),
                   final_loss=_get(d, "final_loss", float, where, optional=True),
                   eval_before=TrainedFigures.from_json(before, f"{where}.eval_before") if before else None,
                   eval_after=TrainedFigures.from_json(after, f"{where}.eval_after") if after else None,
                   weights_sha256=_get(d, "weights_sha256", str, where, optional=True),
                   training_program_sha256=_get(d, "training_program_sha256", str, where, optional=True),
                   run_id=_get(d, "run_id", str, where, optional=True), device=_get(d, "device", str, where, optional=True),
                   agreement=_get(d, "agreement", dict, where, optional=True))


@dataclass(frozen=True)
class CompilerReport(_JsonView):
    """What a backend's own compiler says about the program (Vela for an Ethos-U target): **estimates** from
    its performance model, never measurements. Summed over the program's NPU partitions (they run one after
    another): cycles, memory (``sram_bytes``: SRAM the partitions use, each its own scratch), MACs. ``layers``:
    operators Vela placed on the NPU and those it left to the CPU. ``files``: the compiler's own reports in the
    artifact (relative path -> sha256), so an estimate is re-read from them and a changed one refused."""

    compiler: str
    version: str
    accelerator: str
    system_config: str
    memory_mode: str
    clock_hz: float
    partitions: int
    cycles_total: int
    cycles_npu: int
    inference_seconds: float
    sram_bytes: int
    dram_bytes: int
    on_chip_flash_bytes: int
    off_chip_flash_bytes: int
    nn_macs: int
    npu_layers: int
    cpu_layers: int
    files: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["files"] = dict(self.files)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> "CompilerReport":
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for name, tp in kinds.items():
            if name == "files":
                files = _get(d, "files", dict, where, optional=True, default={})
                for rel, sha in files.items():
                    _rel_path(rel, f"{where}.files")
                    if not _is_sha256(sha):
                        raise _Bad(f"{where}.files[{rel!r}] must be a sha256")
                kw["files"] = dict(files)
                continue
            kind = {"str": str, "float": float, "int": int}[str(tp)]
            value = _get(d, name, kind, where)
            if kind in (int, float) and (not math.isfinite(value) or value < 0):
                raise _Bad(f"{where}.{name} must be a finite number >= 0, got {value!r}")
            kw[name] = value
        return cls(**kw)


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` as types. ``path`` is the artifact directory it was read from (not stored)."""

    status: str
    model: ModelRef
    target: TargetRef
    scheme: SchemeRef
    recipe_hash: str
    versions: Mapping[str, str]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: Mapping[str, str]                 # role (pte, etrecord) -> relative path
    pte_bytes: int
    pte_sha256: str
    method: str = "forward"
    #: the program's external data file (``files["data"]``, a ``.ptd``): weights the ``.pte`` resolves by
    #: name at load -- an LLM's tied embedding and LM head stored once there. None: everything is in the .pte
    data_bytes: int | None = None
    data_sha256: str | None = None
    etrecord_bytes: int | None = None
    planned_memory_bytes: int | None = None
    planned_buffers: tuple[int, ...] = ()
    operators: Operators = field(default_factory=Operators)
    test_vectors: tuple[TestVector, ...] = ()
    calibration: Calibration | None = None
    dataset: DatasetSplit | None = None
    verification: Verification | None = None
    export_seconds: float | None = None
    recipe: RecipeIdentity | None = None
    #: the graph the partitioners saw: ``exported_nodes`` (after torch.export), ``nodes`` (after
    #: decomposition), ``top_modules`` [{module, type, nodes}], ``large``
    graph: Mapping[str, Any] | None = None
    #: what a person should know although the export succeeded (nodes kept off the delegate,
    #: quantization that did little, an unusually large graph)
    warnings: tuple[str, ...] = ()
    stage_seconds: Mapping[str, float] | None = None   # wall time per export stage
    llm: LLMFacts | None = None                        # LLM artifacts only
    #: where the weights came from when they were not the model spec's own: a fine-tuning run on a device
    lineage: Lineage | None = None
    #: Ethos-U targets: the NPU compiler's estimates (Vela), read from its reports in the artifact
    compiler_report: CompilerReport | None = None
    schema_version: int = SCHEMA_VERSION
    path: Path | None = field(default=None, compare=False)

    # -- serialisation
    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "schema": SCHEMA, "schema_version": self.schema_version, "status": self.status,
            "model": self.model.to_json(), "target": self.target.to_json(), "scheme": self.scheme.to_json(),
            "recipe_hash": self.recipe_hash, "recipe": self.recipe.to_json() if self.recipe else None,
            "versions": dict(self.versions),
            "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs],
            "files": dict(self.files), "pte_bytes": self.pte_bytes, "pte_sha256": self.pte_sha256,
            **({"data_bytes": self.data_bytes, "data_sha256": self.data_sha256} if self.data_sha256 else {}),
            "etrecord_bytes": self.etrecord_bytes, "method": self.method,
            "planned_memory_bytes": self.planned_memory_bytes, "planned_buffers": list(self.planned_buffers),
            "operators": self.operators.to_json(), "test_vectors": [v.to_json() for v in self.test_vectors],
            "calibration": self.calibration.to_json() if self.calibration else None,
        }
        if self.dataset is not None:
            out["dataset"] = self.dataset.to_json()
        if self.verification is not None:
            out["verification"] = self.verification.to_json()
        if self.export_seconds is not None:
            out["export_seconds"] = self.export_seconds
        if self.llm is not None:
            out["llm"] = self.llm.to_json()
        if self.stage_seconds is not None:
            out["stage_seconds"] = dict(self.stage_seconds)
        if self.graph is not None:
            out["graph"] = dict(self.graph)
        if self.lineage is not None:
            out["lineage"] = self.lineage.to_json()
        if self.compiler_report is not None:
            out["compiler_report"] = self.compiler_report.to_json()
        out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, path: str | os.PathLike | None = None,
                  source: str = "manifest") -> "Manifest":
        """Parse and check a manifest; raises :class:`ArtifactError` naming ``source`` and the field."""
        check_schema(d, source)
        try:
            files = _get(d, "files", dict, "files")
            for role, rel in files.items():
                _rel_path(rel, f"files.{role}")
            if "pte" not in files:
                raise _Bad("files.pte is missing")
            ds = _get(d, "dataset", dict, "manifest", optional=True)
            ver = _get(d, "verification", dict, "manifest", optional=True)
            cal = _get(d, "calibration", dict, "manifest", optional=True)
            rec = _get(d, "recipe", dict, "manifest", optional=True)
            sha = _get(d, "pte_sha256", str, "manifest")
            if not _is_sha256(sha):
                raise _Bad(f"pte_sha256 must be 64 lowercase hex digits, got {sha!r:.80}")
            data_sha = _get(d, "data_sha256", str, "manifest", optional=True)
            data_bytes = _get(d, "data_bytes", int, "manifest", optional=True)
            if ("data" in files) != (data_sha is not None) or (data_sha is None) != (data_bytes is None):
                raise _Bad("files.data, data_bytes and data_sha256 go together: a program with an external data "
                           "file names it and gives its size and sha256, one without gives none of them")
            if data_sha is not None and not _is_sha256(data_sha):
                raise _Bad(f"data_sha256 must be 64 lowercase hex digits, got {data_sha!r:.80}")
            if data_bytes is not None and data_bytes < 0:
                raise _Bad(f"data_bytes must be >= 0, got {data_bytes}")
            _check_named_hashes(d)
            return cls(
                schema_version=d["schema_version"], status=_get(d, "status", str, "manifest"),
                model=ModelRef.from_json(_get(d, "model", dict, "manifest"), "model"),
                target=TargetRef.from_json(_get(d, "target", dict, "manifest"), "target"),
                scheme=SchemeRef.from_json(_get(d, "scheme", dict, "manifest"), "scheme"),
                recipe_hash=_get(d, "recipe_hash", str, "manifest"),
                versions=_get(d, "versions", dict, "manifest", optional=True, default={}),
                inputs=tuple(TensorSpec.from_json(t, f"inputs[{i}]")
                             for i, t in enumerate(_get(d, "inputs", list, "manifest"))),
                outputs=tuple(TensorSpec.from_json(t, f"outputs[{i}]")
                              for i, t in enumerate(_get(d, "outputs", list, "manifest"))),
                files={k: _rel_path(v, f"files.{k}") for k, v in files.items()},
                pte_bytes=_get(d, "pte_bytes", int, "manifest"), pte_sha256=sha,
                data_bytes=data_bytes, data_sha256=data_sha,
                method=_get(d, "method", str, "manifest", optional=True, default="forward"),
                etrecord_bytes=_get(d, "etrecord_bytes", int, "manifest", optional=True),
                planned_memory_bytes=_get(d, "planned_memory_bytes", int, "manifest", optional=True),
                planned_buffers=tuple(_get(d, "planned_buffers", list, "manifest", optional=True, default=[])),
                operators=Operators.from_json(_get(d, "operators", dict, "manifest", optional=True, default={}),
                                              "operators"),
                test_vectors=tuple(TestVector.from_json(v, f"test_vectors[{i}]")
                                   for i, v in enumerate(_get(d, "test_vectors", list, "manifest", optional=True,
                                                              default=[]))),
                calibration=Calibration.from_json(cal, "calibration") if cal else None,
                dataset=DatasetSplit.from_json(ds, "dataset") if ds else None,
                verification=Verification.from_json(ver, "verification") if ver else None,
                export_seconds=_get(d, "export_seconds", float, "manifest", optional=True),
                recipe=RecipeIdentity.from_json(rec, "recipe") if rec else None,
                llm=LLMFacts.from_json(llm, "llm") if (llm := _get(d, "llm", dict, "manifest", optional=True))
                else None,
                graph=_get(d, "graph", dict, "manifest", optional=True),
                lineage=Lineage.from_json(lin) if (lin := _get(d, "lineage", dict, "manifest", optional=True))
                else None,
                compiler_report=CompilerReport.from_json(cr, "compiler_report")
                if (cr := _get(d, "compiler_report", dict, "manifest", optional=True)) else None,
                warnings=_strings(_get(d, "warnings", list, "manifest", optional=True, default=[]), "warnings"),
                stage_seconds=_seconds(_get(d, "stage_seconds", dict, "manifest", optional=True), "stage_seconds"),
                path=Path(path) if path is not None else None,
            )
        except _Bad as exc:
            raise ArtifactError(f"{source} is not a valid edgerun manifest: {exc}.",
                                hint="Re-export the artifact with `edgerun export`.") from None

    # -- views
    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def dir(self) -> Path:
        if self.path is None:
            raise ArtifactError("this manifest was not read from an artifact directory, so it has no files.",
                                stage="read artifact")
        return self.path

    def file(self, rel: str, what: str = "file") -> Path:
        """The artifact's file at relative path ``rel``, confined to the artifact: after resolving
        links it must lie inside the artifact directory. Does not require the file to exist."""
        rel = _checked_rel(rel, what, self)
        root = self.dir.resolve()
        resolved = (root / rel).resolve()
        if resolved != root and root not in resolved.parents:
            raise ArtifactError(f"artifact {self.dir}: the {what} {rel!r} resolves to {resolved}, outside the "
                                "artifact (a symbolic link leads out of it).", stage="read artifact",
                                hint="Artifacts must be self-contained; re-export it.")
        return resolved

    def existing_file(self, rel: str, what: str = "file") -> Path:
        p = self.file(rel, what)
        if not p.is_file():
            raise ArtifactError(f"artifact {self.dir}: the {what} {rel!r} named by {MANIFEST_NAME} is missing.",
                                stage="read artifact", hint="Re-export the artifact; it is incomplete.")
        return p

    @property
    def pte_path(self) -> Path:
        return self.file(self.files["pte"], "program")

    @property
    def data_path(self) -> Path | None:
        """The program's external data file (unchecked; :meth:`verified_data` checks it), or None."""
        rel = self.files.get("data")
        return self.file(rel, "program data file") if rel else None

    @property
    def etrecord_path(self) -> Path | None:
        """The ETRecord, if the manifest names one and it is there."""
        rel = self.files.get("etrecord")
        if not rel:
            return None
        p = self.file(rel, "ETRecord")
        return p if p.is_file() else None

    def verified_pte(self) -> Path:
        """The program, after checking its size and sha256 against the manifest (a swapped or altered
        ``.pte`` is refused before it is pushed or run) and the manifest's declared inputs and outputs
        against the program's own method (:meth:`check_program_signature`)."""
        p = self._checked_file(self.files["pte"], "program", self.pte_bytes, self.pte_sha256)
        self.check_program_signature(p)
        return p

    @property
    def program_bytes(self) -> int:
        """What the program occupies on a device: the ``.pte`` and its external data file, if any."""
        return self.pte_bytes + (self.data_bytes or 0)

    def verified_data(self) -> Path | None:
        """The program's external data file (``.ptd``) after checking its size and sha256 against the
        manifest, or None when the program keeps all its data inside the ``.pte``. It goes wherever the
        ``.pte`` goes: the runtime resolves the program's external weights from it by name."""
        rel = self.files.get("data")
        return None if rel is None else self._checked_file(rel, "program data file", self.data_bytes,
                                                           str(self.data_sha256))

    def _checked_file(self, rel: str, what: str, size: int | None, sha: str) -> Path:
        """The artifact's file ``rel`` if its size and sha256 are the manifest's; refused otherwise."""
        p = self.existing_file(rel, what)
        have = p.stat().st_size
        if have != size or sha256_file(p) != sha:
            raise ArtifactError(f"artifact {self.dir}: the {what} {rel} ({have} bytes) does not match the manifest "
                                f"({size} bytes, sha256 {sha[:12]}…): it was altered or replaced after export.",
                                stage="read artifact", hint="Re-export the artifact; never edit an artifact's files "
                                                            "by hand.")
        return p

    def check_program_signature(self, pte: Path | None = None) -> "ProgramSignature | None":
        """Refuse a manifest whose ``inputs``/``outputs`` (names aside: count, dtype, shape) contradict
        the program's method as the ``.pte`` declares it: test vectors, generated inputs and the runner
        are all built from the manifest's specs, so a wrong one feeds the program what it cannot take."""
        pte = pte if pte is not None else self.existing_file(self.files["pte"], "program")
        if not is_program_file(pte):
            return None  # not an ExecuTorch program at all: the runtime refuses it when it loads (exit 10)
        sig = read_program_signature(pte, self.method)
        wrong = signature_mismatches(self, sig)
        if wrong:
            raise ArtifactError(f"artifact {self.dir}: {MANIFEST_NAME} contradicts the program {self.files['pte']}: "
                                + "; ".join(wrong[:6]) + ("; …" if len(wrong) > 6 else "") + ".",
                                stage="read artifact",
                                hint="Re-export the artifact; never edit an artifact's manifest by hand.")
        return sig

    def vector_files(self, index: int) -> TestVector:
        if not 0 <= index < len(self.test_vectors):
            from .errors import UsageError

            raise UsageError(f"artifact {self.path} has {len(self.test_vectors)} test vector(s); there is no "
                             f"vector {index}.",
                             hint=f"Use --vector 0..{len(self.test_vectors) - 1}." if self.test_vectors else
                             "This artifact has no test vectors: run with generated inputs (omit --vector).")
        return self.test_vectors[index]

    def vector_input_paths(self, index: int) -> list[Path]:
        return [self.existing_file(p, f"test vector {index} input") for p in self.vector_files(index).inputs]

    def load_test_vector(self, index: int) -> VectorData:
        """Test vector ``index``'s inputs and eager reference outputs as numpy arrays."""
        vec = self.vector_files(index)
        return VectorData(inputs=[_load_npy(self.existing_file(p, f"test vector {index} input"), self)
                                  for p in vec.inputs],
                          outputs=[_load_npy(self.existing_file(p, f"test vector {index} output"), self)
                                   for p in vec.outputs])

    def load_test_vectors(self) -> list[VectorData]:
        return [self.load_test_vector(i) for i in range(len(self.test_vectors))]

    def dataset_files(self) -> tuple[Path, Path]:
        """The held-out split's (inputs, labels) files."""
        if self.dataset is None:
            raise ArtifactError(f"artifact {self.path} has no dataset (its manifest names no held-out split).",
                                stage="read artifact")
        return (self.existing_file(self.dataset.inputs, "dataset inputs"),
                self.existing_file(self.dataset.labels, "dataset labels"))

    def thresholds(self) -> Thresholds | None:
        return self.verification.thresholds if self.verification else None

    def heldout_ids(self) -> tuple[int, ...] | None:
        """The token ids an LLM export measured perplexity on (``llm.quality.perplexity.ids_file``), after
        checking them: at most :data:`MAX_HELDOUT_TOKENS`, the sha256 the manifest names, a 1-D integer
        array of ``tokens`` ids inside the vocabulary. None when the artifact carries none (schema 1)."""
        ppl = self.llm.quality.perplexity if self.llm is not None else None
        if ppl is None or ppl.ids_file is None:
            return None
        p = self.existing_file(ppl.ids_file, "held-out token ids")
        hint = "Re-export the model; never edit an artifact's files by hand."
        if p.stat().st_size > MAX_HELDOUT_TOKENS * 8 + 4096:
            raise ArtifactError(f"artifact {self.dir}: {ppl.ids_file} is {p.stat().st_size:,} bytes, more than "
                                f"{MAX_HELDOUT_TOKENS:,} token ids.", stage="read artifact", hint=hint)
        if sha256_file(p) != ppl.ids_sha256:
            raise ArtifactError(f"artifact {self.dir}: the held-out token ids {ppl.ids_file} do not match the sha256 "
                                f"in {MANIFEST_NAME}: they were changed after export.", stage="read artifact", hint=hint)
        ids = _load_npy(p, self)
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or len(ids) != ppl.tokens:
            raise ArtifactError(f"artifact {self.dir}: {ppl.ids_file} is not {ppl.tokens} token ids (dtype {ids.dtype}, "
                                f"shape {list(ids.shape)}).", stage="read artifact", hint=hint)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.llm.vocab_size):
            raise ArtifactError(f"artifact {self.dir}: {ppl.ids_file} holds ids outside the vocabulary of "
                                f"{self.llm.vocab_size}.", stage="read artifact", hint=hint)
        return tuple(int(i) for i in ids)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _check_named_hashes(d: Mapping[str, Any]) -> None:
    """Every file the manifest names that a command reads as part of the model (the program, an LLM's
    tokenizer, its held-out ids) comes with the sha256 it is checked against: one without is refused,
    never read unchecked. (The ETRecord is debugging data nobody runs; test vectors are checked by
    shape and dtype against the declared inputs, which are checked against the program.)"""
    llm = d.get("llm")
    if not isinstance(llm, Mapping):
        return
    tok = llm.get("tokenizer")
    if isinstance(tok, Mapping) and tok.get("file") is not None and not _is_sha256(tok.get("sha256")):
        raise _Bad(f"llm.tokenizer names the file {str(tok.get('file'))!r:.80} but no valid sha256 to check it "
                   f"against (llm.tokenizer.sha256 is {tok.get('sha256')!r:.80})")
    files = d.get("files")
    if isinstance(files, Mapping) and files.get("tokenizer") is not None and not isinstance(tok, Mapping):
        raise _Bad("files.tokenizer names a tokenizer, but llm.tokenizer gives no sha256 to check it against")


def _checked_rel(rel: str, what: str, m: Manifest) -> str:
    try:
        return _rel_path(rel, what)
    except _Bad as exc:
        raise ArtifactError(f"artifact {m.path}: {exc}.", stage="read artifact",
                            hint="Artifacts must be self-contained; re-export it.") from None


def _load_npy(path: Path, m: Manifest):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ArtifactError(f"artifact {m.path}: {path.name} is not a readable .npy file ({exc}).",
                            stage="read artifact", hint="Re-export the artifact.") from exc


# ----------------------------------------------------------------------------------- read/write
def check_schema(d: Any, source: str) -> None:
    """Refuse what is not an edgerun manifest, or one from a newer edgerun, with one message."""
    if not isinstance(d, Mapping) or d.get("schema") != SCHEMA:
        found = d.get("schema") if isinstance(d, Mapping) else type(d).__name__
        raise ArtifactError(f"{source} is not an edgerun artifact manifest (schema {found!r}, expected {SCHEMA!r}).",
                            hint="Give the directory that `edgerun export` wrote.")
    version = d.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{source} has no valid schema_version (got {version!r}).",
                            hint="Re-export the artifact with `edgerun export`.")
    if version > SCHEMA_VERSION:
        raise ArtifactError(f"{source} has manifest schema version {version}; this edgerun reads up to "
                            f"{SCHEMA_VERSION}.", hint="Upgrade edgerun, or re-export the model with this version.")


def manifest_file(artifact: str | os.PathLike) -> Path:
    p = Path(artifact)
    return p / MANIFEST_NAME if p.is_dir() else p


def read_manifest(artifact: str | os.PathLike) -> Manifest:
    """The one manifest reader: the artifact directory (or its manifest.json) -> :class:`Manifest`."""
    path = manifest_file(artifact)
    if not path.is_file():
        raise ArtifactError(f"{artifact} is not an edgerun artifact: no {MANIFEST_NAME} found.",
                            hint="Give the directory that `edgerun export` wrote.")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"cannot read manifest {path}: {exc}.", hint="Re-export the artifact.") from exc
    return Manifest.from_json(data, path=path.parent, source=f"manifest {path}")


def write_manifest(artifact_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically into ``artifact_dir``; returns its path."""
    path = Path(artifact_dir) / MANIFEST_NAME
    write_json_atomic(path, manifest.to_json())
    return path


def thresholds_failures(outputs: Sequence[OutputMetrics], thresholds: Thresholds) -> list[str]:
    """Human sentences for every threshold an output misses (empty: passed)."""
    failures = []
    for row in outputs:
        i = row.index
        if row.snr_db < thresholds.min_snr_db:
            failures.append(f"output {i}: SNR {row.snr_db:.1f} dB < {thresholds.min_snr_db:g} dB")
        if row.cosine < thresholds.min_cosine:
            failures.append(f"output {i}: cosine {row.cosine:.4f} < {thresholds.min_cosine:g}")
        if thresholds.min_top1 is not None and row.top1_agreement is not None \
                and row.top1_agreement < thresholds.min_top1:
            failures.append(f"output {i}: top-1 agreement {row.top1_agreement:.2f} < {thresholds.min_top1:g}")
    return failures


# ------------------------------------------------------------------------------- program signature
# The method's declared inputs and outputs, read from the program's own flatbuffer (ExecuTorch's
# schema/program.fbs: Program.execution_plan[].{name, values, inputs, outputs}; EValue.val a union
# whose Tensor member carries scalar_type and sizes) without importing executorch or torch: a
# bounded reader of the few fields needed, refusing anything that points outside the file.
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                 7: "float64", 11: "bool", 15: "bfloat16", 27: "uint16", 28: "uint32", 29: "uint64"}
_UNION_TENSOR = 5            # KernelTypes: NONE=0 (implicit), Null, Int, Bool, Double, Tensor, ...
MAX_PROGRAM_VALUES = 1 << 24


class _Flat:
    """Just enough of the flatbuffer wire format (little-endian tables, vtables, vectors, strings)."""

    def __init__(self, buf, source: str):
        self.buf, self.n, self.source = buf, len(buf), source

    def _bad(self, what: str) -> _Bad:
        return _Bad(f"{self.source} is not an ExecuTorch program ({what})")

    def u(self, pos: int, size: int, signed: bool = False) -> int:
        if pos < 0 or pos + size > self.n:
            raise self._bad(f"a field at byte {pos} lies outside the file")
        return int.from_bytes(self.buf[pos:pos + size], "little", signed=signed)

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field ``index`` of the table at ``table``, or None when absent."""
        vtable = table - self.u(table, 4, signed=True)
        vsize = self.u(vtable, 2)
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return None
        off = self.u(vtable + slot, 2)
        return table + off if off else None

    def ref(self, pos: int) -> int:
        return pos + self.u(pos, 4)

    def vector(self, table: int, index: int, limit: int = MAX_PROGRAM_VALUES) -> tuple[int, int]:
        """(start of the elements, count) of a vector field; (0, 0) when absent."""
        pos = self.field(table, index)
        if pos is None:
            return 0, 0
        vec = self.ref(pos)
        count = self.u(vec, 4)
        if count > limit:
            raise self._bad(f"a vector of {count} elements")
        return vec + 4, count

    def string(self, table: int, index: int) -> str | None:
        start, count = self.vector(table, index, limit=1 << 16)
        if not start:
            return None
        if start + count > self.n:
            raise self._bad("a string runs past the end of the file")
        return bytes(self.buf[start:start + count]).decode("utf-8", "replace")


def is_program_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` carries ExecuTorch's flatbuffer identifier (``ET12`` at byte 4)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == b"ET12"


@dataclass(frozen=True)
class ProgramSignature:
    """A method's inputs and outputs as the program declares them: (dtype, sizes) per tensor, None for a
    value that is not a tensor."""

    method: str
    inputs: tuple[tuple[str, tuple[int, ...]] | None, ...]
    outputs: tuple[tuple[str, tuple[int, ...]] | None, ...]


def read_program_signature(path: str | os.PathLike, method: str = "forward") -> ProgramSignature:
    """The declared inputs/outputs of ``method`` in the ``.pte`` at ``path`` (memory-mapped, so a large
    program is not read into memory). Raises :class:`ArtifactError` for a file that is not a program
    or has no such method."""
    import mmap

    source = f"the program {path}"
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            fb = _Flat(buf, source)
            if fb.n < 8 or bytes(buf[4:8]) != b"ET12":
                raise _Bad(f"{source} is not an ExecuTorch program (no ET12 identifier)")
            root = fb.ref(0)
            start, count = fb.vector(root, 1, limit=1 << 12)
            names, plan = [], None
            for k in range(count):
                p = fb.ref(start + 4 * k)
                name = fb.string(p, 0) or ""
                names.append(name)
                if name == method:
                    plan = p
            if plan is None:
                raise _Bad(f"{source} has no method {method!r} (it has {', '.join(names) or 'none'})")
            values, nvalues = fb.vector(plan, 2)

            def tensor(i: int):
                if not 0 <= i < nvalues:
                    raise fb._bad(f"method {method!r} names value {i} of {nvalues}")
                ev = fb.ref(values + 4 * i)
                kind_pos = fb.field(ev, 0)
                if kind_pos is None or fb.u(kind_pos, 1) != _UNION_TENSOR:
                    return None
                val_pos = fb.field(ev, 1)
                if val_pos is None:
                    return None
                t = fb.ref(val_pos)
                st_pos = fb.field(t, 0)
                scalar = fb.u(st_pos, 1, signed=True) if st_pos is not None else 0
                s_start, s_count = fb.vector(t, 2, limit=64)
                sizes = tuple(fb.u(s_start + 4 * j, 4, signed=True) for j in range(s_count))
                return _SCALAR_TYPES.get(scalar, f"scalar type {scalar}"), sizes

            def indices(field_index: int) -> tuple:
                s, c = fb.vector(plan, field_index, limit=1 << 16)
                return tuple(tensor(fb.u(s + 4 * j, 4, signed=True)) for j in range(c))

            return ProgramSignature(method, indices(3), indices(4))
    except _Bad as exc:
        raise ArtifactError(f"{exc}.", stage="read artifact", hint="Re-export the artifact.") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{source} cannot be read: {exc}.", stage="read artifact",
                            hint="Re-export the artifact.") from None


def signature_mismatches(m: "Manifest", sig: ProgramSignature) -> list[str]:
    """What the manifest's declared inputs/outputs say that the program does not (empty when they
    agree): counts, dtypes, shapes (a dynamic dimension is declared at its upper bound by both)."""
    out: list[str] = []
    for kind, declared, actual in (("inputs", m.inputs, sig.inputs), ("outputs", m.outputs, sig.outputs)):
        if len(declared) != len(actual):
            out.append(f"{len(declared)} {kind} declared, the program's method {sig.method!r} has {len(actual)}")
            continue
        for i, (spec, real) in enumerate(zip(declared, actual)):
            if real is None:
                continue  # a non-tensor value (an int, a list): nothing to compare with a tensor spec
            dtype, sizes = real
            if spec.dtype != dtype:
                out.append(f"{kind}[{i}] ({spec.name}) is declared {spec.dtype}, the program takes {dtype}")
            if tuple(spec.shape) != tuple(sizes):
                out.append(f"{kind}[{i}] ({spec.name}) is declared {list(spec.shape)}, the program's is "
                           f"{list(sizes)}")
    return out
