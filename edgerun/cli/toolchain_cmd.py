"""``edgerun toolchain arm``: build (or check) the Arm toolchain environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ._common import DebugOpt, JsonOpt, SafeConsole, execute, plain

out = SafeConsole()


def register(app: typer.Typer) -> None:
    tc_app = typer.Typer(help="Toolchain environments that must not share edgerun's venv.", no_args_is_help=True)
    app.add_typer(tc_app, name="toolchain")

    @tc_app.command("arm")
    def arm_cmd(
        path: Annotated[Optional[Path], typer.Option("--path", help="Where the environment goes (default: "
                                                     "EDGERUN_HOME/cache/toolchains/arm).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Rebuild even if the pins match.")] = False,
        check: Annotated[bool, typer.Option("--check", help="Only say whether it is built with the current "
                                                            "pins (exit 5 if not); never builds.")] = False,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Build (or reuse) the venv with ethos-u-vela and tosa-tools (ExecuTorch's Arm extra, pinned), which
        borrows edgerun's torch and executorch; Ethos-U and Cortex-M exports run in it."""

        def work() -> dict:
            from edgerun.export.arm import toolchain

            if check:
                py = toolchain.require(path)
                return {"toolchain": toolchain.status(py.parent.parent), "python": str(py)}
            rec = toolchain.ensure(path, force=force)
            return {"toolchain": {**rec, "state": "ready"}, "python": rec["python"]}

        def human(r: dict) -> None:
            tc = r["toolchain"]
            t = Table(title=f"Arm toolchain {plain(tc['path'])}", show_header=False, title_justify="left")
            t.add_column(style="bold")
            t.add_column()
            t.add_row("state", plain(tc.get("state")) + (" (reused)" if tc.get("reused") else ""))
            t.add_row("python", plain(r["python"]))
            t.add_row("pins", plain(" ".join(tc.get("pins") or [])))
            inst = tc.get("installed") or {}
            t.add_row("installed", plain(", ".join(f"{k} {v}" for k, v in sorted(inst.items())) or "-"))
            if tc.get("seconds") is not None and not tc.get("reused"):
                t.add_row("built in", f"{tc['seconds']:.0f} s")
            out.print(t)

        execute(work, json_out=json_out, debug=debug, human=human)
