"""The inputs an export feeds its model: the example, generated ones, and a user's own files.

Test vector 0 and calibration sample 0 are always the model's example inputs (valid by
construction). Generated inputs are shaped like the example: floats ~ N(0, 1); integer and bool
inputs stay inside the range the example shows — and, for an integer input that feeds an
``aten.embedding`` directly as its indices, inside that embedding's ``num_embeddings``. Those
ranges are read off the graph ``torch.export`` made (:func:`input_ranges`), not guessed from
module types. A user's own inputs (``--calibration``, ``--vectors``: ``.npy`` for one input, or
``.npz`` with ``input_0``, ``input_1`` ... stacked on dim 0) are checked against the same
embedding bounds, so an index out of range is refused with the file, the input and the range.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ExportError


@dataclasses.dataclass(frozen=True)
class IntRange:
    """Closed range ``[low, high]`` an integer input's generated values are drawn from, and the
    embedding bound (``num_embeddings``) that makes any value outside it invalid, if one is known."""

    low: int
    high: int
    embedding_rows: int | None = None   # the smallest num_embeddings this input indexes directly
    embedding: str | None = None        # which module (for messages)
    only_embeddings: bool = False       # every use of the input is as an embedding's indices


def _embedding_uses(exported) -> dict[int, list[tuple[int, str]]]:
    """User-input index -> [(num_embeddings, module), ...] for every ``aten.embedding`` whose
    indices are that input's placeholder; also notes inputs with other uses (key -1 - index)."""
    import torch

    user_inputs = [s.arg.name for s in exported.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    index_of = {name: i for i, name in enumerate(user_inputs)}
    uses: dict[int, list[tuple[int, str]]] = {}
    embedding_ops = {torch.ops.aten.embedding.default}
    for node in exported.graph.nodes:
        if node.op != "placeholder" or node.name not in index_of:
            continue
        i = index_of[node.name]
        for user in node.users:
            if user.target in embedding_ops and len(user.args) >= 2 and user.args[1] is node:
                weight = user.args[0].meta.get("val") if hasattr(user.args[0], "meta") else None
                if weight is not None and weight.dim() >= 1:
                    stack = user.meta.get("nn_module_stack") or {}
                    module = next(reversed(stack.values()))[0] if stack else user.name
                    uses.setdefault(i, []).append((int(weight.shape[0]), str(module)))
                    continue
            uses.setdefault(-1 - i, [])  # a use other than an embedding's indices
    return uses


def input_ranges(exported, example: Sequence) -> list[IntRange | None]:
    """Per example input: ``None`` for a float input, else the :class:`IntRange` to draw from.

    An input used only as embedding indices may take any row, ``[0, num_embeddings - 1]``; any
    other integer input stays within ``[min, max]`` of the example (clipped to an embedding's
    rows when it also indexes one).
    """
    import torch

    uses = _embedding_uses(exported) if exported is not None else {}
    ranges: list[IntRange | None] = []
    for i, t in enumerate(example):
        if t.is_floating_point() or t.is_complex():
            ranges.append(None)
            continue
        if t.dtype == torch.bool:
            low, high = (int(t.min().item()), int(t.max().item())) if t.numel() else (0, 1)
            ranges.append(IntRange(low, high))
            continue
        low, high = (int(t.min().item()), int(t.max().item())) if t.numel() else (0, 0)
        embeds = uses.get(i, [])
        if not embeds:
            ranges.append(IntRange(low, high))
            continue
        rows, module = min(embeds)
        only = (-1 - i) not in uses
        if only:
            low, high = 0, rows - 1
        else:
            low, high = max(low, 0), min(high, rows - 1)
        ranges.append(IntRange(low, max(low, high), embedding_rows=rows, embedding=module, only_embeddings=only))
    return ranges


def generated_like(example: Sequence, count: int, seed: int, ranges: Sequence[IntRange | None]) -> list[tuple]:
    """``count`` samples: the example itself, then inputs shaped like it (see the module doc)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    samples = [tuple(t.clone() for t in example)]
    while len(samples) < count:
        sample = []
        for t, r in zip(example, ranges):
            if r is None:
                sample.append(torch.randn(t.shape, generator=gen, dtype=t.dtype))
            else:
                drawn = torch.randint(r.low, r.high + 1, t.shape, generator=gen)
                sample.append(drawn.to(t.dtype))
        samples.append(tuple(sample))
    return samples


def load_inputs_file(path: str, example: Sequence, *, what: str, stage: str,
                     ranges: Sequence[IntRange | None] = ()) -> list[tuple]:
    """Samples from ``.npy`` (one input: ``[N, *shape]`` or ``[N, *shape[1:]]`` for batch 1) or
    ``.npz`` (keys ``input_0``, ``input_1`` ... in input order, each stacked on dim 0).

    ``what`` names the file in messages ("calibration file", "test vectors file"); integer inputs
    are checked against the embedding bounds in ``ranges``.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{what} {path} does not exist.", stage=stage)
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise ExportError(f"{what} {path} is not a readable .npy/.npz file: {exc}.", stage=stage) from exc
    if isinstance(loaded, np.ndarray):
        arrays = [loaded]
    else:
        keys = [f"input_{i}" for i in range(len(example))]
        missing = [k for k in keys if k not in loaded.files]
        if missing:
            raise ExportError(f"{what} {path} lacks {', '.join(missing)}; it has {', '.join(loaded.files) or 'nothing'}.",
                              stage=stage, hint="Name the arrays input_0, input_1, ... in the model's input order.")
        arrays = [loaded[k] for k in keys]
    if len(arrays) != len(example):
        raise ExportError(f"{what} {path} holds {len(arrays)} input(s); the model takes {len(example)}.",
                          stage=stage, hint="Use a .npz with input_0, input_1, ... for a model with several inputs.")
    per_input: list[list] = []
    counts = set()
    for i, (arr, ex) in enumerate(zip(arrays, example)):
        want = tuple(ex.shape)
        if tuple(arr.shape[1:]) == want:          # [N, *shape]
            samples = [arr[n] for n in range(arr.shape[0])]
        elif want and want[0] == 1 and tuple(arr.shape[1:]) == want[1:]:  # [N, *shape[1:]] for batch 1
            samples = [arr[n : n + 1] for n in range(arr.shape[0])]
        else:
            raise ExportError(
                f"{what} {path}: input {i} has shape {list(arr.shape)}; expected [N, {', '.join(map(str, want))}] "
                f"(N samples of the model's input shape {list(want)}).", stage=stage)
        integer_model_input = not (ex.is_floating_point() or ex.is_complex())
        if integer_model_input and arr.dtype.kind == "f":
            raise ExportError(f"{what} {path}: input {i} holds {arr.dtype} values; the model takes "
                              f"{str(ex.dtype).replace('torch.', '')} there.", stage=stage,
                              hint="Store integer inputs (indices, token ids) as an integer array.")
        r = ranges[i] if i < len(ranges) else None
        if r is not None and r.embedding_rows is not None and arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= r.embedding_rows:
                raise ExportError(
                    f"{what} {path}: input {i} holds values {lo}..{hi}, but it indexes the embedding {r.embedding} "
                    f"of {r.embedding_rows} rows (valid 0..{r.embedding_rows - 1}).", stage=stage)
        counts.add(len(samples))
        per_input.append([torch.from_numpy(np.ascontiguousarray(s)).to(ex.dtype) for s in samples])
    if len(counts) != 1 or 0 in counts:
        raise ExportError(f"{what} {path}: inputs have different or zero sample counts {sorted(counts)}.",
                          stage=stage)
    return [tuple(col) for col in zip(*per_input)]
