"""``qemu-aarch64://?cpu=cortex-a76``: this machine running aarch64 programs under user-mode qemu.

``exec`` prefixes every target program with ``qemu-aarch64 -cpu CPU``; the device reports the
emulated arch and CPU and ``emulated=True`` (its numbers check function, not speed). The CPU
comes from ``cpu=``, else from the target board (rpi4 -> cortex-a72, rpi5 -> cortex-a76,
jetson-orin -> neoverse-n1), else cortex-a76 -- never qemu's ``max`` (SME breaks XNNPACK int8).
"""

from __future__ import annotations

import logging
import shutil

from edgerun.core.paths import edgerun_home
from edgerun.devices.base import DeviceError
from edgerun.devices.local import LocalDevice

log = logging.getLogger("edgerun.devices")


class QemuDevice(LocalDevice):
    transport = "qemu"

    def __init__(self, spec):
        super().__init__(spec)
        if spec.cpu in ("max", "host"):
            log.warning("qemu cpu %r enables SME: XNNPACK int8 kernels compute wrong results under it",
                        spec.cpu)

    @property
    def default_work_dir(self) -> str:  # type: ignore[override]
        return str(edgerun_home() / "devices" / self.emulator)

    @property
    def emulator(self) -> str:
        return f"qemu-{self.spec.arch}"

    @property
    def wrapper(self) -> list[str]:
        return [self.emulator, "-cpu", self.spec.cpu, *self.spec.wrapper]

    def _exec(self, argv, *, timeout, env, cwd):
        if argv[0] == self.emulator and shutil.which(self.emulator) is None:
            raise self._error(DeviceError, f"{self.emulator} is not installed", "exec",
                              hint="Install Debian's qemu-user package (scripts/setup does).")
        return super()._exec(argv, timeout=timeout, env=env, cwd=cwd)
