"""Compression beyond quantization (issue 22): recipes that change a model's shapes before a quantize step.

- ``lowrank`` (kind ``factorize``): every ``nn.Linear(in, out)`` whose truncated SVD shrinks it becomes
  ``Sequential(Linear(in, r, bias=False), Linear(r, out))``, ``W ~ (U_r sqrt(S_r)) (sqrt(S_r) Vh_r)``; ``r`` is
  ``rank`` or the smallest rank keeping ``energy`` of the squared singular values. A layer is skipped
  where ``r * (in + out) >= in * out`` (it would not shrink), where its weight is shared, and where the
  weight is read directly rather than called (``nn.MultiheadAttention``'s ``out_proj``).
- ``prune-channels`` (kind ``prune``): structured removal of a ``Conv2d``'s output channels by the L1 norm
  of their filters, the following ``BatchNorm2d`` and the next conv's input channels sliced with them.
  Only chains that ``torch.fx`` tracing shows to be safe are pruned: ``conv -> [BatchNorm2d] ->
  [elementwise activation] -> [depthwise conv -> [BatchNorm2d] -> [activation]] -> conv``, the two ends
  ungrouped convs, a depthwise conv on the way (one filter a channel, MobileNet's) sliced with the
  channels; or ``conv -> ... -> [per-channel pooling] -> flatten(1) -> [dropout] -> Linear``, the Linear's
  columns of each removed channel (H*W of them, from the traced shapes) going with it. Every node of the
  chain must be used once: a residual add, a concatenation, a grouped conv or anything else ends the
  chain, and that conv is skipped with the reason recorded.

Both change the matmuls' and convolutions' shapes, which is what can pay on a CPU (XNNPACK on aarch64
has no sparse kernels, so zeros alone would not). The facts say what was done and what shrank
(parameters before/after); how much faster the program runs is measured by ``bench``, never claimed here.
The export verifies the program against the compressed model run eagerly; for a model with a dataset the
pipeline adds the eager accuracy before and after the step.

LLMs (a GGUF) have their own handlers (:mod:`.llm.compress`, which builds on this module and is registered
with it by the package, :mod:`edgerun.export`):
``lowrank`` on the attention and FFN linears of every block (optionally activation-whitened), and two
recipes for LLMs only -- ``prune-ffn`` (FFN neurons: SwiGLU/GeGLU gate and up rows with the down
columns) and ``prune-heads`` (whole KV groups under grouped-query attention) -- whose importance is
Wanda-style from activations on calibration text or the weights' magnitude. A model that is not an LLM
has no handler for those two, so a chain with them is refused before any work (a UsageError naming the
recipes that work for a model).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .errors import ExportError
from .recipes import Recipe, RecipeContext, RecipeResult, recipe_handler

__all__ = ["LowRank", "PruneChannels", "PruneFFN", "PruneHeads", "SPEED_NOTE"]

SPEED_NOTE = ("parameters and matmul/convolution shapes shrink; speed is not claimed: measure it with "
              "edgerun bench")


def _count(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _still_runs(model, example, recipe: Recipe, stage: str) -> None:
    """Run the changed model once: code that reads a layer's weight or channel count directly (not by
    calling the layer) fails here, named, rather than later in capture or lowering."""
    import torch

    try:
        with torch.no_grad():
            model(*example)
    except Exception as exc:
        raise ExportError(f"the model no longer runs after recipe {recipe.spec} ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}): its code reads a changed layer's weight or "
                          "shape directly.", stage=stage,
                          hint="Export it without this step, or make the code call the layer.") from exc


# ----------------------------------------------------------------------------------- lowrank
def _check_ratio(ratio, what: str, example: str) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio is the share of {what}, a number between 0 and 1 exclusive (e.g. {example}), "
                         f"got {ratio!r}")


@dataclasses.dataclass(frozen=True)
class LowRank(Recipe):
    """Truncated-SVD factorisation of linear layers (give ``rank``, ``energy`` or ``ratio``; ``whiten``:
    SVD of the weight scaled by its inputs' per-channel RMS on calibration data, LLMs)."""

    name: ClassVar[str] = "lowrank"
    kind: ClassVar[str] = "factorize"
    description: ClassVar[str] = ("nn.Linear -> two thin linears by truncated SVD (rank=N, energy=0..1 or "
                                  "ratio=0..1 of min(in, out); whiten=true: activation-aware, LLMs)")
    #: ``lowrank(32)`` is rank 32, ``lowrank(0.5)`` (not an integer) ratio 0.5
    positional: ClassVar[tuple[str, ...]] = ("rank|ratio",)

    rank: int | None = None
    energy: float | None = None
    ratio: float | None = None
    whiten: bool = False

    def __post_init__(self) -> None:
        given = [k for k in ("rank", "energy", "ratio") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of rank (a positive integer, e.g. lowrank:rank=32), energy "
                             "(the share of squared singular values kept, 0 < energy < 1, e.g. lowrank:energy=0.9)"
                             " or ratio (rank = ratio x min(in, out), e.g. lowrank:ratio=0.5)"
                             f"; got rank={self.rank!r}, energy={self.energy!r}, ratio={self.ratio!r}")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f"rank must be a positive integer (e.g. rank=32), got {self.rank!r}")
        if self.energy is not None and not (isinstance(self.energy, (int, float)) and 0.0 < self.energy < 1.0):
            raise ValueError(f"energy must be a number between 0 and 1, exclusive (e.g. energy=0.9), got "
                             f"{self.energy!r}")
        if self.ratio is not None:
            _check_ratio(self.ratio, "each layer's full rank min(in, out) kept", "ratio=0.5")
        if not isinstance(self.whiten, bool):
            raise ValueError(f"whiten is true or false, got {self.whiten!r}")

    def options(self) -> dict[str, Any]:
        """Every option, but ``ratio`` and ``whiten`` only when given: a recipe written before they existed keeps
        its hash (and its cached artifacts)."""
        out = super().options()
        if self.ratio is None:
            del out["ratio"]
        if not self.whiten:
            del out["whiten"]
        return out


