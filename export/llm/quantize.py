"""Weight quantization of a :class:`~.gguf_model.Llama` for the LLM schemes, with no custom ops.

* linear layers: torchao's ``Int8DynamicActivationIntxWeightConfig`` (int8 dynamic activations),
  which XNNPACK's partitioner lowers to its dynamically quantized linear. ``int8-dynamic``: int8
  per-channel weights everywhere. ``8da4w``: int4 grouped weights with HQQ-chosen scales, except the
  layers llama.cpp's Q4_K_M also keeps wider -- the attention projections and the FFN down projection
  (:data:`KEEP_8BIT`) -- and the LM head, which are int8 per-channel. Measured on SmolLM2-135M (its GGUF
  is already Q4_1, so a second 4-bit rounding compounds): held-out perplexity 30.1 eager fp32; every
  linear int4 affine + 4-bit embedding and head 46.1; int4 linears alone 40.5; this recipe with a
  4-bit embedding 33.2, with the default 8-bit embedding 32.4 (the program: 33.4 and 32.1, i.e. +11.0 %
  and +6.6 %, at 20.0 % and 21.7 % of the fp32 program's 652 MB); everything int8 30.6;
* the embedding: :class:`QuantizedEmbedding`, a table of 8-bit codes with one fp32 scale per row
  (``int8-dynamic``, and ``8da4w`` by default) or 4-bit codes with a scale per group (``8da4w
  --embedding-bits 4``), looked up with ``quantized_decomposed::embedding_4bit`` /
  ``embedding_byte`` — kernels of ExecuTorch's quantized kernel library (``executorch.kernels.quantized``),
  not the LLM custom-op library, so the native runner links them like any other kernel.

A tied LM head is quantized on its own (XNNPACK packs its weights into the delegate, and no
kernel reads the embedding's table as a linear weight), so the tied matrix is stored twice -- a
4-bit table and an int8 head -- rather than once in fp32 plus once in the delegate.

The handlers of the LLM flavour of those schemes are registered here (:func:`~..recipes.recipe_handler`
with ``llm=True``); fp32's is the identity, registered beside it.
"""

from __future__ import annotations

import copy
from typing import Any

from ..recipes import RecipeContext, RecipeResult, recipe_handler
from ..stages import report_progress
from ..schemes import Int8DynAct4BitWeight, Int8Dynamic

#: 8da4w: linear layers (name suffixes) kept at int8 per-channel -- attention and the FFN down projection
KEEP_8BIT = ("attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w2")


def _embedding_ops() -> None:
    # the Python definitions of quantized_decomposed::embedding_* (export time) live here
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401


