"""Weight quantization of a :class:`~.gguf_model.Llama` for the LLM schemes, with no custom ops.

* linear layers: torchao's ``Int8DynamicActivationIntxWeightConfig`` (int8 dynamic activations),
  which XNNPACK's partitioner lowers to its dynamically quantized linear. ``int8-dynamic``: int8
  per-channel weights everywhere. ``8da4w``: int4 grouped weights with HQQ-chosen scales, except the
  layers llama.cpp's Q4_K_M also keeps wider -- the attention projections and the FFN down projection
  (:data:`KEEP_8BIT`) -- and the LM head, which are int8 per-channel. Measured on SmolLM2-135M (its GGUF
  is already Q4_1, so a second 4-bit rounding compounds): held-out perplexity 30.1 eager fp32; every
  linear int4 affine + 4-bit embedding and head 46.1; int4 linears alone 40.5; this recipe with a
  4-bit embedding 33.2, with the default 8-bit embedding 32.4 (the program: 33.4 and 32.1, i.e. +11.0 %
  and +6.6 %, at 20.0 % and 21.7 % of the fp32 program's 652 MB); everything int8 30.6. The option
  ``int8_layers`` (``8da4w(int8_layers=head)``, ``=none``) chooses which of those kinds stay int8, for a
  GGUF whose 4-bit codes survive (Q4_0, below) or a size goal the default misses;
* from a Q4_0 GGUF with group size 32, the int4 linears keep the GGUF's own codes and scales in every
  block XNNPACK's int4 can hold (:func:`_keep_gguf_q4_0`: positive scales only, so about half the blocks);
  asymmetric 4-bit GGUFs (Q4_1, Q4_K) have no such mapping and are rounded by HQQ;
* the embedding: :class:`QuantizedEmbedding`, a table of 8-bit codes with one fp32 scale per row
  (``int8-dynamic``, and ``8da4w`` by default) or 4-bit codes with a scale per group (``8da4w
  --embedding-bits 4``), looked up with ``quantized_decomposed::embedding_4bit`` /
  ``embedding_byte`` — kernels of ExecuTorch's quantized kernel library (``executorch.kernels.quantized``),
  not the LLM custom-op library, so the native runner links them like any other kernel.

A tied LM head kept int8 per-channel (the default of both schemes) is the embedding's table too: the
embedding looks up the head's own int8 codes and row scales (:func:`_share_tied_table`), and the export
stores that one table once, in the program's external data file, where both XNNPACK's head and the
embedding kernel find it by name. A tied head made int4 (``8da4w(int8_layers=none)``) is quantized on
its own, since XNNPACK packs int4 codes its own way: the matrix is then stored twice, an int4 head and
an 8- or 4-bit table.

The handlers of the LLM flavour of those schemes are registered here (:func:`~..recipes.recipe_handler`
with ``llm=True``) when :mod:`edgerun.export` is imported; fp32's is the identity, registered beside it.
"""

from __future__ import annotations

import copy
from typing import Any

from ..recipes import RecipeContext, RecipeResult, recipe_handler
from ..stages import report_progress
from ..schemes import Int8DynAct4BitWeight, Int8Dynamic

#: 8da4w: the linear layers (name suffixes; "head" is the LM head, ``output``) of each kind ``int8_layers``
#: names; by default attention, the FFN down projection and the head stay int8 per-channel
LAYER_KINDS = {"attention": ("attention.wq", "attention.wk", "attention.wv", "attention.wo"),
               "ffn_down": ("feed_forward.w2",), "ffn_up": ("feed_forward.w1", "feed_forward.w3")}
KEEP_8BIT = LAYER_KINDS["attention"] + LAYER_KINDS["ffn_down"]


def _kept_int8(name: str, kinds: frozenset[str]) -> bool:
    if name == "output":
        return "head" in kinds
    return any(name.endswith(LAYER_KINDS[k]) for k in kinds if k in LAYER_KINDS)


def _embedding_ops() -> None:
    # the Python definitions of quantized_decomposed::embedding_* (export time) live here
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401


