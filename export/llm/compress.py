"""The LLM handlers of the compression recipes (issue 22): ``prune-ffn``, ``prune-heads`` and ``lowrank`` on
a :class:`~.gguf_model.Llama` of any family (registered with ``recipe_handler(cls, llm=True)`` when
:mod:`edgerun.export` is imported; the recipes themselves are :mod:`edgerun.export.compression`'s).

All three change matmul shapes, the only change that can pay on XNNPACK (it has no sparse kernels); the
facts say what shrank, ``bench`` measures whether it is faster. The model stays one :class:`Llama`: its
``config`` is replaced by the new shapes (``ffn_dim``, ``n_heads``/``n_kv_heads``), so the exported program,
its KV cache (sliced with the KV heads) and the tokenizer keep working, and the manifest's ``llm`` facts
describe the model that was exported.

* ``prune-ffn``: in every block the same number of FFN neurons go (``ratio`` of them, rounded to a multiple of
  :data:`NEURON_MULTIPLE` when the width is one, so it stays one) -- rows of the gate (``w1``) and up
  (``w3``) projections, with their biases, and the matching columns of the down projection (``w2``); a
  SwiGLU or GeGLU neuron ``j`` contributes ``w2[:, j] * h_j`` with ``h_j = act(gate_j(x)) * up_j(x)``, so
  nothing else reads it. phi3's fused ``ffn_up`` is split into ``w1``/``w3`` at load, so it is the same.
  Importance ``activation`` (Wanda-style, Sun et al. 2023, per neuron): ``||h_j||_2`` over the calibration
  tokens times ``||w2[:, j]||_2``; ``magnitude``: ``||w1[j]|| * ||w3[j]|| * ||w2[:, j]||``, the weights alone.
* ``prune-heads``: in every block the same number of KV groups go -- a KV head (its ``wk``/``wv`` rows and
  biases, its slice of the KV cache) with the query heads that share it (their ``wq`` rows and biases, their
  ``wo`` columns); the number of query heads per KV head is unchanged, so the attention's grouping is too.
  q/k norms (qwen3, gemma3) act on one head's ``head_dim`` values with one weight shared by every head, so
  they are kept whole. Importance ``activation``: the sum over the group's ``wo`` input columns ``c`` of
  ``||x_c||_2 * ||wo[:, c]||_2`` (the attention output on calibration tokens); ``magnitude``:
  ``||wv_g||_F * ||wo[:, g]||_F`` (the value path; the softmax weights sum to one).
  A ratio that would remove every group, or a fractional number of groups, is refused (UsageError).
* ``lowrank``: each block's attention (``wq``, ``wk``, ``wv``, ``wo``) and FFN (``w1``, ``w2``, ``w3``) linears
  become two thin ones by truncated SVD; the embedding and the LM head (tied or not) are left whole. The
  rank (``rank``, ``energy`` or ``ratio`` as for models) is rounded up to a multiple of :data:`RANK_MULTIPLE`
  -- the int4 group of ``8da4w``, whose grouped weights need an input width it divides -- and a layer where
  that would not shrink it is skipped. ``whiten=true`` (ASVD-style, Yuan et al. 2023): the SVD of
  ``W diag(s)``, ``s`` the per-input-channel RMS of the layer's inputs on calibration tokens, whose rank-r
  truncation minimises the output error under that diagonal model of the inputs; ``diag(1/s)`` is folded
  back into the first factor.

The calibration tokens are the LLM export's own calibration text (``export/llm/data/train.txt``, not the
held-out text perplexity is scored on), given to the handler as ``ctx.calibration(n)``: windows of
``(tokens [1, T], input_pos [T])``. Only the ``activation`` importance and ``whiten`` read them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..compression import SPEED_NOTE, LowRank, PruneFFN, PruneHeads, chosen_rank, set_module
from ..errors import ExportError, UsageError
from ..recipes import RecipeContext, RecipeResult, recipe_handler

#: ranks of the LLM lowrank handler are rounded up to a multiple of this (8da4w's default int4 group)
RANK_MULTIPLE = 32
#: prune-ffn removes neurons in whole multiples of this when the width is one (so it stays one: 8da4w's int4 groups
#: of a factorised down projection, and whole XNNPACK tiles)
NEURON_MULTIPLE = 32
#: calibration windows asked for (each at most the export's max context long)
CALIBRATION_WINDOWS = 64
#: what the facts call the calibration text
CALIBRATION_TEXT = "edgerun export/llm/data/train.txt"

ATTENTION = ("wq", "wk", "wv", "wo")
FFN = ("w1", "w2", "w3")


def _count(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _check_llama(model, recipe) -> None:
    from .gguf_model import llama_class

    if not isinstance(model, llama_class()):
        raise ExportError(f"recipe {recipe.spec}: the LLM handler expects edgerun's Llama model, got "
                          f"{type(model).__name__}.", stage=recipe.kind)


def _samples(ctx: RecipeContext, recipe) -> list:
    if ctx.calibration is None:
        raise ExportError(f"recipe {recipe.spec} needs calibration text, and this export gives none.",
                          stage=recipe.kind, hint="Use importance=magnitude (or whiten=false).")
    samples = list(ctx.calibration(CALIBRATION_WINDOWS))
    if not samples:
        raise ExportError(f"recipe {recipe.spec}: the calibration text gave no window of tokens.", stage=recipe.kind)
    return samples


def input_sumsq(model, names: list[str], samples: list) -> tuple[dict[str, Any], int]:
    """Run ``samples`` through ``model`` and return, for each linear named, the sum over the calibration tokens
    of its inputs squared, per input channel (float64), and the number of tokens. The KV cache is reset after."""
    import torch

    sums: dict[str, Any] = {}
    handles = []

    def hook(name):
        def pre(_module, args):
            x = args[0].detach().double()
            x = x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
        return pre

    for name in names:
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook(name)))
    tokens = 0
    try:
        with torch.no_grad():
            for inputs in samples:
                model(*inputs)
                tokens += int(inputs[0].numel())
    finally:
        for h in handles:
            h.remove()
        model.reset_cache()
    return sums, tokens


def _calibration_facts(tokens: int, windows: int) -> dict:
    return {"text": CALIBRATION_TEXT, "tokens": tokens, "windows": windows}


def _set(module, attr: str, value) -> None:
    import torch

    old = getattr(module, attr)
    setattr(module, attr, torch.nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


def _slice_linear(linear, index, dim: int) -> None:
    """Keep ``index`` of ``linear``'s outputs (dim 0: rows and bias) or inputs (dim 1: columns)."""
    _set(linear, "weight", linear.weight.detach().index_select(dim, index))
    if dim == 0:
        if linear.bias is not None:
            _set(linear, "bias", linear.bias.detach().index_select(0, index))
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


