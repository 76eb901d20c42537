"""``estimate://ethos-u55-128?clock=500e6&sram=512KiB&flash=2MiB``: an estimator standing in for a device.

One estimate device per target whose programs are estimated, not run here (``measure="estimate"``: the
Ethos-U NPUs, Vela's performance model). ``profile`` and ``bench`` give an artifact for that target to it and
get the same estimated run record ``edgerun estimate`` makes (:func:`edgerun.estimate.estimated_record`):
nothing is deployed or run. Options: ``clock`` (Hz; default the system config's), ``sram`` and ``flash``
(the board's sizes: does the program fit). The system config and memory mode are the artifact's (Vela
planned the program for them).

A Cortex-M target has no cycle model: ``estimate://cortex-m55?sram=512KiB&flash=2MiB`` answers its memory
and fit alone (the program's tensor arena and flash against the board's; ``edgerun.estimate.MemoryFit``), no
time, nothing stored; a clock is refused for it. A board on ``serial://`` would time it. Opening an estimate
device as a device (deploy, a shell, a probe) is refused: it runs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import parse_qsl

from edgerun.core.errors import DeviceError, UsageError
from edgerun.devices.spec import DeviceSpec, option, register_transport


@register_transport
@dataclass(frozen=True)
class EstimateSpec(DeviceSpec):
    """``estimate://TARGET?clock=HZ&sram=SIZE&flash=SIZE``: the target's estimator (or, with no cycle model, its
    memory fit), not a device."""

    transport: ClassVar[str] = "estimate"
    device_class: ClassVar[str] = "edgerun.devices.estimate:EstimateDevice"
    about: ClassVar[str] = "estimate://TARGET?clock=HZ&sram=512KiB&flash=2MiB"

    clock: float | None = option()   # Hz
    sram: str | None = option()      # the board's SRAM, e.g. 512KiB
    flash: str | None = option()     # the board's flash, e.g. 2MiB

    @classmethod
    def from_uri(cls, parts) -> dict:
        if parts.path or not parts.netloc or "@" in parts.netloc or ":" in parts.netloc:
            raise ValueError("an estimate URI names the target it estimates: estimate://TARGET "
                             "(an Ethos-U target such as ethos-u55-128; `edgerun targets` lists them)")
        given = dict(parse_qsl(parts.query, keep_blank_values=True)).get("target")
        if given is not None and given != parts.netloc:
            raise ValueError(f"the URI names target {parts.netloc!r} and its query target={given!r}; give one")
        return {"target": parts.netloc}

    def __post_init__(self):
        super().__post_init__()
        from edgerun.core.text import parse_size

        # which targets are estimated is the hall's to check (edgerun.estimate.check_estimate_spec): the
        # devices layer knows no targets
        if self.clock is not None and not (1e6 <= self.clock <= 1e10):
            raise ValueError(f"clock {self.clock:g} Hz is not an NPU clock; give it in Hz, e.g. clock=500e6")
        for key in ("sram", "flash"):
            if getattr(self, key) is not None:
                try:
                    parse_size(getattr(self, key), key)
                except UsageError as exc:
                    raise ValueError(f"{exc.message} {exc.hint or ''}".strip()) from None

    def board(self) -> dict:
        """``clock_hz``/``sram``/``flash`` as :func:`edgerun.estimate.estimated_record` takes them."""
        from edgerun.core.text import parse_size

        return {"clock_hz": self.clock,
                "sram": parse_size(self.sram, "sram") if self.sram is not None else None,
                "flash": parse_size(self.flash, "flash") if self.flash is not None else None}


class EstimateDevice:
    """What opening an estimate device gives: a refusal. It deploys and runs nothing."""

    transport = "estimate"

    def __init__(self, spec: EstimateSpec):
        raise DeviceError("an estimate device runs nothing: it turns an artifact's compiler report into an "
                          "estimated record", device=spec.ref, stage="connect",
                          hint=f"Use it with `edgerun profile ARTIFACT --device {spec.ref}` or `edgerun bench ... "
                               f"--devices {spec.ref}` (or `edgerun estimate ARTIFACT`); deploy, run and probe need "
                               "a real device.")


__all__ = ["EstimateSpec", "EstimateDevice"]
