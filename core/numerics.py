"""How close two sets of model outputs are. A leaf (numpy only), shared by export-time
verification and on-device accuracy, so both report the same numbers the same way.

Metrics per output: SNR in dB (signal power of the reference over the power of the error;
``inf`` for an exact match), max absolute error, cosine similarity, and — for outputs shaped
``[batch, classes]`` — top-1 agreement (fraction of rows whose argmax matches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np


class OutputMismatch(ValueError):
    """Shapes or dtypes cannot be compared; the message names the output index."""


@dataclass(frozen=True)
class OutputMetrics:
    """How close one output is to its reference; over several test vectors, the worst case
    (min SNR and cosine, max max_abs) and the mean top-1 agreement, with ``vectors`` counted."""

    index: int
    shape: tuple[int, ...]
    snr_db: float            # +inf: bit-exact (strict JSON carries it as null; ``exact`` keeps the meaning)
    max_abs: float
    cosine: float
    top1_agreement: float | None = None  # fraction of rows with the same argmax; only [batch, classes]
    vectors: int | None = None
    name: str | None = None

    @property
    def exact(self) -> bool:
        return math.isinf(self.snr_db) and self.snr_db > 0

    def named(self, name: str | None) -> "OutputMetrics":
        return replace(self, name=name)

    def to_json(self) -> dict:
        return {"index": self.index, "name": self.name, "shape": list(self.shape), "snr_db": self.snr_db,
                "max_abs": self.max_abs, "cosine": self.cosine, "top1_agreement": self.top1_agreement,
                "vectors": self.vectors, "exact": self.exact}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "OutputMetrics":
        snr = d.get("snr_db")
        if snr is None:  # strict JSON carried +inf as null
            snr = math.inf
        top1 = d.get("top1_agreement")
        return cls(index=int(d["index"]), shape=tuple(int(s) for s in d.get("shape") or ()), snr_db=float(snr),
                   max_abs=float(d["max_abs"]), cosine=float(d["cosine"]),
                   top1_agreement=None if top1 is None else float(top1),
                   vectors=None if d.get("vectors") is None else int(d["vectors"]), name=d.get("name"))


def snr_db(actual: np.ndarray, expected: np.ndarray) -> float:
    ref = expected.astype(np.float64).ravel()
    err = actual.astype(np.float64).ravel() - ref
    noise = float(np.mean(err * err)) if err.size else 0.0
    signal = float(np.mean(ref * ref)) if ref.size else 0.0
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    a = actual.astype(np.float64).ravel()
    b = expected.astype(np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def looks_like_logits(shape: Sequence[int]) -> bool:
    return len(shape) == 2 and shape[1] > 1


def compare_output(actual: np.ndarray, expected: np.ndarray, index: int = 0) -> OutputMetrics:
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise OutputMismatch(f"output {index}: shape {list(actual.shape)} differs from the reference's "
                             f"{list(expected.shape)}")
    if actual.dtype.kind not in "fiub" or expected.dtype.kind not in "fiub":
        raise OutputMismatch(f"output {index}: cannot compare dtypes {actual.dtype} and {expected.dtype}")
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    top1 = None
    if looks_like_logits(actual.shape):
        top1 = float(np.mean(actual.argmax(axis=1) == expected.argmax(axis=1)))
    return OutputMetrics(index=index, shape=tuple(actual.shape), snr_db=snr_db(actual, expected),
                         max_abs=float(diff.max()) if diff.size else 0.0, cosine=cosine(actual, expected),
                         top1_agreement=top1, vectors=1)


def compare_outputs(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> list[OutputMetrics]:
    """Metrics for each output; a different number of outputs is an :class:`OutputMismatch`."""
    if len(actual) != len(expected):
        raise OutputMismatch(f"{len(actual)} outputs where the reference has {len(expected)}")
    return [compare_output(a, e, i) for i, (a, e) in enumerate(zip(actual, expected))]


def aggregate(per_vector: Sequence[Sequence[OutputMetrics]]) -> list[OutputMetrics]:
    """Worst case over test vectors, per output: min SNR, max max_abs, min cosine, mean top-1."""
    if not per_vector:
        return []
    out = []
    for i in range(len(per_vector[0])):
        rows = [vec[i] for vec in per_vector]
        top1 = [r.top1_agreement for r in rows if r.top1_agreement is not None]
        out.append(OutputMetrics(index=i, shape=rows[0].shape, snr_db=min(r.snr_db for r in rows),
                                 max_abs=max(r.max_abs for r in rows), cosine=min(r.cosine for r in rows),
                                 top1_agreement=float(np.mean(top1)) if top1 else None, vectors=len(rows),
                                 name=rows[0].name))
    return out