def _forget_origin(model, prefixes: list[str]) -> None:
    """Drop where the changed weights came from in the GGUF (a 4-bit GGUF's codes no longer match them)."""
    origin = getattr(model, "gguf_origin", None)
    if origin is None:
        return
    path, sources = origin
    model.gguf_origin = (path, {k: v for k, v in sources.items() if not k.startswith(tuple(prefixes))})


def _kept(scores, n: int):
    import torch

    return torch.sort(torch.topk(scores, n).indices).values


def _share(scores, keep) -> float:
    total = float(scores.sum())
    return round(float(scores[keep].sum()) / total, 6) if total > 0 else 1.0


# ----------------------------------------------------------------------------------- prune-ffn
def prune_ffn(model, recipe: PruneFFN, samples: list | None = None) -> dict[str, Any]:
    """Prune ``model``'s FFN neurons in place (``samples``: calibration inputs, for ``activation``); the facts."""
    import torch

    _check_llama(model, recipe)
    cfg = model.config
    ffn = cfg.ffn_dim
    step = NEURON_MULTIPLE if ffn % NEURON_MULTIPLE == 0 and ffn > NEURON_MULTIPLE else 1
    removed = min(int(round(ffn * recipe.ratio / step)) * step, ffn - step)
    if removed < 1:
        raise UsageError(f"recipe {recipe.spec}: ratio {recipe.ratio} of the {ffn} FFN neurons a block has removes "
                         f"none{f' (whole groups of {step} go, so the width stays a multiple of {step})' if step > 1 else ''}.",
                         hint=f"Give a ratio of at least {step / ffn / 2:.3g} (e.g. prune-ffn:ratio=0.25).")
    keep_n = ffn - removed
    before = _count(model)
    names = [f"layers.{i}.feed_forward.w2" for i in range(cfg.n_layers)]
    facts: dict[str, Any] = {"importance": recipe.importance}
    if recipe.importance == "activation":
        sums, tokens = input_sumsq(model, names, samples)
        facts["calibration"] = _calibration_facts(tokens, len(samples))
    layers = []
    with torch.no_grad():
        for i, block in enumerate(model.layers):
            ff = block.feed_forward
            down = ff.w2.weight.detach().double()
            if recipe.importance == "activation":
                scores = sums[names[i]].sqrt() * down.norm(dim=0)
            else:
                scores = (ff.w1.weight.detach().double().norm(dim=1) * ff.w3.weight.detach().double().norm(dim=1)
                          * down.norm(dim=0))
            keep = _kept(scores, keep_n)
            _slice_linear(ff.w1, keep, 0)
            _slice_linear(ff.w3, keep, 0)
            _slice_linear(ff.w2, keep, 1)
            layers.append({"layer": i, "neurons_before": ffn, "neurons_kept": keep_n,
                           "importance_share_kept": _share(scores, keep)})
    model.config = dataclasses.replace(cfg, ffn_dim=keep_n)
    _forget_origin(model, [f"layers.{i}.feed_forward." for i in range(cfg.n_layers)])
    facts.update({"ffn_dim_before": ffn, "ffn_dim_after": keep_n, "neurons_removed_per_layer": removed,
                  "share_removed": round(removed / ffn, 6), "neuron_multiple": step,
                  "layers_pruned": len(layers), "layers_skipped": 0, "layers": layers, "parameters_before": before, "parameters_after": _count(model),
                  "speed": SPEED_NOTE})
    return facts


