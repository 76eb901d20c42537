"""Training programs for on-device fine-tuning: a model + its loss -> an ExecuTorch program the runner trains.

:func:`export_training_program` wraps a classifier with cross-entropy (``forward(x [B,...], y [B]) ->
(loss, predicted class)``), exports it with ``torch.export``, adds the backward pass
(``torch.export.experimental._export_forward_backward``: the program's ``forward`` then returns
``[loss, predictions, grads..., params...]`` and names the layout in ``__et_training_*_forward``
methods) and lowers it with the portable and optimized kernels (no delegate: XNNPACK takes none of a
training graph's matmuls). Parameters with ``requires_grad=False`` become constants of the program,
so freezing layers (``frozen``) shrinks what the device trains and stores.

:func:`load_trained` puts the weights the device sends back into a copy of the eager model, so the
hall can verify it and export an inference artifact of it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgerun.core.artifact import sha256_file

from .errors import ExportError

#: The fine-tuning methods: backprop of every parameter (full), of LoRA adapters over the frozen fp32
#: base (lora) or over a base quantized to int4/int8 (qlora); zeroth-order SGD, two forwards a step and
#: no gradients or optimizer state, of every parameter (mezo) or of LoRA adapters (zo-lora).
METHODS = ("full", "lora", "qlora", "mezo", "zo-lora")
ZEROTH_ORDER = ("mezo", "zo-lora")  # weights-as-inputs forward programs, no backward
WITH_LORA = ("lora", "qlora", "zo-lora")
MEZO_FQN = "__edgerun_mezo_fqn_forward"  # constant method: the weight inputs' names, in input order
PREFIX = "model."  # the wrapper's attribute: parameter names in the program start with it


@dataclasses.dataclass(frozen=True)
class TrainingProgram:
    path: Path
    batch: int
    sample_shape: tuple[int, ...]
    dtype: str
    names: tuple[str, ...]           # trainable parameters, in the program's order (wrapper prefix removed)
    shapes: tuple[tuple[int, ...], ...]
    trainable: int                   # trainable scalars
    frozen: int                      # scalars folded into the program as constants
    pte_bytes: int
    pte_sha256: str
    method: str = "full"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d["shapes"] = [list(s) for s in self.shapes]
        d["sample_shape"] = list(self.sample_shape)
        d["names"] = list(self.names)
        return d

    @classmethod
    def cached(cls, directory: Path) -> "TrainingProgram | None":
        """The training program exported into ``directory`` before (``train.pte`` + ``program.json``), or
        None when there is none, its description cannot be read, or the program is not the one it
        describes (its sha256 differs: changed or truncated since): then it must be exported again."""
        import json

        from edgerun.core.artifact import sha256_file

        pte, meta_path = Path(directory) / "train.pte", Path(directory) / "program.json"
        if not (pte.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            program = cls(**{**meta, "path": pte, "sample_shape": tuple(meta["sample_shape"]),
                             "names": tuple(meta["names"]), "shapes": tuple(tuple(s) for s in meta["shapes"])})
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if pte.stat().st_size != program.pte_bytes or sha256_file(pte) != program.pte_sha256:
            return None
        return program

    def save(self, directory: Path) -> None:
        """Write ``program.json`` beside the program, for :meth:`cached`."""
        import json

        from edgerun.core.artifact import write_json_atomic

        write_json_atomic(Path(directory) / "program.json", self.to_json())


def _lora_class():
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        """``base(x) + (alpha / rank) * x A^T B^T``: the base layer frozen, A (rank x in, small random)
        and B (out x rank, zeros: training starts from the base model exactly) trained."""

        def __init__(self, base: nn.Linear, rank: int, alpha: float, seed: int):
            super().__init__()
            self.base = base
            for p in self.base.parameters():
                p.requires_grad_(False)
            g = torch.Generator().manual_seed(seed)
            self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, generator=g) / base.in_features ** 0.5)
            self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
            self.scale = alpha / rank

        def forward(self, x):
            return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

        def merged(self) -> nn.Linear:
            out = self.base.to_linear() if hasattr(self.base, "to_linear") else copy.deepcopy(self.base)
            with torch.no_grad():
                out.weight += self.scale * (self.lora_b @ self.lora_a)
            for p in out.parameters():
                p.requires_grad_(True)
            return out

    return LoRALinear


# ------------------------------------------------------------------------ frozen linear layers (lora, qlora)
#: base-weight precisions of a frozen linear layer: fp32 as given, int8 per output channel, int4 in groups
BASE_BITS = (32, 8, 4)
INT4_GROUP = 32
_FROZEN: dict = {}


def _dequantize(w, scales, bits: int, group: int):
    """The fp32 ``[out, in]`` weight of a frozen layer's stored one: fp32 as is; int8 ``[out, in]`` times one
    scale per output channel (symmetric); int4 as two codes a byte (``[out, in/2]`` uint8, low nibble first)
    with a scale and a minimum per ``group`` inputs (``scales [out, in/group, 2]``: value = code * scale + min,
    the Q4_1 grid, so a base that came from a Q4_1 GGUF is stored without a second rounding)."""
    import torch

    if bits == 32:
        return w
    out = w.shape[0]
    if bits == 8:
        return w.to(torch.float32) * scales
    lo = torch.bitwise_and(w, 15).to(torch.float32)
    hi = torch.bitwise_right_shift(w, 4).to(torch.float32)
    q = torch.stack([lo, hi], dim=-1).reshape(out, -1, group)
    return (q * scales[:, :, 0:1] + scales[:, :, 1:2]).reshape(out, -1)


def _frozen_ops():
    """``edgerun::frozen_linear(x, w, scales, bits, group)`` and the gradient of its input: a linear layer
    whose weight is a constant, with a backward that dequantizes (or reads) the weight again instead of
    keeping the forward's fp32 / transposed copy alive until the backward -- the copy autograd would save
    for every layer, as much memory as the model itself. Both are replaced by their aten definitions once
    the backward is built (:func:`decompose_frozen`), so the runner needs no custom kernel."""
    if "forward" in _FROZEN:
        return _FROZEN
    import torch

    @torch.library.custom_op("edgerun::frozen_linear", mutates_args=(),
                             schema="(Tensor x, Tensor w, Tensor scales, int bits, int group) -> Tensor")
    def frozen_linear(x, w, scales, bits, group):
        return torch.matmul(x, _dequantize(w, scales, bits, group).t())

    @frozen_linear.register_fake
    def _(x, w, scales, bits, group):
        return x.new_empty(*x.shape[:-1], w.shape[0])

    @torch.library.custom_op("edgerun::frozen_linear_grad_input", mutates_args=(),
                             schema="(Tensor g, Tensor w, Tensor scales, int bits, int group) -> Tensor")
    def grad_input(g, w, scales, bits, group):
        return torch.matmul(g, _dequantize(w, scales, bits, group))

    @grad_input.register_fake
    def _(g, w, scales, bits, group):
        cols = w.shape[1] * (2 if bits == 4 else 1)
        return g.new_empty(*g.shape[:-1], cols)

    def setup(ctx, inputs, output):
        _x, w, scales, bits, group = inputs
        ctx.save_for_backward(w, scales)
        ctx.bits, ctx.group = bits, group

    def backward(ctx, g):
        w, scales = ctx.saved_tensors
        return grad_input(g, w, scales, ctx.bits, ctx.group), None, None, None, None

    frozen_linear.register_autograd(backward, setup_context=setup)
    _FROZEN.update(forward=frozen_linear, grad_input=grad_input)
    return _FROZEN


def decompose_frozen(ep):
    """``ep`` with the frozen-linear custom ops replaced by dequantize + matmul (after the backward is built:
    the forward's dequantized weight then dies after its matmul, the backward makes its own)."""
    import torch

    ops = _frozen_ops()
    table = {ops["forward"]._opoverload: lambda x, w, s, bits, group: torch.matmul(x, _dequantize(w, s, bits, group).t()),
             ops["grad_input"]._opoverload: lambda g, w, s, bits, group: torch.matmul(g, _dequantize(w, s, bits, group))}
    return ep.run_decompositions(table)


def _frozen_class():
    import torch
    from torch import nn

    class FrozenLinear(nn.Module):
        """A linear layer that does not train, its weight stored as ``bits`` (32, 8 or 4; see
        :func:`_dequantize`) and applied by ``edgerun::frozen_linear``."""

        def __init__(self, base: nn.Linear, bits: int):
            super().__init__()
            w = base.weight.detach().to(torch.float32)
            self.out_features, self.in_features, self.bits = w.shape[0], w.shape[1], bits
            self.group = INT4_GROUP if bits == 4 and w.shape[1] % INT4_GROUP == 0 else w.shape[1]
            if bits == 32:
                stored, scales = w.clone(), torch.zeros(0)
            elif bits == 8:  # symmetric, one scale per output channel
                scales = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
                stored = torch.round(w / scales).clamp(-127, 127).to(torch.int8)
            else:  # asymmetric groups: scale and minimum, codes 0..15
                if w.shape[1] % 2:
                    raise ExportError(f"--base-bits 4 packs two weights a byte; a layer with {w.shape[1]} inputs "
                                      "cannot be packed.", stage="export training program", hint="Use --base-bits 8.")
                groups = w.reshape(w.shape[0], -1, self.group)
                lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
                step = ((hi - lo) / 15.0).clamp(min=1e-12)
                codes = torch.round((groups - lo.unsqueeze(-1)) / step.unsqueeze(-1)).clamp(0, 15)
                codes = codes.reshape(w.shape).to(torch.uint8)
                stored = torch.bitwise_or(codes[:, 0::2], torch.bitwise_left_shift(codes[:, 1::2], 4))
                scales = torch.stack([step, lo], dim=-1)
            self.register_buffer("weight", stored)
            self.register_buffer("scales", scales)
            self.register_buffer("bias", None if base.bias is None else base.bias.detach().clone())

        def forward(self, x):
            y = _frozen_ops()["forward"](x, self.weight, self.scales, self.bits, self.group)
            return y if self.bias is None else y + self.bias

        def dequantized(self):
            return _dequantize(self.weight, self.scales, self.bits, self.group)

        def to_linear(self) -> nn.Linear:
            out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
            with torch.no_grad():
                out.weight.copy_(self.dequantized())
                if self.bias is not None:
                    out.bias.copy_(self.bias)
            return out

        def stored_bytes(self) -> int:
            return sum(t.numel() * t.element_size() for t in (self.weight, self.scales))

    if "cls" not in _FROZEN:
        _FROZEN["cls"] = FrozenLinear
    return _FROZEN["cls"]


def freeze_linears(model, bits: int = 32):
    """``model`` (in place) with every frozen ``nn.Linear`` -- LoRA bases included, a head tied to the
    embedding table excepted (its weight is the table's) -- a :class:`FrozenLinear` of ``bits``. Returns
    the count of layers replaced."""
    import torch

    if bits not in BASE_BITS:
        raise ExportError(f"--base-bits must be one of {', '.join(map(str, BASE_BITS))}, got {bits!r}.",
                          stage="export training program")
    FrozenLinear = _frozen_class()
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    count = 0
    for name, mod in list(model.named_modules()):
        if (type(mod) is torch.nn.Linear and not mod.weight.requires_grad and id(mod.weight) not in embedded):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, FrozenLinear(mod, bits))
            count += 1
    return count


