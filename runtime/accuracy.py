"""Accuracy on the device: outputs pulled from a run against the artifact's eager reference outputs.

The per-output numbers (SNR dB, max abs error, cosine, top-1 agreement) are computed by
:mod:`edgerun.core.numerics`, the same code export-time verification uses, so "verified at export" and
"accurate on the device" are the same measurement. This module adds what a device run needs: the
artifact's test vectors read from disk, comparisons across several vectors, errors that name the
vector and the output, task accuracy from labelled outputs, and a frozen record with the source
label (measured / emulated). numpy only; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgerun.core import numerics
from edgerun.core.errors import AnalysisError


class AccuracyError(AnalysisError):
    """Outputs cannot be compared with the reference (count, shape or dtype differ; files missing)."""

    default_stage = "accuracy"


#: One output, worst case over the test vectors (mean for top-1 agreement): the same typed metrics
#: export-time verification stores in the manifest.
OutputAccuracy = numerics.OutputMetrics


@dataclass(frozen=True)
class AccuracyResult:
    source: str  # measured | emulated: where the compared outputs were computed
    reference: str  # what they were compared with, e.g. "eager (artifact test vectors)"
    outputs: tuple[OutputAccuracy, ...]
    vectors: int
    task_accuracy: float | None = None  # e.g. digits held-out accuracy from device outputs
    task_samples: int | None = None
    # Against the artifact's accuracy thresholds: True within them, False outside (``failures`` says
    # which output and threshold), None when not checked.
    passed: bool | None = None
    failures: tuple[str, ...] = ()

    @property
    def min_snr_db(self) -> float | None:
        return min((o.snr_db for o in self.outputs), default=None)

    def to_dict(self) -> dict:
        return {"source": self.source, "reference": self.reference, "vectors": self.vectors,
                "outputs": [o.to_json() for o in self.outputs], "task_accuracy": self.task_accuracy,
                "task_samples": self.task_samples, "passed": self.passed, "failures": list(self.failures)}

    @classmethod
    def from_dict(cls, d: dict) -> "AccuracyResult":
        return cls(source=d["source"], reference=d.get("reference", ""), vectors=d.get("vectors", 0),
                   outputs=tuple(OutputAccuracy.from_json(o) for o in d.get("outputs", [])),
                   task_accuracy=d.get("task_accuracy"), task_samples=d.get("task_samples"),
                   passed=d.get("passed"), failures=tuple(d.get("failures") or ()))


def compare_vectors(
    actual: Sequence[Sequence[np.ndarray]],
    expected: Sequence[Sequence[np.ndarray]],
    *,
    names: Sequence[str] | None = None,
    source: str = "measured",
    reference: str = "eager (artifact test vectors)",
) -> AccuracyResult:
    """Compare outputs of several test vectors: ``actual[v][j]`` against ``expected[v][j]``."""
    if len(actual) != len(expected):
        raise AccuracyError(f"{len(actual)} output sets for {len(expected)} reference vectors.",
                            hint="Run the device once per test vector of the artifact.")
    if not actual:
        raise AccuracyError("no outputs to compare.", hint="Pull the run's outputs (--output-dir) first.")
    per_vector = []
    for v, (act, exp) in enumerate(zip(actual, expected)):
        try:
            per_vector.append(numerics.compare_outputs([np.asarray(a) for a in act], [np.asarray(e) for e in exp]))
        except numerics.OutputMismatch as exc:
            raise AccuracyError(f"test vector {v}: {exc}.",
                                hint="Was the run made from this artifact's model.pte and inputs?") from exc
        for j, (a, e) in enumerate(zip(act, exp)):
            if np.asarray(a).dtype != np.asarray(e).dtype:
                raise AccuracyError(
                    f"test vector {v}, output {j}: dtype {np.asarray(a).dtype} differs from the reference's "
                    f"{np.asarray(e).dtype}.", hint="Was the run made from this artifact's model.pte?")
    outputs = [m.named(names[m.index] if names and m.index < len(names) else None)
               for m in numerics.aggregate(per_vector)]
    return AccuracyResult(source=source, reference=reference, outputs=tuple(outputs), vectors=len(per_vector))


def task_accuracy(logits: Sequence[np.ndarray] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of samples whose argmax over the last axis equals the label (``[batch, classes]`` outputs)."""
    arrays = [np.asarray(x) for x in (logits if isinstance(logits, (list, tuple)) else [logits])]
    if any(a.ndim != 2 for a in arrays):
        raise AccuracyError("task accuracy needs [batch, classes] outputs.")
    preds = np.concatenate([a.argmax(axis=1) for a in arrays])
    labels = np.asarray(labels).ravel()
    if preds.size != labels.size:
        raise AccuracyError(f"{preds.size} predictions for {labels.size} labels.")
    if labels.size == 0:
        raise AccuracyError("task accuracy of zero samples.")
    return float(np.mean(preds == labels))


def batch_task_accuracy(stacked: np.ndarray, labels: Sequence[int] | np.ndarray, *, what: str = "outputs") -> float:
    """Task accuracy from stacked per-sample outputs ``[N, *output_shape]`` (e.g. the runner's
    ``--batch-output``), where each sample's output is one row of class scores (``[1, C]`` or ``[C]``)."""
    stacked = np.asarray(stacked)
    labels = np.asarray(labels).ravel()
    if stacked.ndim < 2 or int(np.prod(stacked.shape[1:-1], dtype=np.int64)) != 1:
        raise AccuracyError(f"{what} have shape {list(stacked.shape)}: task accuracy needs one row of class "
                            "scores per sample ([N, 1, C] or [N, C]).",
                            hint="Task accuracy is computed for classification models only.")
    if stacked.shape[0] != labels.size:
        raise AccuracyError(f"{what} hold {stacked.shape[0]} samples for {labels.size} labels.",
                            hint="Were they run from this artifact's dataset/inputs.npy?")
    return task_accuracy(stacked.reshape(stacked.shape[0], stacked.shape[-1]), labels)


def load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise AccuracyError(f"{what} {path} does not exist.", hint="Is the export directory complete?") from exc
    except (ValueError, OSError) as exc:
        raise AccuracyError(f"{what} {path} is not a readable .npy file ({exc}).") from exc
