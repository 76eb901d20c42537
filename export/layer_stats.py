"""What a model's layers hold and compute, per layer type: what ``inspect`` shows a prune, factorize or
sparsify step did (issue 22 item 4).

:func:`measure` runs the model once on its example under :class:`torch.utils.flop_counter.FlopCounterMode`
(PyTorch's own FLOP formulas: a matmul of ``m x k`` by ``k x n`` is ``2 m k n``; elementwise ops,
normalisation and pooling count 0) and attributes each module's *own* FLOPs (its count less its
children's) and its own parameters to its type: a Linear factorised into ``Sequential(Linear, Linear)``
shows as two Linears with fewer FLOPs, the Sequential itself as 0. FLOPs the model's own ``forward``
computes outside any submodule (``x @ w`` in Python) are the root type's. The pipeline measures the model
before and after each step that is not a quantize step and keeps both in the step's facts (``layer_stats``),
so the numbers are the export's, not recomputed by ``inspect``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

FLOP_COUNTER = "torch.utils.flop_counter.FlopCounterMode (2 per multiply-add; elementwise ops 0)"


@dataclasses.dataclass(frozen=True)
class TypeStats:
    """One layer type: how many modules of it, their own parameters and FLOPs for one run on the example."""

    layers: int
    parameters: int
    flops: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """A model's parameters and FLOPs (one forward on the example), in total and per layer type.
    ``flops`` is None when the model could not be run under the FLOP counter (``error`` says why)."""

    parameters: int
    flops: int | None
    by_type: Mapping[str, TypeStats]
    error: str | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"parameters": self.parameters, "flops": self.flops,
                               "by_type": {k: v.to_json() for k, v in self.by_type.items()}}
        if self.error:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, d: Any, where: str) -> "LayerStats":
        """Read back from a manifest (untrusted): a wrong shape is a ValueError naming ``where``."""

        def count(x: Any, what: str, optional: bool = False) -> int | None:
            if x is None and optional:
                return None
            if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                raise ValueError(f"{where}: {what} is not a count ({x!r})")
            return x

        if not isinstance(d, Mapping) or not isinstance(d.get("by_type"), Mapping):
            raise ValueError(f"{where}: not a layer-stats object")
        by_type = {}
        for name, t in d["by_type"].items():
            if not isinstance(name, str) or not isinstance(t, Mapping):
                raise ValueError(f"{where}.by_type: entry {name!r} is not a layer type's counts")
            by_type[name] = TypeStats(*(count(t.get(k), f"by_type.{name}.{k}") for k in ("layers", "parameters",
                                                                                          "flops")))
        error = d.get("error")
        return cls(parameters=count(d.get("parameters"), "parameters"), flops=count(d.get("flops"), "flops", True),
                   by_type=by_type, error=str(error) if error is not None else None)


def measure(module, example: tuple) -> LayerStats:
    """Count ``module``'s parameters and FLOPs per layer type (one forward on ``example``, no gradients)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    names = {m: name for name, m in module.named_modules()}
    params: dict[str, list[int]] = {}
    for m, name in names.items():
        own = sum(p.numel() for p in m.parameters(recurse=False))
        kind = type(m).__name__
        entry = params.setdefault(kind, [0, 0])
        if own or not any(True for _ in m.children()):   # a layer: holds weights, or is a leaf
            entry[0] += 1
        entry[1] += own
    flops_by_type: dict[str, int] = {}
    total: int | None = None
    error = None
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(*example)
        counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
        total = int(counter.get_total_flops())
        # keys are "<root class>[.<qualified name>]"; a module's own FLOPs are its count less its children's
        root = type(module).__name__
        by_name = {(root if not n else f"{root}.{n}"): m for m, n in names.items()}
        for key, m in by_name.items():
            if key not in counts:
                continue
            children = sum(counts.get(f"{key}.{c}", 0) for c, _ in m.named_children())
            own = counts[key] - children
            if own:
                kind = type(m).__name__
                flops_by_type[kind] = flops_by_type.get(kind, 0) + int(own)
    except Exception as exc:  # a model the counter cannot run: the parameters are still known
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    by_type = {k: TypeStats(layers=v[0], parameters=v[1], flops=flops_by_type.get(k, 0))
               for k, v in sorted(params.items()) if v[1] or flops_by_type.get(k)}
    return LayerStats(parameters=int(sum(p.numel() for p in module.parameters())), flops=total, by_type=by_type,
                      error=error)


def change_facts(before: LayerStats, after: LayerStats) -> dict:
    """What a step's facts keep: both measurements and how they were counted."""
    return {"before": before.to_json(), "after": after.to_json(), "counter": FLOP_COUNTER}


def read_change(facts: Mapping[str, Any]) -> tuple[LayerStats, LayerStats] | None:
    """A step's (before, after) from its facts; None when the step has none (an older artifact)."""
    d = facts.get("layer_stats") if isinstance(facts, Mapping) else None
    if not isinstance(d, Mapping) or "before" not in d:
        return None
    return (LayerStats.from_json(d["before"], "facts.layer_stats.before"),
            LayerStats.from_json(d.get("after"), "facts.layer_stats.after"))