def frozen_parameters(model) -> int:
    """The frozen scalars of ``model``: parameters that do not train plus every frozen layer's weights."""
    FrozenLinear = _frozen_class()
    n = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    for m in model.modules():
        if isinstance(m, FrozenLinear):
            n += m.in_features * m.out_features + (0 if m.bias is None else m.bias.numel())
    return n


def add_lora(model, *, rank: int = 8, alpha: float | None = None, targets: Sequence[str] = (), seed: int = 0):
    """A copy of ``model`` whose ``nn.Linear`` layers (those whose name contains any of ``targets``; all when
    empty) carry LoRA adapters; every other parameter is frozen. Returns ``(model, adapted layer names)``."""
    import torch

    if not isinstance(rank, int) or rank < 1:
        raise ExportError(f"--rank must be an integer >= 1, got {rank!r}.", stage="export training program")
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(False)
    LoRALinear = _lora_class()
    chosen = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)
              and (not targets or any(t in n for t in targets))]
    if not chosen:
        have = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)]
        raise ExportError(f"--lora-targets {', '.join(targets) or '(all)'} matches no linear layer (the model has: "
                          f"{', '.join(have[:8]) or 'none'}).", stage="export training program")
    for k, name in enumerate(chosen):
        parent_name, _, attr = name.rpartition(".")
        parent = m.get_submodule(parent_name) if parent_name else m
        base = getattr(parent, attr)
        setattr(parent, attr, LoRALinear(base, rank, float(alpha if alpha is not None else rank), seed + k))
    return m, chosen