#: importance of structured LLM pruning: Wanda-style from calibration activations, or weights alone
LLM_IMPORTANCE = ("activation", "magnitude")


@dataclasses.dataclass(frozen=True)
class PruneFFN(Recipe):
    """Structured pruning of every LLM block's FFN neurons (``ratio`` of them, the same number a layer)."""

    name: ClassVar[str] = "prune-ffn"
    kind: ClassVar[str] = "prune"
    description: ClassVar[str] = ("LLMs: remove FFN neurons (gate/up rows and down columns), the same number "
                                  "in every block, least important by activation (Wanda-style) or magnitude")
    positional: ClassVar[tuple[str, ...]] = ("ratio",)

    ratio: float = 0.25
    importance: str = "activation"

    def __post_init__(self) -> None:
        _check_ratio(self.ratio, "FFN neurons removed", "ratio=0.25")
        if self.importance not in LLM_IMPORTANCE:
            raise ValueError(f"importance must be one of {', '.join(LLM_IMPORTANCE)}, got {self.importance!r}")


@dataclasses.dataclass(frozen=True)
class PruneHeads(Recipe):
    """Structured pruning of every LLM block's attention: ``ratio`` of its KV groups (a KV head and the
    query heads that share it), the same number a layer."""

    name: ClassVar[str] = "prune-heads"
    kind: ClassVar[str] = "prune"
    description: ClassVar[str] = ("LLMs: remove whole KV groups (a KV head, its query heads, their output "
                                  "columns), the same number in every block, by activation or magnitude")
    positional: ClassVar[tuple[str, ...]] = ("ratio",)

    ratio: float = 0.25
    importance: str = "activation"

    def __post_init__(self) -> None:
        _check_ratio(self.ratio, "KV groups removed", "ratio=0.5")
        if self.importance not in LLM_IMPORTANCE:
            raise ValueError(f"importance must be one of {', '.join(LLM_IMPORTANCE)}, got {self.importance!r}")