def _module_class():
    import torch
    from torch import nn

    class QuantizedEmbedding(nn.Module):
        """Embedding rows as symmetric ``bits``-bit codes, ``group_size`` values per fp32 scale."""

        def __init__(self, weight: torch.Tensor | None, bits: int, group_size: int, *,
                     codes: torch.Tensor | None = None, code_scales: torch.Tensor | None = None):
            super().__init__()
            if codes is not None:   # the table is given: int8 codes [vocab, dim], one scale per row
                vocab, dim = codes.shape
                if codes.dtype != torch.int8 or bits != 8 or group_size != dim or code_scales is None \
                        or code_scales.numel() != vocab:
                    raise ValueError("given codes must be int8 [vocab, dim] with one scale per row")
                self.bits, self.group_size, self.qmax = 8, dim, 127
                self.register_buffer("weight", codes.detach().clone().contiguous())
                self.register_buffer("scales", code_scales.detach().float().reshape(vocab, 1).clone().contiguous())
                return
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
    kinds = scheme.int8_layer_kinds() if isinstance(scheme, Int8DynAct4BitWeight) else frozenset()
    wide = [n for n in linears if gs is None or _kept_int8(n, kinds)]
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
    kept = _keep_gguf_q4_0(model, q, narrow, gs)
    shared = model.config.tied_embeddings and _share_tied_table(q)
    unwrap_tensor_subclass(q)
    facts = {"linear_layers": len(linears), "quantized_linear_layers": len(linears),
             "int4_linear_layers": len(narrow), "int8_linear_layers": len(wide), "int4_weight_numel": int4_numel,
             "linear_weights": (f"int4 grouped ({gs} per scale, HQQ scales)"
                                + (f" except {'/'.join(sorted(kinds))}: int8 per-channel" if kinds else ", every one")
                                ) if gs is not None else "int8 per-channel",
             "group_size": gs, "embedding": f"{bits}-bit, {emb_group} per scale "
             f"(quantized_decomposed::embedding_{'4bit' if bits == 4 else 'byte'})",
             "lm_head": ("int8 per-channel" if "output" in wide else f"int4 grouped ({gs} per scale)")
                        + (" (tied: stored apart from the embedding)"
                                              if model.config.tied_embeddings else "")}
    if shared:
        facts["embedding"] = ("8-bit, one scale per row: the LM head's int8 codes and scales "
                              "(quantized_decomposed::embedding_byte)"
                              + ("; embedding_bits=4 not used, the shared table costs nothing" if bits == 4 else ""))
        facts["lm_head"] = "int8 per-channel (tied: one table with the embedding, stored once)"
        facts["tied_table"] = "shared"
    if kept:   # {"layers", "groups", "exact", "negated"}: see _keep_gguf_q4_0
        facts["int4_from_gguf_q4_0"] = kept
    return q.eval(), facts


def _share_tied_table(q) -> bool:
    """Make the embedding of a tied model read the LM head's own table: the head's int8 per-channel codes
    [vocab, dim] and scales [vocab] are exactly an ``embedding_byte`` table with one scale per row (a
    symmetric code times its row's scale, the same values the head multiplies by). Both then hold
    byte-identical tensors, which the export stores once (:func:`~.export.tie_external_constants`).
    Only for an int8 per-channel head with zero zero points (an int4 head's packing is XNNPACK's, not
    the 4-bit embedding kernel's); returns whether the table is shared."""
    import torch

    w = getattr(getattr(q, "output", None), "weight", None)
    emb = q.tok_embeddings
    if not all(hasattr(w, a) for a in ("qdata", "scale", "zero_point")):
        return False
    codes, scale = w.qdata, w.scale
    if codes.dtype != torch.int8 or tuple(codes.shape) != (q.config.vocab_size, q.config.dim) \
            or scale.numel() != codes.shape[0] or bool(w.zero_point.any()):
        return False
    q.tok_embeddings = type(emb)(None, 8, codes.shape[1], codes=codes, code_scales=scale)
    return True