def merge_lora(model):
    """The LoRA model with every adapter merged into its base layer: a plain model to export for inference."""
    m = copy.deepcopy(model)
    LoRALinear = _lora_class().__name__
    for kind in (LoRALinear, "FrozenLinear"):  # adapters first: their frozen bases go with them
        for name, mod in list(m.named_modules()):
            if type(mod).__name__ == kind:
                parent_name, _, attr = name.rpartition(".")
                parent = m.get_submodule(parent_name) if parent_name else m
                setattr(parent, attr, mod.merged() if kind == LoRALinear else mod.to_linear())
    for p in m.parameters():
        p.requires_grad_(True)
    return m.eval()


def _mezo_wrapper(model, names):
    import torch
    from torch import nn

    class Train(nn.Module):  # a language model's forward_train as its forward, for functional_call
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.forward_train(x)

    class WeightsAsInputs(nn.Module):
        """``forward(x, y, *weights) -> (loss, predicted class)``: the model with its trainable parameters
        given by the caller (zeroth-order: the runner perturbs and updates them in its own buffers). A
        language model: ``(tokens [B,T], next tokens [B,T]) -> (mean next-token cross-entropy, predicted
        next tokens [B,T])``."""

        def __init__(self, model):
            super().__init__()
            self.lm = is_language_model(model)
            self.model = Train(model) if self.lm else model

        def forward(self, x, y, *weights):
            prefix = "model." if self.lm else ""
            logits = torch.func.functional_call(self.model, {prefix + n: w for n, w in zip(names, weights)}, (x,))
            if self.lm:
                flat = logits.reshape(-1, logits.shape[-1])
                return nn.functional.cross_entropy(flat, y.reshape(-1)), logits.argmax(dim=-1)
            return nn.functional.cross_entropy(logits, y), logits.argmax(dim=-1)

    return WeightsAsInputs(model)


