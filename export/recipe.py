"""Recipe identity: everything that changes the program an export makes, and its hash.

:func:`recipe_identity` is computed before anything heavy runs (no torch import: versions come
from package metadata), so a cache — bench's artifacts under ``EDGERUN_HOME/artifacts`` — can key
on it and find an earlier export of the same recipe. The export writes the same identity into the
manifest (``recipe``, and its hash as ``recipe_hash``), so the two never disagree.

What counts: the model (name, source, origin and, for a user factory, the sha256 of the module's
source file, so editing the model changes the identity; for a module handed over as a Python object,
the hashes of its classes' code and of its weights: :mod:`.modules`), the target record, the recipe —
the quantize step (``scheme``) and, for a chain of more than that, every step with every option
(``steps``) — the calibration source (a file's content hash, the dataset's name, or generated with its
seed) and sample count when the recipe runs calibration inputs, the seed, the number of test vectors,
and the torch / executorch / torchao versions.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

from edgerun.core.artifact import RecipeIdentity, sha256_file

from . import rewrites
from .errors import ExportError
from .recipes import Recipe, RecipeChain
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
    out["edgerun.export.rewrites"] = str(rewrites.VERSION)   # how edgerun itself rewrote the graph
    return out


def _model_identity(spec: ModelSpec) -> dict:
    ident = {"name": spec.name, "source": spec.source, "origin": spec.origin}
    if spec.identity:
        ident.update(spec.identity)
    if spec.source == "factory":
        module = spec.origin.partition(":")[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is not None and found.origin and Path(found.origin).is_file():
            ident["module_sha256"] = sha256_file(found.origin)
    return ident


def _calibration_identity(spec: ModelSpec, chain: RecipeChain, calibration: str | None, seed: int) -> dict | None:
    if not chain.uses_calibration:
        return None
    samples = getattr(chain.quantize, "calibration_samples", None)
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


def recipe_identity(spec: ModelSpec, target: Target, recipe: "str | Recipe | RecipeChain", *,
                    calibration: str | None = None, seed: int = 0, vectors: int = 4,
                    vectors_file: str | None = None) -> RecipeIdentity:
    """The identity of exporting ``spec`` for ``target`` with ``recipe`` (recipe text, a scheme or a chain)."""
    chain = RecipeChain.of(recipe)
    return RecipeIdentity(model=_model_identity(spec), target=target.to_json(), scheme=chain.quantize.to_json(),
                          calibration=_calibration_identity(spec, chain, calibration, seed), seed=seed,
                          vectors=vectors, versions=tool_versions(), vectors_source=_vectors_identity(vectors_file),
                          steps=chain.identity_steps())
