"""Recipe identity: everything that changes the program an export makes, and its hash.

:func:`recipe_identity` is computed before anything heavy runs (no torch import: versions come
from package metadata), so a cache — bench's artifacts under ``EDGERUN_HOME/artifacts`` — can key
on it and find an earlier export of the same recipe. The export writes the same identity into the
manifest (``recipe``, and its hash as ``recipe_hash``), so the two never disagree.

What counts: the model (name, source, origin and, for a user factory, the sha256 of the module's
source file, so editing the model changes the identity), the target record, the scheme and its
options, the calibration source (a file's content hash, the dataset's name, or generated with its
seed) and sample count, the seed, the number of test vectors, and the torch / executorch / torchao
versions.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

from edgerun.core.artifact import RecipeIdentity, sha256_file

from .errors import ExportError
from .schemes import Scheme
from .targets import Target
from .zoo import ModelSpec

VERSIONED_PACKAGES = ("torch", "executorch", "torchao")


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _model_identity(spec: ModelSpec) -> dict:
    ident = {"name": spec.name, "source": spec.source, "origin": spec.origin}
    if spec.source == "factory":
        module = spec.origin.partition(":")[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is not None and found.origin and Path(found.origin).is_file():
            ident["module_sha256"] = sha256_file(found.origin)
    return ident


def _calibration_identity(spec: ModelSpec, scheme: Scheme, calibration: str | None, seed: int) -> dict | None:
    if not scheme.quantized:
        return None
    samples = getattr(scheme, "calibration_samples", None)
    if calibration:
        p = Path(calibration)
        if not p.is_file():
            raise ExportError(f"calibration file {calibration} does not exist.", stage="quantize")
        return {"source": "file", "sha256": sha256_file(p)}
    if spec.dataset is not None:
        return {"source": "dataset", "name": spec.dataset.name, "samples": samples}
    return {"source": "generated", "samples": samples, "seed": seed + 1}


def _vectors_identity(vectors_file: str | None) -> dict | None:
    if not vectors_file:
        return None
    p = Path(vectors_file)
    if not p.is_file():
        raise ExportError(f"test vectors file {vectors_file} does not exist.", stage="load model")
    return {"source": "file", "sha256": sha256_file(p)}


def recipe_identity(spec: ModelSpec, target: Target, scheme: Scheme, *, calibration: str | None = None,
                    seed: int = 0, vectors: int = 4, vectors_file: str | None = None) -> RecipeIdentity:
    return RecipeIdentity(model=_model_identity(spec), target=target.to_json(), scheme=scheme.to_json(),
                          calibration=_calibration_identity(spec, scheme, calibration, seed), seed=seed,
                          vectors=vectors, versions=tool_versions(), vectors_source=_vectors_identity(vectors_file))