def _export_mezo(m, x, y, frozen_names, out: Path, delegate: bool = True):
    """The zeroth-order program: inference-only (no backward, no gradients), the trained weights as inputs
    the runtime does not allocate (``alloc_graph_input=False``: it uses the runner's buffers), the frozen
    ones (zo-lora: the base) constants of the program. ``delegate``: lowered to XNNPACK like an inference
    program (measured on SmolLM2-135M, batch 4 x 64, 1 thread: ZO-LoRA 0.43 steps/s against 0.13 on the
    portable/optimized kernels, peak RSS 764 against 719 MB; the export takes minutes longer, once: the
    program is cached)."""
    import torch
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge
    from executorch.exir.passes import MemoryPlanningPass

    names = [n for n, p in m.named_parameters() if n not in frozen_names]
    weights = tuple(dict(m.named_parameters())[n].detach().clone() for n in names)
    wrapped = _mezo_wrapper(m.eval(), names)
    with torch.no_grad():
        ep = torch.export.export(wrapped, (x, y, *weights), strict=False)
    methods = {MEZO_FQN: ["model." + n for n in names]}
    config = EdgeCompileConfig(_check_ir_validity=False)
    if delegate:  # the forward is an inference: XNNPACK takes its linear layers, weights given or constant
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        from .retrace import skip_idle_retraces

        with skip_idle_retraces():
            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()], compile_config=config,
                                               constant_methods=methods)
    else:
        edge = to_edge(ep, compile_config=config, constant_methods=methods)
    program = edge.to_executorch(ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(
        alloc_graph_input=False)))
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        program.write_to_file(f)
    tmp.replace(out)
    return names


def initial_weights(model, program: "TrainingProgram") -> dict[str, np.ndarray]:
    """MeZO: the starting weights the runner reads (``--weights-in``), by the program's names."""
    params = dict(model.named_parameters())
    return {PREFIX + n: params[n].detach().float().numpy().copy() for n in program.names}