def _shared_weights(model) -> set[int]:
    seen: dict[int, int] = {}
    for m in model.modules():
        w = getattr(m, "weight", None)
        if w is not None:
            seen[id(w)] = seen.get(id(w), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def chosen_rank(s, recipe: LowRank) -> int:
    """The rank ``recipe`` asks for, given a layer's singular values ``s`` (descending): ``rank``, ``ratio`` of
    them, or the fewest that keep ``energy`` of their squares; never more than there are. Models and LLMs."""
    import torch

    if recipe.rank is not None:
        return min(recipe.rank, int(s.numel()))
    if recipe.ratio is not None:
        return min(max(1, int(round(recipe.ratio * s.numel()))), int(s.numel()))
    e = s.double() ** 2
    share = torch.cumsum(e, 0) / e.sum().clamp_min(1e-300)
    return min(int((share < recipe.energy).sum()) + 1, int(s.numel()))


def set_module(model, name: str, new) -> None:
    """Replace ``model``'s submodule ``name`` (a dotted path) by ``new``."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def lowrank_linears(model, recipe: LowRank) -> dict[str, Any]:
    """Factorise ``model``'s linear layers in place; returns the facts."""
    import torch
    from torch import nn
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    before = _count(model)
    shared = _shared_weights(model)
    done, skipped = [], []
    for name, m in list(model.named_modules()):
        if type(m) is not nn.Linear and not isinstance(m, NonDynamicallyQuantizableLinear):
            continue
        out_f, in_f = m.weight.shape
        if isinstance(m, NonDynamicallyQuantizableLinear):
            skipped.append({"layer": name, "in": in_f, "out": out_f,
                            "reason": "an attention output projection: its weight is read directly, not called"})
            continue
        if id(m.weight) in shared:
            skipped.append({"layer": name, "in": in_f, "out": out_f, "reason": "its weight is shared (tied)"})
            continue
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(m.weight.detach().double(), full_matrices=False)
        r = chosen_rank(s, recipe)
        kept = float((s[:r] ** 2).sum() / (s ** 2).sum().clamp_min(1e-300))
        if r * (in_f + out_f) >= in_f * out_f:
            skipped.append({"layer": name, "in": in_f, "out": out_f, "rank": r,
                            "reason": f"rank {r} would not shrink it ({r * (in_f + out_f)} >= {in_f * out_f} weights)"})
            continue
        root = s[:r].sqrt()
        first = nn.Linear(in_f, r, bias=False)
        second = nn.Linear(r, out_f, bias=m.bias is not None)
        with torch.no_grad():
            first.weight.copy_((root[:, None] * vh[:r]).to(m.weight.dtype))
            second.weight.copy_((u[:, :r] * root[None, :]).to(m.weight.dtype))
            if m.bias is not None:
                second.bias.copy_(m.bias)
        set_module(model, name, nn.Sequential(first, second).to(m.weight.device))
        done.append({"layer": name, "in": in_f, "out": out_f, "rank": r, "energy_kept": round(kept, 6),
                     "weights_before": in_f * out_f, "weights_after": r * (in_f + out_f)})
    return {"layers_factorised": len(done), "layers_skipped": len(skipped), "factorised": done, "skipped": skipped,
            "parameters_before": before, "parameters_after": _count(model), "speed": SPEED_NOTE}


@recipe_handler(LowRank)
def _lowrank(recipe: LowRank, ctx: RecipeContext) -> RecipeResult:
    from torch import nn

    if recipe.whiten:
        from edgerun.core.errors import UsageError

        raise UsageError(f"recipe {recipe.spec}: whiten=true is built for LLMs (a GGUF), whose calibration text "
                         "ships with edgerun; for a model it is not.", hint="Drop whiten=true (lowrank:ratio=0.5).")
    if not any(isinstance(m, nn.Linear) for m in ctx.module.modules()):
        raise ExportError("recipe lowrank factorises nn.Linear layers, and this model has none.", stage="factorize",
                          hint="For a convolutional model use prune-channels:ratio=0.25.")
    facts = lowrank_linears(ctx.module, recipe)
    _still_runs(ctx.module, ctx.example, recipe, "factorize")
    if not facts["layers_factorised"]:
        ctx.warn(f"lowrank ({recipe.spec}) factorised no layer: at the chosen rank none would shrink "
                 f"({facts['layers_skipped']} skipped); the model is unchanged")
    return RecipeResult(ctx.module, facts=facts)


# ---------------------------------------------------------------------------- prune-channels
IMPORTANCE = ("magnitude",)


@dataclasses.dataclass(frozen=True)
class PruneChannels(Recipe):
    """Structured pruning of Conv2d output channels (``ratio`` of them, least important by ``importance``)."""

    name: ClassVar[str] = "prune-channels"
    kind: ClassVar[str] = "prune"
    description: ClassVar[str] = "remove Conv2d output channels by L1 norm (conv->bn->act->[depthwise]->conv chains)"
    positional: ClassVar[tuple[str, ...]] = ("ratio",)          # prune-channels(0.3)

    ratio: float = 0.25
    importance: str = "magnitude"

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio is the share of channels removed, a number between 0 and 1 exclusive "
                             f"(e.g. ratio=0.25), got {self.ratio!r}")
        if self.importance not in IMPORTANCE:
            raise ValueError(f"importance must be one of {', '.join(IMPORTANCE)}, got {self.importance!r}")


#: modules and functions between two convs that act on each channel alone
_ACTIVATIONS = ("ReLU", "ReLU6", "Hardswish", "Hardsigmoid", "SiLU", "GELU", "LeakyReLU", "Sigmoid", "Tanh",
                "Identity", "Dropout")


