"""Targets: where a program is meant to run, and what that implies for lowering.

A target names its CPU architecture and core, the backends whose partitioners lower the graph,
the schemes it allows and its default one, and the runtime bundle it needs. Backends are a
registry of partitioner factories, so a new backend (Ethos-U via TOSA + Vela, Cortex-M, Vulkan,
QNN ...) is one registered factory plus the targets that name it — no existing target changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from edgerun.core.errors import UsageError

from .schemes import SCHEMES

#: backend name -> factory(scheme) returning the list of partitioners for to_edge_transform_and_lower
BACKENDS: dict[str, Callable[[Any], list]] = {}


def register_backend(name: str):
    def deco(factory):
        BACKENDS[name] = factory
        return factory
    return deco


@register_backend("xnnpack")
def _xnnpack_partitioners(scheme) -> list:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]


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

    def __post_init__(self) -> None:
        unknown = [s for s in self.allowed_schemes if s not in SCHEMES]
        if unknown:
            raise ValueError(f"target {self.name}: unknown schemes {unknown}")
        if self.default_scheme not in self.allowed_schemes:
            raise ValueError(f"target {self.name}: default scheme {self.default_scheme} is not allowed")
        from .rewrites import REWRITES

        odd = [r for r in self.graph_rewrites if r not in REWRITES]
        if odd:
            raise ValueError(f"target {self.name}: unknown graph rewrites {odd}")
        missing = [b for b in self.backends if b not in BACKENDS]
        if missing:
            raise ValueError(f"target {self.name}: unknown backends {missing}")

    def partitioners(self, scheme) -> list:
        parts: list = []
        for backend in self.backends:
            parts.extend(BACKENDS[backend](scheme))
        return parts

    def check_scheme(self, scheme_name: str) -> None:
        if scheme_name not in self.allowed_schemes:
            raise UsageError(
                f"target {self.name!r} does not allow scheme {scheme_name!r}.",
                hint=f"Schemes legal on {self.name}: {', '.join(self.allowed_schemes)}.",
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_XNNPACK_SCHEMES = ("fp32", "int8", "int8-dynamic", "8da4w")
_XNNPACK_REWRITES = ("sdpa", "layer_norm", "select", "mean")

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("host", "this x86_64 machine's CPU (XNNPACK)", "x86_64", "native", ("xnnpack",),
               "fp32", _XNNPACK_SCHEMES, graph_rewrites=_XNNPACK_REWRITES),
        Target("rpi4", "Raspberry Pi 4 (Cortex-A72, XNNPACK)", "aarch64", "cortex-a72", ("xnnpack",),
               "int8", _XNNPACK_SCHEMES, qemu_cpu="cortex-a72", graph_rewrites=_XNNPACK_REWRITES),
        Target("rpi5", "Raspberry Pi 5 (Cortex-A76, XNNPACK)", "aarch64", "cortex-a76", ("xnnpack",),
               "int8", _XNNPACK_SCHEMES, qemu_cpu="cortex-a76", graph_rewrites=_XNNPACK_REWRITES),
        Target("jetson-orin", "NVIDIA Jetson Orin CPU (Cortex-A78AE, XNNPACK)", "aarch64", "cortex-a78ae",
               ("xnnpack",), "int8", _XNNPACK_SCHEMES, qemu_cpu="neoverse-n1", graph_rewrites=_XNNPACK_REWRITES),
        Target("android-arm64", "Android arm64 phone CPU (XNNPACK)", "aarch64", "cortex-a76", ("xnnpack",),
               "int8", _XNNPACK_SCHEMES, qemu_cpu="cortex-a76", graph_rewrites=_XNNPACK_REWRITES),
        Target("portable", "no delegate: portable/optimized kernels only (debugging, reference)", "any",
               "any", (), "fp32", ("fp32",)),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}.", hint=f"Known targets: {', '.join(TARGETS)}.") from None


def legal_pairs() -> list[tuple[str, str]]:
    """Every (target, scheme) combination the registry declares legal."""
    return [(t.name, s) for t in TARGETS.values() for s in t.allowed_schemes]
