"""Quantization schemes: typed, validated, serialisable configs with a stable recipe hash.

A scheme is a small frozen dataclass (torchao's habit: one verb, typed nouns). ``name`` is the
registry key users type; every other field is an option with a default. ``recipe_hash`` is the
sha256 of the canonical JSON of (schema version, name, options): two exports with the same hash
were made with the same quantization recipe.

Thresholds: each scheme says how close its program must stay to eager PyTorch for verification
to pass (SNR in dB and cosine similarity, on every output of every test vector).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, ClassVar

from edgerun.core.errors import UsageError

RECIPE_SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Scheme:
    name: ClassVar[str]
    description: ClassVar[str]
    quantized: ClassVar[bool] = True
    #: verification thresholds (overridable per export)
    min_snr_db: ClassVar[float]
    min_cosine: ClassVar[float]

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options(), "recipe_hash": self.recipe_hash}

    @property
    def recipe_hash(self) -> str:
        canonical = json.dumps(
            {"v": RECIPE_SCHEMA_VERSION, "scheme": self.name, "options": self.options()},
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Fp32(Scheme):
    name: ClassVar[str] = "fp32"
    description: ClassVar[str] = "float32, no quantization"
    quantized: ClassVar[bool] = False
    min_snr_db: ClassVar[float] = 40.0
    min_cosine: ClassVar[float] = 0.9999


@dataclasses.dataclass(frozen=True)
class Int8Static(Scheme):
    """PT2E static int8: XNNPACKQuantizer, symmetric, per-channel weights, calibrated activations."""

    name: ClassVar[str] = "int8"
    description: ClassVar[str] = "int8 static (PT2E, symmetric per-channel weights, calibrated activations)"
    min_snr_db: ClassVar[float] = 10.0
    min_cosine: ClassVar[float] = 0.95

    calibration_samples: int = 16
    per_channel: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
            raise ValueError(f"calibration_samples must be a positive integer, got {self.calibration_samples!r}")


@dataclasses.dataclass(frozen=True)
class Int8Dynamic(Scheme):
    """PT2E dynamic int8: weights int8 per-channel, activations quantized at run time (linear layers)."""

    name: ClassVar[str] = "int8-dynamic"
    description: ClassVar[str] = "int8 dynamic (PT2E, weights per-channel, activations quantized at run time)"
    min_snr_db: ClassVar[float] = 12.0
    min_cosine: ClassVar[float] = 0.97

    per_channel: bool = True


@dataclasses.dataclass(frozen=True)
class Int8DynAct4BitWeight(Scheme):
    """torchao int8 dynamic activations + 4-bit grouped weights on linear layers (LLM-style)."""

    name: ClassVar[str] = "8da4w"
    description: ClassVar[str] = "int8 dynamic activations, 4-bit grouped weights (torchao; linear layers)"
    min_snr_db: ClassVar[float] = 6.0
    min_cosine: ClassVar[float] = 0.85

    group_size: int = 32
    embedding_bits: int = 8   # LLMs: the token embedding table's codes (4 or 8 bits); other models have none

    def __post_init__(self) -> None:
        if not isinstance(self.group_size, int) or self.group_size < 1 or self.group_size & (self.group_size - 1):
            raise ValueError(f"group_size must be a positive power of two, got {self.group_size!r}")
        if self.embedding_bits not in (4, 8):
            raise ValueError(f"embedding_bits must be 4 or 8, got {self.embedding_bits!r}")



SCHEMES: dict[str, type[Scheme]] = {cls.name: cls for cls in (Fp32, Int8Static, Int8Dynamic, Int8DynAct4BitWeight)}


def make_scheme(name: str, **options: Any) -> Scheme:
    """Build a scheme by registry name; unknown names and options are a :class:`UsageError`."""
    try:
        cls = SCHEMES[name]
    except KeyError:
        raise UsageError(f"unknown scheme {name!r}.", hint=f"Known schemes: {', '.join(SCHEMES)}.") from None
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise UsageError(
            f"scheme {name!r} takes no option {', '.join(unknown)}.",
            hint=f"Its options: {', '.join(sorted(fields)) or 'none'}.",
        )
    try:
        return cls(**given)
    except ValueError as exc:
        raise UsageError(f"scheme {name!r}: {exc}.") from None
