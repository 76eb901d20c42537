"""What quantization did, read off the graph that is lowered — not guessed from module types.

A weight counts as quantized when an integer constant (a parameter, buffer or lifted constant of
an integer dtype) is the data argument of a ``dequantize`` op (PT2E's
``quantized_decomposed.dequantize_per_channel``, torchao's ``dequantize_affine`` ...). It is
attributed to the module of the first op that consumes the dequantized value
(``meta["nn_module_stack"]``), and tallied by that module's class in the eager model, beside
every module's own parameter count: ``{"Conv2d": {"layers": 4, "quantized": 4, "params": 1234,
"quantized_params": 1200}, "LSTM": {"layers": 1, "quantized": 0, ...}}``.
"""

from __future__ import annotations

from typing import Any

#: below this share of quantized parameters an export warns that quantization did little
MIN_QUANTIZED_SHARE = 0.5

_PASS_THROUGH = ("view", "reshape", "permute", "transpose", "t.default", "unsqueeze", "squeeze", "_to_copy",
                 "clone", "expand", "alias")


def _op(node) -> str:
    return str(getattr(node.target, "__name__", node.target))


def _consumer_module(node, depth: int = 6) -> str | None:
    """Path of the module of the first real op that consumes ``node``'s value."""
    frontier = list(node.users)
    for _ in range(depth):
        nxt = []
        for user in frontier:
            stack = user.meta.get("nn_module_stack") or {}
            path = str(next(reversed(stack.values()))[0]) if stack else ""
            if path and not any(p in _op(user) for p in ("dequantize", "quantize")):
                return path
            if "dequantize" in _op(user) or any(p in _op(user) for p in _PASS_THROUGH) or not path:
                nxt.extend(user.users)
        frontier = nxt
        if not frontier:
            break
    return None


def quantized_weights(exported) -> dict[str, int]:
    """Module path -> number of quantized weight elements it uses, from ``exported``'s graph."""
    import torch

    kinds = {s.arg.name: s.kind.name for s in exported.graph_signature.input_specs}
    out: dict[str, int] = {}
    for node in exported.graph.nodes:
        if node.op != "placeholder" or kinds.get(node.name) == "USER_INPUT":
            continue
        val = node.meta.get("val")
        if val is None or not isinstance(val, torch.Tensor) or val.is_floating_point() or val.dtype == torch.bool:
            continue
        dq_users = [u for u in node.users if "dequantize" in _op(u) and u.args and u.args[0] is node]
        if not dq_users:
            continue
        module = None
        for dq in dq_users:
            module = _consumer_module(dq)
            if module:
                break
        key = module or "(unattributed)"
        out[key] = out.get(key, 0) + int(val.numel())
    return out


def layer_table(model, quantized: dict[str, int]) -> dict[str, dict[str, int]]:
    """By module class: layers with parameters, how many use a quantized weight, parameter counts."""
    modules = dict(model.named_modules())
    table: dict[str, dict[str, int]] = {}
    for path, module in modules.items():
        params = sum(p.numel() for p in module.parameters(recurse=False))
        if not params:
            continue
        row = table.setdefault(type(module).__name__, {"layers": 0, "quantized": 0, "params": 0,
                                                       "quantized_params": 0})
        row["layers"] += 1
        row["params"] += int(params)
        q = quantized.get(path, 0)
        if q:
            row["quantized"] += 1
            row["quantized_params"] += min(int(q), int(params))
    unknown = sum(v for k, v in quantized.items() if k not in modules or not any(
        True for _ in modules[k].parameters(recurse=False)))
    if unknown:
        row = table.setdefault("(other)", {"layers": 0, "quantized": 0, "params": 0, "quantized_params": 0})
        row["quantized_params"] += int(unknown)
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["params"]))


def share_warning(scheme: str, quantizer: str, table: dict[str, dict[str, int]], pte_bytes: int | None = None,
                  fp32_bytes: int | None = None) -> tuple[float, str | None]:
    """(share of parameters quantized, a warning sentence when it is below :data:`MIN_QUANTIZED_SHARE`)."""
    total = sum(r["params"] for r in table.values())
    done = sum(min(r["quantized_params"], r["params"]) if r["params"] else 0 for r in table.values())
    share = done / total if total else 1.0
    if share >= MIN_QUANTIZED_SHARE or not total:
        return share, None
    missed = sorted(((name, r["params"] - r["quantized_params"]) for name, r in table.items()
                     if r["quantized_params"] < MIN_QUANTIZED_SHARE * r["params"]), key=lambda kv: -kv[1])
    parts = [f"{name} ({100 * left / total:.0f} % of the weights)" for name, left in missed[:3]]
    size = ""
    if pte_bytes and fp32_bytes:
        size = f"; the program is {pte_bytes / fp32_bytes:.2f}× the model's fp32 weight bytes"
    verb = "is" if len(parts) == 1 else "are"
    return share, (f"{scheme} quantized {100 * share:.0f} % of the parameters: {', '.join(parts)} {verb} not "
                   f"quantized by {quantizer}{size}")


def describe(scheme: str, quantizer: str, model, exported) -> dict[str, Any]:
    table = layer_table(model, quantized_weights(exported))
    share, _ = share_warning(scheme, quantizer, table)
    return {"layers": table, "quantized_share": round(share, 4), "quantizer": quantizer}