def _keep_gguf_q4_0(model, q, narrow: list[str], gs: int | None) -> dict[str, int]:
    """Give the int4 linears whose weights came from Q4_0 tensors of the GGUF (:attr:`Llama.gguf_origin`)
    the GGUF's own codes and scales where XNNPACK can hold them, group by group, when the groups are
    Q4_0's (32 along the input). Returns what was done (the scheme's facts): ``{"layers", "groups", "exact",
    "negated"}`` -- layers taken, their groups, groups with the GGUF's codes and scale, groups with them
    negated -- or ``{}`` when no layer was.

    Q4_0 is symmetric, ``d * (q - 8)``: torchao's int4 grouped weight with codes ``q - 8`` (-8..7), scale
    ``d`` and zero point 0 holds exactly the same values. But XNNPACK refuses a scale that is not positive
    (``xnn_status_invalid_parameter`` when the program loads), and llama.cpp gives the largest-magnitude
    value of a block the code -8 whatever its sign, so ``d < 0`` for every block whose largest value is
    positive (about half of them); negated, its codes ``8 - q`` reach +8, one past int4. Per group the
    least-loss choice is taken, by squared error against the GGUF's values: ``d > 0``: the GGUF's codes and
    scale (no loss); ``d < 0``: the codes ``8 - q`` clipped to 7 with scale ``-d`` (only the values of code
    +8 lose ``-d``), or HQQ's own rounding when that loses less. A layer is taken only when the GGUF's codes
    times scales are exactly its fp32 weight (fine-tuned weights laid over the GGUF's are not). Q4_1 and
    Q4_K are asymmetric (a minimum per block, which XNNPACK's symmetric int4 has no room for): HQQ.

    XNNPACK also stores grouped int4 scales as bfloat16 when it packs the program, so the program's weights
    are the codes times the scale rounded to bfloat16 (8 significant bits to f16's 11): within 2^-9.

    Measured on the tiny Q4_0 (llama-quantize of the F32 tiny GGUF): 537 of 1,024 blocks have d > 0, and
    HQQ's scale-only rounding already gives each of them exactly d and the GGUF's codes (the block's
    extreme value is -8 d, so its first scale is d), and on the d < 0 blocks it loses less than the clipped
    codes: the result is HQQ's bit for bit. This makes exactness on the blocks XNNPACK can hold a guarantee
    rather than a property of HQQ's start; what 8da4w loses on a Q4_0 file is in the d < 0 blocks."""
    import torch

    from .gguf_model import Q4_0_BLOCK, q4_0_codes, read_gguf

    origin = getattr(model, "gguf_origin", None)
    if gs != Q4_0_BLOCK or origin is None:
        return {}
    path, sources = origin
    g, kept = None, {"layers": 0, "groups": 0, "exact": 0, "negated": 0}
    for name in narrow:
        src = sources.get(f"{name}.weight")
        if src is None or src[3] != "Q4_0":
            continue
        tensor, start, rows, _ = src
        g = g or read_gguf(path)
        codes, scales = q4_0_codes(g, tensor)
        codes = torch.from_numpy(codes[start:start + rows].copy()).reshape(rows, -1, Q4_0_BLOCK)
        d = torch.from_numpy(scales[start:start + rows].copy())
        values = codes.float() * d.unsqueeze(-1)
        fp32 = model.get_submodule(name).weight.detach()
        if not torch.equal(values.reshape(fp32.shape), fp32):
            continue
        w = q.get_submodule(name).weight
        if tuple(w.qdata.shape) != tuple(fp32.shape) or tuple(w.scale.shape) != tuple(d.shape) \
                or bool(w.zero_point.any()):
            continue   # not the layout this was written for (a torchao change): keep its own rounding
        neg = (-codes).clamp(max=7)
        hqq_codes, hqq_scale = w.qdata.reshape(codes.shape), w.scale

        def loss(c, s, values=values):
            return ((c.float() * s.unsqueeze(-1) - values) ** 2).sum(-1)
        take_neg = (d < 0) & (loss(neg, -d) <= loss(hqq_codes, hqq_scale))
        take_own = d > 0
        new_codes = torch.where(take_own.unsqueeze(-1), codes, torch.where(take_neg.unsqueeze(-1), neg, hqq_codes))
        new_scale = torch.where(take_own, d, torch.where(take_neg, -d, hqq_scale))
        with torch.no_grad():
            w.qdata.copy_(new_codes.reshape(w.qdata.shape).to(w.qdata.dtype))
            w.scale.copy_(new_scale.to(w.scale.dtype))
        kept["layers"] += 1
        kept["groups"] += int(d.numel())
        kept["exact"] += int(take_own.sum())
        kept["negated"] += int(take_neg.sum())
    return kept if kept["layers"] else {}


@recipe_handler(Int8Dynamic, llm=True)
@recipe_handler(Int8DynAct4BitWeight, llm=True)
def _llm_weights(recipe, ctx: RecipeContext) -> RecipeResult:
    module, facts = quantize_llama(ctx.module, recipe)
    if facts.get("tied_table") == "shared" and getattr(recipe, "embedding_bits", 8) == 4:
        ctx.warn("embedding_bits=4 was not used: the embedding is tied to the int8 LM head, so it looks up the "
                 "head's own 8-bit table, stored once (smaller and closer than a 4-bit copy); "
                 "int8_layers without head gives the head and a 4-bit table of their own")
    return RecipeResult(module, facts=facts)
