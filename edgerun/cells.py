"""One cell, one run of it, one device fan-out: what profile, bench, bench-llm, generate and finetune share.

* :class:`Cell` — what one measurement is of: model, target, recipe (a scheme *with its options*, or a
  chain of recipes), device, threads and test (``None`` for a forward run; ``generate``, ``ppP``, ``tgN``,
  ``score``, ``train``). Its :attr:`Cell.key` is what a resumed sweep looks up in the store.
* :func:`run_cell` — run a mode on an open device, analyse, store: Ctrl-C between any two of those
  marks the run directory ``interrupted`` and stores nothing; a store that fails keeps the record in
  the run directory (``edgerun runs import``).
* :func:`for_each_device` — open every device (an I/O-bound resource) in its own thread, run the work,
  a device that cannot be opened is a :class:`CellFailure` of its cells; Ctrl-C kills every program
  in flight.
* :func:`check_store` — the results store opened and checked *before* any device work: a store from a
  newer edgerun, damaged or unwritable fails at once, not after an hour of training.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from edgerun.core.errors import EdgerunError, RunInterrupted, StoreLocked
from edgerun.runtime.deploy import Cancellation, mark_interrupted, on_devices_concurrently

log = logging.getLogger("edgerun.cells")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One measurement's coordinates; ``key`` joins the given ones (``model/target/recipe/test/device/tN``)."""

    model: str
    device: str
    threads: int | str | None = None
    target: str | None = None
    recipe: str | None = None
    test: str | None = None

    @property
    def key(self) -> str:
        parts = [p for p in (self.model, self.target, self.recipe, self.test, self.device) if p is not None]
        return "/".join([*parts, f"t{self.threads if self.threads is not None else 'default'}"])

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "key": self.key}


@dataclasses.dataclass
class CellFailure:
    device: str
    threads: int | str | None
    error: EdgerunError
    cell: Cell | None = None

    def to_json(self) -> dict:
        out = {"device": self.device, "threads": self.threads, "error": self.error.to_json()}
        if self.cell is not None:
            out["cell"] = self.cell.key
        return out


def _interrupted(device, what: str, run_dir: Path | None = None) -> RunInterrupted:
    if run_dir is not None:
        mark_interrupted(run_dir)
    return RunInterrupted(f"on device '{device.name}', {what}", stage="interrupted", run_dir=run_dir,
                          device=device.name)


def run_cell(program, device, mode, analyse: Callable[[Any], Any], *, store_path=None, variant: str = "full",
             timeout: float = 900.0, run_dir: Path | None = None, on_stdout=None, on_run=None):
    """Run ``mode`` on the open ``device``, ``analyse(run) -> RunRecord``, save it; returns the record.

    ``on_run(run)`` sees the run's artifacts before analysis (e.g. to keep them for the caller)."""
    from edgerun.runtime.deploy import run_on_device
    from edgerun.store import save_or_keep

    if device.cancelled:
        raise _interrupted(device, "the run was interrupted before it started")
    run = run_on_device(program, device, mode, variant=variant, timeout=timeout, run_dir=run_dir,
                        on_stdout=on_stdout)
    if on_run is not None:
        on_run(run)
    try:
        record = analyse(run)
    except BaseException:
        if device.cancelled:
            raise _interrupted(device, "the analysis was interrupted", run.run_dir) from None
        raise
    if device.cancelled:  # interrupted while analysing: nothing half-made goes into the store
        raise _interrupted(device, "the run was interrupted before it was stored", run.run_dir)
    # a store that fails keeps the whole record in the run directory (RecordKept, exit 7, with the
    # `edgerun runs import` command that brings it in later): nothing measured is lost
    save_or_keep(record, store_path, run.run_dir)
    return record


def for_each_device(devices: Sequence[str], work: Callable[[str, Any], list], *, inventory: str | None = None,
                    cancellation: Cancellation | None = None, cells_of: Callable[[str], Sequence[Cell]] = lambda d: ()
                    ) -> list:
    """``work(name, open_device) -> list`` for every device name concurrently, results flattened in the order of
    ``devices``. A device that cannot be opened gives a :class:`CellFailure` for each of its cells
    (``cells_of(name)``; one failure if it names none). Ctrl-C (a KeyboardInterrupt in the main thread)
    cancels every device -- their programs in flight are killed -- waits for the workers and propagates."""
    from edgerun.devices.inventory import resolve_device

    cancellation = cancellation or Cancellation()

    def one(name: str) -> list:
        try:
            with resolve_device(name, inventory) as dev:
                cancellation.add(dev)
                return work(name, dev)
        except RunInterrupted:
            raise
        except EdgerunError as exc:
            cells = list(cells_of(name)) or [None]
            return [CellFailure(name, c.threads if c else None, exc, c) for c in cells]

    return [r for rs in on_devices_concurrently(list(devices), one, cancellation) for r in rs]


def check_store(store_path=None) -> None:
    """Open the results store now (creating or migrating it) so that a store this edgerun cannot write --
    newer schema, damaged, read-only, unreachable -- fails before any device work. A store that another
    process holds locked is not refused here: the record is saved later, or kept in its run directory."""
    from edgerun.store import Store

    try:
        with Store(store_path, timeout=2.0):
            pass
    except StoreLocked:
        log.info("the results store is locked by another process now; the run's record is saved at the end")
