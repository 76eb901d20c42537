"""What a device is (:class:`DeviceInfo`), and what running its programs through qemu makes it.

A leaf module: :mod:`~edgerun.devices.base` (the interface) and :mod:`~edgerun.devices.probe`
(the script that fills it in) both import it, and neither imports the other's internals.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class DeviceInfo:
    """What a probe found. ``None`` means "not readable on this device", never a guess."""

    arch: str
    cpu_model: str | None = None
    cores: int | None = None
    mem_total_bytes: int | None = None
    mem_available_bytes: int | None = None
    os: str | None = None
    kernel: str | None = None
    board: str | None = None
    governor: str | None = None
    freq_khz: int | None = None
    max_freq_khz: int | None = None
    temperature_c: float | None = None
    free_bytes: int | None = None
    emulated: bool = False
    emulator: str | None = None  # e.g. "qemu-aarch64 -cpu cortex-a76"
    host_cpu_model: str | None = None  # the real CPU underneath an emulated one
    transport: str = "local"
    # the CPU features that decide which kernels pay (see SPEED_FEATURES); None = not readable
    cpu_features: tuple[str, ...] | None = None
    # The machine's load when it was probed (just before a run), so comparisons can tell a changed
    # program from a changed machine. ``load_1m``: /proc/loadavg's 1-minute average (runnable tasks;
    # compare with ``cores``). ``cpu_busy``/``cpu_steal``: the share of all cores' time, over a short
    # window read from /proc/stat, that was busy (not idle/iowait) / stolen by a hypervisor. For an
    # emulated device these are the host's.
    load_1m: float | None = None
    cpu_busy: float | None = None
    cpu_steal: float | None = None
    # A device of a labgrid lab (labgrid://): the place it is and the exporter whose resource reached it.
    lab_place: str | None = None
    lab_exporter: str | None = None

    @property
    def load_per_core(self) -> float | None:
        """``load_1m`` / ``cores`` (1.0: as many runnable tasks as cores); None when either is unknown."""
        if self.load_1m is None or not self.cores:
            return None
        return self.load_1m / self.cores

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["cpu_features"] = list(self.cpu_features) if self.cpu_features is not None else None
        out["int8_dot_product"] = int8_dot_product(self.arch, self.cpu_features)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> "DeviceInfo":
        """A stored or imported device section back as a DeviceInfo: a field of the wrong type reads as
        not known (``None``, or the field's default), never as a guess; keys it does not know are ignored
        (``int8_dot_product`` is derived)."""
        d = d if isinstance(d, Mapping) else {}
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            v = d.get(f.name)
            kind = _FIELD_KINDS.get(f.name, str)
            if f.name == "cpu_features":
                v = tuple(x for x in v if isinstance(x, str)) if isinstance(v, (list, tuple)) else None
            elif kind is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            elif not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
                v = None
            if v is None and f.default is not dataclasses.MISSING:
                v = f.default
            kw[f.name] = v if v is not None or f.name != "arch" else ""
        return cls(**kw)


_FIELD_KINDS: dict[str, type] = {"cores": int, "mem_total_bytes": int, "mem_available_bytes": int, "freq_khz": int,
                                 "max_freq_khz": int, "free_bytes": int, "temperature_c": float, "emulated": bool,
                                 "load_1m": float, "cpu_busy": float, "cpu_steal": float}


# The /proc/cpuinfo flags that decide whether int8 (and fp16/bf16) kernels beat fp32 on a CPU. Without an
# int8 dot-product instruction (x86: AVX-512 VNNI or AVX-VNNI; Arm: dotprod = "asimddp", or i8mm) an
# int8 GEMM multiplies in 16-bit lanes and adds in extra steps, and is often no faster than fp32.
SPEED_FEATURES = {
    "x86_64": ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
               "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16"),
    "aarch64": ("asimd", "asimdhp", "fphp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme"),
}
INT8_DOT = {"x86_64": ("avx512_vnni", "avx_vnni"), "aarch64": ("asimddp", "i8mm")}

# What qemu-aarch64's CPU models offer (from the Arm core manuals), for emulated devices, whose own
# /proc/cpuinfo is the host's.
CORE_FEATURES = {
    "cortex-a53": ("asimd",), "cortex-a57": ("asimd",), "cortex-a72": ("asimd",),
    "cortex-a55": ("asimd", "asimdhp", "fphp", "asimddp"),
    "cortex-a76": ("asimd", "asimdhp", "fphp", "asimddp"),
    "cortex-a78ae": ("asimd", "asimdhp", "fphp", "asimddp"),
    "neoverse-n1": ("asimd", "asimdhp", "fphp", "asimddp"),
    "neoverse-v1": ("asimd", "asimdhp", "fphp", "asimddp", "i8mm", "bf16", "sve"),
    "cortex-a710": ("asimd", "asimdhp", "fphp", "asimddp", "i8mm", "bf16", "sve", "sve2"),
    "neoverse-n2": ("asimd", "asimdhp", "fphp", "asimddp", "i8mm", "bf16", "sve", "sve2"),
}


def speed_features(arch: str, flags: Sequence[str]) -> tuple[str, ...]:
    """The subset of ``flags`` (a cpuinfo flags/Features list) that :data:`SPEED_FEATURES` names."""
    have = set(flags)
    return tuple(f for f in SPEED_FEATURES.get(arch, ()) if f in have)


def int8_dot_product(arch: str, features: Sequence[str] | None) -> bool | None:
    """Whether the CPU has an int8 dot-product instruction; None when its features are unknown."""
    if features is None or arch not in INT8_DOT:
        return None
    return any(f in features for f in INT8_DOT[arch])


_QEMU_RE = re.compile(r"qemu-(aarch64|arm|riscv64|x86_64)(?:-static)?$")


def apply_wrapper_emulation(info: DeviceInfo, wrapper: Sequence[str]) -> DeviceInfo:
    """A device whose programs run through ``qemu-ARCH -cpu X`` is an emulated ARCH/X device."""
    if not wrapper:
        return info
    m = _QEMU_RE.search(Path(wrapper[0]).name)
    if not m:
        return info
    cpu = None
    if "-cpu" in wrapper[:-1]:
        cpu = wrapper[list(wrapper).index("-cpu") + 1]
    arch = m.group(1)
    features = CORE_FEATURES.get((cpu or "").lower()) if arch == "aarch64" else None
    return dataclasses.replace(
        info, arch=arch, cpu_model=cpu or "qemu default CPU", emulated=True, cpu_features=features,
        emulator=shlex.join(wrapper), host_cpu_model=info.cpu_model,
        governor=None, freq_khz=None, max_freq_khz=None,
    )


__all__ = ["DeviceInfo", "apply_wrapper_emulation", "speed_features", "int8_dot_product", "SPEED_FEATURES"]
