"""``edgerun devices list | probe``: the inventory, and what a device really is."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from edgerun.runtime.columns import format_bytes

from ._common import DebugOpt, JsonOpt, SafeConsole, execute, plain
from .profile_cmd import WaitOpt, _lab_wait

out = SafeConsole()

InventoryOpt = Annotated[Optional[str], typer.Option(
    "--inventory", help="Device inventory TOML (default: $EDGERUN_DEVICES, else $EDGERUN_HOME/devices.toml).")]

devices_app = typer.Typer(
    help="Devices by inventory name or URI: local://, qemu-aarch64://?cpu=cortex-a76, "
         "ssh://user@host:port?identity_file=..&known_hosts=.., adb://SERIAL, serial:///dev/ttyUSB0?baud=115200, "
         "labgrid://PLACE?coordinator=HOST:PORT (a place of a labgrid lab; labgrid://?tag=KEY=VALUE: every place "
         "with the tag).",
    no_args_is_help=True,
)


@devices_app.command("list")
def list_cmd(inventory: InventoryOpt = None, json_out: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the devices of the inventory (local is always there). Does not connect to any."""

    def work() -> dict:
        from edgerun.devices.inventory import inventory_path, load_inventory

        specs = load_inventory(inventory)
        return {"inventory": str(inventory_path(inventory)),
                "devices": [spec.to_json() for spec in specs.values()]}

    def human(result: dict) -> None:
        t = Table(title=f"Devices ({plain(result['inventory'])})", title_justify="left")
        for col in ("name", "uri", "transport", "target", "work_dir"):
            t.add_column(col)
        for d in result["devices"]:
            t.add_row(plain(d["name"]), plain(d["uri"]), plain(d["transport"]), plain(d.get("target") or "-"),
                      plain(d.get("work_dir") or "(default)"))
        out.print(t)

    execute(work, json_out=json_out, debug=debug, human=human)


@devices_app.command("probe")
def probe_cmd(
    device: Annotated[str, typer.Argument(help="Inventory name or device URI.")],
    inventory: InventoryOpt = None,
    wait: WaitOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Connect and report arch, CPU, the CPU features that decide int8 speed, cores, memory, OS/kernel, governor, clock, temperature, free space."""

    def work() -> dict:
        from edgerun.devices.inventory import get_spec, make_device

        _lab_wait(wait)
        spec = get_spec(device, inventory)
        with make_device(spec) as dev:
            info = dev.info()
            return {"device": spec.name, "uri": spec.uri, "target": spec.target, "work_dir": dev.work_dir,
                    "info": info.to_json()}

    def human(result: dict) -> None:
        i = result["info"]
        title = f"{plain(result['device'])} ({plain(result['uri'])})"
        if i["emulated"]:
            title += f" [yellow]EMULATED by {plain(i['emulator'])}: numbers check function, not speed[/]"
        t = Table(title=title, show_header=False, title_justify="left")
        t.add_column(style="bold")
        t.add_column()
        cpu = i["cpu_model"] or "-"
        if i.get("host_cpu_model"):
            cpu += f" (on {i['host_cpu_model']})"
        rows = [
            ("arch", i["arch"]), ("cpu", cpu), ("cores", i["cores"]),
            ("cpu features", " ".join(i["cpu_features"]) if i.get("cpu_features") is not None else None),
            ("int8 dot product", _int8_line(i)), ("board", i["board"]),
            ("memory", f"{format_bytes(i['mem_total_bytes'])} total, {format_bytes(i['mem_available_bytes'])} available"),
            ("os", i["os"]), ("kernel", i["kernel"]), ("governor", i["governor"]),
            ("frequency", f"{i['freq_khz'] / 1000:.0f} MHz (max {(i['max_freq_khz'] or 0) / 1000:.0f})"
             if i["freq_khz"] else None),
            ("temperature", f"{i['temperature_c']:.1f} °C" if i["temperature_c"] is not None else None),
            ("free space", f"{format_bytes(i['free_bytes'])} in {result['work_dir']}"),
            ("transport", i["transport"]),
        ]
        for key, value in rows:
            t.add_row(key, plain(value))  # the device's own words: sanitised and never markup
        out.print(t)

    execute(work, json_out=json_out, debug=debug, human=human)


def _int8_line(i: dict) -> str | None:
    has = i.get("int8_dot_product")
    if has is None:
        return None
    if has:
        return "yes: int8 schemes can pay off on this CPU (measure: edgerun bench MODEL --schemes fp32,int8)"
    return ("no (x86: AVX-512 VNNI / AVX-VNNI; Arm: dotprod / i8mm): int8 kernels often run no faster "
            "than fp32 here; pick int8 for size, not speed, unless a benchmark says otherwise")


def register(app: typer.Typer) -> None:
    app.add_typer(devices_app, name="devices")
