"""Graph rewrites that keep more of a model inside the XNNPACK delegate.

Applied to the captured ATen graph (``ExportedProgram.run_decompositions`` with a small table of our
own), before quantization and lowering, for targets whose backend is XNNPACK. Each rewrite replaces an
op that XNNPACK's partitioner refuses, or whose stock decomposition does, with the same arithmetic in
ops and shapes the delegate takes; a call that does not fit a rewrite's conditions is left exactly as
it was (the decomposition returns ``NotImplemented``). Measured on the text encoder with
``benchmarks/peers`` (the numbers are in that benchmark's results and in the commit that added this):

``sdpa``
    ``scaled_dot_product_attention`` without a mask. Its stock decomposition computes a "safe"
    softmax for fully masked rows (``eq``, ``logical_not``, ``any``, ``full_like``, ``where``: all
    outside the delegate, each one splitting the partition) even when no mask exists, scales q and k by
    ``mul.Scalar`` (not delegated) and multiplies 4-D tensors through ``expand_copy`` + ``bmm``. The
    rewrite is ``bmm(q, kᵀ) · scale → softmax → bmm(·, v)`` on 3-D ``[B·H, T, d]`` views: one
    delegated chain. A causal call gets a constant additive mask (no row of a causal mask is fully
    masked, so softmax is exact). A call with an explicit mask, dropout, GQA or an unusual rank is left
    as it was, so fully masked rows keep torch's semantics.
``layer_norm``
    XNNPACK has no layer norm. Over the last dimension(s) it becomes mean/variance through a 4-D
    ``[1, rows, features, 1]`` view, whose mean over (2, 3) is XNNPACK's global average pooling, then
    ``sub, mul, add, rsqrt, mul, add``: all delegated.
``select``
    ``select.int`` (how ``MultiheadAttention`` splits its packed q/k/v projection) is not delegated;
    ``squeeze``/``unsqueeze`` around it end up outside the delegate too. They become a stride-1
    ``slice`` and ``reshape``, which are.
``mean``
    ``mean.dim`` is delegated only for 4-D tensors over dims (2, 3) with keepdim. Any other mean is
    rewritten to that form: the reduced dims moved last (a permute, when they are not), the tensor
    viewed as ``[1, kept, reduced, 1]``, then viewed back to the output shape.
"""

from __future__ import annotations

import math
from typing import Any, Callable