# --------------------------------------------------------------------------------- prune-heads
def prune_heads(model, recipe: PruneHeads, samples: list | None = None) -> dict[str, Any]:
    """Prune ``model``'s KV groups in place (``samples``: calibration inputs, for ``activation``); the facts."""
    import torch

    _check_llama(model, recipe)
    cfg = model.config
    n_kv, n_heads, hd = cfg.n_kv_heads, cfg.n_heads, cfg.head_dim
    rep = n_heads // n_kv
    exact = recipe.ratio * n_kv
    removed = int(round(exact))
    steps = ", ".join(f"{k / n_kv:.4g}" for k in range(1, n_kv)) or "none"
    where = (f"recipe {recipe.spec}: this {cfg.architecture} model has {n_kv} KV group(s) a block ({n_heads} "
             f"query heads, {rep} a KV head)")
    if n_kv == 1:
        raise UsageError(f"{where}: with one KV head (multi-query attention) no group can go.",
                         hint="Use prune-ffn or lowrank for this model.")
    if removed >= n_kv:
        raise UsageError(f"{where}; ratio {recipe.ratio} of them ({exact:g} groups) would remove every one.",
                         hint=f"Give a ratio that keeps at least one: {steps}.")
    if removed < 1 or abs(exact - removed) > 1e-3:   # 1e-3: a ratio written to 4 digits (0.3333 of 3) is a whole group
        raise UsageError(f"{where}; ratio {recipe.ratio} of them is {exact:g} groups, and only whole groups can go.",
                         hint=f"Give a ratio that removes whole groups: {steps}.")
    keep_n = n_kv - removed
    before = _count(model)
    names = [f"layers.{i}.attention.wo" for i in range(cfg.n_layers)]
    facts: dict[str, Any] = {"importance": recipe.importance}
    if recipe.importance == "activation":
        sums, tokens = input_sumsq(model, names, samples)
        facts["calibration"] = _calibration_facts(tokens, len(samples))
    layers = []
    group_cols = rep * hd
    with torch.no_grad():
        for i, block in enumerate(model.layers):
            att = block.attention
            wo = att.wo.weight.detach().double()                       # [dim, n_heads * hd]
            if recipe.importance == "activation":
                per_col = sums[names[i]].sqrt() * wo.norm(dim=0)
                scores = per_col.reshape(n_kv, group_cols).sum(1)
            else:
                wv = att.wv.weight.detach().double().reshape(n_kv, hd, -1)
                scores = wv.pow(2).sum((1, 2)).sqrt() * wo.reshape(wo.shape[0], n_kv, group_cols).pow(2).sum((0, 2)).sqrt()
            groups = _kept(scores, keep_n)
            q_index = (groups[:, None] * group_cols + torch.arange(group_cols)[None, :]).reshape(-1)
            kv_index = (groups[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)
            _slice_linear(att.wq, q_index, 0)
            _slice_linear(att.wk, kv_index, 0)
            _slice_linear(att.wv, kv_index, 0)
            _slice_linear(att.wo, q_index, 1)
            for buf in ("k_cache", "v_cache"):
                att.register_buffer(buf, getattr(att, buf).index_select(1, groups).contiguous())
            att.n_heads, att.n_kv = keep_n * rep, keep_n
            layers.append({"layer": i, "kv_groups_kept": [int(g) for g in groups], "kv_heads_kept": keep_n,
                           "query_heads_kept": keep_n * rep, "importance_share_kept": _share(scores, groups)})
    model.config = dataclasses.replace(cfg, n_heads=keep_n * rep, n_kv_heads=keep_n, key_length=hd)
    _forget_origin(model, [f"layers.{i}.attention." for i in range(cfg.n_layers)])
    facts.update({"kv_heads_before": n_kv, "kv_heads_after": keep_n, "query_heads_before": n_heads,
                  "query_heads_after": keep_n * rep, "head_dim": hd, "layers_pruned": len(layers),
                  "layers_skipped": 0, "layers": layers,
                  "parameters_before": before, "parameters_after": _count(model),
                  "kv_cache_bytes_per_token_before": cfg.kv_cache_bytes_per_token(4),
                  "kv_cache_bytes_per_token_after": model.config.kv_cache_bytes_per_token(4), "speed": SPEED_NOTE})
    return facts


# ------------------------------------------------------------------------------------- lowrank
def _rank(s, recipe: LowRank, limit: int) -> int:
    r = chosen_rank(s, recipe)
    return min(-(-r // RANK_MULTIPLE) * RANK_MULTIPLE, limit)


def lowrank_llama(model, recipe: LowRank, samples: list | None = None) -> dict[str, Any]:
    """Factorise every block's attention and FFN linears in place (``samples``: calibration inputs, for
    ``whiten``); the facts."""
    import torch
    from torch import nn

    _check_llama(model, recipe)
    cfg = model.config
    names = [f"layers.{i}.{part}.{w}" for i in range(cfg.n_layers)
             for part, ws in (("attention", ATTENTION), ("feed_forward", FFN)) for w in ws]
    before = _count(model)
    facts: dict[str, Any] = {"whiten": recipe.whiten, "rank_multiple": RANK_MULTIPLE,
                             "left_whole": "the token embedding and the LM head"}
    rms = {}
    if recipe.whiten:
        sums, tokens = input_sumsq(model, names, samples)
        facts["calibration"] = _calibration_facts(tokens, len(samples))
        rms = {n: (sums[n] / max(tokens, 1)).sqrt() for n in names}
    done, skipped = [], []
    for name in names:
        m = model.get_submodule(name)
        out_f, in_f = m.weight.shape
        w = m.weight.detach().double()
        if recipe.whiten:
            s = rms[name]
            s = s.clamp_min(float(s.max()) * 1e-6 if float(s.max()) > 0 else 1.0)
            w = w * s[None, :]
        u, sv, vh = torch.linalg.svd(w, full_matrices=False)
        r = _rank(sv, recipe, min(in_f, out_f))
        kept = float((sv[:r] ** 2).sum() / (sv ** 2).sum().clamp_min(1e-300))
        entry = {"layer": name, "in": in_f, "out": out_f, "rank": r}
        if r * (in_f + out_f) >= in_f * out_f:
            skipped.append({**entry, "reason": f"rank {r} would not shrink it ({r * (in_f + out_f)} >= "
                                               f"{in_f * out_f} weights)"})
            continue
        root = sv[:r].sqrt()
        first_w = root[:, None] * vh[:r]
        if recipe.whiten:
            first_w = first_w / s[None, :]
        first = nn.Linear(in_f, r, bias=False)
        second = nn.Linear(r, out_f, bias=m.bias is not None)
        with torch.no_grad():
            first.weight.copy_(first_w.to(m.weight.dtype))
            second.weight.copy_((u[:, :r] * root[None, :]).to(m.weight.dtype))
            if m.bias is not None:
                second.bias.copy_(m.bias)
        set_module(model, name, nn.Sequential(first, second).requires_grad_(False))
        done.append({**entry, "energy_kept": round(kept, 6), "weights_before": in_f * out_f,
                     "weights_after": r * (in_f + out_f)})
    _forget_origin(model, [d["layer"] + "." for d in done])
    facts.update({"layers_factorised": len(done), "layers_skipped": len(skipped), "factorised": done,
                  "skipped": skipped, "ranks": {d["layer"]: d["rank"] for d in done},
                  "parameters_before": before, "parameters_after": _count(model), "speed": SPEED_NOTE})
    return facts


# ------------------------------------------------------------------------------------ handlers
@recipe_handler(PruneFFN, llm=True)
def _prune_ffn(recipe: PruneFFN, ctx: RecipeContext) -> RecipeResult:
    samples = _samples(ctx, recipe) if recipe.importance == "activation" else None
    return RecipeResult(ctx.module, facts=prune_ffn(ctx.module, recipe, samples))


@recipe_handler(PruneHeads, llm=True)
def _prune_heads(recipe: PruneHeads, ctx: RecipeContext) -> RecipeResult:
    samples = _samples(ctx, recipe) if recipe.importance == "activation" else None
    return RecipeResult(ctx.module, facts=prune_heads(ctx.module, recipe, samples))


@recipe_handler(LowRank, llm=True)
def _lowrank(recipe: LowRank, ctx: RecipeContext) -> RecipeResult:
    samples = _samples(ctx, recipe) if recipe.whiten else None
    facts = lowrank_llama(ctx.module, recipe, samples)
    if not facts["layers_factorised"]:
        ctx.warn(f"lowrank ({recipe.spec}) factorised no layer: at the chosen ranks (rounded up to a multiple of "
                 f"{RANK_MULTIPLE}) none would shrink; the model is unchanged")
    return RecipeResult(ctx.module, facts=facts)
