"""The export room: how programs are made (model zoo, schemes, targets, lowering, verification,
manifest). It never talks to a device. Heavy imports (torch, executorch) happen inside functions,
so listing models or targets stays fast."""

from __future__ import annotations

from .errors import ExportError, VerificationFailed
from edgerun.core.artifact import MANIFEST_NAME, SCHEMA_VERSION, Manifest, read_manifest
from .schemes import SCHEMES, Scheme, make_scheme
from .targets import TARGETS, Target, get_target, legal_pairs
from .zoo import MODELS, get_model


def export_model(model, *args, max_context: int | None = None, **kwargs):
    """See :func:`edgerun.export.pipeline.export_model`; an LLM (a GGUF, ``smollm2-135m``) goes through
    :func:`edgerun.export.llm.export.export_llm`, which also takes ``max_context`` (the KV cache length)."""
    from .llm.zoo import LLMSpec

    spec = get_model(model) if isinstance(model, str) and (model in MODELS or model.endswith(".gguf")) else model
    if isinstance(spec, LLMSpec):
        from .llm.export import export_llm

        return export_llm(spec, *args, max_context=max_context, **kwargs)
    if max_context is not None:
        from edgerun.core.errors import UsageError

        raise UsageError(f"--max-context applies to LLMs only; {model!r} is not one.")
    from .pipeline import export_model as _export_model

    return _export_model(model, *args, **kwargs)


__all__ = ["export_model", "read_manifest", "Manifest", "ExportError", "VerificationFailed", "MANIFEST_NAME",
           "SCHEMA_VERSION", "SCHEMES", "Scheme", "make_scheme", "TARGETS", "Target", "get_target",
           "legal_pairs", "MODELS", "get_model"]
