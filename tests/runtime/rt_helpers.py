"""Comparisons the runtime tests share (imported by name: conftest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgerun.core.artifact import Manifest, read_manifest


def manifest_of(artifact: Path) -> Manifest:
    return read_manifest(artifact)


def vector_inputs(artifact: Path, index: int = 0) -> list[Path]:
    return [artifact / p for p in manifest_of(artifact).test_vectors[index].inputs]


def vector_outputs(artifact: Path, index: int = 0) -> list[np.ndarray]:
    return manifest_of(artifact).load_test_vector(index).outputs


def pybindings_outputs(artifact: Path, index: int = 0) -> list[np.ndarray]:
    """The same program and inputs through executorch's Python runtime (in this process)."""
    import torch
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(artifact / "model.pte"))
    method = program.load_method("forward")
    inputs = [torch.from_numpy(np.load(p)) for p in vector_inputs(artifact, index)]
    return [o.numpy().copy() for o in method.execute(inputs)]


def within_export_thresholds(artifact: Path, outputs: list[np.ndarray], index: int = 0) -> list[str]:
    """Sentences for every export threshold the outputs miss against the eager reference ([] = fine)."""
    from edgerun.runtime.accuracy import compare_vectors

    th = manifest_of(artifact).verification.thresholds
    acc = compare_vectors([outputs], [vector_outputs(artifact, index)])
    bad = []
    for o in acc.outputs:
        if o.snr_db < th.min_snr_db:
            bad.append(f"output {o.index}: SNR {o.snr_db:.1f} dB < {th.min_snr_db}")
        if o.cosine < th.min_cosine:
            bad.append(f"output {o.index}: cosine {o.cosine:.5f} < {th.min_cosine}")
    return bad