def _wrapper(model):
    import torch
    from torch import nn

    class WithLoss(nn.Module):
        """Classifier: ``(x [B,...], y [B]) -> (cross-entropy, predicted class [B])``. Language model (a model
        with ``forward_train``): ``(tokens [B,T], next tokens [B,T]) -> (mean next-token cross-entropy,
        predicted next tokens [B,T])``."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x, y):
            if hasattr(self.model, "forward_train"):
                logits = self.model.forward_train(x)
                flat = logits.reshape(-1, logits.shape[-1])
                return nn.functional.cross_entropy(flat, y.reshape(-1)), logits.detach().argmax(dim=-1)
            logits = self.model(x)
            return nn.functional.cross_entropy(logits, y), logits.detach().argmax(dim=-1)

    return WithLoss(model)


def is_language_model(model) -> bool:
    return hasattr(model, "forward_train")


def split_addmm(ep) -> int:
    """Rewrite ``addmm(bias, a, b)`` (beta = alpha = 1) as ``add(mm(a, b), bias)`` in place; returns how many.

    The portable ``addmm`` kernel is the slow path of a training step on the device (the optimized
    library's ``mm`` is not): measured in the issue, 4.0 of 4.3 s per step of a small LM, 10x faster split."""
    import torch

    g = ep.graph_module.graph
    count = 0
    for n in list(g.nodes):
        if n.op != "call_function" or n.target != torch.ops.aten.addmm.default:
            continue
        if n.kwargs.get("beta", 1) != 1 or n.kwargs.get("alpha", 1) != 1 or len(n.args) != 3:
            continue
        bias, a, b = n.args
        with g.inserting_before(n):
            mm = g.call_function(torch.ops.aten.mm.default, (a, b))
            add = g.call_function(torch.ops.aten.add.Tensor, (mm, bias))
        for new in (mm, add):
            new.meta = dict(n.meta)
        n.replace_all_uses_with(add)
        g.erase_node(n)
        count += 1
    if count:
        ep.graph_module.recompile()
    return count


def replace_empty_permuted(ep) -> int:
    """``empty_permuted(size, layout)`` -> ``empty(size)``: the backward of some ops (an LLM's embedding and
    attention) allocates with it and the runtime has no kernel for it; the graph is functional, so a
    contiguous fresh tensor means the same."""
    import torch

    g = ep.graph_module.graph
    count = 0
    for n in list(g.nodes):
        if n.op == "call_function" and n.target == torch.ops.aten.empty_permuted.default:
            kwargs = {k: v for k, v in n.kwargs.items() if k in ("dtype", "layout", "device", "pin_memory")}
            with g.inserting_before(n):
                new = g.call_function(torch.ops.aten.empty.memory_format, (n.args[0],), kwargs)
            new.meta = dict(n.meta)
            n.replace_all_uses_with(new)
            g.erase_node(n)
            count += 1
    if count:
        ep.graph_module.recompile()
    return count


def export_training_program(model, example: Sequence[Any], out: str | Path, *, batch: int = 16,
                            frozen: Sequence[str] = (), method: str = "full",
                            split_mm: bool = True, delegate: bool = True) -> TrainingProgram:
    """Write ``out`` (a ``.pte``) training ``model`` on batches of ``batch`` samples shaped like ``example[0]``'s
    one sample; parameters whose name starts with any of ``frozen`` are not trained. ``delegate``: a
    zeroth-order program (an inference) is lowered to XNNPACK; a backprop program never is (XNNPACK takes
    none of a training graph's matmuls)."""
    import torch
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge
    from torch.export.experimental import _export_forward_backward

    if method not in METHODS:
        raise ExportError(f"fine-tuning method {method!r} has no training program recipe yet (have: "
                          f"{', '.join(METHODS)}).", stage="export training program")
    if len(example) != 1 or not isinstance(example[0], torch.Tensor) or example[0].dim() < 1:
        raise ExportError("on-device fine-tuning needs a model with one tensor input; this one takes "
                          f"{len(example)} input(s).", stage="export training program")
    if not isinstance(batch, int) or batch < 1:
        raise ExportError(f"the batch size must be an integer >= 1, got {batch!r}.", stage="export training program")
    m = copy.deepcopy(model).train()
    if method in WITH_LORA:  # the adapters are what trains: everything else is already frozen
        frozen = ()
    names = [n for n, _ in m.named_parameters()]
    unknown = [f for f in frozen if not any(n.startswith(f) for n in names)]
    if unknown:
        raise ExportError(f"--freeze {unknown[0]!r} matches no parameter (the model has {', '.join(names[:6])}"
                          f"{', …' if len(names) > 6 else ''}).", stage="export training program")
    if method not in WITH_LORA:
        for n, p in m.named_parameters():
            p.requires_grad_(not any(n.startswith(f) for f in frozen))
    sample = example[0][:1]
    x = sample.expand(batch, *sample.shape[1:]).clone()
    lm = is_language_model(m)
    with torch.no_grad():
        logits = m.forward_train(x) if lm else m(x)
    if not lm and logits.dim() != 2:
        raise ExportError(f"the model returns {tuple(logits.shape)}; fine-tuning with cross-entropy needs class "
                          "logits [B, classes].", stage="export training program")
    y = torch.zeros(x.shape if lm else (batch,), dtype=torch.long)
    if method in ZEROTH_ORDER:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        frozen_names = {n for n, p in m.named_parameters() if not p.requires_grad}
        try:
            trained_names = _export_mezo(m, x, y, frozen_names, out, delegate=delegate)
        except Exception as exc:
            raise ExportError(f"the zeroth-order program could not be exported: {str(exc).splitlines()[0][:400]}",
                              stage="export training program") from exc
        params = dict(m.named_parameters())
        return TrainingProgram(
            path=out, batch=batch, sample_shape=tuple(sample.shape[1:]),
            dtype=str(sample.dtype).replace("torch.", ""), names=tuple(trained_names),
            shapes=tuple(tuple(params[n].shape) for n in trained_names),
            trainable=sum(params[n].numel() for n in trained_names),
            frozen=sum(p.numel() for n, p in params.items() if n in frozen_names),
            pte_bytes=out.stat().st_size, pte_sha256=sha256_file(out), method=method)
    wrapped = _wrapper(m)
    try:
        ep = torch.export.export(wrapped, (x, y), strict=True)
        ep = _export_forward_backward(ep)
        if "forward" in _FROZEN and any(n.target == _FROZEN["forward"]._opoverload for n in ep.graph.nodes):
            ep = decompose_frozen(ep)
        if split_mm:
            split_addmm(ep)
        replace_empty_permuted(ep)
        edge = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False))
        program = edge.to_executorch(ExecutorchBackendConfig())
    except Exception as exc:  # torch.export's errors are long; the first line says what failed
        raise ExportError(f"the training program could not be exported: {str(exc).splitlines()[0][:400]}",
                          stage="export training program") from exc
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        program.write_to_file(f)
    tmp.replace(out)
    trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    return TrainingProgram(
        path=out, batch=batch, sample_shape=tuple(sample.shape[1:]), dtype=str(sample.dtype).replace("torch.", ""),
        names=tuple(n for n, _ in trainable), shapes=tuple(tuple(p.shape) for _, p in trainable),
        trainable=sum(p.numel() for _, p in trainable),
        frozen=frozen_parameters(m),
        pte_bytes=out.stat().st_size, pte_sha256=sha256_file(out), method=method)


