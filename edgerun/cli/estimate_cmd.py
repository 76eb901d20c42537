"""``edgerun estimate ARTIFACT``: an estimated run record for an artifact of a ``measure="estimate"`` target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ._common import DebugOpt, JsonOpt, SafeConsole, execute, plain

out = SafeConsole()


def register(app: typer.Typer) -> None:
    @app.command("estimate")
    def estimate_cmd(
        artifact: Annotated[Path, typer.Argument(help="An artifact exported for an estimated target "
                                                      "(ethos-u55-128, ethos-u65-256, ethos-u85-256).")],
        clock: Annotated[Optional[float], typer.Option("--clock", help="NPU clock in Hz (default: the Vela "
                                                       "system config's, e.g. 500e6); the time is cycles / clock.")
                         ] = None,
        sram: Annotated[Optional[str], typer.Option("--sram", help="The board's SRAM (512KiB, 2MiB ...): say whether "
                                                    "the program fits and the headroom.")] = None,
        flash: Annotated[Optional[str], typer.Option("--flash", help="The board's flash for the program (2MiB ...).")
                         ] = None,
        store: Annotated[Optional[Path], typer.Option("--store", help="Results store (default: "
                                                      "EDGERUN_HOME/results.sqlite).")] = None,
        no_store: Annotated[bool, typer.Option("--no-store", help="Print the record; do not store it.")] = False,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Store an ESTIMATED run record from the NPU compiler's report (Vela's cycles, SRAM, flash) kept in
        the artifact; `runs list` and `report` keep it apart from measured and emulated runs."""

        def work() -> dict:
            from edgerun.core.artifact import read_manifest
            from edgerun.estimate import estimated_record, parse_size
            from edgerun.store import Store

            board = {"sram": parse_size(sram, "--sram") if sram is not None else None,
                     "flash": parse_size(flash, "--flash") if flash is not None else None}
            rec = estimated_record(read_manifest(artifact), clock_hz=clock, **board)
            if not no_store:
                with Store(store) as s:
                    s.save(rec)
            return {"stored": not no_store, "record": rec.to_dict()}

        def human(r: dict) -> None:
            rec, e = r["record"], r["record"]["estimate"]
            t = Table(title=f"{plain(rec['run_id'])}  {plain(rec['model']['name'])} on {plain(rec['device_name'])} "
                            "— ESTIMATED (not run)", show_header=False, title_justify="left")
            t.add_column(style="bold")
            t.add_column()
            t.add_row("estimator", plain(f"{e['compiler']}: {e['accelerator']}, {e['system_config']}, "
                                         f"{e['memory_mode']}"))
            t.add_row("inference", f"{e['inference_ms']:.4g} ms at {e['clock_hz'] / 1e6:g} MHz "
                                   f"({e['cycles_total']:,} cycles, {e['cycles_npu']:,} NPU)")
            t.add_row("SRAM / off-chip flash", f"{e['sram_bytes'] / 1024:.1f} KiB / "
                                               f"{e['off_chip_flash_bytes'] / 1024:.1f} KiB")
            t.add_row("MACs", f"{e['nn_macs']:,}")
            share = e.get("npu_share")
            t.add_row("layers on the NPU", f"{e['npu_layers']} of {e['npu_layers'] + e['cpu_layers']}"
                                           + (f" ({share:.0%})" if share is not None else ""))
            t.add_row("CPU kernel calls", f"{e['cpu_kernel_calls']} (quantize/dequantize and operators off the NPU)")
            f = e.get("fit") or {}
            for k, label in (("sram", "SRAM needed"), ("flash", "flash needed")):
                line = f"{f[k + '_needed_bytes'] / 1024:.1f} KiB"
                if k == "sram":
                    p = f["sram_parts"]
                    line += (f" (NPU {p['npu_sram_vela'] / 1024:.1f} KiB by Vela + program buffers "
                             f"{p['planned_buffers'] / 1024:.1f} KiB)")
                if f.get(k + "_fits") is not None:
                    line += (f" of {f[k + '_bytes'] / 1024:.1f} KiB: " + ("[green]fits[/]" if f[k + "_fits"] else
                             "[red]does NOT fit[/]") + f", headroom {f[k + '_headroom_bytes'] / 1024:.1f} KiB")
                t.add_row(label, line)
            t.add_row("stored", "yes" if r["stored"] else "no (--no-store)")
            out.print(t)

        execute(work, json_out=json_out, debug=debug, human=human)
