"""Targets: where a program is meant to run, and what that implies for lowering.

A target names its CPU architecture and core, the backends whose partitioners lower the graph, the
PT2E quantizer that quantizes for them, the schemes it allows and its default one, the recipes it
forbids, the runtime bundle it needs, and how its numbers are had: ``measure="run"`` (a device runs
the program) or ``"estimate"`` (an estimator turns a compiler's report into figures, e.g. Vela's
cycles for an Ethos-U). Backends, quantizers and estimators are registries of factories, so a new
backend (Ethos-U via TOSA + Vela, Cortex-M, Vulkan, QNN ...) is one registered factory plus the
targets that name it — no existing target changes; :func:`register_target` adds the target.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from edgerun.core.errors import UsageError

from .schemes import SCHEMES

#: backend name -> factory(scheme) returning the list of partitioners for to_edge_transform_and_lower
BACKENDS: dict[str, Callable[[Any], list]] = {}
#: quantizer name -> factory(scheme) returning a PT2E quantizer configured for that scheme
QUANTIZERS: dict[str, Callable[[Any], Any]] = {}
#: estimator name -> estimate(manifest) returning estimated figures for a target that is not run
ESTIMATORS: dict[str, Callable[..., Any]] = {}
#: check name -> check(program_manager, manifest, thresholds) -> Verification, for targets whose programs
#: cannot run on this host (an Ethos-U delegate): the numerics checked another way, labelled as such
FUNCTIONAL_CHECKS: dict[str, Callable[..., Any]] = {}
#: toolchain name -> reports(directory) -> a context manager around lowering that keeps the backend
#: compiler's reports (Vela's CSVs) in the artifact; what it yields has ``facts()`` for the manifest
COMPILER_REPORTS: dict[str, Callable[..., Any]] = {}
#: lowering name -> lower(exported, target, scheme) -> export.lowering.Lowered, for a backend that is not a
#: partitioner (Cortex-M: to_edge, then ExecuTorch's Cortex-M pass manager swaps in CMSIS-NN operators)
LOWERINGS: dict[str, Callable[..., Any]] = {}
MEASURES = ("run", "estimate")


def _registrar(table: dict, name: str):
    def deco(factory):
        table[name] = factory
        return factory
    return deco


def register_backend(name: str):
    return _registrar(BACKENDS, name)


def register_quantizer(name: str):
    """Decorator: ``factory(scheme) -> PT2E quantizer`` (a ``torchao.quantization.pt2e`` Quantizer)."""
    return _registrar(QUANTIZERS, name)


def register_estimator(name: str):
    """Decorator: ``estimate(manifest, **settings) -> figures`` for targets with ``measure="estimate"``."""
    return _registrar(ESTIMATORS, name)


@register_backend("xnnpack")
def _xnnpack_partitioners(scheme) -> list:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]


@register_quantizer("xnnpack")
def _xnnpack_quantizer(scheme):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=getattr(scheme, "per_channel", True),
                                                           is_dynamic=bool(getattr(scheme, "dynamic", False))))
    return quantizer


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str                      # "x86_64" | "aarch64" | "armv8m" ...
    cpu: str                       # core the target is tuned for / emulated with
    backends: tuple[str, ...]      # lowering backends, in partitioning order
    default_scheme: str
    allowed_schemes: tuple[str, ...]
    bundle_variant: str = "full"   # which runtime bundle variant runs its programs
    qemu_cpu: str | None = None    # qemu-aarch64 -cpu model that emulates the board faithfully
    # graph rewrites applied before quantization and lowering (export/rewrites.py); part of the recipe
    graph_rewrites: tuple[str, ...] = ()
    quantizer: str | None = None   # QUANTIZERS name: the PT2E quantizer for its backends (None: none)
    measure: str = "run"           # "run": a device runs it | "estimate": an estimator reports figures
    estimator: str | None = None   # ESTIMATORS name, when measure is "estimate"
    forbidden_recipes: tuple[str, ...] = ()   # recipes (not quantize ones: allowed_schemes) it refuses
    # the environment its exports run in when edgerun's venv cannot import its backend (export/arm/toolchain.py)
    toolchain: str | None = None
    # settings its backend is compiled with (an Ethos-U's system config and memory mode), as text
    compile_options: tuple[tuple[str, str], ...] = ()
    # FUNCTIONAL_CHECKS name: its programs cannot run on this host, so verification runs this instead
    functional_check: str | None = None
    llm: bool = True                          # False: LLMs are refused on it (a microcontroller)
    lowering: str | None = None               # LOWERINGS name: lowered by it instead of by partitioners

    def __post_init__(self) -> None:
        if self.quantizer is not None and self.quantizer not in QUANTIZERS:
            raise ValueError(f"target {self.name}: unknown quantizer {self.quantizer!r}")
        if self.measure not in MEASURES:
            raise ValueError(f"target {self.name}: measure must be one of {MEASURES}, got {self.measure!r}")
        if self.measure == "estimate" and self.estimator not in ESTIMATORS:
            raise ValueError(f"target {self.name}: measure 'estimate' needs a registered estimator, "
                             f"got {self.estimator!r} (known: {', '.join(ESTIMATORS) or 'none'})")
        unknown = [s for s in self.allowed_schemes if s not in SCHEMES]
        if unknown:
            raise ValueError(f"target {self.name}: unknown schemes {unknown}")
        if self.default_scheme not in self.allowed_schemes:
            raise ValueError(f"target {self.name}: default scheme {self.default_scheme} is not allowed")
        from .rewrites import REWRITES

        odd = [r for r in self.graph_rewrites if r not in REWRITES]
        if odd:
            raise ValueError(f"target {self.name}: unknown graph rewrites {odd}")
        if self.functional_check is not None and self.functional_check not in FUNCTIONAL_CHECKS:
            raise ValueError(f"target {self.name}: unknown functional check {self.functional_check!r}")
        if self.lowering is not None and self.lowering not in LOWERINGS:
            raise ValueError(f"target {self.name}: unknown lowering {self.lowering!r}")
        missing = [b for b in self.backends if b not in BACKENDS]
        if missing:
            raise ValueError(f"target {self.name}: unknown backends {missing}")

    def partitioners(self, scheme) -> list:
        parts: list = []
        for backend in self.backends:
            parts.extend(BACKENDS[backend](scheme))
        return parts

    def make_quantizer(self, scheme):
        """The PT2E quantizer this target names, configured for ``scheme``."""
        if self.quantizer is None:
            raise UsageError(f"target {self.name!r} names no quantizer, so scheme {scheme.name!r} cannot run on it.",
                             hint=f"Schemes legal on {self.name}: {', '.join(self.allowed_schemes)}.")
        return QUANTIZERS[self.quantizer](scheme)

    def estimate(self, manifest, **settings):
        """Estimated figures for an artifact of this target (``measure="estimate"`` targets only)."""
        if self.measure != "estimate":
            raise UsageError(f"target {self.name!r} is measured by running its programs, not estimated.")
        return ESTIMATORS[self.estimator](manifest, **settings)

    def check_scheme(self, scheme_name: str) -> None:
        if scheme_name not in self.allowed_schemes:
            raise UsageError(
                f"target {self.name!r} does not allow scheme {scheme_name!r}.",
                hint=f"Schemes legal on {self.name}: {', '.join(self.allowed_schemes)}.",
            )

    def check_recipe(self, chain) -> None:
        """A recipe chain's quantize step must be an allowed scheme; its other steps must not be forbidden."""
        self.check_scheme(chain.quantize.name)
        bad = [s.name for s in chain.transforms if s.name in self.forbidden_recipes]
        if bad:
            raise UsageError(f"target {self.name!r} does not allow recipe {bad[0]!r}.",
                             hint=f"{self.name} forbids: {', '.join(self.forbidden_recipes)}.")

    def check_llm(self) -> None:
        if not self.llm:
            takers = [t.name for t in TARGETS.values() if t.llm and t.name != "portable"]
            raise UsageError(f"target {self.name!r} ({self.description}) does not take LLMs: its memory holds no "
                             "LLM's weights and KV cache.", hint=f"Targets for LLMs: {', '.join(takers)}.")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["compile_options"] = dict(self.compile_options)
        return d


