"""The export room: how programs are made (model zoo, recipes, targets, lowering, verification,
manifest). It never talks to a device. Heavy imports (torch, executorch) happen inside functions,
so listing models or targets stays fast.

Extension points, each one registration in this room: a recipe (:func:`register_recipe` /
:func:`recipe_handler`, :mod:`.recipes`), a target (:func:`register_target`), a backend, a quantizer
or an estimator (:func:`register_backend`, :func:`register_quantizer`, :func:`register_estimator`).
"""

from __future__ import annotations

from typing import Any

from .errors import ExportError, VerificationFailed
from edgerun.core.artifact import MANIFEST_NAME, SCHEMA_VERSION, Manifest, RecipeIdentity, Thresholds, read_manifest
from .options import ExportOptions
from .recipe import recipe_identity
from .recipes import (KINDS, RECIPES, Recipe, RecipeChain, RecipeContext, RecipeResult, Registration, make_recipe,
                      parse_recipe, recipe_handler, register_recipe, unregister_recipe)
from .schemes import SCHEMES, Scheme, make_scheme
from . import compression  # noqa: F401,E402  registers lowrank and prune-channels
from .llm import compress as _llm_compress  # noqa: F401,E402  registers the LLM handlers of lowrank, prune-*
from .llm import quantize as _llm_quantize  # noqa: F401,E402  registers the LLM handlers of int8-dynamic, 8da4w
from . import sparsity  # noqa: F401,E402  registers sparsify
from . import distill  # noqa: F401,E402  registers distill
from .arm import targets as _arm_targets  # noqa: F401,E402  registers the Ethos-U targets
from .arm import cortex_m as _cortex_m  # noqa: F401,E402  registers the Cortex-M targets
from .targets import (BACKENDS, ESTIMATORS, QUANTIZERS, TARGETS, Target, get_target, legal_pairs, register_backend,
                      register_estimator, register_quantizer, register_target, unregister_target)
from .zoo import MODELS, ModelSpec, get_model


def _is_llm(model: Any) -> bool:
    from .llm.zoo import LLMSpec

    return isinstance(model, LLMSpec) or (isinstance(model, str) and (
        model.endswith(".gguf") or isinstance(MODELS.get(model), LLMSpec)))


def export_model(model, *args, max_context: int | None = None, **kwargs) -> Manifest:
    """Export a model; see :func:`edgerun.export.pipeline.export_model` (models: a zoo name, a factory
    path, an ``nn.Module`` with ``example_inputs=``, a ``(module, example_inputs)`` pair or an
    ``ExportedProgram``). An LLM (a GGUF path, ``smollm2-135m``) goes through
    :func:`edgerun.export.llm.export.export_llm`, which also takes ``max_context`` (the KV cache length)."""
    if _is_llm(model):
        from .llm.export import export_llm
        from .targets import get_target

        target = args[0] if args else kwargs.get("target")
        if isinstance(target, str):
            get_target(target).check_llm()   # before any work: an LLM cannot go to a microcontroller

        spec = get_model(model) if isinstance(model, str) else model
        return export_llm(spec, *args, max_context=max_context, **kwargs)
    if max_context is not None:
        from edgerun.core.errors import UsageError

        label = model if isinstance(model, str) else getattr(model, "name", type(model).__name__)
        raise UsageError(f"--max-context applies to LLMs only; {label!r} is not one.")
    from .pipeline import export_model as _export_model

    return _export_model(model, *args, **kwargs)


def export_identity(spec: ModelSpec, target: Target, recipe, options: ExportOptions | None = None,
                    max_context: int | None = None) -> RecipeIdentity:
    """The recipe identity :func:`export_model` will write for ``spec`` (dispatched the same way: an LLM's
    adds its GGUF's hash and max context), computed before any work -- what caches of exports key on."""
    options = options or ExportOptions()
    if _is_llm(spec):
        from .llm.export import llm_recipe_identity

        return llm_recipe_identity(spec, target, recipe, max_context=max_context, options=options)
    if max_context is not None:
        from edgerun.core.errors import UsageError

        raise UsageError(f"--max-context applies to LLMs only; {spec.name!r} is not one.")
    return recipe_identity(spec, target, recipe, calibration=options.calibration, seed=options.seed,
                           vectors=options.vectors)


__all__ = ["export_model", "export_identity", "read_manifest", "Manifest", "ExportError", "VerificationFailed",
           "MANIFEST_NAME", "SCHEMA_VERSION", "ExportOptions", "Thresholds", "recipe_identity",
           "KINDS", "RECIPES", "Recipe", "RecipeChain", "RecipeContext", "RecipeResult", "Registration",
           "make_recipe", "parse_recipe", "recipe_handler", "register_recipe", "unregister_recipe",
           "SCHEMES", "Scheme", "make_scheme",
           "BACKENDS", "ESTIMATORS", "QUANTIZERS", "TARGETS", "Target", "get_target", "legal_pairs",
           "register_backend", "register_estimator", "register_quantizer", "register_target", "unregister_target",
           "MODELS", "ModelSpec", "get_model"]
