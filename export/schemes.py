"""Quantization schemes: the quantize-kind recipes (:mod:`.recipes`), each with its model handler beside it.

A scheme is a small frozen dataclass (torchao's habit: one verb, typed nouns). ``name`` is the
registry key users type; every other field is an option with a default. ``recipe_hash`` is the
sha256 of the canonical JSON of (schema version, name, options): two exports with the same hash
were made with the same quantization recipe.

Thresholds: each scheme says how close its program must stay to eager PyTorch for verification
to pass (SNR in dB and cosine similarity, on every output of every test vector) and, for LLMs, how
far the program's held-out perplexity may move from eager fp32's (``ppl_tolerance``). The LLM
handlers are in :mod:`.llm.quantize`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar

from edgerun.core.errors import UsageError

from . import rewrites
from .errors import ExportError
from .recipes import RECIPE_SCHEMA_VERSION, SCHEMES, Recipe, RecipeContext, RecipeResult, recipe_handler, register_recipe

__all__ = ["RECIPE_SCHEMA_VERSION", "SCHEMES", "Scheme", "Fp32", "Int8Static", "Int8Dynamic",
           "Int8DynAct4BitWeight", "make_scheme"]


@dataclasses.dataclass(frozen=True)
class Scheme(Recipe):
    """A quantize-kind recipe."""

    kind: ClassVar[str] = "quantize"
    quantized: ClassVar[bool] = True
    #: verification thresholds (overridable per export)
    min_snr_db: ClassVar[float]
    min_cosine: ClassVar[float]


@dataclasses.dataclass(frozen=True)
class Fp32(Scheme):
    name: ClassVar[str] = "fp32"
    description: ClassVar[str] = "float32, no quantization"
    quantized: ClassVar[bool] = False
    noop: ClassVar[bool] = True
    min_snr_db: ClassVar[float] = 40.0
    min_cosine: ClassVar[float] = 0.9999
    ppl_tolerance: ClassVar[float] = 0.01


@dataclasses.dataclass(frozen=True)
class Int8Static(Scheme):
    """PT2E static int8: the target's quantizer (XNNPACKQuantizer), symmetric, per-channel weights,
    calibrated activations."""

    name: ClassVar[str] = "int8"
    description: ClassVar[str] = "int8 static (PT2E, symmetric per-channel weights, calibrated activations)"
    min_snr_db: ClassVar[float] = 10.0
    min_cosine: ClassVar[float] = 0.95
    uses_calibration: ClassVar[bool] = True
    dynamic: ClassVar[bool] = False

    calibration_samples: int = 16
    per_channel: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
            raise ValueError(f"calibration_samples must be a positive integer, got {self.calibration_samples!r}")


@dataclasses.dataclass(frozen=True)
class Int8Dynamic(Scheme):
    """PT2E dynamic int8: weights int8 per-channel, activations quantized at run time (linear layers).
    One calibration input runs through the prepared graph (its weight observers)."""

    name: ClassVar[str] = "int8-dynamic"
    description: ClassVar[str] = "int8 dynamic (PT2E, weights per-channel, activations quantized at run time)"
    min_snr_db: ClassVar[float] = 12.0
    min_cosine: ClassVar[float] = 0.97
    ppl_tolerance: ClassVar[float] = 0.10
    uses_calibration: ClassVar[bool] = True
    dynamic: ClassVar[bool] = True

    per_channel: bool = True


@dataclasses.dataclass(frozen=True)
class Int8DynAct4BitWeight(Scheme):
    """torchao int8 dynamic activations + 4-bit grouped weights on linear layers (LLM-style)."""

    name: ClassVar[str] = "8da4w"
    description: ClassVar[str] = "int8 dynamic activations, 4-bit grouped weights (torchao; linear layers)"
    min_snr_db: ClassVar[float] = 6.0
    min_cosine: ClassVar[float] = 0.85
    ppl_tolerance: ClassVar[float] = 0.25
    positional: ClassVar[tuple[str, ...]] = ("group_size",)      # 8da4w(64)
    later_options: ClassVar[tuple[str, ...]] = ("int8_layers",)

    group_size: int = 32
    embedding_bits: int = 8   # LLMs: the token embedding table's codes (4 or 8 bits); other models have none
    # LLMs: the linear layers kept at int8 per-channel ("/"-separated of INT8_LAYER_KINDS, or "none": every
    # linear int4). The default keeps those llama.cpp's Q4_K_M keeps wider, and the LM head.
    int8_layers: str = "attention/ffn_down/head"

    def __post_init__(self) -> None:
        if not isinstance(self.group_size, int) or self.group_size < 1 or self.group_size & (self.group_size - 1):
            raise ValueError(f"group_size must be a positive power of two, got {self.group_size!r}")
        if self.embedding_bits not in (4, 8):
            raise ValueError(f"embedding_bits must be 4 or 8, got {self.embedding_bits!r}")
        self.int8_layer_kinds()   # raises on an unknown kind

    def int8_layer_kinds(self) -> frozenset[str]:
        """The kinds of :attr:`int8_layers` (empty for ``none``)."""
        text = str(self.int8_layers).strip().lower()
        if text in ("none", ""):
            return frozenset()
        kinds = frozenset(k.strip() for k in text.replace("|", "/").split("/") if k.strip())
        unknown = sorted(kinds - set(INT8_LAYER_KINDS))
        if unknown:
            raise ValueError(f"int8_layers names {', '.join(unknown)}; it takes {'/'.join(INT8_LAYER_KINDS)} "
                             "(any of them, '/'-separated) or none")
        return kinds


#: 8da4w LLMs: the kinds of linear layer ``int8_layers`` can keep at int8
INT8_LAYER_KINDS = ("attention", "ffn_down", "ffn_up", "head")


for _cls in (Fp32, Int8Static, Int8Dynamic, Int8DynAct4BitWeight):   # in this order in listings
    register_recipe(_cls)


def make_scheme(name: str, **options: Any) -> Scheme:
    """Build a scheme by registry name; unknown names and options are a :class:`UsageError`."""
    try:
        cls = SCHEMES[name]
    except KeyError:
        raise UsageError(f"unknown scheme {name!r}.", hint=f"Known schemes: {', '.join(SCHEMES)}.") from None
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise UsageError(
            f"scheme {name!r} takes no option {', '.join(unknown)}.",
            hint=f"Its options: {', '.join(sorted(fields)) or 'none'}.",
        )
    try:
        return cls(**given)
    except ValueError as exc:
        raise UsageError(f"scheme {name!r}: {exc}.") from None


# ------------------------------------------------------------------------------ model handlers
@recipe_handler(Fp32)
@recipe_handler(Fp32, llm=True)
def _fp32(recipe: Fp32, ctx: RecipeContext) -> RecipeResult:
    return RecipeResult(ctx.module)


#: graph rewrites a PT2E int8 recipe applies after quantizing, so their arithmetic stays float
_FLOAT_REWRITES = ("layer_norm",)


@recipe_handler(Int8Static)
@recipe_handler(Int8Dynamic)
def _pt2e_int8(recipe: Int8Static | Int8Dynamic, ctx: RecipeContext) -> RecipeResult:
    """PT2E: capture, prepare with the target's quantizer, calibrate, convert, capture again."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from . import quant_report

    quantizer = ctx.target.make_quantizer(recipe)
    label = type(quantizer).__name__
    # A layer norm stays float, as LiteRT's int8 program keeps it: quantized after the
    # layer_norm rewrite, its mean, variance and rsqrt became int8 adds and multiplies, each behind a
    # quantize/dequantize pair (the peers' text encoder: 20 conversions, 29 dB against 38 for LiteRT). The
    # quantizer does not annotate aten.layer_norm, so the rewrite runs after conversion, on float values.
    later = tuple(r for r in _FLOAT_REWRITES if r in ctx.target.graph_rewrites)
    # the Arm quantizers' annotation passes (DecomposeAdaptiveAvgPool2dPass ...) fail on the input-guard node
    # that an ExportedProgram's module() adds, so an Arm target's graph is taken without it
    prepared = prepare_pt2e(ctx.capture(ctx.module, without=later).module(check_guards=ctx.target.toolchain != "arm"),
                            quantizer)
    used = ctx.calibration(getattr(recipe, "calibration_samples", 16))
    if recipe.dynamic:
        used = used[:1]
    with torch.no_grad():
        for sample in used:
            prepared(*sample)
    converted = convert_pt2e(prepared)
    exported = rewrites.apply(torch.export.export(converted, tuple(ctx.example)), later)
    return RecipeResult(ctx.module, exported, {"calibration_samples": 0 if recipe.dynamic else len(used),
                                               **quant_report.describe(recipe.name, label, ctx.module, exported)})


