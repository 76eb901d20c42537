"""``sparsify(ratio)`` (issue 22): unstructured magnitude sparsity -- a recipe that buys size after
compression and nothing else.

Each ``nn.Linear`` and ``nn.Conv1d/2d/3d`` weight has its ``ratio`` smallest-magnitude values set to zero (per
layer; biases, normalisation and embeddings are left). The shapes do not change, so the program runs the
same matmuls and convolutions: ExecuTorch's XNNPACK has no sparse kernel path (sparse inference is compiled
out on aarch64), so **no speed is claimed** -- only that the program, written with those zeros, compresses
smaller (a quantize step after it keeps them: symmetric int8 and 8da4w map 0 to the code 0). The facts say
what was zeroed and, once the program is written, its size and its size compressed with zlib (level 9, the
standard library's: zstandard is not a dependency), and the same for the fp32 weights before and after the
step. Measure whatever you want to claim about speed with ``edgerun bench``.

LLMs (a GGUF): the same zeros in every linear layer of the eager Llama but its LM head (left dense, as
Wanda and SparseGPT leave it; tied to the token embeddings it would zero the embedding table too) before the
quantize step; the export measures the eager perplexity after the step and judges the program from it.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any, ClassVar

from .errors import ExportError
from .recipes import Recipe, RecipeContext, RecipeResult, recipe_handler

__all__ = ["Sparsify", "SPARSE_NOTE", "sparsify_weights", "compressed_size"]

COMPRESSOR = "zlib level 9"
SPARSE_NOTE = ("unstructured zeros: the program is smaller only once compressed (zip, zlib, a compressed "
               "filesystem or OTA); XNNPACK has no sparse kernels, so it runs the same dense work and no speed "
               "is claimed")


@dataclasses.dataclass(frozen=True)
class Sparsify(Recipe):
    """Zero the ``ratio`` smallest-magnitude weights of every Linear and Conv layer (size only)."""

    name: ClassVar[str] = "sparsify"
    kind: ClassVar[str] = "prune"
    description: ClassVar[str] = ("unstructured magnitude sparsity of Linear/Conv weights: smaller compressed, "
                                  "never faster (size only)")
    positional: ClassVar[tuple[str, ...]] = ("ratio",)          # sparsify(0.5)

    ratio: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio is the share of each layer's weights set to zero, a number between 0 and 1 "
                             f"exclusive (e.g. sparsify(0.5)), got {self.ratio!r}")

    def program_facts(self, pte: Path) -> dict[str, Any]:
        size, packed = compressed_size(Path(pte))
        return {"program_bytes": size, "program_compressed_bytes": packed, "compressor": COMPRESSOR}


def compressed_size(path: Path, chunk: int = 1 << 20) -> tuple[int, int]:
    """(size, size compressed by zlib at level 9) of a file, read in chunks."""
    comp = zlib.compressobj(9)
    size = packed = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            size += len(block)
            packed += len(comp.compress(block))
    return size, packed + len(comp.flush())


def _weights_compressed(layers) -> int:
    comp = zlib.compressobj(9)
    n = sum(len(comp.compress(m.weight.detach().contiguous().numpy().tobytes())) for _, m in layers)
    return n + len(comp.flush())


def sparsify_weights(model, recipe: Sparsify, skip: dict[str, str] | None = None) -> dict[str, Any]:
    """Zero ``recipe.ratio`` of each Linear/Conv weight by magnitude, in place (``skip``: layer name -> why it is
    left); returns the facts."""
    import torch
    from torch import nn

    skip = skip or {}
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.weight.dtype.is_floating_point]
    skipped = [{"layer": n, "reason": skip[n]} for n, _ in layers if n in skip]
    seen: set[int] = set()
    layers = [(n, m) for n, m in layers if n not in skip
              and not (id(m.weight) in seen or seen.add(id(m.weight)))]  # tied: once
    before = _weights_compressed(layers)
    done, zeros, total = [], 0, 0
    with torch.no_grad():
        for name, m in layers:
            w = m.weight
            k = int(round(w.numel() * recipe.ratio))
            if k:
                cut = w.detach().abs().flatten().kthvalue(k).values
                mask = w.abs() <= cut
                over = int(mask.sum()) - k            # ties at the threshold: keep the first ones past k
                if over > 0:
                    idx = mask.flatten().nonzero().flatten()[k:]
                    mask.view(-1)[idx] = False
                w.masked_fill_(mask, 0.0)
            z = int((w == 0).sum())
            zeros += z
            total += w.numel()
            done.append({"layer": name, "type": type(m).__name__, "weights": w.numel(), "zeros": z})
    return {"layers_sparsified": len(done), "layers_skipped": len(skipped), "sparsified": done, "skipped": skipped,
            "weights": total,
            "zeros": zeros, "sparsity": round(zeros / total, 6) if total else 0.0,
            "weights_compressed_before": before, "weights_compressed_after": _weights_compressed(layers),
            "compressor": COMPRESSOR, "speed": SPARSE_NOTE}


@recipe_handler(Sparsify)
def _sparsify(recipe: Sparsify, ctx: RecipeContext) -> RecipeResult:
    from torch import nn

    if not any(isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in ctx.module.modules()):
        raise ExportError("recipe sparsify zeroes the weights of Linear and Conv layers, and this model has none.",
                          stage="prune", hint="Export it without the sparsify step.")
    return RecipeResult(ctx.module, facts=sparsify_weights(ctx.module, recipe))


@recipe_handler(Sparsify, llm=True)
def _sparsify_llm(recipe: Sparsify, ctx: RecipeContext) -> RecipeResult:
    head = {"output": "the LM head: left dense (Wanda/SparseGPT leave it; tied, it is the token embeddings)"}
    return RecipeResult(ctx.module, facts=sparsify_weights(ctx.module, recipe, skip=head))
