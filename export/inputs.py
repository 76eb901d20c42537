"""The inputs an export feeds its model: the example, generated ones, and a user's own files.

Test vector 0 and calibration sample 0 are always the model's example inputs (valid by
construction). Generated inputs are shaped like the example: floats ~ N(0, 1); integer and bool
inputs stay inside the range the example shows — and, for an integer input that feeds an
``aten.embedding`` (or an ``embedding_bag``) as indices, per element inside the rows of the table that
element reaches through selects, slices, unbinds and reshapes (a recommender: one column per table). Those
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
    embedding bound (``num_embeddings``) that makes any value outside it invalid, if one is known.

    ``low``/``high``/``embedding_rows`` summarise the whole input; ``element_low``, ``element_high``,
    ``element_rows`` (arrays of the input's shape, when the graph was read) give them per element:
    a recommender's id matrix whose columns index different tables gets each column its own range.
    ``problem`` says why no valid value can be generated for some element (then generation is
    refused, naming the input)."""

    low: int
    high: int
    embedding_rows: int | None = None   # the smallest num_embeddings this input indexes directly
    embedding: str | None = None        # which module (for messages)
    only_embeddings: bool = False       # every use of the input is as an embedding's indices
    element_low: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    element_high: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    element_rows: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)  # 0: no bound
    element_table: tuple | None = dataclasses.field(default=None, compare=False, repr=False)      # module per elt
    problem: str | None = None


#: ops that only select, reshape or copy elements: an integer input is followed through them (with a
#: tensor of element numbers in its place) to the embeddings its elements end in
_REARRANGING = frozenset({
    "select", "slice", "unbind", "view", "reshape", "_unsafe_view", "squeeze", "unsqueeze", "permute",
    "transpose", "t", "flatten", "unflatten", "expand", "narrow", "split", "split_with_sizes", "chunk",
    "movedim", "tensor_split", "select_copy", "slice_copy", "view_copy", "squeeze_copy", "unsqueeze_copy",
    "permute_copy", "expand_copy", "index_select",
})
_IDENTITY = frozenset({"clone", "contiguous", "detach", "alias", "lift_fresh_copy", "_to_copy", "to"})


def _packet(target) -> str:
    name = getattr(target, "__name__", "") or ""
    return name.split(".")[0]


def _table_of(node, weight_arg) -> tuple[int, str] | None:
    weight = weight_arg.meta.get("val") if hasattr(weight_arg, "meta") else None
    if weight is None or weight.dim() < 1:
        return None
    stack = node.meta.get("nn_module_stack") or {}
    module = next(reversed(stack.values()))[0] if stack else node.name
    return int(weight.shape[0]), str(module)


