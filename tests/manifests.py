"""A minimal, valid artifact on disk for tests of the layers that read one (no export needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def write_artifact(root: Path, *, vectors: int = 1, pte: bytes = b"not a real program", **overrides) -> dict:
    """Write manifest.json + model.pte + test vectors under ``root``; return the manifest dict."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.pte").write_bytes(pte)
    tvs = []
    for k in range(vectors):
        d = root / "vectors" / f"{k:03d}"
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "input_0.npy", np.full((1, 2), k, np.float32))
        np.save(d / "output_0.npy", np.zeros((1, 3), np.float32))
        tvs.append({"inputs": [f"vectors/{k:03d}/input_0.npy"], "outputs": [f"vectors/{k:03d}/output_0.npy"]})
    manifest = {
        "schema": "edgerun.artifact", "schema_version": 1, "status": "ok",
        "model": {"name": "tiny", "task": "classification", "source": "zoo"},
        "target": {"name": "host", "arch": "x86_64", "backends": ["xnnpack"]},
        "scheme": {"name": "fp32", "options": {}, "recipe_hash": "0" * 16},
        "recipe_hash": "1" * 16, "versions": {"executorch": "1.5.1", "torch": "2.14.1"},
        "inputs": [{"name": "x", "shape": [1, 2], "dtype": "float32"}],
        "outputs": [{"name": "output_0", "shape": [1, 3], "dtype": "float32"}],
        "files": {"pte": "model.pte", "etrecord": "model.etrecord"},
        "pte_bytes": len(pte), "pte_sha256": hashlib.sha256(pte).hexdigest(),
        "method": "forward", "planned_memory_bytes": 64, "planned_buffers": [0, 64],
        "operators": {"non_delegated": {}, "delegated": {"XnnpackBackend": 1}, "delegates": ["XnnpackBackend"],
                      "operator_table": []},
        "test_vectors": tvs, "calibration": None,
    }
    manifest.update(overrides)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest
