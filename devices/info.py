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
from typing import Sequence


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

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


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
    return dataclasses.replace(
        info, arch=m.group(1), cpu_model=cpu or "qemu default CPU", emulated=True,
        emulator=shlex.join(wrapper), host_cpu_model=info.cpu_model,
        governor=None, freq_khz=None, max_freq_khz=None,
    )


__all__ = ["DeviceInfo", "apply_wrapper_emulation"]