REWRITES: tuple[str, ...] = ("sdpa", "layer_norm", "select", "mean")
#: bumped when a rewrite's arithmetic or where it runs changes, so cached artifacts keyed by the recipe are
#: rebuilt (a recipe identity's ``versions`` carry it). 2: PT2E int8 recipes rewrite ``layer_norm`` after
#: quantizing (export/schemes.py), so a layer norm stays float.
VERSION = 2


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _static(shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    import torch

    if (attn_mask is not None or dropout_p != 0.0 or enable_gqa or query.dim() < 3
            or query.dim() != key.dim() or key.dim() != value.dim()
            or not _static(query.shape) or not _static(key.shape) or not _static(value.shape)
            or tuple(query.shape[:-2]) != tuple(key.shape[:-2]) or tuple(key.shape[:-2]) != tuple(value.shape[:-2])
            or not query.dtype.is_floating_point):
        return NotImplemented
    lead = tuple(query.shape[:-2])
    tq, d = query.shape[-2], query.shape[-1]
    tk, dv = key.shape[-2], value.shape[-1]
    n = _prod(lead)
    s = (1.0 / math.sqrt(d)) if scale is None else float(scale)
    q = query.reshape(n, tq, d)
    k = key.reshape(n, tk, d)
    v = value.reshape(n, tk, dv)
    scores = torch.bmm(q, k.transpose(1, 2)) * s
    if is_causal:
        # torch's is_causal aligns the mask top-left: query i sees keys 0..i. A constant, so the graph
        # carries it as a lifted tensor and the add is delegated.
        bias = torch.triu(torch.full((tq, tk), float("-inf"), dtype=query.dtype), diagonal=1)
        scores = scores + bias
    probs = torch.softmax(scores, dim=-1)
    return torch.bmm(probs, v).reshape(*lead, tq, dv)


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    import torch

    k = len(normalized_shape)
    if (not _static(x.shape) or x.dim() < k or k == 0 or tuple(x.shape[-k:]) != tuple(normalized_shape)
            or not x.dtype.is_floating_point):
        return NotImplemented
    rows, feats = _prod(x.shape[:-k]), _prod(normalized_shape)
    flat = x.reshape(1, rows, feats, 1)
    mu = torch.mean(flat, dim=[2, 3], keepdim=True)
    centred = flat - mu
    var = torch.mean(centred * centred, dim=[2, 3], keepdim=True)
    y = (centred * torch.rsqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _mean(x, dim=None, keepdim=False, dtype=None):
    import torch

    if dtype is not None or not _static(x.shape) or not x.dtype.is_floating_point or x.dim() == 0:
        return NotImplemented
    rank = x.dim()
    dims = list(range(rank)) if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0) else \
        [dim] if isinstance(dim, int) else list(dim)
    dims = sorted({d % rank for d in dims})
    if rank == 4 and dims == [2, 3] and keepdim:
        return NotImplemented  # already the delegated form
    kept = [d for d in range(rank) if d not in dims]
    order = kept + dims
    y = x if order == list(range(rank)) else x.permute(order)
    n_kept, n_red = _prod(x.shape[d] for d in kept), _prod(x.shape[d] for d in dims)
    m = torch.mean(y.reshape(1, n_kept, n_red, 1), dim=[2, 3], keepdim=True)
    out_shape = [1 if d in dims else x.shape[d] for d in range(rank)] if keepdim else [x.shape[d] for d in kept]
    return m.reshape(out_shape)


def _select(x, dim, index):
    import torch

    if not _static(x.shape) or x.dim() == 0:
        return NotImplemented
    d = dim % x.dim()
    i = index % x.shape[d]
    out_shape = [s for j, s in enumerate(x.shape) if j != d]
    return torch.narrow(x, d, i, 1).reshape(out_shape)


def _squeeze_shape(shape, dims) -> list[int]:
    rank = len(shape)
    dims = {d % rank for d in dims} if rank else set()
    return [s for j, s in enumerate(shape) if not (j in dims and s == 1)]


def _squeeze(x, dim=None):
    if not _static(x.shape):
        return NotImplemented
    dims = range(x.dim()) if dim is None else [dim] if isinstance(dim, int) else dim
    return x.reshape(_squeeze_shape(list(x.shape), dims))


def _unsqueeze(x, dim):
    if not _static(x.shape):
        return NotImplemented
    shape = list(x.shape)
    shape.insert(dim % (x.dim() + 1), 1)
    return x.reshape(shape)


def decomposition_table(names: tuple[str, ...] = REWRITES) -> dict[Any, Callable]:
    import torch

    aten = torch.ops.aten
    table: dict[Any, Callable] = {}
    if "sdpa" in names:
        table[aten.scaled_dot_product_attention.default] = _sdpa
    if "layer_norm" in names:
        table[aten.layer_norm.default] = _layer_norm
    if "select" in names:
        table[aten.select.int] = _select
        table[aten.squeeze.dim] = _squeeze
        table[aten.squeeze.dims] = _squeeze
        table[aten.unsqueeze.default] = _unsqueeze
    if "mean" in names:
        table[aten.mean.dim] = _mean
    return table


def apply(exported, names: tuple[str, ...] = REWRITES):
    """``exported`` with the named rewrites applied (a new ExportedProgram; the input is not changed)."""
    if not names:
        return exported
    return exported.run_decompositions(decomposition_table(names))


def counts(exported) -> dict[str, int]:
    """How many calls of each op a rewrite targets remain in ``exported`` (for tests and reports)."""
    import torch

    aten = torch.ops.aten
    targets = {aten.scaled_dot_product_attention.default: "sdpa", aten.layer_norm.default: "layer_norm",
               aten.select.int: "select", aten.mean.dim: "mean"}
    out = {name: 0 for name in targets.values()}
    for node in exported.graph.nodes:
        if node.op == "call_function" and node.target in targets:
            out[targets[node.target]] += 1
    return out