def _module_class():
    import torch
    from torch import nn

    class QuantizedEmbedding(nn.Module):
        """Embedding rows as symmetric ``bits``-bit codes, ``group_size`` values per fp32 scale."""

        def __init__(self, weight: torch.Tensor, bits: int, group_size: int):
            super().__init__()
            vocab, dim = weight.shape
            if dim % group_size:
                raise ValueError(f"embedding width {dim} is not a multiple of group_size {group_size}")
            qmax = 2 ** (bits - 1) - 1
            groups = weight.detach().float().reshape(vocab, dim // group_size, group_size)
            scales = groups.abs().amax(-1).clamp(min=1e-8) / qmax
            q = torch.clamp(torch.round(groups / scales.unsqueeze(-1)), -qmax - 1, qmax).to(torch.int8)
            q = q.reshape(vocab, dim)
            self.bits, self.group_size, self.qmax = bits, group_size, qmax
            if bits == 4:   # two codes a byte: even column in the high nibble, both offset by 8
                u = (q.to(torch.int16) + 8).to(torch.uint8)
                packed = (u[:, 0::2] << 4) | u[:, 1::2]
                self.register_buffer("weight", packed.contiguous())
            else:
                self.register_buffer("weight", q.contiguous())
            self.register_buffer("scales", scales.contiguous())

        def forward(self, tokens):
            weight, scales = self.weight, self.scales
            if not (torch.compiler.is_exporting() or torch.compiler.is_compiling()):
                # eager (the export's reference runs): the same op on just the rows looked up -- the op
                # dequantizes its whole table per call (SmolLM2: 28 M codes a decode step); rows are
                # dequantized independently, so the values are identical. The graph keeps the whole table.
                rows, tokens = torch.unique(tokens, return_inverse=True)
                weight, scales = weight.index_select(0, rows), scales.index_select(0, rows)
            if self.bits == 4:
                return torch.ops.quantized_decomposed.embedding_4bit.dtype(
                    weight, scales, None, -8, 7, tokens, dtype=torch.float32)
            return torch.ops.quantized_decomposed.embedding_byte.dtype(
                weight, scales, None, -128, 127, tokens, dtype=torch.float32)

        def full_table_forward(self, tokens):
            """The op on the whole table, as the exported graph runs it (tests compare the eager path with it)."""
            if self.bits == 4:
                return torch.ops.quantized_decomposed.embedding_4bit.dtype(
                    self.weight, self.scales, None, -8, 7, tokens, dtype=torch.float32)
            return torch.ops.quantized_decomposed.embedding_byte.dtype(
                self.weight, self.scales, None, -128, 127, tokens, dtype=torch.float32)

    return QuantizedEmbedding


def _copy_without_weights(model):
    """A deep copy of ``model`` whose linear and embedding weights are the original tensors, not copies:
    quantization replaces each of them with a new (quantized) parameter and never writes into the old
    one, so copying them first would only hold a second fp32 model in memory for a while."""
    import torch

    shared = {id(m.weight): m.weight for m in model.modules()
              if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    return copy.deepcopy(model, memo=dict(shared))


def quantize_llama(model, scheme) -> tuple[Any, dict]:
    """A quantized copy of ``model`` for ``scheme`` (``8da4w`` or ``int8-dynamic``) and the facts."""
    import torch
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.quantize_.workflows.intx.intx_choose_qparams_algorithm import (
        IntxChooseQParamsAlgorithm,
    )
    from torchao.utils import unwrap_tensor_subclass

    from ..errors import ExportError

    if not isinstance(scheme, (Int8DynAct4BitWeight, Int8Dynamic)):
        raise ExportError(f"no LLM quantization recipe for scheme {scheme.name!r}; LLM schemes: fp32, "
                          "int8-dynamic, 8da4w.", stage="quantize")
    _embedding_ops()
    bits = getattr(scheme, "embedding_bits", 8)
    dim = model.config.dim
    gs = getattr(scheme, "group_size", None)
    if gs is not None and dim % gs:
        raise ExportError(f"group_size {gs} does not divide the model width {dim}.", stage="quantize",
                          hint="Use --group-size 32 (or another divisor of the width).")
    q = _copy_without_weights(model)
    emb_group = gs if gs is not None and bits == 4 else dim
    q.tok_embeddings = _module_class()(model.tok_embeddings.weight, bits, emb_group)
    int8 = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    linears = [n for n, m in q.named_modules() if isinstance(m, torch.nn.Linear)]
    wide = [n for n in linears if gs is None or n == "output" or n.endswith(KEEP_8BIT)]
    narrow = [n for n in linears if n not in wide]
    skipped = [n for n in narrow if q.get_submodule(n).in_features % gs]
    if skipped:
        raise ExportError(f"group_size {gs} does not divide the input width of {', '.join(skipped[:3])}.",
                          stage="quantize", hint="Use --group-size 32.")
    if model.config.tied_embeddings:
        # untie: the LM head gets its own parameter (quantize_ replaces it, so the shared fp32 tensor is
        # only read), quantized for the linear kernel
        q.output.weight = torch.nn.Parameter(model.tok_embeddings.weight.detach(), requires_grad=False)
    wide_set, narrow_set = set(wide), set(narrow)
    int4_numel = sum(q.get_submodule(n).weight.numel() for n in narrow)
    int4 = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(gs),
                                                 intx_choose_qparams_algorithm=IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY) \
        if narrow else None
    # one block at a time, then what is outside the blocks (the LM head), so progress is reported per layer
    blocks = [(f"layers.{i}.", block) for i, block in enumerate(q.layers)]
    for k, (prefix, part) in enumerate([*blocks, ("", q)]):
        def pick(names, prefix=prefix, last=not prefix):
            return lambda m, fqn="": (isinstance(m, torch.nn.Linear) and prefix + fqn in names
                                      and not (last and any(fqn.startswith(b) for b, _ in blocks)))
        quantize_(part, int8, pick(wide_set))
        if int4 is not None:
            quantize_(part, int4, pick(narrow_set))
        report_progress(k + 1, len(blocks) + 1, f"layer {k + 1}/{len(blocks)}" if prefix else "LM head")
    unwrap_tensor_subclass(q)
    facts = {"linear_layers": len(linears), "quantized_linear_layers": len(linears),
             "int4_linear_layers": len(narrow), "int8_linear_layers": len(wide), "int4_weight_numel": int4_numel,
             "linear_weights": (f"int4 grouped ({gs} per scale, HQQ scales) except attention, FFN down and the LM "
                                "head: int8 per-channel") if gs is not None else "int8 per-channel",
             "group_size": gs, "embedding": f"{bits}-bit, {emb_group} per scale "
             f"(quantized_decomposed::embedding_{'4bit' if bits == 4 else 'byte'})",
             "lm_head": "int8 per-channel" + (" (tied: stored apart from the embedding)"
                                              if model.config.tied_embeddings else "")}
    return q.eval(), facts


@recipe_handler(Int8Dynamic, llm=True)
@recipe_handler(Int8DynAct4BitWeight, llm=True)
def _llm_weights(recipe, ctx: RecipeContext) -> RecipeResult:
    module, facts = quantize_llama(ctx.module, recipe)
    return RecipeResult(module, facts=facts)