@recipe_handler(Int8DynAct4BitWeight)
def _8da4w(recipe: Int8DynAct4BitWeight, ctx: RecipeContext) -> RecipeResult:
    """torchao's Int8DynamicActivationIntxWeightConfig (int4, PerGroup) on every linear layer it can take."""
    import torch
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.utils import unwrap_tensor_subclass

    from . import quant_report

    model, gs = ctx.module, recipe.group_size

    def quantizable(m, fqn: str = "") -> bool:
        # MultiheadAttention's out_proj is applied through F.multi_head_attention_forward with
        # its raw weight, which a quantized tensor subclass cannot stand in for (torch says so
        # by the class name); PerGroup needs the input width to be a multiple of the group.
        return (isinstance(m, torch.nn.Linear) and not isinstance(m, NonDynamicallyQuantizableLinear)
                and m.in_features % gs == 0)

    eligible = [n for n, m in model.named_modules() if quantizable(m)]
    if not eligible:
        raise ExportError(_no_8da4w_layer(model, gs), stage="quantize", hint=_no_8da4w_hint(model, gs))
    qmodel = copy.deepcopy(model)
    quantize_(qmodel, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(gs)),
              quantizable)
    unwrap_tensor_subclass(qmodel)
    total = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    exported = ctx.capture(qmodel)
    return RecipeResult(qmodel, exported, {
        "quantized_linear_layers": len(eligible), "linear_layers": total,
        **quant_report.describe(recipe.name, "8da4w (it quantizes linear layers only)", model, exported)})


def _linears(model) -> list:
    import torch
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)
            and not isinstance(m, NonDynamicallyQuantizableLinear)]


def _no_8da4w_layer(model, gs: int) -> str:
    import torch

    if not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
        return "this model has no nn.Linear layers; 8da4w quantizes only linear layers."
    if not _linears(model):
        return ("this model's only linear layers are attention output projections (nn.MultiheadAttention's "
                "out_proj), which 8da4w cannot quantize; it quantizes only other linear layers.")
    widths = sorted({m.in_features for m in _linears(model)})
    return (f"scheme 8da4w found no linear layer whose input width is a multiple of group_size={gs} "
            f"(input widths: {', '.join(map(str, widths))}).")


def _no_8da4w_hint(model, gs: int) -> str:
    linears = _linears(model)
    fitting = [g for g in (256, 128, 64, 32, 16, 8, 4, 2) if g < gs and any(m.in_features % g == 0 for m in linears)]
    if linears and fitting:
        return f"Use --group-size {fitting[0]}, or int8 / int8-dynamic for this model."
    return "Use int8 or int8-dynamic for this model."
