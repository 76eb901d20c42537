"""``qemu-aarch64://?cpu=cortex-a76``: this machine running aarch64 programs under user-mode qemu.

``exec`` prefixes every target program with ``qemu-aarch64 -cpu CPU``; the device reports the
emulated arch and CPU and ``emulated=True`` (its numbers check function, not speed). The CPU
comes from ``cpu=``, else from the target board (rpi4 -> cortex-a72, rpi5 -> cortex-a76,
jetson-orin -> neoverse-n1), else cortex-a76. ``cpu=max`` (and ``host``) is refused when the spec is
made, before any work, naming the models that work: qemu's ``max`` turns on SME, which breaks XNNPACK int8.
"""

from __future__ import annotations

import difflib
import functools
import shutil
import subprocess
from dataclasses import dataclass
from typing import ClassVar

from edgerun.core.paths import edgerun_home
from edgerun.devices.base import DeviceError
from edgerun.devices.local import LocalDevice
from edgerun.devices.spec import DeviceSpec, address, option, register_transport


# Board -> the CPU qemu emulates for it. Never qemu's default "max": it enables SME, and
# XNNPACK's int8 kernels then compute wrong results under emulation.
TARGET_CPUS = {"rpi4": "cortex-a72", "rpi5": "cortex-a76", "jetson-orin": "neoverse-n1"}
DEFAULT_QEMU_CPU = "cortex-a76"
QEMU_ARCHES = ("aarch64",)
#: CPU models refused up front: ``max`` turns on every feature qemu has (SME among them), ``host``
#: means the machine's own CPU, which user-mode qemu on another arch cannot be.
REFUSED_CPUS = {"max": "it turns on SME, under which XNNPACK's int8 kernels compute wrong results",
                "host": "user-mode qemu cannot emulate this machine's own CPU as an aarch64 core"}


def refused_cpu_message(arch: str, cpu: str) -> str | None:
    """Why ``cpu`` is refused for ``qemu-ARCH`` (None when it is not), naming the models that work."""
    why = REFUSED_CPUS.get(cpu.lower())
    if why is None:
        return None
    boards = ", ".join(f"{model} ({board})" for board, model in TARGET_CPUS.items())
    return (f"qemu-{arch} CPU model {cpu!r} is refused: {why}. Use a real core: {boards}, "
            f"or another model `qemu-{arch} -cpu help` lists (not max or host); without cpu= the target's "
            f"core is used ({DEFAULT_QEMU_CPU} by default)")


@functools.lru_cache(maxsize=None)
def qemu_cpu_models(emulator: str) -> tuple[str, ...] | None:
    """The CPU models ``EMULATOR -cpu help`` lists (asked once per process); None without the emulator."""
    path = shutil.which(emulator)
    if path is None:
        return None
    try:
        proc = subprocess.run([path, "-cpu", "help"], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    models = []
    for line in proc.stdout.splitlines():
        if line.startswith((" ", "\t")) and line.split():
            models.append(line.split()[0])
    return tuple(models) or None


@register_transport
@dataclass(frozen=True)
class QemuSpec(DeviceSpec):
    """``qemu-aarch64://?cpu=cortex-a76``: this machine under user-mode qemu."""

    transport: ClassVar[str] = "qemu"
    device_class: ClassVar[str] = "edgerun.devices.qemu:QemuDevice"
    about: ClassVar[str] = "qemu-aarch64://?cpu=CPU"

    arch: str | None = address()
    cpu: str | None = option()

    @classmethod
    def accepts(cls, scheme: str) -> bool:
        return scheme.startswith("qemu-")

    @classmethod
    def from_uri(cls, parts):
        if parts.netloc or parts.path:
            raise ValueError(f"a qemu URI takes no address: {parts.scheme}://?cpu=CPU")
        return {"arch": parts.scheme[len("qemu-"):]}

    def __post_init__(self):
        super().__post_init__()
        if self.arch not in QEMU_ARCHES:
            raise ValueError(f"unsupported emulated arch {self.arch!r}; supported: {QEMU_ARCHES}")
        if not self.cpu:
            object.__setattr__(self, "cpu", TARGET_CPUS.get(self.target or "", DEFAULT_QEMU_CPU))
        refused = refused_cpu_message(self.arch, self.cpu)
        if refused:
            raise ValueError(refused)

    def check_local(self) -> None:
        """The CPU must be one this machine's qemu lists (when qemu is installed: else exec says so)."""
        models = qemu_cpu_models(f"qemu-{self.arch}")
        if models is not None and self.cpu not in models:
            close = difflib.get_close_matches(self.cpu, models, n=1)
            raise ValueError(f"qemu-{self.arch} has no CPU model {self.cpu!r}"
                             + (f"; did you mean {close[0]}?" if close else "")
                             + f" (qemu-{self.arch} -cpu help lists: {', '.join(models)})")


class QemuDevice(LocalDevice):
    transport = "qemu"

    @property
    def default_work_dir(self) -> str:  # type: ignore[override]
        return str(edgerun_home() / "devices" / self.emulator)

    @property
    def emulator(self) -> str:
        return f"qemu-{self.spec.arch}"

    @property
    def wrapper(self) -> list[str]:
        return [self.emulator, "-cpu", self.spec.cpu, *self.spec.wrapper]

    def _exec(self, argv, *, timeout, env, cwd, on_stdout=None):
        if argv[0] == self.emulator and shutil.which(self.emulator) is None:
            raise self._error(DeviceError, f"{self.emulator} is not installed", "exec",
                              hint="Install Debian's qemu-user package (scripts/setup does).")
        return super()._exec(argv, timeout=timeout, env=env, cwd=cwd, on_stdout=on_stdout)