def _element_uses(exported, example: Sequence) -> dict[int, tuple[np.ndarray, list, np.ndarray]]:
    """Per integer user input: (rows per element (0: no embedding), table per element, other-use per
    element), following the input through element-rearranging ops (:data:`_REARRANGING`) to every
    consumer: ``aten.embedding`` and ``embedding_bag`` indices bound their elements to the table's
    rows; any other consumer is an "other use" of the elements that reach it."""
    import operator

    import torch

    user_inputs = [s.arg.name for s in exported.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    index_of = {name: i for i, name in enumerate(user_inputs)}
    out: dict[int, tuple[np.ndarray, list, np.ndarray]] = {}
    for node in exported.graph.nodes:
        if node.op != "placeholder" or node.name not in index_of:
            continue
        i = index_of[node.name]
        if i >= len(example) or example[i].is_floating_point() or example[i].is_complex():
            continue
        t = example[i]
        n = int(t.numel())
        rows = np.zeros(n, dtype=np.int64)
        tables: list = [None] * n
        other = np.zeros(n, dtype=bool)
        traced = {node: torch.arange(n, dtype=torch.int64).reshape(t.shape)}
        pending = [node]
        while pending:
            cur = pending.pop()
            ids = traced[cur]
            for user in cur.users:
                if user in traced:
                    continue
                name = _packet(user.target)
                elements = ids.reshape(-1) if isinstance(ids, torch.Tensor) else None
                if user.target is operator.getitem and isinstance(ids, (list, tuple)):
                    traced[user] = ids[user.args[1]]
                    pending.append(user)
                    continue
                if elements is None:
                    continue
                rest = [a for a in list(user.args[1:]) + list(user.kwargs.values())
                        if isinstance(a, torch.fx.Node)]
                if user.op == "call_function" and user.args and user.args[0] is cur and not rest:
                    if name in _IDENTITY:
                        traced[user] = ids
                        pending.append(user)
                        continue
                    if name in _REARRANGING:
                        try:
                            traced[user] = user.target(ids, *user.args[1:], **user.kwargs)
                        except Exception:  # an overload we cannot replay: an other use
                            other[elements.numpy()] = True
                            continue
                        pending.append(user)
                        continue
                if user.op == "call_function" and ("embedding" in name) and len(user.args) >= 2 \
                        and user.args[1] is cur and user.args[0] is not cur:
                    table = _table_of(user, user.args[0])
                    if table is not None:
                        idx = elements.numpy()
                        r, mod = table
                        tighter = (rows[idx] == 0) | (rows[idx] > r)
                        rows[idx[tighter]] = r
                        for k in idx[tighter]:
                            tables[int(k)] = mod
                        continue
                other[elements.numpy()] = True
        out[i] = (rows, tables, other)
    return out


def input_ranges(exported, example: Sequence) -> list[IntRange | None]:
    """Per example input: ``None`` for a float input, else the :class:`IntRange` to draw from.

    Per element: one used only as embedding indices may take any row, ``[0, num_embeddings - 1]``
    of the smallest table it indexes; one with other uses stays within ``[min, max]`` of the example
    (clipped to a table's rows when it also indexes one); one the graph never indexes with keeps the
    example's range. The whole input's ``low``/``high`` span its elements'.
    """
    import torch

    uses = _element_uses(exported, example) if exported is not None else {}
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
        if i not in uses or not uses[i][0].any():
            ranges.append(IntRange(low, high))
            continue
        rows, tables, other = uses[i]
        bound = rows > 0
        lo = np.full(rows.shape, low, dtype=np.int64)
        hi = np.full(rows.shape, high, dtype=np.int64)
        only = bound & ~other
        lo[only], hi[only] = 0, rows[only] - 1
        both = bound & other
        lo[both] = np.maximum(low, 0)
        hi[both] = np.minimum(high, rows[both] - 1)
        problem = None
        empty = np.flatnonzero(lo > hi)
        if empty.size:
            k = int(empty[0])
            problem = (f"element {np.unravel_index(k, tuple(t.shape))} indexes {tables[k]} of {int(rows[k])} rows and "
                       f"is also used as a number, but the example's values {low}..{high} leave no valid value "
                       "between them")
            hi = np.maximum(lo, hi)
        smallest = int(rows[bound].min())
        k = int(np.flatnonzero(bound & (rows == smallest))[0])
        shape = tuple(t.shape)
        ranges.append(IntRange(int(lo.min()), int(hi.max()), embedding_rows=smallest, embedding=tables[k],
                               only_embeddings=bool(not other.any() and bound.all()),
                               element_low=lo.reshape(shape), element_high=hi.reshape(shape),
                               element_rows=rows.reshape(shape), element_table=tuple(tables), problem=problem))
    return ranges


def generated_like(example: Sequence, count: int, seed: int, ranges: Sequence[IntRange | None],
                   names: Sequence[str] = ()) -> list[tuple]:
    """``count`` samples: the example itself, then inputs shaped like it (see the module doc), each
    integer element drawn from its own range."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    samples = [tuple(t.clone() for t in example)]
    if count > 1:
        for i, r in enumerate(ranges):
            if r is not None and r.problem:
                name = names[i] if i < len(names) else f"input {i}"
                raise ExportError(f"cannot generate test inputs for {name}: {r.problem}.", stage="load model",
                                  hint="Give your own test inputs with --vectors FILE.npz (input_0, input_1 ... "
                                       "stacked on dim 0), or --vectors 1 to verify on the example alone.")
    while len(samples) < count:
        sample = []
        for t, r in zip(example, ranges):
            if r is None:
                sample.append(torch.randn(t.shape, generator=gen, dtype=t.dtype))
            elif r.element_low is not None:
                lo = torch.from_numpy(r.element_low)
                span = torch.from_numpy(r.element_high - r.element_low + 1).to(torch.float64)
                u = torch.rand(t.shape, generator=gen, dtype=torch.float64)
                drawn = lo + torch.minimum((u * span).floor().to(torch.int64), (span - 1).to(torch.int64))
                sample.append(drawn.to(t.dtype))
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
        if r is not None and r.element_rows is not None and arr.size:
            _check_rows(samples, r, want, f"{what} {path}: input {i}", stage)
        elif r is not None and r.embedding_rows is not None and arr.size:
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


def _check_rows(samples: list, r: IntRange, shape: tuple, what: str, stage: str) -> None:
    """Every element of every sample inside the rows of the table it indexes (per element)."""
    rows = r.element_rows.reshape(-1)
    bound = rows > 0
    for s in samples:
        flat = np.asarray(s).reshape(-1)
        bad = np.flatnonzero(bound & ((flat < 0) | (flat >= np.where(bound, rows, 1))))
        if bad.size:
            k = int(bad[0])
            where = np.unravel_index(k, shape) if shape else ()
            n = int(rows[k])
            raise ExportError(
                f"{what} holds {int(flat[k])} at element {tuple(int(x) for x in where)}, but that element indexes "
                f"the embedding {r.element_table[k]} of {n} rows (valid 0..{n - 1}).", stage=stage)