def load_trained(model, weights: Mapping[str, np.ndarray], program: TrainingProgram):
    """A copy of ``model`` (eval mode) with the device's trained parameters (names as the runner wrote them:
    the program's, with the wrapper's prefix) in place; every trainable parameter must be there, shaped right."""
    import torch

    m = copy.deepcopy(model)
    params = dict(m.named_parameters())
    for name, shape in zip(program.names, program.shapes):
        key = PREFIX + name
        if key not in weights:
            raise ExportError(f"the device sent no weights for parameter {name} (expected {key}.npy).",
                              stage="load trained weights")
        arr = np.asarray(weights[key])
        if tuple(arr.shape) != tuple(shape) or arr.dtype != np.float32:
            raise ExportError(f"weights of {name} are {arr.dtype} {tuple(arr.shape)}, expected float32 {tuple(shape)}.",
                              stage="load trained weights")
        if not np.all(np.isfinite(arr)):
            raise ExportError(f"weights of {name} contain NaN or inf: the training diverged.",
                              stage="load trained weights", hint="Lower --lr.")
        with torch.no_grad():
            params[name].copy_(torch.from_numpy(arr.copy()))
    return m.eval()


def weights_sha256(weights: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode() + b"\0" + np.ascontiguousarray(weights[k]).tobytes())
    return h.hexdigest()