_XNNPACK_SCHEMES = ("fp32", "int8", "int8-dynamic", "8da4w")
_XNNPACK_REWRITES = ("sdpa", "layer_norm", "select", "mean")

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("host", "this x86_64 machine's CPU (XNNPACK)", "x86_64", "native", ("xnnpack",),
               "fp32", _XNNPACK_SCHEMES, graph_rewrites=_XNNPACK_REWRITES, quantizer="xnnpack"),
        Target("rpi4", "Raspberry Pi 4 (Cortex-A72, XNNPACK)", "aarch64", "cortex-a72", ("xnnpack",),
               "int8", _XNNPACK_SCHEMES, qemu_cpu="cortex-a72", graph_rewrites=_XNNPACK_REWRITES,
               quantizer="xnnpack"),
        Target("rpi5", "Raspberry Pi 5 (Cortex-A76, XNNPACK)", "aarch64", "cortex-a76", ("xnnpack",),
               "int8", _XNNPACK_SCHEMES, qemu_cpu="cortex-a76", graph_rewrites=_XNNPACK_REWRITES,
               quantizer="xnnpack"),
        Target("jetson-orin", "NVIDIA Jetson Orin CPU (Cortex-A78AE, XNNPACK)", "aarch64", "cortex-a78ae",
               ("xnnpack",), "int8", _XNNPACK_SCHEMES, qemu_cpu="neoverse-n1", graph_rewrites=_XNNPACK_REWRITES,
               quantizer="xnnpack"),
        Target("android-arm64", "Android arm64 phone CPU (XNNPACK)", "aarch64", "cortex-a76", ("xnnpack",),
               "int8", _XNNPACK_SCHEMES, qemu_cpu="cortex-a76", graph_rewrites=_XNNPACK_REWRITES,
               quantizer="xnnpack"),
        Target("portable", "no delegate: portable/optimized kernels only (debugging, reference)", "any",
               "any", (), "fp32", ("fp32",)),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}.", hint=f"Known targets: {', '.join(TARGETS)}.") from None


class _TargetRegistration:
    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> Target:
        return TARGETS[self.name]

    def __exit__(self, *exc) -> None:
        unregister_target(self.name)


def register_target(target: Target) -> _TargetRegistration:
    """Add a target (refused if its name is taken by another); as a context manager it is removed on exit."""
    other = TARGETS.get(target.name)
    if other is not None and other != target:
        raise ValueError(f"target name {target.name!r} is taken")
    TARGETS[target.name] = target
    return _TargetRegistration(target.name)


def unregister_target(name: str) -> None:
    TARGETS.pop(name, None)


def legal_pairs() -> list[tuple[str, str]]:
    """Every (target, scheme) combination the registry declares legal."""
    return [(t.name, s) for t in TARGETS.values() for s in t.allowed_schemes]
