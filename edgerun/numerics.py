"""How close two sets of model outputs are. A leaf (numpy only), shared by export-time
verification and on-device accuracy, so both report the same numbers the same way.

Metrics per output: SNR in dB (signal power of the reference over the power of the error;
``inf`` for an exact match), max absolute error, cosine similarity, and — for outputs shaped
``[batch, classes]`` — top-1 agreement (fraction of rows whose argmax matches).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


class OutputMismatch(ValueError):
    """Shapes or dtypes cannot be compared; the message names the output index."""


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


def compare_output(actual: np.ndarray, expected: np.ndarray, index: int = 0) -> dict:
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise OutputMismatch(f"output {index}: shape {list(actual.shape)} differs from the reference's "
                             f"{list(expected.shape)}")
    if actual.dtype.kind not in "fiub" or expected.dtype.kind not in "fiub":
        raise OutputMismatch(f"output {index}: cannot compare dtypes {actual.dtype} and {expected.dtype}")
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    metrics = {
        "index": index,
        "shape": list(actual.shape),
        "snr_db": snr_db(actual, expected),
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "cosine": cosine(actual, expected),
        "top1_agreement": None,
    }
    if looks_like_logits(actual.shape):
        metrics["top1_agreement"] = float(np.mean(actual.argmax(axis=1) == expected.argmax(axis=1)))
    return metrics


def compare_outputs(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> list[dict]:
    """Metrics for each output; a different number of outputs is an :class:`OutputMismatch`."""
    if len(actual) != len(expected):
        raise OutputMismatch(f"{len(actual)} outputs where the reference has {len(expected)}")
    return [compare_output(a, e, i) for i, (a, e) in enumerate(zip(actual, expected))]


def aggregate(per_vector: Sequence[Sequence[dict]]) -> list[dict]:
    """Worst case over test vectors, per output: min SNR, max max_abs, min cosine, mean top-1."""
    if not per_vector:
        return []
    out = []
    for i in range(len(per_vector[0])):
        rows = [vec[i] for vec in per_vector]
        top1 = [r["top1_agreement"] for r in rows if r["top1_agreement"] is not None]
        out.append({
            "index": i,
            "shape": rows[0]["shape"],
            "snr_db": min(r["snr_db"] for r in rows),
            "max_abs": max(r["max_abs"] for r in rows),
            "cosine": min(r["cosine"] for r in rows),
            "top1_agreement": float(np.mean(top1)) if top1 else None,
            "vectors": len(rows),
        })
    return out
