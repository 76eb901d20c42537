"""Vela's reports, read strictly: the summary CSV (``out_summary_<system config>.csv``) and the per-layer
CSV (``out_per-layer.csv``, written with ``--verbose-performance``) of each Ethos-U partition.

They are untrusted input once they sit in an artifact: size-bounded, every needed column present, numbers
finite and non-negative, cycle counts consistent (NPU cycles within the total; the inference time Vela
states agrees with total cycles / core clock), text fields plain. Anything else is a :class:`VelaReportError`
naming the file and the field. Vela's figures are **estimates** from its performance model, not
measurements.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import Any

MAX_CSV_BYTES = 4 << 20
#: the stated inference time must equal cycles_total / core_clock this closely (relative)
TIME_TOLERANCE = 1e-3
_TEXT = ("accelerator_configuration", "system_config", "memory_mode")
_INTS = ("cycles_total", "cycles_npu", "nn_macs", "batch_size")
_FLOATS = ("core_clock", "inference_time", "sram_memory_used", "dram_memory_used", "on_chip_flash_memory_used",
           "off_chip_flash_memory_used")


class VelaReportError(ValueError):
    """A Vela CSV that is not what Vela writes (message names the file and field)."""


@dataclasses.dataclass(frozen=True)
class VelaSummary:
    """One partition's summary. Memory in bytes (Vela writes KiB)."""

    accelerator: str
    system_config: str
    memory_mode: str
    clock_hz: float
    cycles_total: int
    cycles_npu: int
    inference_seconds: float
    sram_bytes: int
    dram_bytes: int
    on_chip_flash_bytes: int
    off_chip_flash_bytes: int
    nn_macs: int


@dataclasses.dataclass(frozen=True)
class VelaLayer:
    op: str
    name: str
    target: str          # NPU | CPU
    cycles: int
    macs: int
    mac_util: float      # percent of the NPU's peak MACs/cycle while this layer runs


def _read(path: Path) -> list[dict[str, str]]:
    size = path.stat().st_size
    if size > MAX_CSV_BYTES:
        raise VelaReportError(f"{path.name} is {size:,} bytes, more than {MAX_CSV_BYTES:,}")
    text = path.read_bytes().decode("utf-8", "strict")
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise VelaReportError(f"{path.name} has no rows")
    return rows


def _num(row: dict, key: str, where: str, *, integer: bool) -> Any:
    raw = row.get(key)
    if raw is None or raw == "":
        raise VelaReportError(f"{where}: column {key} is missing")
    try:
        v = float(raw)
    except ValueError:
        raise VelaReportError(f"{where}: {key} is {raw!r:.40}, not a number") from None
    if not math.isfinite(v) or v < 0:
        raise VelaReportError(f"{where}: {key} is {raw!r:.40}; expected a finite number >= 0")
    if integer:
        if v != int(v):
            raise VelaReportError(f"{where}: {key} is {raw!r:.40}; expected a whole number")
        return int(v)
    return v


def _text(row: dict, key: str, where: str) -> str:
    v = row.get(key)
    if not v or len(v) > 128 or not all(c.isalnum() or c in "_-." for c in v):
        raise VelaReportError(f"{where}: {key} is {v!r:.60}; expected a Vela configuration name")
    return v


def read_summary(path: Path) -> VelaSummary:
    rows = _read(path)
    if len(rows) != 1:
        raise VelaReportError(f"{path.name} has {len(rows)} rows; Vela writes one")
    row, where = rows[0], path.name
    t = {k: _text(row, k, where) for k in _TEXT}
    i = {k: _num(row, k, where, integer=True) for k in _INTS}
    f = {k: _num(row, k, where, integer=False) for k in _FLOATS}
    if f["core_clock"] <= 0:
        raise VelaReportError(f"{where}: core_clock is {f['core_clock']}; expected > 0")
    if i["cycles_npu"] > i["cycles_total"]:
        raise VelaReportError(f"{where}: cycles_npu {i['cycles_npu']} exceeds cycles_total {i['cycles_total']}")
    if i["batch_size"] != 1:
        raise VelaReportError(f"{where}: batch_size is {i['batch_size']}; edgerun's programs run batch 1")
    expect = i["cycles_total"] / f["core_clock"]
    if not math.isclose(f["inference_time"], expect, rel_tol=TIME_TOLERANCE, abs_tol=1e-12):
        raise VelaReportError(f"{where}: inference_time {f['inference_time']} s disagrees with cycles_total / "
                              f"core_clock = {expect:.6g} s")
    kib = lambda k: int(round(f[k] * 1024))  # noqa: E731
    return VelaSummary(accelerator=t["accelerator_configuration"], system_config=t["system_config"],
                       memory_mode=t["memory_mode"], clock_hz=f["core_clock"], cycles_total=i["cycles_total"],
                       cycles_npu=i["cycles_npu"], inference_seconds=f["inference_time"],
                       sram_bytes=kib("sram_memory_used"), dram_bytes=kib("dram_memory_used"),
                       on_chip_flash_bytes=kib("on_chip_flash_memory_used"),
                       off_chip_flash_bytes=kib("off_chip_flash_memory_used"), nn_macs=i["nn_macs"])


def read_layers(path: Path) -> list[VelaLayer]:
    out = []
    for k, row in enumerate(_read(path)):
        where = f"{path.name} row {k + 1}"
        target = row.get("Target")
        if target not in ("NPU", "CPU"):
            raise VelaReportError(f"{where}: Target is {target!r:.20}; expected NPU or CPU")
        name = (row.get("Name") or "")[:200]
        op = (row.get("NNG Operator") or row.get("Original Operator") or "")[:80]
        if not op.replace("_", "").replace(" ", "").isalnum():
            raise VelaReportError(f"{where}: operator {op!r:.40} is not an operator name")
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise VelaReportError(f"{where}: Name holds control characters")
        out.append(VelaLayer(op=op, name=name, target=target, cycles=_num(row, "Op Cycles", where, integer=True),
                             macs=_num(row, "MAC Count", where, integer=True),
                             mac_util=_num(row, "Util% (MAC)", where, integer=False)))
    return out


def find_reports(directory: Path) -> tuple[Path, Path | None]:
    """(summary CSV, per-layer CSV or None) in a Vela output directory."""
    summaries = sorted(directory.glob("*_summary_*.csv"))
    if len(summaries) != 1:
        raise VelaReportError(f"{directory} holds {len(summaries)} Vela summary CSVs; expected one")
    layers = sorted(directory.glob("*_per-layer.csv"))
    return summaries[0], (layers[0] if len(layers) == 1 else None)