def _is_elementwise(node, modules) -> bool:
    import torch
    import torch.nn.functional as F

    if node.op == "call_module":
        return type(modules[node.target]).__name__ in _ACTIVATIONS
    if node.op in ("call_function", "call_method"):
        fns = {torch.relu, F.relu, F.relu6, F.hardswish, F.silu, F.gelu, torch.sigmoid, torch.tanh, F.dropout}
        return node.target in fns or node.target in ("relu", "relu_", "sigmoid", "tanh")
    return False


def _describe(node, modules) -> str:
    if node.op == "call_module":
        m = modules[node.target]
        if type(m).__name__ == "Conv2d" and m.groups != 1:
            return f"a grouped/depthwise conv ({node.target}, groups={m.groups})"
        return f"{type(m).__name__} ({node.target})"
    if node.op == "output":
        return "the model's output"
    name = getattr(node.target, "__name__", str(node.target))
    if name in ("add", "iadd", "__add__", "cat", "concat"):
        return f"{name} (a residual add or concatenation)"
    if name in ("flatten", "view", "reshape"):
        return f"{name} (into a classifier)"
    return name


def _is_depthwise(m) -> bool:
    return m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _is_pool(node, modules) -> bool:
    """A pooling that acts on each channel alone (max/avg, adaptive or not)."""
    import torch.nn.functional as F
    from torch import nn

    if node.op == "call_module":
        return isinstance(modules[node.target], (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
    return node.op == "call_function" and node.target in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                                                          F.adaptive_max_pool2d)


def _is_flatten(node, modules) -> bool:
    """``[N, C, H, W] -> [N, C*H*W]``, channel-major: nn.Flatten(), torch.flatten(x, 1), x.flatten(1)."""
    import torch
    from torch import nn

    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    args, kwargs = tuple(node.args[1:]), dict(node.kwargs)
    dims = args == (1,) and not kwargs or (not args and kwargs == {"start_dim": 1})
    return dims and ((node.op == "call_function" and node.target is torch.flatten)
                     or (node.op == "call_method" and node.target == "flatten"))


def _spatial(node) -> int | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return int(shape[2] * shape[3]) if shape is not None and len(shape) == 4 else None


def _plan_chain(node, modules, calls: dict[str, int]):
    """From a conv's node, follow single-use nodes to what reads its channels: the next ungrouped conv, or
    a classifier's Linear after a per-channel pooling and a flatten. Returns ``((through, name, spatial),
    None)`` -- ``through`` the BatchNorm2d and depthwise convs (one filter a channel) on the way, sliced with
    the channels; ``spatial`` None for a conv, H*W positions a channel has in the flattened vector for a
    Linear -- or ``(None, reason)`` when the chain cannot be followed safely."""
    from torch import nn

    through: list[tuple[str, str]] = []
    cur, last_conv, spatial = node, node, None
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return None, f"its output is used {len(users)} times ({', '.join(_describe(u, modules) for u in users)})"
        nxt = users[0]
        if not nxt.args or nxt.args[0] is not cur:
            return None, f"it feeds {_describe(nxt, modules)} other than as its input"
        if nxt.op == "call_module":
            m = modules[nxt.target]
            stateful = isinstance(m, (nn.BatchNorm2d, nn.Conv2d, nn.Linear))
            if stateful and calls.get(nxt.target, 0) != 1:
                return None, f"it feeds {nxt.target}, which is called {calls.get(nxt.target, 0)} times"
            if spatial is not None:   # flattened: only a Linear (after dropout and the like) reads it
                if type(m) is nn.Linear and m.in_features == spatial * node_channels(node, modules):
                    return (tuple(through), nxt.target, spatial), None
            elif isinstance(m, nn.BatchNorm2d) and cur is last_conv:
                through.append(("bn", nxt.target))
                cur = nxt
                continue
            elif isinstance(m, nn.Conv2d) and _is_depthwise(m):
                through.append(("dw", nxt.target))
                cur = last_conv = nxt
                continue
            elif isinstance(m, nn.Conv2d) and m.groups == 1:
                return (tuple(through), nxt.target, None), None
        if _is_elementwise(nxt, modules) or (spatial is None and _is_pool(nxt, modules)):
            cur = nxt
            continue
        if spatial is None and _is_flatten(nxt, modules) and _spatial(cur):
            spatial, cur = _spatial(cur), nxt
            continue
        return None, f"it feeds {_describe(nxt, modules)}"


def node_channels(node, modules) -> int:
    return modules[node.target].out_channels


def _keep(weight, ratio: float):
    import torch

    out = weight.shape[0]
    removed = min(out - 1, int(round(out * ratio)))
    importance = weight.detach().abs().reshape(out, -1).sum(1)
    keep = torch.topk(importance, out - removed).indices
    return torch.sort(keep).values


def _slice_param(module, attr: str, index, dim: int) -> None:
    import torch

    p = getattr(module, attr, None)
    if p is None:
        return
    data = p.detach().index_select(dim, index).clone()
    if isinstance(p, torch.nn.Parameter):
        setattr(module, attr, torch.nn.Parameter(data, requires_grad=p.requires_grad))
    else:
        setattr(module, attr, data)


def prune_conv_channels(model, recipe: PruneChannels, example: tuple | None = None) -> dict[str, Any]:
    """Prune ``model``'s safe chains in place (``example``: inputs, to follow a conv into a classifier's
    flatten); returns the facts."""
    import torch
    import torch.fx
    from torch import nn

    before = _count(model)
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # control flow on values, unsupported Python: fx cannot follow the model
        raise ExportError(f"recipe prune-channels follows a model's convolutions with torch.fx, which could not "
                          f"trace this one ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}).",
                          stage="prune", hint="Give a model torch.fx can trace, or use lowrank for its linear "
                                              "layers.") from exc
    if example is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        try:  # the shapes say how wide each channel is once flattened into a classifier
            ShapeProp(gm).propagate(*example)
        except Exception:  # without them, a conv into a flatten is left as it is
            pass
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    plans, skipped = [], []
    for n in gm.graph.nodes:
        if n.op != "call_module" or not isinstance(modules[n.target], nn.Conv2d):
            continue
        conv = modules[n.target]
        if conv.groups != 1:
            skipped.append({"layer": n.target, "reason": f"a grouped/depthwise conv (groups={conv.groups})"})
            continue
        if calls[n.target] != 1:
            skipped.append({"layer": n.target, "reason": f"called {calls[n.target]} times"})
            continue
        found, reason = _plan_chain(n, modules, calls)
        if found is None:
            skipped.append({"layer": n.target, "reason": reason})
        else:
            plans.append((n.target, found))
    if not plans and not skipped:  # no Conv2d at all
        raise ExportError("recipe prune-channels prunes Conv2d layers, and this model has none.", stage="prune",
                          hint="For linear layers use lowrank:rank=N or lowrank:energy=0.9.")
    # every choice from the original weights, then every slice
    chosen = [(name, found, _keep(model.get_submodule(name).weight, recipe.ratio)) for name, found in plans]
    pruned = []
    for name, (through, nxt, spatial), keep in chosen:
        conv, nxt_conv = model.get_submodule(name), model.get_submodule(nxt)
        was = conv.out_channels
        _slice_param(conv, "weight", keep, 0)
        _slice_param(conv, "bias", keep, 0)
        conv.out_channels = len(keep)
        for what, sub in through:
            m = model.get_submodule(sub)
            if what == "bn":
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    _slice_param(m, attr, keep, 0)
                m.num_features = len(keep)
            else:  # a depthwise conv: one filter a channel
                _slice_param(m, "weight", keep, 0)
                _slice_param(m, "bias", keep, 0)
                m.in_channels = m.out_channels = m.groups = len(keep)
        if spatial is None:
            _slice_param(nxt_conv, "weight", keep, 1)
            nxt_conv.in_channels = len(keep)
        else:  # a Linear reading the flattened [C, H, W]: channel c is columns c*H*W .. (c+1)*H*W - 1
            cols = (keep[:, None] * spatial + torch.arange(spatial)[None, :]).reshape(-1)
            _slice_param(nxt_conv, "weight", cols, 1)
            nxt_conv.in_features = len(cols)
        pruned.append({"layer": name, "channels_before": was, "channels_after": len(keep),
                       "sliced_with": [sub for _, sub in through], "next": nxt})
    return {"layers_pruned": len(pruned), "layers_skipped": len(skipped), "pruned": pruned, "skipped": skipped,
            "parameters_before": before, "parameters_after": _count(model), "importance": recipe.importance,
            "speed": SPEED_NOTE}


@recipe_handler(PruneChannels)
def _prune_channels(recipe: PruneChannels, ctx: RecipeContext) -> RecipeResult:
    facts = prune_conv_channels(ctx.module, recipe, ctx.example)
    _still_runs(ctx.module, ctx.example, recipe, "prune")
    if not facts["layers_pruned"]:
        ctx.warn(f"prune-channels found no conv it can prune safely ({facts['layers_skipped']} skipped: a residual "
                 "add, a depthwise conv or a classifier follows each); the model is unchanged")
    return RecipeResult(ctx.module, facts=facts)
